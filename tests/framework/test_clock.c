/* The clock: a manual clock's rules, and a dispatcher that reads time
 * through one: event timestamps, back-offs, polls, wait time-outs and the
 * in-memory lease store move only when the test advances it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "ledger.h"

#define T0 1700000000000LL /* 2023-11-14, UTC ms */

static void test_manual_clock_rules(void **state) {
  (void)state;
  cqrs_clock_t *c = (cqrs_clock_t *)1;
  cqrs_error_t err;
  assert_int_equal(cqrs_clock_manual_new(T0, NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_clock_manual_new(0, &c, &err), CQRS_EINVAL);
  assert_null(c);
  assert_int_equal(cqrs_clock_manual_new(-5, &c, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_clock_manual_new(T0, &c, &err), CQRS_OK);
  assert_true(cqrs_clock_is_manual(c));
  assert_int_equal(cqrs_clock_now_ms(c), T0);
  uint64_t mono = cqrs_clock_monotonic_ms(c);
  assert_int_equal(cqrs_clock_advance(c, 0), CQRS_OK);
  assert_int_equal(cqrs_clock_now_ms(c), T0);
  assert_int_equal(cqrs_clock_advance(c, 1500), CQRS_OK);
  assert_int_equal(cqrs_clock_now_ms(c), T0 + 1500);
  assert_int_equal(cqrs_clock_monotonic_ms(c), mono + 1500);
  uint64_t in;
  assert_false(cqrs_clock_next_due(c, &in)); /* nothing waits on it */
  assert_int_equal(cqrs_clock_advance(c, UINT64_MAX), CQRS_EINVAL);
  assert_int_equal(cqrs_clock_now_ms(c), T0 + 1500);
  cqrs_clock_destroy(c);

  /* The real clock: time goes on by itself and cannot be pushed. */
  cqrs_clock_t *real = cqrs_clock_real();
  assert_non_null(real);
  assert_false(cqrs_clock_is_manual(real));
  assert_false(cqrs_clock_is_manual(NULL));
  assert_int_equal(cqrs_clock_advance(real, 10), CQRS_EINVAL);
  assert_int_equal(cqrs_clock_advance(NULL, 10), CQRS_EINVAL);
  int64_t now = cqrs_now_ms();
  assert_true(cqrs_clock_now_ms(real) >= now && cqrs_clock_now_ms(NULL) >= now);
  assert_false(cqrs_clock_next_due(real, &in));
  cqrs_clock_destroy(real); /* nothing: it is not ours to free */
  cqrs_clock_destroy(NULL);
  assert_int_equal(cqrs_clock_advance(cqrs_clock_real(), 1), CQRS_EINVAL);
}

typedef struct fx {
  uv_loop_t loop;
  cqrs_clock_t *clock;
  cqrs_registry_t *reg;
  cqrs_store_t *store;
  cqrs_dispatcher_t *d;
  int done, ok;
} fx_t;

static cqrs_dispatcher_t *open_dispatcher(fx_t *fx, uint64_t poll_ms) {
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.clock = fx->clock;
  o.poll_ms = poll_ms;
  cqrs_dispatcher_t *d;
  cqrs_error_t err;
  if (cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, &o, &d, &err)) fail_msg("%s", err.message);
  assert_int_equal(ledger_handlers(d, NULL, 0, NULL), CQRS_OK);
  return d;
}

static int setup(void **state) {
  fx_t *fx = calloc(1, sizeof *fx);
  uv_loop_init(&fx->loop);
  assert_int_equal(cqrs_clock_manual_new(T0, &fx->clock, NULL), CQRS_OK);
  fx->reg = ledger_registry();
  cqrs_memory_store_new(&fx->store, NULL);
  fx->d = open_dispatcher(fx, 0);
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  fx_t *fx = *state;
  if (fx->d) assert_int_equal(cqrs_dispatcher_close(fx->d, NULL, NULL), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&fx->loop), 0);
  cqrs_store_destroy(fx->store);
  cqrs_registry_destroy(fx->reg);
  cqrs_clock_destroy(fx->clock);
  free(fx);
  return 0;
}

static void on_done(const cqrs_result_t *r, void *data) {
  fx_t *fx = data;
  fx->done++;
  if (cqrs_result_ok(r)) fx->ok++;
}

