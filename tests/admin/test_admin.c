/* billing-admin, the real binary as a separate process, against the real
 * server: its refusals, check and --repair, migrate killed at random points
 * and re-run, the flag's routing of reads, a rebuild while the application
 * writes, dead letters. (status: test_status.c.) */
#include <time.h>
#include <errno.h>
#include <sys/stat.h>

#include "admin_fixture.h"

/* ---- usage and URIs ---- */

static void test_refusals(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  assert_int_equal(ADM(&t, "frobnicate"), 2);
  assert_non_null(strstr(t.err, "unknown command 'frobnicate'"));
  assert_int_equal(ADM(&t, "check", "--bogus"), 2);
  assert_non_null(strstr(t.err, "unknown option '--bogus'"));
  assert_int_equal(ADM(&t, "gen-legacy"), 2);
  assert_non_null(strstr(t.err, "missing argument"));
  assert_int_equal(ADM(&t, "gen-legacy", "ten"), 2);
  assert_int_equal(adm_run_on(&t, NULL, (const char *const[]){NULL}), 2);
  /* Each subcommand explains itself, without a server. */
  static const char *const cmds[] = {"status", "check", "migrate", "flag", "rebuild", "dead-letters", "events", "gen-legacy"};
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
    assert_int_equal(adm_run_on(&t, "mongodb://nowhere.invalid", (const char *const[]){cmds[i], "--help", NULL}), 0);
    assert_non_null(strstr(t.out, "usage: billing-admin"));
  }
  /* A URI that does not parse, and one nobody answers: 3, no password shown. */
  assert_int_equal(adm_run_on(&t, "mongodb://admin:s3cret@", (const char *const[]){"check", NULL}), 3);
  assert_non_null(strstr(t.err, "URI is not valid"));
  assert_null(strstr(t.err, "s3cret"));
  assert_int_equal(adm_run_on(&t, "mongodb://admin:s3cret@127.0.0.1:1/x?serverSelectionTimeoutMS=300",
                              (const char *const[]){"check", NULL}),
                   3);
  assert_non_null(strstr(t.err, "cannot reach MongoDB at mongodb://admin:***@127.0.0.1:1"));
  assert_null(strstr(t.err, "s3cret"));
  adm_close(&t);
}

/* ---- check ---- */

static void test_check_and_repair(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  assert_int_equal(ADM(&t, "gen-legacy", "120", "--customers", "20"), 0);
  assert_int_equal(ADM(&t, "migrate", "--quiet"), 0);
  assert_int_equal(ADM(&t, "check"), 0);
  assert_non_null(strstr(t.out, "consistency 100.000 %"));

  delete_doc(&t, "billing_queries", "inv_00000007");
  insert_json(&t, "billing_queries", "{\"_id\": \"inv_ghost\", \"invoiceNumber\": \"INV-2020-999\", \"_position\": 1}");
  set_field(&t, "billing_queries", "inv_00000011", "amount", 1);
  assert_int_equal(ADM(&t, "check"), 1);
  assert_non_null(strstr(t.out, "missing   billing_queries inv_00000007"));
  assert_non_null(strstr(t.out, "extra     billing_queries inv_ghost"));
  assert_non_null(strstr(t.out, "different billing_queries inv_00000011: amount "));
  assert_non_null(strstr(t.out, ", found 1"));
  assert_non_null(strstr(t.out, "1 missing, 1 extra, 1 different"));
  assert_null(strstr(t.out, "consistency 100.000"));

  /* One invoice alone, then as JSON. */
  assert_int_equal(ADM(&t, "check", "--invoice", "inv_00000011"), 1);
  assert_non_null(strstr(t.out, "different billing_queries inv_00000011"));
  assert_null(strstr(t.out, "inv_ghost"));
  assert_int_equal(ADM(&t, "check", "--invoice", "inv_00000012"), 0);
  assert_int_equal(ADM(&t, "check", "--invoice", "inv_nobody"), 1);
  assert_non_null(strstr(t.err, "no invoice inv_nobody"));
  assert_int_equal(ADM(&t, "--json", "check"), 1);
  assert_int_equal(adm_json_int(&t, "missing"), 1);

  assert_int_equal(ADM(&t, "check", "--repair"), 1);
  assert_non_null(strstr(t.out, "repaired"));
  assert_int_equal(ADM(&t, "check"), 0);
  bson_t doc;
  assert_true(adm_get(&t, "billing_queries", "inv_00000007", &doc));
  bson_destroy(&doc);
  assert_false(adm_get(&t, "billing_queries", "inv_ghost", &doc));
  adm_close(&t);
}

