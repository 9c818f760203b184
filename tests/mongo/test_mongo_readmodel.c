#include <mongoc/mongoc.h>
#include <uv.h>

#include <cqrs/backend.h>

#include "framework/ledger.h"
#include "mongo_fixture.h"

typedef struct fx {
  cqrs_registry_t *reg;
  uv_loop_t loop;
  cqrs_mongo_t *m;
  cqrs_readmodel_t *rm;
  cqrs_checkpoint_store_t *cp;
} fx_t;

static int setup(void **state) {
  if (!test_mongo_uri()) {
    *state = NULL;
    return 0;
  }
  fx_t *fx = calloc(1, sizeof *fx);
  fx->reg = ledger_registry();
  uv_loop_init(&fx->loop);
  fx->m = test_mongo_open(fx->reg, &fx->loop, NULL);
  cqrs_mongo_readmodel_new(fx->m, &fx->rm, NULL);
  cqrs_mongo_checkpoint_store_new(fx->m, &fx->cp, NULL);
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  fx_t *fx = *state;
  if (!fx) return 0;
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&fx->loop), 0);
  cqrs_checkpoint_store_destroy(fx->cp);
  cqrs_readmodel_destroy(fx->rm);
  test_mongo_close(fx->m);
  cqrs_registry_destroy(fx->reg);
  free(fx);
  return 0;
}

static bson_t *json(const char *s) {
  bson_error_t e;
  bson_t *b = bson_new_from_json((const uint8_t *)s, -1, &e);
  if (!b) fail_msg("bad json %s", s);
  return b;
}

static void put(fx_t *fx, const char *id, const char *doc, int64_t pos, bool want) {
  bson_t *b = json(doc);
  bool applied;
  cqrs_error_t err;
  if (cqrs_readmodel_put(fx->rm, "inv", id, b, pos, &applied, &err)) fail_msg("%s", err.message);
  assert_int_equal(applied, want);
  bson_destroy(b);
}

static int64_t int_at(fx_t *fx, const char *id, const char *path) {
  bson_t out;
  bool found;
  assert_int_equal(cqrs_readmodel_get(fx->rm, "inv", id, &out, &found, NULL), CQRS_OK);
  assert_true(found);
  bson_iter_t it, v;
  assert_true(bson_iter_init(&it, &out) && bson_iter_find_descendant(&it, path, &v));
  int64_t n = bson_iter_as_int64(&v);
  bson_destroy(&out);
  return n;
}

static void test_writes_are_idempotent_by_position(void **state) {
  NEED_MONGO();
  fx_t *fx = *state;
  put(fx, "i1", "{\"amount\":100,\"customer\":{\"id\":\"c1\",\"email\":\"a@x\"}}", 5, true);
  put(fx, "i1", "{\"amount\":999}", 5, false);
  put(fx, "i1", "{\"amount\":999}", 4, false);
  assert_int_equal(int_at(fx, "i1", "amount"), 100);
  put(fx, "i1", "{\"amount\":200,\"customer\":{\"id\":\"c1\",\"email\":\"a@x\"}}", 6, true);
  bson_t *set = json("{\"customer.email\":\"b@x\",\"status\":\"paid\"}");
  bool applied;
  assert_int_equal(cqrs_readmodel_patch(fx->rm, "inv", "i1", set, 7, &applied, NULL), CQRS_OK);
  assert_true(applied);
  assert_int_equal(cqrs_readmodel_patch(fx->rm, "inv", "i1", set, 7, &applied, NULL), CQRS_OK);
  assert_false(applied);
  cqrs_error_t err;
  assert_int_equal(cqrs_readmodel_patch(fx->rm, "inv", "ghost", set, 8, &applied, &err), CQRS_ENOT_FOUND);
  assert_int_equal(int_at(fx, "i1", CQRS_RM_POSITION), 7);
  assert_int_equal(int_at(fx, "i1", "amount"), 200);
  bson_destroy(set);
}

typedef struct ids {
  char v[8][8];
  size_t n;
} ids_t;

