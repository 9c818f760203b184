/* The one event codec (cqrs/backend.h): an event's body, written the same
 * by the MongoDB store (id as "eventId") and by cqrs_event_to_bson (id as
 * "id"), read back by cqrs_event_body_from_bson with the placeholder,
 * upcasting and integer rules the store's own decoder had. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include <cqrs/backend.h>

#include "ledger.h"
#include "same_event.h"

typedef struct fx {
  cqrs_registry_t *reg;
  cqrs_envelope_t *env;
} fx_t;

static int setup(void **state) {
  fx_t *fx = calloc(1, sizeof *fx);
  fx->reg = ledger_registry();
  assert_int_equal(cqrs_registry_add_event(fx->reg, &ledger_renamed, NULL), CQRS_OK);
  assert_int_equal(cqrs_registry_add_upcaster(fx->reg, "ledger.renamed", 1, ledger_renamed_upcast, NULL), CQRS_OK);
  assert_int_equal(cqrs_envelope_new("ledger", "acc-1", "cmd-1", "conv-1", &fx->env, NULL), CQRS_OK);
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  fx_t *fx = *state;
  cqrs_envelope_unref(fx->env);
  cqrs_registry_destroy(fx->reg);
  free(fx);
  return 0;
}

static const char *const body_keys[] = {"eventId", "type", "schemaVersion", "version", "timestamp", "data"};
static const bson_type_t body_types[] = {BSON_TYPE_UTF8,  BSON_TYPE_UTF8,      BSON_TYPE_INT32,
                                         BSON_TYPE_INT64, BSON_TYPE_DATE_TIME, BSON_TYPE_DOCUMENT};

/* The keys of `doc`, in order, are `keys` (of `types`), and nothing else. */
static void assert_keys(const bson_t *doc, const char *const *keys, const bson_type_t *types, size_t n) {
  bson_iter_t it;
  assert_true(bson_iter_init(&it, doc));
  for (size_t i = 0; i < n; i++) {
    assert_true(bson_iter_next(&it));
    assert_string_equal(bson_iter_key(&it), keys[i]);
    if (types) assert_int_equal(bson_iter_type(&it), types[i]);
  }
  assert_false(bson_iter_next(&it));
}

/* The body is six keys in a fixed order; decoding it gives the event back,
 * and encoding that gives the same bytes. */
