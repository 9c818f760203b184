#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include <cqrs/backend.h>

#include "ledger.h"

static void test_load_unknown_is_new(void **state) {
  (void)state;
  cqrs_store_t *s = NULL;
  cqrs_memory_store_new(&s, NULL);
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(s, &ledger_type, "nobody", &agg, NULL), CQRS_OK);
  assert_int_equal(cqrs_aggregate_version(agg), 0);
  assert_false(((ledger_state_t *)cqrs_aggregate_state(agg))->opened);
  cqrs_aggregate_destroy(agg);
  cqrs_error_t err;
  assert_int_equal(cqrs_repository_load(NULL, &ledger_type, "x", &agg, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_repository_load(s, &ledger_type, "", &agg, &err), CQRS_EINVAL);
  cqrs_store_destroy(s);
}

static void save_credit(cqrs_store_t *s, const cqrs_aggregate_type_t *type, const char *id, const char *cmd,
                        int64_t amount, cqrs_code_t want) {
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(s, type, id, &agg, NULL), CQRS_OK);
  ledger_amount_t a = {amount};
  assert_int_equal(cqrs_aggregate_raise(agg, &ledger_credited, &a, NULL), CQRS_OK);
  cqrs_cause_t cause = {cmd, NULL};
  cqrs_error_t err;
  assert_int_equal(cqrs_repository_save(s, agg, &cause, NULL, &err), want);
  cqrs_aggregate_destroy(agg);
}

static void test_save_then_load(void **state) {
  (void)state;
  cqrs_store_t *s = NULL;
  cqrs_memory_store_new(&s, NULL);
  save_credit(s, &ledger_type, "a", "c1", 10, CQRS_OK);
  save_credit(s, &ledger_type, "a", "c2", 15, CQRS_OK);
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(s, &ledger_type, "a", &agg, NULL), CQRS_OK);
  assert_int_equal(cqrs_aggregate_version(agg), 2);
  assert_int_equal(((ledger_state_t *)cqrs_aggregate_state(agg))->balance, 25);
  cqrs_aggregate_destroy(agg);
  cqrs_store_destroy(s);
}

static void test_stale_aggregate_conflicts(void **state) {
  (void)state;
  cqrs_store_t *s = NULL;
  cqrs_memory_store_new(&s, NULL);
  cqrs_aggregate_t *one, *two;
  assert_int_equal(cqrs_repository_load(s, &ledger_type, "a", &one, NULL), CQRS_OK);
  assert_int_equal(cqrs_repository_load(s, &ledger_type, "a", &two, NULL), CQRS_OK);
  ledger_amount_t x = {1};
  cqrs_aggregate_raise(one, &ledger_credited, &x, NULL);
  cqrs_aggregate_raise(two, &ledger_credited, &x, NULL);
  cqrs_cause_t c1 = {"k1", NULL}, c2 = {"k2", NULL};
  cqrs_save_result_t res;
  assert_int_equal(cqrs_repository_save(s, one, &c1, &res, NULL), CQRS_OK);
  assert_int_equal(res.committed, 1);
  assert_int_equal(cqrs_aggregate_pending_count(one), 0);
  assert_int_equal(cqrs_aggregate_version(one), 1);
  cqrs_error_t err;
  assert_int_equal(cqrs_repository_save(s, two, &c2, &res, &err), CQRS_ECONFLICT);
  assert_int_equal(err.code, CQRS_ECONFLICT);
  assert_int_equal(cqrs_aggregate_version(two), 0);
  cqrs_aggregate_destroy(one);
  cqrs_aggregate_destroy(two);
  cqrs_store_destroy(s);
}

static bool first_event(const cqrs_event_t *e, void *data) {
  *(const cqrs_event_t **)data = cqrs_event_ref(e);
  return false;
}

static void test_save_stamps_the_cause(void **state) {
  (void)state;
  cqrs_store_t *s = NULL;
  cqrs_memory_store_new(&s, NULL);
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(s, &ledger_type, "a", &agg, NULL), CQRS_OK);
  ledger_opened_t o = {"ada"};
  cqrs_aggregate_raise(agg, &ledger_opened, &o, NULL);
  cqrs_cause_t cause = {"cmd-9", "conv-3"};
  assert_int_equal(cqrs_repository_save(s, agg, &cause, NULL, NULL), CQRS_OK);
  cqrs_aggregate_destroy(agg);
  const cqrs_event_t *e = NULL;
  assert_int_equal(cqrs_store_read_all(s, 1, 1, first_event, &e, NULL), CQRS_OK);
  assert_non_null(e);
  assert_string_equal(cqrs_event_causation_id(e), "cmd-9");
  assert_string_equal(cqrs_event_correlation_id(e), "conv-3");
  assert_int_equal(e->position, 1);
  cqrs_event_unref(e);
  cqrs_store_destroy(s);
}

/* Counts events the repository reads while loading. */
typedef struct counting {
  cqrs_store_ops_t ops;
  const cqrs_store_ops_t *inner_ops;
  cqrs_store_t *inner;
  int64_t read;
} counting_t;

