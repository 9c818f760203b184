/* A sample run as its own process with --mongo and --metrics-port: its
 * endpoint answers a real HTTP client, it announces itself in cqrs_instances
 * with a heartbeat, and it takes its entry away when it exits. */
#include <curl/curl.h>
#include <mongoc/mongoc.h>

#include "mongo_fixture.h"
#include "http_get.h"
#include "prom_check.h"

static char *scrape(const char *endpoint) {
  long status = 0;
  char *body = http_get(endpoint, NULL, &status, NULL, 0);
  assert_non_null(body);
  assert_int_equal(status, 200);
  return body;
}

/* The announcement of the process serving `endpoint`; found false when none. */
static int64_t heartbeat_of(mongoc_collection_t *coll, const char *endpoint, bool *found) {
  bson_t *filter = BCON_NEW("endpoint", BCON_UTF8(endpoint));
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll, filter, NULL, NULL);
  const bson_t *doc;
  int64_t beat = 0;
  *found = false;
  while (mongoc_cursor_next(cur, &doc)) {
    bson_iter_t it;
    *found = true;
    assert_true(bson_iter_init_find(&it, doc, "app") && !strcmp(bson_iter_utf8(&it, NULL), "billing"));
    assert_true(bson_iter_init_find(&it, doc, "_id") && strchr(bson_iter_utf8(&it, NULL), ':'));
    assert_true(bson_iter_init_find(&it, doc, "startedAt") && BSON_ITER_HOLDS_DATE_TIME(&it));
    assert_true(bson_iter_init_find(&it, doc, "heartbeatAt") && BSON_ITER_HOLDS_DATE_TIME(&it));
    beat = bson_iter_date_time(&it);
  }
  mongoc_cursor_destroy(cur);
  bson_destroy(filter);
  return beat;
}

static void test_sample_announces_its_endpoint(void **state) {
  (void)state;
  NEED_MONGO();
  char db[64], uri[512], cmd[1024];
  test_mongo_db(db, sizeof db);
  const char *base = test_mongo_uri();
  snprintf(uri, sizeof uri, "%s%s%s", base, base[strlen(base) - 1] == '/' ? "" : "/", db);
  snprintf(cmd, sizeof cmd, "'%s' --mongo '%s' --reset --metrics-port 0 --linger 16 2>/dev/null", SAMPLE_INVOICE, uri);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  char line[512], endpoint[128] = "";
  while (!*endpoint && fgets(line, sizeof line, p)) {
    const char *at = strstr(line, "metrics at ");
    if (at) snprintf(endpoint, sizeof endpoint, "%.*s", (int)strcspn(at + 11, "\n"), at + 11);
  }
  assert_true(!strncmp(endpoint, "http://127.0.0.1:", 17));

  /* The flow ends with five invoice.by_customer queries and an
   * invoice.by_id: once they are counted, it is over and the process
   * lingers, idle. */
  char *text = NULL;
  for (int i = 0; i < 300; i++) {
    free(text);
    text = scrape(endpoint);
    if (prom_value(text, "cqrs_queries_total{name=\"invoice.by_id\",outcome=\"ok\"}") == 2) break;
    usleep(200000);
  }
  char why[128];
  if (!prom_check(text, why, sizeof why)) fail_msg("%s", why);
  assert_true(prom_value(text, "cqrs_commands_total{type=\"customer.change_email\",outcome=\"ok\",reason=\"\"}") == 1);
  /* Six: inv_1 sent again is answered from its first commit (duplicate). */
  assert_true(prom_value(text, "cqrs_commands_total{type=\"invoice.issue\",outcome=\"ok\",reason=\"\"}") == 6);
  assert_true(prom_value(text, "cqrs_commands_total{type=\"customer.forget\",outcome=\"ok\",reason=\"\"}") == 2);
  assert_true(prom_value(text, "cqrs_queries_total{name=\"invoice.by_customer\",outcome=\"ok\"}") == 5);
  assert_true(prom_value(text, "cqrs_commands_total{type=\"invoice.pay\",outcome=\"rejected\","
                               "reason=\"invoice.already_paid\"}") == 1);
  assert_true(prom_value(text, "cqrs_commands_total{type=\"invoice.issue\",outcome=\"rejected\","
                               "reason=\"invoice.unknown_customer\"}") == 1);
  assert_true(prom_value(text, "cqrs_projection_lag_positions{projection=\"billing.invoices\"}") == 0);
  assert_true(prom_value(text, "cqrs_projection_lag_seconds{projection=\"billing.invoices\"}") == 0);
  assert_true(prom_value(text, "cqrs_projection_position{projection=\"billing.invoices\"}") > 0);
  assert_true(prom_value(text, "cqrs_store_errors_total{op=\"append\",class=\"transient\"}") == 0);
  free(text);

  mongoc_client_t *client = mongoc_client_new(base);
  mongoc_collection_t *coll = mongoc_client_get_collection(client, db, "cqrs_instances");
  bool found;
  int64_t first = heartbeat_of(coll, endpoint, &found);
  assert_true(found);
  int64_t second = first;
  for (int i = 0; i < 60 && second == first; i++) { /* a heartbeat every 5 s: wait for the next */
    usleep(200000);
    second = heartbeat_of(coll, endpoint, &found);
    assert_true(found);
  }
  assert_true(second > first);

  while (fgets(line, sizeof line, p)) {
  }
  assert_int_equal(pclose(p), 0);
  heartbeat_of(coll, endpoint, &found);
  assert_false(found); /* gone with the process */
  mongoc_database_t *d = mongoc_client_get_database(client, db);
  mongoc_database_drop(d, NULL);
  mongoc_database_destroy(d);
  mongoc_collection_destroy(coll);
  mongoc_client_destroy(client);
}

int main(void) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  mongoc_init();
  cqrs_mongo_quiet_logs();
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_sample_announces_its_endpoint)};
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  mongoc_cleanup();
  curl_global_cleanup();
  return rc;
}
