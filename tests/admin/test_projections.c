/* billing-admin projections against a running application: the invoice
 * sample, a separate process on the real server, lingering after its flow.
 * The tool pauses its billing.invoices projection, resets it to 0 while
 * another process writes (a new customer, an e-mail change) and a read
 * document is lost, resumes it, and sees it catch up: the lost document
 * back, the other process's events projected, the checkpoint at the head. Each action is in the audit record. */
#include <time.h>

#include "admin_fixture.h"

static bool file_has(const char *path, const char *what) {
  char buf[16384];
  FILE *f = fopen(path, "r");
  size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
  buf[n] = '\0';
  if (f) fclose(f);
  return strstr(buf, what) != NULL;
}

static int64_t checkpoint(adm_t *t, const char *name) {
  bson_t doc;
  if (!adm_get(t, "billing_checkpoints", name, &doc)) return 0;
  int64_t at = adm_int(&doc, "position");
  bson_destroy(&doc);
  return at == INT64_MIN ? 0 : at;
}

static int64_t head(adm_t *t) {
  mongoc_collection_t *c = adm_coll(t, "billing_commands");
  bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, sort;
  BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
  BSON_APPEND_INT32(&sort, "position", -1);
  bson_append_document_end(&opts, &sort);
  BSON_APPEND_INT64(&opts, "limit", 1);
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, &filter, &opts, NULL);
  const bson_t *doc;
  int64_t h = 0;
  if (mongoc_cursor_next(cur, &doc)) {
    h = adm_int(doc, "lastPosition");
    if (h == INT64_MIN) h = adm_int(doc, "position");
  }
  mongoc_cursor_destroy(cur);
  bson_destroy(&filter);
  bson_destroy(&opts);
  mongoc_collection_destroy(c);
  return h;
}

/* The position of the first commit of aggregate `id`. */
static int64_t commit_position(adm_t *t, const char *id) {
  bson_t filter = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "aggregateId", id);
  mongoc_collection_t *c = adm_coll(t, "billing_commands");
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, &filter, NULL, NULL);
  const bson_t *doc;
  int64_t at = mongoc_cursor_next(cur, &doc) ? adm_int(doc, "position") : 0;
  mongoc_cursor_destroy(cur);
  mongoc_collection_destroy(c);
  bson_destroy(&filter);
  return at;
}

static bool has_doc(adm_t *t, const char *coll, const char *id) {
  bson_t doc;
  if (!adm_get(t, coll, id, &doc)) return false;
  bson_destroy(&doc);
  return true;
}

