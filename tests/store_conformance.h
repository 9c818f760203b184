/* The conformance suite every event store must pass (memory, MongoDB). */
#ifndef TEST_STORE_CONFORMANCE_H
#define TEST_STORE_CONFORMANCE_H

#include <cqrs/backend.h>

typedef struct conformance_factory {
  const char *name;
  /* A fresh, empty store that knows the ledger types of `reg`. */
  cqrs_store_t *(*create)(const cqrs_registry_t *reg, void *data);
  void (*dispose)(cqrs_store_t *store, void *data);
  void *data;
} conformance_factory_t;

/* Runs the suite as one cmocka group; returns the number of failures. */
int conformance_run(const conformance_factory_t *f);

#endif
