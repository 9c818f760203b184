/* The MongoDB backends pass cqrs::conformance: the event store, the read
 * model, the checkpoints and the leases, each test on a database of its own. */
#include <cqrs/conformance.h>

#include "mongo_fixture.h"

/* The connection each object is a view on, dropped with it (one test at a time). */
static cqrs_mongo_t *current;

static cqrs_mongo_t *open_db(const cqrs_registry_t *reg) {
  current = test_mongo_open(reg, NULL, NULL);
  return current;
}

static void close_db(void) {
  test_mongo_close(current);
  current = NULL;
}

static cqrs_store_t *store(const cqrs_registry_t *reg, void *data) {
  (void)data;
  cqrs_store_t *s = NULL;
  cqrs_error_t err;
  if (cqrs_mongo_store_new(open_db(reg), &s, &err)) print_error("%s\n", err.message);
  return s;
}

static void store_dispose(cqrs_store_t *s, void *data) {
  (void)data;
  cqrs_store_destroy(s);
  close_db();
}

/* Read models, checkpoints and leases decode no events: an empty registry. */
static cqrs_readmodel_t *readmodel(void *reg) {
  cqrs_readmodel_t *rm = NULL;
  cqrs_error_t err;
  if (cqrs_mongo_readmodel_new(open_db(reg), &rm, &err)) print_error("%s\n", err.message);
  return rm;
}

static void readmodel_dispose(cqrs_readmodel_t *rm, void *data) {
  (void)data;
  cqrs_readmodel_destroy(rm);
  close_db();
}

static cqrs_checkpoint_store_t *checkpoints(void *reg) {
  cqrs_checkpoint_store_t *cp = NULL;
  cqrs_error_t err;
  if (cqrs_mongo_checkpoint_store_new(open_db(reg), &cp, &err)) print_error("%s\n", err.message);
  return cp;
}

static void checkpoints_dispose(cqrs_checkpoint_store_t *cp, void *data) {
  (void)data;
  cqrs_checkpoint_store_destroy(cp);
  close_db();
}

static cqrs_clock_t *lease_clock; /* manual: the suite moves it */

static cqrs_lease_store_t *leases(void *reg) {
  cqrs_lease_store_t *l = NULL;
  cqrs_error_t err;
  if (cqrs_mongo_lease_store_new_with_clock(open_db(reg), lease_clock, &l, &err)) print_error("%s\n", err.message);
  return l;
}

static void leases_dispose(cqrs_lease_store_t *l, void *data) {
  (void)data;
  cqrs_lease_store_destroy(l);
  close_db();
}

int main(void) {
  if (!test_mongo_uri()) return 0;
  cqrs_registry_t *reg;
  if (cqrs_registry_new(&reg, NULL)) return 1;
  int failures = cqrs_conformance_store(
      &(cqrs_store_factory_t){.name = "mongodb store conformance", .create = store, .dispose = store_dispose});
  failures += cqrs_conformance_readmodel(&(cqrs_readmodel_factory_t){
      .name = "mongodb read model conformance", .create = readmodel, .dispose = readmodel_dispose, .data = reg});
  failures += cqrs_conformance_checkpoints(&(cqrs_checkpoint_store_factory_t){
      .name = "mongodb checkpoints conformance", .create = checkpoints, .dispose = checkpoints_dispose, .data = reg});
  if (cqrs_clock_manual_new(cqrs_now_ms(), &lease_clock, NULL)) return 1;
  failures += cqrs_conformance_leases(&(cqrs_lease_store_factory_t){.name = "mongodb leases conformance",
                                                                    .create = leases,
                                                                    .dispose = leases_dispose,
                                                                    .data = reg,
                                                                    .clock = lease_clock});
  cqrs_clock_destroy(lease_clock);
  cqrs_registry_destroy(reg);
  return failures;
}
