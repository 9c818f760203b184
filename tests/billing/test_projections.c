#include <stdio.h>

#include <cqrs/backend.h>

#include "fixture.h"

typedef struct pfx {
  cqrs_readmodel_t *rm;
  billing_t *b;
  cqrs_query_bus_t *q;
  cqrs_event_t *events[32];
  size_t n;
} pfx_t;

static int setup(void **state) {
  pfx_t *p = calloc(1, sizeof *p);
  cqrs_memory_readmodel_new(&p->rm, NULL);
  p->b = billing_projector_new(p->rm, NULL);
  cqrs_query_bus_new(p->rm, &p->q, NULL);
  assert_int_equal(billing_register_queries(p->q, NULL, NULL), CQRS_OK);
  *state = p;
  return 0;
}

static int teardown(void **state) {
  pfx_t *p = *state;
  for (size_t i = 0; i < p->n; i++) cqrs_event_unref(p->events[i]);
  cqrs_query_bus_destroy(p->q);
  billing_destroy(p->b);
  cqrs_readmodel_destroy(p->rm);
  free(p);
  return 0;
}

/* Records an event as a store would have committed it: positions 1, 2, ... */
static void add(pfx_t *p, const char *atype, const char *id, int64_t version, const cqrs_event_type_t *type,
                const void *payload) {
  cqrs_envelope_t *env;
  assert_int_equal(cqrs_envelope_new(atype, id, "cmd", NULL, &env, NULL), CQRS_OK);
  cqrs_event_t *e;
  assert_int_equal(cqrs_event_new(type, env, NULL, version, 1700000000000 + (int64_t)p->n * 1000, payload, &e, NULL),
                   CQRS_OK);
  cqrs_envelope_unref(env);
  e->position = (int64_t)p->n + 1;
  p->events[p->n++] = e;
}

static void replay(pfx_t *p) {
  for (size_t i = 0; i < p->n; i++) {
    cqrs_error_t err;
    if (billing_project_invoices(p->events[i], p->b, &err)) fail_msg("invoices: %s", err.message);
    if (billing_project_balances(p->events[i], p->b, &err)) fail_msg("balances: %s", err.message);
  }
}

static void script(pfx_t *p) {
  add(p, "customer", "acme", 1, &billing_customer_registered, &(billing_customer_registered_t){"Acme Corp", "billing@acme.com"});
  add(p, "customer", "globex", 1, &billing_customer_registered, &(billing_customer_registered_t){"Globex", "ap@globex.io"});
  add(p, "invoice", "inv_1", 1, &billing_invoice_issued, &(billing_invoice_issued_t){"INV-2026-001", "acme", EUR(150000), 1800000000000});
  add(p, "invoice", "inv_2", 1, &billing_invoice_issued, &(billing_invoice_issued_t){"INV-2026-002", "acme", EUR(2000), 1800000000000});
  add(p, "invoice", "inv_3", 1, &billing_invoice_issued, &(billing_invoice_issued_t){"INV-2026-003", "globex", EUR(10), 1800000000000});
  add(p, "invoice", "inv_4", 1, &billing_invoice_issued, &(billing_invoice_issued_t){"INV-2026-004", "acme", EUR(300), 1800000000000});
  add(p, "invoice", "inv_1", 2, &billing_invoice_paid, &(billing_invoice_paid_t){EUR(150000)});
  add(p, "invoice", "inv_2", 2, &billing_invoice_cancelled, &(billing_invoice_cancelled_t){"duplicate"});
  add(p, "customer", "acme", 2, &billing_customer_email_changed,
      &(billing_email_changed_t){"accounts@acme.com", "billing@acme.com"});
  add(p, "account", "a", 1, &billing_account_opened, &(billing_account_opened_t){"Ada", "EUR"});
  add(p, "account", "a", 2, &billing_account_deposited, &(billing_account_moved_t){EUR(500), 500, ""});
  add(p, "account", "a", 3, &billing_account_withdrawn, &(billing_account_moved_t){EUR(200), 300, "t-1"});
  add(p, "account", "b", 1, &billing_account_opened, &(billing_account_opened_t){"Bob", "EUR"});
  add(p, "account", "b", 2, &billing_account_closed, &(billing_account_closed_t){1});
  add(p, "account", "u", 1, &billing_account_opened, &(billing_account_opened_t){"Uma", "USD"});
  add(p, "account", "u", 2, &billing_account_deposited, &(billing_account_moved_t){USD(70), 70, ""});
}

