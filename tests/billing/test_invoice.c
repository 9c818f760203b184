#include <stdio.h>
#include <time.h>

#include "fixture.h"

static int setup(void **state) {
  *state = bfx_new(&billing_invoice, "inv-1");
  return 0;
}

#define T (((bfx_t *)*state)->t)
#define DUE 1798761600000LL

/* The year by the fixture's clock, the dispatcher's. */
#define year_now() year_of(cqrs_clock_now_ms(cqrs_test_clock(T)))
static int year_of(int64_t ms) {
  time_t now = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&now, &tm);
  return tm.tm_year + 1900;
}

static void given_customer(void **state) {
  assert_int_equal(cqrs_test_given_for(T, &billing_customer, "c-1", &billing_customer_registered,
                                       &(billing_customer_registered_t){"Acme", "a@acme.com"}),
                   CQRS_OK);
}

static void given_issued(void **state, int64_t cents) {
  CQRS_GIVEN(T, &billing_invoice_issued, (billing_invoice_issued_t){"INV-2026-001", "c-1", EUR(cents), DUE});
}

static void test_issue_takes_the_next_number_of_the_year(void **state) {
  given_customer(state);
  char first[BILLING_NUMBER_MAX], third[BILLING_NUMBER_MAX], book[16];
  billing_invoice_number(first, year_now(), 1);
  CQRS_WHEN(T, &billing_issue_invoice, (billing_issue_invoice_t){"inv-1", "c-1", EUR(150000), DUE});
  billing_invoice_numbered_t want = {"inv-1", "", "c-1", EUR(150000), DUE};
  memcpy(want.number, first, sizeof want.number);
  CQRS_THEN_EVENTS(T, {&billing_invoice_numbered, &want});
  assert_string_equal(cqrs_event_aggregate_type(cqrs_test_event(T, 0)), "invoice_book");
  snprintf(book, sizeof book, "%04d", year_now());
  assert_string_equal(cqrs_event_aggregate_id(cqrs_test_event(T, 0)), book);
  /* The book's 2nd and 3rd numbers go to the next invoices. */
  CQRS_WHEN(T, &billing_issue_invoice, (billing_issue_invoice_t){"inv-2", "c-1", EUR(5), DUE});
  CQRS_WHEN(T, &billing_issue_invoice, (billing_issue_invoice_t){"inv-3", "c-1", EUR(5), DUE});
  billing_invoice_number(third, year_now(), 3);
  assert_string_equal(((const billing_invoice_numbered_t *)cqrs_test_event(T, 0)->payload)->number, third);
}

/* On the first of January by the dispatcher's clock the new year's book
 * starts from 1. */
static void test_a_new_year_starts_a_new_book(void **state) {
  given_customer(state);
  int year = year_now();
  CQRS_WHEN(T, &billing_issue_invoice, (billing_issue_invoice_t){"inv-1", "c-1", EUR(5), DUE});
  char number[BILLING_NUMBER_MAX];
  billing_invoice_number(number, year, 1);
  assert_string_equal(((const billing_invoice_numbered_t *)cqrs_test_event(T, 0)->payload)->number, number);
  /* To midnight, UTC, on the first of January of the next year. */
  struct tm jan1 = {.tm_year = year + 1 - 1900, .tm_mon = 0, .tm_mday = 1};
  int64_t next = (int64_t)timegm(&jan1) * 1000;
  cqrs_test_advance(T, (uint64_t)(next - 1 - cqrs_clock_now_ms(cqrs_test_clock(T))));
  CQRS_WHEN(T, &billing_issue_invoice, (billing_issue_invoice_t){"inv-2", "c-1", EUR(5), DUE});
  billing_invoice_number(number, year, 2);
  assert_string_equal(((const billing_invoice_numbered_t *)cqrs_test_event(T, 0)->payload)->number, number);
  cqrs_test_advance(T, 1);
  assert_int_equal(year_now(), year + 1);
  CQRS_WHEN(T, &billing_issue_invoice, (billing_issue_invoice_t){"inv-3", "c-1", EUR(5), DUE});
  billing_invoice_number(number, year + 1, 1);
  assert_string_equal(((const billing_invoice_numbered_t *)cqrs_test_event(T, 0)->payload)->number, number);
}

