/* billing-admin migrate keeps what the legacy documents say (their dates,
 * one invoice per number, the customer conflicts it cannot resolve listed),
 * resumes from what the store holds, and after it the two sides of
 * mongodb_cqs_enabled answer alike. The real binary against the real
 * server. */
#include "admin_fixture.h"

static int64_t date_at(const bson_t *doc, const char *path) {
  bson_iter_t it, v;
  if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &v) && BSON_ITER_HOLDS_DATE_TIME(&v))
    return bson_iter_date_time(&v);
  return -1; /* absent */
}

/* A copy of legacy document `id` with _id `new_id`, its invoice number
 * `number` and, when not NULL, its customer's e-mail `email`. */
static void copy_legacy(adm_t *t, const char *id, const char *new_id, const char *number, const char *email) {
  bson_t doc, copy = BSON_INITIALIZER, c;
  assert_true(adm_get(t, "billing_documents", id, &doc));
  bson_copy_to_excluding_noinit(&doc, &copy, "_id", "customer", "invoiceNumber", NULL);
  BSON_APPEND_UTF8(&copy, "_id", new_id);
  BSON_APPEND_UTF8(&copy, "invoiceNumber", number);
  BSON_APPEND_DOCUMENT_BEGIN(&copy, "customer", &c);
  BSON_APPEND_UTF8(&c, "id", adm_str(&doc, "customer.id"));
  BSON_APPEND_UTF8(&c, "name", adm_str(&doc, "customer.name"));
  BSON_APPEND_UTF8(&c, "email", email ? email : adm_str(&doc, "customer.email"));
  bson_append_document_end(&copy, &c);
  mongoc_collection_t *coll = adm_coll(t, "billing_documents");
  bson_error_t e;
  if (!mongoc_collection_insert_one(coll, &copy, NULL, NULL, &e)) fail_msg("%s", e.message);
  mongoc_collection_destroy(coll);
  bson_destroy(&doc);
  bson_destroy(&copy);
}

static void test_legacy_dates_numbers_and_customers_kept(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  assert_int_equal(ADM(&t, "gen-legacy", "60", "--customers", "10", "--seed", "3"), 0);
  /* A second document with inv_00000005's number, and one whose customer
   * has another e-mail address than the one its first document gives. */
  bson_t five;
  assert_true(adm_get(&t, "billing_documents", "inv_00000005", &five));
  copy_legacy(&t, "inv_00000006", "inv_00000098", adm_str(&five, "invoiceNumber"), NULL);
  copy_legacy(&t, "inv_00000007", "inv_00000099", "INV-2030-001", "elsewhere@example.com");
  bson_destroy(&five);

  assert_int_equal(ADM(&t, "--json", "migrate", "--quiet"), 1);
  assert_int_equal(adm_json_int(&t, "malformedCount"), 1);
  assert_int_equal(adm_json_int(&t, "conflictCount"), 1);
  assert_int_equal(adm_json_int(&t, "duplicate_number"), 1);
  assert_int_equal(adm_json_int(&t, "customer_conflict"), 1);
  bson_t r;
  assert_true(adm_get(&t, "billing_migration_rejects", "inv_00000098", &r));
  assert_string_equal(adm_str(&r, "kind"), "duplicate_number");
  assert_non_null(strstr(adm_str(&r, "reason"), "inv_00000005"));
  bson_destroy(&r);
  assert_true(adm_get(&t, "billing_migration_rejects", "inv_00000099", &r));
  assert_string_equal(adm_str(&r, "kind"), "customer_conflict");
  assert_non_null(strstr(adm_str(&r, "reason"), "elsewhere@example.com"));
  bson_destroy(&r);
  assert_int_equal(adm_count(&t, "billing_queries", NULL), 61); /* the duplicate stays behind */
  assert_false(adm_get(&t, "billing_queries", "inv_00000098", &r));

  /* Each migrated invoice has its legacy dates; none has a made-up due date. */
  mongoc_collection_t *legacy = adm_coll(&t, "billing_documents");
  bson_t all = BSON_INITIALIZER;
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(legacy, &all, NULL, NULL);
  const bson_t *doc;
  int checked = 0, with_due = 0;
  while (mongoc_cursor_next(cur, &doc)) {
    bson_t q;
    if (!adm_get(&t, "billing_queries", adm_str(doc, "_id"), &q)) continue;
    assert_int_equal(date_at(&q, "createdAt"), date_at(doc, "createdAt"));
    assert_int_equal(date_at(&q, "dueDate"), date_at(doc, "dueDate"));
    if (!strcmp(adm_str(doc, "status"), "paid")) assert_int_equal(date_at(&q, "paidAt"), date_at(doc, "paidAt"));
    with_due += date_at(&q, "dueDate") > 0;
    checked++;
    bson_destroy(&q);
  }
  mongoc_cursor_destroy(cur);
  mongoc_collection_destroy(legacy);
  bson_destroy(&all);
  assert_int_equal(checked, 61);
  assert_true(with_due > 0 && with_due < 61);
  /* The text report summarises by reason. */
  assert_int_equal(ADM(&t, "migrate"), 1);
  assert_non_null(strstr(t.out, "by reason: duplicate_number 1, customer_conflict 1"));
  assert_int_equal(ADM(&t, "check"), 0);
  adm_close(&t);
}

