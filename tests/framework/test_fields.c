#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_decode_errors_name_the_field),
      cmocka_unit_test(test_malformed_bson_is_refused),
      cmocka_unit_test(test_validation),
      cmocka_unit_test(test_helpers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
