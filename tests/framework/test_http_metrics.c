/* The /metrics endpoint against a real HTTP client (libcurl) on another
 * thread, while the loop serves it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cqrs/http.h>

#include "ledger.h"
#include "http_get.h"
#include "prom_check.h"

typedef struct fx {
  uv_loop_t loop;
  cqrs_registry_t *reg;
  cqrs_store_t *store;
  cqrs_dispatcher_t *d;
  cqrs_metrics_t *m;
  cqrs_http_metrics_t *h;
  int fail_first, calls;
  bool http_closed;
  cqrs_clock_t *clock; /* manual: the projection's retry waits for the test */
} fx_t;

static cqrs_code_t projection(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)e;
  fx_t *fx = data;
  return ++fx->calls <= fx->fail_first ? cqrs_error_set(err, CQRS_EHANDLER, "not yet") : CQRS_OK;
}

static int setup(void **state) {
  fx_t *fx = calloc(1, sizeof *fx);
  uv_loop_init(&fx->loop);
  fx->reg = ledger_registry();
  cqrs_memory_store_new(&fx->store, NULL);
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.retry_base_ms = 1000; /* on a manual clock: the retry waits for the test */
  assert_int_equal(cqrs_clock_manual_new(1700000000000LL, &fx->clock, NULL), CQRS_OK);
  o.clock = fx->clock;
  cqrs_error_t err;
  if (cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, &o, &fx->d, &err) ||
      ledger_handlers(fx->d, NULL, 0, &err) ||
      cqrs_dispatcher_subscribe(fx->d, "ledger.view", NULL, projection, fx, 0, &err) ||
      cqrs_metrics_new(&fx->m, &err) || cqrs_metrics_attach(fx->m, fx->d, &err) ||
      cqrs_http_metrics_start(&fx->loop, fx->m, NULL, 0, &fx->h, &err))
    fail_msg("%s", err.message);
  assert_true(cqrs_http_metrics_port(fx->h) > 0);
  *state = fx;
  return 0;
}

static void http_closed(void *data) { ((fx_t *)data)->http_closed = true; }

static int teardown(void **state) {
  fx_t *fx = *state;
  assert_int_equal(cqrs_http_metrics_close(fx->h, http_closed, fx), CQRS_OK);
  assert_int_equal(cqrs_http_metrics_close(fx->h, NULL, NULL), CQRS_ECLOSED);
  assert_int_equal(cqrs_dispatcher_close(fx->d, NULL, NULL), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_true(fx->http_closed);
  assert_int_equal(uv_loop_close(&fx->loop), 0);
  cqrs_metrics_destroy(fx->m);
  cqrs_store_destroy(fx->store);
  cqrs_registry_destroy(fx->reg);
  cqrs_clock_destroy(fx->clock);
  free(fx);
  return 0;
}

/* ---- a client on its own thread; the loop serves meanwhile ---- */

typedef struct call {
  uint16_t port;
  const char *path, *method; /* method NULL: GET */
  const char *raw;           /* instead: send these bytes on a bare socket */
  long status;
  char type[128];
  char *body;
  size_t len;
  uv_async_t done;
} call_t;

static void raw_call(call_t *c) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(c->port), .sin_addr.s_addr = htonl(0x7f000001)};
  if (s >= 0 && connect(s, (struct sockaddr *)&a, sizeof a) == 0 && write(s, c->raw, strlen(c->raw)) > 0) {
    char buf[512];
    ssize_t n = read(s, buf, sizeof buf - 1);
    if (n > 0) {
      buf[n] = '\0';
      c->body = strdup(buf);
      c->len = (size_t)n;
    }
  }
  if (s >= 0) close(s);
}

static void client(void *arg) {
  call_t *c = arg;
  if (c->raw) {
    raw_call(c);
  } else {
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", (unsigned)c->port, c->path);
    c->body = http_get(url, c->method, &c->status, c->type, sizeof c->type);
  }
  uv_async_send(&c->done);
}

static void client_done(uv_async_t *a) {
  uv_close((uv_handle_t *)a, NULL);
  uv_stop(a->loop);
}

static call_t *request(fx_t *fx, const char *method, const char *path, const char *raw) {
  call_t *c = calloc(1, sizeof *c);
  c->port = cqrs_http_metrics_port(fx->h);
  c->method = method;
  c->path = path;
  c->raw = raw;
  uv_async_init(&fx->loop, &c->done, client_done);
  uv_thread_t t;
  assert_int_equal(uv_thread_create(&t, client, c), 0);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  uv_thread_join(&t);
  uv_run(&fx->loop, UV_RUN_NOWAIT); /* the async handle's close */
  return c;
}

static void call_free(call_t *c) {
  free(c->body);
  free(c);
}

static char *scrape(fx_t *fx) {
  call_t *c = request(fx, NULL, "/metrics", NULL);
  assert_int_equal(c->status, 200);
  assert_string_equal(c->type, "text/plain; version=0.0.4; charset=utf-8");
  assert_non_null(c->body);
  char why[128];
  if (!prom_check(c->body, why, sizeof why)) fail_msg("%s\n%s", why, c->body);
  char *body = c->body;
  c->body = NULL;
  call_free(c);
  return body;
}

static int completed;
static void on_done(const cqrs_result_t *r, void *data) {
  (void)r, (void)data;
  completed++;
}

