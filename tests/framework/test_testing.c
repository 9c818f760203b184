#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include <cqrs/testing.h>

#include "ledger.h"

typedef struct fx {
  cqrs_registry_t *reg;
  cqrs_test_t *t;
} fx_t;

static int setup(void **state) {
  fx_t *fx = calloc(1, sizeof *fx);
  fx->reg = ledger_registry();
  cqrs_test_new(fx->reg, &ledger_type, "acc-1", ledger_setup, NULL, &fx->t, NULL);
  *state = fx;
  return fx->t ? 0 : -1;
}

static int teardown(void **state) {
  fx_t *fx = *state;
  assert_true(cqrs_test_destroy(fx->t));
  cqrs_registry_destroy(fx->reg);
  free(fx);
  return 0;
}

static void test_given_when_then_events(void **state) {
  fx_t *fx = *state;
  CQRS_GIVEN(fx->t, &ledger_opened, (ledger_opened_t){"ada"});
  CQRS_GIVEN(fx->t, &ledger_credited, (ledger_amount_t){50});
  CQRS_WHEN(fx->t, &ledger_debit, (ledger_move_cmd_t){"acc-1", 20});
  CQRS_THEN_EVENTS(fx->t, {&ledger_debited, &(ledger_amount_t){20}});
  cqrs_aggregate_t *agg = cqrs_test_load(fx->t);
  assert_int_equal(((ledger_state_t *)cqrs_aggregate_state(agg))->balance, 30);
  assert_int_equal(cqrs_aggregate_version(agg), 3);
  cqrs_aggregate_destroy(agg);
  assert_int_equal(cqrs_test_event_count(fx->t), 1);
  assert_int_equal(cqrs_test_event(fx->t, 0)->version, 3);
}

static void test_then_rejected(void **state) {
  fx_t *fx = *state;
  CQRS_GIVEN(fx->t, &ledger_opened, (ledger_opened_t){"ada"});
  CQRS_WHEN(fx->t, &ledger_debit, (ledger_move_cmd_t){"acc-1", 1});
  CQRS_THEN_REJECTED(fx->t, "ledger.insufficient");
}

static void test_then_error_for_invalid_command(void **state) {
  fx_t *fx = *state;
  CQRS_WHEN(fx->t, &ledger_credit, (ledger_move_cmd_t){"acc-1", -5});
  CQRS_THEN_ERROR(fx->t, CQRS_EINVALID_COMMAND);
  assert_non_null(strstr(cqrs_test_error(fx->t)->message, "amount"));
}

static void test_checks_explain_mismatches(void **state) {
  fx_t *fx = *state;
  char msg[512];
  CQRS_GIVEN(fx->t, &ledger_opened, (ledger_opened_t){"ada"});
  CQRS_WHEN(fx->t, &ledger_credit, (ledger_move_cmd_t){"acc-1", 7});
  const cqrs_expected_event_t wrong_amount[] = {{&ledger_credited, &(ledger_amount_t){8}}, {NULL, NULL}};
  assert_false(cqrs_test_check_events(fx->t, wrong_amount, msg, sizeof msg));
  assert_non_null(strstr(msg, "expected ledger.credited { \"amount\" : 8 }, got ledger.credited { \"amount\" : 7 }"));
  const cqrs_expected_event_t two[] = {{&ledger_credited, &(ledger_amount_t){7}}, {&ledger_credited, &(ledger_amount_t){7}},
                                       {NULL, NULL}};
  assert_false(cqrs_test_check_events(fx->t, two, msg, sizeof msg));
  assert_non_null(strstr(msg, "expected 2 event(s), got 1"));
  assert_false(cqrs_test_check_rejected(fx->t, "ledger.insufficient", msg, sizeof msg));
  assert_non_null(strstr(msg, "expected rejection 'ledger.insufficient', got ok"));
  assert_false(cqrs_test_check_error(fx->t, CQRS_ECONFLICT, msg, sizeof msg));
  CQRS_WHEN(fx->t, &ledger_debit, (ledger_move_cmd_t){"acc-1", 100});
  assert_false(cqrs_test_check_events(fx->t, wrong_amount, msg, sizeof msg));
  assert_non_null(strstr(msg, "the command failed: rejected (ledger.insufficient)"));
}

