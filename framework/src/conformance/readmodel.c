/* The read model suite: what cqrs_readmodel_ops_t promises, through the
 * checked calls of readmodel.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conformance-private.h"

#define COLL "conformance_docs"

static const cqrs_readmodel_factory_t *factory; /* the suite running */

static void *make(void) { return factory->create(factory->data); }

static void unmake(void *obj) {
  if (factory->dispose) {
    factory->dispose(obj, factory->data);
  } else {
    cqrs_readmodel_destroy(obj);
  }
}

/* put / patch from JSON; the test fails on an error. */
static void put(cqrs_readmodel_t *rm, const char *id, const char *json, int64_t pos, bool want_applied) {
  bson_t *b = cqrs__conf_json(json);
  bool applied = !want_applied;
  cqrs_error_t err;
  if (cqrs_readmodel_put(rm, COLL, id, b, pos, &applied, &err)) fail_msg("put %s: %s", id, err.message);
  bson_destroy(b);
  if (applied != want_applied) fail_msg("put %s at %lld: applied is %d", id, (long long)pos, applied);
}

static void patch(cqrs_readmodel_t *rm, const char *id, const char *json, int64_t pos, bool want_applied) {
  bson_t *b = cqrs__conf_json(json);
  bool applied = !want_applied;
  cqrs_error_t err;
  if (cqrs_readmodel_patch(rm, COLL, id, b, pos, &applied, &err)) fail_msg("patch %s: %s", id, err.message);
  bson_destroy(b);
  if (applied != want_applied) fail_msg("patch %s at %lld: applied is %d", id, (long long)pos, applied);
}

/* The value at (dotted) `path` of document `id` of `coll`: fails the test
 * when the document or the key is missing. */
static void value_at(const cqrs_readmodel_t *rm, const char *coll, const char *id, const char *path, bson_t *doc,
                     bson_iter_t *v) {
  bool found = false;
  cqrs_error_t err;
  if (cqrs_readmodel_get(rm, coll, id, doc, &found, &err)) fail_msg("get %s: %s", id, err.message);
  if (!found) fail_msg("%s/%s not found", coll, id);
  bson_iter_t it;
  if (!bson_iter_init(&it, doc) || !bson_iter_find_descendant(&it, path, v)) {
    bson_destroy(doc);
    fail_msg("%s/%s has no %s", coll, id, path);
  }
}

static int64_t int_at(const cqrs_readmodel_t *rm, const char *id, const char *path) {
  bson_t doc;
  bson_iter_t v;
  value_at(rm, COLL, id, path, &doc, &v);
  int64_t n = BSON_ITER_HOLDS_NUMBER(&v) ? bson_iter_as_int64(&v) : INT64_MIN;
  bson_destroy(&doc);
  if (n == INT64_MIN) fail_msg("%s of %s is not a number", path, id);
  return n;
}

/* Fails the test unless the string at `path` of document `id` is `want`. */
static void str_is(const cqrs_readmodel_t *rm, const char *id, const char *path, const char *want) {
  bson_t doc;
  bson_iter_t v;
  value_at(rm, COLL, id, path, &doc, &v);
  bool same = BSON_ITER_HOLDS_UTF8(&v) && !strcmp(bson_iter_utf8(&v, NULL), want);
  bson_destroy(&doc);
  if (!same) fail_msg("%s of %s is not \"%s\"", path, id, want);
}

static bool has(const cqrs_readmodel_t *rm, const char *id, const char *path) {
  bson_t doc;
  bson_iter_t it, v;
  value_at(rm, COLL, id, "_id", &doc, &v);
  bool there = bson_iter_init(&it, &doc) && bson_iter_find_descendant(&it, path, &v);
  bson_destroy(&doc);
  return there;
}

