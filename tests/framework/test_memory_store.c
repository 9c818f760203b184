#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include <cqrs/backend.h>

#include "ledger.h"
#include "same_event.h"

static void test_overhead_per_event_is_bounded(void **state) {
  (void)state;
  cqrs_store_t *s = NULL;
  cqrs_memory_store_new(&s, NULL);
  size_t empty = cqrs_memory_store_overhead(s);
  ledger_fill(s, &ledger_type, "big", 20000);
  size_t per_event = (cqrs_memory_store_overhead(s) - empty) / 20000;
  assert_true(per_event > 0);
  assert_true(per_event <= 256);
  cqrs_store_destroy(s);
  assert_int_equal(cqrs_memory_store_overhead(NULL), 0);
}

typedef struct copies {
  const cqrs_event_t *e[8];
  size_t n;
} copies_t;

static bool take(const cqrs_event_t *e, void *data) {
  copies_t *c = data;
  if (c->n < 8) c->e[c->n++] = cqrs_event_ref(e);
  return true;
}

static void copies_clear(copies_t *c) {
  for (size_t i = 0; i < c->n; i++) cqrs_event_unref(c->e[i]);
  c->n = 0;
}

typedef struct expect {
  cqrs_event_t **want;
  size_t n;
} expect_t;

/* Compares without keeping: the store may build the next event in the same
 * block. */
static bool compare(const cqrs_event_t *e, void *data) {
  expect_t *x = data;
  assert_same_event(e, x->want[x->n++]);
  return true;
}

/* The store keeps events in a compact form and builds them again on read:
 * every field comes back, whatever the ids (generated or not), the
 * envelopes (several in one commit, a correlation of its own, a command id
 * that is not the causation id), the payloads (all zero, a high last byte,
 * trailing zeros), and for what the form cannot say (an unknown type's raw
 * document, an envelope of another stream). An event kept from a read
 * outlives the store. */
