/* Invoices. The book of a year (aggregate "invoice_book", id "2026") gives
 * numbers: the n-th invoice.numbered event of its stream carries number n,
 * so numbers are unique and gapless by construction, and the natural id of
 * invoice.issue ("invoice.issue:<id>") makes a repeated issue commit once.
 * Every issue of a year goes through its book: the handler runs in batches
 * (CQRS_HANDLER_BATCH), so that issues sent at once take consecutive
 * numbers in one store call instead of conflicting on the book.
 * The process manager then records the invoice on its own stream, where it
 * is paid or cancelled. */
#include <time.h>

#include "billing-private.h"

void billing_invoice_number(char buf[BILLING_NUMBER_MAX], int year, int64_t n) {
  snprintf(buf, BILLING_NUMBER_MAX, "INV-%04d-%03lld", year, (long long)n);
}

static const cqrs_field_t issue_fields[] = {
    CQRS_STRING(billing_issue_invoice_t, invoice_id, "invoiceId", CQRS_F_REQUIRED),
    CQRS_STRING(billing_issue_invoice_t, customer_id, "customerId", CQRS_F_REQUIRED),
    CQRS_MONEY_RANGE(billing_issue_invoice_t, amount, "amount", 1, INT64_MAX),
    CQRS_TIME(billing_issue_invoice_t, due_date, "dueDate", CQRS_F_REQUIRED), CQRS_FIELDS_END};
static const cqrs_field_t numbered_fields[] = {
    CQRS_STRING(billing_invoice_numbered_t, invoice_id, "invoiceId", CQRS_F_REQUIRED),
    CQRS_STRING(billing_invoice_numbered_t, number, "number", CQRS_F_REQUIRED),
    CQRS_STRING(billing_invoice_numbered_t, customer_id, "customerId", CQRS_F_REQUIRED),
    CQRS_MONEY_RANGE(billing_invoice_numbered_t, amount, "amount", 1, INT64_MAX),
    CQRS_TIME(billing_invoice_numbered_t, due_date, "dueDate", 0), CQRS_FIELDS_END};
static const cqrs_field_t pay_fields[] = {CQRS_STRING(billing_pay_invoice_t, invoice_id, "invoiceId", CQRS_F_REQUIRED),
                                          CQRS_MONEY_RANGE(billing_pay_invoice_t, amount, "amount", 1, INT64_MAX),
                                          CQRS_FIELDS_END};
static const cqrs_field_t cancel_fields[] = {
    CQRS_STRING(billing_cancel_invoice_t, invoice_id, "invoiceId", CQRS_F_REQUIRED),
    CQRS_STRING(billing_cancel_invoice_t, reason, "reason", CQRS_F_OPTIONAL), CQRS_FIELDS_END};

static cqrs_code_t issue_id(const void *payload, char *buf, size_t cap, cqrs_error_t *err) {
  BILLING_UNUSED(cap);
  return cqrs_id_derive(buf, "invoice.issue", ((const billing_issue_invoice_t *)payload)->invoice_id, err);
}

static cqrs_code_t record_id(const void *payload, char *buf, size_t cap, cqrs_error_t *err) {
  BILLING_UNUSED(cap);
  return cqrs_id_derive(buf, "invoice.record", ((const billing_record_invoice_t *)payload)->invoice_id, err);
}

/* The year at `ms` (UTC). */
static int year_at(int64_t ms) {
  time_t now = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&now, &tm);
  return tm.tm_year + 1900;
}

/* invoice.issue changes the book of the year it runs in, which its payload
 * does not name: its aggregate_id is the id of that book, the year the
 * handler will compute (so its batches and its loop are the book's, and
 * the loop owning the book keeps it cached). A hook returns a string that
 * outlives the command: one per year, made once. A year outside them (a
 * clock gone wrong) names none: the issue runs alone on the home loop. At
 * midnight on 31 December an issue keyed to one year may number in the
 * next, and a dispatcher on a manual clock (tests) numbers in its clock's
 * year: such an issue runs alone, as one changing another aggregate than
 * its batch's does. (The hook has no context, so the real clock.) */