static void test_issue_needs_a_known_customer(void **state) {
  CQRS_WHEN(T, &billing_issue_invoice, (billing_issue_invoice_t){"inv-1", "c-1", EUR(5), DUE});
  CQRS_THEN_REJECTED(T, "invoice.unknown_customer");
}

static void test_issue_validates(void **state) {
  given_customer(state);
  CQRS_WHEN(T, &billing_issue_invoice, (billing_issue_invoice_t){"inv-1", "c-1", EUR(0), DUE});
  CQRS_THEN_ERROR(T, CQRS_EINVALID_COMMAND);
  CQRS_WHEN(T, &billing_issue_invoice, (billing_issue_invoice_t){"inv-1", "c-1", EUR(5), 0});
  CQRS_THEN_ERROR(T, CQRS_EINVALID_COMMAND);
  CQRS_WHEN(T, &billing_issue_invoice, (billing_issue_invoice_t){"inv-1", "", EUR(5), DUE});
  CQRS_THEN_ERROR(T, CQRS_EINVALID_COMMAND);
}

static void test_issue_twice_is_refused(void **state) {
  given_customer(state);
  given_issued(state, 5);
  CQRS_WHEN(T, &billing_issue_invoice, (billing_issue_invoice_t){"inv-1", "c-1", EUR(5), DUE});
  CQRS_THEN_REJECTED(T, "invoice.already_issued");
}

static void test_record_is_idempotent(void **state) {
  billing_record_invoice_t r = {"inv-1", "INV-2026-007", "c-1", EUR(5), DUE};
  CQRS_WHEN(T, &billing_record_invoice, r);
  CQRS_THEN_EVENTS(T, {&billing_invoice_issued, &(billing_invoice_issued_t){"INV-2026-007", "c-1", EUR(5), DUE}});
  CQRS_WHEN(T, &billing_record_invoice, r);
  assert_int_equal(cqrs_test_error(T)->code, CQRS_OK);
  assert_int_equal(cqrs_test_event_count(T), 0);
}

static void test_pay(void **state) {
  given_issued(state, 150000);
  CQRS_WHEN(T, &billing_pay_invoice, (billing_pay_invoice_t){"inv-1", EUR(150000)});
  CQRS_THEN_EVENTS(T, {&billing_invoice_paid, &(billing_invoice_paid_t){EUR(150000)}});
}

static void test_pay_twice_is_refused(void **state) {
  given_issued(state, 5);
  CQRS_GIVEN(T, &billing_invoice_paid, (billing_invoice_paid_t){EUR(5)});
  CQRS_WHEN(T, &billing_pay_invoice, (billing_pay_invoice_t){"inv-1", EUR(5)});
  CQRS_THEN_REJECTED(T, "invoice.already_paid");
}

static void test_pay_wrong_amount_is_refused(void **state) {
  given_issued(state, 150000);
  CQRS_WHEN(T, &billing_pay_invoice, (billing_pay_invoice_t){"inv-1", EUR(149999)});
  CQRS_THEN_REJECTED(T, "invoice.wrong_amount");
  CQRS_WHEN(T, &billing_pay_invoice, (billing_pay_invoice_t){"inv-1", EUR(150001)});
  CQRS_THEN_REJECTED(T, "invoice.wrong_amount");
  CQRS_WHEN(T, &billing_pay_invoice, (billing_pay_invoice_t){"inv-1", USD(150000)});
  CQRS_THEN_REJECTED(T, "invoice.wrong_amount");
}

static void test_pay_cancelled_is_refused(void **state) {
  given_issued(state, 5);
  CQRS_GIVEN(T, &billing_invoice_cancelled, (billing_invoice_cancelled_t){"duplicate"});
  CQRS_WHEN(T, &billing_pay_invoice, (billing_pay_invoice_t){"inv-1", EUR(5)});
  CQRS_THEN_REJECTED(T, "invoice.cancelled");
}

static void test_pay_unknown_is_refused(void **state) {
  CQRS_WHEN(T, &billing_pay_invoice, (billing_pay_invoice_t){"inv-1", EUR(5)});
  CQRS_THEN_REJECTED(T, "invoice.unknown");
}

