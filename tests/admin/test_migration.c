/* The domain's part of the migration, in memory: exact amounts from
 * doubles, invoice numbers, invoice.import on the year's book (numbering
 * continues after the highest imported number), and the flag's parsing and
 * routing by customer. */
#include <math.h>
#include <stdio.h>
#include <time.h>

#include "billing/fixture.h"

static int year_now(void) {
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  return tm.tm_year + 1900;
}

static void test_amounts_convert_exactly(void **state) {
  (void)state;
#define NO INT64_MIN
  static const struct {
    double v;
    const char *cur;
    int64_t want; /* NO: refused */
  } cases[] = {
      {1500.00, "EUR", 150000}, {0.1, "EUR", 10},      {0.29, "EUR", 29},         {19.99, "USD", 1999},
      {1500.005, "EUR", NO},    {12.345, "EUR", NO},   {1500, "JPY", 1500},       {10.5, "JPY", NO},
      {1.234, "KWD", 1234},     {1.2345, "KWD", NO},   {-4.5, "EUR", -450},       {1500.00, "XYZ", NO},
      {1500.00, "eur", NO},     {1e300, "EUR", NO},    {1e15, "EUR", NO}, {123456789012.34, "EUR", 12345678901234},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int64_t minor = 7;
    cqrs_error_t err;
    cqrs_code_t rc = billing_amount_from_double(cases[i].v, cases[i].cur, &minor, &err);
    if (cases[i].want == NO) {
      if (rc != CQRS_EINVAL) fail_msg("%.17g %s: accepted as %lld", cases[i].v, cases[i].cur, (long long)minor);
      assert_true(strlen(err.message) > 0);
    } else {
      if (rc) fail_msg("%.17g %s: %s", cases[i].v, cases[i].cur, err.message);
      assert_int_equal(minor, cases[i].want);
    }
  }
  int64_t m;
  assert_int_equal(billing_amount_from_double(NAN, "EUR", &m, NULL), CQRS_EINVAL);
  assert_int_equal(billing_amount_from_double(INFINITY, "EUR", &m, NULL), CQRS_EINVAL);
  assert_int_equal(billing_amount_from_double(1, NULL, &m, NULL), CQRS_EINVAL);
  assert_int_equal(billing_amount_from_double(1, "EUR", NULL, NULL), CQRS_EINVAL);
  assert_int_equal(billing_currency_exponent("EUR"), 2);
  assert_int_equal(billing_currency_exponent("JPY"), 0);
  assert_int_equal(billing_currency_exponent("KWD"), 3);
  assert_int_equal(billing_currency_exponent("EU"), -1);
  assert_int_equal(billing_currency_exponent(NULL), -1);
}

static void test_numbers_parse(void **state) {
  (void)state;
  int y;
  int64_t n;
  assert_true(billing_invoice_number_parse("INV-2024-001", &y, &n));
  assert_int_equal(y, 2024);
  assert_int_equal(n, 1);
  assert_true(billing_invoice_number_parse("INV-2024-12345", &y, &n));
  assert_int_equal(n, 12345);
  static const char *const bad[] = {"INV-2024-01", "INV-24-001", "INV-2024-000", "inv-2024-001", "INV-2024-001x",
                                    "INV-2024001", "INV-2024-99999999999999999999", "", NULL};
  for (size_t i = 0; bad[i]; i++) {
    if (billing_invoice_number_parse(bad[i], &y, &n)) fail_msg("'%s' parsed", bad[i]);
  }
  assert_false(billing_invoice_number_parse(NULL, &y, &n));
}

#define T (((bfx_t *)*state)->t)

static int setup_book(void **state) {
  char id[16];
  snprintf(id, sizeof id, "%04d", year_now());
  *state = bfx_new(&billing_invoice_book, id);
  return 0;
}

