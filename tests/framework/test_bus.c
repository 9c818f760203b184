#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "ledger.h"

/* Every dispatcher here reads time through a manual clock: a back-off ends
 * when the test has advanced the clock to it (run_idle), so nothing waits
 * for real time and the times seen are exact. */

#define MAX_SEEN 64

typedef struct recorder {
  const char *name;
  int64_t positions[MAX_SEEN];
  int64_t versions[MAX_SEEN];
  const cqrs_event_type_t *types[MAX_SEEN];
  size_t n;
  int calls;
  int fail_first; /* fail this many calls, then succeed */
  bool fail_always;
  uint64_t call_times[MAX_SEEN]; /* the clock's monotonic ms */
  cqrs_clock_t *clock;
  uv_thread_t loop_thread;
  bool off_loop; /* a call came from another thread */
} recorder_t;

typedef struct fx {
  uv_loop_t loop;
  cqrs_clock_t *clock;
  cqrs_registry_t *reg;
  cqrs_store_t *store;
  cqrs_dispatcher_t *d;
  int done, ok;
  bool closed;
} fx_t;

static fx_t *fx_new(uint64_t base_ms, cqrs_dead_letter_cb sink, void *sink_data) {
  fx_t *fx = calloc(1, sizeof *fx);
  uv_loop_init(&fx->loop);
  assert_int_equal(cqrs_clock_manual_new(1700000000000LL, &fx->clock, NULL), CQRS_OK);
  fx->reg = ledger_registry();
  cqrs_memory_store_new(&fx->store, NULL);
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.clock = fx->clock;
  o.retry_base_ms = base_ms;
  o.dead_letter = sink;
  o.dead_letter_data = sink_data;
  cqrs_error_t err;
  if (cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, &o, &fx->d, &err)) fail_msg("%s", err.message);
  assert_int_equal(ledger_handlers(fx->d, NULL, 0, NULL), CQRS_OK);
  return fx;
}

static int setup(void **state) {
  *state = fx_new(1, NULL, NULL);
  return 0;
}

static void on_closed(void *data) { ((fx_t *)data)->closed = true; }

static int teardown(void **state) {
  fx_t *fx = *state;
  if (fx->d) {
    cqrs_dispatcher_close(fx->d, on_closed, fx);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    assert_true(fx->closed);
  }
  assert_int_equal(uv_loop_close(&fx->loop), 0);
  cqrs_store_destroy(fx->store);
  cqrs_registry_destroy(fx->reg);
  cqrs_clock_destroy(fx->clock);
  free(fx);
  return 0;
}

static void run_idle(fx_t *fx) { ledger_run_idle(&fx->loop, fx->clock); }

static cqrs_code_t record(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  recorder_t *r = data;
  if (r->clock) {
    if (r->calls < MAX_SEEN) r->call_times[r->calls] = cqrs_clock_monotonic_ms(r->clock);
    uv_thread_t self = uv_thread_self();
    if (!uv_thread_equal(&self, &r->loop_thread)) r->off_loop = true;
  }
  r->calls++;
  if (r->fail_always || r->fail_first > 0) {
    r->fail_first--;
    return cqrs_error_set(err, CQRS_EHANDLER, "%s refuses %s", r->name, e->type->name);
  }
  if (r->n < MAX_SEEN) {
    r->positions[r->n] = e->position;
    r->versions[r->n] = e->version;
    r->types[r->n] = e->type;
    r->n++;
  }
  return CQRS_OK;
}

static void on_done(const cqrs_result_t *r, void *data) {
  fx_t *fx = data;
  fx->done++;
  if (r->error.code == CQRS_OK) fx->ok++;
}

static void send_cmd(fx_t *fx, cqrs_command_t *cmd) { assert_int_equal(cqrs_dispatcher_send(fx->d, cmd, on_done, fx), CQRS_OK); }

static void script(fx_t *fx) {
  send_cmd(fx, ledger_open_new("a", "ada"));
  send_cmd(fx, ledger_open_new("b", "bob"));
  send_cmd(fx, ledger_credit_new("a", 10));
  send_cmd(fx, ledger_credit_new("b", 20));
  send_cmd(fx, ledger_debit_new("a", 5));
  run_idle(fx);
  assert_int_equal(fx->ok, 5);
}

