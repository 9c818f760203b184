/* The event store suite: what cqrs_store_ops_t promises, through the
 * checked calls of store.h, and what a dispatcher over the store relies on. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "conformance-private.h"

#define STREAM "conformance"
#define T0 1700000000000 /* the events' timestamps */

/* The suite's one event type (cqrs__conf_credited); a second,
 * "conformance.audited", is stored by no registry (a newer application's,
 * as far as the store knows). */
#define credited cqrs__conf_credited

typedef conf_store_fx_t fx_t;

static const cqrs_store_factory_t *factory; /* the suite running */

static int setup(void **state) {
  fx_t *fx = calloc(1, sizeof *fx);
  fx->f = factory;
  if (!fx || cqrs_registry_new(&fx->reg, NULL) || cqrs_registry_add_event(fx->reg, &credited, NULL)) {
    print_error("%s: cannot make the suite's registry\n", factory->name);
    if (fx) cqrs_registry_destroy(fx->reg);
    free(fx);
    return -1;
  }
  fx->store = factory->create(fx->reg, factory->data);
  if (!fx->store) {
    print_error("%s: cannot create a store\n", factory->name);
    cqrs_registry_destroy(fx->reg);
    free(fx);
    return -1;
  }
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  fx_t *fx = *state;
  if (fx->f->dispose) {
    fx->f->dispose(fx->store, fx->f->data);
  } else {
    cqrs_store_destroy(fx->store);
  }
  cqrs_registry_destroy(fx->reg);
  free(fx);
  return 0;
}

/* Appends credits of `amounts` to stream `id` expecting `expected`. */
static cqrs_code_t append(cqrs_store_t *s, const char *id, int64_t expected, const char *cmd, const int64_t *amounts,
                          size_t n, cqrs_append_result_t *res, cqrs_error_t *err) {
  cqrs_envelope_t *env;
  assert_int_equal(cqrs_envelope_new(STREAM, id, cmd, "corr-1", &env, err), CQRS_OK);
  cqrs_event_t *events[16];
  for (size_t i = 0; i < n; i++) {
    amount_t a = {amounts[i]};
    assert_int_equal(cqrs_event_new(&credited, env, NULL, expected + (int64_t)i + 1, T0 + (int64_t)i,
                                    &a, &events[i], err),
                     CQRS_OK);
  }
  cqrs_append_t req = {STREAM, id, expected, cmd, events, n};
  cqrs_append_result_t local;
  cqrs_code_t rc = cqrs_store_append(s, &req, res ? res : &local, err);
  for (size_t i = 0; i < n; i++) cqrs_event_unref(events[i]);
  cqrs_envelope_unref(env);
  return rc;
}

typedef struct seen {
  const cqrs_event_t *e[512];
  size_t n;
} seen_t;

static bool keep(const cqrs_event_t *e, void *data) {
  seen_t *s = data;
  if (s->n < 512) s->e[s->n++] = cqrs_event_ref(e);
  return true;
}

static void seen_clear(seen_t *s) {
  for (size_t i = 0; i < s->n; i++) cqrs_event_unref(s->e[i]);
  s->n = 0;
}

static bool stop_at_two(const cqrs_event_t *e, void *data) {
  (void)e;
  return ++*(int *)data < 2;
}

static void read_stream(fx_t *fx, const char *id, int64_t from, seen_t *out) {
  cqrs_error_t err;
  seen_clear(out);
  cqrs_code_t rc = cqrs_store_read_stream(fx->store, STREAM, id, from, keep, out, &err);
  if (rc) fail_msg("read_stream: %s", err.message);
}

static void append_ok(fx_t *fx, const char *id, int64_t expected, const char *cmd, const int64_t *amounts, size_t n,
                      cqrs_append_result_t *res) {
  cqrs_error_t err;
  cqrs_code_t rc = append(fx->store, id, expected, cmd, amounts, n, res, &err);
  if (rc) fail_msg("append %s@%lld: %s", id, (long long)expected, err.message);
}