/* ---- migrate, killed and re-run ---- */

/* The legacy amount in minor units, independently of the tool: the decimal
 * text of the double with the currency's digits. */
static int64_t exact_minor(double v, const char *currency) {
  int e = !strcmp(currency, "JPY") ? 0 : !strcmp(currency, "KWD") ? 3 : 2;
  char buf[64], digits[64];
  snprintf(buf, sizeof buf, "%.*f", e, v);
  size_t n = 0;
  for (const char *p = buf; *p; p++) {
    if (*p != '.') digits[n++] = *p;
  }
  digits[n] = '\0';
  return atoll(digits);
}

static void test_migrate_killed_and_rerun(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  assert_int_equal(ADM(&t, "--json", "gen-legacy", "400", "--malformed", "15", "--customers", "60", "--seed", "7"), 0);
  long long valid = adm_json_int(&t, "valid"), written = adm_json_int(&t, "written");
  assert_int_equal(written, 400);
  assert_true(valid < 400 && valid > 300);

  srand((unsigned)time(NULL));
  const char *args[] = {"migrate", "--batch", "20", "--quiet", NULL};
  char out[64], err[64];
  snprintf(out, sizeof out, "/tmp/adm_kout_%d", (int)getpid());
  snprintf(err, sizeof err, "/tmp/adm_kerr_%d", (int)getpid());
  /* Runs killed part-way: four at a batch the test picks (each resumes
   * after the last batch the one before it finished: its K-th batch is
   * further on), killed by the tool's own hook once that batch's commits
   * are written and before its checkpoint is saved, so each of these is
   * killed on every machine; then four killed by the test at a random
   * moment (a load generator: anywhere, or after the end). */
  const char *argv[] = {"--uri", t.uri, args[0], args[1], args[2], args[3], NULL};
  for (int round = 0; round < 4; round++) {
    char batch[8];
    snprintf(batch, sizeof batch, "%d", 1 + rand() % 3);
    assert_int_equal(setenv("BILLING_ADMIN_KILL_AFTER_BATCH", batch, 1), 0);
    pid_t pid = adm_spawn(&t, NULL, argv, out, err);
    unsetenv("BILLING_ADMIN_KILL_AFTER_BATCH");
    assert_int_equal(adm_wait(&t, pid, out, err), 128 + SIGKILL);
  }
  for (int round = 0; round < 4; round++) {
    pid_t pid = adm_spawn(&t, NULL, argv, out, err);
    uv_sleep(30 + (unsigned)(rand() % 400)); /* a kill at a random moment, not an ordering */
    kill(pid, SIGKILL);
    adm_wait(&t, pid, out, err);
  }
  /* The last run finishes: some documents could not migrate, so 1. */
  assert_int_equal(adm_run_on(&t, t.uri, args), 1);
  assert_int_equal(ADM(&t, "--json", "migrate", "--quiet"), 1);
  assert_int_equal(adm_json_int(&t, "migrated"), valid);
  assert_int_equal(adm_json_int(&t, "malformedCount"), 400 - valid);

  /* Exactly the valid documents, each once, amounts exact, numbers kept. */
  struct {
    cqrs_registry_t *reg;
    cqrs_mongo_t *m;
    cqrs_readmodel_t *rm;
    cqrs_keys_t *keys;
  } k;
  cqrs_registry_new(&k.reg, NULL);
  cqrs_mongo_options_t ko = billing_mongo_options;
  ko.database = t.db;
  if (cqrs_mongo_new(t.uri, &ko, k.reg, NULL, &k.m, NULL) || cqrs_mongo_readmodel_new(k.m, &k.rm, NULL)) fail();
  k.keys = adm_keys(k.m, k.reg, NULL, k.rm);
  assert_int_equal(adm_count(&t, "billing_queries", NULL), valid);
  assert_int_equal(adm_count(&t, "billing_migration_rejects", NULL), 400 - valid);
  mongoc_collection_t *legacy = adm_coll(&t, "billing_documents");
  bson_t all = BSON_INITIALIZER;
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(legacy, &all, NULL, NULL);
  const bson_t *doc;
  int64_t max_seq[3] = {0, 0, 0};
  long long checked = 0;
  while (mongoc_cursor_next(cur, &doc)) {
    const char *id = adm_str(doc, "_id");
    bson_t r, q;
    bool rejected = adm_get(&t, "billing_migration_rejects", id, &r);
    bool migrated = adm_get(&t, "billing_queries", id, &q);
    assert_true(rejected != migrated);
    if (rejected) {
      assert_non_null(adm_str(&r, "reason"));
      bson_destroy(&r);
      continue;
    }
    bson_iter_t it;
    assert_true(bson_iter_init_find(&it, doc, "amount"));
    assert_int_equal(adm_int(&q, "amount"), exact_minor(bson_iter_double(&it), adm_str(doc, "currency")));
    assert_string_equal(adm_str(&q, "invoiceNumber"), adm_str(doc, "invoiceNumber"));
    assert_string_equal(adm_str(&q, "status"), adm_str(doc, "status"));
    bson_t opened = BSON_INITIALIZER; /* personal data is sealed at rest */
    assert_int_equal(cqrs_readmodel_open_doc(k.rm, "billing_queries", &q, &opened, NULL), CQRS_OK);
    assert_string_equal(adm_str(&opened, "customer.email"), adm_str(doc, "customer.email"));
    bson_destroy(&opened);
    int year;
    int64_t seq;
    assert_true(billing_invoice_number_parse(adm_str(doc, "invoiceNumber"), &year, &seq));
    if (seq > max_seq[year - 2023]) max_seq[year - 2023] = seq;
    bson_destroy(&q);
    checked++;
  }
  assert_int_equal(checked, valid);
  mongoc_cursor_destroy(cur);
  bson_destroy(&all);
  mongoc_collection_destroy(legacy);
  cqrs_readmodel_destroy(k.rm);
  cqrs_keys_destroy(k.keys);
  cqrs_mongo_destroy(k.m);
  cqrs_registry_destroy(k.reg);
  /* One commit per migrated invoice, whatever the kills. */
  bson_t inv = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&inv, "aggregateType", "invoice");
  assert_int_equal(adm_count(&t, "billing_commands", &inv), valid);
  bson_destroy(&inv);
  assert_int_equal(ADM(&t, "check"), 0);

  /* Each year's book continues after its highest migrated number. */
  uv_loop_t loop;
  uv_loop_init(&loop);
  cqrs_registry_t *reg = NULL;
  cqrs_registry_new(&reg, NULL);
  assert_int_equal(billing_register(reg, NULL), CQRS_OK);
  cqrs_mongo_options_t o = {.database = t.db, .events = "billing_commands", .snapshots = "billing_snapshots"};
  cqrs_mongo_t *m;
  cqrs_error_t e;
  if (cqrs_mongo_new(t.uri, &o, reg, &loop, &m, &e)) fail_msg("%s", e.message);
  cqrs_store_t *store = NULL;
  cqrs_mongo_store_new(m, &store, NULL);
  for (int y = 0; y < 3; y++) {
    char id[8];
    snprintf(id, sizeof id, "%d", 2023 + y);
    cqrs_aggregate_t *book;
    if (cqrs_repository_load(store, &billing_invoice_book, id, &book, &e)) fail_msg("%s", e.message);
    assert_int_equal(((const billing_book_state_t *)cqrs_aggregate_state_const(book))->last, max_seq[y]);
    cqrs_aggregate_destroy(book);
  }
  cqrs_store_destroy(store);
  cqrs_mongo_destroy(m);
  cqrs_registry_destroy(reg);
  assert_int_equal(uv_loop_close(&loop), 0);
  adm_close(&t);
}

