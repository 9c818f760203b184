/* The billing context in three real processes under leases on MongoDB:
 * the transfer process manager runs in one of them; its owner is SIGKILLed
 * in the middle of a transfer (debited, its credit about to go: the owner
 * stops there and says so, and the test kills it) while transfers keep
 * coming from the others; another takes over; once the others stop, a
 * drain takes the leases they released and finishes what they left open
 * and a transfer of its own; money is conserved, every transfer ends as
 * its record says, and a process that never held the lease sent no step. The test binary runs the processes by executing
 * itself with a role as its first argument, and talks with them on their
 * standard input and output. */
#include <signal.h>
#include <sys/prctl.h>
#include <uv.h>

#include "billing_app.h"
#include "billing/transfers.h"

#include <mongoc/mongoc.h>

#include "procs.h"

static const char *self;

#define APPS 3
#define TRANSFERS_MAX 15 /* per process */
#define TRANSFERS_FIRST 8 /* sent before the test says "more" */
#define ACCOUNTS 4
#define DEPOSIT 10000
#define PM "process:transfer"
#define DRAIN_WAIT_MS 60000

static const char *const accounts[ACCOUNTS] = {"a", "b", "c", "d"};

/* ---- the processes ---- */

typedef struct proc proc_t;
struct proc {
  app_t app;
  char owner[32];
  uv_timer_t timer;
  uv_signal_t term;
  int sent, steps;
  bool held; /* the process manager's lease, at some point */
  bool drain, closing;
  bool hold; /* stops at its first credit step until the test says "go" */
  bool go, more; /* heard from the test: "go" (do not stop), "more" (send the rest) */
  bool own_sent; /* the drain: its own transfer is committed */
  bool drain_waiting, failed;
  cqrs_clock_t *lease_clock; /* manual: moves when the test says "advance <ms>" */
  uv_timer_t watch; /* samples whether it holds the lease */
};

static void watch_lease(uv_timer_t *t) {
  proc_t *p = t->data;
  p->held = p->held || cqrs_projection_owned(p->app.d, PM);
}

/* What the test said since last time; with `block`, waits for a line. */
static void hear_test(proc_t *p, bool block) {
  char line[64];
  unsigned long long ms;
  while (procs_child_hear(line, sizeof line, block)) {
    p->go = p->go || !strcmp(line, "go");
    p->more = p->more || !strcmp(line, "more");
    if (sscanf(line, "advance %llu", &ms) == 1) cqrs_clock_advance(p->lease_clock, ms);
    block = false;
  }
}

/* The transfer's steps ("~transfer/<step>:<id>"), not its inputs ("~transfer/in:..."). */
static cqrs_code_t count_step(const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)err;
  proc_t *p = data;
  const char *id = cqrs_command_id(cmd);
  p->held = p->held || cqrs_projection_owned(p->app.d, PM);
  if (!strncmp(id, "~transfer/", 10) && strncmp(id, "~transfer/in", 12)) p->steps++;
  if (p->hold && !strncmp(id, "~transfer/credit:", 17)) {
    p->hold = false;
    procs_child_say("mid\n");
    while (!p->go) hear_test(p, true); /* the loop stops here: debited, not yet credited */
  }
  return CQRS_OK;
}
static const cqrs_middleware_t step_counter = {.command_before = count_step};

static void proc_stop(proc_t *p) {
  if (p->closing) return;
  p->closing = true;
  p->held = p->held || cqrs_projection_owned(p->app.d, PM);
  uv_close((uv_handle_t *)&p->timer, NULL);
  uv_close((uv_handle_t *)&p->watch, NULL);
  uv_close((uv_handle_t *)&p->term, NULL); /* then app_close closes the dispatcher */
}

static void on_term(uv_signal_t *s, int sig) {
  (void)sig;
  proc_stop(s->data);
}

static void on_own_sent(const cqrs_result_t *r, void *data) {
  proc_t *p = data;
  if (!cqrs_result_ok(r)) fprintf(stderr, "%s: its transfer: %s\n", p->owner, r->error.message);
  p->own_sent = true;
}

/* Sends this process's next transfer; `done` hears when it is committed. */
static bool send_transfer(proc_t *p, cqrs_done_cb done) {
  billing_request_transfer_t r;
  memset(&r, 0, sizeof r);
  snprintf(r.transfer_id, sizeof r.transfer_id, "%s-%d", p->owner, p->sent);
  snprintf(r.from, sizeof r.from, "%s", accounts[p->sent % ACCOUNTS]);
  snprintf(r.to, sizeof r.to, "%s", accounts[(p->sent + 1 + p->sent / ACCOUNTS) % ACCOUNTS]);
  if (!strcmp(r.from, r.to)) snprintf(r.to, sizeof r.to, "%s", accounts[(p->sent + 2) % ACCOUNTS]);
  r.amount = (cqrs_money_t){100 + p->sent, "EUR"};
  cqrs_command_t *cmd;
  if (cqrs_command_new(&billing_request_transfer, &r, &cmd, NULL) != CQRS_OK ||
      cqrs_dispatcher_send(p->app.d, cmd, done, p) != CQRS_OK)
    return false;
  p->sent++;
  return true;
}

