#include "fixture.h"

static int setup(void **state) {
  *state = bfx_new(&billing_customer, "c-1");
  return 0;
}

#define T (((bfx_t *)*state)->t)

static void test_register(void **state) {
  CQRS_WHEN(T, &billing_register_customer, (billing_register_customer_t){"c-1", "Acme Corp", "billing@acme.com"});
  CQRS_THEN_EVENTS(T, {&billing_customer_registered, &(billing_customer_registered_t){"Acme Corp", "billing@acme.com"}});
}

static void test_register_twice_is_refused(void **state) {
  CQRS_GIVEN(T, &billing_customer_registered, (billing_customer_registered_t){"Acme Corp", "billing@acme.com"});
  CQRS_WHEN(T, &billing_register_customer, (billing_register_customer_t){"c-1", "Acme Corp", "billing@acme.com"});
  CQRS_THEN_REJECTED(T, "customer.already_registered");
}

static void test_register_validates_name_and_email(void **state) {
  const char *bad[] = {"", "plain", "@acme.com", "a@", "a@acme", "a@.com", "a@acme.", "a b@acme.com", "a@@acme.com",
                       "a@acme.com\t"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    billing_register_customer_t c = {"c-1", "Acme", ""};
    strcpy(c.email, bad[i]);
    assert_int_equal(cqrs_test_when(T, &billing_register_customer, &c), CQRS_OK);
    if (cqrs_test_error(T)->code != CQRS_EINVALID_COMMAND) fail_msg("email '%s' was accepted", bad[i]);
  }
  CQRS_WHEN(T, &billing_register_customer, (billing_register_customer_t){"c-1", "", "a@acme.com"});
  CQRS_THEN_ERROR(T, CQRS_EINVALID_COMMAND);
  CQRS_WHEN(T, &billing_register_customer, (billing_register_customer_t){"c-1", "Acme\n", "a@acme.com"});
  CQRS_THEN_ERROR(T, CQRS_EINVALID_COMMAND);
  assert_true(billing_email_valid("first.last+tag@sub.example.org"));
  char longest[BILLING_EMAIL_MAX + 10];
  memset(longest, 'a', sizeof longest);
  memcpy(longest + 250, "@x.io", 6);
  assert_false(billing_email_valid(longest)); /* 255 bytes: one too many */
  assert_false(billing_email_valid(NULL));
}

static void test_change_email(void **state) {
  CQRS_GIVEN(T, &billing_customer_registered, (billing_customer_registered_t){"Acme Corp", "billing@acme.com"});
  CQRS_WHEN(T, &billing_change_email, (billing_change_email_t){"c-1", "accounts@acme.com"});
  CQRS_THEN_EVENTS(T, {&billing_customer_email_changed,
                       &(billing_email_changed_t){"accounts@acme.com", "billing@acme.com"}});
  cqrs_aggregate_t *agg = cqrs_test_load(T);
  assert_string_equal(((const billing_customer_state_t *)cqrs_aggregate_state_const(agg))->email, "accounts@acme.com");
  cqrs_aggregate_destroy(agg);
}

static void test_change_email_rules(void **state) {
  CQRS_WHEN(T, &billing_change_email, (billing_change_email_t){"c-1", "a@acme.com"});
  CQRS_THEN_REJECTED(T, "customer.unknown");
  CQRS_GIVEN(T, &billing_customer_registered, (billing_customer_registered_t){"Acme Corp", "billing@acme.com"});
  CQRS_WHEN(T, &billing_change_email, (billing_change_email_t){"c-1", "billing@acme.com"});
  CQRS_THEN_REJECTED(T, "customer.email_unchanged");
  CQRS_WHEN(T, &billing_change_email, (billing_change_email_t){"c-1", "nope"});
  CQRS_THEN_ERROR(T, CQRS_EINVALID_COMMAND);
}

static void test_forget(void **state) {
  CQRS_GIVEN(T, &billing_customer_registered, (billing_customer_registered_t){"Acme Corp", "billing@acme.com"});
  CQRS_WHEN(T, &billing_forget_customer, (billing_forget_customer_t){"c-1"});
  CQRS_THEN_EVENTS(T, {&cqrs_forgotten_event_type, &(cqrs_forgotten_t){"c-1"}});
  cqrs_aggregate_t *agg = cqrs_test_load(T);
  const billing_customer_state_t *s = cqrs_aggregate_state_const(agg);
  assert_true(s->registered);
  assert_true(s->forgotten);
  assert_string_equal(s->name, CQRS_FORGOTTEN);
  assert_string_equal(s->email, CQRS_FORGOTTEN);
  cqrs_aggregate_destroy(agg);
}

static void test_forget_rules(void **state) {
  CQRS_WHEN(T, &billing_forget_customer, (billing_forget_customer_t){"c-1"});
  CQRS_THEN_REJECTED(T, "customer.unknown");
  CQRS_GIVEN(T, &billing_customer_registered, (billing_customer_registered_t){"Acme Corp", "billing@acme.com"});
  CQRS_GIVEN(T, &cqrs_forgotten_event_type, (cqrs_forgotten_t){"c-1"});
  /* Forgotten: forgetting again records nothing; no new address; no new
   * registration under the same id. */
  CQRS_WHEN(T, &billing_forget_customer, (billing_forget_customer_t){"c-1"});
  CQRS_THEN_NO_EVENTS(T);
  CQRS_WHEN(T, &billing_change_email, (billing_change_email_t){"c-1", "new@acme.com"});
  CQRS_THEN_REJECTED(T, "customer.forgotten");
  CQRS_WHEN(T, &billing_register_customer, (billing_register_customer_t){"c-1", "Acme Corp", "billing@acme.com"});
  CQRS_THEN_REJECTED(T, "customer.already_registered");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_register, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_register_twice_is_refused, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_register_validates_name_and_email, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_change_email, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_change_email_rules, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_forget, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_forget_rules, setup, bfx_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