static void send_cmd(fx_t *fx, cqrs_command_t *cmd) {
  assert_int_equal(cqrs_dispatcher_send(fx->d, cmd, on_done, NULL), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_NOWAIT);
}

static void test_counts_what_happened(void **state) {
  fx_t *fx = *state;
  completed = 0;
  send_cmd(fx, ledger_open_new("a", "ann"));
  send_cmd(fx, ledger_credit_new("a", 5));
  send_cmd(fx, ledger_open_new("a", "ann"));
  send_cmd(fx, ledger_debit_new("a", 50));
  send_cmd(fx, ledger_debit_new("nobody", 1));
  assert_int_equal(completed, 5);
  char *text = scrape(fx);
  assert_true(prom_value(text, "cqrs_commands_total{type=\"ledger.open\",outcome=\"ok\",reason=\"\"}") == 1);
  assert_true(prom_value(text, "cqrs_commands_total{type=\"ledger.credit\",outcome=\"ok\",reason=\"\"}") == 1);
  assert_true(prom_value(text, "cqrs_commands_total{type=\"ledger.open\",outcome=\"rejected\","
                               "reason=\"ledger.already_open\"}") == 1);
  assert_true(prom_value(text, "cqrs_commands_total{type=\"ledger.debit\",outcome=\"rejected\","
                               "reason=\"ledger.insufficient\"}") == 1);
  assert_true(prom_value(text, "cqrs_commands_total{type=\"ledger.debit\",outcome=\"rejected\","
                               "reason=\"ledger.not_open\"}") == 1);
  assert_true(prom_value(text, "cqrs_command_duration_seconds_count{type=\"ledger.debit\"}") == 2);
  assert_true(prom_value(text, "cqrs_events_published_total") == 2);
  assert_true(prom_value(text, "cqrs_store_calls_total{op=\"append\"}") == 2);
  assert_true(prom_value(text, "cqrs_head_position") == 2);
  assert_true(prom_value(text, "cqrs_projection_position{projection=\"ledger.view\"}") == 2);
  assert_true(prom_value(text, "cqrs_projection_lag_positions{projection=\"ledger.view\"}") == 0);
  free(text);
  assert_int_equal(cqrs_http_metrics_requests(fx->h), 1);
}

static void test_lag_returns_to_zero(void **state) {
  fx_t *fx = *state;
  fx->fail_first = 1;
  send_cmd(fx, ledger_open_new("l", "lea")); /* the projection fails; its retry waits 1 s of the clock */
  assert_int_equal(cqrs_clock_advance(fx->clock, 500), CQRS_OK);
  char *text = scrape(fx);
  assert_true(prom_value(text, "cqrs_projection_lag_positions{projection=\"ledger.view\"}") == 1);
  assert_true(prom_value(text, "cqrs_projection_lag_seconds{projection=\"ledger.view\"}") == 0.5);
  assert_true(prom_value(text, "cqrs_projection_retries_total{projection=\"ledger.view\"}") == 1);
  free(text);
  assert_int_equal(cqrs_clock_advance(fx->clock, 500), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT); /* the retry succeeds; then idle */
  text = scrape(fx);
  assert_true(prom_value(text, "cqrs_projection_lag_positions{projection=\"ledger.view\"}") == 0);
  assert_true(prom_value(text, "cqrs_projection_lag_seconds{projection=\"ledger.view\"}") == 0);
  assert_true(prom_value(text, "cqrs_projection_position{projection=\"ledger.view\"}") == 1);
  free(text);
}

static void test_other_requests(void **state) {
  fx_t *fx = *state;
  call_t *c = request(fx, NULL, "/other", NULL);
  assert_int_equal(c->status, 404);
  call_free(c);
  c = request(fx, "POST", "/metrics", NULL);
  assert_int_equal(c->status, 405);
  call_free(c);
  c = request(fx, "HEAD", "/metrics", NULL);
  assert_int_equal(c->status, 200);
  call_free(c);
  c = request(fx, NULL, NULL, "NOT HTTP AT ALL\r\n\r\n");
  assert_non_null(c->body);
  assert_non_null(strstr(c->body, " 400 "));
  call_free(c);
  char *text = scrape(fx); /* still serving */
  free(text);
}

static void test_bad_start(void **state) {
  fx_t *fx = *state;
  cqrs_http_metrics_t *h = (void *)1;
  cqrs_error_t err;
  assert_int_equal(cqrs_http_metrics_start(&fx->loop, fx->m, "127.0.0.1", cqrs_http_metrics_port(fx->h), &h, &err),
                   CQRS_ESTATE);
  assert_null(h);
  assert_non_null(strstr(err.message, "cannot serve /metrics"));
  assert_int_equal(cqrs_http_metrics_start(&fx->loop, fx->m, "localhost", 0, &h, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_http_metrics_start(NULL, fx->m, NULL, 0, &h, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_http_metrics_start(&fx->loop, fx->m, NULL, 0, NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_http_metrics_close(NULL, NULL, NULL), CQRS_EINVAL);
}

int main(void) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_counts_what_happened, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lag_returns_to_zero, setup, teardown),
      cmocka_unit_test_setup_teardown(test_other_requests, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_start, setup, teardown),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  curl_global_cleanup();
  return rc;
}