static void test_subscribers_get_events_in_order(void **state) {
  fx_t *fx = *state;
  recorder_t all = {.name = "all"}, credits = {.name = "credits"};
  const cqrs_event_type_t *only_credits[] = {&ledger_credited, NULL};
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "all", NULL, record, &all, 0, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "credits", only_credits, record, &credits, 0, NULL), CQRS_OK);
  script(fx);
  assert_int_equal(all.n, 5);
  for (size_t i = 1; i < all.n; i++) assert_true(all.positions[i] == all.positions[i - 1] + 1);
  assert_ptr_equal(all.types[0], &ledger_opened);
  assert_ptr_equal(all.types[4], &ledger_debited);
  assert_int_equal(all.versions[4], 3); /* a's third event */
  assert_int_equal(credits.n, 2);
  assert_ptr_equal(credits.types[0], &ledger_credited);
  assert_ptr_equal(credits.types[1], &ledger_credited);
}

static void test_failing_subscriber_is_retried_then_dead_lettered(void **state) {
  fx_t *fx = *state;
  recorder_t bad = {.name = "bad", .fail_always = true}, good = {.name = "good"};
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "bad", NULL, record, &bad, 0, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "good", NULL, record, &good, 0, NULL), CQRS_OK);
  script(fx); /* the commands all succeed */
  assert_int_equal(good.n, 5);
  assert_int_equal(bad.calls, 5 * 3); /* three attempts each */
  assert_int_equal(cqrs_dispatcher_dead_letter_count(fx->d), 5);
  const char *who;
  const cqrs_error_t *why;
  const cqrs_event_t *e = cqrs_dispatcher_dead_letter(fx->d, 0, &who, &why);
  assert_non_null(e);
  assert_string_equal(who, "bad");
  assert_int_equal(why->code, CQRS_EHANDLER);
  assert_non_null(strstr(why->message, "bad refuses ledger.opened"));
  assert_ptr_equal(e->type, &ledger_opened);
  assert_null(cqrs_dispatcher_dead_letter(fx->d, 5, NULL, NULL));
}

static void test_transient_failure_keeps_order(void **state) {
  fx_t *fx = *state;
  recorder_t flaky = {.name = "flaky", .fail_first = 2};
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "flaky", NULL, record, &flaky, 0, NULL), CQRS_OK);
  script(fx);
  assert_int_equal(flaky.n, 5);
  assert_int_equal(flaky.calls, 7);
  for (size_t i = 1; i < flaky.n; i++) assert_true(flaky.positions[i] > flaky.positions[i - 1]);
  assert_int_equal(cqrs_dispatcher_dead_letter_count(fx->d), 0);
}

static void test_back_off_doubles(void **state) {
  fx_t *fx = *state;
  cqrs_dispatcher_close(fx->d, NULL, NULL);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  fx->d = NULL;
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  assert_int_equal(o.retry_attempts, 3); /* the seed's defaults */
  assert_int_equal(o.retry_base_ms, 1000);
  o.retry_base_ms = 30;
  o.retry_attempts = 4;
  o.clock = fx->clock;
  assert_int_equal(cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, &o, &fx->d, NULL), CQRS_OK);
  ledger_handlers(fx->d, NULL, 0, NULL);
  recorder_t bad = {.name = "bad", .fail_always = true, .clock = fx->clock, .loop_thread = uv_thread_self()};
  const cqrs_event_type_t *opened[] = {&ledger_opened, NULL};
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "bad", opened, record, &bad, 0, NULL), CQRS_OK);
  send_cmd(fx, ledger_open_new("a", "ada"));
  run_idle(fx);
  assert_int_equal(bad.calls, 4);
  assert_int_equal(bad.call_times[1] - bad.call_times[0], 30);
  assert_int_equal(bad.call_times[2] - bad.call_times[1], 60);
  assert_int_equal(bad.call_times[3] - bad.call_times[2], 120);
  assert_int_equal(cqrs_dispatcher_dead_letter_count(fx->d), 1);
}

typedef struct sink {
  int count;
  char last[CQRS_NAME_MAX];
} sink_t;

static void to_sink(const char *sub, const cqrs_event_t *e, const cqrs_error_t *error, void *data) {
  sink_t *s = data;
  s->count++;
  snprintf(s->last, sizeof s->last, "%s:%s", sub, e->type->name);
  assert_int_equal(error->code, CQRS_EHANDLER);
}

