/* Process managers: steps without blocking threads, deadlines that survive
 * a restart, derived ids, routing. The billing tests drive a whole flow
 * (tests/billing/test_transfer.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cqrs/backend.h>

#include "framework/ledger.h"
#include <cqrs/testing.h>

typedef struct nothing {
  char id[CQRS_ID_MAX];
} nothing_t;
static const cqrs_field_t nothing_fields[] = {CQRS_STRING(nothing_t, id, "id", CQRS_F_REQUIRED), CQRS_FIELDS_END};
/* A step that takes a while and changes nothing. */
static const cqrs_command_type_t slow_work = {.name = "test.slow", .payload_size = sizeof(nothing_t),
                                              .fields = nothing_fields};

static cqrs_code_t handle_slow(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)ctx, (void)cmd, (void)data, (void)err;
  uv_sleep(40);
  return CQRS_OK;
}

typedef struct counted {
  int32_t steps;
} counted_t;
static const cqrs_field_t counted_fields[] = {CQRS_INT32(counted_t, steps, "steps", 0), CQRS_FIELDS_END};


static cqrs_code_t start_slow(cqrs_process_t *p, void *state, const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)state, (void)e, (void)data;
  nothing_t n = {{0}};
  snprintf(n.id, sizeof n.id, "%s", cqrs_process_id(p));
  return cqrs_process_send(p, "work", &n, err);
}

static cqrs_code_t after_slow(cqrs_process_t *p, void *state, const cqrs_step_outcome_t *o, void *data,
                              cqrs_error_t *err) {
  (void)data, (void)err;
  assert_int_equal(o->status, CQRS_STEP_ACCEPTED);
  ((counted_t *)state)->steps++;
  cqrs_process_end(p);
  return CQRS_OK;
}

static const cqrs_process_route_t slow_routes[] = {{&ledger_opened, true, NULL, start_slow}, {NULL, false, NULL, NULL}};
static const cqrs_process_step_t slow_steps[] = {{"work", &slow_work}, {NULL, NULL}};
#define SLOW_PROCESS(n)                                                                                       \
  {.name = "slow" #n, .state_size = sizeof(counted_t), .state_fields = counted_fields, .routes = slow_routes, \
   .steps = slow_steps, .on_step = after_slow}
static const cqrs_process_type_t slow_types[8] = {SLOW_PROCESS(0), SLOW_PROCESS(1), SLOW_PROCESS(2), SLOW_PROCESS(3),
                                                  SLOW_PROCESS(4), SLOW_PROCESS(5), SLOW_PROCESS(6), SLOW_PROCESS(7)};

static void count_ended(const cqrs_result_t *r, void *data) {
  (void)r, (void)data;
}

static void watchdog(uv_timer_t *t) {
  (void)t;
  fail_msg("process managers stalled");
}

/* Eight process managers whose steps block for a while, on libuv's default
 * four pool threads: nothing waits for a step, so nothing stalls. */
static void test_eight_processes_on_four_pool_threads(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  cqrs_registry_t *reg = ledger_registry();
  assert_int_equal(cqrs_registry_add_command(reg, &slow_work, NULL), CQRS_OK);
  for (int i = 0; i < 8; i++) assert_int_equal(cqrs_registry_add_process(reg, &slow_types[i], NULL), CQRS_OK);
  cqrs_store_t *mem = NULL;
  cqrs_memory_store_new(&mem, NULL);
  cqrs_store_t *store = ledger_blocking_store(mem, 0);
  cqrs_checkpoint_store_t *cp = NULL;
  cqrs_memory_checkpoint_store_new(&cp, NULL);
  cqrs_dispatcher_t *d;
  cqrs_error_t err;
  assert_int_equal(cqrs_dispatcher_new(&loop, reg, store, NULL, &d, &err), CQRS_OK);
  assert_int_equal(ledger_handlers(d, NULL, 0, &err), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_register(d, &slow_work, handle_slow, NULL, CQRS_HANDLER_BLOCKING, &err), CQRS_OK);
  for (int i = 0; i < 8; i++) assert_int_equal(cqrs_process_start(d, &slow_types[i], NULL, cp, &err), CQRS_OK);
  for (int i = 0; i < 4; i++) {
    char id[16];
    snprintf(id, sizeof id, "l-%d", i);
    assert_int_equal(cqrs_dispatcher_send(d, ledger_open_new(id, "o"), count_ended, NULL), CQRS_OK);
  }
  uv_timer_t dog;
  uv_timer_init(&loop, &dog);
  uv_timer_start(&dog, watchdog, 60000, 0);
  uv_unref((uv_handle_t *)&dog);
  uv_run(&loop, UV_RUN_DEFAULT);
  for (int i = 0; i < 8; i++) {
    assert_int_equal(cqrs_process_open_count(d, slow_types[i].name), 0);
    for (int k = 0; k < 4; k++) {
      char id[16];
      snprintf(id, sizeof id, "l-%d", k);
      char stream[CQRS_NAME_MAX];
      snprintf(stream, sizeof stream, "process:%s", slow_types[i].name);
      const cqrs_aggregate_type_t *t = cqrs_registry_aggregate(reg, stream);
      cqrs_aggregate_t *agg;
      assert_int_equal(cqrs_repository_load(mem, t, id, &agg, NULL), CQRS_OK);
      /* received, step (the state did not change); received (the outcome), state, ended */
      assert_int_equal(cqrs_aggregate_version(agg), 5);
      cqrs_aggregate_destroy(agg);
    }
  }
  assert_int_equal(cqrs_dispatcher_close(d, NULL, NULL), CQRS_OK);
  uv_close((uv_handle_t *)&dog, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  cqrs_checkpoint_store_destroy(cp);
  cqrs_store_destroy(store);
  cqrs_store_destroy(mem);
  cqrs_registry_destroy(reg);
}

/* ---- deadlines ---- */

static int deadlines_fired;

static cqrs_code_t start_timer(cqrs_process_t *p, void *state, const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)state, (void)data;
  return cqrs_process_schedule(p, "expire", e->timestamp + 150, err);
}

