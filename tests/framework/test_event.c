#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include <cqrs/backend.h>

#include "ledger.h"

/* Version 2 of a "ledger.renamed" event: {name, reason}; version 1 was
 * {title}, and version 2 adds a reason. */
typedef struct renamed_v3 {
  char name[32];
  char reason[32];
  int64_t count;
} renamed_t;
static const cqrs_field_t renamed_fields[] = {CQRS_STRING(renamed_t, name, "name", CQRS_F_REQUIRED),
                                              CQRS_STRING(renamed_t, reason, "reason", 0),
                                              CQRS_INT64(renamed_t, count, "count", 0), CQRS_FIELDS_END};
static const cqrs_event_type_t renamed = {.name = "ledger.renamed", .schema_version = 3,
                                          .payload_size = sizeof(renamed_t), .fields = renamed_fields};

static cqrs_code_t v1_to_v2(const bson_t *in, bson_t *out, cqrs_error_t *err) {
  bson_iter_t it;
  if (!bson_iter_init_find(&it, in, "title") || !BSON_ITER_HOLDS_UTF8(&it))
    return cqrs_error_set(err, CQRS_ECODEC, "v1 lacks a title");
  BSON_APPEND_UTF8(out, "name", bson_iter_utf8(&it, NULL));
  BSON_APPEND_UTF8(out, "reason", "unknown");
  /* Past libbson's inline buffer, so that each step's document lives on the
   * heap: the chain must not copy bson_t values. */
  char note[300];
  memset(note, 'n', sizeof note - 1);
  note[sizeof note - 1] = '\0';
  BSON_APPEND_UTF8(out, "note", note);
  return CQRS_OK;
}

static cqrs_code_t v2_to_v3(const bson_t *in, bson_t *out, cqrs_error_t *err) {
  (void)err;
  bson_copy_to_excluding_noinit(in, out, "", NULL);
  BSON_APPEND_INT64(out, "count", 1);
  return CQRS_OK;
}

static int setup(void **state) {
  cqrs_registry_t *reg = ledger_registry();
  assert_int_equal(cqrs_registry_add_event(reg, &renamed, NULL), CQRS_OK);
  assert_int_equal(cqrs_registry_add_upcaster(reg, "ledger.renamed", 1, v1_to_v2, NULL), CQRS_OK);
  assert_int_equal(cqrs_registry_add_upcaster(reg, "ledger.renamed", 2, v2_to_v3, NULL), CQRS_OK);
  *state = reg;
  return 0;
}

static int teardown(void **state) {
  cqrs_registry_destroy(*state);
  return 0;
}