/* A subscriber that commits in the same run as the command under test. */
static cqrs_code_t credit_on_open(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)err;
  if (e->type == &ledger_opened) cqrs_dispatcher_send(data, ledger_credit_new(cqrs_event_aggregate_id(e), 7), NULL, NULL);
  return CQRS_OK;
}

static cqrs_code_t setup_with_follower(cqrs_dispatcher_t *d, void *data, cqrs_error_t *err) {
  (void)data;
  cqrs_code_t rc = ledger_handlers(d, NULL, 0, err);
  return rc ? rc : cqrs_dispatcher_subscribe(d, "follower", NULL, credit_on_open, d, 0, err);
}

/* Then counts only the command's own events. */
static void test_then_ignores_what_subscribers_commit(void **state) {
  (void)state;
  cqrs_registry_t *reg = ledger_registry();
  cqrs_test_t *t = NULL;
  cqrs_test_new(reg, &ledger_type, "acc-1", setup_with_follower, NULL, &t, NULL);
  assert_non_null(t);
  CQRS_WHEN(t, &ledger_open, (ledger_open_cmd_t){"acc-1", "ada"});
  CQRS_THEN_EVENTS(t, {&ledger_opened, &(ledger_opened_t){"ada"}});
  cqrs_aggregate_t *agg = cqrs_test_load(t);
  assert_int_equal(((ledger_state_t *)cqrs_aggregate_state(agg))->balance, 7); /* the follower did commit */
  cqrs_aggregate_destroy(agg);
  assert_true(cqrs_test_destroy(t));
  cqrs_registry_destroy(reg);
}

static void test_given_for_other_aggregates(void **state) {
  fx_t *fx = *state;
  assert_int_equal(cqrs_test_given_for(fx->t, &ledger_type, "acc-2", &ledger_opened, &(ledger_opened_t){"bob"}), CQRS_OK);
  CQRS_WHEN(fx->t, &ledger_credit, (ledger_move_cmd_t){"acc-2", 3});
  CQRS_THEN_EVENTS(fx->t, {&ledger_credited, &(ledger_amount_t){3}});
  cqrs_test_t *t = fx->t;
  cqrs_error_t err;
  assert_int_equal(cqrs_test_new(fx->reg, &ledger_type, "", NULL, NULL, &t, &err), CQRS_EINVAL);
  assert_null(t);
  assert_int_equal(cqrs_test_new(fx->reg, &ledger_type, "acc-1", NULL, NULL, NULL, NULL), CQRS_EINVAL);
  assert_true(cqrs_test_destroy(NULL));
}

/* Payloads from functions, not only compound literals. */
static ledger_opened_t opened_by(const char *owner) {
  ledger_opened_t e = {{0}};
  snprintf(e.owner, sizeof e.owner, "%s", owner);
  return e;
}
static ledger_move_cmd_t debit_of(int64_t amount) { return (ledger_move_cmd_t){"acc-1", amount}; }

static void test_payloads_from_functions(void **state) {
  fx_t *fx = *state;
  CQRS_GIVEN(fx->t, &ledger_opened, opened_by("ada"));
  CQRS_GIVEN(fx->t, &ledger_credited, (ledger_amount_t){50});
  CQRS_WHEN(fx->t, &ledger_debit, debit_of(20));
  CQRS_THEN_EVENTS(fx->t, {&ledger_debited, &(ledger_amount_t){20}});
}

/* A process decision that sends two steps, checked in one assertion. */
static cqrs_code_t split_start(cqrs_process_t *p, void *state, const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)state, (void)e, (void)data;
  cqrs_code_t rc = cqrs_process_send(p, "take", &(ledger_move_cmd_t){"a", 5}, err);
  return rc ? rc : cqrs_process_send(p, "give", &(ledger_move_cmd_t){"b", 5}, err);
}
static cqrs_code_t split_step(cqrs_process_t *p, void *state, const cqrs_step_outcome_t *o, void *data,
                              cqrs_error_t *err) {
  (void)p, (void)state, (void)o, (void)data, (void)err;
  return CQRS_OK;
}
static const cqrs_process_route_t split_routes[] = {{&ledger_opened, true, NULL, split_start},
                                                    {NULL, false, NULL, NULL}};
