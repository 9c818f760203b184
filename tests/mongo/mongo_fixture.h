/* Shared by the MongoDB tests: the server comes from MONGODB_URI; without
 * one the tests are skipped with a message, except in CI where they fail. */
#ifndef TEST_MONGO_FIXTURE_H
#define TEST_MONGO_FIXTURE_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cqrs/backend.h>
#include <cqrs/mongo.h>

/* The server's base URI (no database), or NULL after printing why. */
static inline const char *test_mongo_uri(void) {
  const char *uri = getenv("MONGODB_URI");
  if (uri && *uri) return uri;
  const char *ci = getenv("CI");
  if (ci && !strcmp(ci, "true")) {
    fprintf(stderr, "MONGODB_URI is not set, and CI=true: the MongoDB tests are required here\n");
    exit(1);
  }
  fprintf(stderr, "MongoDB tests skipped: set MONGODB_URI=mongodb://host:port, or run scripts/test.sh, "
                  "which starts FerretDB\n");
  return NULL;
}

/* Skips the calling test when there is no server. */
#define NEED_MONGO()                 \
  do {                               \
    if (!test_mongo_uri()) skip();   \
  } while (0)

/* A database name of its own for each use: cqrs_t_<pid>_<n>. */
static inline void test_mongo_db(char *buf, size_t cap) {
  static int n;
  snprintf(buf, cap, "cqrs_t_%d_%d", (int)getpid(), ++n);
}

/* A connection on a fresh database, with the store's indexes. */
static inline cqrs_mongo_t *test_mongo_open(const cqrs_registry_t *reg, uv_loop_t *loop, const cqrs_mongo_options_t *base) {
  char db[64];
  test_mongo_db(db, sizeof db);
  cqrs_mongo_options_t o = {0};
  if (base) o = *base;
  o.database = db;
  cqrs_mongo_t *m;
  cqrs_error_t err;
  cqrs_mongo_quiet_logs();
  if (cqrs_mongo_new(test_mongo_uri(), &o, reg, loop, &m, &err)) fail_msg("%s", err.message);
  if (cqrs_mongo_ensure_indexes(m, &err)) fail_msg("%s", err.message);
  return m;
}

/* MongoDB leases on `clock` that a process of a test calls on its loop
 * thread (declared non-blocking: the loop waits for each call), where the
 * test moves that clock: so no lease call is in flight while the clock
 * moves, which could claim a term by the moved clock that the dispatcher,
 * having sent the call before, counts as run out at once. For the tests
 * of several processes, whose lease clocks stand still until the test
 * moves them; the lease thread of a blocking store is tested in-process
 * (tests/framework/test_lease.c). */
static cqrs_code_t loop_acquire(void *impl, const char *name, const char *owner, uint64_t ttl, int64_t *token,
                                cqrs_error_t *err) {
  return cqrs_lease_store_acquire(impl, name, owner, ttl, token, err);
}
static cqrs_code_t loop_renew(void *impl, const char *name, const char *owner, int64_t token, uint64_t ttl,
                              cqrs_error_t *err) {
  return cqrs_lease_store_renew(impl, name, owner, token, ttl, err);
}
static cqrs_code_t loop_release(void *impl, const char *name, const char *owner, int64_t token, cqrs_error_t *err) {
  return cqrs_lease_store_release(impl, name, owner, token, err);
}
static void loop_destroy(void *impl) { cqrs_lease_store_destroy(impl); }
static const cqrs_lease_ops_t loop_lease_ops = {.blocking = false, .acquire = loop_acquire, .renew = loop_renew, .release = loop_release, .destroy = loop_destroy};

static inline cqrs_code_t test_mongo_leases_on_loop(cqrs_mongo_t *m, cqrs_clock_t *clock, cqrs_lease_store_t **out,
                                                    cqrs_error_t *err) {
  cqrs_lease_store_t *inner;
  cqrs_code_t rc = cqrs_mongo_lease_store_new_with_clock(m, clock, &inner, err);
  return rc ? rc : cqrs_lease_store_new(&loop_lease_ops, inner, out, err);
}

static inline void test_mongo_close(cqrs_mongo_t *m) {
  cqrs_error_t err;
  if (cqrs_mongo_drop_database(m, &err)) fprintf(stderr, "drop: %s\n", err.message);
  cqrs_mongo_destroy(m);
}

#endif
