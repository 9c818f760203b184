/* A legacy billing_documents document, checked and converted: what migrate
 * turns into events and what it refuses, with the reason. */
#include <string.h>

#include "legacy.h"

static bool fail(char *reason, size_t cap, const char *fmt, const char *arg) {
  snprintf(reason, cap, fmt, arg);
  return false;
}

static bool get_str(const bson_t *doc, const char *path, const char **out, char *reason, size_t cap) {
  bson_iter_t it, v;
  if (!bson_iter_init(&it, doc) || !bson_iter_find_descendant(&it, path, &v))
    return fail(reason, cap, "missing field %s", path);
  if (!BSON_ITER_HOLDS_UTF8(&v)) return fail(reason, cap, "field %s is not a string", path);
  *out = bson_iter_utf8(&v, NULL);
  if (!**out) return fail(reason, cap, "field %s is empty", path);
  return true;
}

static bool copy(char *dst, size_t cap, const char *src, const char *what, char *reason, size_t rcap) {
  if (strlen(src) >= cap) return fail(reason, rcap, "%s is too long", what);
  memcpy(dst, src, strlen(src) + 1);
  return true;
}

bool legacy_parse(const bson_t *doc, legacy_t *l, char *reason, size_t cap) {
  memset(l, 0, sizeof *l);
  bson_iter_t it;
  if (!bson_iter_init_find(&it, doc, "_id")) return fail(reason, cap, "missing field %s", "_id");
  if (BSON_ITER_HOLDS_OID(&it)) {
    bson_oid_to_string(bson_iter_oid(&it), l->id);
  } else if (BSON_ITER_HOLDS_UTF8(&it)) {
    /* Natural command ids keep 40 characters of an id: longer ones could
     * collide. */
    if (!copy(l->id, LEGACY_ID_MAX, bson_iter_utf8(&it, NULL), "_id (over 40 characters)", reason, cap))
      return false;
    if (!l->id[0]) return fail(reason, cap, "field %s is empty", "_id");
  } else {
    return fail(reason, cap, "field %s is neither a string nor an ObjectId", "_id");
  }
  const char *s;
  if (!get_str(doc, "invoiceNumber", &s, reason, cap)) return false;
  if (!billing_invoice_number_parse(s, &l->year, &l->sequence) || strlen(s) >= BILLING_NUMBER_MAX)
    return fail(reason, cap, "invoiceNumber '%.40s' is not INV-YYYY-NNN", s);
  memcpy(l->number, s, strlen(s) + 1);

  if (!bson_iter_init_find(&it, doc, "amount")) return fail(reason, cap, "missing field %s", "amount");
  if (!BSON_ITER_HOLDS_NUMBER(&it)) return fail(reason, cap, "amount is not a number%s", "");
  double amount = bson_iter_as_double(&it);
  if (!get_str(doc, "currency", &s, reason, cap)) return false;
  if (billing_currency_exponent(s) < 0) return fail(reason, cap, "unknown currency '%.8s'", s);
  memcpy(l->amount.currency, s, 4);
  if (amount < 0) return fail(reason, cap, "amount is negative%s", "");
  if (amount == 0) return fail(reason, cap, "amount is zero%s", "");
  cqrs_error_t err;
  if (billing_amount_from_double(amount, s, &l->amount.amount, &err))
    return fail(reason, cap, "%s", err.message);

  if (!bson_iter_init_find(&it, doc, "customer")) return fail(reason, cap, "missing field %s", "customer");
  if (!BSON_ITER_HOLDS_DOCUMENT(&it)) return fail(reason, cap, "field %s is not a document", "customer");
  if (!get_str(doc, "customer.id", &s, reason, cap) ||
      !copy(l->customer_id, LEGACY_ID_MAX, s, "customer.id (over 40 characters)", reason, cap))
    return false;
  if (!get_str(doc, "customer.name", &s, reason, cap) ||
      !copy(l->name, sizeof l->name, s, "customer.name", reason, cap))
    return false;
  if (!get_str(doc, "customer.email", &s, reason, cap)) return false;
  if (!billing_email_valid(s)) return fail(reason, cap, "customer.email '%.64s' is not an e-mail address", s);
  memcpy(l->email, s, strlen(s) + 1);

  if (!get_str(doc, "status", &s, reason, cap)) return false;
  if (!strcmp(s, "pending")) l->status = BILLING_INVOICE_PENDING;
  else if (!strcmp(s, "paid")) l->status = BILLING_INVOICE_PAID;
  else if (!strcmp(s, "cancelled")) l->status = BILLING_INVOICE_CANCELLED;
  else return fail(reason, cap, "unknown status '%.32s'", s);
  return true;
}
