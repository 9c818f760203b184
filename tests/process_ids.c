/* Process managers' derived ids, on whichever store the factory makes: each
 * input and step is named by all of it, never by a cut of it, so two inputs
 * never meet under one id, and a step keeps its id across a restart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/ledger.h"
#include "process_ids.h"

static const cqrs_store_factory_t *factory;

/* Handler runs, counted on whichever thread runs them. An input taken for
 * the duplicate of another is handled again and again: past RUNAWAY runs
 * the test stops the loop and fails instead of spinning. */
#define RUNAWAY 25
static atomic_int runs;
static atomic_bool ended;

typedef struct counted {
  int32_t n;
} counted_t;
static const cqrs_field_t counted_fields[] = {CQRS_INT32(counted_t, n, "n", 0), CQRS_FIELDS_END};

/* ---- the fixture: a loop, a registry with every process type below, a store ---- */

typedef struct fixture {
  uv_loop_t loop;
  cqrs_clock_t *clock; /* manual: the dispatchers', moved by drive() and crash_run() */
  cqrs_registry_t *reg;
  cqrs_store_t *store;
  cqrs_checkpoint_store_t *cp;
  cqrs_dispatcher_t *d;
  const char *process; /* the one the driver watches */
} fixture_t;

static const cqrs_process_type_t *const *all_types(void);

static fixture_t *fixture_new(void) {
  fixture_t *f = calloc(1, sizeof *f);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  assert_int_equal(cqrs_clock_manual_new(1700000000000LL, &f->clock, NULL), CQRS_OK);
  f->reg = ledger_registry();
  for (const cqrs_process_type_t *const *t = all_types(); *t; t++)
    assert_int_equal(cqrs_registry_add_process(f->reg, *t, NULL), CQRS_OK);
  f->store = factory->create(f->reg, factory->data);
  assert_non_null(f->store);
  assert_int_equal(cqrs_memory_checkpoint_store_new(&f->cp, NULL), CQRS_OK);
  atomic_store(&runs, 0);
  atomic_store(&ended, false);
  return f;
}

static cqrs_dispatcher_t *start(fixture_t *f, cqrs_store_t *store, const cqrs_process_type_t *type) {
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.retry_base_ms = 1;
  o.retry_cap_ms = 2;
  o.clock = f->clock;
  cqrs_error_t err;
  cqrs_dispatcher_t *d;
  if (cqrs_dispatcher_new(&f->loop, f->reg, store, &o, &d, &err)) fail_msg("dispatcher: %s", err.message);
  assert_int_equal(ledger_handlers(d, NULL, 0, NULL), CQRS_OK);
  if (type && cqrs_process_start(d, type, NULL, f->cp, &err)) fail_msg("process %s: %s", type->name, err.message);
  f->process = type ? type->name : NULL;
  return d;
}

static void stop(fixture_t *f, cqrs_dispatcher_t *d) {
  assert_int_equal(cqrs_dispatcher_close(d, NULL, NULL), CQRS_OK);
  uv_run(&f->loop, UV_RUN_DEFAULT);
}

static void fixture_free(fixture_t *f) {
  assert_int_equal(uv_loop_close(&f->loop), 0);
  cqrs_checkpoint_store_destroy(f->cp);
  factory->dispose(f->store, factory->data);
  cqrs_registry_destroy(f->reg);
  cqrs_clock_destroy(f->clock);
  free(f);
}

static void done_ok(const cqrs_result_t *r, void *data) {
  (void)data;
  if (!cqrs_result_ok(r)) fail_msg("%s: %s", r->command_id, r->error.message);
}

/* Sends and runs until everything it started has completed. */
static void run_command(fixture_t *f, cqrs_dispatcher_t *d, cqrs_command_t *cmd) {
  assert_int_equal(cqrs_dispatcher_send(d, cmd, done_ok, NULL), CQRS_OK);
  uv_run(&f->loop, UV_RUN_DEFAULT);
}

/* The clock's time a driver may take before it fails (not hangs): far
 * past any deadline or back-off here. */
#define PATIENCE_MS 120000

/* Runs the loop until nothing is in flight, then moves the clock on: to the
 * next timer that keeps the loop running (a back-off, a retry), else by
 * 1 ms, for a deadline (which holds nothing). */
static void run_then_advance(fixture_t *f) {
  uv_run(&f->loop, UV_RUN_DEFAULT);
  uint64_t in;
  if (!cqrs_clock_next_due(f->clock, &in)) in = 1;
  assert_int_equal(cqrs_clock_advance(f->clock, in), CQRS_OK);
}

static bool settled(fixture_t *f) {
  return atomic_load(&ended) && cqrs_dispatcher_pending(f->d) == 0 && cqrs_process_open_count(f->d, f->process) == 0;
}