/* A run again, from the first document or resumed, appends no customer the
 * store holds. */
static void test_resume_from_the_store(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  assert_int_equal(ADM(&t, "gen-legacy", "200", "--customers", "25"), 0);
  assert_int_equal(ADM(&t, "--json", "migrate", "--quiet"), 0);
  long long registered = adm_json_int(&t, "customersAppended");
  assert_true(registered > 0 && registered <= 25);
  assert_int_equal(ADM(&t, "--json", "migrate", "--restart", "--quiet"), 0);
  assert_int_equal(adm_json_int(&t, "customersKnown"), registered);
  assert_int_equal(adm_json_int(&t, "customersAppended"), 0);
  /* As after a run killed at the 200th document: the same 200 documents
   * and 100 more (gen-legacy is the same sequence for a seed), the run
   * resumes after the 200th and appends none of the customers the store
   * holds. */
  assert_int_equal(ADM(&t, "gen-legacy", "300", "--customers", "25", "--drop"), 0);
  assert_int_equal(ADM(&t, "--json", "migrate", "--quiet"), 0);
  assert_int_equal(adm_json_int(&t, "migrated"), 300);
  assert_int_equal(adm_json_int(&t, "customersAppended"), 0);
  bson_t cust = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&cust, "aggregateType", "customer");
  assert_int_equal(adm_count(&t, "billing_commands", &cust), registered);
  bson_destroy(&cust);
  adm_close(&t);
}

/* After a migration, shadow reads of every legacy invoice find no
 * difference, and both sides answer in one representation. */
static void test_shadow_after_migration(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  assert_int_equal(ADM(&t, "gen-legacy", "150", "--malformed", "10", "--customers", "30"), 0);
  assert_int_equal(ADM(&t, "migrate", "--quiet"), 1);
  reader_t r;
  reader_open(&r, &t);
  mongoc_collection_t *legacy = adm_coll(&t, "billing_documents");
  bson_t all = BSON_INITIALIZER;
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(legacy, &all, NULL, NULL);
  const bson_t *doc;
  int found = 0, malformed = 0;
  static const char *const modes[] = {"off", "on", "shadow"};
  while (mongoc_cursor_next(cur, &doc)) {
    const char *id = adm_str(doc, "_id");
    bson_t out[3];
    bool f[3];
    for (int m = 0; m < 3; m++) {
      billing_cqs_flag_t flag;
      assert_int_equal(billing_cqs_flag_parse(modes[m], &flag, NULL), CQRS_OK);
      assert_int_equal(billing_cqs_flag_save(r.rm, &flag, NULL), CQRS_OK);
      billing_read_t how;
      cqrs_error_t e;
      if (billing_invoice_read(r.flags, NULL, id, NULL, &out[m], &f[m], &how, &e)) fail_msg("%s", e.message);
      if (m == 2 && how.differences) fail_msg("%s: %zu differences", id, how.differences);
      malformed += m == 0 && how.malformed;
    }
    assert_true(f[0] == f[1] && f[1] == f[2]);
    if (!f[0]) continue;
    found++;
    if (!bson_equal(&out[0], &out[1])) {
      char *a = bson_as_relaxed_extended_json(&out[0], NULL), *b = bson_as_relaxed_extended_json(&out[1], NULL);
      fail_msg("%s\nlegacy %s\ncqs    %s", id, a, b);
    }
    for (int m = 0; m < 3; m++) bson_destroy(&out[m]);
  }
  mongoc_cursor_destroy(cur);
  mongoc_collection_destroy(legacy);
  bson_destroy(&all);
  assert_int_equal(found + malformed, 150);
  assert_true(malformed > 5);
  uint64_t compared, differing;
  billing_flags_shadow_counts(r.flags, &compared, &differing);
  assert_int_equal(compared, 150);
  assert_int_equal(differing, 0);
  reader_close(&r);
  /* The invoice sample reads through the flag. */
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s' --mongo '%s' --cqs on 2>&1", SAMPLE_INVOICE, t.uri);
  FILE *p = popen(cmd, "r");
  size_t n = fread(t.out, 1, sizeof t.out - 1, p);
  t.out[n] = '\0';
  assert_int_equal(pclose(p), 0);
  assert_non_null(strstr(t.out, "through mongodb_cqs_enabled (on)"));
  assert_non_null(strstr(t.out, "inv_1 from the CQS side"));
  adm_close(&t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_legacy_dates_numbers_and_customers_kept),
      cmocka_unit_test(test_resume_from_the_store),
      cmocka_unit_test(test_shadow_after_migration),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
