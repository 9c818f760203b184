#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include <cqrs/cqrs.h>

typedef struct address {
  char city[16];
  int32_t zip;
} address_t;

typedef struct person {
  char name[8];
  int64_t age;
  bool vip;
  int64_t born;
  cqrs_money_t wallet;
  address_t home;
  char nick[8];
} person_t;

static const cqrs_field_t address_fields[] = {CQRS_STRING(address_t, city, "city", CQRS_F_REQUIRED),
                                              CQRS_INT32(address_t, zip, "zip", 0), CQRS_FIELDS_END};
static const cqrs_field_t person_fields[] = {
    CQRS_STRING(person_t, name, "name", CQRS_F_REQUIRED),
    CQRS_INT64_RANGE(person_t, age, "age", 0, 150),
    CQRS_BOOL(person_t, vip, "vip", 0),
    CQRS_TIME(person_t, born, "born", 0),
    CQRS_MONEY_RANGE(person_t, wallet, "wallet", 1, INT64_MAX),
    CQRS_DOC(person_t, home, "home", address_fields, 0),
    CQRS_STRING(person_t, nick, "nick", CQRS_F_OPTIONAL),
    CQRS_FIELDS_END,
};

static person_t sample(void) {
  person_t p;
  memset(&p, 0, sizeof p);
  strcpy(p.name, "Ada");
  p.age = 36;
  p.vip = true;
  p.born = 1700000000123;
  cqrs_money_set(&p.wallet, 150000, "EUR", NULL);
  strcpy(p.home.city, "Paris");
  p.home.zip = 75001;
  strcpy(p.nick, "ada");
  return p;
}

static void test_round_trip(void **state) {
  (void)state;
  person_t p = sample(), q;
  bson_t b = BSON_INITIALIZER;
  assert_int_equal(cqrs_fields_encode(person_fields, &p, &b, NULL), CQRS_OK);
  bson_iter_t it;
  assert_true(bson_iter_init_find(&it, &b, "born"));
  assert_true(BSON_ITER_HOLDS_DATE_TIME(&it));
  assert_true(bson_iter_init(&it, &b));
  bson_iter_t v;
  assert_true(bson_iter_find_descendant(&it, "wallet.amount", &v));
  assert_true(BSON_ITER_HOLDS_INT64(&v));
  assert_int_equal(bson_iter_int64(&v), 150000);
  assert_int_equal(cqrs_fields_decode(person_fields, &b, &q, NULL), CQRS_OK);
  assert_string_equal(q.name, "Ada");
  assert_int_equal(q.age, 36);
  assert_true(q.vip);
  assert_int_equal(q.born, 1700000000123);
  assert_int_equal(q.wallet.amount, 150000);
  assert_string_equal(q.wallet.currency, "EUR");
  assert_string_equal(q.home.city, "Paris");
  assert_int_equal(q.home.zip, 75001);
  assert_string_equal(q.nick, "ada");
  bson_destroy(&b);
}

static void expect_decode_error(const char *json, const char *needle) {
  bson_error_t berr;
  bson_t *b = bson_new_from_json((const uint8_t *)json, -1, &berr);
  assert_non_null(b);
  person_t q;
  cqrs_error_t err;
  assert_int_equal(cqrs_fields_decode(person_fields, b, &q, &err), CQRS_ECODEC);
  if (!strstr(err.message, needle)) fail_msg("'%s' does not mention '%s'", err.message, needle);
  bson_destroy(b);
}