static void test_events_read_back_exactly(void **state) {
  (void)state;
  cqrs_store_t *s = NULL;
  assert_int_equal(cqrs_memory_store_new(&s, NULL), CQRS_OK);
  cqrs_envelope_t *env1, *env2, *other;
  assert_int_equal(cqrs_envelope_new("ledger", "x", "cause-1", "conversation-9", &env1, NULL), CQRS_OK);
  assert_int_equal(cqrs_envelope_new("ledger", "x", "cause-2", NULL, &env2, NULL), CQRS_OK);
  assert_int_equal(cqrs_envelope_new("ledger", "elsewhere", "cause-1", NULL, &other, NULL), CQRS_OK);
  ledger_opened_t opened = {"Ann"};
  ledger_amount_t zero = {0}, high = {INT64_MIN}, odd = {0x1234};
  bson_t raw = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&raw, "auditor", "Bo");
  cqrs_event_t *ev[6];
  assert_int_equal(cqrs_event_new(&ledger_opened, env1, NULL, 1, 1700000000001, &opened, &ev[0], NULL), CQRS_OK);
  assert_int_equal(cqrs_event_new(&ledger_credited, env1, "an id of my own", 2, 1700000000002, &zero, &ev[1], NULL),
                   CQRS_OK);
  assert_int_equal(cqrs_event_new(&ledger_credited, env2, NULL, 3, -5, &high, &ev[2], NULL), CQRS_OK);
  assert_int_equal(cqrs_event_new(&ledger_debited, other, "x", 4, 0, &odd, &ev[3], NULL), CQRS_OK);
  assert_int_equal(cqrs_unknown_event_new("ledger.audited", 7, &raw, env2, NULL, 5, 9, &ev[4], NULL), CQRS_OK);
  assert_int_equal(cqrs_event_new(&ledger_credited, env1, NULL, 6, 10, &odd, &ev[5], NULL), CQRS_OK);
  cqrs_append_t req = {"ledger", "x", 0, "the-command", ev, 6};
  cqrs_append_result_t res;
  assert_int_equal(cqrs_store_append(s, &req, &res, NULL), CQRS_OK);
  assert_false(res.duplicate);
  assert_int_equal(res.last_position, 6);
  copies_t c = {0};
  assert_int_equal(cqrs_store_read_stream(s, "ledger", "x", 1, take, &c, NULL), CQRS_OK);
  assert_int_equal(c.n, 6);
  for (size_t i = 0; i < 6; i++) assert_same_event(c.e[i], ev[i]);
  copies_clear(&c);
  assert_int_equal(cqrs_store_read_all(s, 2, 100, take, &c, NULL), CQRS_OK);
  assert_int_equal(c.n, 5);
  for (size_t i = 0; i < 5; i++) assert_same_event(c.e[i], ev[i + 1]);
  copies_clear(&c);
  expect_t x = {ev, 0};
  assert_int_equal(cqrs_store_read_stream(s, "ledger", "x", 1, compare, &x, NULL), CQRS_OK);
  assert_int_equal(x.n, 6);
  x.n = 0;
  assert_int_equal(cqrs_store_read_all(s, 1, 6, compare, &x, NULL), CQRS_OK);
  assert_int_equal(x.n, 6);
  /* The command id, not the causation id, makes a later append a duplicate. */
  cqrs_event_t *again;
  assert_int_equal(cqrs_event_new(&ledger_credited, env1, NULL, 1, 11, &odd, &again, NULL), CQRS_OK);
  cqrs_append_t dup = {"ledger", "y", 0, "the-command", &again, 1};
  assert_int_equal(cqrs_store_append(s, &dup, &res, NULL), CQRS_OK);
  assert_true(res.duplicate);
  dup.command_id = "cause-1";
  assert_int_equal(cqrs_store_append(s, &dup, &res, NULL), CQRS_OK);
  assert_false(res.duplicate);
  assert_int_equal(res.last_position, 7);
  cqrs_event_unref(again);
  assert_int_equal(cqrs_store_read_stream(s, "ledger", "x", 6, take, &c, NULL), CQRS_OK);
  assert_int_equal(c.n, 1);
  cqrs_store_destroy(s);
  assert_same_event(c.e[0], ev[5]);
  copies_clear(&c);
  for (size_t i = 0; i < 6; i++) cqrs_event_unref(ev[i]);
  /* What follows the NUL of a string that ends the payload means nothing:
   * it reads back as zeros, as after a trip through BSON. */
  assert_int_equal(cqrs_memory_store_new(&s, NULL), CQRS_OK);
  ledger_opened_t messy;
  memset(&messy, 'z', sizeof messy);
  memcpy(messy.owner, "Ann", 4);
  assert_int_equal(cqrs_event_new(&ledger_opened, env1, NULL, 1, 1, &messy, &ev[0], NULL), CQRS_OK);
  cqrs_append_t one = {"ledger", "x", 0, "c-2", ev, 1};
  assert_int_equal(cqrs_store_append(s, &one, &res, NULL), CQRS_OK);
  assert_int_equal(cqrs_store_read_stream(s, "ledger", "x", 1, take, &c, NULL), CQRS_OK);
  assert_int_equal(c.n, 1);
  ledger_opened_t clean = {"Ann"};
  assert_memory_equal(c.e[0]->payload, &clean, sizeof clean);
  copies_clear(&c);
  cqrs_event_unref(ev[0]);
  cqrs_store_destroy(s);
  cqrs_envelope_unref(env1);
  cqrs_envelope_unref(env2);
  cqrs_envelope_unref(other);
  bson_destroy(&raw);
}

static long fail_from = -1; /* allocations left before every one fails; < 0: none fails */
static void *failing_malloc(size_t n) { return fail_from >= 0 && fail_from-- == 0 ? (fail_from = 0, NULL) : malloc(n); }
static void *failing_realloc(void *p, size_t n) { return fail_from == 0 ? NULL : realloc(p, n); }

/* A read builds events, so it can run out of memory: it says so, and the
 * callback saw only whole events. */
static void test_read_without_memory_fails_cleanly(void **state) {
  (void)state;
  cqrs_store_t *s = NULL;
  assert_int_equal(cqrs_memory_store_new(&s, NULL), CQRS_OK);
  ledger_fill(s, &ledger_type, "x", 5);
  cqrs_allocator_t a = {failing_malloc, failing_realloc, free};
  copies_t c = {0};
  cqrs_error_t err;
  fail_from = 2;
  cqrs_set_allocator(&a);
  cqrs_code_t rc = cqrs_store_read_stream(s, "ledger", "x", 1, take, &c, &err);
  cqrs_set_allocator(NULL);
  fail_from = -1;
  assert_int_equal(rc, CQRS_ENOMEM);
  assert_int_equal(c.n, 2);
  assert_int_equal(c.e[1]->version, 2);
  copies_clear(&c);
  fail_from = 0;
  cqrs_set_allocator(&a);
  rc = cqrs_store_read_all(s, 1, 10, take, &c, &err);
  cqrs_set_allocator(NULL);
  fail_from = -1;
  assert_int_equal(rc, CQRS_ENOMEM);
  assert_int_equal(c.n, 0);
  cqrs_store_destroy(s);
}