/* ---- the feature flag ---- */

static void set_legacy_status(adm_t *t, const char *id, const char *status) {
  char json[128];
  snprintf(json, sizeof json, "{\"$set\": {\"status\": \"%s\"}}", status);
  update_json(t, "billing_documents", id, json, false);
}

static billing_read_source_t read_status(reader_t *r, const char *id, const char *customer, char *status, size_t cap,
                                         size_t *diffs) {
  bson_t doc;
  bool found;
  billing_read_t how;
  cqrs_error_t e;
  if (billing_invoice_read(r->flags, NULL, id, customer, &doc, &found, &how, &e)) fail_msg("%s", e.message);
  assert_true(found);
  snprintf(status, cap, "%s", adm_str(&doc, "status"));
  bson_destroy(&doc);
  if (diffs) *diffs = how.differences;
  return how.source;
}

static void test_flag_routes_reads(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  assert_int_equal(ADM(&t, "gen-legacy", "200", "--customers", "100"), 0);
  assert_int_equal(ADM(&t, "migrate", "--quiet"), 0);
  /* The legacy side says something else for one invoice. */
  bson_t q;
  assert_true(adm_get(&t, "billing_queries", "inv_00000003", &q));
  const char *cqs_status = adm_str(&q, "status");
  const char *other = strcmp(cqs_status, "paid") ? "paid" : "pending";
  set_legacy_status(&t, "inv_00000003", other);

  reader_t r;
  reader_open(&r, &t);
  char status[32];
  size_t diffs;
  /* No flag yet: off. */
  assert_int_equal(read_status(&r, "inv_00000003", NULL, status, sizeof status, NULL), BILLING_READ_LEGACY);
  assert_string_equal(status, other);
  assert_int_equal(ADM(&t, "flag", "mongodb_cqs_enabled", "on"), 0);
  assert_int_equal(read_status(&r, "inv_00000003", NULL, status, sizeof status, NULL), BILLING_READ_CQS);
  assert_string_equal(status, cqs_status);
  assert_int_equal(ADM(&t, "flag", "mongodb_cqs_enabled", "off"), 0);
  assert_int_equal(read_status(&r, "inv_00000003", NULL, status, sizeof status, NULL), BILLING_READ_LEGACY);
  assert_string_equal(status, other);

  /* Shadow: the legacy answer, and the difference recorded; none for an
   * invoice both sides agree on. */
  assert_int_equal(ADM(&t, "flag", "mongodb_cqs_enabled", "shadow"), 0);
  assert_int_equal(read_status(&r, "inv_00000003", NULL, status, sizeof status, &diffs), BILLING_READ_BOTH);
  assert_string_equal(status, other);
  assert_int_equal(diffs, 2); /* the status, and the date of payment one side has */
  read_status(&r, "inv_00000004", NULL, status, sizeof status, &diffs);
  assert_int_equal(diffs, 0);
  bson_t d;
  assert_true(adm_get(&t, "billing_flag_diffs", "inv_00000003", &d));
  assert_string_equal(adm_str(&d, "differences.0.field"), "status");
  assert_string_equal(adm_str(&d, "differences.0.legacy"), other);
  assert_string_equal(adm_str(&d, "differences.0.cqs"), cqs_status);
  assert_string_equal(adm_str(&d, "differences.1.field"), "paidAt");
  bson_destroy(&d);
  assert_false(adm_get(&t, "billing_flag_diffs", "inv_00000004", &d));
  assert_int_equal(adm_count(&t, "billing_flag_diffs", NULL), 1);

  /* A percentage: by customer, stable, about that share. */
  assert_int_equal(ADM(&t, "flag", "mongodb_cqs_enabled", "30"), 0);
  assert_int_equal(ADM(&t, "flag", "mongodb_cqs_enabled"), 0);
  assert_non_null(strstr(t.out, "30 %"));
  billing_cqs_flag_t f = {BILLING_CQS_PERCENT, 30};
  int to_cqs = 0;
  for (int c = 0; c < 100; c++) {
    char cust[32];
    snprintf(cust, sizeof cust, "cust_%05d", c);
    billing_read_source_t s = read_status(&r, "inv_00000003", cust, status, sizeof status, NULL);
    assert_int_equal(s, billing_cqs_routes_to_cqs(&f, cust) ? BILLING_READ_CQS : BILLING_READ_LEGACY);
    assert_string_equal(status, s == BILLING_READ_CQS ? cqs_status : other);
    assert_int_equal(read_status(&r, "inv_00000003", cust, status, sizeof status, NULL), s); /* stable */
    to_cqs += s == BILLING_READ_CQS;
  }
  assert_true(to_cqs > 15 && to_cqs < 45);
  /* Without the caller's customer, the invoice's own customer decides. */
  billing_read_source_t s = read_status(&r, "inv_00000003", NULL, status, sizeof status, NULL);
  assert_int_equal(s, billing_cqs_routes_to_cqs(&f, adm_str(&q, "customer.id")) ? BILLING_READ_CQS : BILLING_READ_LEGACY);
  bson_destroy(&q);

  assert_int_equal(ADM(&t, "flag", "mongodb_cqs_enabled", "150"), 2);
  assert_int_equal(ADM(&t, "flag", "mongodb_cqs_enabled", "sometimes"), 2);
  assert_int_equal(ADM(&t, "flag", "other_flag", "on"), 2);
  reader_close(&r);
  adm_close(&t);
}