static void test_import_moves_the_book_forward_only(void **state) {
  char n41[BILLING_NUMBER_MAX], n7[BILLING_NUMBER_MAX], n42[BILLING_NUMBER_MAX];
  billing_invoice_number(n41, year_now(), 41);
  billing_invoice_number(n7, year_now(), 7);
  billing_invoice_number(n42, year_now(), 42);
  billing_import_invoice_t imp = {"", "legacy-41"};
  memcpy(imp.number, n41, sizeof imp.number);
  CQRS_WHEN(T, &billing_import_invoice, imp);
  billing_invoice_imported_t want = {"", "legacy-41", 41};
  memcpy(want.number, n41, sizeof want.number);
  CQRS_THEN_EVENTS(T, {&billing_invoice_imported, &want});
  /* A lower number changes nothing. */
  memcpy(imp.number, n7, sizeof imp.number);
  CQRS_WHEN(T, &billing_import_invoice, imp);
  CQRS_THEN_NO_EVENTS(T);
  cqrs_aggregate_t *book = cqrs_test_load(T);
  assert_non_null(book);
  assert_int_equal(((const billing_book_state_t *)cqrs_aggregate_state_const(book))->last, 41);
  cqrs_aggregate_destroy(book);
  /* The next invoice of the year takes 42. */
  assert_int_equal(cqrs_test_given_for(T, &billing_customer, "c-1", &billing_customer_registered,
                                       &(billing_customer_registered_t){"Acme", "a@acme.com"}),
                   CQRS_OK);
  CQRS_WHEN(T, &billing_issue_invoice, (billing_issue_invoice_t){"inv-new", "c-1", EUR(500), 1798761600000LL});
  assert_int_equal(cqrs_test_event_count(T), 1);
  assert_string_equal(((const billing_invoice_numbered_t *)cqrs_test_event(T, 0)->payload)->number, n42);
}

static void test_import_validates(void **state) {
  CQRS_WHEN(T, &billing_import_invoice, (billing_import_invoice_t){"INV-24-1", ""});
  CQRS_THEN_ERROR(T, CQRS_EINVALID_COMMAND);
  CQRS_WHEN(T, &billing_import_invoice, (billing_import_invoice_t){"", ""});
  CQRS_THEN_ERROR(T, CQRS_EINVALID_COMMAND);
}

static void test_flag_parse_and_route(void **state) {
  (void)state;
  billing_cqs_flag_t f;
  assert_int_equal(billing_cqs_flag_parse("off", &f, NULL), CQRS_OK);
  assert_int_equal(f.mode, BILLING_CQS_OFF);
  assert_int_equal(billing_cqs_flag_parse("shadow", &f, NULL), CQRS_OK);
  assert_int_equal(f.mode, BILLING_CQS_SHADOW);
  assert_int_equal(billing_cqs_flag_parse("25%", &f, NULL), CQRS_OK);
  assert_int_equal(f.mode, BILLING_CQS_PERCENT);
  assert_int_equal(f.percent, 25);
  static const char *const bad[] = {"101", "-1", "25x", "", "ON", "1e2", NULL};
  for (size_t i = 0; bad[i]; i++) {
    cqrs_error_t err;
    if (billing_cqs_flag_parse(bad[i], &f, &err) != CQRS_EINVAL) fail_msg("'%s' accepted", bad[i]);
  }
  billing_cqs_flag_t none = {BILLING_CQS_PERCENT, 0}, all = {BILLING_CQS_PERCENT, 100}, half = {BILLING_CQS_PERCENT, 50};
  int n = 0;
  for (int i = 0; i < 1000; i++) {
    char id[32];
    snprintf(id, sizeof id, "cust_%05d", i);
    assert_false(billing_cqs_routes_to_cqs(&none, id));
    assert_true(billing_cqs_routes_to_cqs(&all, id));
    bool r = billing_cqs_routes_to_cqs(&half, id);
    assert_int_equal(r, billing_cqs_routes_to_cqs(&half, id));
    /* Growing the share never moves a customer back. */
    if (r) assert_true(billing_cqs_routes_to_cqs(&(billing_cqs_flag_t){BILLING_CQS_PERCENT, 75}, id));
    n += r;
  }
  assert_true(n > 400 && n < 600);
  assert_false(billing_cqs_routes_to_cqs(&half, NULL));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_amounts_convert_exactly),
      cmocka_unit_test(test_numbers_parse),
      cmocka_unit_test_setup_teardown(test_import_moves_the_book_forward_only, setup_book, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_import_validates, setup_book, bfx_teardown),
      cmocka_unit_test(test_flag_parse_and_route),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
