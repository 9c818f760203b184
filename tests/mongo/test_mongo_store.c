#include <stdatomic.h>
#include <mongoc/mongoc.h>
#include <uv.h>

#include <cqrs/backend.h>

#include "framework/ledger.h"
#include "mongo_fixture.h"

/* The store's contract: tests/mongo/test_mongo_conformance.c. */

/* ---- what only a shared, remote store has to face ---- */

typedef struct fx {
  cqrs_registry_t *reg;
  cqrs_mongo_t *m;
  cqrs_store_t *s;
} fx_t;

static int setup(void **state) {
  if (!test_mongo_uri()) {
    *state = NULL;
    return 0;
  }
  fx_t *fx = calloc(1, sizeof *fx);
  fx->reg = ledger_registry();
  fx->m = test_mongo_open(fx->reg, NULL, NULL);
  cqrs_mongo_store_new(fx->m, &fx->s, NULL);
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  fx_t *fx = *state;
  if (!fx) return 0;
  cqrs_store_destroy(fx->s);
  test_mongo_close(fx->m);
  cqrs_registry_destroy(fx->reg);
  free(fx);
  return 0;
}

#define WRITERS 4
#define COMMITS 40

/* Writers race on global positions while a reader catches up: the reader sees
 * every event exactly once, in order. */
typedef struct racer {
  cqrs_store_t *s;
  int id;
  int failures;
  int appended; /* events */
} racer_t;

static int64_t stream_version(cqrs_store_t *s, const char *id);

static void race_appends(void *arg) {
  racer_t *r = arg;
  char stream[16];
  snprintf(stream, sizeof stream, "r%d", r->id);
  int64_t version = 0;
  for (int i = 0; i < COMMITS; i++) {
    size_t n = i % 3 == 2 ? 2 : 1;
    cqrs_envelope_t *env;
    cqrs_error_t err;
    char cmd[32];
    snprintf(cmd, sizeof cmd, "r%d-%d", r->id, i);
    if (cqrs_envelope_new("ledger", stream, cmd, NULL, &env, &err)) {
      r->failures++;
      return;
    }
    cqrs_event_t *e[2];
    for (size_t k = 0; k < n; k++) {
      ledger_amount_t a = {1};
      if (cqrs_event_new(&ledger_credited, env, NULL, version + (int64_t)k + 1, cqrs_now_ms(), &a, &e[k], &err))
        r->failures++;
    }
    cqrs_envelope_unref(env);
    cqrs_append_t req = {"ledger", stream, version, cmd, e, n};
    cqrs_append_result_t res;
    if (cqrs_store_append(r->s, &req, &res, &err)) {
      fprintf(stderr, "racer %d: %s\n", r->id, err.message);
      r->failures++;
    } else {
      version += (int64_t)n;
      r->appended += (int)n;
    }
    for (size_t k = 0; k < n; k++) cqrs_event_unref(e[k]);
  }
}

typedef struct reader {
  cqrs_store_t *s;
  _Atomic bool stop;
  int64_t last;
  int64_t seen;
  int out_of_order;
  int failures;
} reader_t;

static bool follow(const cqrs_event_t *e, void *data) {
  reader_t *r = data;
  if (e->position != r->last + 1) r->out_of_order++;
  r->last = e->position;
  r->seen++;
  return true;
}

static void catch_up(void *arg) {
  reader_t *r = arg;
  for (;;) {
    bool stopping = atomic_load(&r->stop);
    cqrs_error_t err;
    int64_t before = r->seen;
    if (cqrs_store_read_all(r->s, r->last + 1, 50, follow, r, &err)) r->failures++;
    if (stopping && r->seen == before) return;
    if (r->seen == before) uv_sleep(1);
  }
}