static void test_decode_errors_name_the_field(void **state) {
  (void)state;
  const char *base_ok = "{\"name\":\"Ada\",\"age\":1,\"vip\":true,\"born\":{\"$date\":0},"
                        "\"wallet\":{\"amount\":1,\"currency\":\"EUR\"},\"home\":{\"city\":\"X\",\"zip\":1}}";
  bson_error_t berr;
  bson_t *ok = bson_new_from_json((const uint8_t *)base_ok, -1, &berr);
  person_t q;
  assert_int_equal(cqrs_fields_decode(person_fields, ok, &q, NULL), CQRS_OK);
  assert_string_equal(q.nick, ""); /* optional and absent */
  bson_destroy(ok);
  expect_decode_error("{\"age\":1}", "'name' is missing");
  expect_decode_error("{\"name\":12}", "'name' must be a string");
  expect_decode_error("{\"name\":\"much too long\"}", "'name' is longer than 7 bytes");
  expect_decode_error("{\"name\":\"a\",\"age\":\"old\"}", "'age' must be an integer");
  expect_decode_error("{\"name\":\"a\",\"age\":1,\"vip\":1}", "'vip' must be a boolean");
  expect_decode_error("{\"name\":\"a\",\"age\":1,\"vip\":true,\"born\":{\"$date\":0},\"wallet\":{\"amount\":1.5,\"currency\":\"EUR\"}}",
                      "wallet");
  expect_decode_error("{\"name\":\"a\",\"age\":1,\"vip\":true,\"born\":{\"$date\":0},\"wallet\":{\"amount\":1}}",
                      "'wallet' lacks amount or currency");
  expect_decode_error("{\"name\":\"a\",\"age\":1,\"vip\":true,\"born\":{\"$date\":0},"
                      "\"wallet\":{\"amount\":1,\"currency\":\"EUR\"},\"home\":{\"zip\":1}}",
                      "'city' is missing");
}

static void test_malformed_bson_is_refused(void **state) {
  (void)state;
  uint8_t junk[16] = {16, 0, 0, 0, 2, 'a', 0, 200, 0, 0, 0, 'x', 0, 0, 0, 0};
  bson_t b;
  person_t q;
  cqrs_error_t err;
  if (bson_init_static(&b, junk, sizeof junk)) {
    assert_int_equal(cqrs_fields_decode(person_fields, &b, &q, &err), CQRS_ECODEC);
  }
  assert_int_equal(cqrs_fields_decode(person_fields, NULL, &q, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_fields_encode(NULL, &q, NULL, &err), CQRS_EINVAL);
}

static void test_validation(void **state) {
  (void)state;
  person_t p = sample();
  cqrs_error_t err;
  assert_int_equal(cqrs_fields_validate(person_fields, &p, &err), CQRS_OK);
  p.age = 151;
  assert_int_equal(cqrs_fields_validate(person_fields, &p, &err), CQRS_EINVALID_COMMAND);
  assert_non_null(strstr(err.message, "age is out of range"));
  p = sample();
  p.name[0] = '\0';
  assert_int_equal(cqrs_fields_validate(person_fields, &p, &err), CQRS_EINVALID_COMMAND);
  assert_non_null(strstr(err.message, "name is empty"));
  p = sample();
  memset(p.name, 'x', sizeof p.name); /* not terminated: oversized */
  assert_int_equal(cqrs_fields_validate(person_fields, &p, &err), CQRS_EINVALID_COMMAND);
  assert_non_null(strstr(err.message, "longer than 7"));
  p = sample();
  p.wallet.amount = 0;
  assert_int_equal(cqrs_fields_validate(person_fields, &p, &err), CQRS_EINVALID_COMMAND);
  assert_non_null(strstr(err.message, "wallet amount"));
  p = sample();
  strcpy(p.wallet.currency, "eu");
  assert_int_equal(cqrs_fields_validate(person_fields, &p, &err), CQRS_EINVALID_COMMAND);
  p = sample();
  p.home.city[0] = '\0';
  assert_int_equal(cqrs_fields_validate(person_fields, &p, &err), CQRS_EINVALID_COMMAND);
  assert_non_null(strstr(err.message, "home.city is empty"));
}

static void test_helpers(void **state) {
  (void)state;
  char buf[4];
  cqrs_error_t err;
  assert_int_equal(cqrs_strlcpy(buf, sizeof buf, "abc", &err), CQRS_OK);
  assert_string_equal(buf, "abc");
  assert_int_equal(cqrs_strlcpy(buf, sizeof buf, "abcd", &err), CQRS_ETOO_LARGE);
  assert_int_equal(cqrs_strlcpy(buf, sizeof buf, NULL, &err), CQRS_EINVAL);
  cqrs_money_t m;
  assert_int_equal(cqrs_money_set(&m, 5, "USD", &err), CQRS_OK);
  assert_int_equal(cqrs_money_set(&m, 5, "US", &err), CQRS_EINVAL);
  assert_int_equal(cqrs_money_set(&m, 5, "usd", &err), CQRS_EINVAL);
  assert_int_equal(cqrs_money_set(&m, 5, "EURO", &err), CQRS_EINVAL);
}

/* Strings and keys that are not UTF-8: a truncated sequence, a stray
 * continuation byte, an overlong '/', a UTF-16 surrogate. */
static const char *const not_utf8[] = {"ab\xc3", "\xff", "a\xc0\xaf", "\xed\xa0\x80"};

static void test_invalid_utf8_is_refused(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof not_utf8 / sizeof not_utf8[0]; i++) {
    person_t p = sample(), q;
    strcpy(p.name, not_utf8[i]);
    cqrs_error_t err;
    assert_int_equal(cqrs_fields_validate(person_fields, &p, &err), CQRS_EINVALID_COMMAND);
    if (!strstr(err.message, "name is not valid UTF-8")) fail_msg("%s", err.message);
    bson_t b = BSON_INITIALIZER;
    assert_int_equal(cqrs_fields_encode(person_fields, &p, &b, NULL), CQRS_OK);
    assert_int_equal(cqrs_fields_decode(person_fields, &b, &q, &err), CQRS_ECODEC);
    if (!strstr(err.message, "'name' is not valid UTF-8")) fail_msg("%s", err.message);
    assert_int_equal(cqrs_bson_check_utf8(&b, &err), CQRS_ECODEC);
    bson_destroy(&b);
    p = sample();
    strcpy(p.home.city, not_utf8[i]); /* in a nested document */
    assert_int_equal(cqrs_fields_validate(person_fields, &p, &err), CQRS_EINVALID_COMMAND);
    assert_non_null(strstr(err.message, "home.city is not valid UTF-8"));
    bson_init(&b);
    assert_int_equal(cqrs_fields_encode(person_fields, &p, &b, NULL), CQRS_OK);
    assert_int_equal(cqrs_fields_decode(person_fields, &b, &q, &err), CQRS_ECODEC);
    assert_non_null(strstr(err.message, "'city' is not valid UTF-8"));
    bson_destroy(&b);
  }
  person_t p = sample(), q;
  strcpy(p.name, "Zo\xc3\xab"); /* "Zoë" is UTF-8 */
  bson_t b = BSON_INITIALIZER;
  assert_int_equal(cqrs_fields_validate(person_fields, &p, NULL), CQRS_OK);
  assert_int_equal(cqrs_fields_encode(person_fields, &p, &b, NULL), CQRS_OK);
  assert_int_equal(cqrs_fields_decode(person_fields, &b, &q, NULL), CQRS_OK);
  assert_string_equal(q.name, "Zo\xc3\xab");
  assert_int_equal(cqrs_bson_check_utf8(&b, NULL), CQRS_OK);
  bson_destroy(&b);
}