static bool found(const cqrs_readmodel_t *rm, const char *coll, const char *id) {
  bson_t doc;
  bool f = true;
  cqrs_error_t err;
  if (cqrs_readmodel_get(rm, coll, id, &doc, &f, &err)) fail_msg("get %s: %s", id, err.message);
  if (f) bson_destroy(&doc);
  return f;
}

/* Insert or replace; a write at or before the document's position changes
 * nothing; _id and _position are the store's. */
static void test_put_replaces_and_never_goes_back(void **state) {
  cqrs_readmodel_t *rm = *state;
  put(rm, "i1", "{\"amount\":100,\"status\":\"pending\"}", 5, true);
  assert_int_equal(int_at(rm, "i1", "amount"), 100);
  assert_int_equal(int_at(rm, "i1", CQRS_RM_POSITION), 5);
  str_is(rm, "i1", "_id", "i1");
  put(rm, "i1", "{\"amount\":999}", 5, false);
  put(rm, "i1", "{\"amount\":999}", 3, false);
  assert_int_equal(int_at(rm, "i1", "amount"), 100);
  assert_int_equal(int_at(rm, "i1", CQRS_RM_POSITION), 5);
  put(rm, "i1", "{\"amount\":200}", 6, true);
  assert_int_equal(int_at(rm, "i1", "amount"), 200);
  assert_false(has(rm, "i1", "status")); /* replaced, not merged */
  put(rm, "i1", "{\"_id\":\"other\",\"_position\":99,\"amount\":300}", 7, true);
  str_is(rm, "i1", "_id", "i1");
  assert_int_equal(int_at(rm, "i1", CQRS_RM_POSITION), 7);
  assert_int_equal(int_at(rm, "i1", "amount"), 300);
  assert_false(found(rm, COLL, "other"));
  assert_false(found(rm, COLL, "nope"));
  assert_false(found(rm, "conformance_other", "i1"));
}

static void single(bson_t *out, const bson_iter_t *v) {
  bson_init(out);
  bson_append_value(out, "v", 1, bson_iter_value((bson_iter_t *)v));
}

/* What is put is what is read back: every BSON type a projection writes. */
static void test_values_read_back_as_written(void **state) {
  cqrs_readmodel_t *rm = *state;
  const char *json = "{\"i32\":7,\"i64\":{\"$numberLong\":\"5000000000\"},\"d\":1.5,\"s\":\"caf\xc3\xa9\","
                     "\"b\":true,\"t\":{\"$date\":1700000000000},\"doc\":{\"k\":\"v\",\"n\":{\"m\":1}},"
                     "\"arr\":[1,\"two\",{\"three\":3}],\"nil\":null}";
  put(rm, "v1", json, 1, true);
  bson_t *want = cqrs__conf_json(json), got;
  bool f = false;
  assert_int_equal(cqrs_readmodel_get(rm, COLL, "v1", &got, &f, NULL), CQRS_OK);
  assert_true(f);
  bson_iter_t w, g;
  assert_true(bson_iter_init(&w, want));
  while (bson_iter_next(&w)) {
    const char *key = bson_iter_key(&w);
    if (!bson_iter_init_find(&g, &got, key)) fail_msg("%s is missing", key);
    bson_t a, b;
    single(&a, &w);
    single(&b, &g);
    char *wa = bson_as_canonical_extended_json(&a, NULL), *gb = bson_as_canonical_extended_json(&b, NULL);
    bool same = !strcmp(wa, gb);
    if (!same) print_error("%s: put %s, read %s\n", key, wa, gb);
    bson_free(wa);
    bson_free(gb);
    bson_destroy(&a);
    bson_destroy(&b);
    assert_true(same);
  }
  bson_destroy(&got);
  bson_destroy(want);
}

