#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cqrs/backend.h>

/* The in-memory read model beyond the contract every read model keeps
 * (tests/framework/test_memory_conformance.c): its in-place writes, and the
 * wrappers around any implementation. */

static bson_t *json(const char *s) {
  bson_error_t e;
  bson_t *b = bson_new_from_json((const uint8_t *)s, -1, &e);
  if (!b) fail_msg("bad json %s: %s", s, e.message);
  return b;
}

static int setup(void **state) {
  cqrs_readmodel_t *rm = NULL;
  cqrs_memory_readmodel_new(&rm, NULL);
  *state = rm;
  return rm ? 0 : -1;
}

static int teardown(void **state) {
  cqrs_readmodel_destroy(*state);
  return 0;
}

static void put(cqrs_readmodel_t *rm, const char *id, const char *doc, int64_t pos, bool want_applied) {
  bson_t *b = json(doc);
  bool applied;
  cqrs_error_t err;
  assert_int_equal(cqrs_readmodel_put(rm, "inv", id, b, pos, &applied, &err), CQRS_OK);
  assert_int_equal(applied, want_applied);
  bson_destroy(b);
}

static int64_t get_int(const cqrs_readmodel_t *rm, const char *id, const char *path) {
  bson_t out;
  bool found;
  assert_int_equal(cqrs_readmodel_get(rm, "inv", id, &out, &found, NULL), CQRS_OK);
  assert_true(found);
  bson_iter_t it, v;
  assert_true(bson_iter_init(&it, &out));
  assert_true(bson_iter_find_descendant(&it, path, &v));
  int64_t n = bson_iter_as_int64(&v);
  bson_destroy(&out);
  return n;
}

static char *get_str(const cqrs_readmodel_t *rm, const char *id, const char *path, char *buf, size_t cap) {
  bson_t out;
  bool found;
  assert_int_equal(cqrs_readmodel_get(rm, "inv", id, &out, &found, NULL), CQRS_OK);
  assert_true(found);
  bson_iter_t it, v;
  assert_true(bson_iter_init(&it, &out));
  assert_true(bson_iter_find_descendant(&it, path, &v));
  snprintf(buf, cap, "%s", bson_iter_utf8(&v, NULL));
  bson_destroy(&out);
  return buf;
}

static void test_patch_in_place_and_rebuilt_agree(void **state) {
  cqrs_readmodel_t *rm = *state;
  put(rm, "a", "{\"balance\":{\"$numberLong\":\"5\"},\"at\":{\"$date\":1},\"n\":1,\"s\":\"x\"}", 1, true);
  /* Same fixed-size types: overwritten where they lie. */
  bson_t *set = json("{\"balance\":{\"$numberLong\":\"70\"},\"at\":{\"$date\":2000},\"n\":2}");
  bool applied;
  assert_int_equal(cqrs_readmodel_patch(rm, "inv", "a", set, 2, &applied, NULL), CQRS_OK);
  assert_true(applied);
  assert_int_equal(get_int(rm, "a", "balance"), 70);
  assert_int_equal(get_int(rm, "a", "n"), 2);
  assert_int_equal(get_int(rm, "a", CQRS_RM_POSITION), 2);
  assert_int_equal(cqrs_readmodel_patch(rm, "inv", "a", set, 2, &applied, NULL), CQRS_OK);
  assert_false(applied);
  bson_destroy(set);
  /* A type change, a new key, a string: rebuilt, with the same result shape. */
  set = json("{\"n\":\"two\",\"extra\":true,\"balance\":{\"$numberLong\":\"71\"}}");
  assert_int_equal(cqrs_readmodel_patch(rm, "inv", "a", set, 3, &applied, NULL), CQRS_OK);
  assert_true(applied);
  char buf[16];
  assert_string_equal(get_str(rm, "a", "n", buf, sizeof buf), "two");
  assert_string_equal(get_str(rm, "a", "s", buf, sizeof buf), "x");
  assert_int_equal(get_int(rm, "a", "balance"), 71);
  assert_int_equal(get_int(rm, "a", "extra"), 1);
  assert_int_equal(get_int(rm, "a", CQRS_RM_POSITION), 3);
  bson_destroy(set);
}