static bool collect(const bson_t *doc, void *data) {
  ids_t *ids = data;
  bson_iter_t it;
  if (bson_iter_init_find(&it, doc, "_id") && ids->n < 8) snprintf(ids->v[ids->n++], 8, "%s", bson_iter_utf8(&it, NULL));
  return true;
}

static void test_find_and_patch_where(void **state) {
  NEED_MONGO();
  fx_t *fx = *state;
  put(fx, "i1", "{\"c\":\"x\",\"s\":\"paid\",\"t\":{\"$date\":1000}}", 1, true);
  put(fx, "i2", "{\"c\":\"x\",\"s\":\"paid\",\"t\":{\"$date\":3000}}", 2, true);
  put(fx, "i3", "{\"c\":\"x\",\"s\":\"open\",\"t\":{\"$date\":2000}}", 3, true);
  put(fx, "i4", "{\"c\":\"y\",\"s\":\"paid\",\"t\":{\"$date\":4000}}", 4, true);
  bson_t *filter = json("{\"c\":\"x\",\"s\":\"paid\"}");
  cqrs_find_t q = {filter, "t", true, 1};
  ids_t ids = {{{0}}, 0};
  assert_int_equal(cqrs_readmodel_find(fx->rm, "inv", &q, collect, &ids, NULL), CQRS_OK);
  assert_int_equal(ids.n, 1);
  assert_string_equal(ids.v[0], "i2");
  bson_t *by_c = json("{\"c\":\"x\"}"), *set = json("{\"mail\":\"new\"}");
  size_t count;
  assert_int_equal(cqrs_readmodel_patch_where(fx->rm, "inv", by_c, set, 10, &count, NULL), CQRS_OK);
  assert_int_equal(count, 3);
  assert_int_equal(cqrs_readmodel_patch_where(fx->rm, "inv", by_c, set, 10, &count, NULL), CQRS_OK);
  assert_int_equal(count, 0);
  bson_destroy(by_c);
  bson_destroy(set);
  bson_destroy(filter);
}

static void test_checkpoints(void **state) {
  NEED_MONGO();
  fx_t *fx = *state;
  int64_t pos = -1;
  assert_int_equal(cqrs_checkpoint_store_load(fx->cp, "p", &pos, NULL), CQRS_OK);
  assert_int_equal(pos, 0);
  assert_int_equal(cqrs_checkpoint_store_save(fx->cp, "p", 42, NULL), CQRS_OK);
  assert_int_equal(cqrs_checkpoint_store_save(fx->cp, "p", 43, NULL), CQRS_OK);
  assert_int_equal(cqrs_checkpoint_store_load(fx->cp, "p", &pos, NULL), CQRS_OK);
  assert_int_equal(pos, 43);
}

/* A control record as 0.2.0 kept it, inside the checkpoint's document, is
 * read while no part of it was written since; a part written since wins,
 * and the other part is still the old one's. */
static void test_control_record_of_0_2_0(void **state) {
  NEED_MONGO();
  fx_t *fx = *state;
  mongoc_client_t *client = mongoc_client_new(test_mongo_uri());
  mongoc_collection_t *coll = mongoc_client_get_collection(client, cqrs_mongo_database(fx->m), "cqrs_checkpoints");
  bson_t *old = json("{\"_id\": \"p\", \"position\": 5, \"control\": {\"paused\": true, \"request\": 3, "
                     "\"action\": 1, \"position\": 0, \"done\": 2, \"state\": \"paused\", \"reached\": 5}}");
  bson_error_t e;
  if (!mongoc_collection_insert_one(coll, old, NULL, NULL, &e)) fail_msg("%s", e.message);
  bson_destroy(old);
  mongoc_collection_destroy(coll);
  mongoc_client_destroy(client);
  cqrs_projection_control_t c;
  bool found = false;
  assert_int_equal(cqrs_checkpoint_store_control_load(fx->cp, "p", &c, &found, NULL), CQRS_OK);
  assert_true(found);
  assert_true(c.paused);
  assert_int_equal(c.request, 3);
  assert_int_equal(c.action, CQRS_PROJECTION_RESET);
  assert_int_equal(c.done, 2);
  assert_string_equal(c.state, "paused");
  assert_int_equal(c.reached, 5);
  /* The projection reports: its part is the new one, the request the old. */
  cqrs_projection_control_t r;
  memset(&r, 0, sizeof r);
  r.done = 3;
  snprintf(r.state, sizeof r.state, "running");
  r.reached = 9;
  assert_int_equal(cqrs_checkpoint_store_control_save(fx->cp, "p", &r, CQRS_CONTROL_REPORT, NULL), CQRS_OK);
  memset(&c, 0, sizeof c);
  assert_int_equal(cqrs_checkpoint_store_control_load(fx->cp, "p", &c, &found, NULL), CQRS_OK);
  assert_true(c.paused);
  assert_int_equal(c.request, 3);
  assert_int_equal(c.done, 3);
  assert_string_equal(c.state, "running");
  assert_int_equal(c.reached, 9);
  int64_t pos = 0;
  assert_int_equal(cqrs_checkpoint_store_load(fx->cp, "p", &pos, NULL), CQRS_OK);
  assert_int_equal(pos, 5);
}