static void test_body_round_trip(void **state) {
  fx_t *fx = *state;
  ledger_amount_t a = {42};
  cqrs_event_t *e, *back;
  assert_int_equal(cqrs_event_new(&ledger_credited, fx->env, NULL, 3, 1700000000123, &a, &e, NULL), CQRS_OK);
  e->position = 17;
  bson_t body = BSON_INITIALIZER, again = BSON_INITIALIZER;
  assert_int_equal(cqrs_event_body_to_bson(e, "eventId", &body, NULL), CQRS_OK);
  assert_keys(&body, body_keys, body_types, 6);
  cqrs_error_t err;
  assert_int_equal(cqrs_event_body_from_bson(fx->reg, &body, "eventId", fx->env, 17, false, &back, &err), CQRS_OK);
  assert_same_event(e, back);
  assert_int_equal(cqrs_event_body_to_bson(back, "eventId", &again, NULL), CQRS_OK);
  assert_true(bson_equal(&body, &again));
  /* The id under another key is no id: a new one. */
  cqrs_event_t *other;
  assert_int_equal(cqrs_event_body_from_bson(fx->reg, &body, NULL, fx->env, 17, false, &other, &err), CQRS_OK);
  assert_string_not_equal(other->id, e->id);
  cqrs_event_unref(other);
  /* NULL is "id"; a key of the body is refused both ways. */
  bson_t plain = BSON_INITIALIZER;
  assert_int_equal(cqrs_event_body_to_bson(e, NULL, &plain, NULL), CQRS_OK);
  static const char *const plain_keys[] = {"id", "type", "schemaVersion", "version", "timestamp", "data"};
  assert_keys(&plain, plain_keys, body_types, 6);
  bson_t junk = BSON_INITIALIZER;
  assert_int_equal(cqrs_event_body_to_bson(e, "type", &junk, &err), CQRS_EINVAL);
  assert_non_null(strstr(err.message, "'type'"));
  other = (cqrs_event_t *)1;
  assert_int_equal(cqrs_event_body_from_bson(fx->reg, &body, "data", fx->env, 17, false, &other, &err), CQRS_EINVAL);
  assert_null(other);
  assert_int_equal(cqrs_event_body_from_bson(fx->reg, &body, "eventId", NULL, 17, false, &other, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_event_body_to_bson(NULL, NULL, &junk, &err), CQRS_EINVAL);
  bson_destroy(&junk);
  bson_destroy(&plain);
  bson_destroy(&again);
  bson_destroy(&body);
  cqrs_event_unref(back);
  cqrs_event_unref(e);
}

/* A body of a type the registry does not know: a placeholder when asked,
 * which writes its original type, schema version and data back unchanged;
 * CQRS_EUNKNOWN_TYPE otherwise (a stream's load). */
static void test_unknown_type_placeholder(void **state) {
  fx_t *fx = *state;
  bson_t body = BSON_INITIALIZER, data, again = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&body, "eventId", "0123456789abcdef01234567");
  BSON_APPEND_UTF8(&body, "type", "ledger.audited");
  BSON_APPEND_INT32(&body, "schemaVersion", 7);
  BSON_APPEND_INT64(&body, "version", 4);
  BSON_APPEND_DATE_TIME(&body, "timestamp", 5000);
  BSON_APPEND_DOCUMENT_BEGIN(&body, "data", &data);
  BSON_APPEND_UTF8(&data, "by", "auditor");
  BSON_APPEND_DOUBLE(&data, "score", 0.5);
  bson_append_document_end(&body, &data);
  cqrs_event_t *e = (cqrs_event_t *)1;
  cqrs_error_t err;
  assert_int_equal(cqrs_event_body_from_bson(fx->reg, &body, "eventId", fx->env, 9, false, &e, &err),
                   CQRS_EUNKNOWN_TYPE);
  assert_null(e);
  assert_int_equal(cqrs_event_body_from_bson(fx->reg, &body, "eventId", fx->env, 9, true, &e, &err), CQRS_OK);
  assert_ptr_equal(e->type, &cqrs_unknown_event_type);
  const cqrs_unknown_event_t *u = e->payload;
  assert_string_equal(u->type, "ledger.audited");
  assert_int_equal(u->schema_version, 7);
  assert_string_equal(e->id, "0123456789abcdef01234567");
  assert_int_equal(e->version, 4);
  assert_int_equal(e->timestamp, 5000);
  assert_int_equal(e->position, 9);
  assert_ptr_equal(e->envelope, fx->env);
  assert_int_equal(cqrs_event_body_to_bson(e, "eventId", &again, NULL), CQRS_OK);
  assert_true(bson_equal(&body, &again));
  cqrs_event_unref(e);
  bson_destroy(&again);
  bson_destroy(&body);
}

/* A body at an older schema version is upcast, placeholder or not. */
static void test_old_schema_is_upcast(void **state) {
  fx_t *fx = *state;
  bson_t *body = BCON_NEW("eventId", BCON_UTF8("e-1"), "type", BCON_UTF8("ledger.renamed"), "schemaVersion",
                          BCON_INT32(1), "version", BCON_INT64(2), "timestamp", BCON_DATE_TIME(1000), "data", "{",
                          "title", BCON_UTF8("Savings"), "}");
  for (int placeholder = 0; placeholder < 2; placeholder++) {
    cqrs_event_t *e;
    cqrs_error_t err;
    assert_int_equal(cqrs_event_body_from_bson(fx->reg, body, "eventId", fx->env, 3, placeholder, &e, &err), CQRS_OK);
    assert_ptr_equal(e->type, &ledger_renamed);
    assert_int_equal(e->schema_version, 2);
    const ledger_renamed_t *p = e->payload;
    assert_string_equal(p->name, "Savings");
    assert_string_equal(p->reason, "unknown");
    /* Written back at the current version. */
    bson_t again = BSON_INITIALIZER;
    assert_int_equal(cqrs_event_body_to_bson(e, "eventId", &again, NULL), CQRS_OK);
    bson_iter_t it;
    assert_true(bson_iter_init_find(&it, &again, "schemaVersion"));
    assert_int_equal(bson_iter_int32(&it), 2);
    bson_destroy(&again);
    cqrs_event_unref(e);
  }
  /* From the future, or with no upcaster: refused. */
  bson_t *future = BCON_NEW("type", BCON_UTF8("ledger.renamed"), "schemaVersion", BCON_INT32(3), "version",
                            BCON_INT64(2), "timestamp", BCON_DATE_TIME(1000), "data", "{", "}");
  cqrs_event_t *e;
  cqrs_error_t err;
  assert_int_equal(cqrs_event_body_from_bson(fx->reg, future, NULL, fx->env, 3, true, &e, &err), CQRS_ECODEC);
  bson_destroy(future);
  bson_destroy(body);
}

