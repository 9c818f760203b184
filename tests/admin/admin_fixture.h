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

#endif