/* Drives the loop and the clock until the watched process has ended its
 * instance and has nothing in flight, or a handler ran away. */
static void drive(fixture_t *f) {
  uint64_t until = cqrs_clock_monotonic_ms(f->clock) + PATIENCE_MS;
  uv_run(&f->loop, UV_RUN_DEFAULT);
  while (!settled(f) && atomic_load(&runs) <= RUNAWAY && cqrs_clock_monotonic_ms(f->clock) < until)
    run_then_advance(f);
  if (atomic_load(&runs) > RUNAWAY) fail_msg("a handler ran %d times: an input was taken for another's duplicate",
                                             atomic_load(&runs));
  if (!settled(f)) fail_msg("process %s did not settle in %d s of the clock", f->process, PATIENCE_MS / 1000);
  assert_true(atomic_load(&ended));
  assert_int_equal(cqrs_process_open_count(f->d, f->process), 0);
}

typedef struct balance {
  int64_t amount;
  int debits;
} balance_t;

static bool sum_ledger(const cqrs_event_t *e, void *data) {
  balance_t *b = data;
  const ledger_amount_t *a = e->payload;
  if (e->type == &ledger_credited) b->amount += a->amount;
  if (e->type == &ledger_debited) {
    b->amount -= a->amount;
    b->debits++;
  }
  return true;
}

static balance_t ledger_balance(cqrs_store_t *store, const char *id) {
  balance_t b = {0, 0};
  assert_int_equal(cqrs_store_read_stream(store, "ledger", id, 1, sum_ledger, &b, NULL), CQRS_OK);
  return b;
}

/* ---- two events to one instance within a second, from one writer ---- */

static cqrs_code_t pair_open(cqrs_process_t *p, void *state, const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)p, (void)state, (void)e, (void)data, (void)err;
  return CQRS_OK;
}

static cqrs_code_t pair_credit(cqrs_process_t *p, void *state, const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)e, (void)data, (void)err;
  atomic_fetch_add(&runs, 1);
  if (++((counted_t *)state)->n == 2) {
    cqrs_process_end(p);
    atomic_store(&ended, true);
  }
  return CQRS_OK;
}

static const cqrs_process_route_t pair_routes[] = {
    {&ledger_opened, true, NULL, pair_open}, {&ledger_credited, false, NULL, pair_credit}, {NULL, false, NULL, NULL}};
static const cqrs_process_type_t pair_type = {.name = "pair", .state_size = sizeof(counted_t),
                                              .state_fields = counted_fields, .routes = pair_routes};

/* Event ids made by one writer within one second share their first fifteen
 * hex digits: each of these three inputs is heard, none taken for another. */
static void test_two_events_to_one_instance_within_a_second(void **state) {
  (void)state;
  fixture_t *f = fixture_new();
  f->d = start(f, f->store, &pair_type);
  assert_int_equal(cqrs_dispatcher_send(f->d, ledger_open_new("l-1", "o"), done_ok, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_send(f->d, ledger_credit_new("l-1", 1), done_ok, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_send(f->d, ledger_credit_new("l-1", 1), done_ok, NULL), CQRS_OK);
  drive(f);
  assert_int_equal(atomic_load(&runs), 2);
  stop(f, f->d);
  fixture_free(f);
}

/* ---- a step with a long name, sent twice ---- */

static cqrs_code_t twice_open(cqrs_process_t *p, void *state, const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)state, (void)e, (void)data;
  return cqrs_process_send(p, "reserve_the_seats", &(ledger_move_cmd_t){"seats", 1}, err);
}

static cqrs_code_t twice_step(cqrs_process_t *p, void *state, const cqrs_step_outcome_t *o, void *data,
                              cqrs_error_t *err) {
  (void)data;
  atomic_fetch_add(&runs, 1);
  assert_int_equal(o->status, CQRS_STEP_ACCEPTED);
  if (++((counted_t *)state)->n == 1) return cqrs_process_send(p, "reserve_the_seats", &(ledger_move_cmd_t){"seats", 1}, err);
  cqrs_process_end(p);
  atomic_store(&ended, true);
  return CQRS_OK;
}

static bool route_t(const cqrs_event_t *e, char *buf, size_t cap) {
  const char *id = cqrs_event_aggregate_id(e);
  if (strncmp(id, "t-", 2)) return false;
  snprintf(buf, cap, "%s", id);
  return true;
}

static const cqrs_process_route_t twice_routes[] = {{&ledger_opened, true, route_t, twice_open},
                                                    {NULL, false, NULL, NULL}};
static const cqrs_process_step_t twice_steps[] = {{"reserve_the_seats", &ledger_credit}, {NULL, NULL}};
static const cqrs_process_type_t twice_type = {.name = "twice", .state_size = sizeof(counted_t),
                                               .state_fields = counted_fields, .routes = twice_routes,
                                               .steps = twice_steps, .on_step = twice_step};

/* The outcomes of a step's first and second occurrence are two inputs, and
 * the second occurrence is a command of its own: two credits, each once. */
static void test_a_long_step_name_sent_twice(void **state) {
  (void)state;
  fixture_t *f = fixture_new();
  f->d = start(f, f->store, &twice_type);
  run_command(f, f->d, ledger_open_new("seats", "o"));
  assert_int_equal(cqrs_dispatcher_send(f->d, ledger_open_new("t-1", "o"), done_ok, NULL), CQRS_OK);
  drive(f);
  assert_int_equal(atomic_load(&runs), 2);
  assert_int_equal(ledger_balance(f->store, "seats").amount, 2);
  stop(f, f->d);
  fixture_free(f);
}

/* ---- a deadline with a long name, armed again ---- */

static cqrs_code_t rearm_open(cqrs_process_t *p, void *state, const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)state, (void)data;
  return cqrs_process_schedule(p, "payment_timeout", e->timestamp + 1, err);
}

