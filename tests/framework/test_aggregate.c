#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include <cqrs/backend.h>

#include "ledger.h"

static void test_raise_applies_and_queues(void **state) {
  (void)state;
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_aggregate_new(&ledger_type, "acc-1", &agg, NULL), CQRS_OK);
  assert_int_equal(cqrs_aggregate_version(agg), 0);
  ledger_opened_t o = {"ada"};
  ledger_amount_t a = {30};
  assert_int_equal(cqrs_aggregate_raise(agg, &ledger_opened, &o, NULL), CQRS_OK);
  assert_int_equal(cqrs_aggregate_raise(agg, &ledger_credited, &a, NULL), CQRS_OK);
  const ledger_state_t *s = cqrs_aggregate_state_const(agg);
  assert_true(s->opened);
  assert_string_equal(s->owner, "ada");
  assert_int_equal(s->balance, 30);
  assert_int_equal(cqrs_aggregate_pending_count(agg), 2);
  assert_int_equal(cqrs_aggregate_pending(agg, 0)->version, 1);
  assert_int_equal(cqrs_aggregate_pending(agg, 1)->version, 2);
  assert_ptr_equal(cqrs_aggregate_pending(agg, 1)->type, &ledger_credited);
  assert_null(cqrs_aggregate_pending(agg, 2));
  assert_string_equal(cqrs_event_aggregate_id(cqrs_aggregate_pending(agg, 0)), "acc-1");
  assert_int_equal(cqrs_aggregate_version(agg), 0); /* nothing committed yet */
  cqrs_aggregate_destroy(agg);
}

static void test_raise_refuses_invalid_payloads(void **state) {
  (void)state;
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_aggregate_new(&ledger_type, "acc-1", &agg, NULL), CQRS_OK);
  ledger_amount_t zero = {0};
  cqrs_error_t err;
  assert_int_equal(cqrs_aggregate_raise(agg, &ledger_credited, &zero, &err), CQRS_EINVAL);
  assert_non_null(strstr(err.message, "ledger.credited"));
  assert_int_equal(cqrs_aggregate_raise(agg, NULL, &zero, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_aggregate_raise(NULL, &ledger_credited, &zero, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_aggregate_pending_count(agg), 0);
  cqrs_aggregate_destroy(agg);
}

static void test_new_refuses_bad_ids(void **state) {
  (void)state;
  cqrs_aggregate_t *agg = (cqrs_aggregate_t *)1;
  char big[CQRS_ID_MAX + 1];
  memset(big, 'a', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  assert_int_equal(cqrs_aggregate_new(&ledger_type, big, &agg, NULL), CQRS_ETOO_LARGE);
  assert_null(agg);
  assert_int_equal(cqrs_aggregate_new(&ledger_type, "", &agg, NULL), CQRS_EINVAL);
  assert_int_equal(cqrs_aggregate_new(NULL, "a", &agg, NULL), CQRS_EINVAL);
  cqrs_aggregate_destroy(NULL);
}

static void test_apply_checks_the_version(void **state) {
  (void)state;
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_aggregate_new(&ledger_type, "acc-1", &agg, NULL), CQRS_OK);
  cqrs_envelope_t *env;
  assert_int_equal(cqrs_envelope_new("ledger", "acc-1", "c", NULL, &env, NULL), CQRS_OK);
  ledger_amount_t a = {5};
  cqrs_event_t *e1, *e3;
  assert_int_equal(cqrs_event_new(&ledger_credited, env, NULL, 1, 0, &a, &e1, NULL), CQRS_OK);
  assert_int_equal(cqrs_event_new(&ledger_credited, env, NULL, 3, 0, &a, &e3, NULL), CQRS_OK);
  cqrs_error_t err;
  assert_int_equal(cqrs_aggregate_apply(agg, e1, &err), CQRS_OK);
  assert_int_equal(cqrs_aggregate_apply(agg, e3, &err), CQRS_ESTATE);
  assert_int_equal(cqrs_aggregate_version(agg), 1);
  assert_int_equal(((ledger_state_t *)cqrs_aggregate_state(agg))->balance, 5);
  cqrs_event_unref(e1);
  cqrs_event_unref(e3);
  cqrs_envelope_unref(env);
  cqrs_aggregate_destroy(agg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_raise_applies_and_queues),
      cmocka_unit_test(test_raise_refuses_invalid_payloads),
      cmocka_unit_test(test_new_refuses_bad_ids),
      cmocka_unit_test(test_apply_checks_the_version),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