static bson_t *invoice(pfx_t *p, const char *id) {
  bson_t params = BSON_INITIALIZER, out = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&params, "id", id);
  assert_int_equal(cqrs_query_bus_run(p->q, "invoice.by_id", &params, &out, NULL), CQRS_OK);
  bson_iter_t it;
  assert_true(bson_iter_init_find(&it, &out, "invoice"));
  uint32_t len;
  const uint8_t *raw;
  bson_iter_document(&it, &len, &raw);
  bson_t *doc = bson_new_from_data(raw, len);
  bson_destroy(&out);
  bson_destroy(&params);
  return doc;
}

static const char *s_at(const bson_t *doc, const char *path) {
  bson_iter_t it, v;
  if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &v) && BSON_ITER_HOLDS_UTF8(&v))
    return bson_iter_utf8(&v, NULL);
  return NULL;
}

static bson_type_t type_at(const bson_t *doc, const char *path) {
  bson_iter_t it, v;
  if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &v)) return bson_iter_type(&v);
  return BSON_TYPE_EOD;
}

static void test_invoice_documents_have_the_seed_shape(void **state) {
  pfx_t *p = *state;
  script(p);
  replay(p);
  bson_t *doc = invoice(p, "inv_1");
  assert_string_equal(s_at(doc, "_id"), "inv_1");
  assert_string_equal(s_at(doc, "invoiceNumber"), "INV-2026-001");
  assert_int_equal(type_at(doc, "amount"), BSON_TYPE_INT64); /* minor units, never a double */
  assert_string_equal(s_at(doc, "currency"), "EUR");
  assert_string_equal(s_at(doc, "customer.id"), "acme");
  assert_string_equal(s_at(doc, "customer.name"), "Acme Corp");
  assert_string_equal(s_at(doc, "status"), "paid");
  assert_int_equal(type_at(doc, "createdAt"), BSON_TYPE_DATE_TIME);
  assert_int_equal(type_at(doc, "updatedAt"), BSON_TYPE_DATE_TIME);
  assert_int_equal(type_at(doc, "paidAt"), BSON_TYPE_DATE_TIME);
  bson_destroy(doc);
  doc = invoice(p, "inv_2");
  assert_string_equal(s_at(doc, "status"), "cancelled");
  assert_int_equal(type_at(doc, "paidAt"), BSON_TYPE_EOD);
  bson_destroy(doc);
  doc = invoice(p, "inv_3");
  assert_string_equal(s_at(doc, "status"), "pending");
  assert_string_equal(s_at(doc, "customer.email"), "ap@globex.io");
  bson_destroy(doc);
}

static void test_email_change_reaches_every_invoice(void **state) {
  pfx_t *p = *state;
  script(p);
  replay(p);
  const char *acme[] = {"inv_1", "inv_2", "inv_4"};
  for (size_t i = 0; i < 3; i++) {
    bson_t *doc = invoice(p, acme[i]);
    assert_string_equal(s_at(doc, "customer.email"), "accounts@acme.com");
    assert_string_equal(s_at(doc, "customer.name"), "Acme Corp");
    bson_destroy(doc);
  }
  bson_t *doc = invoice(p, "inv_3");
  assert_string_equal(s_at(doc, "customer.email"), "ap@globex.io");
  bson_destroy(doc);
}

/* The forget reaches every document of the customer, and only theirs; a
 * replay from the first event (a rebuild) comes to the same read side,
 * whose sums are those of before. The events replayed are the decoded
 * ones a store yields once the key is gone: the placeholders. */
