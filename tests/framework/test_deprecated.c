/* The names of 0.1.0 that 0.2 renamed still compile (with a deprecation
 * warning, silenced here), link, and do what the new ones do, until 0.3
 * removes them. test_deprecated_warns shows the warning. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <cqrs/cqrs.h>

static void test_old_names_work(void **state) {
  (void)state;
  cqrs_checkpoints_t *cp;
  assert_int_equal(cqrs_memory_checkpoints_new(&cp, NULL), CQRS_OK);
  assert_int_equal(cqrs_checkpoints_save(cp, "p", 7, NULL), CQRS_OK);
  int64_t pos = 0;
  assert_int_equal(cqrs_checkpoints_load(cp, "p", &pos, NULL), CQRS_OK);
  assert_int_equal(pos, 7);
  assert_int_equal(cqrs_checkpoint_store_load(cp, "p", &pos, NULL), CQRS_OK); /* the same store */
  assert_int_equal(pos, 7);
  cqrs_checkpoints_destroy(cp);

  cqrs_readmodel_t *rm;
  assert_int_equal(cqrs_memory_readmodel_new(&rm, NULL), CQRS_OK);
  cqrs_queries_t *q;
  assert_int_equal(cqrs_queries_new(NULL, &q, NULL), CQRS_EINVAL); /* as cqrs_query_bus_new */
  assert_int_equal(cqrs_queries_new(rm, &q, NULL), CQRS_OK);
  bson_t params = BSON_INITIALIZER, out;
  assert_int_equal(cqrs_queries_run(q, "nobody", &params, &out, NULL), CQRS_ENOT_FOUND);
  bson_destroy(&params);
  cqrs_queries_destroy(q);
  cqrs_readmodel_destroy(rm);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_old_names_work)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
