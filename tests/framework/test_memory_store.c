#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ledger.h"
#include "store_conformance.h"

static cqrs_store_t *create(const cqrs_registry_t *reg, void *data) {
  (void)reg;
  (void)data;
  cqrs_store_t *s = NULL;
  cqrs_memory_store_new(&s, NULL);
  return s;
}

static void dispose(cqrs_store_t *s, void *data) {
  (void)data;
  cqrs_store_destroy(s);
}

static void test_overhead_per_event_is_bounded(void **state) {
  (void)state;
  cqrs_store_t *s = NULL;
  cqrs_memory_store_new(&s, NULL);
  size_t empty = cqrs_memory_store_overhead(s);
  ledger_fill(s, &ledger_type, "big", 20000);
  size_t per_event = (cqrs_memory_store_overhead(s) - empty) / 20000;
  assert_true(per_event > 0);
  assert_true(per_event <= 256);
  cqrs_store_destroy(s);
  assert_int_equal(cqrs_memory_store_overhead(NULL), 0);
}

int main(void) {
  conformance_factory_t f = {"memory store conformance", create, dispose, NULL};
  int failures = conformance_run(&f);
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_overhead_per_event_is_bounded)};
  return failures + cmocka_run_group_tests(tests, NULL, NULL);
}
