/* libcqrs-conformance internals: what the suites share. Written against the
 * public headers only, as a backend author's own tests would be. */
#ifndef CQRS_CONFORMANCE_PRIVATE_H
#define CQRS_CONFORMANCE_PRIVATE_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cqrs/conformance.h"

/* How many threads race in the tests that call a backend from several. */
#define CONF_THREADS 4

/* Runs fn(args + i * size) on `n` threads (at most CONF_THREADS), let go
 * together once all have started, and joins them; fails the test when one
 * cannot start. */
void cqrs__conf_race(void (*fn)(void *arg), void *args, size_t size, int n);

/* The suites over one object per test (read models, checkpoints, leases):
 * `make` calls the factory's create, `unmake` its dispose or the object's
 * _destroy. cqrs__conf_run runs `tests` as the group `name`, whose setup
 * and teardown are cqrs__conf_setup and cqrs__conf_teardown: the test gets
 * the object as its state. */
typedef struct conf_suite {
  const char *name, *what;
  void *(*make)(void);
  void (*unmake)(void *obj);
} conf_suite_t;
int cqrs__conf_setup(void **state);
int cqrs__conf_teardown(void **state);
int cqrs__conf_run(const conf_suite_t *suite, const struct CMUnitTest *tests, size_t n);
#define CONF_TEST(t) cmocka_unit_test_setup_teardown(t, cqrs__conf_setup, cqrs__conf_teardown)

/* The store suite's event type (common.c), "conformance.credited". */
typedef struct amount {
  int64_t amount;
} amount_t;
extern const cqrs_event_type_t cqrs__conf_credited;
/* The store suite's fixture (store.c): a store of the factory's, over a
 * registry that knows cqrs__conf_credited; its streams are of type
 * "conformance". */
typedef struct conf_store_fx {
  const cqrs_store_factory_t *f;
  cqrs_registry_t *reg;
  cqrs_store_t *store;
} conf_store_fx_t;
/* store_many.c: cqrs_store_append_many, alone and racing. */
void cqrs__conf_append_many(void **state);
void cqrs__conf_append_many_racing(void **state);

/* A BSON document from relaxed JSON; fails the test on bad JSON. Free with
 * bson_destroy. */
bson_t *cqrs__conf_json(const char *json);

#endif