static const cqrs_process_step_t split_steps[] = {{"take", &ledger_debit}, {"give", &ledger_credit}, {NULL, NULL}};
static const cqrs_process_type_t split_type = {.name = "split", .routes = split_routes, .steps = split_steps,
                                               .on_step = split_step};

static void test_a_decision_of_several_steps(void **state) {
  (void)state;
  cqrs_process_test_t *t;
  assert_int_equal(cqrs_process_test_new(&split_type, "s-1", NULL, &t, NULL), CQRS_OK);
  CQRS_PROCESS_WHEN_EVENT(t, &ledger_opened, "s-1", opened_by("ada"));
  CQRS_PROCESS_THEN_SENDS_STEPS(t, {"take", &ledger_debit}, {"give", &ledger_credit});
  char msg[256];
  assert_false(cqrs_process_test_check_sent(t, (const cqrs_expected_step_t[]){{"take", &ledger_debit}, {NULL, NULL}},
                                            msg, sizeof msg));
  assert_non_null(strstr(msg, "2 step(s) sent, expected 1"));
  assert_false(cqrs_process_test_check_sent(
      t, (const cqrs_expected_step_t[]){{"give", &ledger_credit}, {"take", &ledger_debit}, {NULL, NULL}}, msg,
      sizeof msg));
  assert_non_null(strstr(msg, "step 0 sent: take"));
  cqrs_process_test_destroy(t);
}

/* The process helpers' clock. A hold: opened, it takes an amount (a step);
 * once taken it expires a second after the step's outcome came back (a
 * deadline); expired, it gives the amount back and ends. Its state keeps
 * what cqrs_process_now said in each handler. */
typedef struct hold {
  int64_t opened_at, taken_at, expired_at;
} hold_t;
static const cqrs_field_t hold_fields[] = {CQRS_INT64(hold_t, opened_at, "opened_at", 0),
                                           CQRS_INT64(hold_t, taken_at, "taken_at", 0),
                                           CQRS_INT64(hold_t, expired_at, "expired_at", 0), CQRS_FIELDS_END};
#define HOLD_MS 1000

static cqrs_code_t hold_opened(cqrs_process_t *p, void *state, const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)data;
  hold_t *h = state;
  assert_int_equal(cqrs_process_now(p), e->timestamp);
  h->opened_at = cqrs_process_now(p);
  return cqrs_process_send(p, "take", &(ledger_move_cmd_t){"a", 5}, err);
}
static cqrs_code_t hold_step(cqrs_process_t *p, void *state, const cqrs_step_outcome_t *o, void *data,
                             cqrs_error_t *err) {
  (void)data;
  if (strcmp(o->step, "take")) return CQRS_OK;
  hold_t *h = state;
  h->taken_at = cqrs_process_now(p);
  return cqrs_process_schedule(p, "expire", h->taken_at + HOLD_MS, err);
}
static cqrs_code_t hold_deadline(cqrs_process_t *p, void *state, const char *name, void *data, cqrs_error_t *err) {
  (void)data;
  assert_string_equal(name, "expire");
  hold_t *h = state;
  h->expired_at = cqrs_process_now(p);
  cqrs_process_end(p);
  return cqrs_process_send(p, "give", &(ledger_move_cmd_t){"a", 5}, err);
}
static const cqrs_process_route_t hold_routes[] = {{.type = &ledger_opened, .starts = true, .handle = hold_opened},
                                                   {.type = NULL}};
static const cqrs_process_step_t hold_steps[] = {
    {.name = "take", .command = &ledger_debit}, {.name = "give", .command = &ledger_credit}, {.name = NULL}};
static const cqrs_process_type_t hold_type = {.name = "hold", .state_size = sizeof(hold_t), .state_fields = hold_fields,
                                              .routes = hold_routes, .steps = hold_steps, .on_step = hold_step,
                                              .on_deadline = hold_deadline};

/* A deadline armed at now + N is at an exact time, and advancing the test's
 * clock to it fires it: what cqrs_process_now says in each handler is the
 * event's time, the time of the step's outcome, the deadline's time. */