/* patch: $set of plain and dotted keys, the others kept. */
static void test_patch_sets_keys_and_keeps_the_rest(void **state) {
  cqrs_readmodel_t *rm = *state;
  put(rm, "i1", "{\"customer\":{\"id\":\"c1\",\"name\":\"Acme\",\"email\":\"a@x\"},\"status\":\"pending\",\"n\":1}", 1,
      true);
  patch(rm, "i1", "{\"customer.email\":\"b@x\",\"status\":\"paid\",\"paidAt\":7}", 2, true);
  str_is(rm, "i1", "customer.email", "b@x");
  str_is(rm, "i1", "customer.name", "Acme");
  str_is(rm, "i1", "customer.id", "c1");
  str_is(rm, "i1", "status", "paid");
  assert_int_equal(int_at(rm, "i1", "paidAt"), 7);
  assert_int_equal(int_at(rm, "i1", "n"), 1);
  assert_int_equal(int_at(rm, "i1", CQRS_RM_POSITION), 2);
  patch(rm, "i1", "{\"status\":\"late\"}", 2, false);
  patch(rm, "i1", "{\"status\":\"late\"}", 1, false);
  str_is(rm, "i1", "status", "paid");
  /* Same types written again; a type that changes; _id and _position the store's. */
  patch(rm, "i1", "{\"n\":2,\"paidAt\":8}", 3, true);
  assert_int_equal(int_at(rm, "i1", "n"), 2);
  assert_int_equal(int_at(rm, "i1", "paidAt"), 8);
  patch(rm, "i1", "{\"n\":\"two\",\"_id\":\"zz\",\"_position\":1000}", 4, true);
  str_is(rm, "i1", "n", "two");
  str_is(rm, "i1", "_id", "i1");
  assert_int_equal(int_at(rm, "i1", CQRS_RM_POSITION), 4);
  str_is(rm, "i1", "customer.name", "Acme");
  /* A dotted key under a document that is not there yet makes it. */
  patch(rm, "i1", "{\"address.city\":\"Paris\"}", 5, true);
  str_is(rm, "i1", "address.city", "Paris");
  cqrs_error_t err;
  bson_t *set = cqrs__conf_json("{\"status\":\"x\"}");
  bool applied = true;
  assert_int_equal(cqrs_readmodel_patch(rm, COLL, "ghost", set, 9, &applied, &err), CQRS_ENOT_FOUND);
  assert_int_equal(err.code, CQRS_ENOT_FOUND);
  assert_false(applied);
  assert_false(found(rm, COLL, "ghost"));
  bson_destroy(set);
}

/* cqrs_readmodel_set_int64: a patch of one key. */
static void test_set_int64(void **state) {
  cqrs_readmodel_t *rm = *state;
  put(rm, "a", "{\"s\":\"x\",\"balance\":{\"$numberLong\":\"5\"}}", 1, true);
  bool applied = false;
  cqrs_error_t err;
  assert_int_equal(cqrs_readmodel_set_int64(rm, COLL, "a", "balance", 70, 2, &applied, &err), CQRS_OK);
  assert_true(applied);
  assert_int_equal(int_at(rm, "a", "balance"), 70);
  assert_int_equal(int_at(rm, "a", CQRS_RM_POSITION), 2);
  assert_int_equal(cqrs_readmodel_set_int64(rm, COLL, "a", "balance", 1, 2, &applied, &err), CQRS_OK);
  assert_false(applied);
  assert_int_equal(int_at(rm, "a", "balance"), 70);
  assert_int_equal(cqrs_readmodel_set_int64(rm, COLL, "a", "total", INT64_MAX, 3, &applied, &err), CQRS_OK);
  assert_true(applied);
  assert_int_equal(int_at(rm, "a", "total"), INT64_MAX);
  assert_int_equal(int_at(rm, "a", "balance"), 70);
  str_is(rm, "a", "s", "x");
  assert_int_equal(cqrs_readmodel_set_int64(rm, COLL, "ghost", "balance", 1, 4, &applied, &err), CQRS_ENOT_FOUND);
  assert_false(applied);
}

