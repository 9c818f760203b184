/* Shared by the billing tests. */
#ifndef TEST_BILLING_FIXTURE_H
#define TEST_BILLING_FIXTURE_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include <billing/billing.h>
#include <cqrs/testing.h>

#define EUR(cents) ((cqrs_money_t){(cents), "EUR"})
#define USD(cents) ((cqrs_money_t){(cents), "USD"})

typedef struct bfx {
  cqrs_registry_t *reg;
  cqrs_test_t *t;
} bfx_t;

static inline cqrs_code_t bfx_setup_handlers(cqrs_dispatcher_t *d, void *data, cqrs_error_t *err) {
  (void)data;
  return billing_register_handlers(d, err);
}

/* A given/when/then fixture for aggregate `id` of `type`. */
static inline bfx_t *bfx_new(const cqrs_aggregate_type_t *type, const char *id) {
  bfx_t *fx = calloc(1, sizeof *fx);
  cqrs_registry_new(&fx->reg, NULL);
  assert_int_equal(billing_register(fx->reg, NULL), CQRS_OK);
  cqrs_test_new(fx->reg, type, id, bfx_setup_handlers, NULL, &fx->t, NULL);
  assert_non_null(fx->t);
  return fx;
}

static inline int bfx_teardown(void **state) {
  bfx_t *fx = *state;
  assert_true(cqrs_test_destroy(fx->t));
  cqrs_registry_destroy(fx->reg);
  free(fx);
  return 0;
}

#endif