/* The check reads eight bytes at a time, the last word overlapping: a bad
 * byte (NUL, a stray continuation, a truncated sequence) is found at every
 * position of strings from 1 to 40 bytes, and good two-byte characters
 * anywhere pass. */
static void test_utf8_found_at_every_position(void **state) {
  (void)state;
  static const char bad[] = {'\0', '\xff', '\x80', '\xc3'};
  char s[41];
  for (size_t n = 1; n <= 40; n++) {
    for (size_t at = 0; at < n; at++) {
      for (size_t k = 0; k < sizeof bad; k++) {
        memset(s, 'a', n);
        s[at] = bad[k];
        bson_t b = BSON_INITIALIZER;
        bson_append_utf8(&b, "s", -1, s, (int)n);
        if (cqrs_bson_check_utf8(&b, NULL) != CQRS_ECODEC) fail_msg("byte %02x at %zu of %zu passed", (unsigned char)bad[k], at, n);
        bson_destroy(&b);
      }
      if (at + 1 < n) {
        memset(s, 'a', n);
        s[at] = '\xc3';
        s[at + 1] = '\xab';
        bson_t b = BSON_INITIALIZER;
        bson_append_utf8(&b, "s", -1, s, (int)n);
        if (cqrs_bson_check_utf8(&b, NULL) != CQRS_OK) fail_msg("a good character at %zu of %zu refused", at, n);
        bson_destroy(&b);
      }
    }
  }
}

