/* Dead letters on MongoDB. The read model's and the checkpoints' contract:
 * tests/mongo/test_mongo_conformance.c. */
#include <uv.h>

#include <cqrs/backend.h>

#include "framework/ledger.h"
#include "mongo_fixture.h"

typedef struct fx {
  cqrs_registry_t *reg;
  uv_loop_t loop;
  cqrs_mongo_t *m;
  cqrs_readmodel_t *rm;
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
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  fx_t *fx = *state;
  if (!fx) return 0;
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&fx->loop), 0);
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

static void test_dead_letters_are_kept(void **state) {
  NEED_MONGO();
  fx_t *fx = *state;
  cqrs_envelope_t *env;
  assert_int_equal(cqrs_envelope_new("ledger", "a", "c", NULL, &env, NULL), CQRS_OK);
  cqrs_event_t *e;
  ledger_amount_t a = {5};
  assert_int_equal(cqrs_event_new(&ledger_credited, env, NULL, 1, 0, &a, &e, NULL), CQRS_OK);
  cqrs_error_t why;
  cqrs_error_set(&why, CQRS_EHANDLER, "boom");
  cqrs_mongo_dead_letter("proj", e, &why, fx->m);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  cqrs_event_unref(e);
  cqrs_envelope_unref(env);
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

int main(void) {
  test_mongo_uri();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_dead_letters_are_kept, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