/* ---- rebuild while the application writes ---- */


#define REBUILD_INVOICES 1000
#define REBUILD_INVOICES_S "1000"

static void test_rebuild_while_writing(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  /* Enough invoices for the rebuild to take a while, even beside valgrind. */
  assert_int_equal(ADM(&t, "gen-legacy", REBUILD_INVOICES_S, "--customers", "30"), 0);
  assert_int_equal(ADM(&t, "migrate", "--quiet"), 0);
  app_t a;
  app_open(&a, &t);
  char out[64], err[64];
  snprintf(out, sizeof out, "/tmp/adm_rout_%d", (int)getpid());
  snprintf(err, sizeof err, "/tmp/adm_rerr_%d", (int)getpid());
  const char *argv[] = {"--uri", t.uri, "rebuild", "billing.invoices", NULL};
  /* The rebuild waits before its switch until the test has written, so
   * that commands land between the build and the switch on every run. */
  char hold[64];
  snprintf(hold, sizeof hold, "/tmp/adm_hold_%d", (int)getpid());
  unlink(hold);
  assert_int_equal(mkfifo(hold, 0600), 0);
  assert_int_equal(setenv("BILLING_ADMIN_HOLD_BEFORE_SWITCH", hold, 1), 0);
  pid_t pid = adm_spawn(&t, NULL, argv, out, err);
  unsetenv("BILLING_ADMIN_HOLD_BEFORE_SWITCH");
  /* Open once the rebuild waits at its switch (it opens the pipe to read);
   * a rebuild that ended before that fails the test. */
  int held, status;
  while ((held = open(hold, O_WRONLY | O_NONBLOCK)) < 0) {
    assert_int_equal(errno, ENXIO);
    if (waitpid(pid, &status, WNOHANG) == pid) {
      slurp(out, t.out, sizeof t.out);
      slurp(err, t.err, sizeof t.err);
      fail_msg("rebuild ended before its switch:\n%s%s", t.out, t.err);
    }
    uv_sleep(5); /* polls for the rebuild at its switch: a wait for a condition */
  }
  /* Commands for the invoices projection while the rebuild runs, and after
   * it switched over: new customers, e-mail changes reaching invoices. */
  int sent = 0;
  bool running = true;
  for (int i = 0; running || i < sent + 3; i++) {
    if (i == 5) { /* five rounds committed between the build and the switch: let it switch */
      assert_int_equal(write(held, "x", 1), 1);
      close(held);
      held = -1;
    }
    billing_register_customer_t reg;
    memset(&reg, 0, sizeof reg);
    snprintf(reg.customer_id, sizeof reg.customer_id, "new_%03d", i);
    snprintf(reg.name, sizeof reg.name, "New %d", i);
    snprintf(reg.email, sizeof reg.email, "new%d@example.com", i);
    app_send(&a, &billing_register_customer, &reg);
    billing_change_email_t ch;
    memset(&ch, 0, sizeof ch);
    snprintf(ch.customer_id, sizeof ch.customer_id, "cust_%05d", i % 30);
    snprintf(ch.email, sizeof ch.email, "changed%d@example.com", i);
    app_send(&a, &billing_change_email, &ch);
    if (running && waitpid(pid, &status, WNOHANG) == pid) {
      running = false;
      sent = i;
    }
  }
  assert_true(WIFEXITED(status));
  slurp(out, t.out, sizeof t.out);
  slurp(err, t.err, sizeof t.err);
  if (WEXITSTATUS(status) || !strstr(t.out, "switched over"))
    fail_msg("rebuild: exit %d\n%s%s", WEXITSTATUS(status), t.out, t.err);
  assert_true(sent >= 5); /* the five rounds at least ran before the switch */
  unlink(hold);
  app_catch_up(&a);
  app_close(&a);

  /* Equal to a full replay, the old collections kept, the indexes carried. */
  char rebuilt[sizeof t.out];
  snprintf(rebuilt, sizeof rebuilt, "%s", t.out);
  if (ADM(&t, "check")) fail_msg("not equal to a full replay after:\n%s\ncheck: %s%s", rebuilt, t.out, t.err);
  assert_int_equal(adm_count(&t, "billing_queries", NULL), REBUILD_INVOICES);
  bson_t names = BSON_INITIALIZER;
  char **colls = mongoc_database_get_collection_names_with_opts(t.mdb, NULL, NULL);
  bool old_kept = false;
  for (char **c = colls; c && *c; c++) old_kept |= !strncmp(*c, "billing_queries_old_", 20);
  bson_strfreev(colls);
  bson_destroy(&names);
  assert_true(old_kept);
  mongoc_collection_t *q = adm_coll(&t, "billing_queries");
  mongoc_cursor_t *cur = mongoc_collection_find_indexes_with_opts(q, NULL);
  const bson_t *idx;
  bool carried = false;
  while (mongoc_cursor_next(cur, &idx)) carried |= adm_str(idx, "name") && !strcmp(adm_str(idx, "name"), "customer_status");
  mongoc_cursor_destroy(cur);
  mongoc_collection_destroy(q);
  assert_true(carried);
  assert_int_equal(ADM(&t, "rebuild", "billing.nothing"), 2);
  adm_close(&t);
}