/* A credit of 5 to "a" (unref it). */
static cqrs_event_t *a_credit(void) {
  cqrs_envelope_t *env;
  assert_int_equal(cqrs_envelope_new("ledger", "a", "c", NULL, &env, NULL), CQRS_OK);
  cqrs_event_t *e;
  ledger_amount_t a = {5};
  assert_int_equal(cqrs_event_new(&ledger_credited, env, NULL, 1, 0, &a, &e, NULL), CQRS_OK);
  cqrs_envelope_unref(env);
  return e;
}

/* One dead letter of a credit to "a", from subscriber "proj". */
static void send_dead_letter(cqrs_mongo_t *m) {
  cqrs_event_t *e = a_credit();
  cqrs_error_t why;
  cqrs_error_set(&why, CQRS_EHANDLER, "boom");
  cqrs_mongo_dead_letter("proj", e, &why, m);
  cqrs_event_unref(e);
}

static void test_dead_letters_are_kept(void **state) {
  NEED_MONGO();
  fx_t *fx = *state;
  send_dead_letter(fx->m);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  /* Read it back through a read model view of the same database. */
  bson_t *filter = json("{\"subscriber\":\"proj\",\"error.message\":\"boom\",\"event.type\":\"ledger.credited\"}");
  cqrs_find_t q = {filter, NULL, false, 0};
  ids_t ids = {{{0}}, 0};
  int n = 0;
  (void)ids;
  assert_int_equal(cqrs_readmodel_find(fx->rm, "cqrs_dead_letters", &q, collect, &ids, NULL), CQRS_OK);
  n = (int)ids.n;
  assert_int_equal(n, 1);
  bson_destroy(filter);
}

/* Through the sink with figures: how often it failed, and since when. */
static void test_dead_letters_keep_their_attempts(void **state) {
  NEED_MONGO();
  fx_t *fx = *state;
  cqrs_event_t *e = a_credit();
  cqrs_error_t why;
  cqrs_error_set(&why, CQRS_EHANDLER, "boom again");
  cqrs_dead_letter_t dl = {.subscriber = "proj", .event = e, .error = &why, .attempts = 3,
                           .first_failed_at = 1700000000000};
  cqrs_mongo_dead_letter_info(&dl, fx->m);
  cqrs_event_unref(e);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  bson_t *filter = json("{\"subscriber\":\"proj\",\"error.message\":\"boom again\",\"attempts\":3,"
                        "\"firstFailedAt\":{\"$date\":{\"$numberLong\":\"1700000000000\"}}}");
  cqrs_find_t q = {filter, NULL, false, 0};
  ids_t ids = {{{0}}, 0};
  assert_int_equal(cqrs_readmodel_find(fx->rm, "cqrs_dead_letters", &q, collect, &ids, NULL), CQRS_OK);
  assert_int_equal(ids.n, 1);
  bson_destroy(filter);
}

/* The log handler runs on a pool thread here. */
typedef struct logged {
  uv_mutex_t lock;
  int errors;
  char last[512];
} logged_t;