/* patch_where: the documents that match and are behind `position`. */
static void test_patch_where(void **state) {
  cqrs_readmodel_t *rm = *state;
  put(rm, "i1", "{\"c\":\"x\",\"customer\":{\"id\":\"c1\"}}", 1, true);
  put(rm, "i2", "{\"c\":\"x\",\"customer\":{\"id\":\"c1\"}}", 2, true);
  put(rm, "i3", "{\"c\":\"x\",\"customer\":{\"id\":\"c2\"}}", 3, true);
  put(rm, "i4", "{\"c\":\"y\",\"customer\":{\"id\":\"c1\"}}", 4, true);
  put(rm, "i5", "{\"c\":\"x\",\"customer\":{\"id\":\"c1\"}}", 12, true); /* already past 10 */
  bson_t *by_c = cqrs__conf_json("{\"c\":\"x\"}"), *set = cqrs__conf_json("{\"mail\":\"new\"}");
  size_t count = 99;
  assert_int_equal(cqrs_readmodel_patch_where(rm, COLL, by_c, set, 10, &count, NULL), CQRS_OK);
  assert_int_equal(count, 3);
  str_is(rm, "i3", "mail", "new");
  assert_int_equal(int_at(rm, "i3", CQRS_RM_POSITION), 10);
  assert_false(has(rm, "i4", "mail"));
  assert_false(has(rm, "i5", "mail"));
  assert_int_equal(int_at(rm, "i5", CQRS_RM_POSITION), 12);
  assert_int_equal(cqrs_readmodel_patch_where(rm, COLL, by_c, set, 10, &count, NULL), CQRS_OK);
  assert_int_equal(count, 0); /* already applied */
  bson_t *by_customer = cqrs__conf_json("{\"customer.id\":\"c1\"}"), *set2 = cqrs__conf_json("{\"vip\":true}");
  assert_int_equal(cqrs_readmodel_patch_where(rm, COLL, by_customer, set2, 11, &count, NULL), CQRS_OK);
  assert_int_equal(count, 3); /* i1, i2, i4 */
  assert_false(has(rm, "i3", "vip"));
  assert_int_equal(cqrs_readmodel_patch_where(rm, "conformance_none", by_c, set, 20, &count, NULL), CQRS_OK);
  assert_int_equal(count, 0);
  bson_destroy(by_c);
  bson_destroy(set);
  bson_destroy(by_customer);
  bson_destroy(set2);
}

typedef struct ids {
  char v[16][16];
  size_t n, stop_after; /* 0: never stop */
} ids_t;

static bool collect(const bson_t *doc, void *data) {
  ids_t *ids = data;
  bson_iter_t it;
  if (ids->n < 16 && bson_iter_init_find(&it, doc, "_id") && BSON_ITER_HOLDS_UTF8(&it))
    snprintf(ids->v[ids->n++], sizeof ids->v[0], "%s", bson_iter_utf8(&it, NULL));
  return !ids->stop_after || ids->n < ids->stop_after;
}

static void find(const cqrs_readmodel_t *rm, const char *coll, const char *filter, const char *sort, bool desc,
                 size_t limit, ids_t *ids) {
  bson_t *f = filter ? cqrs__conf_json(filter) : NULL;
  cqrs_find_t q = {f, sort, desc, limit};
  cqrs_error_t err;
  ids->n = 0;
  cqrs_code_t rc = cqrs_readmodel_find(rm, coll, &q, collect, ids, &err);
  if (f) bson_destroy(f);
  if (rc) fail_msg("find: %s", err.message);
}

/* Visited in the order asked for, as a comma-separated list. */
static const char *order(const ids_t *ids, char *buf, size_t cap) {
  buf[0] = '\0';
  for (size_t i = 0, at = 0; i < ids->n && at < cap; i++)
    at += (size_t)snprintf(buf + at, cap - at, "%s%s", i ? "," : "", ids->v[i]);
  return buf;
}

/* find: equality filters on plain and dotted keys, a sort key or the id,
 * ties by id in the sort's direction, a limit, a visitor that stops. */
