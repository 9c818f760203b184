/* Issue 20's "done when", in memory: customers with distinct names and
 * e-mails, invoices issued and paid, a transfer, one customer forgotten;
 * then nothing the application keeps in memory at rest (events as the store
 * holds them, snapshots, read-model documents as stored) holds a byte of
 * what was forgotten, the others' data reads through the queries, the sums
 * are those of before, a read side rebuilt from the first event shows the
 * placeholder, and a restart (a new dispatcher on the same store, key store
 * and read model) changes nothing. The same on MongoDB:
 * tests/mongo/test_mongo_personal.c. */
#include <stdio.h>

#include <cqrs/backend.h>

#include "fixture.h"

static const char *const gone[] = {"Umbrella Holdings", "secret.officer@umbrella.example",
                                   "new.officer@umbrella.example"};

/* A read model that forwards to an inner one (borrowed): the outer one, the
 * application's, seals; the inner one shows what is stored. */
static cqrs_code_t fw_put(void *impl, const char *coll, const char *id, const bson_t *doc, int64_t position,
                          bool *applied, cqrs_error_t *err) {
  return cqrs_readmodel_put(impl, coll, id, doc, position, applied, err);
}
static cqrs_code_t fw_patch(void *impl, const char *coll, const char *id, const bson_t *set, int64_t position,
                            bool *applied, cqrs_error_t *err) {
  return cqrs_readmodel_patch(impl, coll, id, set, position, applied, err);
}
static cqrs_code_t fw_patch_where(void *impl, const char *coll, const bson_t *filter, const bson_t *set,
                                  int64_t position, size_t *count, cqrs_error_t *err) {
  return cqrs_readmodel_patch_where(impl, coll, filter, set, position, count, err);
}
static cqrs_code_t fw_get(void *impl, const char *coll, const char *id, bson_t *out, bool *found, cqrs_error_t *err) {
  return cqrs_readmodel_get(impl, coll, id, out, found, err);
}
static cqrs_code_t fw_find(void *impl, const char *coll, const cqrs_find_t *q, cqrs_doc_visit_cb cb, void *data,
                           cqrs_error_t *err) {
  return cqrs_readmodel_find(impl, coll, q, cb, data, err);
}
static const cqrs_readmodel_ops_t forward_ops = {.put = fw_put, .patch = fw_patch, .patch_where = fw_patch_where,
                                                 .get = fw_get, .find = fw_find};

typedef struct world {
  cqrs_registry_t *reg;
  cqrs_store_t *store;
  cqrs_keys_t *keys;
  cqrs_readmodel_t *inner, *rm;
} world_t;

typedef struct app {
  uv_loop_t loop;
  cqrs_checkpoints_t *cp;
  cqrs_dispatcher_t *d;
  billing_t *b;
  cqrs_queries_t *q;
} app_t;

static void app_start(app_t *a, world_t *w) {
  memset(a, 0, sizeof *a);
  uv_loop_init(&a->loop);
  cqrs_error_t err;
  if (cqrs_memory_checkpoints_new(&a->cp, &err) || cqrs_dispatcher_new(&a->loop, w->reg, w->store, NULL, &a->d, &err) ||
      billing_start(a->d, w->rm, a->cp, NULL, &a->b, &err) || cqrs_queries_new(w->rm, &a->q, &err) ||
      billing_register_queries(a->q, NULL, &err))
    fail_msg("%s", err.message);
  uv_run(&a->loop, UV_RUN_DEFAULT); /* the projections catch up from the first event */
}

static void app_stop(app_t *a) {
  cqrs_dispatcher_close(a->d, NULL, NULL);
  uv_run(&a->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&a->loop), 0);
  cqrs_queries_destroy(a->q);
  billing_destroy(a->b);
  cqrs_checkpoints_destroy(a->cp);
}

static void done(const cqrs_result_t *r, void *data) { *(cqrs_code_t *)data = r->error.code; }

static void run(app_t *a, const cqrs_command_type_t *type, const void *payload) {
  cqrs_command_t *cmd;
  cqrs_error_t err;
  if (cqrs_command_new(type, payload, &cmd, &err)) fail_msg("%s", err.message);
  cqrs_code_t rc = CQRS_ECLOSED;
  assert_int_equal(cqrs_dispatcher_send(a->d, cmd, done, &rc), CQRS_OK);
  uv_run(&a->loop, UV_RUN_DEFAULT);
  if (rc) fail_msg("%s failed: %s", type->name, cqrs_code_name(rc));
}

static void customer(app_t *a, const char *id, const char *name, const char *email) {
  billing_register_customer_t c;
  memset(&c, 0, sizeof c);
  snprintf(c.customer_id, sizeof c.customer_id, "%s", id);
  snprintf(c.name, sizeof c.name, "%s", name);
  snprintf(c.email, sizeof c.email, "%s", email);
  run(a, &billing_register_customer, &c);
}

