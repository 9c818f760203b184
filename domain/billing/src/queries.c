/* Queries over the billing read model. Pure: they only read. */
#include "billing-private.h"

static const char *param_str(const bson_t *params, const char *key) {
  bson_iter_t it;
  if (bson_iter_init_find(&it, params, key) && BSON_ITER_HOLDS_UTF8(&it)) return bson_iter_utf8(&it, NULL);
  return NULL;
}

static cqrs_code_t need(const char *v, const char *key, cqrs_error_t *err) {
  if (!v || !*v) return cqrs_error_set(err, CQRS_EINVAL, "parameter '%s' (a string) is required", key);
  if (strlen(v) >= CQRS_ID_MAX) return cqrs_error_set(err, CQRS_ETOO_LARGE, "parameter '%s' is too long", key);
  return CQRS_OK;
}

static cqrs_code_t invoice_by_id(const cqrs_readmodel_t *rm, const bson_t *params, bson_t *out, void *data,
                                 cqrs_error_t *err) {
  const billing_collections_t *cols = data;
  const char *id = param_str(params, "id");
  cqrs_code_t rc = need(id, "id", err);
  if (rc) return rc;
  bson_t doc;
  bool found;
  if ((rc = cqrs_readmodel_get(rm, cols->invoices, id, &doc, &found, err))) return rc;
  if (!found) return cqrs_error_set(err, CQRS_ENOT_FOUND, "no invoice %s", id);
  BSON_APPEND_DOCUMENT(out, "invoice", &doc);
  bson_destroy(&doc);
  return CQRS_OK;
}

typedef struct array_out {
  bson_t *array;
  uint32_t n;
} array_out_t;

static bool append_doc(const bson_t *doc, void *data) {
  array_out_t *a = data;
  char key[16];
  const char *k;
  bson_uint32_to_string(a->n++, &k, key, sizeof key);
  return bson_append_document(a->array, k, -1, doc);
}

static cqrs_code_t invoices_by_customer(const cqrs_readmodel_t *rm, const bson_t *params, bson_t *out, void *data,
                                        cqrs_error_t *err) {
  const billing_collections_t *cols = data;
  const char *customer = param_str(params, "customerId"), *status = param_str(params, "status");
  cqrs_code_t rc = need(customer, "customerId", err);
  if (!rc) rc = need(status, "status", err);
  if (rc) return rc;
  if (strcmp(status, "pending") && strcmp(status, "paid") && strcmp(status, "cancelled"))
    return cqrs_error_set(err, CQRS_EINVAL, "status must be pending, paid or cancelled");
  int64_t limit = 10;
  bson_iter_t it;
  if (bson_iter_init_find(&it, params, "limit")) {
    if (!BSON_ITER_HOLDS_INT32(&it) && !BSON_ITER_HOLDS_INT64(&it))
      return cqrs_error_set(err, CQRS_EINVAL, "limit must be an integer");
    limit = bson_iter_as_int64(&it);
    if (limit < 1 || limit > 1000) return cqrs_error_set(err, CQRS_EINVAL, "limit must be between 1 and 1000");
  }
  bson_t filter = BSON_INITIALIZER, array;
  BSON_APPEND_UTF8(&filter, "customer.id", customer);
  BSON_APPEND_UTF8(&filter, "status", status);
  cqrs_find_t q = {&filter, "createdAt", true, (size_t)limit};
  BSON_APPEND_ARRAY_BEGIN(out, "invoices", &array);
  array_out_t a = {&array, 0};
  rc = cqrs_readmodel_find(rm, cols->invoices, &q, append_doc, &a, err);
  bson_append_array_end(out, &array);
  bson_destroy(&filter);
  return rc;
}