/* ---- many writers, one reader following the feed ---- */

#define WRITERS 4
#define OWN_STREAMS 401 /* per writer: 1,605 streams in all, so the table grows twice under the readers */
#define COMMITS 1500   /* per writer; every fourth on the shared stream */
#define STREAMS (WRITERS * OWN_STREAMS + 1)

static size_t commit_size(int seq) { return 1 + (size_t)(seq % 3); }

typedef struct follow {
  cqrs_store_t *store;
  uv_mutex_t lock;
  char failure[256]; /* the first thing that went wrong, "" if none */
  _Atomic int writers_done;
  int64_t next;                /* the position the feed must give next */
  int64_t version[STREAMS];    /* the last version seen per stream */
  int last_seq[WRITERS];       /* the last commit seen per writer */
  int open_writer, open_seq;   /* a commit whose events are still coming (-1: none) */
  size_t open_next;            /* ... and the index of its next event */
} follow_t;

static void follow_fail(follow_t *f, const char *fmt, ...) {
  uv_mutex_lock(&f->lock);
  if (!f->failure[0]) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->failure, sizeof f->failure, fmt, ap);
    va_end(ap);
  }
  uv_mutex_unlock(&f->lock);
}

static bool failed(follow_t *f) {
  uv_mutex_lock(&f->lock);
  bool yes = f->failure[0] != 0;
  uv_mutex_unlock(&f->lock);
  return yes;
}

typedef struct writer {
  follow_t *f;
  int w;
} writer_t;

static bool probe_version(const cqrs_event_t *e, void *data) {
  *(int64_t *)data = e->version;
  return true;
}

/* Appends commit `seq` of writer `w` (1-3 events, amounts w * 10^9 +
 * seq * 10 + i) to `id` at `expected`; CQRS_ECONFLICT when a racer was
 * first. */
static cqrs_code_t write_commit(cqrs_store_t *store, int w, int seq, const char *id, int64_t expected,
                                cqrs_error_t *err) {
  char cmd[64];
  snprintf(cmd, sizeof cmd, "c-%d-%d", w, seq);
  cqrs_envelope_t *env;
  cqrs_code_t rc = cqrs_envelope_new("ledger", id, cmd, NULL, &env, err);
  if (rc) return rc;
  cqrs_event_t *ev[3];
  size_t n = 0;
  for (; !rc && n < commit_size(seq); n++) {
    ledger_amount_t a = {(int64_t)w * 1000000000 + seq * 10 + (int64_t)n};
    rc = cqrs_event_new(&ledger_credited, env, NULL, expected + (int64_t)n + 1, 0, &a, &ev[n], err);
    if (rc) break;
  }
  cqrs_append_t req = {"ledger", id, expected, cmd, ev, n};
  cqrs_append_result_t res;
  if (!rc) rc = cqrs_store_append(store, &req, &res, err);
  if (!rc && res.duplicate) rc = cqrs_error_set(err, CQRS_EINVAL, "%s: a duplicate", cmd);
  for (size_t i = 0; i < n; i++) cqrs_event_unref(ev[i]);
  cqrs_envelope_unref(env);
  return rc;
}

static void write_many(void *arg) {
  writer_t *wr = arg;
  follow_t *f = wr->f;
  int64_t own[OWN_STREAMS] = {0};
  for (int seq = 1; seq <= COMMITS && !failed(f); seq++) {
    char id[32];
    cqrs_error_t err;
    cqrs_code_t rc;
    if (seq % 4 == 0) {
      do {
        int64_t v = 0;
        rc = cqrs_store_read_stream(f->store, "ledger", "shared", 1, probe_version, &v, &err);
        if (!rc) rc = write_commit(f->store, wr->w, seq, "shared", v, &err);
      } while (rc == CQRS_ECONFLICT);
    } else {
      int j = seq % OWN_STREAMS;
      snprintf(id, sizeof id, "w%d-%d", wr->w, j);
      rc = write_commit(f->store, wr->w, seq, id, own[j], &err);
      own[j] += (int64_t)commit_size(seq);
    }
    if (rc) follow_fail(f, "writer %d, commit %d: %s", wr->w, seq, err.message);
  }
  atomic_fetch_add(&f->writers_done, 1);
}