static void invoice(app_t *a, const char *id, const char *cust, int64_t cents, bool paid) {
  billing_issue_invoice_t c = {.amount = EUR(cents), .due_date = 1800000000000};
  snprintf(c.invoice_id, sizeof c.invoice_id, "%s", id);
  snprintf(c.customer_id, sizeof c.customer_id, "%s", cust);
  run(a, &billing_issue_invoice, &c);
  if (!paid) return;
  billing_pay_invoice_t p = {.amount = EUR(cents)};
  snprintf(p.invoice_id, sizeof p.invoice_id, "%s", id);
  run(a, &billing_pay_invoice, &p);
}

static const char *str_at(const bson_t *doc, const char *path) {
  bson_iter_t it, v;
  if (!bson_iter_init(&it, doc) || !bson_iter_find_descendant(&it, path, &v) || !BSON_ITER_HOLDS_UTF8(&v)) return "?";
  return bson_iter_utf8(&v, NULL);
}

static int64_t int_at(const bson_t *doc, const char *path) {
  bson_iter_t it, v;
  if (!bson_iter_init(&it, doc) || !bson_iter_find_descendant(&it, path, &v)) return -1;
  return bson_iter_as_int64(&v);
}

static void query(app_t *a, const char *name, const bson_t *params, bson_t *out) {
  bson_init(out);
  cqrs_error_t err;
  if (cqrs_queries_run(a->q, name, params, out, &err)) fail_msg("%s: %s", name, err.message);
}

static void invoice_doc(app_t *a, const char *id, bson_t *doc) {
  bson_t *p = BCON_NEW("id", BCON_UTF8(id));
  bson_t out;
  query(a, "invoice.by_id", p, &out);
  bson_iter_t it;
  assert_true(bson_iter_init_find(&it, &out, "invoice") && BSON_ITER_HOLDS_DOCUMENT(&it));
  uint32_t len;
  const uint8_t *raw;
  bson_iter_document(&it, &len, &raw);
  bson_t view;
  assert_true(bson_init_static(&view, raw, len));
  bson_copy_to(&view, doc);
  bson_destroy(&out);
  bson_destroy(p);
}

/* The sums that must not move: each invoice's amount and status, the
 * accounts' total. */
static int64_t sums(app_t *a, char *statuses, size_t cap) {
  static const char *const ids[] = {"inv_a", "inv_u1", "inv_u2", "inv_g"};
  int64_t total = 0;
  statuses[0] = '\0';
  for (int i = 0; i < 4; i++) {
    bson_t doc;
    invoice_doc(a, ids[i], &doc);
    total += int_at(&doc, "amount");
    strncat(statuses, str_at(&doc, "status"), cap - strlen(statuses) - 1);
    bson_destroy(&doc);
  }
  bson_t empty = BSON_INITIALIZER, out;
  query(a, "account.total", &empty, &out);
  total += 1000000 * int_at(&out, "totals.EUR");
  bson_destroy(&out);
  bson_destroy(&empty);
  return total;
}

static bool has(const void *hay, size_t len, const char *needle) {
  size_t n = strlen(needle);
  const unsigned char *h = hay;
  for (size_t i = 0; i + n <= len; i++) {
    if (!memcmp(h + i, needle, n)) return true;
  }
  return false;
}

typedef struct scan {
  const char *needle;
  int hits;
} scan_t;

static bool scan_event(const cqrs_event_t *e, void *data) {
  scan_t *s = data;
  if (e->type == &cqrs_unknown_event_type) {
    const cqrs_unknown_event_t *u = e->payload;
    s->hits += has(u->data, u->data_len, s->needle);
  } else {
    /* Every field of the payload, as its table encodes it (the struct's
     * padding and the bytes after a string's end are nobody's data). */
    bson_t fields = BSON_INITIALIZER;
    if (cqrs_fields_encode(e->type->fields, e->payload, &fields, NULL) == CQRS_OK)
      s->hits += has(bson_get_data(&fields), fields.len, s->needle);
    else
      s->hits++; /* what cannot be encoded is counted as found: the test fails */
    bson_destroy(&fields);
  }
  return true;
}

static bool scan_doc(const bson_t *doc, void *data) {
  scan_t *s = data;
  s->hits += has(bson_get_data(doc), doc->len, s->needle);
  return true;
}

/* Everything kept at rest: events as stored, snapshots, read-model
 * documents as stored. */
static int dump_hits(world_t *w, const char *needle) {
  scan_t s = {needle, 0};
  assert_int_equal(cqrs_store_read_sealed(w->store, 1, 100000, scan_event, &s, NULL), CQRS_OK);
  const char *customers[] = {"acme", "globex", "umbrella"};
  for (int i = 0; i < 3; i++) {
    cqrs_snapshot_t snap;
    bool found = false;
    assert_int_equal(cqrs_store_snapshot_load(w->store, "customer", customers[i], &snap, &found, NULL), CQRS_OK);
    if (found) {
      s.hits += has(bson_get_data(&snap.state), snap.state.len, needle);
      bson_destroy(&snap.state);
    }
  }
  const char *colls[] = {"billing_queries", "billing_customers", "billing_balances"};
  cqrs_find_t all = {0};
  for (int i = 0; i < 3; i++) assert_int_equal(cqrs_readmodel_find(w->inner, colls[i], &all, scan_doc, &s, NULL), CQRS_OK);
  return s.hits;
}