static void test_dead_letter_sink(void **state) {
  fx_t *old = *state;
  teardown(state);
  (void)old;
  sink_t sink = {0, ""};
  fx_t *fx = fx_new(1, to_sink, &sink);
  *state = fx;
  recorder_t bad = {.name = "bad", .fail_always = true};
  const cqrs_event_type_t *debits[] = {&ledger_debited, NULL};
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "bad", debits, record, &bad, 0, NULL), CQRS_OK);
  script(fx);
  assert_int_equal(sink.count, 1);
  assert_string_equal(sink.last, "bad:ledger.debited");
  assert_int_equal(cqrs_dispatcher_dead_letter_count(fx->d), 1);
  assert_null(cqrs_dispatcher_dead_letter(fx->d, 0, NULL, NULL)); /* the sink has it */
}

static void test_blocking_subscriber_runs_off_the_loop(void **state) {
  fx_t *fx = *state;
  recorder_t slow = {.name = "slow", .loop_thread = uv_thread_self()};
  recorder_t probe = {.name = "probe"};
  (void)probe;
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "slow", NULL, record, &slow, CQRS_SUBSCRIBE_BLOCKING, NULL), CQRS_OK);
  script(fx);
  assert_int_equal(slow.n, 5);
  for (size_t i = 1; i < slow.n; i++) assert_true(slow.positions[i] == slow.positions[i - 1] + 1);
}

static cqrs_code_t where(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)e;
  (void)err;
  uv_thread_t *loop_thread = data;
  uv_thread_t self = uv_thread_self();
  return uv_thread_equal(&self, loop_thread) ? cqrs_error_set(err, CQRS_EHANDLER, "ran on the loop thread") : CQRS_OK;
}

static void test_blocking_subscriber_thread(void **state) {
  fx_t *fx = *state;
  uv_thread_t me = uv_thread_self();
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "where", NULL, where, &me, CQRS_SUBSCRIBE_BLOCKING, NULL), CQRS_OK);
  script(fx);
  assert_int_equal(cqrs_dispatcher_dead_letter_count(fx->d), 0);
}

static void test_close_cuts_back_off_short(void **state) {
  fx_t *fx = *state;
  cqrs_dispatcher_close(fx->d, NULL, NULL);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  fx->d = NULL;
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.retry_base_ms = 60000; /* a minute: close must not wait for it */
  o.clock = fx->clock;
  assert_int_equal(cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, &o, &fx->d, NULL), CQRS_OK);
  ledger_handlers(fx->d, NULL, 0, NULL);
  recorder_t bad = {.name = "bad", .fail_always = true};
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "bad", NULL, record, &bad, 0, NULL), CQRS_OK);
  send_cmd(fx, ledger_open_new("z", "zoe"));
  while (fx->done < 1) uv_run(&fx->loop, UV_RUN_ONCE);
  assert_int_equal(bad.calls, 1);
  int64_t start = cqrs_clock_now_ms(fx->clock);
  cqrs_dispatcher_close(fx->d, on_closed, fx);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_true(fx->closed);
  assert_int_equal(cqrs_clock_now_ms(fx->clock), start); /* closed with no time passing */
  assert_int_equal(bad.calls, 3); /* every attempt made, none waited for */
  fx->d = NULL;
}

typedef struct outage {
  int down_for; /* calls that find the store down */
  int calls;
  int delivered;
} outage_t;

static cqrs_code_t store_down(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)e;
  outage_t *o = data;
  if (o->calls++ < o->down_for) return cqrs_error_set(err, CQRS_ESTORE, "read model unreachable");
  o->delivered++;
  return CQRS_OK;
}

static void test_unavailable_store_is_retried_not_dead_lettered(void **state) {
  fx_t *fx = *state; /* 3 attempts, 1 ms back-off */
  outage_t o = {5, 0, 0};
  const cqrs_event_type_t *opened[] = {&ledger_opened, NULL};
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "rm", opened, store_down, &o, 0, NULL), CQRS_OK);
  send_cmd(fx, ledger_open_new("a", "ada"));
  run_idle(fx);
  assert_int_equal(o.calls, 6);
  assert_int_equal(o.delivered, 1);
  assert_int_equal(cqrs_dispatcher_dead_letter_count(fx->d), 0);
}

