/* The invoice as a read answers it, whichever side of the mongodb_cqs_enabled
 * flag answers: the legacy billing_documents document (amount a double in
 * major units) and the CQS billing_queries document (amount an integer of
 * minor units, written by the projection) both become one view, and one
 * BSON shape. The legacy document is checked here too: what cannot be
 * read exactly (an amount that is no whole number of minor units, a bad
 * e-mail address...) is refused with its reason, the same refusal the
 * migration records. */
#include <stdlib.h>

#include "billing-private.h"

static cqrs_code_t refuse(cqrs_error_t *err, const char *kind, const char *fmt, const char *arg) {
  cqrs_error_set(err, CQRS_EINVAL, fmt, arg);
  if (err) snprintf(err->name, sizeof err->name, "legacy.%s", kind);
  return CQRS_EINVAL;
}

static bool find(const bson_t *doc, const char *path, bson_iter_t *v) {
  bson_iter_t it;
  return bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, v);
}

/* A non-empty string at `path` copied into dst[cap]: never cut. */
static cqrs_code_t get_str(const bson_t *doc, const char *path, char *dst, size_t cap, cqrs_error_t *err) {
  bson_iter_t v;
  if (!find(doc, path, &v)) return refuse(err, "missing_field", "missing field %s", path);
  if (!BSON_ITER_HOLDS_UTF8(&v)) return refuse(err, "wrong_type", "field %s is not a string", path);
  uint32_t len;
  const char *s = bson_iter_utf8(&v, &len);
  if (!len) return refuse(err, "empty_field", "field %s is empty", path);
  if (len >= cap || strlen(s) != len) return refuse(err, "too_long", "field %s is too long", path);
  memcpy(dst, s, len + 1);
  return CQRS_OK;
}

/* A date at `path` into *out (0 when absent and not required). */
static cqrs_code_t get_date(const bson_t *doc, const char *path, bool required, int64_t *out, cqrs_error_t *err) {
  bson_iter_t v;
  *out = 0;
  if (!find(doc, path, &v) || BSON_ITER_HOLDS_NULL(&v))
    return required ? refuse(err, "missing_field", "missing field %s", path) : CQRS_OK;
  if (!BSON_ITER_HOLDS_DATE_TIME(&v)) return refuse(err, "bad_date", "field %s is not a date", path);
  *out = bson_iter_date_time(&v);
  return CQRS_OK;
}

static int status_of(const char *s) {
  if (!strcmp(s, "pending")) return BILLING_INVOICE_PENDING;
  if (!strcmp(s, "paid")) return BILLING_INVOICE_PAID;
  if (!strcmp(s, "cancelled")) return BILLING_INVOICE_CANCELLED;
  return BILLING_INVOICE_NONE;
}

const char *billing_invoice_status_name(billing_invoice_status_t s) {
  switch (s) {
  case BILLING_INVOICE_PENDING: return "pending";
  case BILLING_INVOICE_PAID: return "paid";
  case BILLING_INVOICE_CANCELLED: return "cancelled";
  default: return "none";
  }
}

static cqrs_code_t get_id(const bson_t *doc, char *dst, size_t cap, cqrs_error_t *err) {
  bson_iter_t it;
  if (!bson_iter_init_find(&it, doc, "_id")) return refuse(err, "missing_field", "missing field %s", "_id");
  if (BSON_ITER_HOLDS_OID(&it)) {
    bson_oid_to_string(bson_iter_oid(&it), dst);
    return CQRS_OK;
  }
  if (!BSON_ITER_HOLDS_UTF8(&it))
    return refuse(err, "wrong_type", "field %s is neither a string nor an ObjectId", "_id");
  return get_str(doc, "_id", dst, cap, err);
}

static cqrs_code_t legacy_amount(const bson_t *doc, billing_invoice_view_t *v, cqrs_error_t *err) {
  bson_iter_t it;
  if (!bson_iter_init_find(&it, doc, "amount")) return refuse(err, "missing_field", "missing field %s", "amount");
  if (!BSON_ITER_HOLDS_NUMBER(&it)) return refuse(err, "not_a_number", "amount is not a number%s", "");
  double amount = bson_iter_as_double(&it);
  cqrs_code_t rc = get_str(doc, "currency", v->amount.currency, sizeof v->amount.currency, err);
  if (rc) return rc;
  if (billing_currency_exponent(v->amount.currency) < 0)
    return refuse(err, "unknown_currency", "unknown currency '%.8s'", v->amount.currency);
  if (amount < 0) return refuse(err, "negative_amount", "amount is negative%s", "");
  if (amount == 0) return refuse(err, "zero_amount", "amount is zero%s", "");
  cqrs_error_t why;
  if (billing_amount_from_double(amount, v->amount.currency, &v->amount.amount, &why))
    return refuse(err, "inexact_amount", "%s", why.message);
  return CQRS_OK;
}