static cqrs_code_t on_expire(cqrs_process_t *p, void *state, const char *name, void *data, cqrs_error_t *err) {
  (void)state, (void)data, (void)err;
  assert_string_equal(name, "expire");
  deadlines_fired++;
  cqrs_process_end(p);
  return CQRS_OK;
}

static const cqrs_process_route_t timer_routes[] = {{&ledger_opened, true, NULL, start_timer},
                                                    {NULL, false, NULL, NULL}};
static const cqrs_process_type_t timer_type = {.name = "timer", .routes = timer_routes, .on_deadline = on_expire};

#define T0 1700000000000LL /* the manual clocks' start, UTC ms */

static cqrs_dispatcher_t *clocked_dispatcher(uv_loop_t *loop, cqrs_registry_t *reg, cqrs_store_t *store,
                                             cqrs_clock_t *clock) {
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.clock = clock;
  cqrs_dispatcher_t *d;
  cqrs_error_t err;
  if (cqrs_dispatcher_new(loop, reg, store, &o, &d, &err)) fail_msg("%s", err.message);
  assert_int_equal(ledger_handlers(d, NULL, 0, &err), CQRS_OK);
  return d;
}

/* A deadline set before a stop fires after the restart, once, when the
 * clock reaches it and not before. */
static void test_deadline_fires_after_a_restart(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  cqrs_clock_t *clock;
  assert_int_equal(cqrs_clock_manual_new(T0, &clock, NULL), CQRS_OK);
  cqrs_registry_t *reg = ledger_registry();
  assert_int_equal(cqrs_registry_add_process(reg, &timer_type, NULL), CQRS_OK);
  cqrs_store_t *store = NULL;
  cqrs_memory_store_new(&store, NULL);
  cqrs_checkpoint_store_t *cp = NULL;
  cqrs_memory_checkpoint_store_new(&cp, NULL);
  cqrs_error_t err;
  cqrs_dispatcher_t *d = clocked_dispatcher(&loop, reg, store, clock);
  assert_int_equal(cqrs_process_start(d, &timer_type, NULL, cp, &err), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_send(d, ledger_open_new("l-1", "o"), NULL, NULL), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT); /* returns: a deadline alone does not hold the loop */
  assert_int_equal(cqrs_process_open_count(d, "timer"), 1);
  assert_int_equal(cqrs_clock_advance(clock, 100), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(deadlines_fired, 0);
  assert_int_equal(cqrs_dispatcher_close(d, NULL, NULL), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT);

  d = clocked_dispatcher(&loop, reg, store, clock);
  assert_int_equal(cqrs_process_start(d, &timer_type, NULL, cp, &err), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT); /* the instance is back, its deadline 50 ms away */
  assert_int_equal(cqrs_process_open_count(d, "timer"), 1);
  assert_int_equal(cqrs_clock_advance(clock, 49), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(deadlines_fired, 0);
  assert_int_equal(cqrs_clock_advance(clock, 1), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(deadlines_fired, 1);
  assert_int_equal(cqrs_process_open_count(d, "timer"), 0);
  assert_int_equal(cqrs_clock_advance(clock, 1000), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(cqrs_dispatcher_close(d, NULL, NULL), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  assert_int_equal(deadlines_fired, 1);
  cqrs_checkpoint_store_destroy(cp);
  cqrs_store_destroy(store);
  cqrs_registry_destroy(reg);
  cqrs_clock_destroy(clock);
}

/* Given / when / then of a deadline, with the test helpers. */
static void test_deadline_given_when_then(void **state) {
  (void)state;
  cqrs_process_test_t *t;
  assert_int_equal(cqrs_process_test_new(&timer_type, "l-1", NULL, &t, NULL), CQRS_OK);
  cqrs_clock_t *clock;
  assert_int_equal(cqrs_clock_manual_new(T0, &clock, NULL), CQRS_OK);
  cqrs_process_test_set_clock(t, clock); /* the event given is stamped by it */
  CQRS_PROCESS_WHEN_EVENT(t, &ledger_opened, "l-1", (ledger_opened_t){"o"});
  CQRS_PROCESS_THEN_DEADLINE(t, "expire", T0 + 150);
  int before = deadlines_fired;
  CQRS_PROCESS_WHEN_DEADLINE(t, "expire");
  CQRS_PROCESS_THEN_ENDED(t);
  assert_int_equal(deadlines_fired, before + 1);
  CQRS_PROCESS_THEN_DEADLINE(t, "expire", 0);
  cqrs_process_test_destroy(t);
  cqrs_clock_destroy(clock);
}

/* ---- ids and registration ---- */

static void test_derived_ids_are_never_cut(void **state) {
  (void)state;
  char a[CQRS_ID_MAX], b[CQRS_ID_MAX], c[CQRS_ID_MAX];
  assert_int_equal(cqrs_id_derive(a, "transfer.request", "t-1", NULL), CQRS_OK);
  assert_string_equal(a, "transfer.request:t-1");
  char id1[CQRS_ID_MAX], id2[CQRS_ID_MAX];
  memset(id1, 'x', sizeof id1 - 1);
  id1[sizeof id1 - 1] = '\0';
  memcpy(id2, id1, sizeof id2);
  id2[sizeof id2 - 2] = 'y';
  assert_int_equal(cqrs_id_derive(a, "transfer.request", id1, NULL), CQRS_OK);
  assert_int_equal(cqrs_id_derive(b, "transfer.request", id2, NULL), CQRS_OK);
  assert_int_equal(cqrs_id_derive(c, "transfer.request", id1, NULL), CQRS_OK);
  assert_string_not_equal(a, b);
  assert_string_equal(a, c);
  assert_true(strlen(a) < CQRS_ID_MAX);
  assert_int_equal(strncmp(a, "transfer.request#", 17), 0);
  char long_prefix[CQRS_ID_MAX];
  memset(long_prefix, 'p', 40);
  long_prefix[40] = '\0';
  assert_int_equal(cqrs_id_derive(a, long_prefix, "x", NULL), CQRS_EINVAL);
  assert_int_equal(cqrs_id_derive(NULL, "p", "x", NULL), CQRS_EINVAL);
}

static void test_registration_is_checked(void **state) {
  (void)state;
  cqrs_registry_t *reg = ledger_registry();
  cqrs_error_t err;
  static const cqrs_process_type_t unnamed = {.name = "bad/name", .routes = timer_routes};
  static const cqrs_process_type_t no_routes = {.name = "empty"};
  static const cqrs_process_type_t no_fields = {.name = "nofields", .state_size = 8, .routes = timer_routes};
  static const cqrs_process_type_t no_on_step = {.name = "nostep", .routes = slow_routes, .steps = slow_steps};
  assert_int_equal(cqrs_registry_add_process(reg, &unnamed, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_registry_add_process(reg, &no_routes, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_registry_add_process(reg, &no_fields, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_registry_add_process(reg, &no_on_step, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_registry_add_process(reg, &timer_type, &err), CQRS_OK);
  assert_int_equal(cqrs_registry_add_process(reg, &timer_type, &err), CQRS_EDUPLICATE);
  assert_int_equal(cqrs_registry_add_process(NULL, &timer_type, &err), CQRS_EINVAL);
  cqrs_registry_destroy(reg);
}

/* Names the id scheme cannot carry are refused, never cut: the limits of
 * process.h, and "in", which reads like an input's id. */
static void test_name_limits(void **state) {
  (void)state;
  cqrs_registry_t *reg = ledger_registry();
  cqrs_error_t err;
  static const cqrs_process_step_t in_step[] = {{"in", &slow_work}, {NULL, NULL}};
  static const cqrs_process_step_t long_step[] = {{"a_step_name_of_21_chr", &slow_work}, {NULL, NULL}};
  static const cqrs_process_step_t max_step[] = {{"step_name_of_20_char", &slow_work}, {NULL, NULL}};
  static const cqrs_process_step_t twin_steps[] = {{"work", &slow_work}, {"work", &slow_work}, {NULL, NULL}};
  static const cqrs_process_type_t in_type = {.name = "p1", .routes = slow_routes, .steps = in_step,
                                              .on_step = after_slow};
  static const cqrs_process_type_t long_step_type = {.name = "p2", .routes = slow_routes, .steps = long_step,
                                                     .on_step = after_slow};
  static const cqrs_process_type_t twins = {.name = "p3", .routes = slow_routes, .steps = twin_steps,
                                            .on_step = after_slow};
  static const cqrs_process_type_t long_name = {.name = "a_process_name_of_21c", .routes = slow_routes};
  static const cqrs_process_type_t max_names = {.name = "process_name_of_20ch", .routes = slow_routes,
                                                .steps = max_step, .on_step = after_slow};
  assert_int_equal(strlen(long_step[0].name), CQRS_PROCESS_STEP_NAME_MAX + 1);
  assert_int_equal(strlen(long_name.name), CQRS_PROCESS_NAME_MAX + 1);
  assert_int_equal(cqrs_registry_add_process(reg, &in_type, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_registry_add_process(reg, &long_step_type, &err), CQRS_EINVAL);
  assert_non_null(strstr(err.message, "20"));
  assert_int_equal(cqrs_registry_add_process(reg, &twins, &err), CQRS_EDUPLICATE);
  assert_int_equal(cqrs_registry_add_process(reg, &long_name, &err), CQRS_EINVAL);
  assert_non_null(strstr(err.message, "20"));
  assert_int_equal(cqrs_registry_add_process(reg, &max_names, &err), CQRS_OK);
  assert_non_null(cqrs_registry_event(reg, "process:process_name_of_20ch.step.step_name_of_20_char"));
  cqrs_registry_destroy(reg);
}

static atomic_long fail_at = -1;
static void *countdown_malloc(size_t n) { return atomic_fetch_sub(&fail_at, 1) == 0 ? NULL : malloc(n); }
static void *countdown_realloc(void *p, size_t n) {
  return atomic_fetch_sub(&fail_at, 1) == 0 ? NULL : realloc(p, n);
}

/* A registration that fails half-way (each allocation in turn) leaves no
 * name behind, so none points into what it freed, and it can be made again. */
static void test_a_failed_registration_leaves_nothing(void **state) {
  (void)state;
  cqrs_allocator_t hook = {countdown_malloc, countdown_realloc, free};
  long n;
  for (n = 0;; n++) {
    cqrs_registry_t *reg = ledger_registry();
    atomic_store(&fail_at, n);
    cqrs_set_allocator(&hook);
    cqrs_code_t rc = cqrs_registry_add_process(reg, &slow_types[0], NULL);
    cqrs_set_allocator(NULL);
    bool failed = atomic_load(&fail_at) < 0;
    if (rc == CQRS_OK) {
      assert_false(failed);
      cqrs_registry_destroy(reg);
      break;
    }
    assert_int_equal(rc, CQRS_ENOMEM);
    assert_null(cqrs_registry_aggregate(reg, "process:slow0"));
    assert_null(cqrs_registry_event(reg, "process:slow0.received"));
    assert_null(cqrs_registry_event(reg, "process:slow0.step.work"));
    assert_int_equal(cqrs_registry_add_process(reg, &slow_types[0], NULL), CQRS_OK);
    assert_non_null(cqrs_registry_aggregate(reg, "process:slow0"));
    cqrs_registry_destroy(reg);
  }
  assert_true(n > 3);
}

/* An outside command cannot take an id reserved for process steps. */
static void test_reserved_ids_are_refused(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  cqrs_registry_t *reg = ledger_registry();
  cqrs_store_t *store = NULL;
  cqrs_memory_store_new(&store, NULL);
  cqrs_dispatcher_t *d;
  assert_int_equal(cqrs_dispatcher_new(&loop, reg, store, NULL, &d, NULL), CQRS_OK);
  assert_int_equal(ledger_handlers(d, NULL, 0, NULL), CQRS_OK);
  cqrs_command_t *cmd = ledger_open_new("l-1", "o");
  assert_int_equal(cqrs_command_set_id(cmd, "~slow0/work:l-1", NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_send(d, cmd, NULL, NULL), CQRS_EINVALID_COMMAND);
  assert_int_equal(cqrs_dispatcher_close(d, NULL, NULL), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  int64_t head;
  assert_int_equal(cqrs_store_head(store, &head, NULL), CQRS_OK);
  assert_int_equal(head, 0);
  cqrs_store_destroy(store);
  cqrs_registry_destroy(reg);
}

/* ---- an input recorded by an earlier run, met through a stale read ---- */

static bool gate_open;
static int gate_passed;

/* A step that cannot run while the gate is closed (a transient failure:
 * the process manager retries it). */
static cqrs_code_t handle_gate(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)ctx, (void)cmd, (void)data;
  if (!gate_open) return cqrs_error_set(err, CQRS_ESTORE, "the gate is closed");
  gate_passed++;
  return CQRS_OK;
}
static const cqrs_command_type_t gate_work = {.name = "test.gate", .payload_size = sizeof(nothing_t),
                                              .fields = nothing_fields};

/* The slow process manager's shape, with the gate as its step. */
static const cqrs_process_step_t gated_steps[] = {{"work", &gate_work}, {NULL, NULL}};
static const cqrs_process_type_t gated_type = {.name = "gated", .state_size = sizeof(counted_t),
                                               .state_fields = counted_fields, .routes = slow_routes,
                                               .steps = gated_steps, .on_step = after_slow};

/* A store whose first reads of process streams find nothing (what a
 * process sees when an earlier one's write lands after its own read), the
 * next ones fail as a server gone for a moment, and which counts the
 * appends it answers "duplicate". */
typedef struct stale {
  cqrs_store_t *inner;
  int stale_reads, failed_reads, duplicates;
} stale_t;
static cqrs_code_t st_append(void *impl, const cqrs_append_t *r, cqrs_append_result_t *res, cqrs_error_t *err) {
  stale_t *s = impl;
  cqrs_code_t rc = cqrs_store_append(s->inner, r, res, err);
  if (!rc && res->duplicate) s->duplicates++;
  return rc;
}
static cqrs_code_t st_read_stream(void *impl, const char *t, const char *id, int64_t from, cqrs_event_visit_cb cb,
                                  void *data, cqrs_error_t *err) {
  stale_t *s = impl;
  if (!strncmp(t, "process:", 8) && s->stale_reads > 0) {
    s->stale_reads--;
    return CQRS_OK;
  }
  if (!strncmp(t, "process:", 8) && s->failed_reads > 0) {
    s->failed_reads--;
    return cqrs_error_set(err, CQRS_ESTORE, "the server went away");
  }
  return cqrs_store_read_stream(s->inner, t, id, from, cb, data, err);
}
static cqrs_code_t st_read_all(void *impl, int64_t from, size_t limit, cqrs_event_visit_cb cb, void *data,
                               cqrs_error_t *err) {
  return cqrs_store_read_all(((stale_t *)impl)->inner, from, limit, cb, data, err);
}
static cqrs_code_t st_head(void *impl, int64_t *p, cqrs_error_t *err) {
  return cqrs_store_head(((stale_t *)impl)->inner, p, err);
}
static const cqrs_store_ops_t stale_ops = {.name = "stale", .blocking = false, .append = st_append,
                                           .read_stream = st_read_stream, .read_all = st_read_all, .head = st_head,
                                           .snapshot_load = NULL, .snapshot_save = NULL, .destroy = free};

/* The first run: the instance of l-1 records its start and its step, and
 * the dispatcher closes before the step could run (the gate is closed). */
static void record_and_stop(uv_loop_t *loop, cqrs_registry_t *reg, cqrs_store_t *store, cqrs_checkpoint_store_t *cp) {
  cqrs_dispatcher_t *d;
  gate_open = false;
  gate_passed = 0;
  assert_int_equal(cqrs_dispatcher_new(loop, reg, store, NULL, &d, NULL), CQRS_OK);
  assert_int_equal(ledger_handlers(d, NULL, 0, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_register(d, &gate_work, handle_gate, NULL, 0, NULL), CQRS_OK);
  assert_int_equal(cqrs_process_start(d, &gated_type, NULL, cp, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_send(d, ledger_open_new("l-1", "o"), NULL, NULL), CQRS_OK);
  while (cqrs_process_open_count(d, "gated") == 0) uv_run(loop, UV_RUN_ONCE);
  assert_int_equal(cqrs_dispatcher_close(d, NULL, NULL), CQRS_OK);
  uv_run(loop, UV_RUN_DEFAULT);
  assert_int_equal(gate_passed, 0);
}

static cqrs_checkpoint_store_t *gate_cp;
static stale_t *gate_store;
static int64_t gate_cp_before_reload; /* the highest checkpoint saved before the reload worked */

/* The highest checkpoint saved so far, once the duplicate has been met and
 * the reload has failed, and before the step has run. */
static void note_checkpoint(void) {
  if (gate_store->duplicates && gate_store->failed_reads == 0 && !gate_passed) {
    int64_t at = 0;
    assert_int_equal(cqrs_checkpoint_store_load(gate_cp, "process:gated", &at, NULL), CQRS_OK);
    if (at > gate_cp_before_reload) gate_cp_before_reload = at;
  }
}

/* A run records an instance's first input and is stopped before its step
 * has run; the next run's first read of the instance is stale, so recording
 * that input again finds it there already (a duplicate), and its first
 * reload fails. The instance is reloaded again and its step run, not
 * forgotten, and until then its checkpoint stays before its first event
 * (position 1): a crash meanwhile meets it again. */
static void test_input_recorded_by_an_earlier_run(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  cqrs_registry_t *reg = ledger_registry();
  assert_int_equal(cqrs_registry_add_command(reg, &gate_work, NULL), CQRS_OK);
  assert_int_equal(cqrs_registry_add_process(reg, &gated_type, NULL), CQRS_OK);
  cqrs_store_t *mem = NULL;
  cqrs_memory_store_new(&mem, NULL);
  cqrs_checkpoint_store_t *cp = NULL;
  cqrs_memory_checkpoint_store_new(&cp, NULL);
  cqrs_error_t err;
  cqrs_dispatcher_t *d;
  record_and_stop(&loop, reg, mem, cp);

  stale_t *impl = calloc(1, sizeof *impl);
  impl->inner = mem;
  impl->stale_reads = 1;
  impl->failed_reads = 1;
  gate_store = impl;
  gate_cp = cp;
  gate_cp_before_reload = 0;
  cqrs_store_t *store = NULL;
  assert_int_equal(cqrs_store_new(&stale_ops, impl, &store, NULL), CQRS_OK);
  gate_open = true;
  cqrs_clock_t *clock;
  assert_int_equal(cqrs_clock_manual_new(T0, &clock, NULL), CQRS_OK);
  d = clocked_dispatcher(&loop, reg, store, clock);
  assert_int_equal(cqrs_dispatcher_register(d, &gate_work, handle_gate, NULL, 0, &err), CQRS_OK);
  assert_int_equal(cqrs_process_start(d, &gated_type, NULL, cp, &err), CQRS_OK);
  /* The reload that failed is tried again later (a retry on the clock):
   * the checkpoint is looked at in between, each time the loop is idle. */
  uint64_t in;
  uv_run(&loop, UV_RUN_DEFAULT);
  note_checkpoint();
  assert_false(gate_passed);
  while (cqrs_clock_next_due(clock, &in)) {
    assert_int_equal(cqrs_clock_advance(clock, in), CQRS_OK);
    uv_run(&loop, UV_RUN_DEFAULT);
    note_checkpoint();
  }
  assert_int_equal(impl->stale_reads, 0); /* the stale read, */
  assert_int_equal(impl->duplicates, 1);  /* the duplicate it led to, */
  assert_int_equal(impl->failed_reads, 0); /* and the failed reload did happen */
  assert_int_equal(gate_cp_before_reload, 0);
  assert_int_equal(gate_passed, 1);
  assert_int_equal(cqrs_process_open_count(d, "gated"), 0);
  assert_int_equal(cqrs_dispatcher_close(d, NULL, NULL), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  cqrs_checkpoint_store_destroy(cp);
  cqrs_store_destroy(store);
  cqrs_store_destroy(mem);
  cqrs_registry_destroy(reg);
  cqrs_clock_destroy(clock);
}

static void race_quiet(cqrs_log_level_t level, const char *domain, const char *message, void *data);

/* The allocations after the duplicate of the test above: the n-th fails. */
static atomic_long fail_after_dup = -1;
static void *dup_malloc(size_t n) {
  return gate_store && gate_store->duplicates && atomic_fetch_sub(&fail_after_dup, 1) == 0 ? NULL : malloc(n);
}
static void *dup_realloc(void *p, size_t n) {
  return gate_store && gate_store->duplicates && atomic_fetch_sub(&fail_after_dup, 1) == 0 ? NULL : realloc(p, n);
}

static cqrs_dispatcher_t *gated_dispatcher(uv_loop_t *loop, cqrs_registry_t *reg, cqrs_store_t *store,
                                           cqrs_checkpoint_store_t *cp, cqrs_clock_t *clock) {
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.retry_base_ms = 1;
  o.retry_cap_ms = 2;
  o.clock = clock;
  cqrs_dispatcher_t *d;
  assert_int_equal(cqrs_dispatcher_new(loop, reg, store, &o, &d, NULL), CQRS_OK);
  assert_int_equal(ledger_handlers(d, NULL, 0, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_register(d, &gate_work, handle_gate, NULL, 0, NULL), CQRS_OK);
  assert_int_equal(cqrs_process_start(d, &gated_type, NULL, cp, NULL), CQRS_OK);
  return d;
}

/* The run that meets the duplicate, with each allocation after it failing
 * in turn (the reload's among them): nothing is freed twice or used after
 * it is freed, and a third run, with memory, finishes the instance (its
 * stream: received, step; received, state, ended), so nothing was
 * forgotten. */
static void test_allocation_failures_after_a_duplicate(void **state) {
  (void)state;
  cqrs_registry_t *reg = ledger_registry();
  assert_int_equal(cqrs_registry_add_command(reg, &gate_work, NULL), CQRS_OK);
  assert_int_equal(cqrs_registry_add_process(reg, &gated_type, NULL), CQRS_OK);
  cqrs_log_set_handler(race_quiet, NULL);
  cqrs_allocator_t hook = {dup_malloc, dup_realloc, free};
  long n;
  for (n = 0; n < 400; n++) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    cqrs_store_t *mem = NULL, *store = NULL;
    cqrs_memory_store_new(&mem, NULL);
    cqrs_checkpoint_store_t *cp = NULL;
    cqrs_memory_checkpoint_store_new(&cp, NULL);
    record_and_stop(&loop, reg, mem, cp);
    stale_t *impl = calloc(1, sizeof *impl);
    impl->inner = mem;
    impl->stale_reads = 1;
    assert_int_equal(cqrs_store_new(&stale_ops, impl, &store, NULL), CQRS_OK);
    gate_store = impl;
    gate_open = true;
    atomic_store(&fail_after_dup, n);
    cqrs_clock_t *clock;
    assert_int_equal(cqrs_clock_manual_new(T0, &clock, NULL), CQRS_OK);
    cqrs_set_allocator(&hook);
    cqrs_dispatcher_t *d = gated_dispatcher(&loop, reg, store, cp, clock);
    /* It runs for 100 ms of the clock, through the back-offs due by then. */
    uint64_t in, ran = 0;
    uv_run(&loop, UV_RUN_DEFAULT);
    while (cqrs_clock_next_due(clock, &in) && ran + in <= 100) {
      assert_int_equal(cqrs_clock_advance(clock, in), CQRS_OK);
      ran += in;
      uv_run(&loop, UV_RUN_DEFAULT);
    }
    assert_int_equal(cqrs_dispatcher_close(d, NULL, NULL), CQRS_OK);
    uv_run(&loop, UV_RUN_DEFAULT);
    cqrs_set_allocator(NULL);
    bool failed = atomic_load(&fail_after_dup) < 0;
    assert_int_equal(impl->duplicates, 1);

    d = gated_dispatcher(&loop, reg, store, cp, clock);
    while (!cqrs_projection_live(d, "process:gated")) uv_run(&loop, UV_RUN_ONCE);
    ledger_run_idle(&loop, clock);
    assert_int_equal(cqrs_process_open_count(d, "gated"), 0);
    assert_int_equal(cqrs_dispatcher_close(d, NULL, NULL), CQRS_OK);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    cqrs_aggregate_t *agg;
    assert_int_equal(cqrs_repository_load(mem, cqrs_registry_aggregate(reg, "process:gated"), "l-1", &agg, NULL),
                     CQRS_OK);
    if (cqrs_aggregate_version(agg) != 5)
      fail_msg("allocation %ld after the duplicate failing: the instance is at version %lld", n,
               (long long)cqrs_aggregate_version(agg));
    cqrs_aggregate_destroy(agg);
    assert_true(gate_passed >= 1);
    gate_store = NULL;
    cqrs_clock_destroy(clock);
    cqrs_checkpoint_store_destroy(cp);
    cqrs_store_destroy(store);
    cqrs_store_destroy(mem);
    if (!failed) break; /* fewer than n allocations after the duplicate: every one has failed once */
  }
  cqrs_log_set_handler(NULL, NULL);
  fprintf(stderr, "after the duplicate: %ld allocations, each failed once\n", n);
  assert_true(n > 3);
  assert_true(n < 400);
  cqrs_registry_destroy(reg);
}

/* ---- two processes running the same process manager ---- */

enum { RACERS = 400 };
static _Atomic int race_outcome[RACERS]; /* the outcome each instance recorded */

static int racer_index(const char *id) { return atoi(id + 2); }

static cqrs_code_t race_start(cqrs_process_t *p, void *state, const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)state, (void)e, (void)data;
  ledger_move_cmd_t take = {{0}, 5};
  snprintf(take.id, sizeof take.id, "%s", cqrs_process_id(p));
  return cqrs_process_send(p, "take", &take, err);
}

static cqrs_code_t race_step(cqrs_process_t *p, void *state, const cqrs_step_outcome_t *o, void *data,
                             cqrs_error_t *err) {
  (void)state, (void)data, (void)err;
  atomic_store(&race_outcome[racer_index(cqrs_process_id(p))], (int)o->status);
  cqrs_process_end(p);
  return CQRS_OK;
}

static const cqrs_process_route_t race_routes[] = {{&ledger_opened, true, NULL, race_start},
                                                   {NULL, false, NULL, NULL}};
static const cqrs_process_step_t race_steps[] = {{"take", &ledger_debit}, {NULL, NULL}};
static const cqrs_process_type_t race_type = {.name = "race", .routes = race_routes, .steps = race_steps,
                                              .on_step = race_step};

typedef struct takes {
  char id[CQRS_ID_MAX];
  int debits;
} takes_t;

static bool count_takes(const cqrs_event_t *e, void *data) {
  takes_t *t = data;
  t->debits += e->type == &ledger_debited && !strcmp(cqrs_event_causation_id(e), t->id);
  return true;
}

typedef struct crediter {
  cqrs_dispatcher_t *d;
  int next;
} crediter_t;

static void credit_some(uv_timer_t *t) {
  crediter_t *c = t->data;
  for (int k = 0; k < 3 && c->next < RACERS; k++, c->next++) {
    char id[16];
    snprintf(id, sizeof id, "r-%d", c->next);
    cqrs_dispatcher_send(c->d, ledger_credit_new(id, 5), NULL, NULL);
  }
  if (c->next == RACERS) uv_timer_stop(t);
}

/* Stops the loop once every instance has recorded its outcome and both
 * dispatchers are idle (their polling would keep it running). */
static void stop_when_recorded(uv_timer_t *t) {
  cqrs_dispatcher_t **d = t->data;
  for (int i = 0; i < RACERS; i++) {
    if (!atomic_load(&race_outcome[i])) return;
  }
  if (cqrs_dispatcher_pending(d[0]) || cqrs_dispatcher_pending(d[1])) return;
  if (cqrs_process_open_count(d[0], "race") || cqrs_process_open_count(d[1], "race")) return;
  uv_stop(t->loop);
}

static void race_quiet(cqrs_log_level_t level, const char *domain, const char *message, void *data) {
  (void)level, (void)domain, (void)message, (void)data;
}

/* Two dispatchers (two processes of one application) run the same process
 * manager on one store, and both may send an instance's step: whichever
 * answer is recorded first under the step's id is the step's outcome for
 * both, so a step refused for one is never accepted for the other. Each
 * instance's recorded outcome agrees with the ledger. */
static void test_two_runtimes_agree_on_each_step(void **state) {
  (void)state;
  cqrs_log_set_handler(race_quiet, NULL);
  uv_loop_t loop;
  uv_loop_init(&loop);
  cqrs_registry_t *reg = ledger_registry();
  assert_int_equal(cqrs_registry_add_process(reg, &race_type, NULL), CQRS_OK);
  cqrs_store_t *mem = NULL;
  cqrs_memory_store_new(&mem, NULL);
  cqrs_store_t *store = ledger_blocking_store(mem, 0);
  cqrs_checkpoint_store_t *cp[2] = {NULL, NULL};
  cqrs_memory_checkpoint_store_new(&cp[0], NULL);
  cqrs_memory_checkpoint_store_new(&cp[1], NULL);
  cqrs_dispatcher_t *d[2];
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.poll_ms = 1;
  o.retry_base_ms = 1;
  for (int i = 0; i < 2; i++) {
    assert_int_equal(cqrs_dispatcher_new(&loop, reg, store, &o, &d[i], NULL), CQRS_OK);
    assert_int_equal(ledger_handlers(d[i], NULL, 0, NULL), CQRS_OK);
    assert_int_equal(cqrs_process_start(d[i], &race_type, NULL, cp[i], NULL), CQRS_OK);
  }
  for (int i = 0; i < RACERS; i++) {
    char id[16];
    snprintf(id, sizeof id, "r-%d", i);
    atomic_store(&race_outcome[i], 0);
    assert_int_equal(cqrs_dispatcher_send(d[0], ledger_open_new(id, "o"), NULL, NULL), CQRS_OK);
  }
  /* The credits come while the takes run: a take is refused before its
   * credit and accepted after it. */
  crediter_t cr = {d[1], 0};
  uv_timer_t credits;
  uv_timer_init(&loop, &credits);
  credits.data = &cr;
  uv_timer_start(&credits, credit_some, 1, 1);
  uv_timer_t stop;
  uv_timer_init(&loop, &stop);
  stop.data = d;
  uv_timer_start(&stop, stop_when_recorded, 5, 5);
  uv_run(&loop, UV_RUN_DEFAULT);
  int refused = 0;
  for (int i = 0; i < RACERS; i++) {
    char id[16];
    snprintf(id, sizeof id, "r-%d", i);
    takes_t t = {{0}, 0};
    assert_int_equal(cqrs_id_derive(t.id, "~race/take", id, NULL), CQRS_OK);
    assert_int_equal(cqrs_store_read_all(mem, 1, SIZE_MAX, count_takes, &t, NULL), CQRS_OK);
    int outcome = atomic_load(&race_outcome[i]);
    if (outcome == CQRS_STEP_ACCEPTED && t.debits != 1)
      fail_msg("%s: recorded accepted, but %d debits", id, t.debits);
    if (outcome != CQRS_STEP_ACCEPTED && t.debits != 0)
      fail_msg("%s: recorded %d, but %d debits", id, outcome, t.debits);
    refused += outcome == CQRS_STEP_REJECTED;
  }
  for (int i = 0; i < 2; i++) assert_int_equal(cqrs_dispatcher_close(d[i], NULL, NULL), CQRS_OK);
  uv_close((uv_handle_t *)&stop, NULL);
  uv_close((uv_handle_t *)&credits, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  for (int i = 0; i < 2; i++)
    cqrs_checkpoint_store_destroy(cp[i]);
  cqrs_store_destroy(store);
  cqrs_store_destroy(mem);
  cqrs_registry_destroy(reg);
  cqrs_log_set_handler(NULL, NULL);
  fprintf(stderr, "two runtimes: %d of %d takes refused\n", refused, RACERS);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_eight_processes_on_four_pool_threads),
      cmocka_unit_test(test_deadline_fires_after_a_restart),
      cmocka_unit_test(test_deadline_given_when_then),
      cmocka_unit_test(test_derived_ids_are_never_cut),
      cmocka_unit_test(test_registration_is_checked),
      cmocka_unit_test(test_name_limits),
      cmocka_unit_test(test_a_failed_registration_leaves_nothing),
      cmocka_unit_test(test_reserved_ids_are_refused),
      cmocka_unit_test(test_input_recorded_by_an_earlier_run),
      cmocka_unit_test(test_allocation_failures_after_a_duplicate),
      cmocka_unit_test(test_two_runtimes_agree_on_each_step),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
