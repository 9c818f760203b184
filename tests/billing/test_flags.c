/* The read path behind mongodb_cqs_enabled, on the in-memory read model: the
 * legacy document and the projected one answer in one representation
 * (money in minor units, the legacy dates), a legacy document that cannot
 * be read is found on neither side, and shadow reads count what differs. */
#include <stdio.h>

#include <cqrs/backend.h>

#include "fixture.h"

#define CREATED 1700000000000LL
#define PAID (CREATED + 86400000LL)
#define DUE (CREATED + 30LL * 86400000LL)

typedef struct ffx {
  cqrs_readmodel_t *rm;
  billing_t *b;
  billing_flags_t *flags;
  int64_t position;
} ffx_t;

static int setup(void **state) {
  ffx_t *f = calloc(1, sizeof *f);
  cqrs_memory_readmodel_new(&f->rm, NULL);
  f->b = billing_projector_new(f->rm, NULL);
  f->flags = billing_flags_new(f->rm, 0);
  assert_non_null(f->flags);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  ffx_t *f = *state;
  billing_flags_destroy(f->flags);
  billing_destroy(f->b);
  cqrs_readmodel_destroy(f->rm);
  free(f);
  return 0;
}

static void legacy(ffx_t *f, const char *id, const char *json) {
  bson_error_t e;
  bson_t *doc = bson_new_from_json((const uint8_t *)json, -1, &e);
  if (!doc) fail_msg("%s", e.message);
  assert_int_equal(cqrs_readmodel_put(f->rm, BILLING_LEGACY_COLLECTION, id, doc, 1, NULL, NULL), CQRS_OK);
  bson_destroy(doc);
}

/* Projects an event as the migration commits it: at the legacy date. */
static void project(ffx_t *f, const char *atype, const char *id, const cqrs_event_type_t *type, int64_t at,
                    const void *payload) {
  cqrs_envelope_t *env;
  assert_int_equal(cqrs_envelope_new(atype, id, "cmd", NULL, &env, NULL), CQRS_OK);
  cqrs_event_t *e;
  assert_int_equal(cqrs_event_new(type, env, NULL, 1, at, payload, &e, NULL), CQRS_OK);
  cqrs_envelope_unref(env);
  e->position = ++f->position;
  cqrs_error_t err;
  if (billing_project_invoices(e, f->b, &err)) fail_msg("%s", err.message);
  cqrs_event_unref(e);
}

static void set_flag(ffx_t *f, const char *mode) {
  billing_cqs_flag_t flag;
  assert_int_equal(billing_cqs_flag_parse(mode, &flag, NULL), CQRS_OK);
  assert_int_equal(billing_cqs_flag_save(f->rm, &flag, NULL), CQRS_OK);
}

static bool read_as(ffx_t *f, const char *mode, const char *id, bson_t *out, billing_read_t *how) {
  set_flag(f, mode);
  bool found;
  cqrs_error_t err;
  if (billing_invoice_read(f->flags, NULL, id, NULL, out, &found, how, &err)) fail_msg("%s", err.message);
  return found;
}

static void paid_invoice(ffx_t *f) {
  legacy(f, "inv_1",
         "{\"_id\": \"inv_1\", \"invoiceNumber\": \"INV-2023-007\", \"amount\": 38984.3, \"currency\": \"EUR\","
         " \"customer\": {\"id\": \"cust_1\", \"name\": \"Acme\", \"email\": \"billing@acme.com\"},"
         " \"status\": \"paid\", \"createdAt\": {\"$date\": {\"$numberLong\": \"1700000000000\"}},"
         " \"updatedAt\": {\"$date\": {\"$numberLong\": \"1700086400000\"}},"
         " \"paidAt\": {\"$date\": {\"$numberLong\": \"1700086400000\"}},"
         " \"dueDate\": {\"$date\": {\"$numberLong\": \"1702592000000\"}}}");
  project(f, "customer", "cust_1", &billing_customer_registered, CREATED,
          &(billing_customer_registered_t){"Acme", "billing@acme.com"});
  project(f, "invoice", "inv_1", &billing_invoice_issued, CREATED,
          &(billing_invoice_issued_t){"INV-2023-007", "cust_1", EUR(3898430), DUE});
  project(f, "invoice", "inv_1", &billing_invoice_paid, PAID, &(billing_invoice_paid_t){EUR(3898430)});
}