static void test_check_utf8_walks_every_string(void **state) {
  (void)state;
  cqrs_error_t err;
  bson_t b = BSON_INITIALIZER, arr, doc;
  BSON_APPEND_UTF8(&b, "ok", "fine");
  BSON_APPEND_ARRAY_BEGIN(&b, "list", &arr);
  BSON_APPEND_DOCUMENT_BEGIN(&arr, "0", &doc);
  bson_append_utf8(&doc, "deep", -1, "x\xff", 2);
  bson_append_array_end(&arr, &doc); /* closes the document inside the array */
  bson_append_array_end(&b, &arr);
  assert_int_equal(cqrs_bson_check_utf8(&b, &err), CQRS_ECODEC);
  if (!strstr(err.message, "'deep' is not valid UTF-8")) fail_msg("%s", err.message);
  bson_destroy(&b);
  bson_init(&b);
  bson_append_utf8(&b, "nul", -1, "a\0b", 3);
  assert_int_equal(cqrs_bson_check_utf8(&b, &err), CQRS_ECODEC);
  bson_destroy(&b);
  bson_init(&b);
  bson_append_int32(&b, "k\xff", -1, 1);
  assert_int_equal(cqrs_bson_check_utf8(&b, &err), CQRS_ECODEC);
  bson_destroy(&b);
  /* Nesting past the limit is refused, not followed down the C stack. */
  bson_t *levels[120];
  levels[0] = bson_new();
  for (int i = 1; i < 120; i++) levels[i] = bson_new();
  for (int i = 119; i > 0; i--) BSON_APPEND_DOCUMENT(levels[i - 1], "d", levels[i]);
  assert_int_equal(cqrs_bson_check_utf8(levels[0], &err), CQRS_ECODEC);
  assert_non_null(strstr(err.message, "deeper"));
  for (int i = 0; i < 120; i++) bson_destroy(levels[i]);
  assert_int_equal(cqrs_bson_check_utf8(NULL, &err), CQRS_EINVAL);
}

typedef struct nums {
  int64_t i64;
  int32_t i32;
  int64_t t;
  cqrs_money_t m;
  char s[8];
} nums_t;

static const cqrs_field_t ranged[] = {CQRS_INT64_RANGE(nums_t, i64, "i64", -5, 5),
                                      CQRS_INT32_RANGE(nums_t, i32, "i32", 1, 10),
                                      CQRS_TIME_RANGE(nums_t, t, "t", 1000, 2000),
                                      CQRS_MONEY_RANGE(nums_t, m, "m", 0, 100), CQRS_FIELDS_END};

static void test_every_number_has_a_range(void **state) {
  (void)state;
  nums_t n = {0, 1, 1000, {100, "EUR"}, ""};
  cqrs_error_t err;
  assert_int_equal(cqrs_fields_check(ranged, &err), CQRS_OK);
  assert_int_equal(cqrs_fields_validate(ranged, &n, &err), CQRS_OK);
  n.i64 = -6;
  assert_int_equal(cqrs_fields_validate(ranged, &n, &err), CQRS_EINVALID_COMMAND);
  assert_non_null(strstr(err.message, "i64 is out of range"));
  n.i64 = 5;
  n.i32 = 11;
  assert_int_equal(cqrs_fields_validate(ranged, &n, &err), CQRS_EINVALID_COMMAND);
  assert_non_null(strstr(err.message, "i32 is out of range"));
  n.i32 = 10;
  n.t = 2001;
  assert_int_equal(cqrs_fields_validate(ranged, &n, &err), CQRS_EINVALID_COMMAND);
  assert_non_null(strstr(err.message, "t is out of range"));
  n.t = 2000;
  n.m.amount = -1;
  assert_int_equal(cqrs_fields_validate(ranged, &n, &err), CQRS_EINVALID_COMMAND);
  assert_non_null(strstr(err.message, "m amount is out of range"));
}

/* A range flag with no bounds meant [0, 0] and refused every value but 0. */
static void expect_bad_table(const cqrs_field_t *table, const char *needle) {
  nums_t n = {0, 0, 0, {0, "EUR"}, "x"};
  cqrs_error_t err;
  assert_int_equal(cqrs_fields_check(table, &err), CQRS_EINVAL);
  if (!strstr(err.message, needle)) fail_msg("'%s' does not mention '%s'", err.message, needle);
  /* Validation refuses such a table too, rather than reading it as [0, 0]. */
  if (table[0].flags & CQRS_F_RANGE) assert_int_equal(cqrs_fields_validate(table, &n, &err), CQRS_EINVAL);
}