#define BOOK_FIRST_YEAR 2000
#define BOOK_YEARS 1000
static char book_ids[BOOK_YEARS][5];
static uv_once_t book_ids_once = UV_ONCE_INIT;

static void book_ids_make(void) {
  for (int i = 0; i < BOOK_YEARS; i++) snprintf(book_ids[i], sizeof book_ids[i], "%04d", BOOK_FIRST_YEAR + i);
}

static const char *issued_book(const void *p) {
  BILLING_UNUSED(p);
  int year = year_at(cqrs_now_ms());
  if (year < BOOK_FIRST_YEAR || year >= BOOK_FIRST_YEAR + BOOK_YEARS) return NULL;
  uv_once(&book_ids_once, book_ids_make);
  return book_ids[year - BOOK_FIRST_YEAR];
}

/* Commands on one invoice run on the loop owning it (dispatcher loops). */
static const char *recorded_invoice(const void *p) { return ((const billing_record_invoice_t *)p)->invoice_id; }
static const char *paid_invoice(const void *p) { return ((const billing_pay_invoice_t *)p)->invoice_id; }
static const char *cancelled_invoice(const void *p) { return ((const billing_cancel_invoice_t *)p)->invoice_id; }

const cqrs_command_type_t billing_issue_invoice = {.name = "invoice.issue",
                                                   .payload_size = sizeof(billing_issue_invoice_t),
                                                   .fields = issue_fields,
                                                   .make_id = issue_id,
                                                   .aggregate_id = issued_book};
const cqrs_command_type_t billing_record_invoice = {.name = "invoice.record",
                                                    .payload_size = sizeof(billing_record_invoice_t),
                                                    .fields = numbered_fields,
                                                    .make_id = record_id,
                                                    .aggregate_id = recorded_invoice};
const cqrs_command_type_t billing_pay_invoice = {.name = "invoice.pay", .payload_size = sizeof(billing_pay_invoice_t),
                                                 .fields = pay_fields, .aggregate_id = paid_invoice};
const cqrs_command_type_t billing_cancel_invoice = {.name = "invoice.cancel",
                                                    .payload_size = sizeof(billing_cancel_invoice_t),
                                                    .fields = cancel_fields,
                                                    .aggregate_id = cancelled_invoice};

static const cqrs_field_t issued_fields[] = {
    CQRS_STRING(billing_invoice_issued_t, number, "number", CQRS_F_REQUIRED),
    CQRS_STRING(billing_invoice_issued_t, customer_id, "customerId", CQRS_F_REQUIRED),
    CQRS_MONEY_RANGE(billing_invoice_issued_t, amount, "amount", 1, INT64_MAX),
    CQRS_TIME(billing_invoice_issued_t, due_date, "dueDate", 0), CQRS_FIELDS_END};
static const cqrs_field_t paid_fields[] = {CQRS_MONEY_RANGE(billing_invoice_paid_t, amount, "amount", 1, INT64_MAX),
                                           CQRS_FIELDS_END};
static const cqrs_field_t cancelled_fields[] = {CQRS_STRING(billing_invoice_cancelled_t, reason, "reason", 0),
                                                CQRS_FIELDS_END};

const cqrs_event_type_t billing_invoice_numbered = {.name = "invoice.numbered", .schema_version = 1,
                                                    .payload_size = sizeof(billing_invoice_numbered_t),
                                                    .fields = numbered_fields};
const cqrs_event_type_t billing_invoice_issued = {.name = "invoice.issued", .schema_version = 1,
                                                  .payload_size = sizeof(billing_invoice_issued_t),
                                                  .fields = issued_fields};
const cqrs_event_type_t billing_invoice_paid = {.name = "invoice.paid", .schema_version = 1,
                                                .payload_size = sizeof(billing_invoice_paid_t), .fields = paid_fields};
const cqrs_event_type_t billing_invoice_cancelled = {.name = "invoice.cancelled", .schema_version = 1,
                                                     .payload_size = sizeof(billing_invoice_cancelled_t),
                                                     .fields = cancelled_fields};

