#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cqrs/backend.h>

#include "ledger.h"

static int setup(void **state) {
  *state = ledger_registry();
  return 0;
}

static int teardown(void **state) {
  cqrs_registry_destroy(*state);
  return 0;
}

static void test_new_command_has_ids_and_payload(void **state) {
  (void)state;
  cqrs_command_t *a = ledger_credit_new("acc-1", 250), *b = ledger_credit_new("acc-1", 250);
  assert_ptr_equal(cqrs_command_type(a), &ledger_credit);
  assert_int_equal(strlen(cqrs_command_id(a)), 24);
  assert_string_not_equal(cqrs_command_id(a), cqrs_command_id(b));
  assert_string_equal(cqrs_command_correlation_id(a), cqrs_command_id(a));
  const ledger_move_cmd_t *p = cqrs_command_payload(a);
  assert_string_equal(p->id, "acc-1");
  assert_int_equal(p->amount, 250);
  assert_int_equal(cqrs_command_set_id(a, "client-42", NULL), CQRS_OK);
  assert_string_equal(cqrs_command_id(a), "client-42");
  assert_string_equal(cqrs_command_correlation_id(a), "client-42");
  assert_int_equal(cqrs_command_set_correlation_id(a, "conv-7", NULL), CQRS_OK);
  assert_int_equal(cqrs_command_set_id(a, "client-43", NULL), CQRS_OK);
  assert_string_equal(cqrs_command_correlation_id(a), "conv-7");
  cqrs_error_t err;
  assert_int_equal(cqrs_command_set_id(a, "", &err), CQRS_EINVAL);
  char big[100];
  memset(big, 'z', sizeof big - 1);
  big[99] = '\0';
  assert_int_equal(cqrs_command_set_id(a, big, &err), CQRS_ETOO_LARGE);
  assert_string_equal(cqrs_command_id(a), "client-43");
  cqrs_command_destroy(a);
  cqrs_command_destroy(b);
  cqrs_command_destroy(NULL);
}

