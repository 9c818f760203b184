/* billing-admin keys, forget and verify (docs/operations.md), the real
 * binary against the real server, on the database the invoice sample
 * leaves (three customers, one of them forgotten by the sample itself). */
#include "admin_fixture.h"

/* Runs the invoice sample on the test's database. */
static void sample(adm_t *t) {
  const char *argv[] = {SAMPLE_INVOICE, "--mongo", t->uri, NULL};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  pid_t pid;
  assert_int_equal(posix_spawn(&pid, SAMPLE_INVOICE, &fa, NULL, (char *const *)argv, environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void ticket(adm_t *t, const char *text, bool put) {
  mongoc_collection_t *c = adm_coll(t, "support_tickets");
  bson_t *doc = BCON_NEW("_id", "ticket-1", "text", BCON_UTF8(text));
  bson_t *id = BCON_NEW("_id", "ticket-1");
  bson_error_t e;
  bool ok = put ? mongoc_collection_insert_one(c, doc, NULL, NULL, &e)
                : mongoc_collection_delete_one(c, id, NULL, NULL, &e);
  if (!ok) fail_msg("%s", e.message);
  bson_destroy(id);
  bson_destroy(doc);
  mongoc_collection_destroy(c);
}

static void test_keys_forget_verify(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  sample(&t);

  assert_int_equal(ADM(&t, "keys"), 0);
  assert_non_null(strstr(t.out, "acme"));
  assert_non_null(strstr(t.out, "umbrella"));
  assert_non_null(strstr(t.out, "2 with a key, 1 forgotten"));
  assert_int_equal(ADM(&t, "keys", "--forgotten"), 0);
  assert_null(strstr(t.out, "acme "));
  assert_non_null(strstr(t.out, "umbrella"));

  /* What the sample forgot is nowhere; what an application copied outside
   * libcqrs is found, and said where (not what). */
  assert_int_equal(ADM(&t, "verify", "Umbrella Corp", "it@umbrella.example"), 0);
  assert_non_null(strstr(t.out, "none found"));
  ticket(&t, "a mail from accounts@acme.com about INV-2026-001", true);
  assert_int_equal(ADM(&t, "verify", "accounts@acme.com"), 1);
  assert_non_null(strstr(t.out, "value 1 in support_tickets ticket-1"));
  assert_null(strstr(t.out, "accounts@acme.com"));
  /* The customers' data is sealed everywhere else, before any forget. */
  assert_int_equal(ADM(&t, "verify", "Acme Corp", "billing@acme.com", "Globex", "ap@globex.example"), 0);

  /* Forgetting acme: done, then the ticket is found. */
  assert_int_equal(ADM(&t, "forget", "acme"), 1);
  assert_non_null(strstr(t.out, "customer acme: forgotten"));
  assert_non_null(strstr(t.out, "in support_tickets ticket-1"));
  ticket(&t, "", false);
  assert_int_equal(ADM(&t, "--json", "verify", "Acme Corp", "billing@acme.com", "accounts@acme.com"), 0);
  assert_int_equal(adm_json_int(&t, "found"), 0);
  assert_int_equal(ADM(&t, "forget", "acme"), 0);
  assert_non_null(strstr(t.out, "was forgotten already"));
  assert_int_equal(ADM(&t, "forget", "nobody"), 1);
  assert_non_null(strstr(t.err, "does not exist"));
  assert_int_equal(ADM(&t, "audit", "--action", "customer."), 0); /* on record, the refused one not */
  const char *first = strstr(t.out, "customer.forget acme: forgotten\n");
  assert_true(first && strstr(first, "customer.forget acme: forgotten already\n"));
  assert_null(strstr(t.out, "nobody"));
  assert_int_equal(ADM(&t, "keys"), 0);
  assert_non_null(strstr(t.out, "1 with a key, 2 forgotten"));

  /* The event log and the read side say nothing in clear, and agree. */
  assert_int_equal(ADM(&t, "events", "tail", "-n", "100"), 0);
  assert_non_null(strstr(t.out, "customer.registered"));
  assert_null(strstr(t.out, "Globex"));
  assert_null(strstr(t.out, "ap@globex.example"));
  /* The application's projections take in what the tool recorded. */
  app_t a;
  app_open(&a, &t);
  app_catch_up(&a);
  app_close(&a);
  assert_int_equal(ADM(&t, "check"), 0);
  assert_non_null(strstr(t.out, "consistency 100.000 %"));
  adm_close(&t);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_keys_forget_verify)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
