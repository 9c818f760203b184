/* A store in the format libcqrs 0.1 wrote (no streamVersion, a unique
 * compound index on the stream's version) is refused by
 * cqrs_mongo_ensure_indexes with a message naming the upgrade; after
 * cqrs_mongo_upgrade_store (or the cqrs-mongo-upgrade program) it opens,
 * reads back every event as before, and its commits are guarded by the new
 * unique stream key: a stale append is a conflict, a repeated command a
 * duplicate. The format-1 store is made by writing with the store and
 * taking away what format 2 added (the documents 0.1 wrote, field for
 * field), plus a commit built by hand. */
#include <sys/wait.h>

#include <cqrs/backend.h>

#include "framework/ledger.h"
#include "framework/same_event.h"
#include "raw_commit.h"

#define MAX_EVENTS 64

typedef struct fx {
  cqrs_registry_t *reg;
  cqrs_mongo_t *m;
  cqrs_store_t *s;
  raw_events_t raw;
  mongoc_collection_t *head; /* cqrs_events_head */
  int64_t commits;
} fx_t;

static int setup(void **state) {
  if (!test_mongo_uri()) {
    *state = NULL;
    return 0;
  }
  fx_t *fx = calloc(1, sizeof *fx);
  fx->reg = ledger_registry();
  fx->m = test_mongo_open(fx->reg, NULL, NULL);
  assert_int_equal(cqrs_mongo_store_new(fx->m, &fx->s, NULL), CQRS_OK);
  raw_events_open(&fx->raw, fx->m);
  fx->head = mongoc_client_get_collection(fx->raw.client, cqrs_mongo_database(fx->m), "cqrs_events_head");
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  fx_t *fx = *state;
  if (!fx) return 0;
  mongoc_collection_destroy(fx->head);
  raw_events_close(&fx->raw);
  cqrs_store_destroy(fx->s);
  test_mongo_close(fx->m);
  cqrs_registry_destroy(fx->reg);
  free(fx);
  return 0;
}

/* A connection of its own on the fixture's database: it knows nothing of
 * the store (no head, no versions seen), as a process that starts. */
static cqrs_mongo_t *fresh(fx_t *fx, cqrs_store_t **s) {
  cqrs_mongo_options_t o = {.database = cqrs_mongo_database(fx->m)};
  cqrs_mongo_t *m;
  cqrs_error_t err;
  if (cqrs_mongo_new(test_mongo_uri(), &o, fx->reg, NULL, &m, &err)) fail_msg("%s", err.message);
  if (s) assert_int_equal(cqrs_mongo_store_new(m, s, NULL), CQRS_OK);
  return m;
}

/* Appends `n` credits (the first an opening when `expected` is 0) to
 * ledger `id` at `expected`, as command `cmd`. */
static cqrs_code_t commit(cqrs_store_t *s, const char *id, int64_t expected, int n, const char *cmd,
                          cqrs_append_result_t *res, cqrs_error_t *err) {
  cqrs_envelope_t *env;
  assert_int_equal(cqrs_envelope_new("ledger", id, cmd, NULL, &env, NULL), CQRS_OK);
  cqrs_event_t *e[4];
  for (int i = 0; i < n; i++) {
    ledger_opened_t o = {"Ada"};
    ledger_amount_t a = {10 * (i + 1)};
    int64_t v = expected + i + 1;
    assert_int_equal(cqrs_event_new(v == 1 ? &ledger_opened : &ledger_credited, env, NULL, v, 1000 + v,
                                    v == 1 ? (void *)&o : (void *)&a, &e[i], NULL),
                     CQRS_OK);
  }
  cqrs_envelope_unref(env);
  cqrs_append_t req = {"ledger", id, expected, cmd, e, (size_t)n};
  cqrs_code_t rc = cqrs_store_append(s, &req, res, err);
  for (int i = 0; i < n; i++) cqrs_event_unref(e[i]);
  return rc;
}

static void must_commit(fx_t *fx, const char *id, int64_t expected, int n, const char *cmd) {
  cqrs_append_result_t res;
  cqrs_error_t err;
  if (commit(fx->s, id, expected, n, cmd, &res, &err)) fail_msg("append: %s", err.message);
  fx->commits++;
}