static void send_wait(fx_t *fx, cqrs_dispatcher_t *d, cqrs_command_t *cmd) {
  assert_int_equal(cqrs_dispatcher_send(d, cmd, on_done, fx), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
}

static bool last_timestamp(const cqrs_event_t *e, void *data) {
  *(int64_t *)data = e->timestamp;
  return true;
}

static int64_t stream_timestamp(fx_t *fx, int64_t version) {
  int64_t ts = 0;
  assert_int_equal(cqrs_store_read_stream(fx->store, ledger_type.name, "a", version, last_timestamp, &ts, NULL),
                   CQRS_OK);
  return ts;
}

/* What a command raises is stamped by the dispatcher's clock. */
static void test_events_are_stamped_by_the_dispatchers_clock(void **state) {
  fx_t *fx = *state;
  send_wait(fx, fx->d, ledger_open_new("a", "ada"));
  assert_int_equal(stream_timestamp(fx, 1), T0);
  assert_int_equal(cqrs_clock_advance(fx->clock, 1234), CQRS_OK);
  send_wait(fx, fx->d, ledger_credit_new("a", 5));
  assert_int_equal(stream_timestamp(fx, 2), T0 + 1234);
  assert_int_equal(fx->ok, 2);
}

typedef struct flaky {
  int calls, fail_first;
} flaky_t;

static cqrs_code_t flaky_handler(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)e;
  flaky_t *f = data;
  if (f->calls++ < f->fail_first) return cqrs_error_set(err, CQRS_EHANDLER, "not yet");
  return CQRS_OK;
}

/* A failing subscriber's back-off (1 s, then 2 s) ends when the clock says
 * so, not before, however long the loop runs meanwhile; it keeps the loop
 * running, which cqrs_clock_next_due tells. */