static cqrs_code_t rearm_fired(cqrs_process_t *p, void *state, const char *name, void *data, cqrs_error_t *err) {
  (void)data;
  atomic_fetch_add(&runs, 1);
  assert_string_equal(name, "payment_timeout");
  if (++((counted_t *)state)->n == 1) return cqrs_process_schedule(p, name, cqrs_process_now(p) + 1, err);
  cqrs_process_end(p);
  atomic_store(&ended, true);
  return CQRS_OK;
}

static const cqrs_process_route_t rearm_routes[] = {{&ledger_opened, true, NULL, rearm_open},
                                                    {NULL, false, NULL, NULL}};
static const cqrs_process_type_t rearm_type = {.name = "rearm", .state_size = sizeof(counted_t),
                                               .state_fields = counted_fields, .routes = rearm_routes,
                                               .on_deadline = rearm_fired};

/* A deadline set again under the same name is a second input (its time
 * differs): it fires once more, and then the instance settles. */
static void test_a_long_deadline_name_armed_again(void **state) {
  (void)state;
  fixture_t *f = fixture_new();
  f->d = start(f, f->store, &rearm_type);
  assert_int_equal(cqrs_dispatcher_send(f->d, ledger_open_new("l-1", "o"), done_ok, NULL), CQRS_OK);
  drive(f);
  assert_int_equal(atomic_load(&runs), 2);
  stop(f, f->d);
  fixture_free(f);
}

/* ---- long process and step names, and a restart after the step was sent ---- */

static cqrs_code_t long_open(cqrs_process_t *p, void *state, const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)state, (void)e, (void)data;
  return cqrs_process_send(p, "debit_the_source_acc", &(ledger_move_cmd_t){"src", 10}, err);
}

static cqrs_code_t long_step(cqrs_process_t *p, void *state, const cqrs_step_outcome_t *o, void *data,
                             cqrs_error_t *err) {
  (void)state, (void)data, (void)err;
  atomic_fetch_add(&runs, 1);
  assert_int_equal(o->status, CQRS_STEP_ACCEPTED);
  cqrs_process_end(p);
  atomic_store(&ended, true);
  return CQRS_OK;
}

static const cqrs_process_route_t long_routes[] = {{&ledger_opened, true, route_t, long_open},
                                                   {NULL, false, NULL, NULL}};
static const cqrs_process_step_t long_steps[] = {{"debit_the_source_acc", &ledger_debit}, {NULL, NULL}};
/* The longest names the limits allow (CQRS_PROCESS_NAME_MAX, CQRS_PROCESS_STEP_NAME_MAX). */
static const cqrs_process_type_t long_type = {.name = "transfer_with_a_long", .routes = long_routes,
                                              .steps = long_steps, .on_step = long_step};

static cqrs_command_t *open_t1(void) {
  cqrs_command_t *cmd = ledger_open_new("t-1", "o");
  assert_int_equal(cqrs_command_set_id(cmd, "open-t-1", NULL), CQRS_OK);
  return cmd;
}

typedef struct crash {
  fixture_t *f;
  cqrs_store_t *faulty;
  long budget;
} crash_t;

/* A run whose store stops answering after `budget` calls (-1: never),
 * driven until the store has stopped (the process is "killed": the close
 * cuts what retries short) or the run has ended on its own; returns the
 * calls it made. */
