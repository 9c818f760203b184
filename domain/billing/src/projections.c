/* The read side: invoices as the seed's billing_queries documents (with the
 * customer's name and e-mail), customers, and account balances. Every write
 * carries the event's position, so replaying events changes nothing. The
 * customer's name and e-mail are sealed in both collections with the
 * customer's key, and overwritten when the customer is forgotten. */
#include "billing-private.h"

/* The personal keys of the two collections that hold customers' data. */
typedef struct customer_doc {
  char name[BILLING_NAME_MAX];
  char email[BILLING_EMAIL_MAX];
} customer_doc_t;
typedef struct invoice_customer_doc {
  char id[CQRS_ID_MAX];
  char name[BILLING_NAME_MAX];
  char email[BILLING_EMAIL_MAX];
} invoice_customer_doc_t;
typedef struct invoice_doc {
  invoice_customer_doc_t customer;
} invoice_doc_t;

static const cqrs_field_t customer_doc_fields[] = {CQRS_STRING(customer_doc_t, name, "name", CQRS_F_PERSONAL),
                                                   CQRS_STRING(customer_doc_t, email, "email", CQRS_F_PERSONAL),
                                                   CQRS_SUBJECT_OWNER, CQRS_FIELDS_END};
static const cqrs_field_t invoice_customer_fields[] = {
    CQRS_STRING(invoice_customer_doc_t, id, "id", CQRS_F_SUBJECT),
    CQRS_STRING(invoice_customer_doc_t, name, "name", CQRS_F_PERSONAL),
    CQRS_STRING(invoice_customer_doc_t, email, "email", CQRS_F_PERSONAL), CQRS_FIELDS_END};
static const cqrs_field_t invoice_doc_fields[] = {
    CQRS_DOC(invoice_doc_t, customer, "customer", invoice_customer_fields, 0), CQRS_FIELDS_END};

cqrs_code_t billing_seal_read_model(cqrs_readmodel_t *rm, const billing_collections_t *cols, cqrs_keys_t *keys,
                                    cqrs_error_t *err) {
  if (!cols) cols = &billing_default_collections;
  const cqrs_doc_type_t customers = {cols->customers, customer_doc_fields};
  const cqrs_doc_type_t invoices = {cols->invoices, invoice_doc_fields};
  cqrs_code_t rc = cqrs_readmodel_add_type(rm, &customers, keys, err);
  return rc ? rc : cqrs_readmodel_add_type(rm, &invoices, keys, err);
}

static cqrs_code_t customer_registered(billing_t *b, const cqrs_event_t *e, cqrs_error_t *err) {
  const billing_customer_registered_t *p = e->payload;
  bson_t doc = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&doc, "name", p->name);
  BSON_APPEND_UTF8(&doc, "email", p->email);
  cqrs_code_t rc = cqrs_readmodel_put(b->rm, b->cols.customers, cqrs_event_aggregate_id(e), &doc, e->position, NULL, err);
  bson_destroy(&doc);
  return rc;
}

static cqrs_code_t email_changed(billing_t *b, const cqrs_event_t *e, cqrs_error_t *err) {
  const billing_email_changed_t *p = e->payload;
  const char *id = cqrs_event_aggregate_id(e);
  bson_t set = BSON_INITIALIZER, filter = BSON_INITIALIZER, inv_set = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&set, "email", p->email);
  BSON_APPEND_UTF8(&filter, "customer.id", id);
  BSON_APPEND_UTF8(&inv_set, "customer.email", p->email);
  BSON_APPEND_DATE_TIME(&inv_set, "updatedAt", e->timestamp);
  cqrs_code_t rc = cqrs_readmodel_patch(b->rm, b->cols.customers, id, &set, e->position, NULL, err);
  if (!rc) rc = cqrs_readmodel_patch_where(b->rm, b->cols.invoices, &filter, &inv_set, e->position, NULL, err);
  bson_destroy(&set);
  bson_destroy(&filter);
  bson_destroy(&inv_set);
  return rc;
}

static void copy_string(const bson_t *doc, const char *key, bson_t *out) {
  bson_iter_t it;
  if (bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_UTF8(&it)) {
    BSON_APPEND_UTF8(out, key, bson_iter_utf8(&it, NULL));
  } else {
    BSON_APPEND_UTF8(out, key, "");
  }
}