static void test_find(void **state) {
  cqrs_readmodel_t *rm = *state;
  put(rm, "i1", "{\"customer\":{\"id\":\"c1\"},\"status\":\"paid\",\"at\":{\"$date\":1000},\"n\":1}", 1, true);
  put(rm, "i2", "{\"customer\":{\"id\":\"c1\"},\"status\":\"paid\",\"at\":{\"$date\":3000},\"n\":2}", 2, true);
  put(rm, "i3", "{\"customer\":{\"id\":\"c1\"},\"status\":\"pending\",\"at\":{\"$date\":2000},\"n\":1}", 3, true);
  put(rm, "i4", "{\"customer\":{\"id\":\"c2\"},\"status\":\"paid\",\"at\":{\"$date\":4000},\"n\":2}", 4, true);
  put(rm, "i5", "{\"customer\":{\"id\":\"c1\"},\"status\":\"paid\",\"at\":{\"$date\":2500},\"n\":1}", 5, true);
  ids_t ids = {.stop_after = 0};
  char buf[64];
  const char *c1_paid = "{\"customer.id\":\"c1\",\"status\":\"paid\"}";
  find(rm, COLL, c1_paid, "at", true, 2, &ids);
  assert_string_equal(order(&ids, buf, sizeof buf), "i2,i5");
  find(rm, COLL, c1_paid, "at", false, 0, &ids);
  assert_string_equal(order(&ids, buf, sizeof buf), "i1,i5,i2");
  find(rm, COLL, c1_paid, "at", false, 10, &ids);
  assert_string_equal(order(&ids, buf, sizeof buf), "i1,i5,i2");
  find(rm, COLL, NULL, NULL, false, 0, &ids);
  assert_string_equal(order(&ids, buf, sizeof buf), "i1,i2,i3,i4,i5");
  find(rm, COLL, NULL, NULL, true, 0, &ids);
  assert_string_equal(order(&ids, buf, sizeof buf), "i5,i4,i3,i2,i1");
  find(rm, COLL, NULL, "n", false, 0, &ids);
  assert_string_equal(order(&ids, buf, sizeof buf), "i1,i3,i5,i2,i4");
  find(rm, COLL, NULL, "n", true, 0, &ids);
  assert_string_equal(order(&ids, buf, sizeof buf), "i4,i2,i5,i3,i1");
  find(rm, COLL, "{\"n\":{\"$numberLong\":\"2\"}}", NULL, false, 0, &ids); /* numbers equal whatever their width */
  assert_string_equal(order(&ids, buf, sizeof buf), "i2,i4");
  find(rm, COLL, "{\"status\":\"void\"}", NULL, false, 0, &ids);
  assert_int_equal(ids.n, 0);
  find(rm, COLL, "{\"customer.name\":\"c1\"}", NULL, false, 0, &ids);
  assert_int_equal(ids.n, 0);
  find(rm, "conformance_none", NULL, NULL, false, 0, &ids);
  assert_int_equal(ids.n, 0);
  ids.stop_after = 2;
  find(rm, COLL, NULL, NULL, false, 0, &ids);
  assert_string_equal(order(&ids, buf, sizeof buf), "i1,i2");
}

/* A find's visitor that reads the same read model again (a join). */
typedef struct join {
  const cqrs_readmodel_t *rm;
  int found, failed;
} join_t;

static bool join_customer(const bson_t *doc, void *data) {
  join_t *j = data;
  (void)doc;
  bson_t out;
  bool f = false;
  if (cqrs_readmodel_get(j->rm, "conformance_customers", "c1", &out, &f, NULL)) j->failed++;
  if (f) {
    j->found++;
    bson_destroy(&out);
  }
  return true;
}

