#include <stdatomic.h>
#include <uv.h>

#include "framework/ledger.h"
#include "mongo_fixture.h"
#include "store_conformance.h"

/* ---- the conformance suite, each test on a database of its own ---- */

typedef struct opened {
  cqrs_mongo_t *m;
  cqrs_store_t *s;
} opened_t;

static opened_t current;

static cqrs_store_t *create(const cqrs_registry_t *reg, void *data) {
  (void)data;
  current.m = test_mongo_open(reg, NULL, NULL);
  current.s = cqrs_mongo_store_new(current.m);
  return current.s;
}

static void dispose(cqrs_store_t *s, void *data) {
  (void)data;
  cqrs_store_destroy(s);
  test_mongo_close(current.m);
  current.m = NULL;
}

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
  fx->s = cqrs_mongo_store_new(fx->m);
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
  cqrs_store_t *s2 = cqrs_mongo_store_new(m2);
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
  cqrs_store_t *s = cqrs_mongo_store_new(m);
  int64_t head;
  assert_int_equal(cqrs_store_head(s, &head, &err), CQRS_ESTORE);
  assert_int_equal(err.domain, CQRS_DOMAIN_STORE);
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

static void test_indexes_exist_and_are_idempotent(void **state) {
  NEED_MONGO();
  fx_t *fx = *state;
  cqrs_error_t err;
  assert_int_equal(cqrs_mongo_ensure_indexes(fx->m, &err), CQRS_OK); /* a second time */
  bson_t names = BSON_INITIALIZER;
  assert_int_equal(cqrs_mongo_index_names(fx->m, "cqrs_events", &names, &err), CQRS_OK);
  char *json = bson_as_relaxed_extended_json(&names, NULL);
  const char *want[] = {"timestamp", "type_timestamp", "stream_version", "command_id", "position"};
  for (size_t i = 0; i < 5; i++) {
    char quoted[64];
    snprintf(quoted, sizeof quoted, "\"%s\"", want[i]);
    if (!strstr(json, quoted)) fail_msg("index %s missing from %s", want[i], json);
  }
  bson_free(json);
  bson_destroy(&names);
}

int main(void) {
  int failures = 0;
  if (test_mongo_uri()) {
    conformance_factory_t f = {"mongodb store conformance", create, dispose, NULL};
    failures += conformance_run(&f);
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_racing_writers_and_a_catch_up_reader, setup, teardown),
      cmocka_unit_test_setup_teardown(test_two_writers_share_positions, setup, teardown),
      cmocka_unit_test_setup_teardown(test_indexes_exist_and_are_idempotent, setup, teardown),
      cmocka_unit_test(test_a_server_that_is_down),
  };
  return failures + cmocka_run_group_tests(tests, NULL, NULL);
}