static void test_back_off_follows_the_clock(void **state) {
  fx_t *fx = *state;
  flaky_t f = {0, 2};
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "flaky", NULL, flaky_handler, &f, 0, NULL), CQRS_OK);
  send_wait(fx, fx->d, ledger_open_new("a", "ada")); /* uv_run returns: the back-off waits for the clock */
  assert_int_equal(f.calls, 1);
  uint64_t in;
  assert_true(cqrs_clock_next_due(fx->clock, &in));
  assert_int_equal(in, 1000);
  assert_int_equal(cqrs_clock_advance(fx->clock, 999), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(f.calls, 1);
  assert_true(cqrs_clock_next_due(fx->clock, &in));
  assert_int_equal(in, 1);
  assert_int_equal(cqrs_clock_advance(fx->clock, 1), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(f.calls, 2);
  assert_true(cqrs_clock_next_due(fx->clock, &in));
  assert_int_equal(in, 2000); /* doubled */
  assert_int_equal(cqrs_clock_advance(fx->clock, 5000), CQRS_OK); /* past it: fires once, at once */
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(f.calls, 3);
  assert_false(cqrs_clock_next_due(fx->clock, &in));
  assert_int_equal(cqrs_dispatcher_dead_letter_count(fx->d), 0);
}

static void waited(cqrs_code_t status, void *data) { *(cqrs_code_t *)data = status; }

/* A wait's time-out is counted on the clock. */
static void test_wait_times_out_by_the_clock(void **state) {
  fx_t *fx = *state;
  cqrs_checkpoint_store_t *cp;
  assert_int_equal(cqrs_memory_checkpoint_store_new(&cp, NULL), CQRS_OK);
  flaky_t f = {0, 0};
  cqrs_projection_def_t def = {"proj", NULL, flaky_handler, &f, 0};
  assert_int_equal(cqrs_projection_start(fx->d, &def, cp, NULL), CQRS_OK);
  cqrs_code_t status = CQRS_CODE_COUNT;
  assert_int_equal(cqrs_projection_wait(fx->d, "proj", 50, 5000, waited, &status), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_NOWAIT);
  assert_int_equal(status, CQRS_CODE_COUNT);
  assert_int_equal(cqrs_clock_advance(fx->clock, 4999), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_NOWAIT);
  assert_int_equal(status, CQRS_CODE_COUNT);
  assert_int_equal(cqrs_clock_advance(fx->clock, 1), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_NOWAIT);
  assert_int_equal(status, CQRS_ETIMEOUT);
  assert_int_equal(cqrs_dispatcher_close(fx->d, NULL, NULL), CQRS_OK);
  fx->d = NULL;
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  cqrs_checkpoint_store_destroy(cp);
}

/* One turn of the loop, kept alive for it: an unreferenced timer (a poll)
 * fires only while something else keeps the loop running, on the real
 * clock as on a manual one. */
static void turn(fx_t *fx, uv_async_t *keep) {
  uv_ref((uv_handle_t *)keep);
  uv_run(&fx->loop, UV_RUN_NOWAIT);
  uv_unref((uv_handle_t *)keep);
}

/* Polling for other writers' commits ticks on the clock, and does not
 * keep the loop running. */
static void test_poll_follows_the_clock(void **state) {
  fx_t *fx = *state;
  uv_async_t keep;
  uv_async_init(&fx->loop, &keep, NULL);
  uv_unref((uv_handle_t *)&keep);
  cqrs_dispatcher_t *reader = open_dispatcher(fx, 100);
  flaky_t f = {0, 0};
  assert_int_equal(cqrs_dispatcher_subscribe(reader, "seen", NULL, flaky_handler, &f, 0, NULL), CQRS_OK);
  send_wait(fx, fx->d, ledger_open_new("a", "ada")); /* another dispatcher's commit */
  uint64_t in;
  assert_false(cqrs_clock_next_due(fx->clock, &in)); /* a poll does not hold the loop */
  for (int i = 0; i < 3; i++) turn(fx, &keep);
  assert_int_equal(f.calls, 0);
  assert_int_equal(cqrs_clock_advance(fx->clock, 99), CQRS_OK);
  turn(fx, &keep);
  assert_int_equal(f.calls, 0);
  assert_int_equal(cqrs_clock_advance(fx->clock, 1), CQRS_OK);
  turn(fx, &keep);
  assert_int_equal(f.calls, 1);
  /* And again every 100 ms of the clock. */
  send_wait(fx, fx->d, ledger_credit_new("a", 1));
  turn(fx, &keep);
  assert_int_equal(f.calls, 1);
  assert_int_equal(cqrs_clock_advance(fx->clock, 100), CQRS_OK);
  turn(fx, &keep);
  assert_int_equal(f.calls, 2);
  assert_int_equal(cqrs_dispatcher_close(reader, NULL, NULL), CQRS_OK);
  uv_close((uv_handle_t *)&keep, NULL);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
}

/* The in-memory lease store's terms run out by its clock. */
static void test_memory_leases_expire_by_the_clock(void **state) {
  fx_t *fx = *state;
  cqrs_lease_store_t *l;
  assert_int_equal(cqrs_memory_lease_store_new_with_clock(fx->clock, &l, NULL), CQRS_OK);
  int64_t a, b;
  assert_int_equal(cqrs_lease_store_acquire(l, "p", "a", 1000, &a, NULL), CQRS_OK);
  assert_true(a > 0);
  assert_int_equal(cqrs_clock_advance(fx->clock, 999), CQRS_OK);
  assert_int_equal(cqrs_lease_store_acquire(l, "p", "b", 1000, &b, NULL), CQRS_OK);
  assert_int_equal(b, 0); /* held */
  assert_int_equal(cqrs_lease_store_renew(l, "p", "a", a, 1000, NULL), CQRS_OK);
  assert_int_equal(cqrs_clock_advance(fx->clock, 999), CQRS_OK);
  assert_int_equal(cqrs_lease_store_acquire(l, "p", "b", 1000, &b, NULL), CQRS_OK);
  assert_int_equal(b, 0); /* renewed */
  assert_int_equal(cqrs_clock_advance(fx->clock, 1), CQRS_OK);
  assert_int_equal(cqrs_lease_store_acquire(l, "p", "b", 1000, &b, NULL), CQRS_OK);
  assert_true(b > a); /* run out */
  assert_int_equal(cqrs_lease_store_renew(l, "p", "a", a, 1000, NULL), CQRS_ECONFLICT);
  cqrs_lease_store_destroy(l);
  assert_int_equal(cqrs_memory_lease_store_new_with_clock(NULL, NULL, NULL), CQRS_EINVAL);
}

/* Lease options: the clock takes one reserved field; the others stay zero. */
static void test_lease_options_reserved(void **state) {
  fx_t *fx = *state;
  cqrs_lease_store_t *l;
  assert_int_equal(cqrs_memory_lease_store_new_with_clock(fx->clock, &l, NULL), CQRS_OK);
  cqrs_lease_options_t lo;
  cqrs_lease_options_init(&lo);
  assert_null(lo.clock);
  lo.leases = l;
  lo.owner = "a";
  lo.clock = fx->clock;
  lo.reserved[2] = 1;
  cqrs_error_t err;
  assert_int_equal(cqrs_dispatcher_set_leases(fx->d, &lo, &err), CQRS_EINVAL);
  assert_non_null(strstr(err.message, "reserved"));
  lo.reserved[2] = 0;
  assert_int_equal(cqrs_dispatcher_set_leases(fx->d, &lo, &err), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_close(fx->d, NULL, NULL), CQRS_OK);
  fx->d = NULL;
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  cqrs_lease_store_destroy(l);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_manual_clock_rules),
      cmocka_unit_test_setup_teardown(test_events_are_stamped_by_the_dispatchers_clock, setup, teardown),
      cmocka_unit_test_setup_teardown(test_back_off_follows_the_clock, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wait_times_out_by_the_clock, setup, teardown),
      cmocka_unit_test_setup_teardown(test_poll_follows_the_clock, setup, teardown),
      cmocka_unit_test_setup_teardown(test_memory_leases_expire_by_the_clock, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lease_options_reserved, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