static void test_the_process_helpers_clock(void **state) {
  (void)state;
  int64_t before = cqrs_now_ms();
  cqrs_process_test_t *t;
  assert_int_equal(cqrs_process_test_new(&hold_type, "h-1", NULL, &t, NULL), CQRS_OK);
  cqrs_clock_t *clock = cqrs_process_test_clock(t);
  assert_true(cqrs_clock_is_manual(clock));
  int64_t t0 = cqrs_clock_now_ms(clock);
  assert_true(t0 >= before && t0 <= cqrs_now_ms());
  CQRS_PROCESS_WHEN_EVENT(t, &ledger_opened, "h-1", opened_by("ada"));
  CQRS_PROCESS_THEN_SENDS(t, "take", &ledger_debit);
  assert_int_equal(((const hold_t *)cqrs_process_test_state(t))->opened_at, t0);

  CQRS_PROCESS_WHEN_ADVANCE(t, 250); /* nothing is due */
  CQRS_PROCESS_THEN_NOTHING(t);
  CQRS_PROCESS_WHEN_STEP(t, "take", CQRS_STEP_ACCEPTED, NULL);
  CQRS_PROCESS_THEN_DEADLINE(t, "expire", t0 + 250 + HOLD_MS);
  assert_int_equal(((const hold_t *)cqrs_process_test_state(t))->taken_at, t0 + 250);

  CQRS_PROCESS_WHEN_ADVANCE(t, HOLD_MS - 1);
  CQRS_PROCESS_THEN_NOTHING(t);
  CQRS_PROCESS_THEN_DEADLINE(t, "expire", t0 + 250 + HOLD_MS);
  CQRS_PROCESS_WHEN_ADVANCE(t, 1 + 500); /* past it: it fires at its own time */
  CQRS_PROCESS_THEN_SENDS(t, "give", &ledger_credit);
  CQRS_PROCESS_THEN_ENDED(t);
  CQRS_PROCESS_THEN_DEADLINE(t, "expire", 0);
  assert_int_equal(((const hold_t *)cqrs_process_test_state(t))->expired_at, t0 + 250 + HOLD_MS);
  assert_int_equal(cqrs_clock_now_ms(clock), t0 + 250 + HOLD_MS + 500);

  /* Another clock (here the real one, which cannot be advanced), then the
   * test's own again. */
  cqrs_error_t err;
  cqrs_process_test_set_clock(t, cqrs_clock_real());
  assert_ptr_equal(cqrs_process_test_clock(t), cqrs_clock_real());
  assert_int_equal(cqrs_process_test_advance(t, 1, &err), CQRS_EINVAL);
  cqrs_process_test_set_clock(t, NULL);
  assert_ptr_equal(cqrs_process_test_clock(t), clock);
  assert_int_equal(cqrs_process_test_advance(NULL, 1, &err), CQRS_EINVAL);
  assert_null(cqrs_process_test_clock(NULL));
  cqrs_process_test_destroy(t);
}

/* Several deadlines due in one advance fire the earliest first, and one a
 * handler sets again for the time it fired at does not fire again. */
typedef struct order {
  char fired[16];
} order_t;
static const cqrs_field_t order_fields[] = {CQRS_STRING(order_t, fired, "fired", 0), CQRS_FIELDS_END};

static cqrs_code_t order_opened(cqrs_process_t *p, void *state, const cqrs_event_t *e, void *data,
                                cqrs_error_t *err) {
  (void)state, (void)e, (void)data;
  cqrs_code_t rc = cqrs_process_schedule(p, "late", cqrs_process_now(p) + 100, err);
  return rc ? rc : cqrs_process_schedule(p, "early", cqrs_process_now(p) + 50, err);
}
static cqrs_code_t order_deadline(cqrs_process_t *p, void *state, const char *name, void *data, cqrs_error_t *err) {
  (void)data;
  order_t *o = state;
  size_t n = strlen(o->fired);
  if (n + 1 < sizeof o->fired) o->fired[n] = name[0];
  /* "early" again for the same time: set, but it does not fire again. */
  return strcmp(name, "early") ? CQRS_OK : cqrs_process_schedule(p, "early", cqrs_process_now(p), err);
}
static const cqrs_process_route_t order_routes[] = {{.type = &ledger_opened, .starts = true, .handle = order_opened},
                                                    {.type = NULL}};
static const cqrs_process_type_t order_type = {.name = "order", .state_size = sizeof(order_t),
                                               .state_fields = order_fields, .routes = order_routes,
                                               .on_deadline = order_deadline};

