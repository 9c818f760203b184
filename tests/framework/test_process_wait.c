/* Waiting until no instance of a process manager is open
 * (cqrs_process_wait on the loop thread, _wait_sync from another one). The
 * instances here end later, driven by what they hear: an opened ledger
 * starts one, which credits it (a step); the step's outcome sets a
 * deadline a second later on the dispatcher's manual clock; the deadline
 * ends the instance. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <cqrs/backend.h>

#include "framework/ledger.h"

#define T0 1700000000000LL /* the manual clock's start, UTC ms */
#define CLOSE_AFTER_MS 1000

static atomic_int ended;              /* deadlines handled: each ends its instance */
static int64_t close_after_ms;        /* the deadline after the step's outcome; loop thread */

static cqrs_code_t on_opened(cqrs_process_t *p, void *state, const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)state, (void)e, (void)data;
  ledger_move_cmd_t c = {.amount = 1};
  snprintf(c.id, sizeof c.id, "%s", cqrs_process_id(p));
  return cqrs_process_send(p, "credit", &c, err);
}

static cqrs_code_t on_step(cqrs_process_t *p, void *state, const cqrs_step_outcome_t *o, void *data,
                           cqrs_error_t *err) {
  (void)state, (void)data;
  assert_int_equal(o->status, CQRS_STEP_ACCEPTED);
  return cqrs_process_schedule(p, "close", cqrs_process_now(p) + close_after_ms, err);
}

static cqrs_code_t on_deadline(cqrs_process_t *p, void *state, const char *name, void *data, cqrs_error_t *err) {
  (void)state, (void)data, (void)err;
  assert_string_equal(name, "close");
  atomic_fetch_add(&ended, 1);
  cqrs_process_end(p);
  return CQRS_OK;
}

static const cqrs_process_route_t routes[] = {{.type = &ledger_opened, .starts = true, .handle = on_opened},
                                              {.type = NULL}};
static const cqrs_process_step_t steps[] = {{.name = "credit", .command = &ledger_credit}, {.name = NULL}};
static const cqrs_process_type_t order_type = {
    .name = "order", .routes = routes, .steps = steps, .on_step = on_step, .on_deadline = on_deadline};

typedef struct fx {
  uv_loop_t loop;
  cqrs_clock_t *clock;
  cqrs_registry_t *reg;
  cqrs_store_t *store;
  cqrs_checkpoints_t *cp;
  cqrs_dispatcher_t *d;
  uv_timer_t keep; /* turns the loop while another thread waits */
} fx_t;

static int setup(void **state) {
  fx_t *fx = calloc(1, sizeof *fx);
  uv_loop_init(&fx->loop);
  uv_timer_init(&fx->loop, &fx->keep);
  assert_int_equal(cqrs_clock_manual_new(T0, &fx->clock, NULL), CQRS_OK);
  fx->reg = ledger_registry();
  assert_int_equal(cqrs_registry_add_process(fx->reg, &order_type, NULL), CQRS_OK);
  assert_int_equal(cqrs_memory_store_new(&fx->store, NULL), CQRS_OK);
  assert_int_equal(cqrs_memory_checkpoints_new(&fx->cp, NULL), CQRS_OK);
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.clock = fx->clock;
  cqrs_error_t err;
  if (cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, &o, &fx->d, &err)) fail_msg("%s", err.message);
  if (ledger_handlers(fx->d, NULL, 0, &err)) fail_msg("%s", err.message);
  if (cqrs_process_start(fx->d, &order_type, NULL, fx->cp, &err)) fail_msg("%s", err.message);
  atomic_store(&ended, 0);
  close_after_ms = CLOSE_AFTER_MS;
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  fx_t *fx = *state;
  if (fx->d) assert_int_equal(cqrs_dispatcher_close(fx->d, NULL, NULL), CQRS_OK);
  uv_close((uv_handle_t *)&fx->keep, NULL);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&fx->loop), 0);
  cqrs_checkpoints_destroy(fx->cp);
  cqrs_store_destroy(fx->store);
  cqrs_registry_destroy(fx->reg);
  cqrs_clock_destroy(fx->clock);
  free(fx);
  return 0;
}

/* Opens ledger `id`: its instance starts, credits it and waits for its
 * deadline (a deadline alone does not hold the loop: uv_run returns). */
