/* Batches on MongoDB, through a crash: a separate process (this binary run
 * as "issuer") issues invoices from eight threads at once, so that the
 * year's book takes them in batches (CQRS_HANDLER_BATCH, append_many), and
 * is killed with SIGKILL while it does. Afterwards the book's numbers have
 * no gap, every invoice the issuer was told is numbered has that number,
 * and every invoice sent again is answered as the duplicate it is when it
 * committed before, numbered once otherwise: nothing is lost, nothing
 * doubled. */
#include <sys/wait.h>
#include <time.h>
#include <uv.h>

#include <billing/billing.h>

#include "billing_app.h"
#include "procs.h"

#define SENDERS 8
#define PER_SENDER 12
#define INVOICES (SENDERS * PER_SENDER)
#define KILL_AFTER 16 /* invoices the issuer hears of before it is killed */
#define DUE 1800000000000LL

static const char *self;

static int year_now(void) {
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  return tm.tm_year + 1900;
}

static void invoice_id(char *buf, size_t cap, int sender, int k) { snprintf(buf, cap, "inv-%d-%d", sender, k); }

/* ---- the issuer ---- */

typedef struct issuer {
  cqrs_dispatcher_t *d;
  uv_mutex_t *out;
  int id;
} issuer_t;

static void issue_all(void *arg) {
  issuer_t *s = arg;
  for (int k = 0; k < PER_SENDER; k++) {
    billing_issue_invoice_t p = {"", "", {1000 + k, "EUR"}, DUE};
    invoice_id(p.invoice_id, sizeof p.invoice_id, s->id, k);
    snprintf(p.customer_id, sizeof p.customer_id, "c-%d", s->id);
    cqrs_command_t *cmd;
    cqrs_error_t err;
    if (cqrs_command_new(&billing_issue_invoice, &p, &cmd, &err)) exit(2);
    cqrs_execution_t x;
    cqrs_code_t rc = cqrs_dispatcher_execute_ex(s->d, cmd, &x, &err);
    uv_mutex_lock(s->out);
    if (rc == CQRS_OK) {
      /* Its number is its version in the book. */
      printf("ok %s %lld\n", p.invoice_id, (long long)x.version);
    } else {
      printf("err %s %s\n", p.invoice_id, err.message);
    }
    fflush(stdout);
    uv_mutex_unlock(s->out);
  }
}

static int run_issuer(const char *db) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  cqrs_registry_t *reg;
  cqrs_registry_new(&reg, NULL);
  billing_register(reg, NULL);
  cqrs_mongo_options_t o = billing_mongo_options;
  o.database = db;
  cqrs_mongo_t *m;
  cqrs_store_t *store;
  cqrs_error_t err;
  cqrs_mongo_quiet_logs();
  cqrs_keys_t *keys; /* customers' personal fields are sealed */
  if (cqrs_mongo_new(test_mongo_uri(), &o, reg, &loop, &m, &err) || cqrs_mongo_store_new(m, &store, &err) ||
      billing_mongo_keys(m, &keys, &err) || cqrs_store_set_keys(store, keys, reg, &err)) {
    fprintf(stderr, "issuer: %s\n", err.message);
    return 1;
  }
  cqrs_dispatcher_options_t opts;
  cqrs_dispatcher_options_init(&opts);
  opts.keep_alive = true; /* the senders are other threads */
  cqrs_dispatcher_t *d;
  /* The handlers alone: the store's writes are what this test is about. */
  if (cqrs_dispatcher_new(&loop, reg, store, &opts, &d, &err) || billing_register_handlers(d, &err)) {
    fprintf(stderr, "issuer: %s\n", err.message);
    return 1;
  }
  uv_mutex_t out;
  uv_mutex_init(&out);
  issuer_t s[SENDERS];
  uv_thread_t th[SENDERS];
  printf("ready\n");
  fflush(stdout);
  for (int i = 0; i < SENDERS; i++) {
    s[i] = (issuer_t){d, &out, i};
    uv_thread_create(&th[i], issue_all, &s[i]);
  }
  uv_run(&loop, UV_RUN_DEFAULT); /* until the kill */
  return 3;
}

/* ---- the test ---- */

typedef struct book {
  int64_t n;
  char ids[INVOICES + 1][CQRS_ID_MAX];
  int gaps;
} book_t;

static bool read_book(const cqrs_event_t *e, void *data) {
  book_t *b = data;
  const billing_invoice_numbered_t *p = e->payload;
  char want[BILLING_NUMBER_MAX];
  billing_invoice_number(want, year_now(), e->version);
  if (e->version != b->n + 1 || strcmp(p->number, want)) b->gaps++;
  if (b->n < INVOICES + 1) snprintf(b->ids[b->n], sizeof b->ids[0], "%s", p->invoice_id);
  b->n++;
  return true;
}

static void load_book(cqrs_store_t *store, book_t *b) {
  memset(b, 0, sizeof *b);
  char id[16];
  snprintf(id, sizeof id, "%04d", year_now());
  cqrs_error_t err;
  if (cqrs_store_read_stream(store, "invoice_book", id, 1, read_book, b, &err)) fail_msg("%s", err.message);
  assert_int_equal(b->gaps, 0);
}

/* The number invoice `id` has in the book (0: none), checking it has one
 * at most. */
static int64_t number_of(const book_t *b, const char *id) {
  int64_t found = 0;
  for (int64_t i = 0; i < b->n; i++) {
    if (strcmp(b->ids[i], id)) continue;
    if (found) fail_msg("invoice %s numbered twice: %lld and %lld", id, (long long)found, (long long)i + 1);
    found = i + 1;
  }
  return found;
}

typedef struct again {
  cqrs_code_t code;
  bool duplicate;
  int64_t version;
  int calls;
} again_t;