static void test_forget_overwrites_the_customer(void **state) {
  pfx_t *p = *state;
  script(p);
  add(p, "customer", "acme", 3, &cqrs_forgotten_event_type, &(cqrs_forgotten_t){"acme"});
  replay(p);
  const char *acme[] = {"inv_1", "inv_2", "inv_4"};
  for (size_t i = 0; i < 3; i++) {
    bson_t *doc = invoice(p, acme[i]);
    assert_string_equal(s_at(doc, "customer.email"), CQRS_FORGOTTEN);
    assert_string_equal(s_at(doc, "customer.name"), CQRS_FORGOTTEN);
    assert_string_equal(s_at(doc, "customer.id"), "acme");
    bson_destroy(doc);
  }
  bson_t *doc = invoice(p, "inv_1");
  assert_string_equal(s_at(doc, "status"), "paid");
  bson_destroy(doc);
  doc = invoice(p, "inv_3");
  assert_string_equal(s_at(doc, "customer.name"), "Globex");
  bson_destroy(doc);
  bson_t got;
  bool found;
  assert_int_equal(cqrs_readmodel_get(p->rm, "billing_customers", "acme", &got, &found, NULL), CQRS_OK);
  assert_true(found);
  assert_string_equal(s_at(&got, "name"), CQRS_FORGOTTEN);
  bson_destroy(&got);
  /* A forget of a subject that is no customer here changes nothing. */
  add(p, "cqrs.subject", "nobody", 1, &cqrs_forgotten_event_type, &(cqrs_forgotten_t){"nobody"});
  cqrs_error_t err;
  assert_int_equal(billing_project_invoices(p->events[p->n - 1], p->b, &err), CQRS_OK);
}

typedef struct dump {
  char *json[64];
  size_t n;
} dump_t;

static bool keep_json(const bson_t *doc, void *data) {
  dump_t *d = data;
  d->json[d->n++] = bson_as_canonical_extended_json(doc, NULL);
  return d->n < 64;
}

static void dump(pfx_t *p, dump_t *d) {
  const char *colls[] = {"billing_queries", "billing_customers", "billing_balances"};
  cqrs_find_t all = {NULL, NULL, false, 0};
  for (size_t i = 0; i < 3; i++) assert_int_equal(cqrs_readmodel_find(p->rm, colls[i], &all, keep_json, d, NULL), CQRS_OK);
}

static void test_replaying_twice_changes_nothing(void **state) {
  pfx_t *p = *state;
  script(p);
  replay(p);
  dump_t first = {{0}, 0}, second = {{0}, 0};
  dump(p, &first);
  replay(p);
  replay(p);
  dump(p, &second);
  assert_int_equal(first.n, second.n);
  assert_int_equal(first.n, 9); /* 4 invoices, 2 customers, 3 accounts */
  for (size_t i = 0; i < first.n; i++) {
    assert_string_equal(first.json[i], second.json[i]);
    bson_free(first.json[i]);
    bson_free(second.json[i]);
  }
}

static int64_t i_at(const bson_t *doc, const char *path) {
  bson_iter_t it, v;
  assert_true(bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &v));
  return bson_iter_as_int64(&v);
}

static void test_balances_and_totals(void **state) {
  pfx_t *p = *state;
  script(p);
  replay(p);
  bson_t params = BSON_INITIALIZER, out = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&params, "accountId", "a");
  assert_int_equal(cqrs_query_bus_run(p->q, "account.balance", &params, &out, NULL), CQRS_OK);
  assert_int_equal(i_at(&out, "balance.amount"), 300);
  assert_string_equal(s_at(&out, "balance.currency"), "EUR");
  assert_string_equal(s_at(&out, "status"), "open");
  bson_reinit(&params);
  bson_reinit(&out);
  BSON_APPEND_UTF8(&params, "accountId", "b");
  assert_int_equal(cqrs_query_bus_run(p->q, "account.balance", &params, &out, NULL), CQRS_OK);
  assert_string_equal(s_at(&out, "status"), "closed");
  bson_reinit(&out);
  assert_int_equal(cqrs_query_bus_run(p->q, "account.total", NULL, &out, NULL), CQRS_OK);
  assert_int_equal(i_at(&out, "totals.EUR"), 300);
  assert_int_equal(i_at(&out, "totals.USD"), 70);
  assert_int_equal(i_at(&out, "accounts"), 3);
  bson_reinit(&params);
  bson_reinit(&out);
  cqrs_error_t err;
  BSON_APPEND_UTF8(&params, "accountId", "nobody");
  assert_int_equal(cqrs_query_bus_run(p->q, "account.balance", &params, &out, &err), CQRS_ENOT_FOUND);
  bson_destroy(&params);
  bson_destroy(&out);
}

