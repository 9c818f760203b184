/* billing-admin status, the real binary against the real server, scraping
 * real HTTP endpoints: a stand-in (metrics_server.py) and a real process
 * (the invoice sample). */
#include <math.h>

#include "admin_fixture.h"

/* ---- status, against a real HTTP endpoint ---- */

static void add_instance(adm_t *t, const char *id, const char *endpoint, int64_t heartbeat) {
  mongoc_collection_t *c = adm_coll(t, "cqrs_instances");
  bson_t doc = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&doc, "_id", id);
  BSON_APPEND_UTF8(&doc, "endpoint", endpoint);
  BSON_APPEND_UTF8(&doc, "app", "billing");
  BSON_APPEND_DATE_TIME(&doc, "startedAt", heartbeat - 1000);
  BSON_APPEND_DATE_TIME(&doc, "heartbeatAt", heartbeat);
  bson_error_t e;
  if (!mongoc_collection_insert_one(c, &doc, NULL, NULL, &e)) fail_msg("%s", e.message);
  bson_destroy(&doc);
  mongoc_collection_destroy(c);
}

static double json_double(const char *text, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\" : ", key);
  const char *p = strstr(text, pat);
  if (!p) fail_msg("no %s in %s", key, text);
  return atof(p + strlen(pat));
}

static pid_t metrics_server;

/* Stops the endpoint even when an assertion failed. */
static int stop_metrics_server(void **state) {
  (void)state;
  if (metrics_server > 0) {
    kill(metrics_server, SIGTERM);
    waitpid(metrics_server, NULL, 0);
    metrics_server = 0;
  }
  return 0;
}