static void test_racing_writers_and_a_catch_up_reader(void **state) {
  NEED_MONGO();
  fx_t *fx = *state;
  racer_t racers[WRITERS];
  uv_thread_t threads[WRITERS], rt;
  reader_t reader = {fx->s, false, 0, 0, 0, 0};
  assert_int_equal(uv_thread_create(&rt, catch_up, &reader), 0);
  for (int i = 0; i < WRITERS; i++) {
    racers[i] = (racer_t){fx->s, i, 0, 0};
    assert_int_equal(uv_thread_create(&threads[i], race_appends, &racers[i]), 0);
  }
  int64_t total = 0;
  for (int i = 0; i < WRITERS; i++) {
    uv_thread_join(&threads[i]);
    assert_int_equal(racers[i].failures, 0);
    total += racers[i].appended;
  }
  atomic_store(&reader.stop, true);
  uv_thread_join(&rt);
  assert_int_equal(reader.failures, 0);
  assert_int_equal(reader.out_of_order, 0);
  assert_int_equal(reader.seen, total);
  int64_t head;
  assert_int_equal(cqrs_store_head(fx->s, &head, NULL), CQRS_OK);
  assert_int_equal(head, total);
  for (int i = 0; i < WRITERS; i++) {
    char stream[16];
    snprintf(stream, sizeof stream, "r%d", i);
    assert_int_equal(stream_version(fx->s, stream), racers[i].appended);
  }
}

static bool last_version(const cqrs_event_t *e, void *data) {
  *(int64_t *)data = e->version;
  return true;
}

static int64_t stream_version(cqrs_store_t *s, const char *id) {
  int64_t v = 0;
  assert_int_equal(cqrs_store_read_stream(s, "ledger", id, 1, last_version, &v, NULL), CQRS_OK);
  return v;
}

/* Two stores on one database: positions claimed by one process are seen by
 * the other, whose guess of the next position is stale. */
static void test_two_writers_share_positions(void **state) {
  NEED_MONGO();
  fx_t *fx = *state;
  cqrs_mongo_options_t o = {.database = cqrs_mongo_database(fx->m)};
  cqrs_mongo_t *m2;
  assert_int_equal(cqrs_mongo_new(test_mongo_uri(), &o, fx->reg, NULL, &m2, NULL), CQRS_OK);
  cqrs_store_t *s2 = NULL;
  cqrs_mongo_store_new(m2, &s2, NULL);
  ledger_fill(fx->s, &ledger_type, "a", 3);
  ledger_fill(s2, &ledger_type, "b", 2);
  ledger_fill(fx->s, &ledger_type, "c", 1);
  int64_t head;
  assert_int_equal(cqrs_store_head(s2, &head, NULL), CQRS_OK);
  assert_int_equal(head, 6);
  cqrs_store_destroy(s2);
  cqrs_mongo_destroy(m2);
}

static void test_a_server_that_is_down(void **state) {
  (void)state;
  cqrs_registry_t *reg = ledger_registry();
  cqrs_mongo_t *m;
  cqrs_error_t err;
  /* Nothing listens on port 9 of the loopback. */
  cqrs_mongo_options_t o = {.server_selection_timeout_ms = 300};
  assert_int_equal(cqrs_mongo_new("mongodb://user:s3cret@127.0.0.1:9/x", &o, reg, NULL, &m, &err), CQRS_OK);
  assert_string_equal(cqrs_mongo_uri_redacted(m), "mongodb://user:***@127.0.0.1:9/x");
  cqrs_store_t *s = NULL;
  cqrs_mongo_store_new(m, &s, NULL);
  int64_t head;
  assert_int_equal(cqrs_store_head(s, &head, &err), CQRS_ESTORE);
  assert_int_equal(err.domain, CQRS_DOMAIN_STORE);
  assert_string_equal(err.name, "store_unavailable");
  assert_true(cqrs_error_transient(&err));
  assert_int_equal(err.cause_domain, MONGOC_ERROR_SERVER_SELECTION);
  assert_null(strstr(err.message, "s3cret"));
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(s, &ledger_type, "a", &agg, &err), CQRS_ESTORE);
  assert_int_equal(cqrs_mongo_ensure_indexes(m, &err), CQRS_ESTORE);
  cqrs_store_destroy(s);
  cqrs_mongo_destroy(m);
  assert_int_equal(cqrs_mongo_new("not a uri", NULL, reg, NULL, &m, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_mongo_new("mongodb://127.0.0.1:9", &(cqrs_mongo_options_t){.events = "bad$name"}, reg, NULL,
                                  &m, &err),
                   CQRS_EINVAL);
  assert_int_equal(cqrs_mongo_new(NULL, NULL, reg, NULL, &m, &err), CQRS_EINVAL);
  cqrs_registry_destroy(reg);
}