static void ids_of(const bson_t *out, char ids[][16], size_t *n) {
  bson_iter_t it, arr;
  *n = 0;
  assert_true(bson_iter_init_find(&it, out, "invoices") && bson_iter_recurse(&it, &arr));
  while (bson_iter_next(&arr)) {
    bson_iter_t doc;
    assert_true(bson_iter_recurse(&arr, &doc) && bson_iter_find(&doc, "_id"));
    snprintf(ids[(*n)++], 16, "%s", bson_iter_utf8(&doc, NULL));
  }
}

static void test_customer_invoices_by_status_newest_first(void **state) {
  pfx_t *p = *state;
  script(p);
  add(p, "invoice", "inv_5", 1, &billing_invoice_issued, &(billing_invoice_issued_t){"INV-2026-005", "acme", EUR(1), 1});
  replay(p);
  bson_t params = BSON_INITIALIZER, out = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&params, "customerId", "acme");
  BSON_APPEND_UTF8(&params, "status", "pending");
  assert_int_equal(cqrs_query_bus_run(p->q, "invoice.by_customer", &params, &out, NULL), CQRS_OK);
  char ids[8][16];
  size_t n;
  ids_of(&out, ids, &n);
  assert_int_equal(n, 2);
  assert_string_equal(ids[0], "inv_5");
  assert_string_equal(ids[1], "inv_4");
  BSON_APPEND_INT32(&params, "limit", 1);
  bson_reinit(&out);
  assert_int_equal(cqrs_query_bus_run(p->q, "invoice.by_customer", &params, &out, NULL), CQRS_OK);
  ids_of(&out, ids, &n);
  assert_int_equal(n, 1);
  assert_string_equal(ids[0], "inv_5");
  bson_destroy(&params);
  bson_destroy(&out);
}

static void test_query_parameters_are_checked(void **state) {
  pfx_t *p = *state;
  cqrs_error_t err;
  bson_t out = BSON_INITIALIZER;
  const char *bad[] = {"{}", "{\"customerId\":\"acme\"}", "{\"customerId\":\"acme\",\"status\":\"late\"}",
                       "{\"customerId\":\"acme\",\"status\":\"paid\",\"limit\":0}",
                       "{\"customerId\":\"acme\",\"status\":\"paid\",\"limit\":\"ten\"}",
                       "{\"customerId\":7,\"status\":\"paid\"}"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    bson_error_t berr;
    bson_t *params = bson_new_from_json((const uint8_t *)bad[i], -1, &berr);
    bson_reinit(&out);
    if (cqrs_query_bus_run(p->q, "invoice.by_customer", params, &out, &err) != CQRS_EINVAL)
      fail_msg("%s was accepted", bad[i]);
    bson_destroy(params);
  }
  bson_reinit(&out);
  assert_int_equal(cqrs_query_bus_run(p->q, "invoice.by_id", NULL, &out, &err), CQRS_EINVAL);
  bson_t params = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&params, "id", "inv_404");
  assert_int_equal(cqrs_query_bus_run(p->q, "invoice.by_id", &params, &out, &err), CQRS_ENOT_FOUND);
  bson_destroy(&params);
  bson_destroy(&out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_invoice_documents_have_the_seed_shape, setup, teardown),
      cmocka_unit_test_setup_teardown(test_email_change_reaches_every_invoice, setup, teardown),
      cmocka_unit_test_setup_teardown(test_replaying_twice_changes_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(test_forget_overwrites_the_customer, setup, teardown),
      cmocka_unit_test_setup_teardown(test_balances_and_totals, setup, teardown),
      cmocka_unit_test_setup_teardown(test_customer_invoices_by_status_newest_first, setup, teardown),
      cmocka_unit_test_setup_teardown(test_query_parameters_are_checked, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
