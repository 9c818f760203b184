/* Shared by the billing-admin tests: the real binary run as a separate
 * process against the real server, and direct access to its database. */
#ifndef TEST_ADMIN_FIXTURE_H
#define TEST_ADMIN_FIXTURE_H

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <billing/billing.h>
#include <mongoc/mongoc.h>

#include "billing_mongo.h"
#include "mongo/mongo_fixture.h"

extern char **environ;

typedef struct adm {
  char db[64];
  char uri[256];
  char out[4096 * 16]; /* the last run's stdout */
  char err[4096];      /* and stderr */
  mongoc_client_t *client;
  mongoc_database_t *mdb;
} adm_t;

static inline void adm_open(adm_t *t) {
  memset(t, 0, sizeof *t);
  test_mongo_db(t->db, sizeof t->db);
  const char *base = test_mongo_uri();
  /* The base URI has no path: append the database. */
  snprintf(t->uri, sizeof t->uri, "%s%s%s", base, strchr(base + 10, '/') ? "" : "/", t->db);
  cqrs_mongo_quiet_logs();
  t->client = mongoc_client_new(t->uri);
  assert_non_null(t->client);
  t->mdb = mongoc_client_get_database(t->client, t->db);
}

static inline void adm_close(adm_t *t) {
  mongoc_database_drop(t->mdb, NULL);
  mongoc_database_destroy(t->mdb);
  mongoc_client_destroy(t->client);
}

static inline void slurp(const char *path, char *buf, size_t cap) {
  FILE *f = fopen(path, "r");
  size_t n = f ? fread(buf, 1, cap - 1, f) : 0;
  buf[n] = '\0';
  if (f) fclose(f);
  unlink(path);
}

/* Starts billing-admin with --uri and `args` (NULL-terminated); returns the pid. */
static inline pid_t adm_spawn(adm_t *t, const char *uri, const char *const *args, const char *out, const char *err) {
  const char *argv[32];
  int n = 0;
  argv[n++] = BILLING_ADMIN;
  if (uri) {
    argv[n++] = "--uri";
    argv[n++] = uri;
  }
  for (int i = 0; args[i] && n < 31; i++) argv[n++] = args[i];
  argv[n] = NULL;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_addopen(&fa, 2, err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  pid_t pid;
  assert_int_equal(posix_spawn(&pid, BILLING_ADMIN, &fa, NULL, (char *const *)argv, environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  (void)t;
  return pid;
}

static inline int adm_wait(adm_t *t, pid_t pid, const char *out, const char *err) {
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  slurp(out, t->out, sizeof t->out);
  slurp(err, t->err, sizeof t->err);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Runs billing-admin on uri (NULL: none given) and returns its exit code. */
static inline int adm_run_on(adm_t *t, const char *uri, const char *const *args) {
  char out[64], err[64];
  snprintf(out, sizeof out, "/tmp/adm_out_%d", (int)getpid());
  snprintf(err, sizeof err, "/tmp/adm_err_%d", (int)getpid());
  int rc = adm_wait(t, adm_spawn(t, uri, args, out, err), out, err);
  if (getenv("ADMIN_TEST_VERBOSE")) fprintf(stderr, "[%d] %s%s\n", rc, t->out, t->err);
  return rc;
}
#define ADM(t, ...) adm_run_on((t), (t)->uri, (const char *const[]){__VA_ARGS__, NULL})

static inline mongoc_collection_t *adm_coll(adm_t *t, const char *name) {
  return mongoc_database_get_collection(t->mdb, name);
}

static inline int64_t adm_count(adm_t *t, const char *coll, const bson_t *filter) {
  mongoc_collection_t *c = adm_coll(t, coll);
  bson_t empty = BSON_INITIALIZER;
  bson_error_t e;
  int64_t n = mongoc_collection_count_documents(c, filter ? filter : &empty, NULL, NULL, NULL, &e);
  if (n < 0) fail_msg("count %s: %s", coll, e.message);
  mongoc_collection_destroy(c);
  return n;
}

/* Copies the document `id` of `coll` into out (initialised); false if none. */
static inline bool adm_get(adm_t *t, const char *coll, const char *id, bson_t *out) {
  mongoc_collection_t *c = adm_coll(t, coll);
  bson_t filter = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "_id", id);
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, &filter, NULL, NULL);
  const bson_t *doc;
  bool found = mongoc_cursor_next(cur, &doc);
  if (found) bson_copy_to(doc, out);
  mongoc_cursor_destroy(cur);
  bson_destroy(&filter);
  mongoc_collection_destroy(c);
  return found;
}

static inline const char *adm_str(const bson_t *doc, const char *path) {
  bson_iter_t it, v;
  if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &v) && BSON_ITER_HOLDS_UTF8(&v))
    return bson_iter_utf8(&v, NULL);
  return NULL;
}