static void test_find_visitor_may_read_again(void **state) {
  cqrs_readmodel_t *rm = *state;
  put(rm, "i1", "{\"customer\":{\"id\":\"c1\"}}", 1, true);
  put(rm, "i2", "{\"customer\":{\"id\":\"c1\"}}", 2, true);
  bson_t *c = cqrs__conf_json("{\"name\":\"Ada\"}");
  assert_int_equal(cqrs_readmodel_put(rm, "conformance_customers", "c1", c, 3, NULL, NULL), CQRS_OK);
  bson_destroy(c);
  cqrs_find_t all = {NULL, NULL, false, 0};
  join_t j = {rm, 0, 0};
  assert_int_equal(cqrs_readmodel_find(rm, COLL, &all, join_customer, &j, NULL), CQRS_OK);
  assert_int_equal(j.failed, 0);
  assert_int_equal(j.found, 2);
}

/* A collection's documents are its own, ids and positions too. */
static void test_collections_apart(void **state) {
  cqrs_readmodel_t *rm = *state;
  put(rm, "same", "{\"v\":1}", 5, true);
  bson_t *b = cqrs__conf_json("{\"v\":2}");
  bool applied = false;
  assert_int_equal(cqrs_readmodel_put(rm, "conformance_other", "same", b, 3, &applied, NULL), CQRS_OK);
  assert_true(applied);
  bson_destroy(b);
  assert_int_equal(int_at(rm, "same", "v"), 1);
  bson_t doc;
  bson_iter_t v;
  value_at(rm, "conformance_other", "same", "v", &doc, &v);
  assert_int_equal(bson_iter_as_int64(&v), 2);
  bson_destroy(&doc);
  ids_t ids = {.stop_after = 0};
  find(rm, "conformance_other", NULL, NULL, false, 0, &ids);
  assert_int_equal(ids.n, 1);
}

#define RACE_WRITES 20

typedef struct writer {
  cqrs_readmodel_t *rm;
  int id, failures;
  char doc[16];
  cqrs_error_t err;
} writer_t;

/* Writer i's k-th put of document "raced-i" is at position (k * CONF_THREADS
 * + i) * 2 + 1, its patch one later: the positions of all writers interleave. */
static int64_t race_pos(int i, int k) { return ((int64_t)k * CONF_THREADS + i) * 2 + 1; }

/* Puts, replays of the put before (not applied) and patches. */
static cqrs_code_t write_one(writer_t *w, int k) {
  int64_t pos = race_pos(w->id, k);
  bson_t doc = BSON_INITIALIZER;
  BSON_APPEND_INT64(&doc, "p", pos);
  BSON_APPEND_INT32(&doc, "by", w->id);
  bool applied = false;
  cqrs_code_t rc = cqrs_readmodel_put(w->rm, COLL, w->doc, &doc, pos, &applied, &w->err);
  if (!rc && !applied) rc = cqrs_error_set(&w->err, CQRS_ESTATE, "put at %lld not applied", (long long)pos);
  int64_t before = k ? race_pos(w->id, k - 1) : 0;
  if (!rc && k) rc = cqrs_readmodel_put(w->rm, COLL, w->doc, &doc, before, &applied, &w->err);
  if (!rc && k && applied) rc = cqrs_error_set(&w->err, CQRS_ESTATE, "replay at %lld applied", (long long)before);
  if (!rc) rc = cqrs_readmodel_set_int64(w->rm, COLL, w->doc, "k", k, pos + 1, &applied, &w->err);
  if (!rc && !applied) rc = cqrs_error_set(&w->err, CQRS_ESTATE, "patch at %lld not applied", (long long)pos + 1);
  bson_destroy(&doc);
  return rc;
}

static void write_many(void *arg) {
  writer_t *w = arg;
  for (int k = 0; k < RACE_WRITES && !w->failures; k++)
    if (write_one(w, k)) w->failures++;
}

/* Writers of their own documents on several threads at once: each ends at
 * its last write. (One document is written by one writer at a time: a
 * projection's.) */
