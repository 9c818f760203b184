/* The /metrics endpoint against a real HTTP client (libcurl) on another
 * thread, while the loop serves it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
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

static int setup_with(void **state, uint64_t retry_base_ms, int fail_first, bool manual) {
  fx_t *fx = calloc(1, sizeof *fx);
  fx->fail_first = fail_first;
  uv_loop_init(&fx->loop);
  fx->reg = ledger_registry();
  cqrs_memory_store_new(&fx->store, NULL);
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.retry_base_ms = retry_base_ms;
  if (manual) { /* the retry waits for the test */
    assert_int_equal(cqrs_clock_manual_new(1700000000000LL, &fx->clock, NULL), CQRS_OK);
    o.clock = fx->clock;
  }
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

/* The first retry waits 1 s of a manual clock: as long as the test likes. */
static int setup(void **state) { return setup_with(state, 1000, 0, true); }

/* A projection that fails its first two deliveries, backing off 2 s then
 * 4 s: stalled for 6 s of the real clock (what /readyz judges by). */
static int setup_stalling(void **state) { return setup_with(state, 2000, 2, false); }

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

/* ---- slow clients: many connections trickling a request byte by byte ---- */

#define SLOW_CLIENTS 80     /* more than the endpoint's 64 connections */
#define TRICKLE_MS 2000     /* one byte per connection this often */
#define SLOW_MAX_MS 60000   /* they give up after this, answered or not */

typedef struct slow {
  uint16_t port;
  atomic_bool holding, stop;
  int connected;
  uv_async_t closed;
} slow_t;

static void slow_clients(void *arg) {
  slow_t *sl = arg;
  int fds[SLOW_CLIENTS];
  static const char start[] = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
  for (int i = 0; i < SLOW_CLIENTS; i++) {
    fds[i] = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(sl->port), .sin_addr.s_addr = htonl(0x7f000001)};
    if (fds[i] >= 0 && connect(fds[i], (struct sockaddr *)&a, sizeof a) == 0 &&
        send(fds[i], start, sizeof start - 1, MSG_NOSIGNAL) > 0)
      sl->connected++;
  }
  atomic_store(&sl->holding, true);
  /* A byte each, every TRICKLE_MS, never the end of the headers. */
  for (int waited = 0; !atomic_load(&sl->stop) && waited < SLOW_MAX_MS; waited += 100) {
    uv_sleep(100);
    if (waited % TRICKLE_MS) continue;
    for (int i = 0; i < SLOW_CLIENTS; i++) {
      if (fds[i] >= 0) send(fds[i], "a", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
  }
  for (int i = 0; i < SLOW_CLIENTS; i++) {
    if (fds[i] >= 0) close(fds[i]);
  }
  uv_async_send(&sl->closed);
}

typedef struct scrape_while {
  slow_t *sl;
  uint16_t port;
  long status;
  char *body;
  uv_async_t done;
} scrape_while_t;

/* Scrapes once the slow clients hold their connections, then lets them go. */
static void scrape_during(void *arg) {
  scrape_while_t *sw = arg;
  while (!atomic_load(&sw->sl->holding)) uv_sleep(10);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%u/metrics", (unsigned)sw->port);
  sw->body = http_get(url, NULL, &sw->status, NULL, 0);
  atomic_store(&sw->sl->stop, true);
  uv_async_send(&sw->done);
}

static int asyncs_left;
static void one_done(uv_async_t *a) {
  uv_close((uv_handle_t *)a, NULL);
  if (--asyncs_left == 0) uv_stop(a->loop);
}

/* While 80 connections trickle a byte every 2 s, the endpoint still
 * answers a scrape; once they are gone it answers too. */
static void test_slow_clients(void **state) {
  fx_t *fx = *state;
  slow_t sl = {.port = cqrs_http_metrics_port(fx->h)};
  atomic_init(&sl.holding, false);
  atomic_init(&sl.stop, false);
  scrape_while_t sw = {.sl = &sl, .port = sl.port};
  uv_async_init(&fx->loop, &sl.closed, one_done);
  uv_async_init(&fx->loop, &sw.done, one_done);
  asyncs_left = 2;
  uv_thread_t slow, scraper;
  assert_int_equal(uv_thread_create(&slow, slow_clients, &sl), 0);
  assert_int_equal(uv_thread_create(&scraper, scrape_during, &sw), 0);
  uv_run(&fx->loop, UV_RUN_DEFAULT); /* serves until both are done */
  uv_thread_join(&scraper);
  uv_thread_join(&slow);
  assert_int_equal(sl.connected, SLOW_CLIENTS);
  if (sw.status != 200) fail_msg("no answer while slow clients held the endpoint (status %ld)", sw.status);
  assert_non_null(sw.body);
  assert_non_null(strstr(sw.body, "cqrs_head_position"));
  free(sw.body);
  /* After them, every time. */
  for (int i = 0; i < 5; i++) free(scrape(fx));
}

typedef struct trickler {
  uint16_t port;
  bool cut_off;   /* the server closed it */
  int64_t after_ms;
  uv_async_t done;
} trickler_t;

/* One connection that never finishes its request and is never idle for
 * long: a byte every 500 ms, until the server closes it (or 30 s). */
static void trickle(void *arg) {
  trickler_t *tr = arg;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(tr->port), .sin_addr.s_addr = htonl(0x7f000001)};
  int64_t start = (int64_t)(uv_hrtime() / 1000000);
  if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      send(fd, "GET /metrics HTTP/1.1\r\nX-Slow: ", 31, MSG_NOSIGNAL) > 0) {
    for (int i = 0; i < 60 && !tr->cut_off; i++) {
      struct pollfd p = {.fd = fd, .events = POLLIN};
      if (poll(&p, 1, 500) == 1) {
        char buf[256];
        (void)recv(fd, buf, sizeof buf, 0); /* the end, or an error page before it */
        tr->cut_off = true;
      } else {
        send(fd, "a", 1, MSG_NOSIGNAL);
      }
    }
  }
  tr->after_ms = (int64_t)(uv_hrtime() / 1000000) - start;
  if (fd >= 0) close(fd);
  uv_async_send(&tr->done);
}