static inline int64_t adm_int(const bson_t *doc, const char *path) {
  bson_iter_t it, v;
  if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &v) && BSON_ITER_HOLDS_NUMBER(&v))
    return bson_iter_as_int64(&v);
  return INT64_MIN;
}

/* The key store of the billing application on `m` (billing_keys, as the
 * tool and the samples use it), given to `store` and to `rm` (either may be
 * NULL): what any process reading or writing customers' personal data
 * holds. Destroy it after them. */
static inline cqrs_keys_t *adm_keys(cqrs_mongo_t *m, const cqrs_registry_t *reg, cqrs_store_t *store,
                                    cqrs_readmodel_t *rm) {
  cqrs_keys_t *keys;
  cqrs_error_t e;
  if (billing_mongo_keys(m, &keys, &e) || (store && cqrs_store_set_keys(store, keys, reg, &e)) ||
      (rm && billing_seal_read_model(rm, NULL, keys, &e)))
    fail_msg("%s", e.message);
  return keys;
}

/* The integer after `key":` in the last run's JSON output. */
static inline long long adm_json_int(const adm_t *t, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\" : ", key);
  const char *p = strstr(t->out, pat);
  if (!p) fail_msg("no %s in: %s", key, t->out);
  p += strlen(pat);
  if (*p == '{') p = strchr(p, ':') + 2; /* {"$numberLong": "n"} */
  if (*p == '"') p++;
  return atoll(p);
}

/* ---- writing the database behind the tool's back ---- */

/* Applies the update `json` (e.g. {"$set": {"amount": 1}}) to the document
 * `id` of `coll`; with `upsert`, creates it when absent. */
static inline void update_json(adm_t *t, const char *coll, const char *id, const char *json, bool upsert) {
  mongoc_collection_t *c = adm_coll(t, coll);
  bson_error_t e;
  bson_t *u = bson_new_from_json((const uint8_t *)json, -1, &e);
  if (!u) fail_msg("%s: %s", json, e.message);
  bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "_id", id);
  BSON_APPEND_BOOL(&opts, "upsert", upsert);
  if (!mongoc_collection_update_one(c, &filter, u, &opts, NULL, &e)) fail_msg("%s", e.message);
  bson_destroy(&filter);
  bson_destroy(&opts);
  bson_destroy(u);
  mongoc_collection_destroy(c);
}

static inline void set_field(adm_t *t, const char *coll, const char *id, const char *key, int64_t v) {
  char json[256];
  snprintf(json, sizeof json, "{\"$set\": {\"%s\": {\"$numberLong\": \"%lld\"}}}", key, (long long)v);
  update_json(t, coll, id, json, false);
}

static inline void delete_doc(adm_t *t, const char *coll, const char *id) {
  mongoc_collection_t *c = adm_coll(t, coll);
  bson_t filter = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "_id", id);
  bson_error_t e;
  if (!mongoc_collection_delete_one(c, &filter, NULL, NULL, &e)) fail_msg("%s", e.message);
  bson_destroy(&filter);
  mongoc_collection_destroy(c);
}

static inline void insert_json(adm_t *t, const char *coll, const char *json) {
  mongoc_collection_t *c = adm_coll(t, coll);
  bson_error_t e;
  bson_t *doc = bson_new_from_json((const uint8_t *)json, -1, &e);
  assert_non_null(doc);
  if (!mongoc_collection_insert_one(c, doc, NULL, NULL, &e)) fail_msg("%s", e.message);
  bson_destroy(doc);
  mongoc_collection_destroy(c);
}

/* ---- the read path behind mongodb_cqs_enabled, as an application runs it ---- */

typedef struct reader {
  uv_loop_t loop;
  cqrs_registry_t *reg;
  cqrs_mongo_t *m;
  cqrs_readmodel_t *rm;
  cqrs_keys_t *keys;
  billing_flags_t *flags;
} reader_t;

static inline void reader_open(reader_t *r, adm_t *t) {
  uv_loop_init(&r->loop);
  cqrs_registry_new(&r->reg, NULL);
  cqrs_mongo_options_t o = {.database = t->db, .keys = "billing_keys"};
  cqrs_error_t e;
  if (cqrs_mongo_new(t->uri, &o, r->reg, &r->loop, &r->m, &e)) fail_msg("%s", e.message);
  cqrs_mongo_readmodel_new(r->m, &r->rm, NULL);
  r->keys = adm_keys(r->m, r->reg, NULL, r->rm);
  r->flags = billing_flags_new(r->rm, 0); /* no caching: each read sees the flag just set */
  assert_non_null(r->flags);
}