static void run_command(fx_t *fx, const bson_t *cmd, const char *what) {
  bson_error_t e;
  if (!mongoc_client_command_simple(fx->raw.client, cqrs_mongo_database(fx->m), cmd, NULL, NULL, &e))
    fail_msg("%s: %s", what, e.message);
}

/* Makes the fixture's store what libcqrs 0.1 left: commits written by the
 * store (several streams, commits of one and of three events), then what
 * format 2 added taken away (streamVersion, its index, the format note),
 * the stream's version unique in the compound index again, and one more
 * commit built by hand. */
static void make_format_1(fx_t *fx) {
  must_commit(fx, "acc-1", 0, 1, "c1");
  must_commit(fx, "acc-2", 0, 3, "c2");
  must_commit(fx, "acc-1", 1, 2, "c3");
  must_commit(fx, "acc-3", 0, 1, "c4");
  must_commit(fx, "acc-2", 3, 1, "c5");
  bson_t *drop = BCON_NEW("dropIndexes", BCON_UTF8("cqrs_events"), "index", BCON_UTF8("stream_version_key"));
  run_command(fx, drop, "drop stream_version_key");
  bson_destroy(drop);
  bson_t *unset = BCON_NEW("$unset", "{", "streamVersion", BCON_UTF8(""), "}"), all = BSON_INITIALIZER;
  bson_error_t e;
  if (!mongoc_collection_update_many(fx->raw.coll, &all, unset, NULL, NULL, &e)) fail_msg("unset: %s", e.message);
  bson_destroy(unset);
  drop = BCON_NEW("dropIndexes", BCON_UTF8("cqrs_events"), "index", BCON_UTF8("stream_version"));
  run_command(fx, drop, "drop stream_version");
  bson_destroy(drop);
  bson_t *keys = BCON_NEW("aggregateType", BCON_INT32(1), "aggregateId", BCON_INT32(1), "version", BCON_INT32(1));
  cqrs_error_t err;
  if (cqrs_mongo_ensure_index(fx->m, "cqrs_events", keys, "stream_version", true, &err)) fail_msg("%s", err.message);
  bson_destroy(keys);
  bson_t *note = BCON_NEW("_id", BCON_UTF8("format"));
  if (!mongoc_collection_delete_one(fx->head, note, NULL, NULL, &e)) fail_msg("delete the note: %s", e.message);
  bson_destroy(note);
  /* Commit 6, by hand: acc-4 at version 1, position 9 (after 1 + 3 + 2 + 1 + 1 events). */
  raw_commit_t c = {6, "ledger.opened", 5000, 1, "acc-4", 1, 9, 9, "c6", "conv-6"};
  bson_t doc = BSON_INITIALIZER, events, *data = BCON_NEW("owner", BCON_UTF8("Bob"));
  raw_commit_begin_format(&doc, &events, &c, 1);
  raw_commit_event(&events, 0, "0123456789abcdef01234567", "ledger.opened", 1, 1, 5000, data);
  raw_commit_insert(&fx->raw, &doc, &events);
  bson_destroy(data);
  bson_destroy(&doc);
  fx->commits++;
  bson_destroy(&all);
}

typedef struct got {
  cqrs_event_t *e[MAX_EVENTS];
  size_t n;
} got_t;

static bool keep(const cqrs_event_t *e, void *data) {
  got_t *g = data;
  assert_true(g->n < MAX_EVENTS);
  g->e[g->n++] = (cqrs_event_t *)cqrs_event_ref(e);
  return true;
}

static void got_clear(got_t *g) {
  for (size_t i = 0; i < g->n; i++) cqrs_event_unref(g->e[i]);
  g->n = 0;
}

/* Everything a fresh process reads: the feed, then each stream. */
static void read_everything(fx_t *fx, got_t *g) {
  cqrs_store_t *s;
  cqrs_mongo_t *m = fresh(fx, &s);
  cqrs_error_t err;
  if (cqrs_store_read_all(s, 1, 1000, keep, g, &err)) fail_msg("read_all: %s", err.message);
  static const char *const streams[] = {"acc-1", "acc-2", "acc-3", "acc-4"};
  for (size_t i = 0; i < sizeof streams / sizeof streams[0]; i++) {
    if (cqrs_store_read_stream(s, "ledger", streams[i], 1, keep, g, &err)) fail_msg("load: %s", err.message);
  }
  int64_t head;
  assert_int_equal(cqrs_store_head(s, &head, &err), CQRS_OK);
  assert_int_equal(head, 9);
  cqrs_store_destroy(s);
  cqrs_mongo_destroy(m);
}