/* Starts metrics_server.py with `scale`; its endpoint into endpoint[cap]. */
static void start_metrics_server(const char *scale, char *endpoint, size_t cap) {
  char portfile[64];
  snprintf(portfile, sizeof portfile, "/tmp/adm_port_%d", (int)getpid());
  unlink(portfile);
  const char *argv[] = {"python3", METRICS_SERVER, portfile, scale, NULL};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  assert_int_equal(posix_spawnp(&metrics_server, "python3", &fa, NULL, (char *const *)argv, environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  FILE *f = NULL;
  for (int i = 0; i < 200 && !(f = fopen(portfile, "r")); i++) uv_sleep(50); /* until it listens */
  assert_non_null(f);
  int port = 0;
  assert_int_equal(fscanf(f, "%d", &port), 1);
  fclose(f);
  unlink(portfile);
  snprintf(endpoint, cap, "http://127.0.0.1:%d/metrics", port);
}

static void test_status_scrapes_endpoints(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  char endpoint[128];
  start_metrics_server("1", endpoint, sizeof endpoint);

  assert_int_equal(ADM(&t, "status"), 3); /* a database with nothing of the application's */
  assert_int_equal(ADM(&t, "status", "--allow-empty"), 1); /* nobody registered */
  assert_non_null(strstr(t.out, "no process registered"));
  add_instance(&t, "apphost:101", endpoint, cqrs_now_ms());
  assert_int_equal(ADM(&t, "--json", "status"), 0);
  /* 1000 commands and 19000 queries per scrape, one second apart. */
  double cmds = json_double(t.out, "commandsPerSecond"), qs = json_double(t.out, "queriesPerSecond");
  assert_true(cmds > 800 && cmds <= 1000); /* not the 500 steps of the process manager */
  assert_true(qs > 15200 && qs <= 19000);
  double steps = json_double(t.out, "processStepsPerSecond");
  assert_true(steps > 400 && steps <= 500);
  /* 2 errors in 20500 operations, steps included. */
  assert_true(fabs(json_double(t.out, "errorRatePercent") - 200.0 / 20500) < 1e-9);
  assert_true(fabs(json_double(t.out, "syncLagSeconds") - 0.25) < 1e-9);
  assert_true(fabs(json_double(t.out, "writeP99Seconds") - (0.005 + 0.045 * 90.0 / 95.0)) < 1e-9);
  assert_true(fabs(json_double(t.out, "readP99Seconds") - (0.001 + 0.009 * 0.81)) < 1e-9);

  /* A process whose heartbeat stopped, one nobody answers for: shown, and 1. */
  add_instance(&t, "apphost:102", endpoint, cqrs_now_ms() - 60000);
  add_instance(&t, "apphost:103", "http://127.0.0.1:1/metrics", cqrs_now_ms());
  assert_int_equal(ADM(&t, "status"), 1);
  assert_non_null(strstr(t.out, "apphost:102"));
  assert_non_null(strstr(t.out, "stale: last heartbeat 6"));
  assert_non_null(strstr(t.out, "apphost:103"));
  assert_non_null(strstr(t.out, "unreachable"));
  assert_non_null(strstr(t.out, "write p99          47.6 ms   < 100 ms        ok"));
  assert_non_null(strstr(t.out, "sync lag            0.250s   < 1 s           ok"));

  /* --watch redraws in place. */
  assert_int_equal(ADM(&t, "status", "--watch", "--count", "2"), 1);
  const char *first = strstr(t.out, "\033[H\033[2J");
  assert_non_null(first);
  assert_non_null(strstr(first + 1, "\033[H\033[2J"));
  adm_close(&t);
}

/* The figures of the whole: after "total" in the JSON. */
static double total_double(const char *text, const char *key) {
  const char *total = strstr(text, "\"total\"");
  if (!total) fail_msg("no total in %s", text);
  return json_double(total, key);
}

/* A figure nobody measured is unknown, never "ok". */
static void test_status_unknown_is_not_ok(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  add_instance(&t, "apphost:201", "http://127.0.0.1:1/metrics", cqrs_now_ms());
  assert_int_equal(ADM(&t, "--json", "status"), 1);
  const char *total = strstr(t.out, "\"total\"");
  assert_non_null(total);
  assert_non_null(strstr(total, "\"targetsMet\" : false"));
  assert_non_null(strstr(total, "\"writeP99Seconds\" : null"));
  assert_non_null(strstr(total, "\"commandsPerSecond\" : null"));
  assert_null(strstr(t.out, ": -1"));
  assert_int_equal(ADM(&t, "status"), 1);
  assert_non_null(strstr(t.out, "write p99          unknown   < 100 ms        unknown\n"));
  assert_non_null(strstr(t.out, "error rate         unknown   < 0.1 %         unknown\n"));
  assert_non_null(strstr(t.out, "throughput            unknown   > 10000 ops/s   unknown\n"));
  /* What the store says is known: nothing to project, no lag. */
  assert_non_null(strstr(t.out, "sync lag            0.000s   < 1 s           ok\n"));
  assert_null(strstr(t.out, "all targets met"));
  adm_close(&t);
}

/* 200 operations a second miss the seed's 10,000. */
static void test_status_low_throughput_missed(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  char endpoint[128];
  start_metrics_server("0.01", endpoint, sizeof endpoint);
  add_instance(&t, "apphost:301", endpoint, cqrs_now_ms());
  assert_int_equal(ADM(&t, "--json", "status"), 1);
  double ops = total_double(t.out, "opsPerSecond");
  assert_true(ops > 100 && ops <= 205);
  assert_non_null(strstr(t.out, "\"targetsMet\" : false"));
  assert_int_equal(ADM(&t, "status"), 1);
  assert_non_null(strstr(t.out, "throughput"));
  assert_non_null(strstr(t.out, "> 10000 ops/s   MISSED"));
  assert_null(strstr(t.out, "all targets met"));
  adm_close(&t);
}

static void set_checkpoint(adm_t *t, const char *name, int64_t position) {
  char json[128];
  snprintf(json, sizeof json, "{\"$set\": {\"position\": {\"$numberLong\": \"%lld\"}}}", (long long)position);
  update_json(t, "billing_checkpoints", name, json, true);
}

/* The sync lag is what the store says a projection has still to handle,
 * not only what the processes report of their recent deliveries. */
static void test_status_lag_from_the_store(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  assert_int_equal(ADM(&t, "gen-legacy", "60", "--customers", "10"), 0);
  assert_int_equal(ADM(&t, "migrate", "--quiet"), 0);
  bson_t cp;
  assert_true(adm_get(&t, "billing_checkpoints", "billing.invoices", &cp));
  int64_t at = adm_int(&cp, "position");
  bson_destroy(&cp);
  char endpoint[128];
  start_metrics_server("1", endpoint, sizeof endpoint); /* reports a lag of 0.25 s */
  add_instance(&t, "apphost:401", endpoint, cqrs_now_ms());
  assert_int_equal(ADM(&t, "--json", "status"), 0);
  assert_true(fabs(total_double(t.out, "syncLagSeconds") - 0.25) < 1e-9);
  set_checkpoint(&t, "billing.invoices", 10); /* as after a reset: everything after it to do again */
  assert_int_equal(ADM(&t, "--json", "status"), 1);
  assert_true(json_double(t.out, "behindEvents") > 50);
  assert_true(total_double(t.out, "syncLagSeconds") > 1); /* the oldest event not handled: the legacy dates */
  assert_int_equal(ADM(&t, "status"), 1);
  assert_non_null(strstr(t.out, "billing.invoices"));
  assert_non_null(strstr(t.out, "events behind"));
  assert_non_null(strstr(t.out, "MISSED"));
  set_checkpoint(&t, "billing.invoices", at);
  assert_int_equal(ADM(&t, "status"), 0);
  adm_close(&t);
}

/* The dashboard of a real application process: the invoice sample on this
 * database serves /metrics (libmicrohttpd) and announces itself in
 * cqrs_instances; status finds it there and scrapes it with libcurl. */
static void test_status_of_a_real_process(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s' --mongo '%s' --reset --metrics-port 0 --linger 6 2>/dev/null", SAMPLE_INVOICE, t.uri);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  char line[512], endpoint[128] = "";
  while (!*endpoint && fgets(line, sizeof line, p)) {
    const char *at = strstr(line, "metrics at ");
    if (at) snprintf(endpoint, sizeof endpoint, "%.*s", (int)strcspn(at + 11, "\n"), at + 11);
  }
  assert_true(!strncmp(endpoint, "http://127.0.0.1:", 17));
  /* Read the dashboard once the sample has registered itself (it prints
   * its endpoint first, so on a loaded machine the first readings may list
   * nobody: the JSON's totals are there all the same) and its figures were
   * scraped. A scrape can time out while the sample's loop is busy with the
   * flow: that reading is taken again, so only an endpoint that stays
   * unreachable fails. */
  int rc = -1;
  for (int i = 0; i < 100; i++) {
    rc = ADM(&t, "--json", "status");
    if (strstr(t.out, endpoint) && strstr(t.out, "\"figures\"") && !strstr(t.out, "unreachable")) break;
    uv_sleep(200);
  }
  if (rc != 0 && rc != 1) fail_msg("status exit %d: %s %s", rc, t.out, t.err);
  assert_non_null(strstr(t.out, endpoint));
  assert_null(strstr(t.out, "unreachable"));
  json_double(t.out, "commandsPerSecond");
  json_double(t.out, "syncLagSeconds");
  assert_true(json_double(t.out, "errorRatePercent") >= 0);
  pclose(p); /* the sample lingers, then leaves cqrs_instances */
  adm_close(&t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_status_scrapes_endpoints, stop_metrics_server),
      cmocka_unit_test(test_status_unknown_is_not_ok),
      cmocka_unit_test_teardown(test_status_low_throughput_missed, stop_metrics_server),
      cmocka_unit_test_teardown(test_status_lag_from_the_store, stop_metrics_server),
      cmocka_unit_test(test_status_of_a_real_process),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
