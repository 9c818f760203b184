#include "fixture.h"

static int setup(void **state) {
  *state = bfx_new(&billing_account, "acc-1");
  return 0;
}

#define T (((bfx_t *)*state)->t)

static void given_open(void **state, int64_t balance) {
  CQRS_GIVEN(T, &billing_account_opened, (billing_account_opened_t){"Ada", "EUR"});
  if (balance) CQRS_GIVEN(T, &billing_account_deposited, (billing_account_moved_t){EUR(balance), balance, ""});
}

static void test_open(void **state) {
  CQRS_WHEN(T, &billing_open_account, (billing_open_account_t){"acc-1", "Ada", "EUR"});
  CQRS_THEN_EVENTS(T, {&billing_account_opened, &(billing_account_opened_t){"Ada", "EUR"}});
}

static void test_open_twice_is_refused(void **state) {
  given_open(state, 0);
  CQRS_WHEN(T, &billing_open_account, (billing_open_account_t){"acc-1", "Ada", "EUR"});
  CQRS_THEN_REJECTED(T, "account.already_open");
}

static void test_open_needs_valid_fields(void **state) {
  CQRS_WHEN(T, &billing_open_account, (billing_open_account_t){"acc-1", "Ada", "eur"});
  CQRS_THEN_ERROR(T, CQRS_EINVALID_COMMAND);
  CQRS_WHEN(T, &billing_open_account, (billing_open_account_t){"acc-1", "", "EUR"});
  CQRS_THEN_ERROR(T, CQRS_EINVALID_COMMAND);
  CQRS_WHEN(T, &billing_open_account, (billing_open_account_t){"", "Ada", "EUR"});
  CQRS_THEN_ERROR(T, CQRS_EINVALID_COMMAND);
}

static void test_deposit_records_the_new_balance(void **state) {
  given_open(state, 1000);
  CQRS_WHEN(T, &billing_deposit, (billing_move_t){"acc-1", EUR(250), ""});
  CQRS_THEN_EVENTS(T, {&billing_account_deposited, &(billing_account_moved_t){EUR(250), 1250, ""}});
}

static void test_amounts_must_be_positive(void **state) {
  given_open(state, 1000);
  CQRS_WHEN(T, &billing_deposit, (billing_move_t){"acc-1", EUR(0), ""});
  CQRS_THEN_ERROR(T, CQRS_EINVALID_COMMAND);
  CQRS_WHEN(T, &billing_withdraw, (billing_move_t){"acc-1", EUR(-5), ""});
  CQRS_THEN_ERROR(T, CQRS_EINVALID_COMMAND);
}

static void test_withdraw(void **state) {
  given_open(state, 1000);
  CQRS_WHEN(T, &billing_withdraw, (billing_move_t){"acc-1", EUR(1000), "t-9"});
  CQRS_THEN_EVENTS(T, {&billing_account_withdrawn, &(billing_account_moved_t){EUR(1000), 0, "t-9"}});
}

static void test_withdraw_more_than_the_balance(void **state) {
  given_open(state, 1000);
  CQRS_WHEN(T, &billing_withdraw, (billing_move_t){"acc-1", EUR(1001), ""});
  CQRS_THEN_REJECTED(T, "account.not_enough_money");
  assert_non_null(strstr(cqrs_test_error(T)->message, "10.00 EUR, 10.01 EUR asked"));
}

static void test_other_currency(void **state) {
  given_open(state, 1000);
  CQRS_WHEN(T, &billing_deposit, (billing_move_t){"acc-1", USD(5), ""});
  CQRS_THEN_REJECTED(T, "account.currency_mismatch");
  CQRS_WHEN(T, &billing_withdraw, (billing_move_t){"acc-1", USD(5), ""});
  CQRS_THEN_REJECTED(T, "account.currency_mismatch");
}

static void test_unknown_account(void **state) {
  CQRS_WHEN(T, &billing_deposit, (billing_move_t){"acc-1", EUR(5), ""});
  CQRS_THEN_REJECTED(T, "account.not_open");
  CQRS_WHEN(T, &billing_close_account, (billing_close_account_t){"acc-1"});
  CQRS_THEN_REJECTED(T, "account.not_open");
}

static void test_close(void **state) {
  given_open(state, 0);
  CQRS_WHEN(T, &billing_close_account, (billing_close_account_t){"acc-1"});
  assert_int_equal(cqrs_test_error(T)->code, CQRS_OK);
  assert_int_equal(cqrs_test_event_count(T), 1);
  assert_ptr_equal(cqrs_test_event(T, 0)->type, &billing_account_closed);
  /* Closed at the time of the dispatcher's clock, the fixture's. */
  int64_t now = cqrs_clock_now_ms(cqrs_test_clock(T));
  CQRS_THEN_EVENTS(T, {&billing_account_closed, &(billing_account_closed_t){now}});
  assert_int_equal(cqrs_test_event(T, 0)->timestamp, now);
}

static void test_close_with_money_inside_is_refused(void **state) {
  given_open(state, 1);
  CQRS_WHEN(T, &billing_close_account, (billing_close_account_t){"acc-1"});
  CQRS_THEN_REJECTED(T, "account.not_empty");
}

static void test_closed_account_refuses_operations(void **state) {
  given_open(state, 0);
  CQRS_GIVEN(T, &billing_account_closed, (billing_account_closed_t){1});
  CQRS_WHEN(T, &billing_deposit, (billing_move_t){"acc-1", EUR(5), ""});
  CQRS_THEN_REJECTED(T, "account.closed");
  CQRS_WHEN(T, &billing_withdraw, (billing_move_t){"acc-1", EUR(5), ""});
  CQRS_THEN_REJECTED(T, "account.closed");
  CQRS_WHEN(T, &billing_close_account, (billing_close_account_t){"acc-1"});
  CQRS_THEN_REJECTED(T, "account.closed");
}

static void test_refund_reaches_a_closed_account(void **state) {
  given_open(state, 0);
  CQRS_GIVEN(T, &billing_account_closed, (billing_account_closed_t){1});
  CQRS_WHEN(T, &billing_refund, (billing_move_t){"acc-1", EUR(500), "t-1"});
  CQRS_THEN_EVENTS(T, {&billing_account_refunded, &(billing_account_moved_t){EUR(500), 500, "t-1"}});
  CQRS_WHEN(T, &billing_refund, (billing_move_t){"acc-1", USD(500), "t-1"});
  CQRS_THEN_REJECTED(T, "account.currency_mismatch");
}

static void test_state_after_events(void **state) {
  given_open(state, 700);
  CQRS_GIVEN(T, &billing_account_withdrawn, (billing_account_moved_t){EUR(200), 500, ""});
  cqrs_aggregate_t *agg = cqrs_test_load(T);
  const billing_account_state_t *s = cqrs_aggregate_state_const(agg);
  assert_true(s->opened);
  assert_false(s->closed);
  assert_int_equal(s->balance, 500);
  assert_string_equal(s->currency, "EUR");
  assert_string_equal(s->owner, "Ada");
  cqrs_aggregate_destroy(agg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_open, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_open_twice_is_refused, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_open_needs_valid_fields, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_deposit_records_the_new_balance, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_amounts_must_be_positive, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_withdraw, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_withdraw_more_than_the_balance, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_other_currency, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_unknown_account, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_close, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_close_with_money_inside_is_refused, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_closed_account_refuses_operations, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_refund_reaches_a_closed_account, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_state_after_events, setup, bfx_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