static void assert_same_reads(const got_t *a, const got_t *b) {
  assert_int_equal(a->n, b->n);
  for (size_t i = 0; i < a->n; i++) assert_same_event(a->e[i], b->e[i]);
}

/* Index `name` of cqrs_events: whether it exists and is unique. */
static void index_state(fx_t *fx, const char *name, bool *exists, bool *unique) {
  *exists = *unique = false;
  mongoc_cursor_t *cur = mongoc_collection_find_indexes_with_opts(fx->raw.coll, NULL);
  const bson_t *doc;
  while (mongoc_cursor_next(cur, &doc)) {
    bson_iter_t it;
    if (!bson_iter_init_find(&it, doc, "name") || strcmp(bson_iter_utf8(&it, NULL), name)) continue;
    *exists = true;
    *unique = bson_iter_init_find(&it, doc, "unique") && bson_iter_as_bool(&it);
  }
  bson_error_t e;
  if (mongoc_cursor_error(cur, &e)) fail_msg("list the indexes: %s", e.message);
  mongoc_cursor_destroy(cur);
}

/* Commits whose streamVersion is what the store writes for their stream
 * and first version. */
static int64_t keyed_right(fx_t *fx) {
  bson_t all = BSON_INITIALIZER;
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(fx->raw.coll, &all, NULL, NULL);
  const bson_t *doc;
  int64_t n = 0;
  while (mongoc_cursor_next(cur, &doc)) {
    bson_iter_t it;
    char want[200];
    const char *id = bson_iter_init_find(&it, doc, "aggregateId") ? bson_iter_utf8(&it, NULL) : "";
    int64_t version = bson_iter_init_find(&it, doc, "version") ? bson_iter_as_int64(&it) : 0;
    snprintf(want, sizeof want, "6:ledger/%s#%020lld", id, (long long)version);
    if (bson_iter_init_find(&it, doc, "streamVersion") && BSON_ITER_HOLDS_UTF8(&it) &&
        !strcmp(bson_iter_utf8(&it, NULL), want))
      n++;
  }
  mongoc_cursor_destroy(cur);
  bson_destroy(&all);
  return n;
}

static void expect_refused(cqrs_mongo_t *m, const char *says) {
  cqrs_error_t err;
  assert_int_equal(cqrs_mongo_ensure_indexes(m, &err), CQRS_ESTATE);
  if (!strstr(err.message, says) || !strstr(err.message, "cqrs-mongo-upgrade"))
    fail_msg("'%s' does not say '%s' and name cqrs-mongo-upgrade", err.message, says);
}

/* What the new key guards on an upgraded store, from a process that knows
 * nothing of it: a stale expected version collides with an upgraded
 * commit, a repeated command id is a duplicate, the next version goes in. */
static void expect_guarded(fx_t *fx) {
  cqrs_store_t *s;
  cqrs_mongo_t *m = fresh(fx, &s);
  cqrs_append_result_t res = {0};
  cqrs_error_t err;
  /* acc-2: commits ending at 3 and 4; version 4 is taken */
  assert_int_equal(commit(s, "acc-2", 3, 1, "stale", &res, &err), CQRS_ECONFLICT);
  assert_int_equal(commit(s, "acc-4", 0, 1, "stale-4", &res, &err), CQRS_ECONFLICT); /* the hand-made commit */
  memset(&res, 0, sizeof res);
  assert_int_equal(commit(s, "acc-1", 3, 1, "c3", &res, &err), CQRS_OK); /* c3 committed acc-1's 2..3 */
  assert_true(res.duplicate);
  memset(&res, 0, sizeof res);
  if (commit(s, "acc-2", 4, 1, "next", &res, &err)) fail_msg("append: %s", err.message);
  assert_false(res.duplicate);
  assert_int_equal(res.first_position, 10);
  cqrs_store_destroy(s);
  cqrs_mongo_destroy(m);
}