static void open_instance(fx_t *fx, const char *id) {
  assert_int_equal(cqrs_dispatcher_send(fx->d, ledger_open_new(id, "o"), NULL, NULL), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
}

typedef struct waited {
  cqrs_code_t status;
  int calls;
} waited_t;

static void on_waited(cqrs_code_t status, void *data) {
  waited_t *w = data;
  w->status = status;
  w->calls++;
}

/* On the loop thread: called back once the last open instance has ended,
 * not before, and never inside the call. */
static void test_wait_on_the_loop_until_the_instances_end(void **state) {
  fx_t *fx = *state;
  waited_t none = {CQRS_OK, 0};
  assert_int_equal(cqrs_process_wait(fx->d, "order", 60000, on_waited, &none), CQRS_OK);
  assert_int_equal(none.calls, 0);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(none.calls, 1); /* nothing open: at once */
  assert_int_equal(none.status, CQRS_OK);

  open_instance(fx, "l-1");
  assert_int_equal(cqrs_clock_advance(fx->clock, 10), CQRS_OK);
  open_instance(fx, "l-2"); /* its deadline 10 ms after l-1's */
  assert_int_equal(cqrs_process_open_count(fx->d, "order"), 2);
  waited_t w = {CQRS_OK, 0};
  assert_int_equal(cqrs_process_wait(fx->d, "order", 60000, on_waited, &w), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(w.calls, 0);
  assert_int_equal(cqrs_clock_advance(fx->clock, CLOSE_AFTER_MS - 10), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(atomic_load(&ended), 1);
  assert_int_equal(cqrs_process_open_count(fx->d, "order"), 1);
  assert_int_equal(w.calls, 0); /* l-2 is still open */
  assert_int_equal(cqrs_clock_advance(fx->clock, 10), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(atomic_load(&ended), 2);
  assert_int_equal(w.calls, 1);
  assert_int_equal(w.status, CQRS_OK);
  assert_int_equal(cqrs_process_open_count(fx->d, "order"), 0);
  /* What the header says to wait for first, to count events the process
   * has not received yet: its subscriber, by that name. */
  waited_t sub = {CQRS_ECODEC, 0};
  assert_int_equal(cqrs_projection_wait(fx->d, "process:order", 1, 500, on_waited, &sub), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(sub.calls, 1);
  assert_int_equal(sub.status, CQRS_OK);
}

/* A time-out on the dispatcher's clock; an unknown process and NULL
 * arguments refused, the callback never called; closing completes a
 * waiter still waiting, and a dispatcher closing takes no more. */
static void test_wait_on_the_loop_times_out_refuses_and_closes(void **state) {
  fx_t *fx = *state;
  open_instance(fx, "l-1");
  waited_t late = {CQRS_OK, 0};
  assert_int_equal(cqrs_process_wait(fx->d, "order", 500, on_waited, &late), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(cqrs_clock_advance(fx->clock, 499), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(late.calls, 0);
  assert_int_equal(cqrs_clock_advance(fx->clock, 1), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(late.calls, 1);
  assert_int_equal(late.status, CQRS_ETIMEOUT);
  assert_int_equal(cqrs_process_open_count(fx->d, "order"), 1);

  waited_t never = {CQRS_OK, 0};
  assert_int_equal(cqrs_process_wait(fx->d, "nobody", 500, on_waited, &never), CQRS_ENOT_FOUND);
  assert_int_equal(cqrs_process_wait(fx->d, "an-order-name-longer-than-any-process-may-have", 500, on_waited, &never),
                   CQRS_ENOT_FOUND);
  assert_int_equal(cqrs_process_wait(NULL, "order", 500, on_waited, &never), CQRS_EINVAL);
  assert_int_equal(cqrs_process_wait(fx->d, NULL, 500, on_waited, &never), CQRS_EINVAL);
  assert_int_equal(cqrs_process_wait(fx->d, "order", 500, NULL, &never), CQRS_EINVAL);
  assert_int_equal(cqrs_process_wait_sync(NULL, "order", 500), CQRS_EINVAL);
  assert_int_equal(cqrs_process_wait_sync(fx->d, NULL, 500), CQRS_EINVAL);
  assert_int_equal(cqrs_process_wait_sync(fx->d, "order", 500), CQRS_ESTATE); /* the loop thread */
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(never.calls, 0);

  waited_t closing = {CQRS_OK, 0};
  assert_int_equal(cqrs_process_wait(fx->d, "order", 60000, on_waited, &closing), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(closing.calls, 0);
  assert_int_equal(cqrs_dispatcher_close(fx->d, NULL, NULL), CQRS_OK);
  assert_int_equal(closing.calls, 1);
  assert_int_equal(closing.status, CQRS_ECLOSED);
  assert_int_equal(cqrs_process_wait(fx->d, "order", 60000, on_waited, &never), CQRS_ECLOSED);
  fx->d = NULL; /* freed as the loop runs in the teardown */
  assert_int_equal(never.calls, 0);
}

#define PENDING ((int)CQRS_CODE_COUNT + 7)

typedef struct sync_job {
  cqrs_dispatcher_t *d;
  const char *name;
  uint64_t timeout_ms;
  atomic_int got; /* PENDING until the wait returns */
  int ended_then; /* instances ended when it returned */
} sync_job_t;

static void sync_waiter(void *arg) {
  sync_job_t *j = arg;
  cqrs_code_t rc = cqrs_process_wait_sync(j->d, j->name, j->timeout_ms);
  j->ended_then = atomic_load(&ended);
  atomic_store(&j->got, (int)rc);
}

static void tick(uv_timer_t *t) { (void)t; }

/* Runs the loop until the job's thread returns, moving the clock `step_ms`
 * a turn; returns what the wait returned. */
static cqrs_code_t run_until_returned(fx_t *fx, sync_job_t *j, uv_thread_t *t, uint64_t step_ms) {
  while (atomic_load(&j->got) == PENDING) {
    uv_timer_start(&fx->keep, tick, 5, 0);
    uv_run(&fx->loop, UV_RUN_ONCE);
    if (step_ms) assert_int_equal(cqrs_clock_advance(fx->clock, step_ms), CQRS_OK);
  }
  uv_thread_join(t);
  return (cqrs_code_t)atomic_load(&j->got);
}

/* From another thread while the loop runs: returns CQRS_OK once both
 * instances have ended, after their deadlines were handled. */
static void test_wait_from_another_thread_until_the_instances_end(void **state) {
  fx_t *fx = *state;
  open_instance(fx, "l-1");
  open_instance(fx, "l-2");
  assert_int_equal(cqrs_process_open_count(fx->d, "order"), 2);
  sync_job_t j = {.d = fx->d, .name = "order", .timeout_ms = 3600000, .got = PENDING};
  uv_thread_t t;
  assert_int_equal(uv_thread_create(&t, sync_waiter, &j), 0);
  assert_int_equal(run_until_returned(fx, &j, &t, 10), CQRS_OK);
  assert_int_equal(j.ended_then, 2);
  assert_int_equal(cqrs_process_open_count(fx->d, "order"), 0);
}

/* From another thread: an instance that does not end in time is a time-out
 * (its deadline is an hour away), an unknown process is refused. */
static void test_wait_from_another_thread_times_out_and_refuses(void **state) {
  fx_t *fx = *state;
  close_after_ms = 3600000;
  open_instance(fx, "l-1");
  sync_job_t j = {.d = fx->d, .name = "order", .timeout_ms = 200, .got = PENDING};
  uv_thread_t t;
  assert_int_equal(uv_thread_create(&t, sync_waiter, &j), 0);
  assert_int_equal(run_until_returned(fx, &j, &t, 10), CQRS_ETIMEOUT);
  assert_int_equal(atomic_load(&ended), 0);
  assert_int_equal(cqrs_process_open_count(fx->d, "order"), 1);

  sync_job_t unknown = {.d = fx->d, .name = "nobody", .timeout_ms = 200, .got = PENDING};
  assert_int_equal(uv_thread_create(&t, sync_waiter, &unknown), 0);
  assert_int_equal(run_until_returned(fx, &unknown, &t, 0), CQRS_ENOT_FOUND);
  sync_job_t too_long = {.d = fx->d, .name = "an-order-name-longer-than-any", .timeout_ms = 200, .got = PENDING};
  assert_int_equal(uv_thread_create(&t, sync_waiter, &too_long), 0);
  assert_int_equal(run_until_returned(fx, &too_long, &t, 0), CQRS_ENOT_FOUND);
}

/* The dispatcher closing while another thread waits: CQRS_ECLOSED, whether
 * the waiter had reached the loop or not. The thread is joined before the
 * loop runs again, which frees the dispatcher. */
static void test_close_while_another_thread_waits(void **state) {
  fx_t *fx = *state;
  open_instance(fx, "l-1");
  sync_job_t j = {.d = fx->d, .name = "order", .timeout_ms = 3600000, .got = PENDING};
  uv_thread_t t;
  assert_int_equal(uv_thread_create(&t, sync_waiter, &j), 0);
  /* Turns of the loop, for the waiter to reach it (either way it closes). */
  for (int i = 0; i < 3; i++) {
    uv_timer_start(&fx->keep, tick, 5, 0);
    uv_run(&fx->loop, UV_RUN_ONCE);
  }
  assert_int_equal(cqrs_dispatcher_close(fx->d, NULL, NULL), CQRS_OK);
  uv_thread_join(&t);
  assert_int_equal(atomic_load(&j.got), CQRS_ECLOSED);
  assert_int_equal(atomic_load(&ended), 0);
  fx->d = NULL;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_wait_on_the_loop_until_the_instances_end, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wait_on_the_loop_times_out_refuses_and_closes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wait_from_another_thread_until_the_instances_end, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wait_from_another_thread_times_out_and_refuses, setup, teardown),
      cmocka_unit_test_setup_teardown(test_close_while_another_thread_waits, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