/* A key patched again is written where it was last time, until a rebuild
 * moves it. */
static void test_repeated_patch_follows_rebuilds(void **state) {
  cqrs_readmodel_t *rm = *state;
  put(rm, "a", "{\"n\":\"x\",\"balance\":{\"$numberLong\":\"5\"}}", 1, true);
  char one[64], buf[64];
  for (int64_t p = 2; p <= 4; p++) {
    snprintf(one, sizeof one, "{\"balance\":{\"$numberLong\":\"%lld\"}}", (long long)(p * 10));
    bson_t *set = json(one);
    assert_int_equal(cqrs_readmodel_patch(rm, "inv", "a", set, p, NULL, NULL), CQRS_OK);
    bson_destroy(set);
    assert_int_equal(get_int(rm, "a", "balance"), p * 10);
    assert_int_equal(get_int(rm, "a", CQRS_RM_POSITION), p);
  }
  bson_t *set = json("{\"n\":\"a longer string moves the balance\"}");
  assert_int_equal(cqrs_readmodel_patch(rm, "inv", "a", set, 5, NULL, NULL), CQRS_OK);
  bson_destroy(set);
  set = json("{\"balance\":{\"$numberLong\":\"60\"}}");
  assert_int_equal(cqrs_readmodel_patch(rm, "inv", "a", set, 6, NULL, NULL), CQRS_OK);
  bson_destroy(set);
  assert_int_equal(get_int(rm, "a", "balance"), 60);
  assert_string_equal(get_str(rm, "a", "n", buf, sizeof buf), "a longer string moves the balance");
  assert_int_equal(get_int(rm, "a", CQRS_RM_POSITION), 6);
}