/* After an upgrade with `m`: the store opens, reads back what it read
 * before (`before`, which this clears), and its key guards it. */
static void expect_upgraded(fx_t *fx, cqrs_mongo_t *m, got_t *before) {
  cqrs_error_t err;
  assert_int_equal(keyed_right(fx), fx->commits);
  assert_int_equal(cqrs_mongo_ensure_indexes(m, &err), CQRS_OK);
  got_t after = {{0}, 0};
  read_everything(fx, &after);
  assert_same_reads(before, &after);
  got_clear(before);
  got_clear(&after);
  expect_guarded(fx);
}

static void test_format_1_is_refused_then_upgraded_and_reads_the_same(void **state) {
  fx_t *fx = *state;
  if (!fx) skip();
  make_format_1(fx);
  got_t before = {{0}, 0};
  read_everything(fx, &before);
  assert_int_equal(before.n, 9 + 9); /* the feed, then the four streams */
  cqrs_mongo_t *m = fresh(fx, NULL);
  expect_refused(m, "format 1");
  bool exists, unique;
  index_state(fx, "stream_version", &exists, &unique);
  assert_true(exists && unique); /* a refusal changes nothing */
  index_state(fx, "stream_version_key", &exists, &unique);
  assert_false(exists);
  int64_t keyed = -1;
  cqrs_error_t err;
  if (cqrs_mongo_upgrade_store(m, &keyed, &err)) fail_msg("upgrade: %s", err.message);
  assert_int_equal(keyed, fx->commits);
  index_state(fx, "stream_version", &exists, &unique);
  assert_true(exists && !unique);
  index_state(fx, "stream_version_key", &exists, &unique);
  assert_true(exists && unique);
  expect_upgraded(fx, m, &before);
  /* Again: nothing to do. */
  assert_int_equal(cqrs_mongo_upgrade_store(m, &keyed, &err), CQRS_OK);
  assert_int_equal(keyed, 0);
  cqrs_mongo_destroy(m);
}

/* An upgrade stopped after it dropped the unique index and keyed some
 * commits: the store is still refused, and the next run finishes it. */
static void test_the_upgrade_finishes_a_run_that_stopped(void **state) {
  fx_t *fx = *state;
  if (!fx) skip();
  make_format_1(fx);
  got_t before = {{0}, 0};
  read_everything(fx, &before);
  bson_t *drop = BCON_NEW("dropIndexes", BCON_UTF8("cqrs_events"), "index", BCON_UTF8("stream_version"));
  run_command(fx, drop, "drop stream_version");
  bson_destroy(drop);
  bson_t *sel = BCON_NEW("aggregateId", BCON_UTF8("acc-2"));
  bson_t *set = BCON_NEW("$set", "{", "streamVersion", BCON_UTF8("6:ledger/acc-2#00000000000000000001"), "}");
  bson_error_t e;
  if (!mongoc_collection_update_one(fx->raw.coll, sel, set, NULL, NULL, &e)) fail_msg("key: %s", e.message);
  bson_destroy(sel);
  bson_destroy(set);
  assert_int_equal(keyed_right(fx), 1);
  cqrs_mongo_t *m = fresh(fx, NULL);
  expect_refused(m, "format 1");
  int64_t keyed;
  cqrs_error_t err;
  if (cqrs_mongo_upgrade_store(m, &keyed, &err)) fail_msg("upgrade: %s", err.message);
  assert_int_equal(keyed, fx->commits - 1);
  expect_upgraded(fx, m, &before);
  cqrs_mongo_destroy(m);
}

