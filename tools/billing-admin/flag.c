/* flag: the seed's mongodb_cqs_enabled switch-over, persisted in
 * billing_flags and honoured by billing_invoice_read (domain/billing). */
#include <string.h>

#include "admin.h"

static const char usage[] =
    "usage: billing-admin flag [mongodb_cqs_enabled [off|shadow|PERCENT|on]] [--json]\n"
    "Shows or sets the flag the billing read path (billing_invoice_read, query invoice.read) honours:\n"
    "  off      reads go to the legacy billing_documents collection\n"
    "  shadow   both are read, the legacy answer is returned, every difference is recorded in\n"
    "           billing_flag_diffs\n"
    "  PERCENT  that share of customers (0..100, by a stable hash of the customer id) reads the\n"
    "           CQS side, the others the legacy one\n"
    "  on       the CQS side only (billing_queries)\n"
    "Processes pick a change up within their refresh interval. Exit: 0, 2 usage, 3 server error.\n";

static void describe(admin_t *a, const billing_cqs_flag_t *f, int64_t diffs) {
  if (a->json) {
    bson_t out = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&out, "database", cqrs_mongo_database(a->m));
    BSON_APPEND_UTF8(&out, "flag", BILLING_CQS_FLAG);
    BSON_APPEND_UTF8(&out, "mode", billing_cqs_mode_name(f->mode));
    BSON_APPEND_INT32(&out, "percent", f->percent);
    BSON_APPEND_INT64(&out, "shadowDifferences", diffs);
    admin_print_json(stdout, &out);
    bson_destroy(&out);
    return;
  }
  printf("%s: ", BILLING_CQS_FLAG);
  switch (f->mode) {
  case BILLING_CQS_OFF: printf("off (reads go to %s)", BILLING_LEGACY_COLLECTION); break;
  case BILLING_CQS_SHADOW: printf("shadow (both read, legacy answers, differences in %s)", BILLING_FLAG_DIFFS_COLLECTION); break;
  case BILLING_CQS_PERCENT: printf("%d %% of customers read the CQS side", f->percent); break;
  case BILLING_CQS_ON: printf("on (reads go to %s)", billing_default_collections.invoices); break;
  }
  printf("; %lld invoices with recorded shadow differences\n", (long long)diffs);
}

int admin_flag(admin_t *a, int argc, char **argv) {
  admin_args_t args;
  int rc = admin_parse(a, argc, argv, NULL, usage, 0, 2, &args);
  if (rc) return rc < 0 ? ADMIN_OK : rc;
  if (args.npos >= 1 && strcmp(args.pos[0], BILLING_CQS_FLAG)) {
    admin_err("flag: unknown flag '%s' (the one flag is %s)", args.pos[0], BILLING_CQS_FLAG);
    return ADMIN_USAGE;
  }
  billing_cqs_flag_t f;
  cqrs_error_t err;
  if (args.npos == 2 && billing_cqs_flag_parse(args.pos[1], &f, &err)) {
    admin_err("flag: %s", err.message);
    return ADMIN_USAGE;
  }
  if ((rc = admin_connect(a, NULL))) return rc;
  if (args.npos == 2) {
    if (billing_cqs_flag_save(a->rm, &f, &err)) return admin_cqrs_error("save the flag", &err);
    admin_audit(a, "flag.set", BILLING_CQS_FLAG, args.pos[1]);
  }
  if (billing_cqs_flag_load(a->rm, &f, &err)) return admin_cqrs_error("read the flag", &err);
  mongoc_collection_t *c = mongoc_database_get_collection(a->db, BILLING_FLAG_DIFFS_COLLECTION);
  bson_t all = BSON_INITIALIZER;
  bson_error_t e;
  int64_t diffs = mongoc_collection_count_documents(c, &all, NULL, NULL, NULL, &e);
  bson_destroy(&all);
  mongoc_collection_destroy(c);
  if (diffs < 0) return admin_server_error("count the shadow differences", &e);
  describe(a, &f, diffs);
  return ADMIN_OK;
}
