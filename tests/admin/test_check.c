/* billing-admin check never says "consistent" when it is not: a document
 * past the head of the store, strays --repair must really remove, a
 * projection behind the head. The real binary against the real server. */
#include "admin_fixture.h"

#define INVOICES 120

static void migrated(adm_t *t) {
  adm_open(t);
  assert_int_equal(ADM(t, "gen-legacy", "120", "--customers", "20"), 0);
  assert_int_equal(ADM(t, "migrate", "--quiet"), 0);
  assert_int_equal(ADM(t, "check"), 0);
}

static void set_position(adm_t *t, const char *coll, const char *id, int64_t position) {
  set_field(t, coll, id, "_position", position);
}

/* No event writes past the head: such a document is corruption, reported,
 * repaired, and never skipped as "newer". */
static void test_document_past_the_head(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  migrated(&t);
  bson_t before;
  assert_true(adm_get(&t, "billing_queries", "inv_00000101", &before));
  set_field(&t, "billing_queries", "inv_00000101", "amount", 1);
  set_position(&t, "billing_queries", "inv_00000101", 1000000000);
  assert_int_equal(ADM(&t, "check"), 1);
  assert_non_null(strstr(t.out, "ahead     billing_queries inv_00000101"));
  assert_non_null(strstr(t.out, "past the head"));
  assert_null(strstr(t.out, "consistency 100.000"));
  assert_null(strstr(t.out, "newer"));
  assert_int_equal(ADM(&t, "--json", "check"), 1);
  assert_int_equal(adm_json_int(&t, "ahead"), 1);
  assert_int_equal(ADM(&t, "check", "--repair"), 1);
  assert_non_null(strstr(t.out, "1 repaired"));
  assert_int_equal(ADM(&t, "check"), 0);
  bson_t after;
  assert_true(adm_get(&t, "billing_queries", "inv_00000101", &after));
  assert_int_equal(adm_int(&after, "amount"), adm_int(&before, "amount"));
  assert_int_equal(adm_int(&after, "_position"), adm_int(&before, "_position"));
  bson_destroy(&before);
  bson_destroy(&after);
  adm_close(&t);
}

/* Documents without _position, whatever their _id: reported, and --repair
 * counts what it removed, no more; after it they are gone. */
static void test_strays_repaired_for_real(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  migrated(&t);
  insert_json(&t, "billing_queries", "{\"_id\": {\"$oid\": \"0123456789abcdef01234567\"}, \"foo\": 1}");
  insert_json(&t, "billing_queries", "{\"_id\": \"stray_1\", \"invoiceNumber\": \"INV-2020-001\"}");
  insert_json(&t, "billing_queries", "{\"_id\": 42, \"x\": 1}");
  bson_t doc;
  assert_true(adm_get(&t, "billing_queries", "inv_00000007", &doc));
  bson_destroy(&doc);
  update_json(&t, "billing_queries", "inv_00000007", "{\"$unset\": {\"_position\": \"\"}}", false);

  assert_int_equal(ADM(&t, "check"), 1);
  assert_non_null(strstr(t.out, "3 extra, 1 different"));
  assert_non_null(strstr(t.out, "extra     billing_queries 0123456789abcdef01234567"));
  assert_non_null(strstr(t.out, "extra     billing_queries 42"));
  assert_non_null(strstr(t.out, "different billing_queries inv_00000007: _position"));
  assert_int_equal(ADM(&t, "check", "--repair"), 1);
  assert_non_null(strstr(t.out, "4 repaired"));
  assert_int_equal(adm_count(&t, "billing_queries", NULL), INVOICES);
  assert_int_equal(ADM(&t, "check"), 0);
  assert_int_equal(ADM(&t, "check", "--repair"), 0);
  assert_non_null(strstr(t.out, "0 repaired"));
  adm_close(&t);
}

static void set_checkpoint(adm_t *t, const char *name, int64_t position) {
  char json[128];
  snprintf(json, sizeof json, "{\"$set\": {\"position\": {\"$numberLong\": \"%lld\"}}}", (long long)position);
  update_json(t, "billing_checkpoints", name, json, true);
}

static int64_t checkpoint_of(adm_t *t, const char *name) {
  bson_t doc;
  if (!adm_get(t, "billing_checkpoints", name, &doc)) return 0;
  int64_t p = adm_int(&doc, "position");
  bson_destroy(&doc);
  return p;
}

/* A projection that stopped short of the head fails the check, however
 * consistent what it did project is, and says how far behind it is. */
static void test_projection_behind_the_head(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  migrated(&t);
  int64_t cp = checkpoint_of(&t, "billing.invoices");
  assert_true(cp > 100);
  set_checkpoint(&t, "billing.invoices", 60);
  assert_int_equal(ADM(&t, "check", "--wait", "0"), 1);
  assert_non_null(strstr(t.out, "billing.invoices"));
  assert_non_null(strstr(t.out, "events behind"));
  assert_int_equal(ADM(&t, "--json", "check", "--wait", "0"), 1);
  assert_true(adm_json_int(&t, "behind") > 0);
  /* The default waits a little for a running application to catch up. */
  assert_int_equal(ADM(&t, "check"), 1);
  set_checkpoint(&t, "billing.invoices", cp);
  assert_int_equal(ADM(&t, "check"), 0);
  assert_non_null(strstr(t.out, "caught up"));
  /* No checkpoint at all, events to project: behind too. */
  delete_doc(&t, "billing_checkpoints", "billing.invoices");
  assert_int_equal(ADM(&t, "check", "--wait", "0"), 1);
  assert_non_null(strstr(t.out, "events behind"));
  /* A rebuild projects them all: its checkpoint says so. */
  assert_int_equal(ADM(&t, "rebuild", "billing.invoices"), 0);
  assert_int_equal(checkpoint_of(&t, "billing.invoices"), cp);
  assert_int_equal(ADM(&t, "check"), 0);
  adm_close(&t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_document_past_the_head),
      cmocka_unit_test(test_strays_repaired_for_real),
      cmocka_unit_test(test_projection_behind_the_head),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