/* A commit without its stream stops the upgrade, named; nothing is noted. */
static void test_a_commit_the_upgrade_cannot_read_is_named(void **state) {
  fx_t *fx = *state;
  if (!fx) skip();
  make_format_1(fx);
  bson_t *sel = BCON_NEW("_id", BCON_UTF8("00000000000000000004"));
  bson_t *unset = BCON_NEW("$unset", "{", "aggregateId", BCON_UTF8(""), "}");
  bson_error_t e;
  if (!mongoc_collection_update_one(fx->raw.coll, sel, unset, NULL, NULL, &e)) fail_msg("unset: %s", e.message);
  bson_destroy(sel);
  bson_destroy(unset);
  cqrs_mongo_t *m = fresh(fx, NULL);
  int64_t keyed;
  cqrs_error_t err;
  assert_int_equal(cqrs_mongo_upgrade_store(m, &keyed, &err), CQRS_ECODEC);
  if (!strstr(err.message, "00000000000000000004")) fail_msg("'%s' does not name the commit", err.message);
  assert_int_equal(keyed, 3); /* the commits before it */
  expect_refused(m, "format 1");
  cqrs_mongo_destroy(m);
}

static void note_format(fx_t *fx, int64_t version) {
  bson_t *sel = BCON_NEW("_id", BCON_UTF8("format"));
  bson_t *doc = BCON_NEW("_id", BCON_UTF8("format"), "version", BCON_INT64(version));
  bson_t *opts = BCON_NEW("upsert", BCON_BOOL(true));
  bson_error_t e;
  if (!mongoc_collection_replace_one(fx->head, sel, doc, opts, NULL, &e)) fail_msg("note: %s", e.message);
  bson_destroy(sel);
  bson_destroy(doc);
  bson_destroy(opts);
}

static void test_an_empty_store_is_noted_and_a_newer_one_refused(void **state) {
  fx_t *fx = *state;
  if (!fx) skip();
  /* The fixture ensured the indexes of an empty store: the note is there. */
  bson_t *sel = BCON_NEW("_id", BCON_UTF8("format"), "version", BCON_INT64(2));
  bson_error_t e;
  assert_int_equal(mongoc_collection_count_documents(fx->head, sel, NULL, NULL, NULL, &e), 1);
  bson_destroy(sel);
  must_commit(fx, "acc-1", 0, 1, "c1");
  cqrs_mongo_t *m = fresh(fx, NULL);
  cqrs_error_t err;
  assert_int_equal(cqrs_mongo_ensure_indexes(m, &err), CQRS_OK);
  note_format(fx, 3);
  assert_int_equal(cqrs_mongo_ensure_indexes(m, &err), CQRS_ESTATE);
  if (!strstr(err.message, "newer")) fail_msg("'%s' does not say newer", err.message);
  int64_t keyed;
  assert_int_equal(cqrs_mongo_upgrade_store(m, &keyed, &err), CQRS_ESTATE);
  assert_int_equal(cqrs_mongo_upgrade_store(NULL, &keyed, &err), CQRS_EINVAL);
  cqrs_mongo_destroy(m);
}

static int run_tool(const char *const *argv) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  return WEXITSTATUS(status);
}

/* The program the refusal names, as an operator runs it. */
static void test_the_program_upgrades_a_store(void **state) {
  fx_t *fx = *state;
  if (!fx) skip();
  make_format_1(fx);
  got_t before = {{0}, 0};
  read_everything(fx, &before);
  const char *db = cqrs_mongo_database(fx->m);
  const char *const bad[] = {CQRS_MONGO_UPGRADE, "--uri", test_mongo_uri(), "--nonsense", NULL};
  assert_int_equal(run_tool(bad), 2);
  assert_int_equal(keyed_right(fx), 0);
  const char *const argv[] = {CQRS_MONGO_UPGRADE, "--uri", test_mongo_uri(), "--database", db, "--events",
                              "cqrs_events", NULL};
  assert_int_equal(run_tool(argv), 0);
  cqrs_mongo_t *m = fresh(fx, NULL);
  expect_upgraded(fx, m, &before);
  assert_int_equal(run_tool(argv), 0); /* again: nothing to do */
  cqrs_mongo_destroy(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_format_1_is_refused_then_upgraded_and_reads_the_same, setup, teardown),
      cmocka_unit_test_setup_teardown(test_the_upgrade_finishes_a_run_that_stopped, setup, teardown),
      cmocka_unit_test_setup_teardown(test_a_commit_the_upgrade_cannot_read_is_named, setup, teardown),
      cmocka_unit_test_setup_teardown(test_an_empty_store_is_noted_and_a_newer_one_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_the_program_upgrades_a_store, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