/* 150,000 events in one command make a commit over MongoDB's 16 MB: that is
 * "too_large", a clear error, not a store that seems unavailable; nothing
 * is written and the store goes on. */
static void test_a_commit_over_16_mb_is_too_large(void **state) {
  NEED_MONGO();
  fx_t *fx = *state;
  enum { N = 150000 };
  cqrs_error_t err;
  cqrs_envelope_t *env;
  assert_int_equal(cqrs_envelope_new("ledger", "big", "cmd-big", NULL, &env, &err), CQRS_OK);
  cqrs_event_t **events = calloc(N, sizeof *events);
  for (int64_t i = 0; i < N; i++) {
    ledger_amount_t a = {i + 1};
    assert_int_equal(cqrs_event_new(&ledger_credited, env, NULL, i + 1, 1700000000000, &a, &events[i], &err), CQRS_OK);
  }
  cqrs_append_t req = {"ledger", "big", 0, "cmd-big", events, N};
  cqrs_append_result_t res;
  assert_int_equal(cqrs_store_append(fx->s, &req, &res, &err), CQRS_ETOO_LARGE);
  assert_string_equal(err.name, "too_large");
  assert_false(cqrs_error_transient(&err));
  assert_non_null(strstr(err.message, "16 MB"));
  for (int64_t i = 0; i < N; i++) cqrs_event_unref(events[i]);
  free(events);
  cqrs_envelope_unref(env);
  int64_t head;
  assert_int_equal(cqrs_store_head(fx->s, &head, &err), CQRS_OK);
  assert_int_equal(head, 0);
  assert_int_equal(stream_version(fx->s, "big"), 0);
}

/* A payload the field table cannot encode (an array counting more items
 * than it holds): the append fails with the encoder's error and stores
 * nothing, rather than a commit with part of the data. */
typedef struct lines {
  int64_t items[2];
  int32_t n;
} lines_t;
static const cqrs_field_t line_item[] = {CQRS_ITEM_INT64(0), CQRS_FIELDS_END};
static const cqrs_field_t lines_fields[] = {CQRS_ARRAY(lines_t, items, n, "items", line_item, 0), CQRS_FIELDS_END};
static const cqrs_event_type_t lines_added = {.name = "test.lines_added", .payload_size = sizeof(lines_t),
                                              .fields = lines_fields};

static void test_a_payload_that_cannot_be_encoded_is_refused(void **state) {
  NEED_MONGO();
  fx_t *fx = *state;
  cqrs_error_t err;
  cqrs_envelope_t *env;
  assert_int_equal(cqrs_envelope_new("ledger", "odd", "cmd-odd", NULL, &env, &err), CQRS_OK);
  lines_t bad = {{1, 2}, 3}; /* three items in room for two */
  cqrs_event_t *e;
  assert_int_equal(cqrs_event_new(&lines_added, env, NULL, 1, 1700000000000, &bad, &e, &err), CQRS_OK);
  cqrs_append_t req = {"ledger", "odd", 0, "cmd-odd", &e, 1};
  cqrs_append_result_t res;
  assert_int_equal(cqrs_store_append(fx->s, &req, &res, &err), CQRS_EINVAL);
  assert_non_null(strstr(err.message, "items"));
  cqrs_event_unref(e);
  cqrs_envelope_unref(env);
  int64_t head;
  assert_int_equal(cqrs_store_head(fx->s, &head, &err), CQRS_OK);
  assert_int_equal(head, 0);
  assert_int_equal(stream_version(fx->s, "odd"), 0);
}