static cqrs_code_t legacy_customer(const bson_t *doc, billing_invoice_view_t *v, cqrs_error_t *err) {
  bson_iter_t it;
  if (!bson_iter_init_find(&it, doc, "customer")) return refuse(err, "missing_field", "missing field %s", "customer");
  if (!BSON_ITER_HOLDS_DOCUMENT(&it)) return refuse(err, "wrong_type", "field %s is not a document", "customer");
  cqrs_code_t rc = get_str(doc, "customer.id", v->customer_id, sizeof v->customer_id, err);
  if (!rc) rc = get_str(doc, "customer.name", v->name, sizeof v->name, err);
  if (!rc) rc = get_str(doc, "customer.email", v->email, sizeof v->email, err);
  if (!rc && !billing_email_valid(v->email))
    return refuse(err, "bad_email", "customer.email '%.64s' is not an e-mail address", v->email);
  return rc;
}

static cqrs_code_t legacy_status(const bson_t *doc, billing_invoice_view_t *v, cqrs_error_t *err) {
  bson_iter_t it;
  if (!find(doc, "status", &it)) return refuse(err, "missing_field", "missing field %s", "status");
  if (!BSON_ITER_HOLDS_UTF8(&it)) return refuse(err, "wrong_type", "field %s is not a string", "status");
  const char *status = bson_iter_utf8(&it, NULL);
  if (!*status) return refuse(err, "empty_field", "field %s is empty", "status");
  if (!(v->status = status_of(status))) return refuse(err, "unknown_status", "unknown status '%.32s'", status);
  return CQRS_OK;
}

static int64_t max3(int64_t a, int64_t b, int64_t c) {
  int64_t m = a > b ? a : b;
  return m > c ? m : c;
}

/* createdAt is required; paidAt and cancelledAt, for their status, fall
 * back on updatedAt, then createdAt; updatedAt on the latest of them. */
static cqrs_code_t legacy_dates(const bson_t *doc, billing_invoice_view_t *v, cqrs_error_t *err) {
  int64_t paid, cancelled;
  cqrs_code_t rc = get_date(doc, "createdAt", true, &v->created_at, err);
  if (!rc) rc = get_date(doc, "updatedAt", false, &v->updated_at, err);
  if (!rc) rc = get_date(doc, "dueDate", false, &v->due_date, err);
  if (!rc) rc = get_date(doc, "paidAt", false, &paid, err);
  if (!rc) rc = get_date(doc, "cancelledAt", false, &cancelled, err);
  if (rc) return rc;
  int64_t fallback = v->updated_at ? v->updated_at : v->created_at;
  if (v->status == BILLING_INVOICE_PAID) v->paid_at = paid ? paid : fallback;
  if (v->status == BILLING_INVOICE_CANCELLED) v->cancelled_at = cancelled ? cancelled : fallback;
  if (!v->updated_at) v->updated_at = max3(v->created_at, v->paid_at, v->cancelled_at);
  return CQRS_OK;
}

cqrs_code_t billing_legacy_invoice_parse(const bson_t *doc, billing_invoice_view_t *v, cqrs_error_t *err) {
  if (!doc || !v) return cqrs_error_set(err, CQRS_EINVAL, "NULL document or view");
  memset(v, 0, sizeof *v);
  cqrs_code_t rc = get_id(doc, v->id, sizeof v->id, err);
  if (!rc) rc = get_str(doc, "invoiceNumber", v->number, sizeof v->number, err);
  if (!rc && !billing_invoice_number_parse(v->number, NULL, NULL))
    return refuse(err, "bad_number", "invoiceNumber '%.40s' is not INV-YYYY-NNN", v->number);
  if (!rc) rc = legacy_amount(doc, v, err);
  if (!rc) rc = legacy_customer(doc, v, err);
  if (!rc) rc = legacy_status(doc, v, err);
  if (!rc) rc = legacy_dates(doc, v, err);
  return rc;
}

static const char *str_or(const bson_t *doc, const char *path, const char *dflt) {
  bson_iter_t v;
  return find(doc, path, &v) && BSON_ITER_HOLDS_UTF8(&v) ? bson_iter_utf8(&v, NULL) : dflt;
}

static int64_t date_or_0(const bson_t *doc, const char *path) {
  bson_iter_t v;
  return find(doc, path, &v) && BSON_ITER_HOLDS_DATE_TIME(&v) ? bson_iter_date_time(&v) : 0;
}

