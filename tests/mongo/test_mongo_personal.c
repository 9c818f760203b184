/* Issue 20's "done when" on a real server: customers with distinct names
 * and e-mails, invoices issued and paid, transfers, one customer forgotten;
 * before the forget no collection holds any of it in clear, and after it
 * no collection of the database, read with the driver, holds a byte
 * of what was forgotten; the others' data still reads through the API; the
 * invoices' totals and the accounts' balances are what they were; a read
 * side rebuilt from scratch shows the placeholder; a restart changes
 * nothing. Also the key store itself: creation races agree on one key, a
 * forget leaves no key bytes, the master key wraps. */
#include <mongoc/mongoc.h>
#include <pthread.h>

#include "billing_app.h"

static const char *const forgotten[] = {"Umbrella Holdings", "secret.officer@umbrella.example",
                                        "new.officer@umbrella.example"};

static void customer(app_t *a, const char *id, const char *name, const char *email) {
  billing_register_customer_t c;
  memset(&c, 0, sizeof c);
  snprintf(c.customer_id, sizeof c.customer_id, "%s", id);
  snprintf(c.name, sizeof c.name, "%s", name);
  snprintf(c.email, sizeof c.email, "%s", email);
  assert_int_equal(app_run(a, &billing_register_customer, &c, false), CQRS_OK);
}

static void invoice(app_t *a, const char *id, const char *cust, int64_t cents, bool paid) {
  billing_issue_invoice_t c = {.amount = {cents, "EUR"}, .due_date = cqrs_now_ms() + 86400000};
  snprintf(c.invoice_id, sizeof c.invoice_id, "%s", id);
  snprintf(c.customer_id, sizeof c.customer_id, "%s", cust);
  assert_int_equal(app_run(a, &billing_issue_invoice, &c, false), CQRS_OK);
  if (!paid) return;
  billing_pay_invoice_t p = {.amount = {cents, "EUR"}};
  snprintf(p.invoice_id, sizeof p.invoice_id, "%s", id);
  assert_int_equal(app_run(a, &billing_pay_invoice, &p, false), CQRS_OK);
}

static void account(app_t *a, const char *id, int64_t cents) {
  billing_open_account_t o = {.currency = "EUR"};
  snprintf(o.account_id, sizeof o.account_id, "%s", id);
  snprintf(o.owner, sizeof o.owner, "owner of %s", id);
  assert_int_equal(app_run(a, &billing_open_account, &o, false), CQRS_OK);
  billing_move_t d = {.amount = {cents, "EUR"}};
  snprintf(d.account_id, sizeof d.account_id, "%s", id);
  assert_int_equal(app_run(a, &billing_deposit, &d, false), CQRS_OK);
}

