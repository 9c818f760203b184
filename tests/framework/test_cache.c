/* The dispatcher's aggregate cache, seen from outside: a counter aggregate
 * whose apply function counts its calls tells a command that replayed the
 * stream from one that took the cached state. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include <cqrs/cqrs.h>

typedef struct counter_state {
  int64_t total;
} counter_state_t;

typedef struct added {
  int64_t amount;
} added_t;

typedef struct add_cmd {
  char id[CQRS_ID_MAX];
  int64_t amount;
  bool reject_after_raise; /* raise, then refuse: the raise must leave no trace */
} add_cmd_t;

static int applies; /* calls of apply_added, replays and raises alike */

static void apply_added(void *state, const cqrs_event_t *e) {
  ((counter_state_t *)state)->total += ((const added_t *)e->payload)->amount;
  applies++;
}

static void cleanup_nothing(void *state) { (void)state; }

static const cqrs_field_t added_fields[] = {CQRS_INT64(added_t, amount, "amount", 0), CQRS_FIELDS_END};
static const cqrs_event_type_t counter_added = {.name = "counter.added", .schema_version = 1,
                                                .payload_size = sizeof(added_t), .fields = added_fields};
static const cqrs_apply_entry_t counter_apply[] = {{&counter_added, apply_added}, {NULL, NULL}};
static const cqrs_aggregate_type_t counter_type = {.name = "counter", .state_size = sizeof(counter_state_t),
                                                   .state_init = NULL, .state_cleanup = NULL, .apply = counter_apply,
                                                   .snapshot_fields = NULL, .snapshot_version = 0, .snapshot_every = 0};
/* A state that owns resources: never cached. */
static const cqrs_aggregate_type_t owning_type = {.name = "owning", .state_size = sizeof(counter_state_t),
                                                  .state_init = NULL, .state_cleanup = cleanup_nothing,
                                                  .apply = counter_apply, .snapshot_fields = NULL, .snapshot_version = 0,
                                                  .snapshot_every = 0};

static const cqrs_field_t add_fields[] = {CQRS_STRING(add_cmd_t, id, "id", CQRS_F_REQUIRED),
                                          CQRS_INT64(add_cmd_t, amount, "amount", 0),
                                          CQRS_BOOL(add_cmd_t, reject_after_raise, "reject", 0), CQRS_FIELDS_END};
static const cqrs_command_type_t counter_add = {.name = "counter.add", .payload_size = sizeof(add_cmd_t),
                                                .fields = add_fields};
static const cqrs_command_type_t owning_add = {.name = "owning.add", .payload_size = sizeof(add_cmd_t),
                                               .fields = add_fields};
static const cqrs_command_type_t counter_read = {.name = "counter.read", .payload_size = sizeof(add_cmd_t),
                                                 .fields = add_fields};

static cqrs_code_t add_to(const cqrs_aggregate_type_t *type, cqrs_context_t *ctx, const cqrs_command_t *cmd,
                          cqrs_error_t *err) {
  const add_cmd_t *c = cqrs_command_payload(cmd);
  cqrs_aggregate_t *agg;
  cqrs_code_t rc = cqrs_context_load(ctx, type, c->id, &agg, err);
  if (rc) return rc;
  added_t e = {c->amount};
  if ((rc = cqrs_aggregate_raise(agg, &counter_added, &e, err))) return rc;
  if (c->reject_after_raise) return cqrs_reject(err, "counter.refused", "refused after raising");
  return CQRS_OK;
}

static cqrs_code_t handle_add(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  ++*(int *)data;
  return add_to(&counter_type, ctx, cmd, err);
}

static cqrs_code_t handle_owning_add(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)data;
  return add_to(&owning_type, ctx, cmd, err);
}