/* Waits (bounded) for `cond`, reading the store again every 100 ms. */
#define WAIT_FOR(cond, secs)                                                       \
  do {                                                                             \
    int64_t until_ = cqrs_now_ms() + (secs) * 1000;                                \
    while (!(cond) && cqrs_now_ms() < until_) uv_sleep(100);                       \
    if (!(cond)) fail_msg("waited %d s in vain for %s", (int)(secs), #cond);      \
  } while (0)

/* The sample, stopped however the test ends (a failed assertion leaves
 * the test function). */
static pid_t sample;

static int stop_sample(void **state) {
  (void)state;
  if (sample > 0) {
    kill(sample, SIGKILL);
    waitpid(sample, NULL, 0);
    sample = 0;
  }
  return 0;
}

static void test_controls_on_a_running_sample(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  char out[64];
  snprintf(out, sizeof out, "/tmp/adm_sample_%d", (int)getpid());
  const char *argv[] = {SAMPLE_INVOICE, "--mongo", t.uri, "--reset", "--metrics-port", "0", "--linger", "600", NULL};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  assert_int_equal(posix_spawn(&sample, SAMPLE_INVOICE, &fa, NULL, (char *const *)argv, environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  WAIT_FOR(file_has(out, "flow done"), 120);

  /* Listed as the running process reports it, caught up. */
  WAIT_FOR((ADM(&t, "--json", "projections"), strstr(t.out, "\"state\" : \"running\"") &&
                                                    !strstr(t.out, "\"reportedBy\" : null")),
           30);
  assert_non_null(strstr(t.out, "\"name\" : \"billing.invoices\""));
  assert_int_equal(ADM(&t, "projections"), 0);
  assert_non_null(strstr(t.out, "billing.invoices"));
  assert_non_null(strstr(t.out, "running"));
  int64_t h0 = head(&t);
  assert_int_equal(checkpoint(&t, "billing.invoices"), h0);
  assert_true(has_doc(&t, "billing_queries", "inv_2"));

  /* Paused: then a read document is lost and another process writes. */
  if (ADM(&t, "projections", "pause", "billing.invoices", "--wait", "60"))
    fail_msg("pause: %s %s", t.out, t.err);
  assert_non_null(strstr(t.out, "billing.invoices: paused (paused, by "));
  delete_doc(&t, "billing_queries", "inv_2");
  app_t w; /* another process's commits, with no projection of its own */
  app_open_with(&w, &t, false);
  billing_register_customer_t reg = {.customer_id = "tp_cust", .name = "Tee Pee", .email = "tp@example.com"};
  app_send(&w, &billing_register_customer, &reg);
  billing_change_email_t change = {.customer_id = "acme", .email = "reset@acme.com"};
  app_send(&w, &billing_change_email, &change);
  app_close(&w);
  assert_true(head(&t) > h0);

  /* Reset to 0 while paused: the checkpoint goes back, nothing moves yet. */
  if (ADM(&t, "projections", "reset", "--to", "0", "billing.invoices", "--wait", "60"))
    fail_msg("reset: %s %s", t.out, t.err);
  assert_non_null(strstr(t.out, "billing.invoices: request 1 (reset to #0) carried out: reset to #0 (paused, by "));
  assert_int_equal(checkpoint(&t, "billing.invoices"), 0);
  assert_false(has_doc(&t, "billing_customers", "tp_cust"));
  assert_false(has_doc(&t, "billing_queries", "inv_2"));
  assert_int_equal(ADM(&t, "projections"), 1); /* behind the head */
  assert_non_null(strstr(t.out, "paused"));

  /* Resumed: it reads the store again from 0 and catches up. */
  if (ADM(&t, "projections", "resume", "billing.invoices", "--wait", "60"))
    fail_msg("resume: %s %s", t.out, t.err);
  WAIT_FOR(checkpoint(&t, "billing.invoices") == head(&t), 60);
  assert_true(has_doc(&t, "billing_queries", "inv_2"));
  assert_true(has_doc(&t, "billing_customers", "tp_cust"));
  bson_t inv1, opened = BSON_INITIALIZER; /* personal data is sealed at rest */
  assert_true(adm_get(&t, "billing_queries", "inv_1", &inv1));
  reader_t r;
  reader_open(&r, &t);
  assert_int_equal(cqrs_readmodel_open_doc(r.rm, "billing_queries", &inv1, &opened, NULL), CQRS_OK);
  assert_string_equal(adm_str(&opened, "customer.email"), "reset@acme.com");
  reader_close(&r);
  bson_destroy(&opened);
  bson_destroy(&inv1);
  WAIT_FOR((ADM(&t, "--json", "projections"), strstr(t.out, "\"behindEvents\" : 0, \"behindAtLeast\" : false")), 30);
  assert_int_equal(ADM(&t, "check"), 0);

  /* A lost read document back by replaying its one event into the running
   * projection. */
  int64_t at = commit_position(&t, "tp_cust");
  assert_true(at > h0);
  delete_doc(&t, "billing_customers", "tp_cust");
  char pos[24];
  snprintf(pos, sizeof pos, "%lld", (long long)at);
  if (ADM(&t, "projections", "replay", pos, "billing.invoices", "--wait", "60"))
    fail_msg("replay: %s %s", t.out, t.err);
  assert_non_null(strstr(t.out, ") carried out: replayed #"));
  WAIT_FOR(has_doc(&t, "billing_customers", "tp_cust"), 60);
  assert_int_equal(checkpoint(&t, "billing.invoices"), head(&t));
  assert_int_equal(ADM(&t, "check"), 0);

  /* What the process refuses fails; a skip ahead of it is taken. */
  snprintf(pos, sizeof pos, "%lld", (long long)head(&t) + 1000);
  assert_int_equal(ADM(&t, "projections", "replay", pos, "billing.invoices", "--wait", "60"), 1);
  assert_non_null(strstr(t.out, "not carried out: replay refused: no event #"));
  assert_int_equal(ADM(&t, "projections", "skip", pos, "billing.invoices", "--wait", "60"), 0);
  assert_non_null(strstr(t.out, "taken: #"));

  /* Each action is on record, with who did it. */
  assert_int_equal(ADM(&t, "audit"), 0);
  const char *pause = strstr(t.out, "projection.pause billing.invoices");
  const char *reset = strstr(t.out, "projection.reset billing.invoices: reset to #0");
  const char *resume = strstr(t.out, "projection.resume billing.invoices");
  const char *replay = strstr(t.out, "projection.replay billing.invoices: replay of #");
  assert_true(pause && reset && resume && replay && pause < reset && reset < resume && resume < replay);
  assert_non_null(strchr(t.out, '@'));
  assert_int_equal(ADM(&t, "--json", "audit", "--action", "projection.re"), 0);
  assert_null(strstr(t.out, "projection.pause"));
  assert_non_null(strstr(t.out, "projection.resume"));
  /* The command line as given, not as option parsing reordered it. */
  assert_non_null(strstr(t.out, "\"projections\", \"reset\", \"--to\", \"0\", \"billing.invoices\", \"--wait\", \"60\" ]"));

  stop_sample(NULL);
  unlink(out);
  adm_close(&t);
}

/* Usage errors and a request nobody runs: recorded, and said so. */
static void test_requests_without_a_process(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  assert_int_equal(ADM(&t, "--allow-empty", "projections", "reset", "billing.invoices"), 2);
  assert_int_equal(ADM(&t, "--allow-empty", "projections", "skip", "x", "billing.invoices"), 2);
  assert_int_equal(ADM(&t, "--allow-empty", "projections", "pause", "nope"), 2);
  assert_int_equal(ADM(&t, "--allow-empty", "projections", "frob", "billing.invoices"), 2);
  assert_int_equal(ADM(&t, "--allow-empty", "projections", "skip", "7", "billing.balances", "--wait", "1"), 1);
  assert_non_null(strstr(t.out, "skip of #7 recorded as a request; no running process acted on it within 1 s"));
  assert_int_equal(ADM(&t, "--allow-empty", "projections", "pause", "billing.balances", "--wait", "0"), 0);
  assert_int_equal(ADM(&t, "--allow-empty", "projections"), 1); /* stopped */
  assert_non_null(strstr(t.out, "paused (takes effect when a process runs it)"));
  assert_non_null(strstr(t.out, "request 1 waits to be carried out"));
  assert_non_null(strstr(t.out, "stopped"));
  /* Flag changes are on record too; a failed request is not. */
  assert_int_equal(ADM(&t, "--allow-empty", "flag", "mongodb_cqs_enabled", "shadow"), 0);
  assert_int_equal(ADM(&t, "--allow-empty", "audit"), 0);
  assert_non_null(strstr(t.out, "projection.skip billing.balances: skip of #7"));
  assert_non_null(strstr(t.out, "projection.pause billing.balances: pause"));
  assert_non_null(strstr(t.out, "flag.set mongodb_cqs_enabled: shadow"));
  assert_null(strstr(t.out, "nope"));
  adm_close(&t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_requests_without_a_process),
      cmocka_unit_test_teardown(test_controls_on_a_running_sample, stop_sample),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