static void test_a_range_needs_its_bounds(void **state) {
  (void)state;
  const cqrs_field_t no_bounds32[] = {CQRS_INT32(nums_t, i32, "i32", CQRS_F_RANGE), CQRS_FIELDS_END};
  const cqrs_field_t no_bounds64[] = {CQRS_INT64(nums_t, i64, "i64", CQRS_F_RANGE), CQRS_FIELDS_END};
  const cqrs_field_t no_bounds_t[] = {CQRS_TIME(nums_t, t, "t", CQRS_F_RANGE), CQRS_FIELDS_END};
  const cqrs_field_t no_bounds_m[] = {CQRS_MONEY(nums_t, m, "m", CQRS_F_RANGE), CQRS_FIELDS_END};
  /* A plain macro cannot claim bounds it was not given. */
  const cqrs_field_t forged[] = {CQRS_INT32(nums_t, i32, "i32", CQRS_F_RANGE | CQRS_F_BOUNDS), CQRS_FIELDS_END};
  const cqrs_field_t reversed[] = {CQRS_INT32_RANGE(nums_t, i32, "i32", 10, 1), CQRS_FIELDS_END};
  expect_bad_table(no_bounds32, "i32: CQRS_F_RANGE without bounds");
  expect_bad_table(no_bounds64, "i64: CQRS_F_RANGE without bounds");
  expect_bad_table(no_bounds_t, "t: CQRS_F_RANGE without bounds");
  expect_bad_table(no_bounds_m, "m: CQRS_F_RANGE without bounds");
  expect_bad_table(forged, "without bounds");
  expect_bad_table(reversed, "min > max");
  const cqrs_field_t on_string[] = {CQRS_STRING(nums_t, s, "s", CQRS_F_RANGE), CQRS_FIELDS_END};
  expect_bad_table(on_string, "not a number");
  const cqrs_field_t wrong_size[] = {CQRS_INT64(nums_t, i32, "i32", 0), CQRS_FIELDS_END};
  expect_bad_table(wrong_size, "size does not fit");
  const cqrs_field_t no_table[] = {CQRS_DOC(nums_t, m, "m", NULL, 0), CQRS_FIELDS_END};
  expect_bad_table(no_table, "no nested table");
  const cqrs_field_t odd_flags[] = {CQRS_INT64(nums_t, i64, "i64", 0x100), CQRS_FIELDS_END};
  expect_bad_table(odd_flags, "unknown flags");
  const cqrs_field_t nested_bad[] = {CQRS_DOC(person_t, home, "home", no_bounds32, 0), CQRS_FIELDS_END};
  expect_bad_table(nested_bad, "home.i32");
  assert_int_equal(cqrs_fields_check(person_fields, NULL), CQRS_OK);
  assert_int_equal(cqrs_fields_check(NULL, NULL), CQRS_EINVAL);
}

/* ---- collections ---- */

typedef struct line {
  char sku[16];
  int32_t qty;
  cqrs_money_t price;
} line_t;

typedef struct order {
  char id[16];
  line_t lines[3];
  int32_t nlines;
  char tags[4][8];
  int32_t ntags;
  int64_t holds[2];
  int32_t nholds;
} order_t;

static const cqrs_field_t line_fields[] = {CQRS_STRING(line_t, sku, "sku", CQRS_F_REQUIRED),
                                           CQRS_INT32_RANGE(line_t, qty, "qty", 1, 1000),
                                           CQRS_MONEY_RANGE(line_t, price, "price", 0, INT64_MAX), CQRS_FIELDS_END};
static const cqrs_field_t line_item[] = {CQRS_ITEM_DOC(line_t, line_fields), CQRS_FIELDS_END};
static const cqrs_field_t tag_item[] = {CQRS_ITEM_STRING(8, CQRS_F_REQUIRED), CQRS_FIELDS_END};
static const cqrs_field_t hold_item[] = {CQRS_ITEM_INT64_RANGE(1, 1000000), CQRS_FIELDS_END};
static const cqrs_field_t order_fields[] = {
    CQRS_STRING(order_t, id, "id", CQRS_F_REQUIRED),
    CQRS_ARRAY(order_t, lines, nlines, "lines", line_item, CQRS_F_REQUIRED),
    CQRS_ARRAY(order_t, tags, ntags, "tags", tag_item, CQRS_F_OPTIONAL),
    CQRS_ARRAY(order_t, holds, nholds, "holds", hold_item, CQRS_F_OPTIONAL), CQRS_FIELDS_END};

static order_t sample_order(void) {
  order_t o;
  memset(&o, 0, sizeof o);
  strcpy(o.id, "ord-1");
  o.lines[0] = (line_t){"apple", 3, {120, "EUR"}};
  o.lines[1] = (line_t){"pear", 1, {90, "EUR"}};
  o.nlines = 2;
  strcpy(o.tags[0], "gift");
  o.ntags = 1;
  o.holds[0] = 500;
  o.holds[1] = 700;
  o.nholds = 2;
  return o;
}