static void test_close_during_an_outage(void **state) {
  fx_t *fx = *state;
  cqrs_dispatcher_close(fx->d, NULL, NULL);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  fx->d = NULL;
  cqrs_dispatcher_options_t opts;
  cqrs_dispatcher_options_init(&opts);
  opts.retry_base_ms = 60000;
  opts.clock = fx->clock;
  assert_int_equal(cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, &opts, &fx->d, NULL), CQRS_OK);
  ledger_handlers(fx->d, NULL, 0, NULL);
  outage_t o = {1000, 0, 0};
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "rm", NULL, store_down, &o, 0, NULL), CQRS_OK);
  send_cmd(fx, ledger_open_new("a", "ada"));
  while (fx->done < 1) uv_run(&fx->loop, UV_RUN_ONCE);
  cqrs_dispatcher_close(fx->d, on_closed, fx);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_true(fx->closed);
  fx->d = NULL;
  assert_int_equal(o.delivered, 0);
  assert_int_equal(o.calls, 2); /* one last try at close, then it lets go: no retry storm */
}

static void test_subscribe_rules(void **state) {
  fx_t *fx = *state;
  recorder_t r = {.name = "r"};
  cqrs_error_t err;
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "r", NULL, record, &r, 0, &err), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "r", NULL, record, &r, 0, &err), CQRS_EDUPLICATE);
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "", NULL, record, &r, 0, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "x", NULL, NULL, &r, 0, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_dispatcher_subscribe(NULL, "x", NULL, record, &r, 0, &err), CQRS_EINVAL);
}

/* A projection, "bad", failing on every one of `n` events already in the
 * store: each is dead-lettered at the first failure. `kept`: the option
 * dead_letters_kept (0: the default). */
typedef struct doomed {
  fx_t *fx;
  recorder_t bad;
  cqrs_metrics_t *m;
  cqrs_checkpoint_store_t *cp;
} doomed_t;

static void fail_everything(doomed_t *t, size_t kept, int64_t n) {
  fx_t *fx = t->fx = calloc(1, sizeof *fx);
  t->bad = (recorder_t){.name = "bad", .fail_always = true};
  uv_loop_init(&fx->loop);
  assert_int_equal(cqrs_clock_manual_new(1700000000000LL, &fx->clock, NULL), CQRS_OK);
  fx->reg = ledger_registry();
  cqrs_memory_store_new(&fx->store, NULL);
  ledger_fill(fx->store, &ledger_type, "a", n);
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.clock = fx->clock;
  if (kept) o.dead_letters_kept = kept;
  o.retry_attempts = 1;
  cqrs_error_t err;
  if (cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, &o, &fx->d, &err)) fail_msg("%s", err.message);
  assert_int_equal(cqrs_metrics_new(&t->m, NULL), CQRS_OK);
  assert_int_equal(cqrs_metrics_attach(t->m, fx->d, NULL), CQRS_OK);
  assert_int_equal(cqrs_memory_checkpoint_store_new(&t->cp, NULL), CQRS_OK);
  cqrs_projection_def_t def = {"bad", NULL, record, &t->bad, 0};
  assert_int_equal(cqrs_projection_start(fx->d, &def, t->cp, NULL), CQRS_OK);
  run_idle(fx);
}

static void fail_everything_done(doomed_t *t) {
  teardown((void **)&t->fx);
  cqrs_metrics_destroy(t->m);
  cqrs_checkpoint_store_destroy(t->cp);
}

static double dead_letters_metric(cqrs_metrics_t *m, const char *subscriber) {
  cqrs_metrics_snapshot_t *s;
  assert_int_equal(cqrs_metrics_snapshot(m, &s, NULL), CQRS_OK);
  double v = cqrs_metrics_snapshot_value(s, "cqrs_dead_letters_total", "subscriber", subscriber, NULL);
  cqrs_metrics_snapshot_destroy(s);
  return v;
}

/* Dead letters kept in memory (no sink) are bounded, 1024 by default: the
 * oldest go. The count and the metrics count every one. */
static void test_dead_letters_in_memory_are_bounded(void **state) {
  (void)state;
  doomed_t t;
  fail_everything(&t, 0, 1100);
  fx_t *fx = t.fx;
  assert_int_equal(t.bad.calls, 1100);
  assert_int_equal(cqrs_dispatcher_dead_letter_count(fx->d), 1100);
  const cqrs_event_t *first = cqrs_dispatcher_dead_letter(fx->d, 0, NULL, NULL);
  const cqrs_event_t *last = cqrs_dispatcher_dead_letter(fx->d, 1023, NULL, NULL);
  assert_non_null(first);
  assert_non_null(last);
  assert_int_equal(first->position, 1100 - 1024 + 1);
  assert_int_equal(last->position, 1100);
  assert_null(cqrs_dispatcher_dead_letter(fx->d, 1024, NULL, NULL));
  assert_int_equal(cqrs_dispatcher_dead_letters_dropped(fx->d), 1100 - 1024);
  assert_int_equal(dead_letters_metric(t.m, "bad"), 1100);
  fail_everything_done(&t);
}