static void test_append_and_read(void **state) {
  fx_t *fx = *state;
  int64_t amounts[] = {10, 20, 30};
  cqrs_append_result_t res;
  append_ok(fx, "a1", 0, "cmd-1", amounts, 3, &res);
  assert_false(res.duplicate);
  assert_int_equal(res.last_position - res.first_position, 2);
  seen_t seen = {{0}, 0};
  read_stream(fx, "a1", 1, &seen);
  assert_int_equal(seen.n, 3);
  for (size_t i = 0; i < 3; i++) {
    const cqrs_event_t *e = seen.e[i];
    assert_ptr_equal(e->type, &credited);
    assert_int_equal(e->version, (int64_t)i + 1);
    assert_int_equal(e->position, res.first_position + (int64_t)i);
    assert_int_equal(((const amount_t *)e->payload)->amount, amounts[i]);
    assert_int_equal(e->timestamp, T0 + (int64_t)i);
    assert_string_equal(cqrs_event_aggregate_id(e), "a1");
    assert_string_equal(cqrs_event_aggregate_type(e), STREAM);
    assert_string_equal(cqrs_event_causation_id(e), "cmd-1");
    assert_string_equal(cqrs_event_correlation_id(e), "corr-1");
    assert_int_equal(strlen(e->id), 24);
  }
  assert_string_not_equal(seen.e[0]->id, seen.e[1]->id);
  read_stream(fx, "a1", 3, &seen);
  assert_int_equal(seen.n, 1);
  assert_int_equal(seen.e[0]->version, 3);
  read_stream(fx, "nobody", 1, &seen);
  assert_int_equal(seen.n, 0);
  seen_clear(&seen);
}

static void test_conflict_appends_nothing(void **state) {
  fx_t *fx = *state;
  int64_t one[] = {1}, two[] = {5, 6};
  append_ok(fx, "c1", 0, "cmd-a", one, 1, NULL);
  int64_t head_before;
  assert_int_equal(cqrs_store_head(fx->store, &head_before, NULL), CQRS_OK);
  cqrs_error_t err;
  assert_int_equal(append(fx->store, "c1", 0, "cmd-b", two, 2, NULL, &err), CQRS_ECONFLICT);
  assert_int_equal(err.code, CQRS_ECONFLICT);
  assert_int_equal(append(fx->store, "c1", 5, "cmd-c", two, 2, NULL, &err), CQRS_ECONFLICT);
  int64_t head_after;
  assert_int_equal(cqrs_store_head(fx->store, &head_after, NULL), CQRS_OK);
  assert_int_equal(head_before, head_after);
  seen_t seen = {{0}, 0};
  read_stream(fx, "c1", 1, &seen);
  assert_int_equal(seen.n, 1);
  append_ok(fx, "c1", 1, "cmd-d", two, 2, NULL);
  read_stream(fx, "c1", 1, &seen);
  assert_int_equal(seen.n, 3);
  assert_int_equal(seen.e[2]->version, 3);
  seen_clear(&seen);
}

static void test_repeated_command_id(void **state) {
  fx_t *fx = *state;
  int64_t one[] = {7};
  cqrs_append_result_t res;
  append_ok(fx, "d1", 0, "same-cmd", one, 1, &res);
  assert_false(res.duplicate);
  /* The retry of a command that committed: expected version has moved on. */
  append_ok(fx, "d1", 1, "same-cmd", one, 1, &res);
  assert_true(res.duplicate);
  /* And the retry with the original expected version is a duplicate, not a conflict. */
  append_ok(fx, "d1", 0, "same-cmd", one, 1, &res);
  assert_true(res.duplicate);
  /* On any stream: a command id names one commit in the whole store (the
   * recorded refusals of process-manager steps rely on it). */
  append_ok(fx, "d2", 0, "same-cmd", one, 1, &res);
  assert_true(res.duplicate);
  seen_t seen = {{0}, 0};
  read_stream(fx, "d1", 1, &seen);
  assert_int_equal(seen.n, 1);
  seen_clear(&seen);
  read_stream(fx, "d2", 1, &seen);
  assert_int_equal(seen.n, 0);
  seen_clear(&seen);
}