static void on_numbered(void *state, const cqrs_event_t *e) {
  BILLING_UNUSED(e);
  ((billing_book_state_t *)state)->last++;
}

static const cqrs_apply_entry_t book_apply[] = {
    {&billing_invoice_numbered, on_numbered}, {&billing_invoice_imported, billing__book_on_imported}, {NULL, NULL}};
static const cqrs_field_t book_fields[] = {CQRS_INT64(billing_book_state_t, last, "last", 0), CQRS_FIELDS_END};

const cqrs_aggregate_type_t billing_invoice_book = {.name = "invoice_book",
                                                    .state_size = sizeof(billing_book_state_t),
                                                    .apply = book_apply,
                                                    .snapshot_fields = book_fields,
                                                    .snapshot_version = 1,
                                                    .snapshot_every = 100};

static void on_issued(void *state, const cqrs_event_t *e) {
  billing_invoice_state_t *s = state;
  const billing_invoice_issued_t *p = e->payload;
  s->status = BILLING_INVOICE_PENDING;
  memcpy(s->number, p->number, sizeof s->number);
  memcpy(s->customer_id, p->customer_id, sizeof s->customer_id);
  s->amount = p->amount;
  s->due_date = p->due_date;
}

static void on_paid(void *state, const cqrs_event_t *e) {
  BILLING_UNUSED(e);
  ((billing_invoice_state_t *)state)->status = BILLING_INVOICE_PAID;
}

static void on_cancelled(void *state, const cqrs_event_t *e) {
  BILLING_UNUSED(e);
  ((billing_invoice_state_t *)state)->status = BILLING_INVOICE_CANCELLED;
}

static const cqrs_apply_entry_t invoice_apply[] = {{&billing_invoice_issued, on_issued},
                                                   {&billing_invoice_paid, on_paid},
                                                   {&billing_invoice_cancelled, on_cancelled},
                                                   {NULL, NULL}};

const cqrs_aggregate_type_t billing_invoice = {
    .name = "invoice", .state_size = sizeof(billing_invoice_state_t), .apply = invoice_apply};

/* ---- domain ---- */

static cqrs_code_t handle_issue(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  BILLING_UNUSED(data);
  const billing_issue_invoice_t *c = cqrs_command_payload(cmd);
  cqrs_aggregate_t *inv, *cust, *book;
  cqrs_code_t rc = cqrs_context_load(ctx, &billing_invoice, c->invoice_id, &inv, err);
  if (rc) return rc;
  if (((const billing_invoice_state_t *)cqrs_aggregate_state_const(inv))->status != BILLING_INVOICE_NONE)
    return cqrs_reject(err, "invoice.already_issued", "invoice %s exists", c->invoice_id);
  if ((rc = cqrs_context_load(ctx, &billing_customer, c->customer_id, &cust, err))) return rc;
  if (!((const billing_customer_state_t *)cqrs_aggregate_state_const(cust))->registered)
    return cqrs_reject(err, "invoice.unknown_customer", "customer %s does not exist", c->customer_id);
  int year = year_at(cqrs_context_now_ms(ctx)); /* the dispatcher's clock */
  char book_id[16];
  snprintf(book_id, sizeof book_id, "%04d", year);
  if ((rc = cqrs_context_load(ctx, &billing_invoice_book, book_id, &book, err))) return rc;
  billing_invoice_numbered_t e;
  memset(&e, 0, sizeof e);
  memcpy(e.invoice_id, c->invoice_id, sizeof e.invoice_id);
  billing_invoice_number(e.number, year, ((const billing_book_state_t *)cqrs_aggregate_state_const(book))->last + 1);
  memcpy(e.customer_id, c->customer_id, sizeof e.customer_id);
  e.amount = c->amount;
  e.due_date = c->due_date;
  bson_t value = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&value, "number", e.number);
  rc = cqrs_context_set_value(ctx, &value, err);
  bson_destroy(&value);
  return rc ? rc : cqrs_aggregate_raise(book, &billing_invoice_numbered, &e, err);
}

