/* The in-memory backends pass cqrs::conformance: the event store, the read
 * model, the checkpoints and the leases. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cqrs/conformance.h>

static cqrs_store_t *store(const cqrs_registry_t *reg, void *data) {
  (void)reg, (void)data;
  cqrs_store_t *s = NULL;
  cqrs_error_t err;
  if (cqrs_memory_store_new(&s, &err)) print_error("memory store: %s\n", err.message);
  return s;
}

static cqrs_readmodel_t *readmodel(void *data) {
  (void)data;
  cqrs_readmodel_t *rm = NULL;
  cqrs_error_t err;
  if (cqrs_memory_readmodel_new(&rm, &err)) print_error("memory read model: %s\n", err.message);
  return rm;
}

static cqrs_checkpoints_t *checkpoints(void *data) {
  (void)data;
  cqrs_checkpoints_t *cp = NULL;
  cqrs_error_t err;
  if (cqrs_memory_checkpoints_new(&cp, &err)) print_error("memory checkpoints: %s\n", err.message);
  return cp;
}

static cqrs_leases_t *leases(void *clock) {
  cqrs_leases_t *l = NULL;
  cqrs_error_t err;
  if (cqrs_memory_leases_new_with_clock(clock, &l, &err)) print_error("memory leases: %s\n", err.message);
  return l;
}

int main(void) {
  int failures = cqrs_conformance_store(&(cqrs_store_factory_t){.name = "memory store conformance", .create = store});
  failures += cqrs_conformance_readmodel(
      &(cqrs_readmodel_factory_t){.name = "memory read model conformance", .create = readmodel});
  failures += cqrs_conformance_checkpoints(
      &(cqrs_checkpoints_factory_t){.name = "memory checkpoints conformance", .create = checkpoints});
  /* The leases' terms on a manual clock that the suite moves. */
  cqrs_clock_t *clock;
  if (cqrs_clock_manual_new(cqrs_now_ms(), &clock, NULL)) return 1;
  failures += cqrs_conformance_leases(
      &(cqrs_leases_factory_t){.name = "memory leases conformance", .create = leases, .data = clock, .clock = clock});
  cqrs_clock_destroy(clock);
  return failures;
}