/* Builds a credit body with `key` replaced by the value `with` appends
 * (NULL: left out). */
typedef void (*put_fn)(bson_t *b, const char *key);
static bson_t *credit_body(const char *key, put_fn with) {
  bson_t *b = bson_new(), data;
  if (strcmp(key, "eventId")) BSON_APPEND_UTF8(b, "eventId", "e-1");
  else if (with) with(b, key);
  const char *ints[] = {"schemaVersion", "version", "timestamp"};
  if (strcmp(key, "type")) BSON_APPEND_UTF8(b, "type", "ledger.credited");
  else if (with) with(b, key);
  for (int i = 0; i < 3; i++) {
    if (strcmp(key, ints[i])) BSON_APPEND_INT64(b, ints[i], i == 2 ? 1000 : 1);
    else if (with) with(b, key);
  }
  if (strcmp(key, "data")) {
    BSON_APPEND_DOCUMENT_BEGIN(b, "data", &data);
    BSON_APPEND_INT64(&data, "amount", 5);
    bson_append_document_end(b, &data);
  } else if (with) {
    with(b, key);
  }
  return b;
}

/* 1 for the schema version (the type's), 2 for the others. */
static int good_value(const char *k) { return strcmp(k, "schemaVersion") ? 2 : 1; }
static void put_int32(bson_t *b, const char *k) { BSON_APPEND_INT32(b, k, good_value(k)); }
static void put_double(bson_t *b, const char *k) { BSON_APPEND_DOUBLE(b, k, good_value(k) + 0.75); }
static void put_date(bson_t *b, const char *k) { BSON_APPEND_DATE_TIME(b, k, good_value(k)); }
static void put_huge(bson_t *b, const char *k) { BSON_APPEND_DOUBLE(b, k, 1e19); }
static void put_nan(bson_t *b, const char *k) { BSON_APPEND_DOUBLE(b, k, NAN); }
static void put_string(bson_t *b, const char *k) { BSON_APPEND_UTF8(b, k, "2"); }
static void put_bool(bson_t *b, const char *k) { BSON_APPEND_BOOL(b, k, true); }

/* Integers as int32, double (truncated) or date, as the store's decoder
 * always took them; anything else, or a key missing, is CQRS_ECODEC naming
 * the key. */