static void test_cancel_only_while_pending(void **state) {
  given_issued(state, 5);
  CQRS_WHEN(T, &billing_cancel_invoice, (billing_cancel_invoice_t){"inv-1", "duplicate"});
  CQRS_THEN_EVENTS(T, {&billing_invoice_cancelled, &(billing_invoice_cancelled_t){"duplicate"}});
  CQRS_WHEN(T, &billing_cancel_invoice, (billing_cancel_invoice_t){"inv-1", "again"});
  CQRS_THEN_REJECTED(T, "invoice.cancelled");
}

static void test_cancel_paid_is_refused(void **state) {
  given_issued(state, 5);
  CQRS_GIVEN(T, &billing_invoice_paid, (billing_invoice_paid_t){EUR(5)});
  CQRS_WHEN(T, &billing_cancel_invoice, (billing_cancel_invoice_t){"inv-1", "late"});
  CQRS_THEN_REJECTED(T, "invoice.already_paid");
}

static void test_number_format(void **state) {
  (void)state;
  char buf[BILLING_NUMBER_MAX];
  billing_invoice_number(buf, 2024, 1);
  assert_string_equal(buf, "INV-2024-001");
  billing_invoice_number(buf, 2024, 1234);
  assert_string_equal(buf, "INV-2024-1234");
}

/* The invoice process, given / when / then: a numbered invoice is
 * recorded on its own stream, once. */
static void test_invoice_process_records_the_numbered_invoice(void **state) {
  (void)state;
  cqrs_process_test_t *t;
  assert_int_equal(cqrs_process_test_new(&billing_invoice_process, "2026.1", NULL, &t, NULL), CQRS_OK);
  billing_invoice_numbered_t n = {"inv-1", "INV-2026-001", "c-1", EUR(150000), DUE};
  CQRS_PROCESS_WHEN_EVENT(t, &billing_invoice_numbered, "2026", n);
  CQRS_PROCESS_THEN_SENDS(t, "record", &billing_record_invoice);
  const billing_record_invoice_t *r;
  cqrs_process_test_sent(t, 0, NULL, (const void **)&r);
  assert_string_equal(r->invoice_id, "inv-1");
  assert_string_equal(r->number, "INV-2026-001");
  CQRS_PROCESS_WHEN_STEP(t, "record", CQRS_STEP_ACCEPTED, NULL);
  CQRS_PROCESS_THEN_ENDED(t);
  /* The same event again: the instance has ended and sends nothing. */
  CQRS_PROCESS_WHEN_EVENT(t, &billing_invoice_numbered, "2026", n);
  CQRS_PROCESS_THEN_NOTHING(t);
  cqrs_process_test_destroy(t);
}

/* Issues sent at once run as one batch on the year's book: numbers in the
 * order sent, without a gap, in one call of the store; an unknown customer
 * and an invoice sent twice inside the batch leave the others numbered. */
typedef struct issued {
  cqrs_code_t code;
  bool duplicate;
  char number[BILLING_NUMBER_MAX];
  int calls;
} issued_t;

static void on_issued(const cqrs_result_t *r, void *data) {
  issued_t *o = data;
  o->code = r->error.code;
  o->duplicate = r->duplicate;
  bson_iter_t it;
  if (r->value && bson_iter_init_find(&it, r->value, "number")) snprintf(o->number, sizeof o->number, "%s", bson_iter_utf8(&it, NULL));
  o->calls++;
}