static void test_both_sides_answer_alike(void **state) {
  ffx_t *f = *state;
  paid_invoice(f);
  bson_t off, on, shadow;
  billing_read_t how;
  assert_true(read_as(f, "off", "inv_1", &off, &how));
  assert_int_equal(how.source, BILLING_READ_LEGACY);
  assert_true(read_as(f, "on", "inv_1", &on, &how));
  assert_int_equal(how.source, BILLING_READ_CQS);
  assert_true(read_as(f, "shadow", "inv_1", &shadow, &how));
  assert_int_equal(how.differences, 0);
  char *a = bson_as_relaxed_extended_json(&off, NULL), *b = bson_as_relaxed_extended_json(&on, NULL);
  if (!bson_equal(&off, &on)) fail_msg("legacy %s\ncqs    %s", a, b);
  assert_true(bson_equal(&off, &shadow));
  bson_free(a);
  bson_free(b);
  /* Money in minor units, an integer; the legacy dates. */
  bson_iter_t it;
  assert_true(bson_iter_init_find(&it, &on, "amount") && BSON_ITER_HOLDS_INT64(&it));
  assert_int_equal(bson_iter_int64(&it), 3898430);
  assert_true(bson_iter_init_find(&it, &on, "createdAt") && BSON_ITER_HOLDS_DATE_TIME(&it));
  assert_int_equal(bson_iter_date_time(&it), CREATED);
  assert_true(bson_iter_init_find(&it, &on, "dueDate") && BSON_ITER_HOLDS_DATE_TIME(&it));
  assert_int_equal(bson_iter_date_time(&it), DUE);
  assert_true(bson_iter_init_find(&it, &on, "paidAt") && BSON_ITER_HOLDS_DATE_TIME(&it));
  assert_int_equal(bson_iter_date_time(&it), PAID);
  assert_false(bson_iter_init_find(&it, &on, "_position"));
  bson_destroy(&off);
  bson_destroy(&on);
  bson_destroy(&shadow);
  uint64_t compared, differing;
  billing_flags_shadow_counts(f->flags, &compared, &differing);
  assert_int_equal(compared, 1);
  assert_int_equal(differing, 0);
}

/* What the migration refuses, the legacy side does not answer with. */
static void test_malformed_legacy_found_on_neither_side(void **state) {
  ffx_t *f = *state;
  legacy(f, "inv_bad",
         "{\"_id\": \"inv_bad\", \"invoiceNumber\": \"INV-2023-008\", \"amount\": -12.5, \"currency\": \"EUR\","
         " \"customer\": {\"id\": \"cust_1\", \"name\": \"Acme\", \"email\": \"billing@acme.com\"},"
         " \"status\": \"pending\", \"createdAt\": {\"$date\": {\"$numberLong\": \"1700000000000\"}}}");
  bson_t out;
  billing_read_t how;
  assert_false(read_as(f, "off", "inv_bad", &out, &how));
  assert_true(how.malformed);
  assert_string_equal(how.problem, "amount is negative");
  assert_false(read_as(f, "on", "inv_bad", &out, &how));
  assert_false(read_as(f, "shadow", "inv_bad", &out, &how));
  assert_int_equal(how.differences, 0);
}

static void test_shadow_counts_differences(void **state) {
  ffx_t *f = *state;
  paid_invoice(f);
  legacy(f, "inv_2",
         "{\"_id\": \"inv_2\", \"invoiceNumber\": \"INV-2023-009\", \"amount\": 10, \"currency\": \"JPY\","
         " \"customer\": {\"id\": \"cust_1\", \"name\": \"Acme\", \"email\": \"billing@acme.com\"},"
         " \"status\": \"pending\", \"createdAt\": {\"$date\": {\"$numberLong\": \"1700000000000\"}}}");
  bson_t out;
  billing_read_t how;
  assert_true(read_as(f, "shadow", "inv_1", &out, &how));
  bson_destroy(&out);
  assert_true(read_as(f, "shadow", "inv_2", &out, &how)); /* never migrated: only the legacy side has it */
  assert_true(how.differences > 0);
  bson_iter_t it;
  assert_false(bson_iter_init_find(&it, &out, "dueDate")); /* none known: none made up */
  bson_destroy(&out);
  uint64_t compared, differing;
  billing_flags_shadow_counts(f->flags, &compared, &differing);
  assert_int_equal(compared, 2);
  assert_int_equal(differing, 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_both_sides_answer_alike, setup, teardown),
      cmocka_unit_test_setup_teardown(test_malformed_legacy_found_on_neither_side, setup, teardown),
      cmocka_unit_test_setup_teardown(test_shadow_counts_differences, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