static void test_deadlines_fire_in_time_order(void **state) {
  (void)state;
  cqrs_process_test_t *t;
  assert_int_equal(cqrs_process_test_new(&order_type, "o-1", NULL, &t, NULL), CQRS_OK);
  int64_t t0 = cqrs_clock_now_ms(cqrs_process_test_clock(t));
  CQRS_PROCESS_WHEN_EVENT(t, &ledger_opened, "o-1", opened_by("ada"));
  CQRS_PROCESS_WHEN_ADVANCE(t, 1000);
  assert_string_equal(((const order_t *)cqrs_process_test_state(t))->fired, "el");
  CQRS_PROCESS_THEN_DEADLINE(t, "early", t0 + 50);
  CQRS_PROCESS_THEN_DEADLINE(t, "late", 0);
  /* Two inputs recorded in one advance: both kept, the first's with its
   * state and its deadline set again, the second's with its state. */
  assert_int_equal(cqrs_process_test_recorded(t), 5);
  cqrs_process_test_destroy(t);
}

/* The fixture's clock: it stamps the given and the when's events, moves
 * only when the test advances it, and a subscriber's back-off is waited for
 * by advancing it, not by sleeping. */
static int fail_twice_calls;
static cqrs_code_t fail_twice(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)e, (void)data;
  return fail_twice_calls++ < 2 ? cqrs_error_set(err, CQRS_EHANDLER, "not yet") : CQRS_OK;
}

static cqrs_code_t setup_with_flaky(cqrs_dispatcher_t *d, void *data, cqrs_error_t *err) {
  (void)data;
  cqrs_code_t rc = ledger_handlers(d, NULL, 0, err);
  return rc ? rc : cqrs_dispatcher_subscribe(d, "flaky", NULL, fail_twice, NULL, 0, err);
}

static void test_the_fixtures_clock(void **state) {
  (void)state;
  cqrs_registry_t *reg = ledger_registry();
  cqrs_test_t *t = NULL;
  int64_t before = cqrs_now_ms();
  cqrs_test_new(reg, &ledger_type, "acc-1", setup_with_flaky, NULL, &t, NULL);
  assert_non_null(t);
  cqrs_clock_t *clock = cqrs_test_clock(t);
  assert_true(cqrs_clock_is_manual(clock));
  int64_t t0 = cqrs_clock_now_ms(clock);
  assert_true(t0 >= before && t0 <= cqrs_now_ms());
  CQRS_GIVEN(t, &ledger_opened, (ledger_opened_t){"ada"});
  assert_int_equal(fail_twice_calls, 0); /* given events reach no subscriber */
  cqrs_test_advance(t, 60000);
  CQRS_WHEN(t, &ledger_credit, (ledger_move_cmd_t){"acc-1", 5});
  assert_int_equal(cqrs_test_event(t, 0)->timestamp, t0 + 60000);
  /* The subscriber hears of the given event too (the feed reads it from
   * the store at the when's commit): it failed twice on it, was retried
   * after 1 then 2 ms of the clock (the fixture's back-off), and handled it
   * and the credit: the when ran until then. */
  assert_int_equal(fail_twice_calls, 4);
  assert_int_equal(cqrs_clock_now_ms(clock), t0 + 60003);
  assert_int_equal(cqrs_dispatcher_dead_letter_count(cqrs_test_dispatcher(t)), 0);
  assert_null(cqrs_test_clock(NULL));
  cqrs_test_advance(NULL, 1);
  assert_true(cqrs_test_destroy(t));
  cqrs_registry_destroy(reg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_given_when_then_events, setup, teardown),
      cmocka_unit_test_setup_teardown(test_then_rejected, setup, teardown),
      cmocka_unit_test_setup_teardown(test_then_error_for_invalid_command, setup, teardown),
      cmocka_unit_test_setup_teardown(test_checks_explain_mismatches, setup, teardown),
      cmocka_unit_test_setup_teardown(test_given_for_other_aggregates, setup, teardown),
      cmocka_unit_test(test_then_ignores_what_subscribers_commit),
      cmocka_unit_test_setup_teardown(test_payloads_from_functions, setup, teardown),
      cmocka_unit_test(test_a_decision_of_several_steps),
      cmocka_unit_test(test_the_fixtures_clock),
      cmocka_unit_test(test_the_process_helpers_clock),
      cmocka_unit_test(test_deadlines_fire_in_time_order),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