/* The drain stops once the process manager has handled the store up to
 * its head and no transfer is open. Its position does not say so: live,
 * it moves only with the events the process manager routes (requests), so
 * the steps' events after the last request leave it behind the head for
 * good; cqrs_projection_wait also counts what the feed passed a live, idle
 * subscriber by. */
static void on_drained(cqrs_code_t status, void *data) {
  proc_t *p = data;
  p->drain_waiting = false;
  if (status == CQRS_ETIMEOUT) {
    fprintf(stderr, "drain: the process manager did not reach the head within %d ms\n", DRAIN_WAIT_MS);
    p->failed = true;
    proc_stop(p);
  } else if (status == CQRS_OK && !cqrs_process_open_count(p->app.d, "transfer")) {
    proc_stop(p);
  }
}

static void proc_tick(uv_timer_t *t) {
  proc_t *p = t->data;
  p->held = p->held || cqrs_projection_owned(p->app.d, PM);
  if (p->drain) {
    /* One transfer of its own, once it runs the process manager live: the
     * drain always finishes a transfer as the new owner does. */
    if (!p->sent) {
      if (cqrs_projection_owned(p->app.d, PM) && cqrs_projection_live(p->app.d, PM)) send_transfer(p, on_own_sent);
      return;
    }
    int64_t head;
    if (!p->drain_waiting && p->own_sent && p->held && cqrs_projection_live(p->app.d, PM) &&
        !cqrs_process_open_count(p->app.d, "transfer") && cqrs_store_head(p->app.store, &head, NULL) == CQRS_OK &&
        cqrs_projection_wait(p->app.d, PM, head, DRAIN_WAIT_MS, on_drained, p) == CQRS_OK)
      p->drain_waiting = true;
    return;
  }
  hear_test(p, false);
  if (p->sent >= TRANSFERS_MAX || (p->sent >= TRANSFERS_FIRST && !p->more)) return;
  if (send_transfer(p, NULL) && p->sent == TRANSFERS_MAX) {
    fputs("sent\n", stdout);
    fflush(stdout);
  }
}

/* Writes what this process did where the test reads it: {_id: owner,
 * steps, held}. */
static void report(proc_t *p) {
  mongoc_client_t *c = mongoc_client_new(test_mongo_uri());
  mongoc_collection_t *coll = mongoc_client_get_collection(c, cqrs_mongo_database(p->app.m), "procs");
  bson_t *doc = BCON_NEW("_id", BCON_UTF8(p->owner), "steps", BCON_INT32(p->steps), "held", BCON_BOOL(p->held));
  bson_error_t e;
  if (!mongoc_collection_insert_one(coll, doc, NULL, NULL, &e)) fprintf(stderr, "%s: report: %s\n", p->owner, e.message);
  bson_destroy(doc);
  mongoc_collection_destroy(coll);
  mongoc_client_destroy(c);
}

/* `t0`: where the leases' manual clock starts, the same for every process. */
static int run_proc(const char *db, const char *owner, bool drain, int64_t t0) {
  prctl(PR_SET_PDEATHSIG, SIGKILL); /* a test that failed leaves nothing running */
  static proc_t p;
  snprintf(p.owner, sizeof p.owner, "%s", owner);
  p.drain = drain;
  p.hold = !drain;
  if (cqrs_clock_manual_new(t0, &p.lease_clock, NULL)) return 1;
  app_open_leased(&p.app, test_mongo_uri(), db, 0, false, owner, p.lease_clock);
  if (cqrs_dispatcher_use(p.app.d, &step_counter, &p, NULL)) return 1;
  uv_timer_init(&p.app.loop, &p.watch);
  p.watch.data = &p;
  uv_timer_start(&p.watch, watch_lease, 10, 10);
  uv_timer_init(&p.app.loop, &p.timer);
  p.timer.data = &p;
  uv_timer_start(&p.timer, proc_tick, 100, 100);
  uv_signal_init(&p.app.loop, &p.term);
  p.term.data = &p;
  uv_signal_start(&p.term, on_term, SIGTERM);
  printf("ready\n");
  fflush(stdout);
  uv_run(&p.app.loop, UV_RUN_DEFAULT);
  report(&p);
  app_close(&p.app, false);
  cqrs_clock_destroy(p.lease_clock);
  return p.failed ? 1 : 0;
}