/* has_command: whether a commit of a command id is stored, in any stream. */
static void test_command_lookup(void **state) {
  fx_t *fx = *state;
  if (factory->without_command_lookup) skip();
  int64_t one[] = {1};
  bool found = true;
  cqrs_error_t err;
  assert_int_equal(cqrs_store_has_command(fx->store, "look-1", &found, &err), CQRS_OK);
  assert_false(found);
  append_ok(fx, "l1", 0, "look-1", one, 1, NULL);
  assert_int_equal(cqrs_store_has_command(fx->store, "look-1", &found, &err), CQRS_OK);
  assert_true(found);
  assert_int_equal(cqrs_store_has_command(fx->store, "look-2", &found, &err), CQRS_OK);
  assert_false(found);
  assert_int_equal(cqrs_store_has_command(fx->store, "", &found, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_store_has_command(fx->store, NULL, &found, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_store_has_command(fx->store, "look-1", NULL, &err), CQRS_EINVAL);
}

static void test_streams_are_separate(void **state) {
  fx_t *fx = *state;
  int64_t one[] = {1}, two[] = {2, 2};
  append_ok(fx, "ab", 0, "s-1", one, 1, NULL);
  append_ok(fx, "a", 0, "s-2", two, 2, NULL);
  seen_t seen = {{0}, 0};
  read_stream(fx, "ab", 1, &seen);
  assert_int_equal(seen.n, 1);
  read_stream(fx, "a", 1, &seen);
  assert_int_equal(seen.n, 2);
  cqrs_error_t err;
  seen_clear(&seen);
  assert_int_equal(cqrs_store_read_stream(fx->store, STREAM "-snap", "a", 1, keep, &seen, &err), CQRS_OK);
  assert_int_equal(seen.n, 0);
}

static void test_read_all(void **state) {
  fx_t *fx = *state;
  int64_t head0;
  assert_int_equal(cqrs_store_head(fx->store, &head0, NULL), CQRS_OK);
  int64_t a[] = {1, 2}, b[] = {3}, c[] = {4, 5, 6};
  append_ok(fx, "x", 0, "ra-1", a, 2, NULL);
  append_ok(fx, "y", 0, "ra-2", b, 1, NULL);
  append_ok(fx, "x", 2, "ra-3", c, 3, NULL);
  seen_t seen = {{0}, 0};
  cqrs_error_t err;
  assert_int_equal(cqrs_store_read_all(fx->store, head0 + 1, 100, keep, &seen, &err), CQRS_OK);
  assert_int_equal(seen.n, 6);
  for (size_t i = 0; i < 6; i++) {
    assert_int_equal(seen.e[i]->position, head0 + 1 + (int64_t)i);
    assert_int_equal(((const amount_t *)seen.e[i]->payload)->amount, (int64_t)i + 1);
  }
  seen_clear(&seen);
  assert_int_equal(cqrs_store_read_all(fx->store, head0 + 2, 3, keep, &seen, &err), CQRS_OK);
  assert_int_equal(seen.n, 3);
  assert_int_equal(seen.e[0]->position, head0 + 2);
  assert_int_equal(seen.e[2]->position, head0 + 4);
  seen_clear(&seen);
  int64_t head;
  assert_int_equal(cqrs_store_head(fx->store, &head, NULL), CQRS_OK);
  assert_int_equal(head, head0 + 6);
  assert_int_equal(cqrs_store_read_all(fx->store, head + 1, 10, keep, &seen, &err), CQRS_OK);
  assert_int_equal(seen.n, 0);
}

/* A fresh store is empty; an append gives its events their positions and
 * keeps their ids; a visitor that returns false ends a read, which succeeds. */
static void test_positions_ids_and_early_stops(void **state) {
  fx_t *fx = *state;
  int64_t head = -1;
  cqrs_error_t err;
  assert_int_equal(cqrs_store_head(fx->store, &head, &err), CQRS_OK);
  assert_int_equal(head, 0);
  cqrs_envelope_t *env;
  assert_int_equal(cqrs_envelope_new(STREAM, "p1", "pos-1", "corr-1", &env, &err), CQRS_OK);
  cqrs_event_t *events[3];
  for (int i = 0; i < 3; i++) {
    amount_t a = {i + 1};
    assert_int_equal(cqrs_event_new(&credited, env, NULL, i + 1, T0, &a, &events[i], &err), CQRS_OK);
    assert_int_equal(events[i]->position, 0);
  }
  cqrs_append_t req = {STREAM, "p1", 0, "pos-1", events, 3};
  cqrs_append_result_t res;
  if (cqrs_store_append(fx->store, &req, &res, &err)) fail_msg("append: %s", err.message);
  assert_true(res.first_position >= 1);
  assert_int_equal(res.last_position, res.first_position + 2);
  for (int i = 0; i < 3; i++) assert_int_equal(events[i]->position, res.first_position + i);
  assert_int_equal(cqrs_store_head(fx->store, &head, &err), CQRS_OK);
  assert_int_equal(head, res.last_position);
  seen_t seen = {{0}, 0};
  read_stream(fx, "p1", 1, &seen);
  assert_int_equal(seen.n, 3);
  for (int i = 0; i < 3; i++) assert_string_equal(seen.e[i]->id, events[i]->id);
  seen_clear(&seen);
  for (int i = 0; i < 3; i++) cqrs_event_unref(events[i]);
  cqrs_envelope_unref(env);
  int n = 0;
  assert_int_equal(cqrs_store_read_all(fx->store, 1, 100, stop_at_two, &n, &err), CQRS_OK);
  assert_int_equal(n, 2);
  n = 0;
  assert_int_equal(cqrs_store_read_stream(fx->store, STREAM, "p1", 1, stop_at_two, &n, &err), CQRS_OK);
  assert_int_equal(n, 2);
}

static void test_snapshots(void **state) {
  fx_t *fx = *state;
  int64_t amounts[] = {1, 1, 1, 1, 1, 1};
  append_ok(fx, "s1", 0, "snap-1", amounts, 6, NULL);
  cqrs_snapshot_t out;
  bool found = true;
  cqrs_error_t err;
  assert_int_equal(cqrs_store_snapshot_load(fx->store, STREAM, "s1", &out, &found, &err), CQRS_OK);
  assert_false(found);
  if (fx->f->without_snapshots) {
    cqrs_snapshot_t snap = {STREAM, "s1", 2, 1, BSON_INITIALIZER};
    assert_int_equal(cqrs_store_snapshot_save(fx->store, &snap, &err), CQRS_ESTATE);
    bson_destroy(&snap.state);
    return;
  }
  for (int64_t v = 2; v <= 5; v += 3) {
    cqrs_snapshot_t snap = {STREAM, "s1", v, 1, BSON_INITIALIZER};
    BSON_APPEND_INT64(&snap.state, "balance", v * 100);
    assert_int_equal(cqrs_store_snapshot_save(fx->store, &snap, &err), CQRS_OK);
    bson_destroy(&snap.state);
  }
  cqrs_snapshot_t older = {STREAM, "s1", 3, 1, BSON_INITIALIZER};
  BSON_APPEND_INT64(&older.state, "balance", 300);
  assert_int_equal(cqrs_store_snapshot_save(fx->store, &older, &err), CQRS_OK);
  bson_destroy(&older.state);
  assert_int_equal(cqrs_store_snapshot_load(fx->store, STREAM, "s1", &out, &found, &err), CQRS_OK);
  assert_true(found);
  assert_int_equal(out.version, 5);
  assert_int_equal(out.schema_version, 1);
  bson_iter_t it;
  assert_true(bson_iter_init_find(&it, &out.state, "balance"));
  assert_int_equal(bson_iter_as_int64(&it), 500);
  bson_destroy(&out.state);
  /* Another stream's, of the same id or of another type, is not this one. */
  found = true;
  assert_int_equal(cqrs_store_snapshot_load(fx->store, STREAM "-snap", "s1", &out, &found, &err), CQRS_OK);
  assert_false(found);
  found = true;
  assert_int_equal(cqrs_store_snapshot_load(fx->store, STREAM, "s2", &out, &found, &err), CQRS_OK);
  assert_false(found);
}

static void test_bad_arguments(void **state) {
  fx_t *fx = *state;
  cqrs_error_t err;
  cqrs_envelope_t *env;
  assert_int_equal(cqrs_envelope_new(STREAM, "x", "bad-1", NULL, &env, &err), CQRS_OK);
  amount_t a = {1};
  cqrs_event_t *e;
  assert_int_equal(cqrs_event_new(&credited, env, NULL, 1, 0, &a, &e, &err), CQRS_OK);
  cqrs_append_t no_id = {STREAM, "", 0, "bad-1", &e, 1};
  cqrs_append_result_t r;
  assert_int_equal(cqrs_store_append(fx->store, &no_id, &r, &err), CQRS_EINVAL);
  cqrs_append_t no_cmd = {STREAM, "x", 0, NULL, &e, 1};
  assert_int_equal(cqrs_store_append(fx->store, &no_cmd, &r, &err), CQRS_EINVAL);
  cqrs_append_t gap = {STREAM, "x", 1, "bad-3", &e, 1}; /* event version 1 does not follow 1 */
  assert_int_equal(cqrs_store_append(fx->store, &gap, &r, &err), CQRS_EINVAL);
  cqrs_event_unref(e);
  cqrs_envelope_unref(env);
  char big[200];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  assert_int_equal(cqrs_store_read_stream(fx->store, STREAM, big, 1, keep, NULL, &err), CQRS_ETOO_LARGE);
  assert_int_equal(cqrs_store_read_stream(fx->store, NULL, "a", 1, keep, NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_store_read_stream(fx->store, STREAM, "a", 1, NULL, NULL, &err), CQRS_EINVAL);
  cqrs_append_t empty = {STREAM, "e", 0, "bad-2", NULL, 0};
  cqrs_append_result_t res;
  assert_int_equal(cqrs_store_append(fx->store, &empty, &res, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_store_append(NULL, &empty, &res, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_store_head(fx->store, NULL, &err), CQRS_EINVAL);
}

#define RACERS CONF_THREADS
#define RACE_APPENDS 25

typedef struct racer {
  cqrs_store_t *store;
  int id;
  int conflicts;
  int failures;
} racer_t;

typedef struct head_probe {
  int64_t version;
} head_probe_t;

static bool last_version(const cqrs_event_t *e, void *data) {
  ((head_probe_t *)data)->version = e->version;
  return true;
}

static void race(void *arg) {
  racer_t *r = arg;
  for (int i = 0; i < RACE_APPENDS; i++) {
    char cmd[64];
    snprintf(cmd, sizeof cmd, "race-%d-%d", r->id, i);
    for (;;) {
      head_probe_t probe = {0};
      cqrs_error_t err;
      if (cqrs_store_read_stream(r->store, STREAM, "race", 1, last_version, &probe, &err)) {
        r->failures++;
        return;
      }
      int64_t amount = r->id * 1000 + i + 1;
      cqrs_code_t rc = append(r->store, "race", probe.version, cmd, &amount, 1, NULL, &err);
      if (rc == CQRS_OK) break;
      if (rc != CQRS_ECONFLICT) {
        print_error("racer %d: %s\n", r->id, err.message);
        r->failures++;
        return;
      }
      r->conflicts++;
    }
  }
}

static void test_concurrent_appends(void **state) {
  fx_t *fx = *state;
  racer_t racers[RACERS];
  for (int i = 0; i < RACERS; i++) racers[i] = (racer_t){fx->store, i + 1, 0, 0};
  cqrs__conf_race(race, racers, sizeof racers[0], RACERS);
  for (int i = 0; i < RACERS; i++) assert_int_equal(racers[i].failures, 0);
  seen_t seen = {{0}, 0};
  read_stream(fx, "race", 1, &seen);
  assert_int_equal(seen.n, RACERS * RACE_APPENDS);
  int counts[RACERS][RACE_APPENDS] = {{0}};
  for (size_t i = 0; i < seen.n; i++) {
    assert_int_equal(seen.e[i]->version, (int64_t)i + 1);
    if (i) assert_true(seen.e[i]->position > seen.e[i - 1]->position);
    int64_t a = ((const amount_t *)seen.e[i]->payload)->amount;
    counts[a / 1000 - 1][a % 1000 - 1]++;
  }
  for (int r = 0; r < RACERS; r++)
    for (int i = 0; i < RACE_APPENDS; i++) assert_int_equal(counts[r][i], 1);
  seen_clear(&seen);
}

/* ---- events of a type this process does not know ---- */

/* Appends to stream `id` a placeholder for a type a newer version wrote. */
static void append_unknown(fx_t *fx, const char *id, int64_t expected, const char *cmd) {
  cqrs_error_t err;
  cqrs_envelope_t *env;
  assert_int_equal(cqrs_envelope_new(STREAM, id, cmd, NULL, &env, &err), CQRS_OK);
  bson_t data = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&data, "by", "auditor");
  cqrs_event_t *e;
  if (cqrs_unknown_event_new("conformance.audited", 2, &data, env, NULL, expected + 1, T0, &e, &err))
    fail_msg("%s", err.message);
  cqrs_append_t req = {STREAM, id, expected, cmd, &e, 1};
  cqrs_append_result_t res;
  if (cqrs_store_append(fx->store, &req, &res, &err)) fail_msg("append an unknown type: %s", err.message);
  cqrs_event_unref(e);
  cqrs_envelope_unref(env);
  bson_destroy(&data);
}

static void assert_placeholder(const cqrs_event_t *e) {
  assert_ptr_equal(e->type, &cqrs_unknown_event_type);
  const cqrs_unknown_event_t *u = e->payload;
  assert_string_equal(u->type, "conformance.audited");
  assert_int_equal(u->schema_version, 2);
  bson_t data;
  assert_true(bson_init_static(&data, u->data, u->data_len));
  bson_iter_t it;
  assert_true(bson_iter_init_find(&it, &data, "by"));
  assert_string_equal(bson_iter_utf8(&it, NULL), "auditor");
}

/* The log reads on past an event no type here decodes, as a placeholder. */
static void test_unknown_type_is_read_as_a_placeholder(void **state) {
  fx_t *fx = *state;
  int64_t one[] = {1}, two[] = {2};
  append_ok(fx, "u1", 0, "u-1", one, 1, NULL);
  append_unknown(fx, "u2", 0, "u-2");
  append_ok(fx, "u1", 1, "u-3", two, 1, NULL);
  seen_t seen = {{0}, 0};
  cqrs_error_t err;
  if (cqrs_store_read_all(fx->store, 1, 100, keep, &seen, &err)) fail_msg("read_all: %s", err.message);
  assert_int_equal(seen.n, 3);
  assert_ptr_equal(seen.e[0]->type, &credited);
  assert_placeholder(seen.e[1]);
  assert_string_equal(cqrs_event_aggregate_id(seen.e[1]), "u2");
  assert_int_equal(seen.e[1]->version, 1);
  assert_ptr_equal(seen.e[2]->type, &credited);
  assert_int_equal(((const amount_t *)seen.e[2]->payload)->amount, 2);
  seen_clear(&seen);
}

typedef struct counter {
  int n, unknown;
} counter_t;

typedef struct bus_probe {
  cqrs_dispatcher_t *d;
  counter_t typed, all;
  size_t dead;          /* dead letters, as close began */
  char subscriber[CQRS_NAME_MAX];
  cqrs_error_t why;     /* the first one's error */
  bool placeholder_ok;  /* the first one's event */
} bus_probe_t;

static cqrs_code_t count(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)err;
  counter_t *c = data;
  if (e->type == &cqrs_unknown_event_type) c->unknown++;
  c->n++;
  return CQRS_OK;
}

static bool probe_done(const bus_probe_t *p) {
  return p->typed.n >= 2 && p->all.n >= 2 && cqrs_dispatcher_dead_letter_count(p->d) >= 1;
}
static void probe_finish(bus_probe_t *p) {
  /* Dead letters kept in memory go with the dispatcher: read them first. */
  p->dead = cqrs_dispatcher_dead_letter_count(p->d);
  const char *sub = NULL;
  const cqrs_error_t *why = NULL;
  const cqrs_event_t *e = cqrs_dispatcher_dead_letter(p->d, 0, &sub, &why);
  if (e) {
    snprintf(p->subscriber, sizeof p->subscriber, "%s", sub);
    p->why = *why;
    const cqrs_unknown_event_t *u = e->type == &cqrs_unknown_event_type ? e->payload : NULL;
    p->placeholder_ok = u && !strcmp(u->type, "conformance.audited");
  }
  cqrs_dispatcher_close(p->d, NULL, NULL);
}

/* On the bus, such an event reaches no handler: subscribers with a type
 * list pass it by, one that takes every type dead-letters it; the feed,
 * which follows the store by polling here, goes on. The dispatcher's
 * polls and back-offs run on a manual clock, moved 5 ms at a time once the
 * loop has nothing in flight: up to 10 s of it, however slow the store. */
static void test_unknown_type_reaches_no_handler(void **state) {
  fx_t *fx = *state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  cqrs_clock_t *clock;
  assert_int_equal(cqrs_clock_manual_new(cqrs_now_ms(), &clock, NULL), CQRS_OK);
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.clock = clock;
  o.poll_ms = o.retry_cap_ms = 5;
  o.retry_base_ms = 1;
  bus_probe_t p = {0};
  cqrs_error_t err;
  if (cqrs_dispatcher_new(&loop, fx->reg, fx->store, &o, &p.d, &err)) fail_msg("%s", err.message);
  /* Projections from 0: for subscribers (from the head, read on the pool
   * once the loop runs) the events below could come before it. */
  const cqrs_event_type_t *only_credited[] = {&credited, NULL};
  cqrs_checkpoints_t *cp;
  assert_int_equal(cqrs_memory_checkpoints_new(&cp, &err), CQRS_OK);
  cqrs_projection_def_t typed = {"typed", only_credited, count, &p.typed, 0};
  cqrs_projection_def_t all = {"all", NULL, count, &p.all, 0};
  assert_int_equal(cqrs_projection_start(p.d, &typed, cp, &err), CQRS_OK);
  assert_int_equal(cqrs_projection_start(p.d, &all, cp, &err), CQRS_OK);
  int64_t one[] = {1}, two[] = {2};
  append_ok(fx, "b1", 0, "b-1", one, 1, NULL);
  append_unknown(fx, "b2", 0, "b-2");
  append_ok(fx, "b1", 1, "b-3", two, 1, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  for (int step = 0; step < 2000 && !probe_done(&p); step++) {
    assert_int_equal(cqrs_clock_advance(clock, 5), CQRS_OK);
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  probe_finish(&p);
  while (uv_run(&loop, UV_RUN_ONCE)) {
  }
  assert_int_equal(p.dead, 1);
  assert_true(p.placeholder_ok);
  assert_string_equal(p.subscriber, "all");
  assert_int_equal(p.why.code, CQRS_EUNKNOWN_TYPE);
  assert_string_equal(p.why.name, "unknown_type");
  assert_non_null(strstr(p.why.message, "conformance.audited"));
  assert_int_equal(p.typed.n, 2);
  assert_int_equal(p.all.n, 2);
  assert_int_equal(p.typed.unknown + p.all.unknown, 0);
  assert_int_equal(uv_loop_close(&loop), 0);
  cqrs_checkpoints_destroy(cp);
  cqrs_clock_destroy(clock);
}

int cqrs_conformance_store(const cqrs_store_factory_t *f) {
  if (!f || !f->name || !f->create) return 1;
  factory = f;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_append_and_read, setup, teardown),
      cmocka_unit_test_setup_teardown(test_conflict_appends_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(test_repeated_command_id, setup, teardown),
      cmocka_unit_test_setup_teardown(test_command_lookup, setup, teardown),
      cmocka_unit_test_setup_teardown(test_streams_are_separate, setup, teardown),
      cmocka_unit_test_setup_teardown(test_read_all, setup, teardown),
      cmocka_unit_test_setup_teardown(test_positions_ids_and_early_stops, setup, teardown),
      cmocka_unit_test_setup_teardown(test_snapshots, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
      cmocka_unit_test_setup_teardown(test_concurrent_appends, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unknown_type_is_read_as_a_placeholder, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unknown_type_reaches_no_handler, setup, teardown),
      {"test_append_many", cqrs__conf_append_many, setup, teardown, NULL},
      {"test_append_many_racing", cqrs__conf_append_many_racing, setup, teardown, NULL},
  };
  return _cmocka_run_group_tests(f->name, tests, sizeof tests / sizeof tests[0], NULL, NULL);
}