/* A store error retrying cannot cure (here a document the server refuses)
 * keeps the driver's domain and code, is not transient, and a subscriber
 * failing with it is dead-lettered after its attempts instead of retried
 * for ever. */
typedef struct refusing {
  cqrs_readmodel_t *rm;
  int calls;
  uv_timer_t timer;
  cqrs_dispatcher_t *d;
  uint64_t deadline;
  size_t dead;               /* dead letters, as close began */
  char why[CQRS_NAME_MAX];   /* the first one's error name */
} refusing_t;

static cqrs_code_t put_refused(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  refusing_t *r = data;
  r->calls++;
  bson_t doc = BSON_INITIALIZER;
  BSON_APPEND_INT32(&doc, "$bad", 1); /* field names may not start with '$' */
  cqrs_code_t rc = cqrs_readmodel_put(r->rm, "refused", cqrs_event_aggregate_id(e), &doc, e->position, NULL, err);
  bson_destroy(&doc);
  return rc;
}

static void refused_tick(uv_timer_t *t) {
  refusing_t *r = t->data;
  if (!cqrs_dispatcher_dead_letter_count(r->d) && uv_now(t->loop) < r->deadline) return;
  /* Dead letters kept in memory go with the dispatcher: read them first. */
  r->dead = cqrs_dispatcher_dead_letter_count(r->d);
  const cqrs_error_t *why = NULL;
  if (cqrs_dispatcher_dead_letter(r->d, 0, NULL, &why)) snprintf(r->why, sizeof r->why, "%s", why->name);
  uv_close((uv_handle_t *)t, NULL);
  cqrs_dispatcher_close(r->d, NULL, NULL);
}

static void test_a_permanent_store_error_is_dead_lettered(void **state) {
  NEED_MONGO();
  fx_t *fx = *state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  refusing_t r = {0};
  cqrs_error_t err;
  assert_int_equal(cqrs_mongo_readmodel_new(fx->m, &r.rm, &err), CQRS_OK);
  bson_t doc = BSON_INITIALIZER;
  BSON_APPEND_INT32(&doc, "$bad", 1);
  assert_int_equal(cqrs_readmodel_put(r.rm, "refused", "x", &doc, 1, NULL, &err), CQRS_ESTORE);
  bson_destroy(&doc);
  assert_false(cqrs_error_transient(&err));
  assert_string_equal(err.name, "store_failed");
  assert_int_not_equal(err.cause_domain, 0);
  assert_int_not_equal(err.cause_code, 0);
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.retry_base_ms = 1;
  o.retry_cap_ms = 2;
  o.retry_attempts = 3;
  assert_int_equal(cqrs_dispatcher_new(&loop, fx->reg, fx->s, &o, &r.d, &err), CQRS_OK);
  assert_int_equal(ledger_handlers(r.d, NULL, 0, &err), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_subscribe(r.d, "refusing", NULL, put_refused, &r, CQRS_SUBSCRIBE_BLOCKING, &err),
                   CQRS_OK);
  assert_int_equal(cqrs_dispatcher_send(r.d, ledger_open_new("p1", "ann"), NULL, NULL), CQRS_OK);
  uv_timer_init(&loop, &r.timer);
  r.timer.data = &r;
  r.deadline = uv_now(&loop) + 10000;
  uv_timer_start(&r.timer, refused_tick, 5, 5);
  while (uv_run(&loop, UV_RUN_ONCE)) {
  }
  assert_int_equal(r.dead, 1);
  assert_string_equal(r.why, "store_failed");
  assert_int_equal(r.calls, 3);
  assert_int_equal(uv_loop_close(&loop), 0);
  cqrs_readmodel_destroy(r.rm);
}