static void capture_log(cqrs_log_level_t level, const char *domain, const char *message, void *data) {
  logged_t *l = data;
  uv_mutex_lock(&l->lock);
  if (level == CQRS_LOG_ERROR && !strcmp(domain, "mongo")) {
    l->errors++;
    snprintf(l->last, sizeof l->last, "%s", message);
  }
  uv_mutex_unlock(&l->lock);
}

/* A dead letter that cannot be written is said through the log hook, with
 * what it was about; the library prints nothing. */
static void test_a_lost_dead_letter_is_logged(void **state) {
  (void)state;
  cqrs_registry_t *reg = ledger_registry();
  uv_loop_t loop;
  uv_loop_init(&loop);
  cqrs_mongo_t *m;
  cqrs_error_t err;
  /* Nothing listens on port 9 of the loopback. */
  cqrs_mongo_options_t o = {.server_selection_timeout_ms = 200};
  assert_int_equal(cqrs_mongo_new("mongodb://127.0.0.1:9/x", &o, reg, &loop, &m, &err), CQRS_OK);
  logged_t logged = {.errors = 0};
  uv_mutex_init(&logged.lock);
  cqrs_log_set_handler(capture_log, &logged);
  send_dead_letter(m);
  uv_run(&loop, UV_RUN_DEFAULT);
  cqrs_log_set_handler(NULL, NULL);
  assert_int_equal(logged.errors, 1);
  assert_non_null(strstr(logged.last, "dead letter of proj"));
  assert_non_null(strstr(logged.last, "ledger.credited"));
  uv_mutex_destroy(&logged.lock);
  cqrs_mongo_destroy(m);
  assert_int_equal(uv_loop_close(&loop), 0);
  cqrs_registry_destroy(reg);
}

/* Destroying the connection waits for the dead letters it is writing: the
 * one sent just before is in the database afterwards. */
static void test_destroy_waits_for_dead_letters(void **state) {
  NEED_MONGO();
  (void)state;
  cqrs_registry_t *reg = ledger_registry();
  uv_loop_t loop;
  uv_loop_init(&loop);
  char db[64];
  test_mongo_db(db, sizeof db);
  cqrs_mongo_options_t o = {.database = db};
  cqrs_mongo_t *m;
  cqrs_error_t err;
  if (cqrs_mongo_new(test_mongo_uri(), &o, reg, &loop, &m, &err)) fail_msg("%s", err.message);
  send_dead_letter(m);
  cqrs_mongo_destroy(m); /* the loop has not run: the write is on the pool */
  if (cqrs_mongo_new(test_mongo_uri(), &o, reg, NULL, &m, &err)) fail_msg("%s", err.message);
  cqrs_readmodel_t *rm;
  assert_int_equal(cqrs_mongo_readmodel_new(m, &rm, NULL), CQRS_OK);
  bson_t *filter = json("{\"subscriber\":\"proj\",\"error.message\":\"boom\"}");
  cqrs_find_t q = {filter, NULL, false, 0};
  ids_t ids = {{{0}}, 0};
  assert_int_equal(cqrs_readmodel_find(rm, "cqrs_dead_letters", &q, collect, &ids, NULL), CQRS_OK);
  assert_int_equal(ids.n, 1);
  bson_destroy(filter);
  cqrs_readmodel_destroy(rm);
  test_mongo_close(m);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  cqrs_registry_destroy(reg);
}

int main(void) {
  test_mongo_uri();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_writes_are_idempotent_by_position, setup, teardown),
      cmocka_unit_test_setup_teardown(test_find_and_patch_where, setup, teardown),
      cmocka_unit_test_setup_teardown(test_checkpoints, setup, teardown),
      cmocka_unit_test_setup_teardown(test_control_record_of_0_2_0, setup, teardown),
      cmocka_unit_test_setup_teardown(test_dead_letters_are_kept, setup, teardown),
      cmocka_unit_test_setup_teardown(test_dead_letters_keep_their_attempts, setup, teardown),
      cmocka_unit_test(test_a_lost_dead_letter_is_logged),
      cmocka_unit_test(test_destroy_waits_for_dead_letters),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