static int run_setup(const char *db) {
  app_t a;
  app_open_with(&a, test_mongo_uri(), db, 0, false);
  for (int i = 0; i < ACCOUNTS; i++) {
    billing_open_account_t o;
    memset(&o, 0, sizeof o);
    snprintf(o.account_id, sizeof o.account_id, "%s", accounts[i]);
    snprintf(o.owner, sizeof o.owner, "Owner %s", accounts[i]);
    snprintf(o.currency, sizeof o.currency, "EUR");
    if (app_run(&a, &billing_open_account, &o, false)) return 1;
    billing_move_t m = {{0}, {DEPOSIT, "EUR"}, ""};
    snprintf(m.account_id, sizeof m.account_id, "%s", accounts[i]);
    if (app_run(&a, &billing_deposit, &m, false)) return 1;
  }
  app_close(&a, false);
  return 0;
}

/* ---- the test ---- */

static pid_t children[APPS + 2]; /* for the teardown */

static int kill_children(void **state) {
  (void)state;
  procs_kill_all(children, sizeof children / sizeof children[0]);
  return 0;
}

/* The owner the process manager's lease document names, among `owners`,
 * other than `not`; waits for one. */
static int wait_owner(mongoc_collection_t *leases, char owners[APPS][32], int not, uint64_t within_ms) {
  uint64_t until = procs_ms() + within_ms;
  while (procs_ms() < until) {
    bson_t *filter = BCON_NEW("_id", BCON_UTF8(PM));
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(leases, filter, NULL, NULL);
    const bson_t *doc;
    bson_iter_t it;
    int found = -1;
    if (mongoc_cursor_next(cur, &doc) && bson_iter_init_find(&it, doc, "owner") && BSON_ITER_HOLDS_UTF8(&it)) {
      for (int i = 0; i < APPS; i++)
        if (i != not && !strcmp(bson_iter_utf8(&it, NULL), owners[i])) found = i;
    }
    mongoc_cursor_destroy(cur);
    bson_destroy(filter);
    if (found >= 0) return found;
    uv_sleep(20); /* polls the server: the wait is for a condition, bounded by `within_ms` */
  }
  fail_msg("no owner of %s within %llu ms", PM, (unsigned long long)within_ms);
  return -1;
}

typedef struct transfers {
  char ids[APPS * TRANSFERS_MAX + 8][CQRS_ID_MAX];
  size_t n;
} transfers_t;

static bool collect_transfer(const cqrs_event_t *e, void *data) {
  transfers_t *t = data;
  if (e->type == &billing_transfer_requested && t->n < sizeof t->ids / sizeof t->ids[0])
    snprintf(t->ids[t->n++], CQRS_ID_MAX, "%s", cqrs_event_aggregate_id(e));
  return true;
}

static int64_t balance(cqrs_store_t *store, const char *id) {
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(store, &billing_account, id, &agg, NULL), CQRS_OK);
  int64_t b = ((const billing_account_state_t *)cqrs_aggregate_state_const(agg))->balance;
  cqrs_aggregate_destroy(agg);
  return b;
}