static void test_arrays_round_trip(void **state) {
  (void)state;
  assert_int_equal(cqrs_fields_check(order_fields, NULL), CQRS_OK);
  order_t o = sample_order(), back;
  assert_int_equal(cqrs_fields_validate(order_fields, &o, NULL), CQRS_OK);
  bson_t b = BSON_INITIALIZER;
  assert_int_equal(cqrs_fields_encode(order_fields, &o, &b, NULL), CQRS_OK);
  bson_iter_t it, v;
  assert_true(bson_iter_init(&it, &b) && bson_iter_find_descendant(&it, "lines.1.sku", &v));
  assert_string_equal(bson_iter_utf8(&v, NULL), "pear");
  assert_true(bson_iter_init(&it, &b) && bson_iter_find_descendant(&it, "holds.1", &v));
  assert_int_equal(bson_iter_int64(&v), 700);
  assert_true(bson_iter_init(&it, &b) && !bson_iter_find_descendant(&it, "lines.2", &v)); /* only the counted ones */
  memset(&back, 0x5a, sizeof back);
  assert_int_equal(cqrs_fields_decode(order_fields, &b, &back, NULL), CQRS_OK);
  assert_int_equal(back.nlines, 2);
  assert_string_equal(back.lines[1].sku, "pear");
  assert_int_equal(back.lines[0].qty, 3);
  assert_int_equal(back.lines[0].price.amount, 120);
  assert_int_equal(back.ntags, 1);
  assert_string_equal(back.tags[0], "gift");
  assert_int_equal(back.nholds, 2);
  assert_int_equal(back.holds[1], 700);
  assert_int_equal(back.lines[2].qty, 0); /* zeroed past the count */
  bson_destroy(&b);
  /* Optional arrays may be absent: they decode empty. */
  bson_t small = BSON_INITIALIZER, lines, l0;
  BSON_APPEND_UTF8(&small, "id", "ord-2");
  BSON_APPEND_ARRAY_BEGIN(&small, "lines", &lines);
  BSON_APPEND_DOCUMENT_BEGIN(&lines, "0", &l0);
  BSON_APPEND_UTF8(&l0, "sku", "fig");
  BSON_APPEND_INT32(&l0, "qty", 2);
  cqrs_money_t m = {5, "EUR"};
  bson_t price;
  BSON_APPEND_DOCUMENT_BEGIN(&l0, "price", &price);
  BSON_APPEND_INT64(&price, "amount", m.amount);
  BSON_APPEND_UTF8(&price, "currency", m.currency);
  bson_append_document_end(&l0, &price);
  bson_append_document_end(&lines, &l0);
  bson_append_array_end(&small, &lines);
  assert_int_equal(cqrs_fields_decode(order_fields, &small, &back, NULL), CQRS_OK);
  assert_int_equal(back.nlines, 1);
  assert_int_equal(back.ntags, 0);
  bson_destroy(&small);
}