/* Every event of a multi-event commit is findable by type and time through
 * the multikey index on `events` (docs/mongo.md shows the query). */
static void test_every_event_is_found_by_type_and_time(void **state) {
  NEED_MONGO();
  fx_t *fx = *state;
  cqrs_error_t err;
  cqrs_envelope_t *env;
  assert_int_equal(cqrs_envelope_new("ledger", "multi", "cmd-multi", NULL, &env, &err), CQRS_OK);
  ledger_opened_t op = {"ann"};
  ledger_amount_t a = {5};
  cqrs_event_t *events[3];
  assert_int_equal(cqrs_event_new(&ledger_opened, env, NULL, 1, 1700000000000, &op, &events[0], &err), CQRS_OK);
  assert_int_equal(cqrs_event_new(&ledger_credited, env, NULL, 2, 1700000001000, &a, &events[1], &err), CQRS_OK);
  assert_int_equal(cqrs_event_new(&ledger_credited, env, NULL, 3, 1700000002000, &a, &events[2], &err), CQRS_OK);
  cqrs_append_t req = {"ledger", "multi", 0, "cmd-multi", events, 3};
  cqrs_append_result_t res;
  assert_int_equal(cqrs_store_append(fx->s, &req, &res, &err), CQRS_OK);
  for (int i = 0; i < 3; i++) cqrs_event_unref(events[i]);
  cqrs_envelope_unref(env);
  mongoc_client_t *client = mongoc_client_new(test_mongo_uri());
  mongoc_collection_t *coll = mongoc_client_get_collection(client, cqrs_mongo_database(fx->m), "cqrs_events");
  bson_error_t e;
  /* The dotted form (FerretDB 1.24 has no $elemMatch on documents; on
   * MongoDB, $elemMatch ties type and time to one event). */
  struct {
    const char *type;
    int64_t from;
    int64_t want;
  } q[] = {{"ledger.credited", 1700000001500, 1}, {"ledger.credited", 1700000003000, 0},
           {"ledger.opened", 0, 1}, {"ledger.debited", 0, 0}};
  for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) {
    bson_t *filter = BCON_NEW("events.type", BCON_UTF8(q[i].type), "events.timestamp", "{", "$gte",
                              BCON_DATE_TIME(q[i].from), "}");
    int64_t n = mongoc_collection_count_documents(coll, filter, NULL, NULL, NULL, &e);
    if (n < 0) fail_msg("%s", e.message);
    if (n != q[i].want) fail_msg("%s from %lld: %lld commits", q[i].type, (long long)q[i].from, (long long)n);
    bson_destroy(filter);
  }
  mongoc_collection_destroy(coll);
  mongoc_client_destroy(client);
}

/* Concurrent appends of one process go to the server together (group
 * commit); each keeps its own outcome: of several on one stream at one
 * expected version one wins and the others conflict, a command sent by
 * several threads commits once, and the rest commit with consecutive
 * positions. */
#define GROUPERS 8

typedef struct grouper {
  cqrs_store_t *s;
  uv_barrier_t *start;
  int id;
  cqrs_code_t own, contested, repeated;
  bool repeated_duplicate;
} grouper_t;

static cqrs_code_t append_credit(cqrs_store_t *s, const char *stream, int64_t expected, const char *cmd,
                                 bool *duplicate) {
  cqrs_envelope_t *env;
  cqrs_event_t *e;
  cqrs_error_t err;
  ledger_amount_t a = {1};
  assert_int_equal(cqrs_envelope_new("ledger", stream, cmd, NULL, &env, &err), CQRS_OK);
  assert_int_equal(cqrs_event_new(&ledger_credited, env, NULL, expected + 1, 1700000000000, &a, &e, &err), CQRS_OK);
  cqrs_append_t req = {"ledger", stream, expected, cmd, &e, 1};
  cqrs_append_result_t res = {0};
  cqrs_code_t rc = cqrs_store_append(s, &req, &res, &err);
  if (rc && rc != CQRS_ECONFLICT) fprintf(stderr, "append %s: %s\n", cmd, err.message);
  if (duplicate) *duplicate = res.duplicate;
  cqrs_event_unref(e);
  cqrs_envelope_unref(env);
  return rc;
}