/* Commits nothing; returns the total the handler saw. */
static cqrs_code_t handle_read(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)data;
  cqrs_aggregate_t *agg;
  cqrs_code_t rc = cqrs_context_load(ctx, &counter_type, ((const add_cmd_t *)cqrs_command_payload(cmd))->id, &agg, err);
  if (rc) return rc;
  bson_t v = BSON_INITIALIZER;
  BSON_APPEND_INT64(&v, "total", ((const counter_state_t *)cqrs_aggregate_state_const(agg))->total);
  rc = cqrs_context_set_value(ctx, &v, err);
  bson_destroy(&v);
  return rc;
}

/* Loads its aggregate, then two others (which evict it from a cache of two),
 * then raises on it: its commit must not update the entry it was loaded
 * from, which is gone. */
static const cqrs_command_type_t counter_tour = {.name = "counter.tour", .payload_size = sizeof(add_cmd_t),
                                                 .fields = add_fields};

static cqrs_code_t handle_tour(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)data;
  const add_cmd_t *c = cqrs_command_payload(cmd);
  cqrs_aggregate_t *agg, *other;
  cqrs_code_t rc = cqrs_context_load(ctx, &counter_type, c->id, &agg, err);
  if (!rc) rc = cqrs_context_load(ctx, &counter_type, "tour-1", &other, err);
  if (!rc) rc = cqrs_context_load(ctx, &counter_type, "tour-2", &other, err);
  added_t e = {c->amount};
  if (!rc) rc = cqrs_aggregate_raise(agg, &counter_added, &e, err);
  return rc;
}

typedef struct fx {
  uv_loop_t loop;
  cqrs_registry_t *reg;
  cqrs_store_t *store;
  cqrs_dispatcher_t *d;
  int runs; /* handler runs of counter.add */
  int seen; /* events the subscriber received */
  int64_t seen_position;
  cqrs_result_t last;
  cqrs_error_t last_error;
  int64_t last_total;
  bool done;
} fx_t;

static cqrs_dispatcher_t *dispatcher(fx_t *fx, size_t cache, uint64_t poll_ms) {
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  assert_int_equal(o.aggregate_cache, 16384);
  o.aggregate_cache = cache;
  o.poll_ms = poll_ms;
  cqrs_dispatcher_t *d;
  cqrs_error_t err;
  if (cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, &o, &d, &err)) fail_msg("%s", err.message);
  assert_int_equal(cqrs_dispatcher_register(d, &counter_add, handle_add, &fx->runs, 0, &err), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_register(d, &owning_add, handle_owning_add, NULL, 0, &err), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_register(d, &counter_read, handle_read, NULL, 0, &err), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_register(d, &counter_tour, handle_tour, NULL, 0, &err), CQRS_OK);
  return d;
}

static fx_t *fx_new(size_t cache) {
  fx_t *fx = calloc(1, sizeof *fx);
  assert_int_equal(uv_loop_init(&fx->loop), 0);
  cqrs_registry_new(&fx->reg, NULL);
  assert_int_equal(cqrs_registry_add_event(fx->reg, &counter_added, NULL), CQRS_OK);
  assert_int_equal(cqrs_registry_add_command(fx->reg, &counter_add, NULL), CQRS_OK);
  assert_int_equal(cqrs_registry_add_command(fx->reg, &owning_add, NULL), CQRS_OK);
  assert_int_equal(cqrs_registry_add_command(fx->reg, &counter_read, NULL), CQRS_OK);
  assert_int_equal(cqrs_registry_add_command(fx->reg, &counter_tour, NULL), CQRS_OK);
  cqrs_memory_store_new(&fx->store, NULL);
  fx->d = dispatcher(fx, cache, 0);
  applies = 0;
  return fx;
}

static int setup(void **state) {
  *state = fx_new(16384);
  return 0;
}

static int setup_small(void **state) {
  *state = fx_new(2);
  return 0;
}