/* Runs query `name` and returns its answer (initialised here). */
static void query(app_t *a, const char *name, const bson_t *params, bson_t *out) {
  cqrs_error_t err;
  bson_init(out);
  if (cqrs_query_bus_run(a->q, name, params, out, &err)) fail_msg("%s: %s", name, err.message);
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

/* The invoice document of `id` through invoice.by_id. */
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

/* What must not move: each invoice's amount and status, the accounts'
 * balances and their total. */
typedef struct figures {
  int64_t amounts[4];
  char status[4][16];
  int64_t total, balances[2];
} figures_t;

static const char *const invoices[] = {"inv_a", "inv_u1", "inv_u2", "inv_g"};

static void figures(app_t *a, figures_t *f) {
  memset(f, 0, sizeof *f);
  for (int i = 0; i < 4; i++) {
    bson_t doc;
    invoice_doc(a, invoices[i], &doc);
    f->amounts[i] = int_at(&doc, "amount");
    snprintf(f->status[i], sizeof f->status[i], "%s", str_at(&doc, "status"));
    bson_destroy(&doc);
  }
  bson_t empty = BSON_INITIALIZER, out;
  query(a, "account.total", &empty, &out);
  f->total = int_at(&out, "totals.EUR");
  bson_destroy(&out);
  const char *accts[2] = {"acc-1", "acc-2"};
  for (int i = 0; i < 2; i++) {
    bson_t *p = BCON_NEW("accountId", BCON_UTF8(accts[i]));
    query(a, "account.balance", p, &out);
    f->balances[i] = int_at(&out, "balance.amount");
    bson_destroy(&out);
    bson_destroy(p);
  }
  bson_destroy(&empty);
}

/* Every document of every collection of the database, read with the driver
 * (not through libcqrs): how many hold `needle`, and how many were read. */
static size_t dump_count(const char *uri, const char *db, const char *needle, bool say, size_t *docs) {
  mongoc_client_t *c = mongoc_client_new(uri);
  assert_non_null(c);
  mongoc_database_t *d = mongoc_client_get_database(c, db);
  bson_error_t e;
  char **names = mongoc_database_get_collection_names_with_opts(d, NULL, &e);
  if (!names) fail_msg("listing the collections: %s", e.message);
  size_t hits = 0;
  *docs = 0;
  for (size_t i = 0; names[i]; i++) {
    mongoc_collection_t *coll = mongoc_database_get_collection(d, names[i]);
    bson_t filter = BSON_INITIALIZER;
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll, &filter, NULL, NULL);
    const bson_t *doc;
    while (mongoc_cursor_next(cur, &doc)) {
      (*docs)++;
      const uint8_t *b = bson_get_data(doc);
      size_t n = strlen(needle);
      for (size_t k = 0; k + n <= doc->len; k++) {
        if (!memcmp(b + k, needle, n)) {
          if (say) fprintf(stderr, "  '%s' found in %s\n", needle, names[i]);
          hits++;
          break;
        }
      }
    }
    if (mongoc_cursor_error(cur, &e)) fail_msg("reading %s: %s", names[i], e.message);
    mongoc_cursor_destroy(cur);
    bson_destroy(&filter);
    mongoc_collection_destroy(coll);
  }
  bson_strfreev(names);
  mongoc_database_destroy(d);
  mongoc_client_destroy(c);
  return hits;
}

static void assert_forgotten_everywhere(const char *uri, const char *db) {
  size_t docs = 0;
  for (size_t i = 0; i < sizeof forgotten / sizeof forgotten[0]; i++)
    assert_int_equal(dump_count(uri, db, forgotten[i], true, &docs), 0);
  assert_true(docs > 20);
  /* The scan sees what is there to see: invoice numbers are not personal. */
  assert_true(dump_count(uri, db, "INV-", false, &docs) > 0);
}

static void assert_read_side(app_t *a) {
  bson_t doc;
  invoice_doc(a, "inv_u1", &doc);
  assert_string_equal(str_at(&doc, "customer.name"), CQRS_FORGOTTEN);
  assert_string_equal(str_at(&doc, "customer.email"), CQRS_FORGOTTEN);
  assert_string_equal(str_at(&doc, "customer.id"), "umbrella");
  bson_destroy(&doc);
  invoice_doc(a, "inv_a", &doc);
  assert_string_equal(str_at(&doc, "customer.name"), "Acme Corp");
  assert_string_equal(str_at(&doc, "customer.email"), "billing@acme.com");
  bson_destroy(&doc);
  invoice_doc(a, "inv_g", &doc);
  assert_string_equal(str_at(&doc, "customer.name"), "Globex Corporation");
  bson_destroy(&doc);
  /* The aggregate loads (from events, or the snapshot the forget replaced). */
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(a->store, &billing_customer, "umbrella", &agg, NULL), CQRS_OK);
  const billing_customer_state_t *s = cqrs_aggregate_state_const(agg);
  assert_true(s->registered);
  assert_true(s->forgotten);
  assert_string_equal(s->name, CQRS_FORGOTTEN);
  cqrs_aggregate_destroy(agg);
}