/* ---- dead letters ---- */

static bool keep_first(const cqrs_event_t *e, void *data) {
  *(const cqrs_event_t **)data = cqrs_event_ref(e);
  return false;
}

static void test_dead_letters(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  assert_int_equal(ADM(&t, "gen-legacy", "20", "--customers", "3"), 0);
  assert_int_equal(ADM(&t, "migrate", "--quiet"), 0);
  /* The projection failed on cust_00000's registration for good: its
   * document is missing and the event is in the dead letters (written by
   * the real sink). A process-manager letter too, which the tool leaves. */
  cqrs_registry_t *reg = NULL;
  cqrs_registry_new(&reg, NULL);
  assert_int_equal(billing_register(reg, NULL), CQRS_OK);
  cqrs_mongo_options_t o = {.database = t.db, .events = "billing_commands", .dead_letters = "billing_dead_letters",
                            .keys = "billing_keys"};
  cqrs_mongo_t *m;
  cqrs_error_t e;
  if (cqrs_mongo_new(t.uri, &o, reg, NULL, &m, &e)) fail_msg("%s", e.message);
  cqrs_store_t *store = NULL;
  cqrs_mongo_store_new(m, &store, NULL);
  cqrs_keys_t *keys = adm_keys(m, reg, store, NULL);
  const cqrs_event_t *ev = NULL;
  if (cqrs_store_read_stream(store, "customer", "cust_00000", 1, keep_first, &ev, &e)) fail_msg("%s", e.message);
  assert_non_null(ev);
  delete_doc(&t, "billing_customers", "cust_00000");
  cqrs_error_t why;
  cqrs_error_set(&why, CQRS_ESTORE, "the server went away");
  cqrs_mongo_dead_letter("billing.invoices", ev, &why, m);
  cqrs_mongo_dead_letter("billing.process", ev, &why, m);
  cqrs_event_unref(ev);
  cqrs_store_destroy(store);
  cqrs_keys_destroy(keys);
  cqrs_mongo_destroy(m);
  cqrs_registry_destroy(reg);

  assert_int_equal(ADM(&t, "dead-letters", "list"), 0);
  assert_non_null(strstr(t.out, "billing.invoices customer.registered customer/cust_00000 v1"));
  assert_non_null(strstr(t.out, ": the server went away"));
  assert_non_null(strstr(t.out, "2 dead letters"));
  assert_int_equal(ADM(&t, "dead-letters", "replay", "--all"), 1); /* the process-manager one stays */
  assert_non_null(strstr(t.out, "replayed "));
  assert_non_null(strstr(t.out, "not replayed "));
  bson_t doc;
  assert_true(adm_get(&t, "billing_customers", "cust_00000", &doc));
  bson_destroy(&doc);
  assert_int_equal(adm_count(&t, "billing_dead_letters", NULL), 1);
  assert_int_equal(ADM(&t, "check"), 0);

  assert_int_equal(ADM(&t, "dead-letters", "list", "--subscriber", "billing.process"), 0);
  char id[25];
  memcpy(id, t.out, 24);
  id[24] = '\0';
  assert_int_equal(ADM(&t, "dead-letters", "drop", "0123456789abcdef01234567"), 1); /* no such letter */
  assert_int_equal(ADM(&t, "dead-letters", "drop", id), 0);
  assert_int_equal(adm_count(&t, "billing_dead_letters", NULL), 0);
  assert_int_equal(ADM(&t, "dead-letters", "drop", "not-an-id"), 2);
  assert_int_equal(ADM(&t, "dead-letters", "replay"), 2);
  adm_close(&t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_check_and_repair),
      cmocka_unit_test(test_migrate_killed_and_rerun),
      cmocka_unit_test(test_flag_routes_reads),
      cmocka_unit_test(test_rebuild_while_writing),
      cmocka_unit_test(test_dead_letters),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
