/* Shared by the MongoDB tests of the billing context: the whole context on
 * a real server, as an application process wires it. */
#ifndef TEST_MONGO_BILLING_APP_H
#define TEST_MONGO_BILLING_APP_H

#include <signal.h>
#include <uv.h>

#include <billing/billing.h>

#include "billing_mongo.h"
#include "mongo_fixture.h"

typedef struct app {
  uv_loop_t loop;
  cqrs_registry_t *reg;
  cqrs_mongo_t *m;
  cqrs_store_t *store;
  cqrs_keys_t *keys;
  cqrs_readmodel_t *rm;
  cqrs_checkpoint_store_t *cp;
  cqrs_lease_store_t *leases; /* NULL: every projection runs here */
  cqrs_dispatcher_t *d;
  billing_t *billing;
  cqrs_query_bus_t *q;
} app_t;

/* Opens database `db` of `uri` with the seed's collections and indexes.
 * `sst`: the server selection timeout (0: the driver's). `fresh_checkpoints`:
 * in memory, forgetting how far everything got. */
#define APP_LEASE_TTL_MS 3000
#define APP_LEASE_GUARD_MS 1000

/* `lease_owner` not NULL: the dispatcher runs the projections and process
 * managers under leases in the database, as owner `lease_owner`, whose
 * terms run on `lease_clock` (NULL: the real clock; borrowed; a manual one
 * makes the lease store's calls run on the loop thread, see
 * test_mongo_leases_on_loop). */
static inline void app_open_leased(app_t *a, const char *uri, const char *db, int32_t sst, bool fresh_checkpoints,
                                   const char *lease_owner, cqrs_clock_t *lease_clock) {
  memset(a, 0, sizeof *a);
  uv_loop_init(&a->loop);
  cqrs_registry_new(&a->reg, NULL);
  assert_int_equal(billing_register(a->reg, NULL), CQRS_OK);
  cqrs_mongo_options_t o = billing_mongo_options;
  o.database = db;
  o.server_selection_timeout_ms = sst;
  cqrs_error_t err;
  cqrs_mongo_quiet_logs();
  if (cqrs_mongo_new(uri, &o, a->reg, &a->loop, &a->m, &err)) fail_msg("%s", err.message);
  if (billing_mongo_indexes(a->m, &err)) fail_msg("%s", err.message);
  if (cqrs_mongo_store_new(a->m, &a->store, &err) || cqrs_mongo_readmodel_new(a->m, &a->rm, &err) ||
      billing_mongo_keys(a->m, &a->keys, &err) || cqrs_store_set_keys(a->store, a->keys, a->reg, &err) ||
      (fresh_checkpoints ? cqrs_memory_checkpoint_store_new(&a->cp, &err)
                         : cqrs_mongo_checkpoint_store_new(a->m, &a->cp, &err)))
    fail_msg("%s", err.message);
  cqrs_dispatcher_options_t opts;
  cqrs_dispatcher_options_init(&opts);
  opts.retry_base_ms = 20;
  opts.retry_cap_ms = 200;
  if (cqrs_dispatcher_new(&a->loop, a->reg, a->store, &opts, &a->d, &err)) fail_msg("%s", err.message);
  if (lease_owner) {
    cqrs_lease_options_t lo;
    cqrs_lease_options_init(&lo);
    lo.owner = lease_owner;
    lo.ttl_ms = APP_LEASE_TTL_MS;
    lo.guard_ms = APP_LEASE_GUARD_MS;
    lo.clock = lease_clock;
    if ((lease_clock ? test_mongo_leases_on_loop(a->m, lease_clock, &a->leases, &err)
                     : cqrs_mongo_lease_store_new(a->m, &a->leases, &err)) ||
        (lo.leases = a->leases, cqrs_dispatcher_set_leases(a->d, &lo, &err)))
      fail_msg("%s", err.message);
  }
  if (billing_start(a->d, a->rm, a->cp, NULL, &a->billing, &err)) fail_msg("%s", err.message);
  if (cqrs_query_bus_new(a->rm, &a->q, &err)) fail_msg("%s", err.message);
  assert_int_equal(billing_register_queries(a->q, NULL, NULL), CQRS_OK);
}

static inline void app_open_with(app_t *a, const char *uri, const char *db, int32_t sst, bool fresh_checkpoints) {
  app_open_leased(a, uri, db, sst, fresh_checkpoints, NULL, NULL);
}

/* Closes everything; `drop` the database too. */
static inline void app_close(app_t *a, bool drop) {
  cqrs_dispatcher_close(a->d, NULL, NULL);
  uv_run(&a->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&a->loop), 0);
  cqrs_query_bus_destroy(a->q);
  billing_destroy(a->billing);
  cqrs_lease_store_destroy(a->leases);
  cqrs_checkpoint_store_destroy(a->cp);
  cqrs_readmodel_destroy(a->rm);
  cqrs_store_destroy(a->store);
  cqrs_keys_destroy(a->keys);
  if (drop) cqrs_mongo_drop_database(a->m, NULL);
  cqrs_mongo_destroy(a->m);
  cqrs_registry_destroy(a->reg);
}

typedef struct app_result {
  cqrs_error_t error;
  bool done;
  bool die; /* kill the process the moment the command completes */
} app_result_t;

static inline void app_on_done(const cqrs_result_t *r, void *data) {
  app_result_t *res = data;
  if (res->die) kill(getpid(), SIGKILL); /* after the commit, before any projection */
  res->error = r->error;
  res->done = true;
}

/* Sends one command and runs the loop until it and all it set off are done. */
static inline cqrs_code_t app_run(app_t *a, const cqrs_command_type_t *type, const void *payload, bool die) {
  cqrs_command_t *cmd;
  app_result_t res = {.die = die};
  if (cqrs_command_new(type, payload, &cmd, &res.error)) return res.error.code;
  assert_int_equal(cqrs_dispatcher_send(a->d, cmd, app_on_done, &res), CQRS_OK);
  uv_run(&a->loop, UV_RUN_DEFAULT);
  assert_true(res.done);
  return res.error.code;
}

static inline void app_waited(cqrs_code_t status, void *data) { *(cqrs_code_t *)data = status; }

/* Runs the loop until every projection has handled the whole store (a
 * minute at most: past that, a stall fails the test). */
static inline void app_catch_up(app_t *a) {
  int64_t head = 0;
  assert_int_equal(cqrs_store_head(a->store, &head, NULL), CQRS_OK);
  cqrs_code_t status = CQRS_ECLOSED;
  assert_int_equal(cqrs_projection_wait(a->d, NULL, head, 60000, app_waited, &status), CQRS_OK);
  uv_run(&a->loop, UV_RUN_DEFAULT);
  assert_int_equal(status, CQRS_OK);
}

#endif
