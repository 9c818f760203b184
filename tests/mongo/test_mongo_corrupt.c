/* Stored commits corrupted behind the store's back are refused with a clear
 * "corrupt" codec error: no undefined behaviour (UBSan watches), no crash, no
 * leak. Invalid UTF-8 cannot be planted this way: FerretDB replaces it with
 * U+FFFD on insert; the decoder's check of it is exercised by fuzz/commit. */
#include <mongoc/mongoc.h>

#include "framework/ledger.h"
#include "mongo_fixture.h"

typedef struct fx {
  cqrs_registry_t *reg;
  cqrs_mongo_t *m;
  cqrs_store_t *s;
  mongoc_client_t *client;
  mongoc_collection_t *events;
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
  fx->client = mongoc_client_new(test_mongo_uri());
  assert_non_null(fx->client);
  fx->events = mongoc_client_get_collection(fx->client, cqrs_mongo_database(fx->m), "cqrs_events");
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  fx_t *fx = *state;
  if (!fx) return 0;
  mongoc_collection_destroy(fx->events);
  mongoc_client_destroy(fx->client);
  cqrs_store_destroy(fx->s);
  test_mongo_close(fx->m);
  cqrs_registry_destroy(fx->reg);
  free(fx);
  return 0;
}

static void append_credit(bson_t *doc, int64_t version) {
  bson_t data;
  BSON_APPEND_UTF8(doc, "eventId", "0123456789abcdef01234567");
  BSON_APPEND_UTF8(doc, "type", "ledger.credited");
  BSON_APPEND_INT32(doc, "schemaVersion", 1);
  BSON_APPEND_INT64(doc, "version", version);
  BSON_APPEND_DATE_TIME(doc, "timestamp", 1000);
  BSON_APPEND_DOCUMENT_BEGIN(doc, "data", &data);
  BSON_APPEND_INT64(&data, "amount", 5);
  bson_append_document_end(doc, &data);
}

/* Writes commit number 1 of `count` credits of stream `id` at `position`,
 * shaped as the store writes them (see build_commit in mongo_store.c): _id
 * the zero-padded commit number, the first event's fields at the top, every
 * event in `events`. */
static void insert_commit(fx_t *fx, const char *id, const char *command_id, int64_t position, int count) {
  bson_t doc = BSON_INITIALIZER, events;
  BSON_APPEND_UTF8(&doc, "_id", "00000000000000000001");
  BSON_APPEND_UTF8(&doc, "type", "ledger.credited");
  BSON_APPEND_DATE_TIME(&doc, "timestamp", 1000);
  BSON_APPEND_INT64(&doc, "version", 1);
  bson_append_utf8(&doc, "aggregateType", -1, "ledger", -1);
  bson_append_utf8(&doc, "aggregateId", -1, id, -1);
  BSON_APPEND_INT64(&doc, "lastVersion", count);
  BSON_APPEND_INT64(&doc, "position", position);
  BSON_APPEND_INT64(&doc, "lastPosition", position > INT64_MAX - (count - 1) ? INT64_MAX : position + (count - 1));
  bson_append_utf8(&doc, "commandId", -1, command_id, -1);
  bson_append_utf8(&doc, "correlationId", -1, command_id, -1);
  BSON_APPEND_ARRAY_BEGIN(&doc, "events", &events);
  for (int i = 0; i < count; i++) {
    char key[16];
    snprintf(key, sizeof key, "%d", i);
    bson_t ev;
    BSON_APPEND_DOCUMENT_BEGIN(&events, key, &ev);
    append_credit(&ev, i + 1);
    bson_append_document_end(&events, &ev);
  }
  bson_append_array_end(&doc, &events);
  bson_error_t e;
  if (!mongoc_collection_insert_one(fx->events, &doc, NULL, NULL, &e)) fail_msg("insert: %s", e.message);
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