static cqrs_code_t handle_record(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  BILLING_UNUSED(data);
  const billing_record_invoice_t *c = cqrs_command_payload(cmd);
  cqrs_aggregate_t *inv;
  cqrs_code_t rc = cqrs_context_load(ctx, &billing_invoice, c->invoice_id, &inv, err);
  if (rc) return rc;
  const billing_invoice_state_t *s = cqrs_aggregate_state_const(inv);
  if (s->status != BILLING_INVOICE_NONE) {
    if (!strcmp(s->number, c->number)) return CQRS_OK; /* recorded before */
    return cqrs_reject(err, "invoice.already_issued", "invoice %s is %s, not %s", c->invoice_id, s->number,
                       c->number);
  }
  billing_invoice_issued_t e;
  memset(&e, 0, sizeof e);
  memcpy(e.number, c->number, sizeof e.number);
  memcpy(e.customer_id, c->customer_id, sizeof e.customer_id);
  e.amount = c->amount;
  e.due_date = c->due_date;
  return cqrs_aggregate_raise(inv, &billing_invoice_issued, &e, err);
}

static cqrs_code_t load_pending(cqrs_context_t *ctx, const char *id, cqrs_aggregate_t **inv, cqrs_error_t *err) {
  cqrs_code_t rc = cqrs_context_load(ctx, &billing_invoice, id, inv, err);
  if (rc) return rc;
  switch (((const billing_invoice_state_t *)cqrs_aggregate_state_const(*inv))->status) {
  case BILLING_INVOICE_NONE:
    return cqrs_reject(err, "invoice.unknown", "invoice %s does not exist", id);
  case BILLING_INVOICE_PAID:
    return cqrs_reject(err, "invoice.already_paid", "invoice %s is paid", id);
  case BILLING_INVOICE_CANCELLED:
    return cqrs_reject(err, "invoice.cancelled", "invoice %s is cancelled", id);
  default:
    return CQRS_OK;
  }
}

static cqrs_code_t handle_pay(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  BILLING_UNUSED(data);
  const billing_pay_invoice_t *c = cqrs_command_payload(cmd);
  cqrs_aggregate_t *inv;
  cqrs_code_t rc = load_pending(ctx, c->invoice_id, &inv, err);
  if (rc) return rc;
  const billing_invoice_state_t *s = cqrs_aggregate_state_const(inv);
  if (s->amount.amount != c->amount.amount || strcmp(s->amount.currency, c->amount.currency))
    return cqrs_reject(err, "invoice.wrong_amount", "invoice %s is " BILLING_MONEY_FMT ", not " BILLING_MONEY_FMT,
                       c->invoice_id, BILLING_MONEY_ARGS(s->amount.amount, s->amount.currency),
                       BILLING_MONEY_ARGS(c->amount.amount, c->amount.currency));
  billing_invoice_paid_t e = {c->amount};
  return cqrs_aggregate_raise(inv, &billing_invoice_paid, &e, err);
}

static cqrs_code_t handle_cancel(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  BILLING_UNUSED(data);
  const billing_cancel_invoice_t *c = cqrs_command_payload(cmd);
  cqrs_aggregate_t *inv;
  cqrs_code_t rc = load_pending(ctx, c->invoice_id, &inv, err);
  if (rc) return rc;
  billing_invoice_cancelled_t e;
  memset(&e, 0, sizeof e);
  memcpy(e.reason, c->reason, sizeof e.reason);
  return cqrs_aggregate_raise(inv, &billing_invoice_cancelled, &e, err);
}

cqrs_code_t billing__invoice_handlers(cqrs_dispatcher_t *d, cqrs_error_t *err) {
  cqrs_code_t rc = cqrs_dispatcher_register(d, &billing_issue_invoice, handle_issue, NULL, CQRS_HANDLER_BATCH, err);
  if (!rc) rc = cqrs_dispatcher_register(d, &billing_record_invoice, handle_record, NULL, 0, err);
  if (!rc) rc = cqrs_dispatcher_register(d, &billing_pay_invoice, handle_pay, NULL, 0, err);
  if (!rc) rc = cqrs_dispatcher_register(d, &billing_cancel_invoice, handle_cancel, NULL, 0, err);
  return rc;
}