static counting_t counter;

static cqrs_code_t c_append(void *impl, const cqrs_append_t *r, cqrs_append_result_t *res, cqrs_error_t *err) {
  (void)impl;
  return cqrs_store_append(counter.inner, r, res, err);
}
typedef struct fwd {
  cqrs_event_visit_cb cb;
  void *data;
} fwd_t;
static bool c_visit(const cqrs_event_t *e, void *data) {
  fwd_t *f = data;
  counter.read++;
  return f->cb(e, f->data);
}
static cqrs_code_t c_read_stream(void *impl, const char *t, const char *id, int64_t from, cqrs_event_visit_cb cb,
                                 void *data, cqrs_error_t *err) {
  (void)impl;
  fwd_t f = {cb, data};
  return cqrs_store_read_stream(counter.inner, t, id, from, c_visit, &f, err);
}
static cqrs_code_t c_read_all(void *impl, int64_t from, size_t limit, cqrs_event_visit_cb cb, void *data,
                              cqrs_error_t *err) {
  (void)impl;
  return cqrs_store_read_all(counter.inner, from, limit, cb, data, err);
}
static cqrs_code_t c_head(void *impl, int64_t *p, cqrs_error_t *err) {
  (void)impl;
  return cqrs_store_head(counter.inner, p, err);
}
static cqrs_code_t c_snap_load(void *impl, const char *t, const char *id, cqrs_snapshot_t *out, bool *found,
                               cqrs_error_t *err) {
  (void)impl;
  return cqrs_store_snapshot_load(counter.inner, t, id, out, found, err);
}
static cqrs_code_t c_snap_save(void *impl, const cqrs_snapshot_t *snap, cqrs_error_t *err) {
  (void)impl;
  return cqrs_store_snapshot_save(counter.inner, snap, err);
}

static void test_snapshot_plus_events_equals_full_replay(void **state) {
  (void)state;
  cqrs_memory_store_new(&counter.inner, NULL);
  counter.ops = (cqrs_store_ops_t){.name = "counting", .blocking = false, .append = c_append,
                                   .read_stream = c_read_stream, .read_all = c_read_all, .head = c_head,
                                   .snapshot_load = c_snap_load, .snapshot_save = c_snap_save, .destroy = NULL};
  cqrs_store_t *s = NULL;
  cqrs_store_new(&counter.ops, NULL, &s, NULL);
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(s, &ledger_snap_type, "a", &agg, NULL), CQRS_OK);
  ledger_opened_t o = {"ada"};
  cqrs_aggregate_raise(agg, &ledger_opened, &o, NULL);
  cqrs_cause_t c0 = {"open", NULL};
  assert_int_equal(cqrs_repository_save(s, agg, &c0, NULL, NULL), CQRS_OK);
  cqrs_aggregate_destroy(agg);
  /* 24 more commands of one credit: snapshots at versions 10 and 20. */
  for (int i = 0; i < 24; i++) {
    char cmd[16];
    snprintf(cmd, sizeof cmd, "c%d", i);
    save_credit(s, &ledger_snap_type, "a", cmd, i + 1, CQRS_OK);
  }
  cqrs_snapshot_t snap;
  bool found;
  assert_int_equal(cqrs_store_snapshot_load(s, "ledger-snap", "a", &snap, &found, NULL), CQRS_OK);
  assert_true(found);
  assert_int_equal(snap.version, 20);
  bson_destroy(&snap.state);

  counter.read = 0;
  assert_int_equal(cqrs_repository_load(s, &ledger_snap_type, "a", &agg, NULL), CQRS_OK);
  assert_int_equal(counter.read, 5); /* versions 21..25 only */
  const ledger_state_t *st = cqrs_aggregate_state(agg);
  ledger_state_t snap_state = *st;
  assert_int_equal(cqrs_aggregate_version(agg), 25);
  cqrs_aggregate_destroy(agg);

  /* The same stream replayed in full: the same type without snapshots. */
  cqrs_aggregate_type_t no_snap = ledger_snap_type;
  no_snap.snapshot_fields = NULL;
  no_snap.snapshot_every = 0;
  cqrs_aggregate_t *full;
  counter.read = 0;
  assert_int_equal(cqrs_repository_load(s, &no_snap, "a", &full, NULL), CQRS_OK);
  assert_int_equal(counter.read, 25);
  assert_int_equal(((const ledger_state_t *)cqrs_aggregate_state(full))->applied, 25);
  const ledger_state_t *fs = cqrs_aggregate_state(full);
  assert_int_equal(snap_state.balance, fs->balance);
  assert_int_equal(snap_state.balance, 300); /* 1 + 2 + ... + 24 */
  assert_string_equal(snap_state.owner, fs->owner);
  assert_int_equal(snap_state.opened, fs->opened);
  assert_int_equal(snap_state.applied, 5); /* the snapshot carried the rest */
  cqrs_aggregate_destroy(full);
  cqrs_store_destroy(s);
  cqrs_store_destroy(counter.inner);
}