static void close_dispatcher(fx_t *fx, cqrs_dispatcher_t *d) {
  assert_int_equal(cqrs_dispatcher_close(d, NULL, NULL), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
}

static int teardown(void **state) {
  fx_t *fx = *state;
  close_dispatcher(fx, fx->d);
  assert_int_equal(uv_loop_close(&fx->loop), 0);
  cqrs_store_destroy(fx->store);
  cqrs_registry_destroy(fx->reg);
  free(fx);
  return 0;
}

static void on_done(const cqrs_result_t *r, void *data) {
  fx_t *fx = data;
  fx->last = *r;
  fx->last_error = r->error;
  fx->last.value = NULL;
  bson_iter_t it;
  fx->last_total = r->value && bson_iter_init_find(&it, r->value, "total") ? bson_iter_int64(&it) : -1;
  fx->done = true;
}

static const cqrs_error_t *send_on(fx_t *fx, cqrs_dispatcher_t *d, const cqrs_command_type_t *type, const char *id,
                                   int64_t amount, bool reject) {
  add_cmd_t c = {"", amount, reject};
  snprintf(c.id, sizeof c.id, "%s", id);
  cqrs_command_t *cmd;
  assert_int_equal(cqrs_command_new(type, &c, &cmd, NULL), CQRS_OK);
  fx->done = false;
  assert_int_equal(cqrs_dispatcher_send(d, cmd, on_done, fx), CQRS_OK);
  while (!fx->done) uv_run(&fx->loop, UV_RUN_ONCE);
  return &fx->last_error;
}

static void add(fx_t *fx, const char *id, int64_t amount) {
  const cqrs_error_t *e = send_on(fx, fx->d, &counter_add, id, amount, false);
  if (e->code) fail_msg("add %s: %s", id, e->message);
}

/* The total a read command sees, and the events it applied to see it. */
static int64_t read_total(fx_t *fx, cqrs_dispatcher_t *d, const char *id, int *replayed) {
  int before = applies;
  const cqrs_error_t *e = send_on(fx, d, &counter_read, id, 0, false);
  if (e->code) fail_msg("read %s: %s", id, e->message);
  *replayed = applies - before;
  return fx->last_total;
}

static int64_t stored_total(fx_t *fx, const char *id) {
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(fx->store, &counter_type, id, &agg, NULL), CQRS_OK);
  int64_t t = ((const counter_state_t *)cqrs_aggregate_state_const(agg))->total;
  cqrs_aggregate_destroy(agg);
  return t;
}

static void test_hit_replays_nothing(void **state) {
  fx_t *fx = *state;
  for (int i = 1; i <= 5; i++) add(fx, "a", i);
  /* Each add applied only the event it raised: no command replayed. */
  assert_int_equal(applies, 5);
  assert_int_equal(fx->last.version, 5);
  int replayed;
  assert_int_equal(read_total(fx, fx->d, "a", &replayed), 15);
  assert_int_equal(replayed, 0);
  assert_int_equal(stored_total(fx, "a"), 15);
}

static void test_without_cache_every_command_replays(void **state) {
  fx_t *fx = *state;
  for (int i = 1; i <= 5; i++) add(fx, "a", i);
  assert_int_equal(applies, 5 + (0 + 1 + 2 + 3 + 4));
  int replayed;
  assert_int_equal(read_total(fx, fx->d, "a", &replayed), 15);
  assert_int_equal(replayed, 5);
}

static void test_types_with_cleanup_are_not_cached(void **state) {
  fx_t *fx = *state;
  for (int i = 0; i < 3; i++) assert_int_equal(send_on(fx, fx->d, &owning_add, "o", 1, false)->code, CQRS_OK);
  assert_int_equal(applies, 3 + (0 + 1 + 2));
}

static void test_rejected_command_leaves_the_cache_as_it_was(void **state) {
  fx_t *fx = *state;
  add(fx, "a", 5);
  const cqrs_error_t *e = send_on(fx, fx->d, &counter_add, "a", 100, true);
  assert_int_equal(e->code, CQRS_EREJECTED);
  int replayed;
  assert_int_equal(read_total(fx, fx->d, "a", &replayed), 5);
  assert_int_equal(replayed, 0); /* from the cache, which the raise did not touch */
  add(fx, "a", 1);
  assert_int_equal(fx->last.version, 2);
  assert_int_equal(stored_total(fx, "a"), 6);
}