/* A connection gets a few seconds to deliver its request, however busy it
 * keeps itself. */
static void test_request_deadline(void **state) {
  fx_t *fx = *state;
  trickler_t tr = {.port = cqrs_http_metrics_port(fx->h)};
  uv_async_init(&fx->loop, &tr.done, client_done);
  uv_thread_t t;
  assert_int_equal(uv_thread_create(&t, trickle, &tr), 0);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  uv_thread_join(&t);
  uv_run(&fx->loop, UV_RUN_NOWAIT);
  if (!tr.cut_off) fail_msg("a connection trickling its request was kept %lld ms", (long long)tr.after_ms);
  assert_true(tr.after_ms >= 4000); /* not before its deadline (5 s, reaped every 250 ms) */
}

static void wake(uv_timer_t *t) { uv_stop(t->loop); }

/* Serves for `ms` (the loop runs its timers meanwhile). */
static void serve_for(fx_t *fx, uint64_t ms) {
  uv_timer_t t;
  uv_timer_init(&fx->loop, &t);
  uv_timer_start(&t, wake, ms, 0);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&fx->loop, UV_RUN_NOWAIT);
}

/* Asks /readyz every 100 ms until it answers `status` (or 30 s); the last
 * answer's body into body[cap]. */
static long readyz_until(fx_t *fx, long status, char *body, size_t cap) {
  long got = 0;
  for (int i = 0; i < 300 && got != status; i++) {
    if (i) serve_for(fx, 100);
    call_t *c = request(fx, NULL, "/readyz", NULL);
    got = c->status;
    snprintf(body, cap, "%s", c->body ? c->body : "");
    call_free(c);
  }
  return got;
}

/* /healthz: the process answers. /readyz: its projections are caught up
 * within the seed's second; a stalled one makes it 503 until it recovers. */
static void test_health_and_readiness(void **state) {
  fx_t *fx = *state;
  char body[512];
  call_t *c = request(fx, NULL, "/healthz", NULL);
  assert_int_equal(c->status, 200);
  call_free(c);
  assert_int_equal(readyz_until(fx, 200, body, sizeof body), 200);
  completed = 0;
  send_cmd(fx, ledger_open_new("r", "rea")); /* its projection fails twice, backing off */
  if (readyz_until(fx, 503, body, sizeof body) != 503) fail_msg("never unready while stalled: %s", body);
  assert_non_null(strstr(body, "ledger.view"));
  c = request(fx, NULL, "/healthz", NULL);
  assert_int_equal(c->status, 200); /* alive all the same */
  call_free(c);
  if (readyz_until(fx, 200, body, sizeof body) != 200) fail_msg("not ready again: %s", body);
  char *text = scrape(fx);
  assert_true(prom_value(text, "cqrs_projection_position{projection=\"ledger.view\"}") == 1);
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
      cmocka_unit_test_setup_teardown(test_slow_clients, setup, teardown),
      cmocka_unit_test_setup_teardown(test_request_deadline, setup, teardown),
      cmocka_unit_test_setup_teardown(test_health_and_readiness, setup_stalling, teardown),
      cmocka_unit_test_setup_teardown(test_bad_start, setup, teardown),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  curl_global_cleanup();
  return rc;
}