cqrs_code_t billing_cqs_invoice_parse(const bson_t *doc, billing_invoice_view_t *v, cqrs_error_t *err) {
  if (!doc || !v) return cqrs_error_set(err, CQRS_EINVAL, "NULL document or view");
  memset(v, 0, sizeof *v);
  bson_iter_t it;
  const char *id = str_or(doc, "_id", NULL), *number = str_or(doc, "invoiceNumber", NULL);
  const char *currency = str_or(doc, "currency", NULL), *status = str_or(doc, "status", "");
  if (!id || !number || !currency || !find(doc, "amount", &it) || !BSON_ITER_HOLDS_NUMBER(&it) ||
      !(v->status = status_of(status)))
    return cqrs_error_set(err, CQRS_ECODEC, "invoice %.64s in the read model lacks what the projection writes",
                          id ? id : "?");
  snprintf(v->id, sizeof v->id, "%s", id);
  snprintf(v->number, sizeof v->number, "%s", number);
  v->amount.amount = bson_iter_as_int64(&it);
  snprintf(v->amount.currency, sizeof v->amount.currency, "%s", currency);
  snprintf(v->customer_id, sizeof v->customer_id, "%s", str_or(doc, "customer.id", ""));
  snprintf(v->name, sizeof v->name, "%s", str_or(doc, "customer.name", ""));
  snprintf(v->email, sizeof v->email, "%s", str_or(doc, "customer.email", ""));
  v->created_at = date_or_0(doc, "createdAt");
  v->updated_at = date_or_0(doc, "updatedAt");
  v->due_date = date_or_0(doc, "dueDate");
  v->paid_at = date_or_0(doc, "paidAt");
  v->cancelled_at = date_or_0(doc, "cancelledAt");
  return CQRS_OK;
}

static void append_date(bson_t *out, const char *key, int64_t ms) {
  if (ms) BSON_APPEND_DATE_TIME(out, key, ms);
}

void billing_invoice_view_to_bson(const billing_invoice_view_t *v, bson_t *out) {
  bson_t cust;
  BSON_APPEND_UTF8(out, "_id", v->id);
  BSON_APPEND_UTF8(out, "invoiceNumber", v->number);
  BSON_APPEND_INT64(out, "amount", v->amount.amount);
  BSON_APPEND_UTF8(out, "currency", v->amount.currency);
  BSON_APPEND_DOCUMENT_BEGIN(out, "customer", &cust);
  BSON_APPEND_UTF8(&cust, "id", v->customer_id);
  BSON_APPEND_UTF8(&cust, "name", v->name);
  BSON_APPEND_UTF8(&cust, "email", v->email);
  bson_append_document_end(out, &cust);
  BSON_APPEND_UTF8(out, "status", billing_invoice_status_name(v->status));
  append_date(out, "createdAt", v->created_at);
  append_date(out, "updatedAt", v->updated_at);
  append_date(out, "dueDate", v->due_date);
  append_date(out, "paidAt", v->paid_at);
  append_date(out, "cancelledAt", v->cancelled_at);
}

static void add_difference(bson_t *list, size_t *n, const char *field, const char *l, const char *c) {
  if ((l && c && !strcmp(l, c)) || (!l && !c)) return;
  char key[16];
  const char *k;
  bson_t d;
  bson_uint32_to_string((uint32_t)(*n)++, &k, key, sizeof key);
  bson_append_document_begin(list, k, -1, &d);
  if (l) BSON_APPEND_UTF8(&d, "legacy", l); else BSON_APPEND_NULL(&d, "legacy");
  if (c) BSON_APPEND_UTF8(&d, "cqs", c); else BSON_APPEND_NULL(&d, "cqs");
  BSON_APPEND_UTF8(&d, "field", field);
  bson_append_document_end(list, &d);
}

static void int_text(char *buf, size_t cap, int64_t v) { snprintf(buf, cap, "%lld", (long long)v); }

/* The fields that say what an invoice is; updatedAt, bookkeeping, is left
 * out (a legacy system touches it for reasons no event records). */
size_t billing_invoice_view_diff(const billing_invoice_view_t *legacy, const billing_invoice_view_t *cqs, bson_t *list) {
  size_t n = 0;
  static const char *const text_fields[] = {"invoiceNumber", "currency", "status", "customer.id", "customer.name",
                                            "customer.email"};
  static const char *const int_fields[] = {"amount", "createdAt", "dueDate", "paidAt", "cancelledAt"};
  const billing_invoice_view_t *v[2] = {legacy, cqs};
  const char *text[2][6];
  char nums[2][5][24];
  for (int i = 0; i < 2; i++) {
    const billing_invoice_view_t *x = v[i];
    if (!x) continue;
    const char *t[6] = {x->number, x->amount.currency, billing_invoice_status_name(x->status), x->customer_id,
                        x->name, x->email};
    const int64_t ints[5] = {x->amount.amount, x->created_at, x->due_date, x->paid_at, x->cancelled_at};
    for (int j = 0; j < 6; j++) text[i][j] = t[j];
    for (int j = 0; j < 5; j++) int_text(nums[i][j], sizeof nums[i][j], ints[j]);
  }
  for (int j = 0; j < 6; j++) add_difference(list, &n, text_fields[j], legacy ? text[0][j] : NULL, cqs ? text[1][j] : NULL);
  for (int j = 0; j < 5; j++) add_difference(list, &n, int_fields[j], legacy ? nums[0][j] : NULL, cqs ? nums[1][j] : NULL);
  return n;
}