static void test_forget_on_mongo(void **state) {
  (void)state;
  NEED_MONGO();
  char db[64];
  test_mongo_db(db, sizeof db);
  const char *uri = test_mongo_uri();
  app_t a;
  app_open_with(&a, uri, db, 0, false);
  customer(&a, "acme", "Acme Corp", "billing@acme.com");
  customer(&a, "globex", "Globex Corporation", "ap@globex.example");
  customer(&a, "umbrella", forgotten[0], forgotten[1]);
  billing_change_email_t change = {"umbrella", ""};
  snprintf(change.email, sizeof change.email, "%s", forgotten[2]);
  assert_int_equal(app_run(&a, &billing_change_email, &change, false), CQRS_OK);
  invoice(&a, "inv_a", "acme", 150000, true);
  invoice(&a, "inv_u1", "umbrella", 4200, true);
  invoice(&a, "inv_u2", "umbrella", 999, false);
  invoice(&a, "inv_g", "globex", 100, false);
  account(&a, "acc-1", 10000);
  account(&a, "acc-2", 500);
  billing_request_transfer_t t = {"t-1", "acc-1", "acc-2", {2500, "EUR"}};
  assert_int_equal(app_run(&a, &billing_request_transfer, &t, false), CQRS_OK);
  app_catch_up(&a);
  figures_t before, after;
  figures(&a, &before);
  assert_int_equal(before.total, 10500);
  assert_int_equal(before.balances[0], 7500);
  size_t docs;
  assert_true(dump_count(uri, db, "secret.officer", true, &docs) == 0); /* sealed from the start */

  billing_forget_customer_t f = {"umbrella"};
  assert_int_equal(app_run(&a, &billing_forget_customer, &f, false), CQRS_OK);
  app_catch_up(&a);
  assert_forgotten_everywhere(uri, db);
  figures(&a, &after);
  assert_memory_equal(&before, &after, sizeof before);
  assert_read_side(&a);
  cqrs_subject_state_t st;
  assert_int_equal(cqrs_keys_state(a.keys, "umbrella", &st, NULL), CQRS_OK);
  assert_int_equal(st, CQRS_SUBJECT_FORGOTTEN);
  assert_int_equal(cqrs_keys_state(a.keys, "acme", &st, NULL), CQRS_OK);
  assert_int_equal(st, CQRS_SUBJECT_KEYED);
  app_close(&a, false);

  /* A restart changes nothing. */
  app_open_with(&a, uri, db, 0, false);
  app_catch_up(&a);
  figures(&a, &after);
  assert_memory_equal(&before, &after, sizeof before);
  assert_read_side(&a);
  assert_forgotten_everywhere(uri, db);
  app_close(&a, false);

  /* The read side rebuilt from scratch: its collections dropped, the
   * projections replayed from the first event. */
  mongoc_client_t *c = mongoc_client_new(uri);
  const char *read_side[] = {"billing_queries", "billing_customers", "billing_balances"};
  for (int i = 0; i < 3; i++) {
    mongoc_collection_t *coll = mongoc_client_get_collection(c, db, read_side[i]);
    bson_error_t e;
    if (!mongoc_collection_drop(coll, &e)) fail_msg("drop %s: %s", read_side[i], e.message);
    mongoc_collection_destroy(coll);
  }
  mongoc_client_destroy(c);
  app_open_with(&a, uri, db, 0, true);
  app_catch_up(&a);
  figures(&a, &after);
  assert_memory_equal(&before, &after, sizeof before);
  assert_read_side(&a);
  assert_forgotten_everywhere(uri, db);
  app_close(&a, true);
}

/* ---- the key store ---- */

typedef struct racer {
  cqrs_keys_t *keys;
  cqrs_store_t *store;
  const char *cmd;
  cqrs_code_t rc;
} racer_t;

static cqrs_registry_t *the_reg;

/* Each racer, with a key store of its own (its own cache), writes a note
 * for the same new customer at once: both create the key. */
static void *race(void *data) {
  racer_t *r = data;
  cqrs_aggregate_t *agg;
  r->rc = cqrs_repository_load(r->store, &billing_customer, r->cmd, &agg, NULL);
  if (r->rc) return NULL;
  billing_customer_registered_t p = {"Racer", "racer@example.org"};
  r->rc = cqrs_aggregate_raise(agg, &billing_customer_registered, &p, NULL);
  cqrs_cause_t cause = {r->cmd, NULL};
  if (!r->rc) r->rc = cqrs_repository_save(r->store, agg, &cause, NULL, NULL);
  cqrs_aggregate_destroy(agg);
  return NULL;
}

static bool name_of(const cqrs_event_t *e, void *data) {
  snprintf(data, BILLING_NAME_MAX, "%s", ((const billing_customer_registered_t *)e->payload)->name);
  return true;
}

typedef struct tally {
  int n, gone;
} tally_t;

static bool count(const cqrs_subject_info_t *info, void *data) {
  tally_t *t = data;
  t->n++;
  if (info->state == CQRS_SUBJECT_FORGOTTEN) t->gone++;
  return true;
}