static void issue_at_once(cqrs_dispatcher_t *d, const char *invoice, const char *customer, issued_t *o) {
  billing_issue_invoice_t p = {"", "", EUR(1000), DUE};
  snprintf(p.invoice_id, sizeof p.invoice_id, "%s", invoice);
  snprintf(p.customer_id, sizeof p.customer_id, "%s", customer);
  cqrs_command_t *cmd;
  assert_int_equal(cqrs_command_new(&billing_issue_invoice, &p, &cmd, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_send(d, cmd, on_issued, o), CQRS_OK);
}

static double store_calls(cqrs_metrics_t *m, const char *op) {
  cqrs_metrics_snapshot_t *s;
  assert_int_equal(cqrs_metrics_snapshot(m, &s, NULL), CQRS_OK);
  double v = cqrs_metrics_snapshot_value(s, "cqrs_store_calls_total", "op", op, NULL);
  cqrs_metrics_snapshot_destroy(s);
  return v;
}

static bool number_of(const cqrs_event_t *e, void *data) {
  int *n = data;
  char want[BILLING_NUMBER_MAX];
  billing_invoice_number(want, year_of(cqrs_now_ms()), ++*n);
  assert_string_equal(((const billing_invoice_numbered_t *)e->payload)->number, want);
  return true;
}

static void test_issues_sent_at_once_are_numbered_in_order(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  cqrs_registry_t *reg;
  cqrs_registry_new(&reg, NULL);
  assert_int_equal(billing_register(reg, NULL), CQRS_OK);
  cqrs_store_t *store;
  cqrs_keys_t *keys; /* the customer's personal fields are sealed */
  assert_int_equal(cqrs_memory_store_new(&store, NULL), CQRS_OK);
  assert_int_equal(cqrs_memory_keys_new(NULL, &keys, NULL), CQRS_OK);
  assert_int_equal(cqrs_store_set_keys(store, keys, reg, NULL), CQRS_OK);
  cqrs_dispatcher_t *d;
  cqrs_metrics_t *m;
  assert_int_equal(cqrs_dispatcher_new(&loop, reg, store, NULL, &d, NULL), CQRS_OK);
  assert_int_equal(billing_register_handlers(d, NULL), CQRS_OK);
  assert_int_equal(cqrs_metrics_new(&m, NULL), CQRS_OK);
  assert_int_equal(cqrs_metrics_attach(m, d, NULL), CQRS_OK);
  billing_register_customer_t c = {"c-1", "Acme", "a@acme.com"};
  cqrs_command_t *cmd;
  assert_int_equal(cqrs_command_new(&billing_register_customer, &c, &cmd, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_send(d, cmd, NULL, NULL), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  double appends = store_calls(m, "append");
  static issued_t out[40];
  memset(out, 0, sizeof out);
  for (int i = 0; i < 40; i++) {
    char inv[16];
    snprintf(inv, sizeof inv, "inv-%d", i == 20 ? 7 : i); /* #20 is #7 sent again */
    issue_at_once(d, inv, i == 30 ? "nobody" : "c-1", &out[i]);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  int n = 0;
  for (int i = 0; i < 40; i++) {
    assert_int_equal(out[i].calls, 1);
    if (i == 20) {
      assert_int_equal(out[i].code, CQRS_OK);
      assert_true(out[i].duplicate);
    } else if (i == 30) {
      assert_int_equal(out[i].code, CQRS_EREJECTED);
    } else {
      char want[BILLING_NUMBER_MAX];
      billing_invoice_number(want, year_of(cqrs_now_ms()) /* the real clock, the dispatcher's */, ++n);
      assert_int_equal(out[i].code, CQRS_OK);
      assert_string_equal(out[i].number, want);
    }
  }
  /* The duplicate stopped the first call; the rest went in a second. */
  assert_int_equal(store_calls(m, "append_many"), 2);
  assert_int_equal(store_calls(m, "append"), appends);
  char book[16];
  snprintf(book, sizeof book, "%04d", year_of(cqrs_now_ms()));
  int numbered = 0;
  assert_int_equal(cqrs_store_read_stream(store, "invoice_book", book, 1, number_of, &numbered, NULL), CQRS_OK);
  assert_int_equal(numbered, 38);
  assert_int_equal(cqrs_dispatcher_close(d, NULL, NULL), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  cqrs_metrics_destroy(m);
  cqrs_store_destroy(store);
  cqrs_keys_destroy(keys);
  cqrs_registry_destroy(reg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_issue_takes_the_next_number_of_the_year, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_a_new_year_starts_a_new_book, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_issue_needs_a_known_customer, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_issue_validates, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_issue_twice_is_refused, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_record_is_idempotent, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_pay, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_pay_twice_is_refused, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_pay_wrong_amount_is_refused, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_pay_cancelled_is_refused, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_pay_unknown_is_refused, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_cancel_only_while_pending, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_cancel_paid_is_refused, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_number_format, setup, bfx_teardown),
      cmocka_unit_test(test_invoice_process_records_the_numbered_invoice),
      cmocka_unit_test(test_issues_sent_at_once_are_numbered_in_order),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