static bool first_version(const cqrs_event_t *e, void *data) {
  *(int64_t *)data = e->version;
  return false;
}

/* Every event of the feed, in order: the position it must have, the next
 * version of its stream, its commit's events together and each writer's
 * commits in the order it made them, and its stream already at least at
 * its version. */
static bool follow_one(const cqrs_event_t *e, void *data) {
  follow_t *f = data;
  const char *id = cqrs_event_aggregate_id(e);
  int64_t amount = ((const ledger_amount_t *)e->payload)->amount;
  int w = (int)(amount / 1000000000), seq = (int)(amount % 1000000000 / 10);
  size_t i = (size_t)(amount % 10);
  int sw, sj;
  size_t stream = !strcmp(id, "shared")                   ? WRITERS * OWN_STREAMS
                  : sscanf(id, "w%d-%d", &sw, &sj) == 2 ? (size_t)(sw * OWN_STREAMS + sj)
                                                          : STREAMS;
  if (e->position != f->next) {
    follow_fail(f, "position %lld where %lld was due", (long long)e->position, (long long)f->next);
  } else if (stream >= STREAMS || w < 0 || w >= WRITERS) {
    follow_fail(f, "an event of %s, amount %lld, no writer wrote", id, (long long)amount);
  } else if (e->version != f->version[stream] + 1) {
    follow_fail(f, "%s: version %lld after %lld", id, (long long)e->version, (long long)f->version[stream]);
  } else if (f->open_writer >= 0 ? (w != f->open_writer || seq != f->open_seq || i != f->open_next)
                                 : (i != 0 || seq <= f->last_seq[w])) {
    follow_fail(f, "position %lld: event %zu of commit %d of writer %d out of order", (long long)e->position, i, seq,
                w);
  } else {
    int64_t v = 0;
    cqrs_error_t err;
    if (cqrs_store_read_stream(f->store, "ledger", id, e->version, first_version, &v, &err) || v != e->version)
      follow_fail(f, "%s: the feed has version %lld, the stream not yet", id, (long long)e->version);
  }
  f->next = e->position + 1;
  f->version[stream < STREAMS ? stream : 0] = e->version;
  f->last_seq[w >= 0 && w < WRITERS ? w : 0] = seq;
  f->open_writer = i + 1 < commit_size(seq) ? w : -1;
  f->open_seq = seq;
  f->open_next = i + 1;
  return !failed(f);
}

/* Writers append to streams of their own and race on one, while a reader
 * follows the feed: no position missing or twice, every stream in version
 * order, a commit's events together, and an event on the feed already in
 * its stream. */
static void test_feed_follows_concurrent_writers(void **state) {
  (void)state;
  follow_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  assert_int_equal(cqrs_memory_store_new(&f->store, NULL), CQRS_OK);
  assert_int_equal(uv_mutex_init(&f->lock), 0);
  f->next = 1;
  f->open_writer = -1;
  int64_t total = 0;
  for (int seq = 1; seq <= COMMITS; seq++) total += WRITERS * (int64_t)commit_size(seq);
  uv_thread_t threads[WRITERS];
  writer_t writers[WRITERS];
  for (int w = 0; w < WRITERS; w++) {
    writers[w] = (writer_t){f, w};
    assert_int_equal(uv_thread_create(&threads[w], write_many, &writers[w]), 0);
  }
  while (f->next <= total && !failed(f)) {
    int64_t from = f->next;
    bool done = atomic_load(&f->writers_done) == WRITERS;
    cqrs_error_t err;
    if (cqrs_store_read_all(f->store, from, 100, follow_one, f, &err)) follow_fail(f, "read_all: %s", err.message);
    if (done && f->next == from) follow_fail(f, "the feed ends at %lld of %lld", (long long)from - 1, (long long)total);
  }
  for (int w = 0; w < WRITERS; w++) uv_thread_join(&threads[w]);
  if (f->failure[0]) fail_msg("%s", f->failure);
  int64_t head = 0;
  assert_int_equal(cqrs_store_head(f->store, &head, NULL), CQRS_OK);
  assert_int_equal(head, total);
  cqrs_store_destroy(f->store);
  uv_mutex_destroy(&f->lock);
  free(f);
}

/* The store's contract: tests/framework/test_memory_conformance.c. */
int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_overhead_per_event_is_bounded),
                                     cmocka_unit_test(test_events_read_back_exactly),
                                     cmocka_unit_test(test_read_without_memory_fails_cleanly),
                                     cmocka_unit_test(test_feed_follows_concurrent_writers)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
