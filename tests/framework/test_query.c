#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include <cqrs/cqrs.h>

/* Answers {count: N} with the number of documents of `params.status`. */
static bool count_one(const bson_t *doc, void *data) {
  (void)doc;
  (*(int64_t *)data)++;
  return true;
}

static cqrs_code_t count_by_status(const cqrs_readmodel_t *rm, const bson_t *params, bson_t *out, void *data,
                                   cqrs_error_t *err) {
  (void)data;
  bson_iter_t it;
  if (!bson_iter_init_find(&it, params, "status") || !BSON_ITER_HOLDS_UTF8(&it))
    return cqrs_error_set(err, CQRS_EINVAL, "status is required");
  bson_t filter = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "status", bson_iter_utf8(&it, NULL));
  cqrs_find_t q = {&filter, NULL, false, 0};
  int64_t n = 0;
  cqrs_code_t rc = cqrs_readmodel_find(rm, "inv", &q, count_one, &n, err);
  bson_destroy(&filter);
  if (!rc) BSON_APPEND_INT64(out, "count", n);
  return rc;
}

typedef struct fx {
  cqrs_readmodel_t *rm;
  cqrs_query_bus_t *q;
} fx_t;

static int setup(void **state) {
  fx_t *fx = calloc(1, sizeof *fx);
  cqrs_memory_readmodel_new(&fx->rm, NULL);
  cqrs_query_bus_new(fx->rm, &fx->q, NULL);
  const char *statuses[] = {"paid", "paid", "pending"};
  for (int i = 0; i < 3; i++) {
    bson_t doc = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&doc, "status", statuses[i]);
    char id[8];
    snprintf(id, sizeof id, "i%d", i);
    assert_int_equal(cqrs_readmodel_put(fx->rm, "inv", id, &doc, i + 1, NULL, NULL), CQRS_OK);
    bson_destroy(&doc);
  }
  assert_int_equal(cqrs_query_bus_register(fx->q, "count_by_status", count_by_status, NULL, NULL), CQRS_OK);
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  fx_t *fx = *state;
  cqrs_query_bus_destroy(fx->q);
  cqrs_readmodel_destroy(fx->rm);
  free(fx);
  return 0;
}

static int64_t answer_count(const bson_t *out) {
  bson_iter_t it;
  assert_true(bson_iter_init_find(&it, out, "count"));
  return bson_iter_as_int64(&it);
}

static void test_run(void **state) {
  fx_t *fx = *state;
  bson_t params = BSON_INITIALIZER, out = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&params, "status", "paid");
  assert_int_equal(cqrs_query_bus_run(fx->q, "count_by_status", &params, &out, NULL), CQRS_OK);
  assert_int_equal(answer_count(&out), 2);
  bson_destroy(&out);
  bson_init(&out);
  /* Pure: asking again gives the same answer. */
  assert_int_equal(cqrs_query_bus_run(fx->q, "count_by_status", &params, &out, NULL), CQRS_OK);
  assert_int_equal(answer_count(&out), 2);
  bson_destroy(&out);
  bson_destroy(&params);
}

static void test_errors(void **state) {
  fx_t *fx = *state;
  bson_t out = BSON_INITIALIZER;
  cqrs_error_t err;
  assert_int_equal(cqrs_query_bus_run(fx->q, "nope", NULL, &out, &err), CQRS_ENOT_FOUND);
  assert_int_equal(cqrs_query_bus_run(fx->q, "count_by_status", NULL, &out, &err), CQRS_EINVAL);
  assert_string_equal(err.message, "status is required");
  assert_int_equal(cqrs_query_bus_register(fx->q, "count_by_status", count_by_status, NULL, &err), CQRS_EDUPLICATE);
  assert_int_equal(cqrs_query_bus_register(fx->q, "", count_by_status, NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_query_bus_register(fx->q, "x", NULL, NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_query_bus_run(NULL, "x", NULL, &out, &err), CQRS_EINVAL);
  cqrs_query_bus_t *q = fx->q;
  assert_int_equal(cqrs_query_bus_new(NULL, &q, &err), CQRS_EINVAL);
  assert_null(q);
  assert_int_equal(cqrs_query_bus_new(fx->rm, NULL, NULL), CQRS_EINVAL);
  bson_destroy(&out);
}

static void on_answer(cqrs_code_t code, const bson_t *answer, const cqrs_error_t *err, void *data) {
  (void)err;
  assert_int_equal(code, CQRS_OK);
  *(int64_t *)data = answer_count(answer);
}

static void test_send_on_a_loop(void **state) {
  fx_t *fx = *state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  bson_t params = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&params, "status", "pending");
  int64_t got = -1;
  assert_int_equal(cqrs_query_bus_send(fx->q, &loop, "count_by_status", &params, on_answer, &got), CQRS_OK);
  assert_int_equal(got, -1); /* not inside the call, even on a non-blocking read model */
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(got, 1);
  assert_int_equal(cqrs_query_bus_send(fx->q, &loop, "count_by_status", &params, NULL, &got), CQRS_EINVAL);
  bson_destroy(&params);
  assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_run, setup, teardown),
      cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
      cmocka_unit_test_setup_teardown(test_send_on_a_loop, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
