/* The billing application in the test's own process, on the test's
 * database: with its projections (project), or as a writer only, whose
 * commits are another process's as far as a running sample is concerned. */
#ifndef TEST_ADMIN_APP_H
#define TEST_ADMIN_APP_H

#include "admin_fixture.h"

typedef struct app {
  uv_loop_t loop;
  cqrs_registry_t *reg;
  cqrs_mongo_t *m;
  cqrs_store_t *store;
  cqrs_readmodel_t *rm;
  cqrs_checkpoints_t *cp;
  cqrs_dispatcher_t *d;
  billing_t *billing;
} app_t;

static inline void app_open(app_t *a, adm_t *t, bool project) {
  memset(a, 0, sizeof *a);
  uv_loop_init(&a->loop);
  cqrs_registry_new(&a->reg, NULL);
  assert_int_equal(billing_register(a->reg, NULL), CQRS_OK);
  cqrs_mongo_options_t o = {.database = t->db, .events = "billing_commands", .snapshots = "billing_snapshots",
                            .checkpoints = "billing_checkpoints", .dead_letters = "billing_dead_letters"};
  cqrs_error_t e;
  if (cqrs_mongo_new(t->uri, &o, a->reg, &a->loop, &a->m, &e)) fail_msg("%s", e.message);
  cqrs_mongo_store_new(a->m, &a->store, NULL);
  if (project) {
    cqrs_mongo_readmodel_new(a->m, &a->rm, NULL);
    cqrs_mongo_checkpoints_new(a->m, &a->cp, NULL);
  }
  cqrs_dispatcher_options_t opts;
  cqrs_dispatcher_options_init(&opts);
  opts.retry_base_ms = 50;
  opts.retry_cap_ms = 400;
  opts.dead_letter = cqrs_mongo_dead_letter;
  opts.dead_letter_data = a->m;
  if (cqrs_dispatcher_new(&a->loop, a->reg, a->store, &opts, &a->d, &e)) fail_msg("%s", e.message);
  if (project ? billing_start(a->d, a->rm, a->cp, NULL, &a->billing, &e) : billing_register_handlers(a->d, &e))
    fail_msg("%s", e.message);
}

static inline void app_close(app_t *a) {
  cqrs_dispatcher_close(a->d, NULL, NULL);
  uv_run(&a->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&a->loop), 0);
  billing_destroy(a->billing);
  cqrs_checkpoints_destroy(a->cp);
  cqrs_readmodel_destroy(a->rm);
  cqrs_store_destroy(a->store);
  cqrs_mongo_destroy(a->m);
  cqrs_registry_destroy(a->reg);
}

typedef struct sent {
  bool done;
  cqrs_error_t error;
} sent_t;

static inline void on_sent(const cqrs_result_t *r, void *data) {
  sent_t *s = data;
  s->error = r->error;
  s->done = true;
}

static inline void app_send(app_t *a, const cqrs_command_type_t *type, const void *payload) {
  cqrs_command_t *cmd;
  cqrs_error_t e;
  if (cqrs_command_new(type, payload, &cmd, &e)) fail_msg("%s", e.message);
  sent_t s = {false, {0}};
  assert_int_equal(cqrs_dispatcher_send(a->d, cmd, on_sent, &s), CQRS_OK);
  while (!s.done) uv_run(&a->loop, UV_RUN_ONCE);
  if (s.error.code) fail_msg("%s: %s", type->name, s.error.message);
}

#endif
