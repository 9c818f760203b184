/* Stored commits corrupted behind the store's back are refused with a clear
 * "corrupt" codec error: no undefined behaviour (UBSan watches), no crash, no
 * leak. Invalid UTF-8 cannot be planted this way: FerretDB replaces it with
 * U+FFFD on insert; the decoder's check of it is exercised by fuzz/commit. */
#include "framework/ledger.h"
#include "raw_commit.h"

typedef struct fx {
  cqrs_registry_t *reg;
  cqrs_mongo_t *m;
  cqrs_store_t *s;
  raw_events_t raw;
} fx_t;

static int setup(void **state) {
  if (!test_mongo_uri()) {
    *state = NULL;
    return 0;
  }
  fx_t *fx = calloc(1, sizeof *fx);
  fx->reg = ledger_registry();
  cqrs_mongo_options_t o = {.events = "cqrs_events"};
  fx->m = test_mongo_open(fx->reg, NULL, &o);
  cqrs_mongo_store_new(fx->m, &fx->s, NULL);
  raw_events_open(&fx->raw, fx->m);
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  fx_t *fx = *state;
  if (!fx) return 0;
  raw_events_close(&fx->raw);
  cqrs_store_destroy(fx->s);
  test_mongo_close(fx->m);
  cqrs_registry_destroy(fx->reg);
  free(fx);
  return 0;
}

/* Writes commit number 1 of `count` credits of 5 to stream `id` at
 * `position`. */
static void insert_commit(fx_t *fx, const char *id, const char *command_id, int64_t position, int count) {
  int64_t last = position > INT64_MAX - (count - 1) ? INT64_MAX : position + (count - 1);
  raw_commit_t c = {1, "ledger.credited", 1000, 1, id, count, position, last, command_id, command_id};
  bson_t doc = BSON_INITIALIZER, events, *data = BCON_NEW("amount", BCON_INT64(5));
  raw_commit_begin(&doc, &events, &c);
  for (int i = 0; i < count; i++)
    raw_commit_event(&events, (uint32_t)i, "0123456789abcdef01234567", "ledger.credited", 1, i + 1, 1000, data);
  raw_commit_insert(&fx->raw, &doc, &events);
  bson_destroy(data);
  bson_destroy(&doc);
}

static bool count_event(const cqrs_event_t *e, void *data) {
  (void)e;
  (*(int *)data)++;
  return true;
}

static void expect_corrupt(cqrs_code_t rc, const cqrs_error_t *err) {
  assert_int_equal(rc, CQRS_ECODEC);
  if (!strstr(err->message, "corrupt")) fail_msg("'%s' does not say corrupt", err->message);
}

static void test_positions_at_the_edge_of_int64(void **state) {
  fx_t *fx = *state;
  if (!fx) skip();
  /* Three events from INT64_MAX - 1: the third has no position. */
  insert_commit(fx, "acc-1", "cmd-1", INT64_MAX - 1, 3);
  int seen = 0;
  cqrs_error_t err;
  expect_corrupt(cqrs_store_read_all(fx->s, 1, 100, count_event, &seen, &err), &err);
  assert_int_equal(seen, 2);
}

static void test_no_append_after_a_head_at_int64_max(void **state) {
  fx_t *fx = *state;
  if (!fx) skip();
  insert_commit(fx, "acc-1", "cmd-1", INT64_MAX - 1, 2); /* the head: INT64_MAX */
  cqrs_error_t err;
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_aggregate_new(&ledger_type, "acc-2", &agg, NULL), CQRS_OK);
  ledger_amount_t a = {1};
  assert_int_equal(cqrs_aggregate_raise(agg, &ledger_credited, &a, NULL), CQRS_OK);
  cqrs_cause_t cause = {"cmd-2", NULL};
  expect_corrupt(cqrs_repository_save(fx->s, agg, &cause, NULL, &err), &err);
  cqrs_aggregate_destroy(agg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_positions_at_the_edge_of_int64, setup, teardown),
      cmocka_unit_test_setup_teardown(test_no_append_after_a_head_at_int64_max, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
