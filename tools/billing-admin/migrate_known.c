/* What migrate knows before it appends: the customers the store already
 * holds (so that a resumed or repeated run does not append each again, at
 * the cost of an idempotency look-up each), and the owner of each invoice
 * number (so that two legacy documents with one number do not both
 * migrate). */
#include <stdlib.h>
#include <string.h>

#include "billing_mongo.h"
#include "migrate.h"

int known_customer_add(mig_t *g, const char *id, const char *name, const char *email) {
  size_t len = strlen(id) + 1;
  known_customer_t *c = calloc(1, sizeof *c + len);
  if (!c || !(c->name = strdup(name ? name : "")) || !(c->email = strdup(email ? email : ""))) {
    if (c) free(c->name);
    free(c);
    admin_err("out of memory");
    return ADMIN_SERVER;
  }
  memcpy(c->id, id, len);
  HASH_ADD_STR(g->customers, id, c);
  return ADMIN_OK;
}

known_customer_t *known_customer_find(mig_t *g, const char *id) {
  known_customer_t *c;
  HASH_FIND_STR(g->customers, id, c);
  return c;
}

/* Every customer stream's first commit, its registration: {aggregateId,
 * events.0.data {name, email}} in the store's commit documents. */
int known_customers_load(mig_t *g) {
  mongoc_collection_t *c = mongoc_database_get_collection(g->a->db, billing_mongo_options.events);
  bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, proj;
  BSON_APPEND_UTF8(&filter, "aggregateType", billing_customer.name);
  BSON_APPEND_INT64(&filter, "version", 1);
  BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
  BSON_APPEND_INT32(&proj, "aggregateId", 1);
  BSON_APPEND_INT32(&proj, "events", 1);
  bson_append_document_end(&opts, &proj);
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, &filter, &opts, NULL);
  const bson_t *doc;
  int rc = ADMIN_OK;
  while (!rc && mongoc_cursor_next(cur, &doc)) {
    const char *id = admin_str(doc, "aggregateId");
    if (!id || known_customer_find(g, id)) continue;
    rc = known_customer_add(g, id, admin_str(doc, "events.0.data.name"), admin_str(doc, "events.0.data.email"));
    g->customers_known++;
  }
  bson_error_t e;
  if (!rc && mongoc_cursor_error(cur, &e)) rc = admin_server_error("read the registered customers", &e);
  mongoc_cursor_destroy(cur);
  bson_destroy(&filter);
  bson_destroy(&opts);
  mongoc_collection_destroy(c);
  return rc;
}

const char *number_owner_claim(mig_t *g, const char *number, const char *id, bool *claimed) {
  number_owner_t *n;
  *claimed = false;
  HASH_FIND_STR(g->numbers, number, n);
  if (n) return n->owner;
  size_t len = strlen(number) + 1;
  if (!(n = calloc(1, sizeof *n + len))) return NULL;
  memcpy(n->number, number, len);
  snprintf(n->owner, sizeof n->owner, "%s", id);
  HASH_ADD_STR(g->numbers, number, n);
  *claimed = true;
  return n->owner;
}

void known_free(mig_t *g) {
  known_customer_t *c, *ct;
  HASH_ITER(hh, g->customers, c, ct) {
    HASH_DEL(g->customers, c);
    free(c->name);
    free(c->email);
    free(c);
  }
  number_owner_t *n, *nt;
  HASH_ITER(hh, g->numbers, n, nt) {
    HASH_DEL(g->numbers, n);
    free(n);
  }
}

int migrate_record(mig_t *g, const bson_t *doc, bool refused, const char *reason, const char *kind) {
  mongoc_collection_t *c = mongoc_database_get_collection(g->a->db, MIGRATE_REJECTS);
  bson_t filter = BSON_INITIALIZER, body = BSON_INITIALIZER, opts = BSON_INITIALIZER;
  bson_iter_t it;
  if (bson_iter_init_find(&it, doc, "_id")) bson_append_iter(&filter, "_id", 3, &it);
  bson_copy_to_excluding_noinit(&filter, &body, "", NULL);
  BSON_APPEND_UTF8(&body, "source", g->source);
  BSON_APPEND_UTF8(&body, "reason", reason);
  /* "legacy.negative_amount" is shown as "negative_amount". */
  BSON_APPEND_UTF8(&body, "kind", strncmp(kind, "legacy.", 7) ? kind : kind + 7);
  BSON_APPEND_BOOL(&body, "migrated", !refused);
  BSON_APPEND_DATE_TIME(&body, "at", cqrs_now_ms());
  BSON_APPEND_BOOL(&opts, "upsert", true);
  bson_error_t e;
  bool ok = mongoc_collection_replace_one(c, &filter, &body, &opts, NULL, &e);
  bson_destroy(&filter);
  bson_destroy(&body);
  bson_destroy(&opts);
  mongoc_collection_destroy(c);
  if (refused) g->refused++;
  else g->conflicts++;
  return ok ? ADMIN_OK : admin_server_error("record a legacy document in the rejects", &e);
}