static void test_integers_and_malformed_bodies(void **state) {
  fx_t *fx = *state;
  const char *ints[] = {"schemaVersion", "version", "timestamp"};
  put_fn good[] = {put_int32, put_double, put_date};
  for (int k = 0; k < 3; k++) {
    for (int g = 0; g < 3; g++) {
      bson_t *b = credit_body(ints[k], good[g]);
      cqrs_event_t *e;
      cqrs_error_t err;
      assert_int_equal(cqrs_event_body_from_bson(fx->reg, b, "eventId", fx->env, 1, true, &e, &err), CQRS_OK);
      assert_ptr_equal(e->type, &ledger_credited);
      assert_int_equal(k == 0 ? e->schema_version : k == 1 ? e->version : e->timestamp, k == 0 ? 1 : 2);
      cqrs_event_unref(e);
      bson_destroy(b);
    }
    put_fn bad[] = {NULL, put_huge, put_nan, put_string, put_bool};
    for (int x = 0; x < 5; x++) {
      bson_t *b = credit_body(ints[k], bad[x]);
      cqrs_event_t *e = (cqrs_event_t *)1;
      cqrs_error_t err;
      assert_int_equal(cqrs_event_body_from_bson(fx->reg, b, "eventId", fx->env, 6, true, &e, &err), CQRS_ECODEC);
      assert_null(e);
      if (!strstr(err.message, ints[k]) || !strstr(err.message, "position 6")) fail_msg("%s", err.message);
      bson_destroy(b);
    }
  }
  const char *others[] = {"type", "data"};
  for (int k = 0; k < 2; k++) {
    put_fn bad[] = {NULL, put_int32};
    for (int x = 0; x < 2; x++) {
      bson_t *b = credit_body(others[k], bad[x]);
      cqrs_event_t *e;
      cqrs_error_t err;
      assert_int_equal(cqrs_event_body_from_bson(fx->reg, b, "eventId", fx->env, 1, true, &e, &err), CQRS_ECODEC);
      if (!strstr(err.message, others[k])) fail_msg("%s", err.message);
      bson_destroy(b);
    }
  }
  /* An id that is not a string, or none: a new id, as before. */
  bson_t *b = credit_body("eventId", put_int32);
  cqrs_event_t *e;
  assert_int_equal(cqrs_event_body_from_bson(fx->reg, b, "eventId", fx->env, 1, false, &e, NULL), CQRS_OK);
  assert_int_equal(strlen(e->id), 24);
  cqrs_event_unref(e);
  bson_destroy(b);
}

/* The integer rule itself, for a store's own fields. */
static void test_iter_int64(void **state) {
  (void)state;
  bson_t *b = BCON_NEW("i32", BCON_INT32(-7), "i64", BCON_INT64(INT64_MAX), "date", BCON_DATE_TIME(-1000), "dbl",
                       BCON_DOUBLE(-2.9), "big", BCON_DOUBLE(9.3e18), "str", BCON_UTF8("1"), "bool", BCON_BOOL(true));
  const char *keys[] = {"i32", "i64", "date", "dbl", "big", "str", "bool"};
  int64_t want[] = {-7, INT64_MAX, -1000, -2};
  for (int k = 0; k < 7; k++) {
    bson_iter_t it;
    assert_true(bson_iter_init_find(&it, b, keys[k]));
    int64_t v = 12345;
    assert_int_equal(cqrs_bson_iter_int64(&it, &v), k < 4);
    assert_int_equal(v, k < 4 ? want[k] : 12345);
  }
  int64_t v;
  assert_false(cqrs_bson_iter_int64(NULL, &v));
  bson_destroy(b);
}

static void put_schema(bson_t *b, int64_t v) {
  bson_t data;
  BSON_APPEND_UTF8(b, "type", "ledger.audited");
  BSON_APPEND_INT64(b, "schemaVersion", v);
  BSON_APPEND_INT64(b, "version", 1);
  BSON_APPEND_DATE_TIME(b, "timestamp", 0);
  BSON_APPEND_DOCUMENT_BEGIN(b, "data", &data);
  bson_append_document_end(b, &data);
}

/* A placeholder's schema version must fit its uint32_t; a key's first
 * occurrence is the one read, as bson_iter_find reads it. */