static void test_arrays_are_bounded_and_validated(void **state) {
  (void)state;
  cqrs_error_t err;
  order_t o = sample_order();
  /* More items on the wire than the member holds: refused, not cut. */
  bson_t b = BSON_INITIALIZER, tags;
  BSON_APPEND_UTF8(&b, "id", "x");
  BSON_APPEND_ARRAY_BEGIN(&b, "lines", &tags);
  bson_append_array_end(&b, &tags);
  BSON_APPEND_ARRAY_BEGIN(&b, "tags", &tags);
  for (int i = 0; i < 5; i++) {
    char k[4];
    snprintf(k, sizeof k, "%d", i);
    BSON_APPEND_UTF8(&tags, k, "t");
  }
  bson_append_array_end(&b, &tags);
  order_t back;
  assert_int_equal(cqrs_fields_decode(order_fields, &b, &back, &err), CQRS_ECODEC);
  assert_non_null(strstr(err.message, "more than 4 items"));
  bson_destroy(&b);
  /* A wrong item type names the item. */
  bson_t c = BSON_INITIALIZER, h;
  BSON_APPEND_UTF8(&c, "id", "x");
  BSON_APPEND_ARRAY_BEGIN(&c, "lines", &h);
  bson_append_array_end(&c, &h);
  BSON_APPEND_ARRAY_BEGIN(&c, "holds", &h);
  BSON_APPEND_UTF8(&h, "0", "not a number");
  bson_append_array_end(&c, &h);
  assert_int_equal(cqrs_fields_decode(order_fields, &c, &back, &err), CQRS_ECODEC);
  assert_non_null(strstr(err.message, "holds' item 0"));
  bson_destroy(&c);
  /* Validation: counts, required, and every item's own rules. */
  order_t bad = o;
  bad.nlines = 4;
  assert_int_equal(cqrs_fields_validate(order_fields, &bad, &err), CQRS_EINVALID_COMMAND);
  bad = o;
  bad.nlines = 0;
  assert_int_equal(cqrs_fields_validate(order_fields, &bad, &err), CQRS_EINVALID_COMMAND);
  assert_non_null(strstr(err.message, "lines is empty"));
  bad = o;
  bad.lines[1].qty = 0;
  assert_int_equal(cqrs_fields_validate(order_fields, &bad, &err), CQRS_EINVALID_COMMAND);
  assert_non_null(strstr(err.message, "lines[1].qty"));
  bad = o;
  bad.holds[1] = 0;
  assert_int_equal(cqrs_fields_validate(order_fields, &bad, &err), CQRS_EINVALID_COMMAND);
  bad = o;
  bad.tags[0][0] = '\0';
  assert_int_equal(cqrs_fields_validate(order_fields, &bad, &err), CQRS_EINVALID_COMMAND);
  bad = o;
  bad.lines[2].qty = 0; /* past the count: not an item */
  assert_int_equal(cqrs_fields_validate(order_fields, &bad, &err), CQRS_OK);
  bad = o;
  bad.nholds = -1;
  bson_t e = BSON_INITIALIZER;
  assert_int_equal(cqrs_fields_encode(order_fields, &bad, &e, &err), CQRS_EINVAL);
  bson_destroy(&e);
}

static void test_array_tables_are_checked(void **state) {
  (void)state;
  cqrs_error_t err;
  static const cqrs_field_t two_items[] = {CQRS_ITEM_INT64(0), CQRS_ITEM_INT64(0), CQRS_FIELDS_END};
  static const cqrs_field_t no_item[] = {CQRS_FIELDS_END};
  static const cqrs_field_t wrong_size[] = {CQRS_ITEM_STRING(5, 0), CQRS_FIELDS_END}; /* 4 x 8 is no multiple of 5 */
  const cqrs_field_t bad1[] = {CQRS_ARRAY(order_t, holds, nholds, "h", two_items, 0), CQRS_FIELDS_END};
  const cqrs_field_t bad2[] = {CQRS_ARRAY(order_t, holds, nholds, "h", no_item, 0), CQRS_FIELDS_END};
  const cqrs_field_t bad3[] = {CQRS_ARRAY(order_t, tags, ntags, "t", wrong_size, 0), CQRS_FIELDS_END};
  const cqrs_field_t bad4[] = {CQRS_ARRAY(order_t, holds, nholds, "h", NULL, 0), CQRS_FIELDS_END};
  assert_int_equal(cqrs_fields_check(bad1, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_fields_check(bad2, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_fields_check(bad3, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_fields_check(bad4, &err), CQRS_EINVAL);
  static const cqrs_field_t unbounded_item[] = {CQRS_ITEM_INT64(CQRS_F_RANGE), CQRS_FIELDS_END};
  const cqrs_field_t bad5[] = {CQRS_ARRAY(order_t, holds, nholds, "h", unbounded_item, 0), CQRS_FIELDS_END};
  assert_int_equal(cqrs_fields_check(bad5, &err), CQRS_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_decode_errors_name_the_field),
      cmocka_unit_test(test_malformed_bson_is_refused),
      cmocka_unit_test(test_validation),
      cmocka_unit_test(test_helpers),
      cmocka_unit_test(test_utf8_found_at_every_position),
      cmocka_unit_test(test_invalid_utf8_is_refused),
      cmocka_unit_test(test_check_utf8_walks_every_string),
      cmocka_unit_test(test_every_number_has_a_range),
      cmocka_unit_test(test_a_range_needs_its_bounds),
      cmocka_unit_test(test_arrays_round_trip),
      cmocka_unit_test(test_arrays_are_bounded_and_validated),
      cmocka_unit_test(test_array_tables_are_checked),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