/* The bound is an option. */
static void test_dead_letters_kept_is_an_option(void **state) {
  (void)state;
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  assert_int_equal(o.dead_letters_kept, 1024);
  doomed_t t;
  fail_everything(&t, 3, 5);
  fx_t *fx = t.fx;
  assert_int_equal(cqrs_dispatcher_dead_letter_count(fx->d), 5);
  assert_int_equal(cqrs_dispatcher_dead_letters_dropped(fx->d), 2);
  for (size_t i = 0; i < 3; i++) {
    const char *who;
    const cqrs_event_t *e = cqrs_dispatcher_dead_letter(fx->d, i, &who, NULL);
    assert_non_null(e);
    assert_int_equal(e->position, 3 + (int64_t)i);
    assert_string_equal(who, "bad");
  }
  assert_null(cqrs_dispatcher_dead_letter(fx->d, 3, NULL, NULL));
  assert_int_equal(dead_letters_metric(t.m, "bad"), 5);
  fail_everything_done(&t);
}

/* The n-th allocation fails while a command runs, for every n: the
 * command fails, or its event reaches the subscriber (handled or
 * dead-lettered) with nothing committed after it to wake the feed. */
static _Atomic long alloc_fail_at = -1, alloc_count;
static bool alloc_fails(void) { return atomic_fetch_add(&alloc_count, 1) + 1 == atomic_load(&alloc_fail_at); }
static void *failing_malloc(size_t n) { return alloc_fails() ? NULL : malloc(n); }
static void *failing_realloc(void *p, size_t n) { return alloc_fails() ? NULL : realloc(p, n); }

static void on_waited(cqrs_code_t status, void *data) { *(cqrs_code_t *)data = status; }

static void test_allocation_failures_lose_no_commit(void **state) {
  (void)state;
  for (long n = 1;; n++) {
    fx_t *fx = fx_new(1, NULL, NULL);
    recorder_t all = {.name = "all"};
    assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "all", NULL, record, &all, 0, NULL), CQRS_OK);
    cqrs_command_t *cmd = ledger_open_new("a", "ada");
    atomic_store(&alloc_count, 0);
    atomic_store(&alloc_fail_at, n);
    cqrs_set_allocator(&(cqrs_allocator_t){failing_malloc, failing_realloc, free});
    if (cqrs_dispatcher_send(fx->d, cmd, on_done, fx) == CQRS_OK) run_idle(fx);
    cqrs_set_allocator(NULL);
    bool reached = atomic_load(&alloc_count) >= n;
    int64_t head = 0;
    assert_int_equal(cqrs_store_head(fx->store, &head, NULL), CQRS_OK);
    cqrs_code_t status = CQRS_CODE_COUNT;
    assert_int_equal(cqrs_projection_wait(fx->d, "all", head, 10000, on_waited, &status), CQRS_OK);
    run_idle(fx); /* done, or a time-out once the clock has run through the wait */
    if (status) fail_msg("n=%ld: the subscriber is at %lld of %lld", n, (long long)cqrs_projection_position(fx->d, "all"),
                         (long long)head);
    teardown((void **)&fx);
    if (!reached) break;
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_subscribers_get_events_in_order, setup, teardown),
      cmocka_unit_test_setup_teardown(test_failing_subscriber_is_retried_then_dead_lettered, setup, teardown),
      cmocka_unit_test_setup_teardown(test_transient_failure_keeps_order, setup, teardown),
      cmocka_unit_test_setup_teardown(test_back_off_doubles, setup, teardown),
      cmocka_unit_test_setup_teardown(test_dead_letter_sink, setup, teardown),
      cmocka_unit_test_setup_teardown(test_blocking_subscriber_runs_off_the_loop, setup, teardown),
      cmocka_unit_test_setup_teardown(test_blocking_subscriber_thread, setup, teardown),
      cmocka_unit_test_setup_teardown(test_close_cuts_back_off_short, setup, teardown),
      cmocka_unit_test_setup_teardown(test_subscribe_rules, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unavailable_store_is_retried_not_dead_lettered, setup, teardown),
      cmocka_unit_test_setup_teardown(test_close_during_an_outage, setup, teardown),
      cmocka_unit_test(test_dead_letters_in_memory_are_bounded),
      cmocka_unit_test(test_dead_letters_kept_is_an_option),
      cmocka_unit_test(test_allocation_failures_lose_no_commit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