static void test_invalid_commands_are_not_built(void **state) {
  (void)state;
  cqrs_command_t *cmd = (cqrs_command_t *)1;
  cqrs_error_t err;
  ledger_move_cmd_t bad_amount = {"acc", 0};
  assert_int_equal(cqrs_command_new(&ledger_credit, &bad_amount, &cmd, &err), CQRS_EINVALID_COMMAND);
  assert_null(cmd);
  assert_string_equal(err.name, "invalid_command");
  assert_non_null(strstr(err.message, "amount is out of range"));
  ledger_move_cmd_t no_id = {"", 5};
  assert_int_equal(cqrs_command_new(&ledger_credit, &no_id, &cmd, &err), CQRS_EINVALID_COMMAND);
  assert_non_null(strstr(err.message, "id is empty"));
  assert_int_equal(cqrs_command_new(&ledger_credit, NULL, &cmd, &err), CQRS_EINVALID_COMMAND);
  assert_int_equal(cqrs_command_new(NULL, &no_id, &cmd, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_command_new(&ledger_credit, &no_id, NULL, &err), CQRS_EINVAL);
}

static cqrs_code_t no_owner_named_root(const void *payload, cqrs_error_t *err) {
  const ledger_open_cmd_t *c = payload;
  if (!strcmp(c->owner, "root")) return cqrs_error_set(err, CQRS_EINVAL, "owner may not be root");
  return CQRS_OK;
}

static void test_custom_validation(void **state) {
  (void)state;
  cqrs_command_type_t strict = ledger_open;
  strict.validate = no_owner_named_root;
  ledger_open_cmd_t c = {"acc", "root"};
  cqrs_command_t *cmd;
  cqrs_error_t err;
  assert_int_equal(cqrs_command_new(&strict, &c, &cmd, &err), CQRS_EINVALID_COMMAND);
  assert_non_null(strstr(err.message, "owner may not be root"));
  strcpy(c.owner, "ada");
  assert_int_equal(cqrs_command_new(&strict, &c, &cmd, &err), CQRS_OK);
  cqrs_command_destroy(cmd);
}

static void test_bson_round_trip(void **state) {
  cqrs_registry_t *reg = *state;
  cqrs_command_t *a = ledger_debit_new("acc-9", 77);
  cqrs_command_set_correlation_id(a, "conv-1", NULL);
  bson_t b = BSON_INITIALIZER;
  assert_int_equal(cqrs_command_to_bson(a, &b, NULL), CQRS_OK);
  cqrs_command_t *c;
  cqrs_error_t err;
  assert_int_equal(cqrs_command_from_bson(reg, &b, &c, &err), CQRS_OK);
  assert_ptr_equal(cqrs_command_type(c), &ledger_debit);
  assert_string_equal(cqrs_command_id(c), cqrs_command_id(a));
  assert_string_equal(cqrs_command_correlation_id(c), "conv-1");
  assert_int_equal(((const ledger_move_cmd_t *)cqrs_command_payload(c))->amount, 77);
  bson_destroy(&b);
  cqrs_command_destroy(a);
  cqrs_command_destroy(c);
}

static void expect_from_json(cqrs_registry_t *reg, const char *json, cqrs_code_t code, const char *needle) {
  bson_error_t berr;
  bson_t *b = bson_new_from_json((const uint8_t *)json, -1, &berr);
  assert_non_null(b);
  cqrs_command_t *c = (cqrs_command_t *)1;
  cqrs_error_t err;
  assert_int_equal(cqrs_command_from_bson(reg, b, &c, &err), code);
  assert_null(c);
  if (!strstr(err.message, needle)) fail_msg("'%s' does not mention '%s'", err.message, needle);
  bson_destroy(b);
}

static void test_bad_documents(void **state) {
  cqrs_registry_t *reg = *state;
  expect_from_json(reg, "{\"data\":{}}", CQRS_ECODEC, "'type'");
  expect_from_json(reg, "{\"type\":\"ledger.nuke\",\"data\":{}}", CQRS_EUNKNOWN_TYPE, "ledger.nuke");
  expect_from_json(reg, "{\"type\":\"ledger.credit\"}", CQRS_ECODEC, "'data'");
  expect_from_json(reg, "{\"type\":\"ledger.credit\",\"data\":{\"id\":\"a\"}}", CQRS_ECODEC, "amount");
  expect_from_json(reg, "{\"type\":\"ledger.credit\",\"data\":{\"id\":\"a\",\"amount\":-5}}", CQRS_EINVALID_COMMAND,
                   "amount");
  expect_from_json(reg, "{\"type\":\"ledger.credit\",\"id\":5,\"data\":{\"id\":\"a\",\"amount\":5}}", CQRS_ECODEC,
                   "'id'");
  cqrs_command_t *c;
  assert_int_equal(cqrs_command_from_bson(NULL, NULL, &c, NULL), CQRS_EINVAL);
}

static cqrs_code_t id_from_account(const void *payload, char *buf, size_t cap, cqrs_error_t *err) {
  const ledger_open_cmd_t *c = payload;
  if (!strcmp(c->owner, "nobody")) return cqrs_error_set(err, CQRS_EINVAL, "nobody has no id");
  snprintf(buf, cap, "open:%s", c->id);
  return CQRS_OK;
}

static void test_natural_ids(void **state) {
  (void)state;
  cqrs_command_type_t natural = ledger_open;
  natural.make_id = id_from_account;
  ledger_open_cmd_t c = {"acc-7", "ada"};
  cqrs_command_t *a, *b;
  assert_int_equal(cqrs_command_new(&natural, &c, &a, NULL), CQRS_OK);
  assert_int_equal(cqrs_command_new(&natural, &c, &b, NULL), CQRS_OK);
  assert_string_equal(cqrs_command_id(a), "open:acc-7");
  assert_string_equal(cqrs_command_id(a), cqrs_command_id(b));
  assert_string_equal(cqrs_command_correlation_id(a), "open:acc-7");
  cqrs_command_destroy(a);
  cqrs_command_destroy(b);
  strcpy(c.owner, "nobody");
  cqrs_error_t err;
  assert_int_equal(cqrs_command_new(&natural, &c, &a, &err), CQRS_EINVALID_COMMAND);
  assert_non_null(strstr(err.message, "nobody has no id"));
}

/* Flips bytes of valid documents at random: decoding must answer OK or an
 * error, never crash, read out of bounds or leak (the sanitizers and valgrind
 * watch). */
static void test_corrupted_documents_are_refused_cleanly(void **state) {
  cqrs_registry_t *reg = *state;
  cqrs_command_t *cmd = ledger_credit_new("acc-1", 42);
  bson_t good = BSON_INITIALIZER;
  assert_int_equal(cqrs_command_to_bson(cmd, &good, NULL), CQRS_OK);
  cqrs_command_destroy(cmd);
  cqrs_envelope_t *env;
  cqrs_envelope_new("ledger", "acc-1", "c", NULL, &env, NULL);
  cqrs_event_t *e;
  ledger_amount_t a = {7};
  cqrs_event_new(&ledger_credited, env, NULL, 1, 1000, &a, &e, NULL);
  bson_t good_event = BSON_INITIALIZER;
  assert_int_equal(cqrs_event_to_bson(e, &good_event, NULL), CQRS_OK);
  cqrs_event_unref(e);
  cqrs_envelope_unref(env);
  srand(12345);
  int refused = 0, accepted = 0;
  for (int round = 0; round < 4000; round++) {
    const bson_t *src = round % 2 ? &good : &good_event;
    uint32_t len = src->len;
    uint8_t *buf = malloc(len);
    memcpy(buf, bson_get_data(src), len);
    int flips = 1 + rand() % 4;
    for (int f = 0; f < flips; f++) buf[4 + (size_t)rand() % (len - 5)] = (uint8_t)rand();
    bson_t doc;
    if (bson_init_static(&doc, buf, len)) {
      cqrs_error_t err;
      if (round % 2) {
        cqrs_command_t *c = NULL;
        cqrs_code_t rc = cqrs_command_from_bson(reg, &doc, &c, &err);
        rc == CQRS_OK ? accepted++ : refused++;
        if (rc) assert_null(c);
        cqrs_command_destroy(c);
      } else {
        cqrs_event_t *ev = NULL;
        cqrs_code_t rc = cqrs_event_from_bson(reg, &doc, &ev, &err);
        rc == CQRS_OK ? accepted++ : refused++;
        if (rc) assert_null(ev);
        cqrs_event_unref(ev);
      }
    }
    free(buf);
  }
  assert_true(refused > 1000); /* most corruptions are caught */
  bson_destroy(&good);
  bson_destroy(&good_event);
}

/* A document of a credit command whose `key` (in "data" when `in_data`)
 * holds bytes that are not UTF-8. */
static bson_t *credit_doc_with(const char *key, bool in_data, const char *bytes) {
  bson_t *b = bson_new(), data;
  bson_append_utf8(b, "type", -1, !strcmp(key, "type") ? bytes : "ledger.credit", -1);
  if (!strcmp(key, "id")) bson_append_utf8(b, "id", -1, bytes, -1);
  if (!strcmp(key, "correlationId")) bson_append_utf8(b, "correlationId", -1, bytes, -1);
  BSON_APPEND_DOCUMENT_BEGIN(b, "data", &data);
  bson_append_utf8(&data, "id", -1, in_data ? bytes : "acc-1", -1);
  BSON_APPEND_INT64(&data, "amount", 5);
  bson_append_document_end(b, &data);
  return b;
}

static void test_invalid_utf8_is_refused(void **state) {
  cqrs_registry_t *reg = *state;
  const char *keys[] = {"type", "id", "correlationId", "data.id"};
  const char *bad[] = {"acc\xc3", "\xff\xfe", "x\xc0\xaf"};
  for (size_t k = 0; k < 4; k++) {
    for (size_t i = 0; i < 3; i++) {
      bson_t *b = credit_doc_with(keys[k], k == 3, bad[i]);
      cqrs_command_t *c = (cqrs_command_t *)1;
      cqrs_error_t err;
      assert_int_equal(cqrs_command_from_bson(reg, b, &c, &err), CQRS_ECODEC);
      assert_null(c);
      if (!strstr(err.message, "corrupt command document") || !strstr(err.message, "UTF-8"))
        fail_msg("%s: %s", keys[k], err.message);
      bson_destroy(b);
    }
  }
  /* The same through the C API: ids and payload strings. */
  cqrs_command_t *cmd = ledger_credit_new("acc-1", 5);
  cqrs_error_t err;
  assert_int_equal(cqrs_command_set_id(cmd, "id-\xff", &err), CQRS_EINVAL);
  assert_non_null(strstr(err.message, "not valid UTF-8"));
  assert_int_equal(cqrs_command_set_correlation_id(cmd, "\xc3", &err), CQRS_EINVAL);
  assert_string_not_equal(cqrs_command_id(cmd), "id-\xff");
  cqrs_command_destroy(cmd);
  ledger_move_cmd_t p = {"acc-\xe2\x82", 5};
  cmd = (cqrs_command_t *)1;
  assert_int_equal(cqrs_command_new(&ledger_credit, &p, &cmd, &err), CQRS_EINVALID_COMMAND);
  assert_non_null(strstr(err.message, "id is not valid UTF-8"));
  assert_null(cmd);
  /* Valid multi-byte text passes. */
  bson_t *ok = credit_doc_with("id", false, "cr\xc3\xa9" "dit-1");
  assert_int_equal(cqrs_command_from_bson(reg, ok, &cmd, &err), CQRS_OK);
  assert_string_equal(cqrs_command_id(cmd), "cr\xc3\xa9" "dit-1");
  cqrs_command_destroy(cmd);
  bson_destroy(ok);
}

static cqrs_code_t id_not_utf8(const void *payload, char *buf, size_t cap, cqrs_error_t *err) {
  (void)payload;
  (void)err;
  snprintf(buf, cap, "open:\xff");
  return CQRS_OK;
}

static void test_natural_id_must_be_utf8(void **state) {
  (void)state;
  cqrs_command_type_t natural = ledger_open;
  natural.make_id = id_not_utf8;
  ledger_open_cmd_t c = {"acc-7", "ada"};
  cqrs_command_t *a = (cqrs_command_t *)1;
  cqrs_error_t err;
  assert_int_equal(cqrs_command_new(&natural, &c, &a, &err), CQRS_EINVALID_COMMAND);
  assert_non_null(strstr(err.message, "not valid UTF-8"));
  assert_null(a);
}

/* A command whose payload holds a collection: built, refused when an item
 * breaks its rule, sent as BSON and read back. An order with lines needs no
 * hand-written l0..l2 fields. */
typedef struct place_line {
  char sku[16];
  int32_t qty;
} place_line_t;
typedef struct place_order {
  char order_id[CQRS_ID_MAX];
  place_line_t lines[4];
  int32_t nlines;
} place_order_t;
static const cqrs_field_t place_line_fields[] = {CQRS_STRING(place_line_t, sku, "sku", CQRS_F_REQUIRED),
                                                 CQRS_INT32_RANGE(place_line_t, qty, "qty", 1, 99), CQRS_FIELDS_END};
static const cqrs_field_t place_line_item[] = {CQRS_ITEM_DOC(place_line_t, place_line_fields), CQRS_FIELDS_END};
static const cqrs_field_t place_fields[] = {CQRS_STRING(place_order_t, order_id, "orderId", CQRS_F_REQUIRED),
                                            CQRS_ARRAY(place_order_t, lines, nlines, "lines", place_line_item,
                                                       CQRS_F_REQUIRED),
                                            CQRS_FIELDS_END};
static const cqrs_command_type_t place_order = {.name = "order.place", .payload_size = sizeof(place_order_t),
                                                .fields = place_fields};

static void test_collections_in_commands(void **state) {
  cqrs_registry_t *reg = *state;
  assert_int_equal(cqrs_registry_add_command(reg, &place_order, NULL), CQRS_OK);
  place_order_t p = {"o-1", {{"apple", 2}, {"fig", 5}}, 2};
  cqrs_command_t *cmd;
  cqrs_error_t err;
  assert_int_equal(cqrs_command_new(&place_order, &p, &cmd, &err), CQRS_OK);
  bson_t b = BSON_INITIALIZER;
  assert_int_equal(cqrs_command_to_bson(cmd, &b, &err), CQRS_OK);
  cqrs_command_t *back;
  assert_int_equal(cqrs_command_from_bson(reg, &b, &back, &err), CQRS_OK);
  const place_order_t *q = cqrs_command_payload(back);
  assert_int_equal(q->nlines, 2);
  assert_string_equal(q->lines[1].sku, "fig");
  assert_int_equal(q->lines[1].qty, 5);
  cqrs_command_destroy(back);
  cqrs_command_destroy(cmd);
  bson_destroy(&b);
  p.lines[1].qty = 100;
  assert_int_equal(cqrs_command_new(&place_order, &p, &cmd, &err), CQRS_EINVALID_COMMAND);
  assert_non_null(strstr(err.message, "lines[1].qty"));
  p.lines[1].qty = 1;
  p.nlines = 0;
  assert_int_equal(cqrs_command_new(&place_order, &p, &cmd, &err), CQRS_EINVALID_COMMAND);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_new_command_has_ids_and_payload),
      cmocka_unit_test(test_invalid_commands_are_not_built),
      cmocka_unit_test(test_custom_validation),
      cmocka_unit_test(test_natural_ids),
      cmocka_unit_test(test_bson_round_trip),
      cmocka_unit_test_setup_teardown(test_collections_in_commands, setup, teardown),
      cmocka_unit_test(test_bad_documents),
      cmocka_unit_test(test_corrupted_documents_are_refused_cleanly),
      cmocka_unit_test(test_invalid_utf8_is_refused),
      cmocka_unit_test(test_natural_id_must_be_utf8),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