static void test_stale_snapshot_is_ignored(void **state) {
  (void)state;
  cqrs_store_t *s = NULL;
  cqrs_memory_store_new(&s, NULL);
  ledger_fill(s, &ledger_snap_type, "a", 12); /* opened + 11 credits of 1 */
  /* A snapshot from an older state schema with a wrong balance. */
  cqrs_snapshot_t old = {"ledger-snap", "a", 10, 0, BSON_INITIALIZER};
  BSON_APPEND_BOOL(&old.state, "opened", true);
  BSON_APPEND_UTF8(&old.state, "owner", "filler");
  BSON_APPEND_INT64(&old.state, "balance", 999999);
  assert_int_equal(cqrs_store_snapshot_save(s, &old, NULL), CQRS_OK);
  bson_destroy(&old.state);
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(s, &ledger_snap_type, "a", &agg, NULL), CQRS_OK);
  const ledger_state_t *st = cqrs_aggregate_state(agg);
  assert_int_equal(st->balance, 11);
  assert_int_equal(st->applied, 12);
  cqrs_aggregate_destroy(agg);

  /* A current-schema snapshot that does not decode is ignored too. */
  cqrs_snapshot_t broken = {"ledger-snap", "a", 11, 1, BSON_INITIALIZER};
  BSON_APPEND_UTF8(&broken.state, "balance", "lots");
  assert_int_equal(cqrs_store_snapshot_save(s, &broken, NULL), CQRS_OK);
  bson_destroy(&broken.state);
  assert_int_equal(cqrs_repository_load(s, &ledger_snap_type, "a", &agg, NULL), CQRS_OK);
  assert_int_equal(((ledger_state_t *)cqrs_aggregate_state(agg))->balance, 11);
  cqrs_aggregate_destroy(agg);
  cqrs_store_destroy(s);
}

static void test_repeated_command_id_commits_once(void **state) {
  (void)state;
  cqrs_store_t *s = NULL;
  cqrs_memory_store_new(&s, NULL);
  save_credit(s, &ledger_type, "a", "same", 10, CQRS_OK);
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(s, &ledger_type, "a", &agg, NULL), CQRS_OK);
  ledger_amount_t a = {10};
  cqrs_aggregate_raise(agg, &ledger_credited, &a, NULL);
  cqrs_cause_t cause = {"same", NULL};
  cqrs_save_result_t res;
  assert_int_equal(cqrs_repository_save(s, agg, &cause, &res, NULL), CQRS_OK);
  assert_true(res.duplicate);
  assert_int_equal(res.committed, 0);
  cqrs_aggregate_destroy(agg);
  assert_int_equal(cqrs_repository_load(s, &ledger_type, "a", &agg, NULL), CQRS_OK);
  assert_int_equal(((ledger_state_t *)cqrs_aggregate_state(agg))->balance, 10);
  cqrs_aggregate_destroy(agg);
  cqrs_store_destroy(s);
}

/* A snapshot that claims version INT64_MAX, as corrupted storage could. */
static cqrs_code_t c_snap_load_corrupt(void *impl, const char *t, const char *id, cqrs_snapshot_t *out, bool *found,
                                       cqrs_error_t *err) {
  (void)impl;
  (void)t;
  (void)id;
  (void)err;
  out->version = INT64_MAX;
  out->schema_version = ledger_snap_type.snapshot_version;
  bson_init(&out->state);
  BSON_APPEND_BOOL(&out->state, "opened", true);
  BSON_APPEND_UTF8(&out->state, "owner", "ada");
  BSON_APPEND_INT64(&out->state, "balance", 5);
  *found = true;
  return CQRS_OK;
}

static void test_snapshot_at_int64_max_is_corrupt(void **state) {
  (void)state;
  cqrs_memory_store_new(&counter.inner, NULL);
  counter.ops = (cqrs_store_ops_t){.name = "corrupt", .blocking = false, .append = c_append,
                                   .read_stream = c_read_stream, .read_all = c_read_all, .head = c_head,
                                   .snapshot_load = c_snap_load_corrupt, .snapshot_save = c_snap_save, .destroy = NULL};
  cqrs_store_t *s = NULL;
  cqrs_store_new(&counter.ops, NULL, &s, NULL);
  cqrs_aggregate_t *agg = (cqrs_aggregate_t *)1;
  cqrs_error_t err;
  assert_int_equal(cqrs_repository_load(s, &ledger_snap_type, "a", &agg, &err), CQRS_ECODEC);
  assert_null(agg);
  if (!strstr(err.message, "corrupt snapshot")) fail_msg("%s", err.message);
  cqrs_store_destroy(s);
  cqrs_store_destroy(counter.inner);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_load_unknown_is_new),
      cmocka_unit_test(test_save_then_load),
      cmocka_unit_test(test_stale_aggregate_conflicts),
      cmocka_unit_test(test_save_stamps_the_cause),
      cmocka_unit_test(test_snapshot_plus_events_equals_full_replay),
      cmocka_unit_test(test_stale_snapshot_is_ignored),
      cmocka_unit_test(test_repeated_command_id_commits_once),
      cmocka_unit_test(test_snapshot_at_int64_max_is_corrupt),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