static void group_append(void *arg) {
  grouper_t *g = arg;
  char stream[32], cmd[32];
  snprintf(stream, sizeof stream, "own-%d", g->id);
  snprintf(cmd, sizeof cmd, "own-%d", g->id);
  uv_barrier_wait(g->start);
  g->own = append_credit(g->s, stream, 0, cmd, NULL);
  snprintf(cmd, sizeof cmd, "contested-%d", g->id);
  g->contested = append_credit(g->s, "contested", 0, cmd, NULL);
  snprintf(stream, sizeof stream, "repeated-%d", g->id);
  g->repeated = append_credit(g->s, stream, 0, "the-same-command", &g->repeated_duplicate);
}

static void test_concurrent_commits_keep_their_own_outcome(void **state) {
  NEED_MONGO();
  fx_t *fx = *state;
  uv_barrier_t start;
  uv_barrier_init(&start, GROUPERS);
  uv_thread_t t[GROUPERS];
  grouper_t g[GROUPERS];
  for (int i = 0; i < GROUPERS; i++) {
    g[i] = (grouper_t){fx->s, &start, i, 0, 0, 0, false};
    assert_int_equal(uv_thread_create(&t[i], group_append, &g[i]), 0);
  }
  int won = 0, committed = 0;
  for (int i = 0; i < GROUPERS; i++) {
    uv_thread_join(&t[i]);
    assert_int_equal(g[i].own, CQRS_OK);
    assert_true(g[i].contested == CQRS_OK || g[i].contested == CQRS_ECONFLICT);
    won += g[i].contested == CQRS_OK;
    assert_int_equal(g[i].repeated, CQRS_OK);
    committed += !g[i].repeated_duplicate;
  }
  uv_barrier_destroy(&start);
  assert_int_equal(won, 1);
  assert_int_equal(committed, 1);
  int64_t head;
  assert_int_equal(cqrs_store_head(fx->s, &head, NULL), CQRS_OK);
  assert_int_equal(head, GROUPERS + 2);
  assert_int_equal(stream_version(fx->s, "contested"), 1);
}

/* A process that has just started finds the head from the store's note of
 * a recent head, whether the note is recent, lags, or is missing. */
static int64_t fresh_head(fx_t *fx) {
  cqrs_mongo_options_t o = {.database = cqrs_mongo_database(fx->m)};
  cqrs_mongo_t *m;
  cqrs_error_t err;
  assert_int_equal(cqrs_mongo_new(test_mongo_uri(), &o, fx->reg, NULL, &m, &err), CQRS_OK);
  cqrs_store_t *s = NULL;
  cqrs_mongo_store_new(m, &s, NULL);
  int64_t head = -1;
  if (cqrs_store_head(s, &head, &err)) fail_msg("%s", err.message);
  cqrs_store_destroy(s);
  cqrs_mongo_destroy(m);
  return head;
}