static cqrs_code_t account_balance(const cqrs_readmodel_t *rm, const bson_t *params, bson_t *out, void *data,
                                   cqrs_error_t *err) {
  const billing_collections_t *cols = data;
  const char *id = param_str(params, "accountId");
  cqrs_code_t rc = need(id, "accountId", err);
  if (rc) return rc;
  bson_t doc;
  bool found;
  if ((rc = cqrs_readmodel_get(rm, cols->balances, id, &doc, &found, err))) return rc;
  if (!found) return cqrs_error_set(err, CQRS_ENOT_FOUND, "no account %s", id);
  bson_iter_t it;
  bson_t money;
  BSON_APPEND_UTF8(out, "accountId", id);
  BSON_APPEND_DOCUMENT_BEGIN(out, "balance", &money);
  BSON_APPEND_INT64(&money, "amount", bson_iter_init_find(&it, &doc, "balance") ? bson_iter_as_int64(&it) : 0);
  BSON_APPEND_UTF8(&money, "currency", param_str(&doc, "currency") ? param_str(&doc, "currency") : "");
  bson_append_document_end(out, &money);
  BSON_APPEND_UTF8(out, "status", param_str(&doc, "status") ? param_str(&doc, "status") : "");
  bson_destroy(&doc);
  return CQRS_OK;
}

#define MAX_CURRENCIES 32

typedef struct totals {
  char currency[MAX_CURRENCIES][4];
  int64_t sum[MAX_CURRENCIES];
  size_t n;
  int64_t accounts;
  bool overflow;
} totals_t;

static bool add_balance(const bson_t *doc, void *data) {
  totals_t *t = data;
  const char *cur = param_str(doc, "currency");
  bson_iter_t it;
  if (!cur || !bson_iter_init_find(&it, doc, "balance")) return true;
  int64_t v = bson_iter_as_int64(&it);
  t->accounts++;
  size_t i = 0;
  while (i < t->n && strcmp(t->currency[i], cur)) i++;
  if (i == t->n) {
    if (t->n == MAX_CURRENCIES) {
      t->overflow = true;
      return false;
    }
    snprintf(t->currency[i], 4, "%s", cur);
    t->sum[t->n++] = 0;
  }
  if ((v > 0 && t->sum[i] > INT64_MAX - v) || (v < 0 && t->sum[i] < INT64_MIN - v)) {
    t->overflow = true;
    return false;
  }
  t->sum[i] += v;
  return true;
}

static cqrs_code_t account_total(const cqrs_readmodel_t *rm, const bson_t *params, bson_t *out, void *data,
                                 cqrs_error_t *err) {
  BILLING_UNUSED(params);
  const billing_collections_t *cols = data;
  totals_t t;
  memset(&t, 0, sizeof t);
  cqrs_find_t q = {NULL, NULL, false, 0};
  cqrs_code_t rc = cqrs_readmodel_find(rm, cols->balances, &q, add_balance, &t, err);
  if (rc) return rc;
  if (t.overflow) return cqrs_error_set(err, CQRS_ETOO_LARGE, "totals overflow or too many currencies");
  bson_t totals;
  BSON_APPEND_DOCUMENT_BEGIN(out, "totals", &totals);
  for (size_t i = 0; i < t.n; i++) BSON_APPEND_INT64(&totals, t.currency[i], t.sum[i]);
  bson_append_document_end(out, &totals);
  BSON_APPEND_INT64(out, "accounts", t.accounts);
  return CQRS_OK;
}

cqrs_code_t billing_register_queries(cqrs_query_bus_t *q, const billing_collections_t *cols, cqrs_error_t *err) {
  void *c = (void *)(cols ? cols : &billing_default_collections);
  cqrs_code_t rc = cqrs_query_bus_register(q, "invoice.by_id", invoice_by_id, c, err);
  if (!rc) rc = cqrs_query_bus_register(q, "invoice.by_customer", invoices_by_customer, c, err);
  if (!rc) rc = cqrs_query_bus_register(q, "account.balance", account_balance, c, err);
  if (!rc) rc = cqrs_query_bus_register(q, "account.total", account_total, c, err);
  return rc;
}