static void test_registry(void **state) {
  cqrs_registry_t *reg = *state;
  cqrs_error_t err;
  assert_ptr_equal(cqrs_registry_event(reg, "ledger.credited"), &ledger_credited);
  assert_ptr_equal(cqrs_registry_command(reg, "ledger.open"), &ledger_open);
  assert_ptr_equal(cqrs_registry_aggregate(reg, "ledger"), &ledger_type);
  assert_null(cqrs_registry_event(reg, "nope"));
  assert_null(cqrs_registry_event(reg, NULL));
  /* The same descriptor again is harmless; another one of the same name is refused. */
  assert_int_equal(cqrs_registry_add_event(reg, &ledger_credited, &err), CQRS_OK);
  cqrs_event_type_t clash = ledger_credited;
  assert_int_equal(cqrs_registry_add_event(reg, &clash, &err), CQRS_EDUPLICATE);
  assert_non_null(strstr(err.message, "ledger.credited"));
  cqrs_event_type_t nameless = {.name = NULL, .schema_version = 1, .payload_size = 8, .fields = renamed_fields};
  assert_int_equal(cqrs_registry_add_event(reg, &nameless, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_registry_add_upcaster(reg, "ledger.renamed", 1, v1_to_v2, &err), CQRS_EDUPLICATE);
  assert_int_equal(cqrs_registry_add_upcaster(reg, "ledger.renamed", 0, v1_to_v2, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_registry_add_event(NULL, &renamed, &err), CQRS_EINVAL);
}

static void test_event_bson_round_trip(void **state) {
  cqrs_registry_t *reg = *state;
  cqrs_envelope_t *env;
  assert_int_equal(cqrs_envelope_new("ledger", "acc-1", "cmd-1", "corr-1", &env, NULL), CQRS_OK);
  ledger_amount_t a = {42};
  cqrs_event_t *e;
  assert_int_equal(cqrs_event_new(&ledger_credited, env, NULL, 3, 1700000000000, &a, &e, NULL), CQRS_OK);
  e->position = 17;
  bson_t b = BSON_INITIALIZER;
  assert_int_equal(cqrs_event_to_bson(e, &b, NULL), CQRS_OK);
  cqrs_event_t *f;
  cqrs_error_t err;
  assert_int_equal(cqrs_event_from_bson(reg, &b, &f, &err), CQRS_OK);
  assert_string_equal(f->id, e->id);
  assert_ptr_equal(f->type, &ledger_credited);
  assert_int_equal(f->version, 3);
  assert_int_equal(f->position, 17);
  assert_int_equal(f->timestamp, 1700000000000);
  assert_string_equal(cqrs_event_aggregate_id(f), "acc-1");
  assert_string_equal(cqrs_event_causation_id(f), "cmd-1");
  assert_string_equal(cqrs_event_correlation_id(f), "corr-1");
  assert_int_equal(((const ledger_amount_t *)f->payload)->amount, 42);
  /* References: the event outlives the envelope's creator. */
  cqrs_envelope_unref(env);
  assert_ptr_equal(cqrs_event_ref(e), e);
  cqrs_event_unref(e);
  assert_string_equal(cqrs_event_aggregate_type(e), "ledger");
  cqrs_event_unref(e);
  cqrs_event_unref(f);
  cqrs_event_unref(NULL);
  bson_destroy(&b);
}

static void test_upcasting_old_payloads(void **state) {
  cqrs_registry_t *reg = *state;
  const char *v1 = "{\"id\":\"0123456789abcdef01234567\",\"type\":\"ledger.renamed\",\"schemaVersion\":1,"
                   "\"aggregateType\":\"ledger\",\"aggregateId\":\"acc-1\",\"version\":2,"
                   "\"timestamp\":{\"$date\":1000},\"position\":5,\"causationId\":\"c\",\"correlationId\":\"c\","
                   "\"data\":{\"title\":\"Savings\"}}";
  bson_error_t berr;
  bson_t *doc = bson_new_from_json((const uint8_t *)v1, -1, &berr);
  assert_non_null(doc);
  cqrs_event_t *e;
  cqrs_error_t err;
  assert_int_equal(cqrs_event_from_bson(reg, doc, &e, &err), CQRS_OK);
  assert_ptr_equal(e->type, &renamed);
  assert_int_equal(e->schema_version, 3);
  const renamed_t *p = e->payload;
  assert_string_equal(p->name, "Savings");
  assert_string_equal(p->reason, "unknown");
  assert_int_equal(p->count, 1);
  cqrs_event_unref(e);
  bson_destroy(doc);

  /* A version from the future, a broken v1 and a type nobody knows. */
  bson_t data = BSON_INITIALIZER;
  const cqrs_event_type_t *type;
  void *payload;
  assert_int_equal(cqrs_registry_decode_payload(reg, "ledger.renamed", 4, &data, &type, &payload, &err), CQRS_ECODEC);
  assert_int_equal(cqrs_registry_decode_payload(reg, "ledger.renamed", 1, &data, &type, &payload, &err), CQRS_ECODEC);
  assert_non_null(strstr(err.message, "title"));
  assert_int_equal(cqrs_registry_decode_payload(reg, "ledger.gone", 1, &data, &type, &payload, &err),
                   CQRS_EUNKNOWN_TYPE);
  BSON_APPEND_UTF8(&data, "title", "T");
  assert_int_equal(cqrs_registry_decode_payload(reg, "ledger.renamed", 1, &data, &type, &payload, &err), CQRS_OK);
  assert_string_equal(((renamed_t *)payload)->name, "T");
  cqrs_payload_free(payload);
  bson_destroy(&data);
}

static void test_bad_event_documents(void **state) {
  cqrs_registry_t *reg = *state;
  const char *docs[] = {
      "{}",
      "{\"type\":\"ledger.credited\",\"schemaVersion\":1,\"aggregateType\":\"ledger\",\"aggregateId\":\"a\","
      "\"version\":1,\"timestamp\":{\"$date\":0}}",
      "{\"type\":\"ledger.credited\",\"schemaVersion\":1,\"aggregateType\":\"ledger\",\"aggregateId\":\"a\","
      "\"version\":0,\"timestamp\":{\"$date\":0},\"data\":{\"amount\":5}}",
      "{\"id\":\"far-too-long-for-an-event-id-really\",\"type\":\"ledger.credited\",\"schemaVersion\":1,"
      "\"aggregateType\":\"ledger\",\"aggregateId\":\"a\",\"version\":1,\"timestamp\":{\"$date\":0},"
      "\"data\":{\"amount\":5}}",
  };
  cqrs_code_t want[] = {CQRS_ECODEC, CQRS_ECODEC, CQRS_EINVAL, CQRS_ETOO_LARGE};
  for (size_t i = 0; i < sizeof docs / sizeof docs[0]; i++) {
    bson_error_t berr;
    bson_t *doc = bson_new_from_json((const uint8_t *)docs[i], -1, &berr);
    assert_non_null(doc);
    cqrs_event_t *e = (cqrs_event_t *)1;
    assert_int_equal(cqrs_event_from_bson(reg, doc, &e, NULL), want[i]);
    assert_null(e);
    bson_destroy(doc);
  }
}

/* An event document whose `key` holds bytes that are not UTF-8. */
static bson_t *event_doc_with(const char *key, const char *bytes) {
  static const char *const keys[] = {"id", "type", "aggregateType", "aggregateId", "causationId", "correlationId"};
  static const char *const values[] = {"0123456789abcdef01234567", "ledger.credited", "ledger", "acc-1", "c", "c"};
  bson_t *b = bson_new(), data;
  for (size_t i = 0; i < 6; i++) bson_append_utf8(b, keys[i], -1, !strcmp(key, keys[i]) ? bytes : values[i], -1);
  BSON_APPEND_INT32(b, "schemaVersion", 1);
  BSON_APPEND_INT64(b, "version", 1);
  BSON_APPEND_DATE_TIME(b, "timestamp", 1000);
  BSON_APPEND_INT64(b, "position", 1);
  BSON_APPEND_DOCUMENT_BEGIN(b, "data", &data);
  BSON_APPEND_INT64(&data, "amount", 5);
  bson_append_document_end(b, &data);
  return b;
}

static void test_invalid_utf8_is_refused(void **state) {
  cqrs_registry_t *reg = *state;
  const char *keys[] = {"id", "type", "aggregateType", "aggregateId", "causationId", "correlationId"};
  for (size_t k = 0; k < 6; k++) {
    bson_t *b = event_doc_with(keys[k], "a\xff");
    cqrs_event_t *e = (cqrs_event_t *)1;
    cqrs_error_t err;
    assert_int_equal(cqrs_event_from_bson(reg, b, &e, &err), CQRS_ECODEC);
    assert_null(e);
    if (!strstr(err.message, "corrupt event document") || !strstr(err.message, keys[k]))
      fail_msg("%s: %s", keys[k], err.message);
    bson_destroy(b);
  }
  bson_t *ok = event_doc_with("aggregateId", "compte-\xc3\xa9t\xc3\xa9");
  cqrs_event_t *e;
  assert_int_equal(cqrs_event_from_bson(reg, ok, &e, NULL), CQRS_OK);
  assert_string_equal(cqrs_event_aggregate_id(e), "compte-\xc3\xa9t\xc3\xa9");
  cqrs_event_unref(e);
  bson_destroy(ok);
  /* The C API: envelopes and event ids. */
  cqrs_envelope_t *env = (cqrs_envelope_t *)1;
  cqrs_error_t err;
  assert_int_equal(cqrs_envelope_new("ledger", "acc-\xc3", "c", NULL, &env, &err), CQRS_EINVAL);
  assert_null(env);
  assert_int_equal(cqrs_envelope_new("ledger\xff", "acc", "c", NULL, &env, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_envelope_new("ledger", "acc", "c\xff", NULL, &env, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_envelope_new("ledger", "acc", "c", "\xe2\x82", &env, &err), CQRS_EINVAL);
  assert_non_null(strstr(err.message, "not valid UTF-8"));
  assert_int_equal(cqrs_envelope_new("ledger", "acc", "c", NULL, &env, &err), CQRS_OK);
  ledger_amount_t a = {1};
  assert_int_equal(cqrs_event_new(&ledger_credited, env, "id\xff", 1, 0, &a, &e, &err), CQRS_EINVAL);
  assert_null(e);
  cqrs_envelope_unref(env);
}

/* A version of INT64_MAX leaves no room for the next one: refused, so that
 * rehydration never computes INT64_MAX + 1. */
static void test_version_must_leave_room(void **state) {
  cqrs_registry_t *reg = *state;
  cqrs_envelope_t *env;
  assert_int_equal(cqrs_envelope_new("ledger", "acc", "c", NULL, &env, NULL), CQRS_OK);
  ledger_amount_t a = {1};
  cqrs_event_t *e = (cqrs_event_t *)1;
  cqrs_error_t err;
  assert_int_equal(cqrs_event_new(&ledger_credited, env, NULL, INT64_MAX, 0, &a, &e, &err), CQRS_EINVAL);
  assert_null(e);
  assert_int_equal(cqrs_event_new(&ledger_credited, env, NULL, INT64_MAX - 1, 0, &a, &e, &err), CQRS_OK);
  cqrs_event_unref(e);
  cqrs_envelope_unref(env);
  bson_t *b = event_doc_with("", "");
  bson_t doc = BSON_INITIALIZER;
  bson_copy_to_excluding_noinit(b, &doc, "version", NULL);
  BSON_APPEND_INT64(&doc, "version", INT64_MAX);
  assert_int_equal(cqrs_event_from_bson(reg, &doc, &e, &err), CQRS_EINVAL);
  bson_destroy(&doc);
  bson_destroy(b);
}

/* Found by fuzz/event and fuzz/upcast: a nested document whose string lacks
 * its NUL, or whose own terminator is wrong, passes libbson's bson_validate
 * (1.23), and bson_copy_to_excluding_noinit (in the v2 upcaster here, as in
 * many an application's) then aborts. Such a payload is corrupt: refused
 * before any upcaster runs. */
static void expect_payload_refused(cqrs_registry_t *reg, size_t corrupt_at_end_minus) {
  bson_t good = BSON_INITIALIZER, d;
  BSON_APPEND_UTF8(&good, "name", "T");
  BSON_APPEND_DOCUMENT_BEGIN(&good, "d", &d);
  BSON_APPEND_UTF8(&d, "s", "ab");
  bson_append_document_end(&good, &d);
  uint8_t bytes[64];
  memcpy(bytes, bson_get_data(&good), good.len);
  /* The document ends "a b \0 (string) \0 (d) \0 (top)". */
  bytes[good.len - corrupt_at_end_minus] = 'X';
  bson_t bad;
  assert_true(bson_init_static(&bad, bytes, good.len));
  const cqrs_event_type_t *type;
  void *payload = (void *)1;
  cqrs_error_t err;
  assert_int_equal(cqrs_registry_decode_payload(reg, "ledger.renamed", 2, &bad, &type, &payload, &err), CQRS_ECODEC);
  assert_null(payload);
  if (!strstr(err.message, "corrupt payload")) fail_msg("%s", err.message);
  assert_int_equal(cqrs_bson_check_utf8(&bad, &err), CQRS_ECODEC);
  assert_non_null(strstr(err.message, "malformed"));
  /* The same payload inside an event document. */
  bson_t doc = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&doc, "type", "ledger.renamed");
  BSON_APPEND_INT32(&doc, "schemaVersion", 2);
  BSON_APPEND_UTF8(&doc, "aggregateType", "ledger");
  BSON_APPEND_UTF8(&doc, "aggregateId", "a");
  BSON_APPEND_INT64(&doc, "version", 1);
  BSON_APPEND_DATE_TIME(&doc, "timestamp", 0);
  BSON_APPEND_DOCUMENT(&doc, "data", &bad);
  cqrs_event_t *e = (cqrs_event_t *)1;
  assert_int_equal(cqrs_event_from_bson(reg, &doc, &e, &err), CQRS_ECODEC);
  assert_null(e);
  bson_destroy(&doc);
  bson_destroy(&good);
}

static void test_corrupt_payload_never_reaches_an_upcaster(void **state) {
  expect_payload_refused(*state, 3); /* the string's NUL */
  expect_payload_refused(*state, 2); /* the nested document's terminator */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_registry),
      cmocka_unit_test(test_event_bson_round_trip),
      cmocka_unit_test(test_upcasting_old_payloads),
      cmocka_unit_test(test_bad_event_documents),
      cmocka_unit_test(test_invalid_utf8_is_refused),
      cmocka_unit_test(test_version_must_leave_room),
      cmocka_unit_test(test_corrupt_payload_never_reaches_an_upcaster),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