static void on_again(const cqrs_result_t *r, void *data) {
  again_t *a = data;
  a->code = r->error.code;
  a->duplicate = r->duplicate;
  a->version = r->version;
  a->calls++;
}

static void test_a_crash_mid_batch_loses_nothing(void **state) {
  (void)state;
  NEED_MONGO();
  char db[64];
  test_mongo_db(db, sizeof db);
  app_t a;
  app_open_with(&a, test_mongo_uri(), db, 0, false);
  for (int i = 0; i < SENDERS; i++) {
    billing_register_customer_t c = {"", "Acme", "billing@acme.example"};
    snprintf(c.customer_id, sizeof c.customer_id, "c-%d", i);
    assert_int_equal(app_run(&a, &billing_register_customer, &c, false), CQRS_OK);
  }
  app_close(&a, false);

  /* The issuer, killed while its batches run. */
  char *argv[] = {"test_mongo_batch", "issuer", db, NULL};
  int fd;
  pid_t pid = procs_spawn_piped(self, argv, &fd);
  FILE *in = fdopen(fd, "r");
  static char acked[INVOICES][CQRS_ID_MAX];
  static int64_t acked_number[INVOICES];
  int nacked = 0, errors = 0;
  bool ready = false, killed = false;
  char line[512];
  while (fgets(line, sizeof line, in)) {
    char id[CQRS_ID_MAX];
    long long number;
    if (!strcmp(line, "ready\n")) {
      ready = true;
    } else if (sscanf(line, "ok %63s %lld", id, &number) == 2 && nacked < INVOICES) {
      snprintf(acked[nacked], sizeof acked[0], "%s", id);
      acked_number[nacked++] = number;
    } else {
      fprintf(stderr, "issuer: %s", line);
      errors++;
    }
    if (!killed && nacked >= KILL_AFTER) {
      assert_int_equal(kill(pid, SIGKILL), 0);
      killed = true;
    }
  }
  fclose(in);
  int status = procs_wait_exit(pid);
  assert_true(ready);
  assert_int_equal(errors, 0);
  assert_int_equal(status, 128 + SIGKILL);
  assert_true(nacked >= KILL_AFTER && nacked < INVOICES); /* killed mid-run */

  /* What the store holds: no gap, and every number the issuer heard of.
   * Checked by a dispatcher with the handlers alone, as the issuer ran. */
  uv_loop_t loop;
  uv_loop_init(&loop);
  cqrs_registry_t *reg;
  cqrs_registry_new(&reg, NULL);
  assert_int_equal(billing_register(reg, NULL), CQRS_OK);
  cqrs_mongo_options_t o = billing_mongo_options;
  o.database = db;
  cqrs_mongo_t *m;
  cqrs_store_t *store;
  cqrs_dispatcher_t *d;
  cqrs_keys_t *keys;
  cqrs_error_t err;
  if (cqrs_mongo_new(test_mongo_uri(), &o, reg, &loop, &m, &err) || cqrs_mongo_store_new(m, &store, &err) ||
      billing_mongo_keys(m, &keys, &err) || cqrs_store_set_keys(store, keys, reg, &err) ||
      cqrs_dispatcher_new(&loop, reg, store, NULL, &d, &err) || billing_register_handlers(d, &err))
    fail_msg("%s", err.message);
  static book_t before, after;
  load_book(store, &before);
  assert_true(before.n >= nacked && before.n < INVOICES);
  for (int i = 0; i < nacked; i++) assert_int_equal(number_of(&before, acked[i]), acked_number[i]);

  /* Every invoice sent again: a duplicate when it committed, else numbered
   * after the others. */
  static again_t again[INVOICES];
  memset(again, 0, sizeof again);
  for (int s = 0; s < SENDERS; s++) {
    for (int k = 0; k < PER_SENDER; k++) {
      billing_issue_invoice_t p = {"", "", {1000 + k, "EUR"}, DUE};
      invoice_id(p.invoice_id, sizeof p.invoice_id, s, k);
      snprintf(p.customer_id, sizeof p.customer_id, "c-%d", s);
      cqrs_command_t *cmd;
      assert_int_equal(cqrs_command_new(&billing_issue_invoice, &p, &cmd, NULL), CQRS_OK);
      assert_int_equal(cqrs_dispatcher_send(d, cmd, on_again, &again[s * PER_SENDER + k]), CQRS_OK);
    }
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  load_book(store, &after);
  assert_int_equal(after.n, INVOICES);
  for (int s = 0; s < SENDERS; s++) {
    for (int k = 0; k < PER_SENDER; k++) {
      char id[CQRS_ID_MAX];
      invoice_id(id, sizeof id, s, k);
      const again_t *g = &again[s * PER_SENDER + k];
      assert_int_equal(g->calls, 1);
      if (g->code != CQRS_OK) fail_msg("%s sent again: %s", id, cqrs_code_name(g->code));
      int64_t was = number_of(&before, id), is = number_of(&after, id);
      assert_true(is > 0);
      if (was) {
        assert_true(g->duplicate);
        assert_int_equal(is, was);
      } else {
        assert_false(g->duplicate);
        assert_int_equal(g->version, is);
        assert_true(is > before.n);
      }
    }
  }
  assert_int_equal(cqrs_dispatcher_close(d, NULL, NULL), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  cqrs_store_destroy(store);
  cqrs_keys_destroy(keys);
  cqrs_mongo_drop_database(m, NULL);
  cqrs_mongo_destroy(m);
  cqrs_registry_destroy(reg);
}

int main(int argc, char **argv) {
  self = argv[0];
  if (argc == 3 && !strcmp(argv[1], "issuer")) return run_issuer(argv[2]);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_crash_mid_batch_loses_nothing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