static void test_a_fresh_process_finds_the_head(void **state) {
  NEED_MONGO();
  fx_t *fx = *state;
  for (int64_t v = 0; v < 70; v++) {
    char cmd[32];
    snprintf(cmd, sizeof cmd, "h-%lld", (long long)v);
    assert_int_equal(append_credit(fx->s, "h", v, cmd, NULL), CQRS_OK);
  }
  assert_int_equal(fresh_head(fx), 70);
  mongoc_client_t *client = mongoc_client_new(test_mongo_uri());
  mongoc_collection_t *note = mongoc_client_get_collection(client, cqrs_mongo_database(fx->m), "cqrs_events_head");
  bson_t *filter = BCON_NEW("_id", BCON_UTF8("head"));
  int64_t noted = 0;
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(note, filter, NULL, NULL);
  const bson_t *d;
  bson_iter_t it;
  if (mongoc_cursor_next(cur, &d) && bson_iter_init_find(&it, d, "seq")) noted = bson_iter_as_int64(&it);
  mongoc_cursor_destroy(cur);
  assert_int_equal(noted, 64); /* 70 commits, noted every 16 */
  bson_t *lagging = BCON_NEW("$set", "{", "seq", BCON_INT64(3), "}");
  assert_true(mongoc_collection_update_one(note, filter, lagging, NULL, NULL, NULL));
  assert_int_equal(fresh_head(fx), 70);
  assert_true(mongoc_collection_delete_one(note, filter, NULL, NULL, NULL));
  assert_int_equal(fresh_head(fx), 70);
  bson_destroy(lagging);
  bson_destroy(filter);
  mongoc_collection_destroy(note);
  mongoc_client_destroy(client);
}

static bool keep_position(const cqrs_event_t *e, void *data) {
  int64_t *p = data;
  assert_true(p[0] < 16);
  p[1 + p[0]++] = e->position;
  return true;
}

/* A process that has just started reads the feed from any position: from
 * a commit's first one (found through the position index), from inside a
 * commit (a search over commit numbers), past the head (nothing). */
static void test_a_fresh_process_reads_the_feed_from_anywhere(void **state) {
  NEED_MONGO();
  fx_t *fx = *state;
  static const struct {
    const char *id;
    int64_t events;
  } commits[] = {{"a", 1}, {"b", 3}, {"c", 2}, {"d", 1}}; /* positions 1, 2-4, 5-6, 7 */
  for (size_t i = 0; i < sizeof commits / sizeof commits[0]; i++) ledger_fill(fx->s, &ledger_type, commits[i].id, commits[i].events);
  for (int64_t from = 1; from <= 8; from++) {
    cqrs_mongo_options_t o = {.database = cqrs_mongo_database(fx->m)};
    cqrs_mongo_t *m;
    cqrs_store_t *s = NULL;
    cqrs_error_t err;
    assert_int_equal(cqrs_mongo_new(test_mongo_uri(), &o, fx->reg, NULL, &m, &err), CQRS_OK);
    assert_int_equal(cqrs_mongo_store_new(m, &s, NULL), CQRS_OK);
    int64_t seen[17] = {0};
    if (cqrs_store_read_all(s, from, 100, keep_position, seen, &err)) fail_msg("read from %lld: %s", (long long)from, err.message);
    assert_int_equal(seen[0], 8 - from);
    for (int64_t i = 0; i < seen[0]; i++) assert_int_equal(seen[1 + i], from + i);
    cqrs_store_destroy(s);
    cqrs_mongo_destroy(m);
  }
}

/* A commit another process is still inserting (here: taken away) leaves
 * its number missing while later ones are visible: the feed ends before it
 * rather than skip it, so a reader never passes a commit that lands late. */
static bool count_event(const cqrs_event_t *e, void *data) {
  (void)e;
  (*(int *)data)++;
  return true;
}

static void test_the_feed_ends_at_a_missing_commit(void **state) {
  NEED_MONGO();
  fx_t *fx = *state;
  for (int64_t v = 0; v < 8; v++) {
    char cmd[32];
    snprintf(cmd, sizeof cmd, "g-%lld", (long long)v);
    assert_int_equal(append_credit(fx->s, "g", v, cmd, NULL), CQRS_OK);
  }
  mongoc_client_t *client = mongoc_client_new(test_mongo_uri());
  mongoc_collection_t *events = mongoc_client_get_collection(client, cqrs_mongo_database(fx->m), "cqrs_events");
  bson_t *sixth = BCON_NEW("_id", BCON_UTF8("00000000000000000006"));
  assert_true(mongoc_collection_delete_one(events, sixth, NULL, NULL, NULL));
  int n = 0;
  assert_int_equal(cqrs_store_read_all(fx->s, 1, 256, count_event, &n, NULL), CQRS_OK);
  assert_int_equal(n, 5);
  n = 0; /* a longer read, by a range of keys, too */
  assert_int_equal(cqrs_store_read_all(fx->s, 1, 100000, count_event, &n, NULL), CQRS_OK);
  assert_int_equal(n, 5);
  bson_destroy(sixth);
  mongoc_collection_destroy(events);
  mongoc_client_destroy(client);
}