static void test_writers_race(void **state) {
  cqrs_readmodel_t *rm = *state;
  writer_t writers[CONF_THREADS];
  for (int i = 0; i < CONF_THREADS; i++) {
    writers[i] = (writer_t){.rm = rm, .id = i};
    snprintf(writers[i].doc, sizeof writers[i].doc, "raced-%d", i);
  }
  cqrs__conf_race(write_many, writers, sizeof writers[0], CONF_THREADS);
  for (int i = 0; i < CONF_THREADS; i++) {
    if (writers[i].failures) fail_msg("writer %d: %s", i, writers[i].err.message);
    int64_t last = race_pos(i, RACE_WRITES - 1);
    assert_int_equal(int_at(rm, writers[i].doc, CQRS_RM_POSITION), last + 1);
    assert_int_equal(int_at(rm, writers[i].doc, "p"), last);
    assert_int_equal(int_at(rm, writers[i].doc, "by"), i);
    assert_int_equal(int_at(rm, writers[i].doc, "k"), RACE_WRITES - 1);
  }
  ids_t ids = {.stop_after = 0};
  find(rm, COLL, NULL, NULL, false, 0, &ids);
  assert_int_equal(ids.n, CONF_THREADS);
}

static void test_bad_arguments(void **state) {
  cqrs_readmodel_t *rm = *state;
  bson_t *doc = cqrs__conf_json("{}");
  cqrs_error_t err;
  assert_int_equal(cqrs_readmodel_put(rm, "", "i", doc, 1, NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_readmodel_put(rm, COLL, NULL, doc, 1, NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_readmodel_put(rm, COLL, "i", NULL, 1, NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_readmodel_put(rm, COLL, "i", doc, 0, NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_readmodel_put(rm, COLL, "i\xff", doc, 1, NULL, &err), CQRS_EINVAL);
  char big[CQRS_ID_MAX + 8];
  memset(big, 'q', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  assert_int_equal(cqrs_readmodel_put(rm, COLL, big, doc, 1, NULL, &err), CQRS_ETOO_LARGE);
  assert_int_equal(cqrs_readmodel_put(NULL, COLL, "i", doc, 1, NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_readmodel_patch(rm, COLL, "i", NULL, 1, NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_readmodel_patch_where(rm, COLL, NULL, doc, 1, NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_readmodel_set_int64(rm, COLL, "i", "", 1, 1, NULL, &err), CQRS_EINVAL);
  cqrs_find_t q = {NULL, NULL, false, 0};
  ids_t ids = {.stop_after = 0};
  assert_int_equal(cqrs_readmodel_find(rm, COLL, &q, NULL, NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_readmodel_find(rm, COLL, NULL, collect, &ids, &err), CQRS_EINVAL);
  bson_t out;
  bool f;
  assert_int_equal(cqrs_readmodel_get(rm, COLL, "i", NULL, &f, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_readmodel_get(rm, COLL, "i", &out, NULL, &err), CQRS_EINVAL);
  bson_destroy(doc);
  assert_false(found(rm, COLL, "i")); /* nothing refused was written */
}

int cqrs_conformance_readmodel(const cqrs_readmodel_factory_t *f) {
  if (!f || !f->name || !f->create) return 1;
  factory = f;
  const struct CMUnitTest tests[] = {
      CONF_TEST(test_put_replaces_and_never_goes_back),
      CONF_TEST(test_values_read_back_as_written),
      CONF_TEST(test_patch_sets_keys_and_keeps_the_rest),
      CONF_TEST(test_set_int64),
      CONF_TEST(test_patch_where),
      CONF_TEST(test_find),
      CONF_TEST(test_find_visitor_may_read_again),
      CONF_TEST(test_collections_apart),
      CONF_TEST(test_writers_race),
      CONF_TEST(test_bad_arguments),
  };
  const conf_suite_t suite = {f->name, "a read model", make, unmake};
  return cqrs__conf_run(&suite, tests, sizeof tests / sizeof tests[0]);
}