static long crash_run(fixture_t *f, long budget) {
  cqrs_store_t *faulty = ledger_faulty_store(f->store, budget);
  atomic_store(&ended, false);
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.retry_base_ms = 1;
  o.retry_cap_ms = 2;
  o.clock = f->clock;
  if (cqrs_dispatcher_new(&f->loop, f->reg, faulty, &o, &f->d, NULL) == CQRS_OK) {
    assert_int_equal(ledger_handlers(f->d, NULL, 0, NULL), CQRS_OK);
    f->process = long_type.name;
    if (cqrs_process_start(f->d, &long_type, NULL, f->cp, NULL) == CQRS_OK)
      cqrs_dispatcher_send(f->d, open_t1(), NULL, NULL);
    uint64_t until = cqrs_clock_monotonic_ms(f->clock) + PATIENCE_MS;
    uv_run(&f->loop, UV_RUN_DEFAULT);
    while (!(budget >= 0 && ledger_faulty_store_calls(faulty) > budget) && !settled(f) &&
           cqrs_clock_monotonic_ms(f->clock) < until)
      run_then_advance(f);
    stop(f, f->d);
  }
  long calls = ledger_faulty_store_calls(faulty);
  cqrs_store_destroy(faulty);
  return calls;
}

/* Stopped after each of its store calls in turn, then restarted: the step
 * that debits is sent under the same id every time, so the source is
 * debited once whatever the point of the crash. */
static void test_a_restart_after_a_long_named_step_was_sent(void **state) {
  (void)state;
  long clean = -1;
  for (long n = -1; clean < 0 || n <= clean; n++) {
    fixture_t *f = fixture_new();
    cqrs_dispatcher_t *d = start(f, f->store, NULL);
    run_command(f, d, ledger_open_new("src", "o"));
    run_command(f, d, ledger_credit_new("src", 100));
    stop(f, d);
    long calls = crash_run(f, n);
    if (n < 0) clean = calls;
    f->d = start(f, f->store, &long_type);
    assert_int_equal(cqrs_dispatcher_send(f->d, open_t1(), NULL, NULL), CQRS_OK);
    drive(f);
    balance_t b = ledger_balance(f->store, "src");
    if (b.debits != 1 || b.amount != 90)
      fail_msg("stopped after store call %ld of %ld: %d debits, balance %lld", n, clean, b.debits,
               (long long)b.amount);
    stop(f, f->d);
    fixture_free(f);
  }
  fprintf(stderr, "%s: a clean run makes %ld store calls, each the last once\n", factory->name, clean);
}

/* ---- the internal command, from outside ---- */

/* A document naming the command that carries inputs to instances is refused
 * like any unknown type: it never reaches the framework's handler. */
static void test_an_outside_process_input_is_refused(void **state) {
  (void)state;
  fixture_t *f = fixture_new();
  f->d = start(f, f->store, &pair_type);
  assert_null(cqrs_registry_command(f->reg, "cqrs.process.input"));
  bson_t *doc = BCON_NEW("type", BCON_UTF8("cqrs.process.input"), "id", BCON_UTF8("outside-1"), "data", "{",
                         "instance", BCON_UTF8("l-1"), "}");
  cqrs_command_t *cmd = NULL;
  cqrs_error_t err;
  cqrs_code_t rc = cqrs_command_from_bson(f->reg, doc, &cmd, &err);
  bson_destroy(doc);
  if (rc == CQRS_OK) {
    /* Decoded: then sending it must be refused, not crash. */
    rc = cqrs_dispatcher_send(f->d, cmd, NULL, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    fail_msg("an outside cqrs.process.input decoded (send: %s)", cqrs_code_name(rc));
  }
  assert_int_equal(rc, CQRS_EUNKNOWN_TYPE);
  /* Nor may an application declare a command under the framework's names. */
  static const cqrs_field_t fields[] = {CQRS_STRING(ledger_move_cmd_t, id, "instance", CQRS_F_REQUIRED),
                                        CQRS_FIELDS_END};
  static const cqrs_command_type_t fake = {.name = "cqrs.process.input", .payload_size = sizeof(ledger_move_cmd_t),
                                           .fields = fields};
  assert_int_equal(cqrs_registry_add_command(f->reg, &fake, &err), CQRS_EINVAL);
  stop(f, f->d);
  fixture_free(f);
}

static const cqrs_process_type_t *const types[] = {&pair_type, &twice_type, &rearm_type, &long_type, NULL};
static const cqrs_process_type_t *const *all_types(void) { return types; }

int process_ids_run(const cqrs_store_factory_t *f) {
  factory = f;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_two_events_to_one_instance_within_a_second),
      cmocka_unit_test(test_a_long_step_name_sent_twice),
      cmocka_unit_test(test_a_long_deadline_name_armed_again),
      cmocka_unit_test(test_a_restart_after_a_long_named_step_was_sent),
      cmocka_unit_test(test_an_outside_process_input_is_refused),
  };
  return _cmocka_run_group_tests(f->name, tests, sizeof tests / sizeof tests[0], NULL, NULL);
}
