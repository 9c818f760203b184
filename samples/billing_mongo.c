#include "billing_mongo.h"


const cqrs_mongo_options_t billing_mongo_options = {
    .events = "billing_commands",
    .snapshots = "billing_snapshots",
    .checkpoints = "billing_checkpoints",
    .dead_letters = "billing_dead_letters",
};

cqrs_code_t billing_mongo_indexes(cqrs_mongo_t *m, cqrs_error_t *err) {
  cqrs_code_t rc = cqrs_mongo_ensure_indexes(m, err);
  static const struct {
    const char *json, *name;
  } read_side[] = {
      {"{\"customer.id\": 1, \"status\": 1}", "customer_status"},
      {"{\"amount\": 1, \"currency\": 1}", "amount_currency"},
      {"{\"createdAt\": -1}", "created_at"},
  };
  for (size_t i = 0; !rc && i < sizeof read_side / sizeof read_side[0]; i++) {
    bson_error_t e;
    bson_t *keys = bson_new_from_json((const uint8_t *)read_side[i].json, -1, &e);
    rc = cqrs_mongo_ensure_index(m, billing_default_collections.invoices, keys, read_side[i].name, false, err);
    bson_destroy(keys);
  }
  return rc;
}

cqrs_code_t billing_mongo_reset(cqrs_mongo_t *m, cqrs_error_t *err) {
  /* The sample's own database only: everything in it is the sample's. */
  return cqrs_mongo_drop_database(m, err);
}