static inline void reader_close(reader_t *r) {
  billing_flags_destroy(r->flags);
  cqrs_readmodel_destroy(r->rm);
  cqrs_keys_destroy(r->keys);
  cqrs_mongo_destroy(r->m);
  cqrs_registry_destroy(r->reg);
  assert_int_equal(uv_loop_close(&r->loop), 0);
}

/* ---- the billing application itself: commands, and its projections ---- */

typedef struct app {
  uv_loop_t loop;
  cqrs_registry_t *reg;
  cqrs_mongo_t *m;
  cqrs_store_t *store;
  cqrs_keys_t *keys;
  cqrs_readmodel_t *rm;
  cqrs_checkpoint_store_t *cp;
  cqrs_dispatcher_t *d;
  billing_t *billing;
} app_t;

/* With its projections (project), or as a writer only, whose commits are
 * another process's as far as a running sample is concerned. */
static inline void app_open_with(app_t *a, adm_t *t, bool project) {
  memset(a, 0, sizeof *a);
  uv_loop_init(&a->loop);
  cqrs_registry_new(&a->reg, NULL);
  assert_int_equal(billing_register(a->reg, NULL), CQRS_OK);
  cqrs_mongo_options_t o = {.database = t->db, .events = "billing_commands", .snapshots = "billing_snapshots",
                            .checkpoints = "billing_checkpoints", .dead_letters = "billing_dead_letters",
                            .keys = "billing_keys"};
  cqrs_error_t e;
  if (cqrs_mongo_new(t->uri, &o, a->reg, &a->loop, &a->m, &e)) fail_msg("%s", e.message);
  cqrs_mongo_store_new(a->m, &a->store, NULL);
  if (project) {
    cqrs_mongo_readmodel_new(a->m, &a->rm, NULL);
    cqrs_mongo_checkpoint_store_new(a->m, &a->cp, NULL);
  }
  a->keys = adm_keys(a->m, a->reg, a->store, NULL);
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

static inline void app_open(app_t *a, adm_t *t) { app_open_with(a, t, true); }

static inline void app_close(app_t *a) {
  cqrs_dispatcher_close(a->d, NULL, NULL);
  uv_run(&a->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&a->loop), 0);
  billing_destroy(a->billing);
  cqrs_checkpoint_store_destroy(a->cp);
  cqrs_readmodel_destroy(a->rm);
  cqrs_store_destroy(a->store);
  cqrs_keys_destroy(a->keys);
  cqrs_mongo_destroy(a->m);
  cqrs_registry_destroy(a->reg);
}

typedef struct waited {
  bool done;
  cqrs_code_t status;
} waited_t;

static inline void on_waited(cqrs_code_t status, void *data) {
  waited_t *w = data;
  w->status = status;
  w->done = true;
}

/* Every projection of the application has handled every event in the
 * store: `check` compares caught-up projections only. */
static inline void app_tick(uv_timer_t *t) { (void)t; }

static inline void app_catch_up(app_t *a) {
  int64_t head;
  cqrs_error_t e;
  if (cqrs_store_head(a->store, &head, &e)) fail_msg("%s", e.message);
  waited_t w = {false, CQRS_OK};
  assert_int_equal(cqrs_projection_wait(a->d, NULL, head, 60000, on_waited, &w), CQRS_OK);
  while (!w.done) uv_run(&a->loop, UV_RUN_ONCE);
  assert_int_equal(w.status, CQRS_OK);
  /* Handled is not yet saved: a checkpoint may trail by a batch (an event
   * retried off the projection's path is saved once it went through), and
   * what a close leaves behind is applied again on the next start. `check`
   * reads the checkpoints: wait, the loop running, until they are saved
   * where the projections are. */
  /* billing.invoices only: check counts billing.balances caught up when
   * none of its events is past its checkpoint, which may trail its position. */
  static const char *const names[] = {"billing.invoices"};
  uv_timer_t tick;
  uv_timer_init(&a->loop, &tick);
  uint64_t until = uv_now(&a->loop) + 60000;
  for (size_t i = 0; i < sizeof names / sizeof names[0];) {
    int64_t at = 0, handled = cqrs_projection_position(a->d, names[i]);
    if (cqrs_checkpoint_store_load(a->cp, names[i], &at, &e)) fail_msg("%s", e.message);
    if (at >= handled) {
      i++;
      continue;
    }
    if (uv_now(&a->loop) > until)
      fail_msg("checkpoint of %s at %lld, not %lld", names[i], (long long)at, (long long)handled);
    uv_timer_start(&tick, app_tick, 10, 0); /* polls the checkpoint: a wait for a condition, bounded */
    uv_run(&a->loop, UV_RUN_ONCE);
  }
  uv_close((uv_handle_t *)&tick, NULL);
  uv_run(&a->loop, UV_RUN_NOWAIT);
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