static void assert_read_side(app_t *a) {
  bson_t doc;
  invoice_doc(a, "inv_u1", &doc);
  assert_string_equal(str_at(&doc, "customer.name"), CQRS_FORGOTTEN);
  assert_string_equal(str_at(&doc, "customer.email"), CQRS_FORGOTTEN);
  bson_destroy(&doc);
  invoice_doc(a, "inv_a", &doc);
  assert_string_equal(str_at(&doc, "customer.name"), "Acme Corp");
  assert_string_equal(str_at(&doc, "customer.email"), "billing@acme.com");
  bson_destroy(&doc);
}

static void world_readmodel(world_t *w) {
  assert_int_equal(cqrs_memory_readmodel_new(&w->inner, NULL), CQRS_OK);
  assert_int_equal(cqrs_readmodel_new(&forward_ops, w->inner, &w->rm, NULL), CQRS_OK);
}

static void test_forget_in_memory(void **state) {
  (void)state;
  world_t w;
  memset(&w, 0, sizeof w);
  cqrs_registry_new(&w.reg, NULL);
  assert_int_equal(billing_register(w.reg, NULL), CQRS_OK);
  assert_int_equal(cqrs_memory_store_new(&w.store, NULL), CQRS_OK);
  assert_int_equal(cqrs_memory_keys_new(NULL, &w.keys, NULL), CQRS_OK);
  assert_int_equal(cqrs_store_set_keys(w.store, w.keys, w.reg, NULL), CQRS_OK);
  world_readmodel(&w);
  app_t a;
  app_start(&a, &w);
  customer(&a, "acme", "Acme Corp", "billing@acme.com");
  customer(&a, "globex", "Globex Corporation", "ap@globex.example");
  customer(&a, "umbrella", gone[0], gone[1]);
  billing_change_email_t change = {"umbrella", ""};
  snprintf(change.email, sizeof change.email, "%s", gone[2]);
  run(&a, &billing_change_email, &change);
  invoice(&a, "inv_a", "acme", 150000, true);
  invoice(&a, "inv_u1", "umbrella", 4200, true);
  invoice(&a, "inv_u2", "umbrella", 999, false);
  invoice(&a, "inv_g", "globex", 100, false);
  run(&a, &billing_open_account, &(billing_open_account_t){"acc-1", "Ada", "EUR"});
  run(&a, &billing_open_account, &(billing_open_account_t){"acc-2", "Bob", "EUR"});
  run(&a, &billing_deposit, &(billing_move_t){"acc-1", EUR(10000), ""});
  run(&a, &billing_request_transfer, &(billing_request_transfer_t){"t-1", "acc-1", "acc-2", EUR(2500)});
  char before_status[64], after_status[64];
  int64_t before = sums(&a, before_status, sizeof before_status);
  for (int i = 0; i < 3; i++) assert_int_equal(dump_hits(&w, gone[i]), 0); /* sealed from the start */
  assert_true(dump_hits(&w, "INV-") > 0);                                  /* the scan sees what is there */

  run(&a, &billing_forget_customer, &(billing_forget_customer_t){"umbrella"});
  for (int i = 0; i < 3; i++) assert_int_equal(dump_hits(&w, gone[i]), 0);
  assert_int_equal(sums(&a, after_status, sizeof after_status), before);
  assert_string_equal(after_status, before_status);
  assert_read_side(&a);
  app_stop(&a);

  /* A restart: a new dispatcher on the same store, key store and read model. */
  app_start(&a, &w);
  assert_int_equal(sums(&a, after_status, sizeof after_status), before);
  assert_read_side(&a);
  app_stop(&a);

  /* The read side rebuilt from scratch: an empty read model, projections
   * replayed from the first event. */
  cqrs_readmodel_destroy(w.rm);
  cqrs_readmodel_destroy(w.inner);
  world_readmodel(&w);
  app_start(&a, &w);
  assert_int_equal(sums(&a, after_status, sizeof after_status), before);
  assert_string_equal(after_status, before_status);
  assert_read_side(&a);
  for (int i = 0; i < 3; i++) assert_int_equal(dump_hits(&w, gone[i]), 0);
  app_stop(&a);

  cqrs_readmodel_destroy(w.rm);
  cqrs_readmodel_destroy(w.inner);
  cqrs_store_destroy(w.store);
  cqrs_keys_destroy(w.keys);
  cqrs_registry_destroy(w.reg);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_forget_in_memory)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