/* A write that bypasses the dispatcher: the cache cannot know of it. */
static void write_behind(fx_t *fx, const char *id, int64_t amount, const char *command_id) {
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(fx->store, &counter_type, id, &agg, NULL), CQRS_OK);
  added_t e = {amount};
  assert_int_equal(cqrs_aggregate_raise(agg, &counter_added, &e, NULL), CQRS_OK);
  cqrs_cause_t cause = {command_id, NULL};
  assert_int_equal(cqrs_repository_save(fx->store, agg, &cause, NULL, NULL), CQRS_OK);
  cqrs_aggregate_destroy(agg);
}

static void test_conflict_drops_the_entry(void **state) {
  fx_t *fx = *state;
  add(fx, "a", 1);
  write_behind(fx, "a", 10, "behind-1");
  fx->runs = 0;
  int before = applies;
  add(fx, "a", 100);
  /* The cached state (version 1) conflicted; the retry replayed both events. */
  assert_int_equal(fx->runs, 2);
  assert_int_equal(applies - before, 1 + 2 + 1);
  assert_int_equal(fx->last.version, 3);
  assert_int_equal(stored_total(fx, "a"), 111);
  int replayed;
  assert_int_equal(read_total(fx, fx->d, "a", &replayed), 111);
  assert_int_equal(replayed, 0); /* the retry's commit refilled the cache */
}

/* A repeated command met with a cached state older than the store's: the
 * store answers "duplicate" (it committed before, from a newer state), and
 * the stale entry goes, so a later read sees what is stored. */
static void test_duplicate_drops_the_entry(void **state) {
  fx_t *fx = *state;
  add(fx, "a", 1);
  write_behind(fx, "a", 10, "behind-1");
  add_cmd_t c = {"a", 10, false};
  cqrs_command_t *cmd;
  assert_int_equal(cqrs_command_new(&counter_add, &c, &cmd, NULL), CQRS_OK);
  assert_int_equal(cqrs_command_set_id(cmd, "behind-1", NULL), CQRS_OK);
  fx->done = false;
  assert_int_equal(cqrs_dispatcher_send(fx->d, cmd, on_done, fx), CQRS_OK);
  while (!fx->done) uv_run(&fx->loop, UV_RUN_ONCE);
  assert_int_equal(fx->last_error.code, CQRS_OK);
  assert_true(fx->last.duplicate);
  int replayed;
  assert_int_equal(read_total(fx, fx->d, "a", &replayed), 11);
  assert_int_equal(replayed, 2);
  assert_int_equal(stored_total(fx, "a"), 11);
}

static cqrs_code_t count_event(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)err;
  fx_t *fx = data;
  fx->seen++;
  fx->seen_position = e->position;
  return CQRS_OK;
}

static void tick(uv_timer_t *t) { (void)t; }

/* Runs the loop until the subscriber has seen `position`; the poll timer of
 * the dispatcher does not keep the loop alive, this one does. */
static void wait_seen(fx_t *fx, int64_t position) {
  uv_timer_t t;
  uv_timer_init(&fx->loop, &t);
  uv_timer_start(&t, tick, 1, 1);
  while (fx->seen_position < position) uv_run(&fx->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&fx->loop, UV_RUN_NOWAIT);
}