static void test_set_int64_is_a_patch_of_one_key(void **state) {
  cqrs_readmodel_t *rm = *state;
  put(rm, "a", "{\"s\":\"x\",\"balance\":{\"$numberLong\":\"5\"},\"n\":1}", 1, true);
  bool applied;
  cqrs_error_t err;
  assert_int_equal(cqrs_readmodel_set_int64(rm, "inv", "a", "balance", 70, 2, &applied, &err), CQRS_OK);
  assert_true(applied);
  assert_int_equal(get_int(rm, "a", "balance"), 70);
  assert_int_equal(get_int(rm, "a", CQRS_RM_POSITION), 2);
  assert_int_equal(cqrs_readmodel_set_int64(rm, "inv", "a", "balance", 1, 2, &applied, &err), CQRS_OK);
  assert_false(applied); /* not newer */
  assert_int_equal(get_int(rm, "a", "balance"), 70);
  /* A new key, an int32 key: rebuilt like any patch. */
  assert_int_equal(cqrs_readmodel_set_int64(rm, "inv", "a", "total", 9, 3, &applied, &err), CQRS_OK);
  assert_int_equal(cqrs_readmodel_set_int64(rm, "inv", "a", "n", 2, 4, &applied, &err), CQRS_OK);
  assert_int_equal(cqrs_readmodel_set_int64(rm, "inv", "a", "balance", 71, 5, &applied, &err), CQRS_OK);
  assert_int_equal(get_int(rm, "a", "total"), 9);
  assert_int_equal(get_int(rm, "a", "n"), 2);
  assert_int_equal(get_int(rm, "a", "balance"), 71);
  assert_int_equal(get_int(rm, "a", CQRS_RM_POSITION), 5);
  char buf[8];
  assert_string_equal(get_str(rm, "a", "s", buf, sizeof buf), "x");
  assert_int_equal(cqrs_readmodel_set_int64(rm, "inv", "ghost", "balance", 1, 6, &applied, &err), CQRS_ENOT_FOUND);
  assert_int_equal(cqrs_readmodel_set_int64(rm, "inv", "a", "", 1, 6, &applied, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_readmodel_set_int64(rm, "inv", "a", NULL, 1, 6, &applied, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_readmodel_set_int64(rm, "inv", "a", "balance", 1, 0, &applied, &err), CQRS_EINVAL);
  /* A malformed name or id is refused as such, not reported missing. */
  char longer[CQRS_ID_MAX + 1];
  memset(longer, 'a', CQRS_ID_MAX);
  longer[CQRS_ID_MAX] = '\0';
  assert_int_equal(cqrs_readmodel_set_int64(rm, "inv", "a\xff", "balance", 1, 6, &applied, &err), CQRS_EINVAL);
  assert_non_null(strstr(err.message, "document id is not valid UTF-8"));
  assert_int_equal(cqrs_readmodel_set_int64(rm, "inv", longer, "balance", 1, 6, &applied, &err), CQRS_ETOO_LARGE);
  assert_int_equal(cqrs_readmodel_set_int64(rm, "inv", "", "balance", 1, 6, &applied, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_readmodel_set_int64(rm, "in\xc3", "a", "balance", 1, 6, &applied, &err), CQRS_EINVAL);
  assert_non_null(strstr(err.message, "collection name is not valid UTF-8"));
  assert_int_equal(cqrs_readmodel_set_int64(rm, NULL, "a", "balance", 1, 6, &applied, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_readmodel_set_int64(rm, "inv", NULL, "balance", 1, 6, &applied, &err), CQRS_EINVAL);
  assert_false(applied);
  assert_int_equal(get_int(rm, "a", "balance"), 71);
}

/* Other read models get the $set document through their patch. */
typedef struct spy {
  bson_t *last;
} spy_t;

static cqrs_code_t spy_patch(void *impl, const char *coll, const char *id, const bson_t *set, int64_t position,
                             bool *applied, cqrs_error_t *err) {
  (void)coll;
  (void)id;
  (void)position;
  (void)err;
  spy_t *s = impl;
  if (s->last) bson_destroy(s->last);
  s->last = bson_copy(set);
  *applied = true;
  return CQRS_OK;
}

static cqrs_code_t spy_put(void *impl, const char *coll, const char *id, const bson_t *doc, int64_t position,
                           bool *applied, cqrs_error_t *err) {
  return spy_patch(impl, coll, id, doc, position, applied, err);
}

static cqrs_code_t spy_patch_where(void *impl, const char *coll, const bson_t *filter, const bson_t *set,
                                   int64_t position, size_t *count, cqrs_error_t *err) {
  (void)filter;
  (void)count;
  bool applied;
  return spy_patch(impl, coll, NULL, set, position, &applied, err);
}

static cqrs_code_t spy_get(void *impl, const char *coll, const char *id, bson_t *out, bool *found,
                           cqrs_error_t *err) {
  (void)impl, (void)coll, (void)id, (void)out, (void)found, (void)err;
  return CQRS_OK;
}

static cqrs_code_t spy_find(void *impl, const char *coll, const cqrs_find_t *q, cqrs_doc_visit_cb cb, void *data,
                            cqrs_error_t *err) {
  (void)impl, (void)coll, (void)q, (void)cb, (void)data, (void)err;
  return CQRS_OK;
}

static void test_set_int64_elsewhere_is_a_patch(void **state) {
  (void)state;
  static const cqrs_readmodel_ops_t spy_ops = {.blocking = false, .put = spy_put, .patch = spy_patch,
                                               .patch_where = spy_patch_where, .get = spy_get, .find = spy_find,
                                               .destroy = NULL};
  spy_t spy = {NULL};
  cqrs_readmodel_t *rm = NULL;
  cqrs_readmodel_new(&spy_ops, &spy, &rm, NULL);
  assert_non_null(rm);
  bool applied = false;
  assert_int_equal(cqrs_readmodel_set_int64(rm, "inv", "a", "balance", 42, 3, &applied, NULL), CQRS_OK);
  assert_true(applied);
  assert_non_null(spy.last);
  char *got = bson_as_relaxed_extended_json(spy.last, NULL);
  assert_string_equal(got, "{ \"balance\" : 42 }");
  bson_free(got);
  bson_destroy(spy.last);
  cqrs_readmodel_destroy(rm);
}

static int released;
static void count_destroy(void *impl) {
  (void)impl;
  released++;
}
static void *no_malloc(size_t n) {
  (void)n;
  return NULL;
}
static void *no_realloc(void *p, size_t n) {
  (void)p, (void)n;
  return NULL;
}

/* The wrappers take over `impl` whatever happens: each failure releases it
 * exactly once, and leaves *out NULL. */
static void test_wrappers_release_impl_on_failure(void **state) {
  (void)state;
  static const cqrs_readmodel_ops_t rm_ops = {.blocking = false, .put = spy_put, .patch = spy_patch,
                                              .patch_where = spy_patch_where, .get = spy_get, .find = spy_find,
                                              .destroy = count_destroy};
  static const cqrs_readmodel_ops_t rm_no_find = {.blocking = false, .put = spy_put, .patch = spy_patch,
                                                  .patch_where = spy_patch_where, .get = spy_get, .find = NULL,
                                                  .destroy = count_destroy};
  static const cqrs_checkpoint_ops_t cp_no_save = {.blocking = false, .load = NULL, .save = NULL,
                                                   .destroy = count_destroy, .save_fenced = NULL};
  static const cqrs_store_ops_t store_no_head = {.name = "none", .destroy = count_destroy};
  int impl;
  static max_align_t stale; /* what *out held before: a failure must clear it */
  cqrs_error_t err;
  cqrs_readmodel_t *rm = (void *)&stale;
  cqrs_checkpoint_store_t *cp = (void *)&stale;
  cqrs_store_t *st = (void *)&stale;
  released = 0;
  assert_int_equal(cqrs_readmodel_new(&rm_no_find, &impl, &rm, &err), CQRS_EINVAL);
  assert_null(rm);
  assert_int_equal(cqrs_checkpoint_store_new(&cp_no_save, &impl, &cp, &err), CQRS_EINVAL);
  assert_null(cp);
  assert_int_equal(cqrs_store_new(&store_no_head, &impl, &st, NULL), CQRS_EINVAL);
  assert_null(st);
  assert_int_equal(cqrs_readmodel_new(&rm_ops, &impl, NULL, &err), CQRS_EINVAL);
  assert_int_equal(released, 4);
  assert_int_equal(cqrs_readmodel_new(NULL, &impl, &rm, &err), CQRS_EINVAL);
  assert_int_equal(released, 4); /* no ops: nothing to release it with */

  cqrs_set_allocator(&(cqrs_allocator_t){no_malloc, no_realloc, free});
  rm = (void *)&stale;
  st = (void *)&stale;
  cqrs_code_t rc = cqrs_readmodel_new(&rm_ops, &impl, &rm, &err);
  cqrs_code_t mem_rc = cqrs_memory_store_new(&st, NULL);
  cqrs_set_allocator(NULL);
  assert_int_equal(rc, CQRS_ENOMEM);
  assert_string_equal(err.name, "out_of_memory");
  assert_null(rm);
  assert_int_equal(mem_rc, CQRS_ENOMEM);
  assert_null(st);
  assert_int_equal(released, 5);

  assert_int_equal(cqrs_readmodel_new(&rm_ops, &impl, &rm, &err), CQRS_OK);
  assert_int_equal(released, 5);
  cqrs_readmodel_destroy(rm);
  assert_int_equal(released, 6);
  assert_int_equal(cqrs_memory_readmodel_new(NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_memory_checkpoint_store_new(NULL, NULL), CQRS_EINVAL);
  assert_int_equal(cqrs_registry_new(NULL, &err), CQRS_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_repeated_patch_follows_rebuilds, setup, teardown),
      cmocka_unit_test_setup_teardown(test_set_int64_is_a_patch_of_one_key, setup, teardown),
      cmocka_unit_test(test_set_int64_elsewhere_is_a_patch),
      cmocka_unit_test_setup_teardown(test_patch_in_place_and_rebuilt_agree, setup, teardown),
      cmocka_unit_test(test_wrappers_release_impl_on_failure),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