static void test_schema_range_and_first_key(void **state) {
  fx_t *fx = *state;
  int64_t bad[] = {0, -1, (int64_t)UINT32_MAX + 1}, good[] = {1, UINT32_MAX};
  for (int i = 0; i < 5; i++) {
    bson_t b = BSON_INITIALIZER;
    put_schema(&b, i < 3 ? bad[i] : good[i - 3]);
    cqrs_event_t *e = NULL;
    cqrs_error_t err;
    assert_int_equal(cqrs_event_body_from_bson(fx->reg, &b, NULL, fx->env, 1, true, &e, &err),
                     i < 3 ? CQRS_ECODEC : CQRS_OK);
    if (i >= 3) assert_int_equal(((const cqrs_unknown_event_t *)e->payload)->schema_version, (uint32_t)good[i - 3]);
    cqrs_event_unref(e);
    bson_destroy(&b);
  }
  bson_t *dup = BCON_NEW("type", BCON_UTF8("ledger.credited"), "type", BCON_UTF8("ledger.debited"), "schemaVersion",
                         BCON_INT32(1), "version", BCON_INT64(1), "version", BCON_INT64(9), "timestamp",
                         BCON_DATE_TIME(0), "data", "{", "amount", BCON_INT64(5), "}", "data", "{", "}");
  cqrs_event_t *e;
  assert_int_equal(cqrs_event_body_from_bson(fx->reg, dup, "eventId", fx->env, 1, false, &e, NULL), CQRS_OK);
  assert_int_equal(e->version, 1);
  assert_ptr_equal(e->type, &ledger_credited);
  assert_int_equal(((const ledger_amount_t *)e->payload)->amount, 5);
  cqrs_event_unref(e);
  bson_destroy(dup);
  /* The first "version" is a string: malformed, whatever follows. */
  bson_t *first_bad = BCON_NEW("type", BCON_UTF8("ledger.credited"), "schemaVersion", BCON_INT32(1), "version",
                               BCON_UTF8("1"), "version", BCON_INT64(1), "timestamp", BCON_DATE_TIME(0), "data", "{",
                               "amount", BCON_INT64(5), "}");
  e = (cqrs_event_t *)1;
  assert_int_equal(cqrs_event_body_from_bson(fx->reg, first_bad, "eventId", fx->env, 1, false, &e, NULL),
                   CQRS_ECODEC);
  assert_null(e);
  bson_destroy(first_bad);
}

/* cqrs_event_to_bson is the body with "id", then the envelope and the
 * position; a document of the key order it wrote before still decodes the
 * same; integers stored as doubles now decode there too. */
static void test_whole_event_document(void **state) {
  fx_t *fx = *state;
  ledger_opened_t o = {"Ada"};
  cqrs_event_t *e, *back;
  assert_int_equal(cqrs_event_new(&ledger_opened, fx->env, "0123456789abcdef01234567", 1, 1000, &o, &e, NULL),
                   CQRS_OK);
  e->position = 5;
  bson_t doc = BSON_INITIALIZER;
  assert_int_equal(cqrs_event_to_bson(e, &doc, NULL), CQRS_OK);
  static const char *const keys[] = {"id",           "type",        "schemaVersion", "version",
                                     "timestamp",    "data",        "aggregateType", "aggregateId",
                                     "position",     "causationId", "correlationId"};
  assert_keys(&doc, keys, NULL, 11);
  bson_t body = BSON_INITIALIZER;
  assert_int_equal(cqrs_event_body_to_bson(e, "id", &body, NULL), CQRS_OK);
  assert_int_equal(memcmp(bson_get_data(&doc) + 4, bson_get_data(&body) + 4, body.len - 5), 0);
  cqrs_error_t err;
  assert_int_equal(cqrs_event_from_bson(fx->reg, &doc, &back, &err), CQRS_OK);
  assert_same_event(e, back);
  cqrs_event_unref(back);
  /* The order of the keys before this codec, with doubles. */
  const char *old = "{\"id\":\"0123456789abcdef01234567\",\"type\":\"ledger.opened\",\"schemaVersion\":1.0,"
                    "\"aggregateType\":\"ledger\",\"aggregateId\":\"acc-1\",\"version\":1.0,"
                    "\"timestamp\":{\"$date\":1000},\"position\":5.0,\"causationId\":\"cmd-1\","
                    "\"correlationId\":\"conv-1\",\"data\":{\"owner\":\"Ada\"}}";
  bson_error_t berr;
  bson_t *before = bson_new_from_json((const uint8_t *)old, -1, &berr);
  assert_non_null(before);
  assert_int_equal(cqrs_event_from_bson(fx->reg, before, &back, &err), CQRS_OK);
  assert_same_event(e, back);
  cqrs_event_unref(back);
  bson_destroy(before);
  bson_destroy(&body);
  bson_destroy(&doc);
  cqrs_event_unref(e);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_body_round_trip),
      cmocka_unit_test(test_unknown_type_placeholder),
      cmocka_unit_test(test_old_schema_is_upcast),
      cmocka_unit_test(test_integers_and_malformed_bodies),
      cmocka_unit_test(test_iter_int64),
      cmocka_unit_test(test_schema_range_and_first_key),
      cmocka_unit_test(test_whole_event_document),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