static void test_key_store_on_mongo(void **state) {
  (void)state;
  NEED_MONGO();
  uv_loop_t loop;
  uv_loop_init(&loop);
  cqrs_registry_new(&the_reg, NULL);
  assert_int_equal(billing_register(the_reg, NULL), CQRS_OK);
  cqrs_mongo_options_t o = billing_mongo_options;
  cqrs_mongo_t *m = test_mongo_open(the_reg, &loop, &o);
  static const uint8_t master[32] = "the master key of this test....";
  cqrs_keys_options_t ko;
  cqrs_keys_options_init(&ko);
  ko.master_key = master;
  racer_t r[2];
  pthread_t th[2];
  for (int i = 0; i < 2; i++) {
    memset(&r[i], 0, sizeof r[i]);
    assert_int_equal(cqrs_mongo_keys_new(m, &ko, &r[i].keys, NULL), CQRS_OK);
    assert_true(cqrs_keys_blocking(r[i].keys));
    assert_int_equal(cqrs_mongo_store_new(m, &r[i].store, NULL), CQRS_OK);
    assert_int_equal(cqrs_store_set_keys(r[i].store, r[i].keys, the_reg, NULL), CQRS_OK);
    r[i].cmd = i ? "racer-b" : "racer-a";
  }
  for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, race, &r[i]);
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
  /* The two customers are different subjects; now the same one, twice. */
  assert_int_equal(r[0].rc, CQRS_OK);
  assert_int_equal(r[1].rc, CQRS_OK);
  r[0].cmd = "shared";
  r[1].cmd = "shared";
  pthread_create(&th[0], NULL, race, &r[0]);
  pthread_create(&th[1], NULL, race, &r[1]);
  pthread_join(th[0], NULL);
  pthread_join(th[1], NULL);
  /* One of the two commits won the stream; whichever key sealed it, the
   * other store opens it: they agreed on one key. */
  assert_true(r[0].rc == CQRS_OK || r[1].rc == CQRS_OK);
  for (int i = 0; i < 2; i++) {
    char name[BILLING_NAME_MAX] = "";
    assert_int_equal(cqrs_store_read_stream(r[i].store, "customer", "shared", 1, name_of, name, NULL), CQRS_OK);
    assert_string_equal(name, "Racer");
  }
  /* The stored key is wrapped (not the data key), and a forget removes it. */
  mongoc_client_t *c = mongoc_client_new(test_mongo_uri());
  mongoc_collection_t *coll = mongoc_client_get_collection(c, cqrs_mongo_database(m), "billing_keys");
  bson_t *filter = BCON_NEW("_id", BCON_UTF8("shared"));
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll, filter, NULL, NULL);
  const bson_t *doc;
  assert_true(mongoc_cursor_next(cur, &doc));
  bson_iter_t it;
  assert_true(bson_iter_init_find(&it, doc, "wrap"));
  assert_true(bson_iter_init_find(&it, doc, "key"));
  mongoc_cursor_destroy(cur);
  assert_int_equal(cqrs_keys_forget(r[0].keys, "shared", NULL), CQRS_OK);
  cur = mongoc_collection_find_with_opts(coll, filter, NULL, NULL);
  assert_true(mongoc_cursor_next(cur, &doc));
  assert_false(bson_iter_init_find(&it, doc, "key"));
  assert_true(bson_iter_init_find(&it, doc, "state") && !strcmp(bson_iter_utf8(&it, NULL), "forgotten"));
  mongoc_cursor_destroy(cur);
  bson_destroy(filter);
  mongoc_collection_destroy(coll);
  mongoc_client_destroy(c);
  char name[BILLING_NAME_MAX] = "";
  assert_int_equal(cqrs_store_read_stream(r[0].store, "customer", "shared", 1, name_of, name, NULL), CQRS_OK);
  assert_string_equal(name, CQRS_FORGOTTEN);
  /* Listing: three subjects, one forgotten. */
  tally_t tl = {0, 0};
  assert_int_equal(cqrs_keys_list(r[1].keys, count, &tl, NULL), CQRS_OK);
  assert_int_equal(tl.n, 3);
  assert_int_equal(tl.gone, 1);
  for (int i = 0; i < 2; i++) {
    cqrs_store_destroy(r[i].store);
    cqrs_keys_destroy(r[i].keys);
  }
  test_mongo_close(m);
  cqrs_registry_destroy(the_reg);
  assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_forget_on_mongo),
      cmocka_unit_test(test_key_store_on_mongo),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