static void test_transfers_survive_their_owner(void **state) {
  (void)state;
  NEED_MONGO();
  char db[64];
  test_mongo_db(db, sizeof db);
  char *setup_argv[] = {"test_mongo_lease_transfers", "setup", db, NULL};
  children[APPS + 1] = procs_spawn(self, setup_argv, false);
  assert_int_equal(procs_wait_exit(children[APPS + 1]), 0);
  children[APPS + 1] = 0;
  mongoc_client_t *client = mongoc_client_new(test_mongo_uri());
  mongoc_collection_t *leases = mongoc_client_get_collection(client, db, "cqrs_leases");
  mongoc_collection_t *procs = mongoc_client_get_collection(client, db, "procs");
  setenv("UV_THREADPOOL_SIZE", "8", 1);
  /* The leases' clocks of the processes stand at t0 until the test moves
   * them: the first to ask takes each lease, which then runs out only when
   * the test says, and nobody renews or tries again meanwhile. */
  char t0[24];
  snprintf(t0, sizeof t0, "%lld", (long long)cqrs_now_ms());
  char owners[APPS][32];
  procs_child_t c[APPS];
  for (int i = 0; i < APPS; i++) {
    snprintf(owners[i], sizeof owners[i], "app-%d-%d", (int)getpid(), i);
    char *argv[] = {"test_mongo_lease_transfers", "app", db, owners[i], t0, NULL};
    c[i] = procs_spawn_talking(self, argv);
    children[i] = c[i].pid;
  }
  /* The owner of the process manager (only it sends steps) stops at its
   * first credit: a transfer debited and not credited. It is killed there. */
  int first = procs_wait_line(c, APPS, "mid\n", 60000);
  if (first < 0) fail_msg("no process sent a credit within 60 s");
  for (int i = 0; i < APPS; i++)
    if (i != first) procs_tell(&c[i], "go\n"); /* they will not stop there */
  assert_int_equal(kill(c[first].pid, SIGKILL), 0);
  uint64_t killed = procs_ms();
  assert_int_equal(procs_wait_exit(c[first].pid), 128 + SIGKILL);
  children[first] = 0;
  procs_child_close(&c[first]);
  /* Its terms run out: the others' lease clocks move to their first tick
   * past them (ticks every ttl/6). */
  char advance[48];
  snprintf(advance, sizeof advance, "advance %d\n", APP_LEASE_TTL_MS + APP_LEASE_TTL_MS / 6);
  for (int i = 0; i < APPS; i++)
    if (i != first) procs_tell(&c[i], advance);
  int second = wait_owner(leases, owners, first, 20000);
  fprintf(stderr, "transfer process manager taken over after %llu ms\n", (unsigned long long)(procs_ms() - killed));
  /* The others send the rest of their transfers now that another owns the
   * process manager; then they stop. */
  for (int i = 0; i < APPS; i++)
    if (i != first) procs_tell(&c[i], "more\n");
  for (int i = 0; i < APPS; i++) {
    if (i == first) continue;
    procs_child_t *one = &c[i];
    if (procs_wait_line(one, 1, "sent\n", 60000) < 0) fail_msg("%s did not send its transfers within 60 s", owners[i]);
    assert_int_equal(kill(c[i].pid, SIGTERM), 0);
    assert_int_equal(procs_wait_exit(c[i].pid), 0);
    children[i] = 0;
    procs_child_close(&c[i]);
  }
  uint64_t drain_start = procs_ms();
  char *drain_argv[] = {"test_mongo_lease_transfers", "drain", db, "drain", t0, NULL};
  children[APPS] = procs_spawn(self, drain_argv, true);
  assert_int_equal(procs_wait_exit(children[APPS]), 0);
  children[APPS] = 0;
  fprintf(stderr, "the survivors stopped %llu ms after the kill; the drain took %llu ms\n",
          (unsigned long long)(drain_start - killed), (unsigned long long)(procs_ms() - drain_start));

  /* Only the process that took over sent steps; the third sent none. */
  for (int i = 0; i < APPS; i++) {
    if (i == first) continue;
    bson_t *filter = BCON_NEW("_id", BCON_UTF8(owners[i]));
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(procs, filter, NULL, NULL);
    const bson_t *doc;
    assert_true(mongoc_cursor_next(cur, &doc));
    bson_iter_t it;
    assert_true(bson_iter_init_find(&it, doc, "held"));
    bool held = bson_iter_as_bool(&it);
    assert_true(bson_iter_init_find(&it, doc, "steps"));
    int steps = (int)bson_iter_as_int64(&it);
    fprintf(stderr, "%s: held the lease %s, sent %d steps\n", owners[i], held ? "yes" : "no", steps);
    if (i == second) assert_true(held);
    if (!held) assert_int_equal(steps, 0);
    mongoc_cursor_destroy(cur);
    bson_destroy(filter);
  }

  /* Money conserved; every transfer ends as its record says. */
  app_t a;
  app_open_with(&a, test_mongo_uri(), db, 0, false);
  int64_t total = 0;
  for (int i = 0; i < ACCOUNTS; i++) total += balance(a.store, accounts[i]);
  assert_int_equal(total, ACCOUNTS * DEPOSIT);
  transfers_t *t = calloc(1, sizeof *t);
  assert_int_equal(cqrs_store_read_all(a.store, 1, SIZE_MAX, collect_transfer, t, NULL), CQRS_OK);
  fprintf(stderr, "%zu transfers\n", t->n);
  assert_true(t->n > 0);
  int completed = 0;
  for (size_t i = 0; i < t->n; i++) completed += transfer_agrees(a.store, t->ids[i]) == BILLING_TRANSFER_COMPLETED;
  assert_int_equal(completed, (int)t->n);
  assert_int_equal(transfer_agrees(a.store, "drain-0"), BILLING_TRANSFER_COMPLETED); /* the drain's own */
  free(t);
  app_close(&a, true);
  mongoc_collection_destroy(procs);
  mongoc_collection_destroy(leases);
  mongoc_client_destroy(client);
}

int main(int argc, char **argv) {
  self = argv[0];
  if (argc == 3 && !strcmp(argv[1], "setup")) return run_setup(argv[2]);
  if (argc == 5 && !strcmp(argv[1], "app")) return run_proc(argv[2], argv[3], false, strtoll(argv[4], NULL, 10));
  if (argc == 5 && !strcmp(argv[1], "drain")) return run_proc(argv[2], argv[3], true, strtoll(argv[4], NULL, 10));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_transfers_survive_their_owner, kill_children),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