static void test_indexes_exist_and_are_idempotent(void **state) {
  NEED_MONGO();
  fx_t *fx = *state;
  cqrs_error_t err;
  assert_int_equal(cqrs_mongo_ensure_indexes(fx->m, &err), CQRS_OK); /* a second time */
  bson_t names = BSON_INITIALIZER;
  assert_int_equal(cqrs_mongo_index_names(fx->m, "cqrs_events", &names, &err), CQRS_OK);
  char *json = bson_as_relaxed_extended_json(&names, NULL);
  const char *want[] = {"timestamp",          "type_timestamp", "events_type_timestamp", "stream_version",
                        "stream_version_key", "command_id",     "position"};
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    char quoted[64];
    snprintf(quoted, sizeof quoted, "\"%s\"", want[i]);
    if (!strstr(json, quoted)) fail_msg("index %s missing from %s", want[i], json);
  }
  bson_free(json);
  bson_destroy(&names);
  /* Uniqueness on one field each (a compound unique index's check grows
   * with the collection on DocumentDB); the compound one serves reads. */
  mongoc_client_t *client = mongoc_client_new(test_mongo_uri());
  mongoc_collection_t *events = mongoc_client_get_collection(client, cqrs_mongo_database(fx->m), "cqrs_events");
  mongoc_cursor_t *cur = mongoc_collection_find_indexes_with_opts(events, NULL);
  const bson_t *doc;
  int unique = 0;
  while (mongoc_cursor_next(cur, &doc)) {
    bson_iter_t it, key;
    if (!bson_iter_init_find(&it, doc, "unique") || !bson_iter_as_bool(&it)) continue;
    const char *name = bson_iter_init_find(&it, doc, "name") ? bson_iter_utf8(&it, NULL) : "";
    int fields = 0;
    if (bson_iter_init_find(&it, doc, "key") && bson_iter_recurse(&it, &key)) {
      while (bson_iter_next(&key)) fields++;
    }
    if (fields != 1) fail_msg("unique index %s has %d fields", name, fields);
    if (strcmp(name, "stream_version_key") && strcmp(name, "command_id") && strcmp(name, "position"))
      fail_msg("unique index %s is not one of the store's", name);
    unique++;
  }
  assert_int_equal(unique, 3);
  mongoc_cursor_destroy(cur);
  mongoc_collection_destroy(events);
  mongoc_client_destroy(client);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_racing_writers_and_a_catch_up_reader, setup, teardown),
      cmocka_unit_test_setup_teardown(test_two_writers_share_positions, setup, teardown),
      cmocka_unit_test_setup_teardown(test_indexes_exist_and_are_idempotent, setup, teardown),
      cmocka_unit_test_setup_teardown(test_a_commit_over_16_mb_is_too_large, setup, teardown),
      cmocka_unit_test_setup_teardown(test_a_payload_that_cannot_be_encoded_is_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_concurrent_commits_keep_their_own_outcome, setup, teardown),
      cmocka_unit_test_setup_teardown(test_a_fresh_process_finds_the_head, setup, teardown),
      cmocka_unit_test_setup_teardown(test_the_feed_ends_at_a_missing_commit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_a_fresh_process_reads_the_feed_from_anywhere, setup, teardown),
      cmocka_unit_test_setup_teardown(test_a_permanent_store_error_is_dead_lettered, setup, teardown),
      cmocka_unit_test_setup_teardown(test_every_event_is_found_by_type_and_time, setup, teardown),
      cmocka_unit_test(test_a_server_that_is_down),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