static cqrs_code_t invoice_issued(billing_t *b, const cqrs_event_t *e, cqrs_error_t *err) {
  const billing_invoice_issued_t *p = e->payload;
  bson_t customer;
  bool found = false;
  cqrs_code_t rc = cqrs_readmodel_get(b->rm, b->cols.customers, p->customer_id, &customer, &found, err);
  if (rc) return rc;
  bson_t doc = BSON_INITIALIZER, cust;
  BSON_APPEND_UTF8(&doc, "invoiceNumber", p->number);
  BSON_APPEND_INT64(&doc, "amount", p->amount.amount);
  BSON_APPEND_UTF8(&doc, "currency", p->amount.currency);
  BSON_APPEND_DOCUMENT_BEGIN(&doc, "customer", &cust);
  BSON_APPEND_UTF8(&cust, "id", p->customer_id);
  bson_t empty = BSON_INITIALIZER;
  copy_string(found ? &customer : &empty, "name", &cust);
  copy_string(found ? &customer : &empty, "email", &cust);
  bson_append_document_end(&doc, &cust);
  BSON_APPEND_UTF8(&doc, "status", "pending");
  BSON_APPEND_DATE_TIME(&doc, "createdAt", e->timestamp);
  BSON_APPEND_DATE_TIME(&doc, "updatedAt", e->timestamp);
  if (p->due_date) BSON_APPEND_DATE_TIME(&doc, "dueDate", p->due_date); /* 0: none known (a migrated invoice) */
  rc = cqrs_readmodel_put(b->rm, b->cols.invoices, cqrs_event_aggregate_id(e), &doc, e->position, NULL, err);
  bson_destroy(&doc);
  bson_destroy(&empty);
  if (found) bson_destroy(&customer);
  return rc;
}

static cqrs_code_t invoice_status(billing_t *b, const cqrs_event_t *e, const char *status, const char *date_key,
                                  cqrs_error_t *err) {
  bson_t set = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&set, "status", status);
  if (date_key) BSON_APPEND_DATE_TIME(&set, date_key, e->timestamp);
  BSON_APPEND_DATE_TIME(&set, "updatedAt", e->timestamp);
  cqrs_code_t rc = cqrs_readmodel_patch(b->rm, b->cols.invoices, cqrs_event_aggregate_id(e), &set, e->position, NULL, err);
  bson_destroy(&set);
  return rc;
}

/* What the read side derived of a forgotten customer is overwritten with
 * the placeholder (sealed for them, it is stored forgotten: no key). A
 * subject that was no customer here has no document: nothing to do. */
static cqrs_code_t customer_forgotten(billing_t *b, const cqrs_event_t *e, cqrs_error_t *err) {
  const char *id = ((const cqrs_forgotten_t *)e->payload)->subject;
  bson_t set = BSON_INITIALIZER, filter = BSON_INITIALIZER, inv_set = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&set, "name", CQRS_FORGOTTEN);
  BSON_APPEND_UTF8(&set, "email", CQRS_FORGOTTEN);
  BSON_APPEND_UTF8(&filter, "customer.id", id);
  BSON_APPEND_UTF8(&inv_set, "customer.name", CQRS_FORGOTTEN);
  BSON_APPEND_UTF8(&inv_set, "customer.email", CQRS_FORGOTTEN);
  cqrs_code_t rc = cqrs_readmodel_patch(b->rm, b->cols.customers, id, &set, e->position, NULL, err);
  if (rc == CQRS_ENOT_FOUND) {
    cqrs_error_clear(err);
    rc = CQRS_OK;
  }
  if (!rc) rc = cqrs_readmodel_patch_where(b->rm, b->cols.invoices, &filter, &inv_set, e->position, NULL, err);
  bson_destroy(&set);
  bson_destroy(&filter);
  bson_destroy(&inv_set);
  return rc;
}

cqrs_code_t billing_project_invoices(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  billing_t *b = data;
  if (e->type == &cqrs_forgotten_event_type) return customer_forgotten(b, e, err);
  if (e->type == &billing_customer_registered) return customer_registered(b, e, err);
  if (e->type == &billing_customer_email_changed) return email_changed(b, e, err);
  if (e->type == &billing_invoice_issued) return invoice_issued(b, e, err);
  if (e->type == &billing_invoice_paid) return invoice_status(b, e, "paid", "paidAt", err);
  if (e->type == &billing_invoice_cancelled) return invoice_status(b, e, "cancelled", "cancelledAt", err);
  return CQRS_OK;
}

cqrs_code_t billing_project_balances(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  billing_t *b = data;
  const char *id = cqrs_event_aggregate_id(e);
  bson_t doc = BSON_INITIALIZER;
  cqrs_code_t rc = CQRS_OK;
  if (e->type == &billing_account_opened) {
    const billing_account_opened_t *p = e->payload;
    BSON_APPEND_UTF8(&doc, "owner", p->owner);
    BSON_APPEND_UTF8(&doc, "currency", p->currency);
    BSON_APPEND_INT64(&doc, "balance", 0);
    BSON_APPEND_UTF8(&doc, "status", "open");
    rc = cqrs_readmodel_put(b->rm, b->cols.balances, id, &doc, e->position, NULL, err);
  } else if (e->type == &billing_account_deposited || e->type == &billing_account_withdrawn ||
             e->type == &billing_account_refunded) {
    rc = cqrs_readmodel_set_int64(b->rm, b->cols.balances, id, "balance",
                                  ((const billing_account_moved_t *)e->payload)->balance, e->position, NULL, err);
  } else if (e->type == &billing_account_closed) {
    BSON_APPEND_UTF8(&doc, "status", "closed");
    rc = cqrs_readmodel_patch(b->rm, b->cols.balances, id, &doc, e->position, NULL, err);
  }
  bson_destroy(&doc);
  return rc;
}