static void test_foreign_commit_on_the_feed_drops_the_entry(void **state) {
  fx_t *fx = *state;
  /* d1 polls the store, as a dispatcher does when other processes write. */
  cqrs_dispatcher_t *d1 = dispatcher(fx, 16384, 1);
  assert_int_equal(cqrs_dispatcher_subscribe(d1, "count", NULL, count_event, fx, 0, NULL), CQRS_OK);
  assert_int_equal(send_on(fx, d1, &counter_add, "a", 1, false)->code, CQRS_OK);
  int replayed;
  assert_int_equal(read_total(fx, d1, "a", &replayed), 1);
  assert_int_equal(replayed, 0);
  /* Another writer (fx->d, its own cache) commits on the same stream. */
  add(fx, "a", 10);
  assert_int_equal(fx->last.version, 2);
  wait_seen(fx, 2);
  /* d1's feed saw version 2, which its cache lacked: the entry is gone. */
  assert_int_equal(read_total(fx, d1, "a", &replayed), 11);
  assert_int_equal(replayed, 2);
  assert_int_equal(read_total(fx, d1, "a", &replayed), 11);
  assert_int_equal(replayed, 0);
  /* d1's own commits do not drop its entry when the feed brings them. */
  assert_int_equal(send_on(fx, d1, &counter_add, "a", 100, false)->code, CQRS_OK);
  wait_seen(fx, 3);
  assert_int_equal(read_total(fx, d1, "a", &replayed), 111);
  assert_int_equal(replayed, 0);
  close_dispatcher(fx, d1);
}

static void test_least_recently_used_is_evicted(void **state) {
  fx_t *fx = *state; /* room for two aggregates */
  add(fx, "a", 1);
  add(fx, "b", 2);
  int replayed;
  assert_int_equal(read_total(fx, fx->d, "a", &replayed), 1); /* a is now the most recent */
  assert_int_equal(replayed, 0);
  add(fx, "c", 3); /* evicts b */
  assert_int_equal(read_total(fx, fx->d, "a", &replayed), 1);
  assert_int_equal(replayed, 0);
  assert_int_equal(read_total(fx, fx->d, "c", &replayed), 3);
  assert_int_equal(replayed, 0);
  assert_int_equal(read_total(fx, fx->d, "b", &replayed), 2); /* evicted: replayed, cached again (a goes) */
  assert_int_equal(replayed, 1);
  assert_int_equal(read_total(fx, fx->d, "b", &replayed), 2);
  assert_int_equal(replayed, 0);
  assert_int_equal(read_total(fx, fx->d, "a", &replayed), 1);
  assert_int_equal(replayed, 1);
}

static void test_entry_evicted_between_load_and_commit(void **state) {
  fx_t *fx = *state; /* room for two aggregates */
  add(fx, "tour-1", 1);
  add(fx, "tour-2", 2);
  add(fx, "a", 5);
  /* a is loaded from the cache, then tour-1 and tour-2 (replayed) evict it. */
  assert_int_equal(send_on(fx, fx->d, &counter_tour, "a", 10, false)->code, CQRS_OK);
  assert_int_equal(fx->last.version, 2);
  assert_int_equal(stored_total(fx, "a"), 15);
  int replayed;
  assert_int_equal(read_total(fx, fx->d, "a", &replayed), 15);
  assert_int_equal(replayed, 0); /* the commit cached it afresh */
  assert_int_equal(send_on(fx, fx->d, &counter_tour, "a", 100, false)->code, CQRS_OK);
  assert_int_equal(read_total(fx, fx->d, "a", &replayed), 115);
  assert_int_equal(replayed, 0);
  assert_int_equal(stored_total(fx, "a"), 115);
}

static int setup_off(void **state) {
  *state = fx_new(0);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_hit_replays_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(test_without_cache_every_command_replays, setup_off, teardown),
      cmocka_unit_test_setup_teardown(test_types_with_cleanup_are_not_cached, setup, teardown),
      cmocka_unit_test_setup_teardown(test_rejected_command_leaves_the_cache_as_it_was, setup, teardown),
      cmocka_unit_test_setup_teardown(test_duplicate_drops_the_entry, setup, teardown),
      cmocka_unit_test_setup_teardown(test_conflict_drops_the_entry, setup, teardown),
      cmocka_unit_test_setup_teardown(test_foreign_commit_on_the_feed_drops_the_entry, setup, teardown),
      cmocka_unit_test_setup_teardown(test_least_recently_used_is_evicted, setup_small, teardown),
      cmocka_unit_test_setup_teardown(test_entry_evicted_between_load_and_commit, setup_small, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
