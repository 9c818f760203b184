/* Leases on MongoDB: the lease store's contract, a race of takers, fenced
 * checkpoints, and three real processes running one application whose
 * projection runs in exactly one of them; its owner is SIGKILLed in the
 * middle of a batch while commands keep coming, another takes over at its
 * first tick after the term has run out, and every event is projected,
 * once. The test binary runs the processes by executing itself with a role
 * as its first argument; their leases run on manual clocks that the test
 * moves (through their standard input), so no term runs out before the
 * test says so, however busy the machine. */
#include <setjmp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <uv.h>

#include "mongo_fixture.h"
#include "framework/ledger.h"

#include <mongoc/mongoc.h>

#include "mongo-private.h" /* the claim hook */
#include "procs.h"

static const char *self; /* argv[0]: this binary (under valgrind, /proc/self/exe is valgrind) */

#define APPS 3
#define COMMANDS_MAX 600 /* per process: a stray one stops on its own */
#define SEND_MS 40
#define TTL_MS 3000
#define GUARD_MS 1000
#define TALLY "tally"             /* the projection, and the collection it writes */
#define HOLD_AT 10                /* a process stops after projecting this many events, until told to go on */
#define AGAIN "tally_again"       /* a second application of an event, recorded */

/* ---- the lease store on the server ----
 * Its contract, and the fenced checkpoints': tests/mongo/test_mongo_conformance.c. */

static void test_mongo_lease_contract(void **state) {
  (void)state;
  NEED_MONGO();
  cqrs_registry_t *reg = ledger_registry();
  cqrs_mongo_t *m = test_mongo_open(reg, NULL, NULL);
  /* A fenced-off write says so. */
  cqrs_checkpoint_store_t *cp;
  assert_int_equal(cqrs_mongo_checkpoint_store_new(m, &cp, NULL), CQRS_OK);
  cqrs_error_t err;
  assert_int_equal(cqrs_checkpoint_store_save_fenced(cp, "p", 10, 2, &err), CQRS_OK);
  assert_int_equal(cqrs_checkpoint_store_save_fenced(cp, "p", 20, 1, &err), CQRS_ECONFLICT);
  assert_non_null(strstr(err.message, "fenced off"));
  cqrs_checkpoint_store_destroy(cp);
  cqrs_lease_store_t *l;
  assert_int_equal(cqrs_mongo_lease_store_new(NULL, &l, NULL), CQRS_EINVAL);
  assert_null(l);
  test_mongo_close(m);
  cqrs_registry_destroy(reg);
}

/* Takers racing for a free lease, then for an expired one: one wins each.
 * The store's clock is a manual one that stands still during a round, so
 * the winner's term cannot run out under a slow taker (a 200 ms term on
 * the real clock let one win the next term, rightly, in the same round
 * under TSan); between rounds it moves past the term. */
#define TAKERS 6
#define RACE_TTL_MS 1500
typedef struct taker {
  cqrs_lease_store_t *l;
  uv_barrier_t *start;
  const char *name;
  char owner[16];
  int64_t token;
  cqrs_code_t rc;
} taker_t;

static void take(void *arg) {
  taker_t *t = arg;
  cqrs_error_t err;
  uv_barrier_wait(t->start);
  t->rc = cqrs_lease_store_acquire(t->l, t->name, t->owner, RACE_TTL_MS, &t->token, &err);
  if (t->rc) fprintf(stderr, "taker %s: %s\n", t->owner, err.message);
}

static void race(cqrs_lease_store_t *l, const char *name, int64_t *winner_token) {
  uv_barrier_t start;
  uv_barrier_init(&start, TAKERS);
  taker_t t[TAKERS];
  uv_thread_t th[TAKERS];
  for (int i = 0; i < TAKERS; i++) {
    t[i] = (taker_t){.l = l, .start = &start, .name = name};
    snprintf(t[i].owner, sizeof t[i].owner, "taker-%d", i);
    uv_thread_create(&th[i], take, &t[i]);
  }
  int winners = 0;
  for (int i = 0; i < TAKERS; i++) {
    uv_thread_join(&th[i]);
    assert_int_equal(t[i].rc, CQRS_OK);
    if (t[i].token > 0) {
      winners++;
      *winner_token = t[i].token;
    }
  }
  uv_barrier_destroy(&start);
  assert_int_equal(winners, 1);
}

static void test_one_taker_wins(void **state) {
  (void)state;
  NEED_MONGO();
  cqrs_registry_t *reg = ledger_registry();
  cqrs_mongo_t *m = test_mongo_open(reg, NULL, NULL);
  cqrs_clock_t *clock;
  assert_int_equal(cqrs_clock_manual_new(cqrs_now_ms(), &clock, NULL), CQRS_OK);
  cqrs_lease_store_t *l;
  assert_int_equal(cqrs_mongo_lease_store_new_with_clock(m, clock, &l, NULL), CQRS_OK);
  int64_t prev = 0;
  for (int round = 0; round < 4; round++) {
    int64_t token = 0;
    race(l, "raced", &token);
    assert_true(token > prev);
    prev = token;
    /* The winner's lease runs out: the next round races for an expired one. */
    assert_int_equal(cqrs_clock_advance(clock, RACE_TTL_MS), CQRS_OK);
  }
  /* Old terms go: the current one, the one before, and the copy stay. */
  mongoc_client_t *client = mongoc_client_new(test_mongo_uri());
  mongoc_collection_t *coll = mongoc_client_get_collection(client, cqrs_mongo_database(m), "cqrs_leases");
  bson_t *filter = BCON_NEW("name", "raced");
  bson_error_t e;
  int64_t terms = mongoc_collection_count_documents(coll, filter, NULL, NULL, NULL, &e);
  bson_destroy(filter);
  assert_true(terms >= 1 && terms <= 2);
  /* A taker that stopped between taking a term and writing the copy: the
   * next finds the term above the copy's and takes the one after. */
  char id[96];
  snprintf(id, sizeof id, "raced#%020lld", (long long)prev + 1);
  bson_t *ghost = BCON_NEW("_id", BCON_UTF8(id), "name", "raced", "token", BCON_INT64(prev + 1), "owner", "ghost",
                           "expires", BCON_DATE_TIME(cqrs_clock_now_ms(clock) - 1));
  assert_true(mongoc_collection_insert_one(coll, ghost, NULL, NULL, &e));
  bson_destroy(ghost);
  int64_t token;
  assert_int_equal(cqrs_lease_store_acquire(l, "raced", "late", 1000, &token, NULL), CQRS_OK);
  assert_int_equal(token, prev + 2);
  mongoc_collection_destroy(coll);
  mongoc_client_destroy(client);
  cqrs_lease_store_destroy(l);
  cqrs_clock_destroy(clock);
  test_mongo_close(m);
  cqrs_registry_destroy(reg);
}

/* A claim that read the lease's newest term, stalled, and then inserted
 * the next term's document after others had taken that term, two more, and
 * deleted it as an old one: the insert goes through (the id is free again),
 * but the copy names a newer term, so the claim holds nothing and takes its
 * document back out. (It used to return that term's token and hold the
 * lease beside its real holder until its first renewal.) */
static cqrs_lease_store_t *stalled_leases;

static void others_move_on(const char *name, const char *owner) {
  if (strcmp(owner, "stalled")) return;
  cqrs__mongo_lease_claim_hook = NULL; /* once */
  const char *others[] = {"b", "c", "d"};
  for (int64_t i = 0; i < 3; i++) {
    int64_t token;
    assert_int_equal(cqrs_lease_store_acquire(stalled_leases, name, others[i], 60000, &token, NULL), CQRS_OK);
    assert_int_equal(token, i + 1);
    if (i < 2) assert_int_equal(cqrs_lease_store_release(stalled_leases, name, others[i], token, NULL), CQRS_OK);
  }
}

static int64_t count_id(mongoc_collection_t *coll, const char *id) {
  bson_t *filter = BCON_NEW("_id", BCON_UTF8(id));
  bson_error_t e;
  int64_t n = mongoc_collection_count_documents(coll, filter, NULL, NULL, NULL, &e);
  bson_destroy(filter);
  if (n < 0) fail_msg("count: %s", e.message);
  return n;
}

static void test_stale_claim_backs_out(void **state) {
  (void)state;
  NEED_MONGO();
  cqrs_registry_t *reg = ledger_registry();
  cqrs_mongo_t *m = test_mongo_open(reg, NULL, NULL);
  assert_int_equal(cqrs_mongo_lease_store_new(m, &stalled_leases, NULL), CQRS_OK);
  cqrs__mongo_lease_claim_hook = others_move_on;
  int64_t token = -1;
  cqrs_error_t err;
  /* It read "no term yet" and claims term 1; meanwhile b takes term 1, c
   * term 2, d term 3 (which deletes term 1). */
  assert_int_equal(cqrs_lease_store_acquire(stalled_leases, "stale", "stalled", 60000, &token, &err), CQRS_OK);
  assert_null(cqrs__mongo_lease_claim_hook); /* it did stall there */
  assert_int_equal(token, 0);
  mongoc_client_t *client = mongoc_client_new(test_mongo_uri());
  mongoc_collection_t *coll = mongoc_client_get_collection(client, cqrs_mongo_database(m), "cqrs_leases");
  assert_int_equal(count_id(coll, "stale#00000000000000000001"), 0);
  assert_int_equal(count_id(coll, "stale#00000000000000000003"), 1);
  /* d holds it still; once d lets go, the next claim takes term 4. */
  assert_int_equal(cqrs_lease_store_renew(stalled_leases, "stale", "d", 3, 60000, &err), CQRS_OK);
  assert_int_equal(cqrs_lease_store_acquire(stalled_leases, "stale", "stalled", 60000, &token, &err), CQRS_OK);
  assert_int_equal(token, 0);
  assert_int_equal(cqrs_lease_store_release(stalled_leases, "stale", "d", 3, &err), CQRS_OK);
  assert_int_equal(cqrs_lease_store_acquire(stalled_leases, "stale", "stalled", 60000, &token, &err), CQRS_OK);
  assert_int_equal(token, 4);
  mongoc_collection_destroy(coll);
  mongoc_client_destroy(client);
  cqrs_lease_store_destroy(stalled_leases);
  test_mongo_close(m);
  cqrs_registry_destroy(reg);
}

/* ---- the application the processes run ---- */

typedef struct app {
  uv_loop_t loop;
  cqrs_registry_t *reg;
  cqrs_mongo_t *m;
  cqrs_store_t *store;
  cqrs_checkpoint_store_t *cp;
  cqrs_lease_store_t *leases;
  cqrs_dispatcher_t *d;
  mongoc_client_pool_t *pool; /* the projection's own writes */
  char db[64], owner[32], account[32];
  uv_timer_t timer;
  uv_signal_t term;
  bool drain;   /* sends nothing; exits once the projection has caught up */
  int sent, failed;
  bool closing;
  bool opened; /* the account's open has come back: credits may go */
  /* An "app" talks with the test on its standard input and output: its
   * leases' clock moves when the test says "advance <ms>", and its
   * projection stops at its HOLD_AT-th event ("mid") until "go". */
  bool talking;
  cqrs_clock_t *lease_clock;
  uv_pipe_t in;
  char line[64];
  size_t len;
  uv_mutex_t hold_lock;
  uv_cond_t hold_cond;
  bool go;
  _Atomic int projected;
} app_t;

/* On a pool thread, in the projection: the HOLD_AT-th event waits here. */
static void maybe_hold(app_t *a) {
  if (!a->talking || atomic_fetch_add(&a->projected, 1) + 1 != HOLD_AT) return;
  fputs("mid\n", stdout);
  fflush(stdout);
  uv_mutex_lock(&a->hold_lock);
  while (!a->go) uv_cond_wait(&a->hold_cond, &a->hold_lock);
  uv_mutex_unlock(&a->hold_lock);
}

static void alloc_in(uv_handle_t *h, size_t size, uv_buf_t *buf) {
  (void)h, (void)size;
  static char room[256];
  *buf = uv_buf_init(room, sizeof room);
}

/* What the test says, a line at a time, on the loop thread. */
static void heard(app_t *a, const char *line) {
  unsigned long long ms;
  if (sscanf(line, "advance %llu", &ms) == 1) {
    cqrs_clock_advance(a->lease_clock, ms);
  } else if (!strcmp(line, "go")) {
    uv_mutex_lock(&a->hold_lock);
    a->go = true;
    uv_cond_signal(&a->hold_cond);
    uv_mutex_unlock(&a->hold_lock);
  }
}

static void read_in(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  app_t *a = s->data;
  for (ssize_t i = 0; i < n; i++) {
    if (buf->base[i] != '\n') {
      if (a->len < sizeof a->line - 1) a->line[a->len++] = buf->base[i];
      continue;
    }
    a->line[a->len] = '\0';
    a->len = 0;
    heard(a, a->line);
  }
}

/* The projection: one document per position, keyed by it, so a second
 * application of an event is refused by the server and recorded. */
static cqrs_code_t tally(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  app_t *a = data;
  mongoc_client_t *c = mongoc_client_pool_pop(a->pool);
  mongoc_collection_t *coll = mongoc_client_get_collection(c, a->db, TALLY);
  bson_t doc = BSON_INITIALIZER;
  BSON_APPEND_INT64(&doc, "_id", e->position);
  BSON_APPEND_UTF8(&doc, "by", a->owner);
  BSON_APPEND_DATE_TIME(&doc, "at", cqrs_now_ms());
  bson_error_t be;
  cqrs_code_t rc = CQRS_OK;
  bool inserted = mongoc_collection_insert_one(coll, &doc, NULL, NULL, &be);
  if (inserted) maybe_hold(a);
  if (!inserted) {
    if (be.code == 11000) {
      mongoc_collection_t *again = mongoc_client_get_collection(c, a->db, AGAIN);
      bson_t d2 = BSON_INITIALIZER;
      BSON_APPEND_INT64(&d2, "position", e->position);
      BSON_APPEND_UTF8(&d2, "by", a->owner);
      if (!mongoc_collection_insert_one(again, &d2, NULL, NULL, &be))
        rc = cqrs_error_set(err, CQRS_ESTORE, "record a repeat: %s", be.message);
      bson_destroy(&d2);
      mongoc_collection_destroy(again);
    } else {
      rc = cqrs_error_set(err, CQRS_ESTORE, "tally: %s", be.message);
    }
  }
  bson_destroy(&doc);
  mongoc_collection_destroy(coll);
  mongoc_client_pool_push(a->pool, c);
  return rc;
}

static void on_done(const cqrs_result_t *r, void *data) {
  app_t *a = data;
  if (!cqrs_result_ok(r)) {
    a->failed++;
    fprintf(stderr, "%s: command failed: %s\n", a->owner, r->error.message);
  }
}

static void on_opened(const cqrs_result_t *r, void *data) {
  on_done(r, data);
  ((app_t *)data)->opened = true;
}

static void app_stop(app_t *a) {
  if (a->closing) return;
  a->closing = true;
  uv_timer_stop(&a->timer);
  uv_close((uv_handle_t *)&a->timer, NULL);
  uv_close((uv_handle_t *)&a->term, NULL);
  if (a->talking) uv_close((uv_handle_t *)&a->in, NULL);
  cqrs_dispatcher_close(a->d, NULL, NULL);
}

static void on_term(uv_signal_t *s, int sig) {
  (void)sig;
  app_stop(s->data);
}

static void app_tick(uv_timer_t *t) {
  app_t *a = t->data;
  if (a->drain) {
    int64_t head;
    if (cqrs_store_head(a->store, &head, NULL) == CQRS_OK && cqrs_projection_owned(a->d, TALLY) &&
        cqrs_projection_live(a->d, TALLY) && cqrs_projection_position(a->d, TALLY) >= head)
      app_stop(a);
    return;
  }
  /* A credit sent before the open has come back may run beside it (the
   * store's calls are on the pool) and find the account not open yet. */
  if (a->sent >= COMMANDS_MAX || (a->sent == 1 && !a->opened)) return;
  cqrs_command_t *cmd =
      a->sent == 0 ? ledger_open_new(a->account, a->owner) : ledger_credit_new(a->account, a->sent);
  if (cqrs_dispatcher_send(a->d, cmd, a->sent == 0 ? on_opened : on_done, a) == CQRS_OK) a->sent++;
}

/* `t0`: the start of the leases' manual clock, the same for every
 * process. The drain's never moves: it holds what it takes. */
static int run_app(const char *db, const char *owner, bool drain, int64_t t0) {
  prctl(PR_SET_PDEATHSIG, SIGKILL); /* a test that failed leaves nothing running */
  static app_t a;
  memset(&a, 0, sizeof a);
  a.drain = drain;
  a.talking = !drain;
  uv_mutex_init(&a.hold_lock);
  uv_cond_init(&a.hold_cond);
  if (cqrs_clock_manual_new(t0, &a.lease_clock, NULL)) return 1;
  snprintf(a.db, sizeof a.db, "%s", db);
  snprintf(a.owner, sizeof a.owner, "%s", owner);
  snprintf(a.account, sizeof a.account, "acc-%s", owner);
  uv_loop_init(&a.loop);
  a.reg = ledger_registry();
  a.m = procs_connect(a.reg, &a.loop, db);
  mongoc_uri_t *uri = mongoc_uri_new(test_mongo_uri());
  a.pool = mongoc_client_pool_new(uri);
  mongoc_uri_destroy(uri);
  mongoc_client_pool_set_error_api(a.pool, MONGOC_ERROR_API_VERSION_2);
  cqrs_error_t err;
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.poll_ms = 50; /* hears of the others' commits */
  o.retry_base_ms = 20;
  o.retry_cap_ms = 200;
  cqrs_lease_options_t lo;
  cqrs_lease_options_init(&lo);
  lo.owner = owner;
  lo.ttl_ms = TTL_MS;
  lo.guard_ms = GUARD_MS;
  lo.clock = a.lease_clock; /* the dispatcher's other timers (polls, back-offs) keep the real one */
  cqrs_projection_def_t def = {TALLY, NULL, tally, &a, CQRS_SUBSCRIBE_BLOCKING};
  if (cqrs_mongo_store_new(a.m, &a.store, &err) || cqrs_mongo_checkpoint_store_new(a.m, &a.cp, &err) ||
      test_mongo_leases_on_loop(a.m, a.lease_clock, &a.leases, &err) ||
      cqrs_dispatcher_new(&a.loop, a.reg, a.store, &o, &a.d, &err) || ledger_handlers(a.d, NULL, 0, &err) ||
      (lo.leases = a.leases, cqrs_dispatcher_set_leases(a.d, &lo, &err)) ||
      cqrs_projection_start(a.d, &def, a.cp, &err)) {
    fprintf(stderr, "%s: %s\n", owner, err.message);
    return 1;
  }
  uv_timer_init(&a.loop, &a.timer);
  a.timer.data = &a;
  uv_timer_start(&a.timer, app_tick, SEND_MS, SEND_MS);
  uv_signal_init(&a.loop, &a.term);
  a.term.data = &a;
  uv_signal_start(&a.term, on_term, SIGTERM);
  if (a.talking) {
    uv_pipe_init(&a.loop, &a.in, 0);
    a.in.data = &a;
    if (uv_pipe_open(&a.in, 0) || uv_read_start((uv_stream_t *)&a.in, alloc_in, read_in)) return 1;
    uv_unref((uv_handle_t *)&a.in);
  }
  printf("ready\n");
  fflush(stdout);
  uv_run(&a.loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(&a.loop) != 0 || a.failed;
  cqrs_clock_destroy(a.lease_clock);
  cqrs_lease_store_destroy(a.leases);
  cqrs_checkpoint_store_destroy(a.cp);
  cqrs_store_destroy(a.store);
  mongoc_client_pool_destroy(a.pool);
  cqrs_mongo_destroy(a.m);
  cqrs_registry_destroy(a.reg);
  return rc;
}

/* ---- the test ---- */

static pid_t children[APPS + 1];

/* After a failure: the children still running go too. */
static int kill_children(void **state) {
  (void)state;
  procs_kill_all(children, sizeof children / sizeof children[0]);
  return 0;
}

/* The lease's current copy: its owner ("" when none) and token. */
static void lease_holder(mongoc_collection_t *leases, char owner[32], int64_t *token) {
  bson_t filter = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "_id", TALLY);
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(leases, &filter, NULL, NULL);
  const bson_t *doc;
  owner[0] = '\0';
  *token = 0;
  bson_iter_t it;
  if (mongoc_cursor_next(cur, &doc)) {
    if (bson_iter_init_find(&it, doc, "owner") && BSON_ITER_HOLDS_UTF8(&it))
      snprintf(owner, 32, "%s", bson_iter_utf8(&it, NULL));
    if (bson_iter_init_find(&it, doc, "token")) *token = bson_iter_as_int64(&it);
  }
  mongoc_cursor_destroy(cur);
  bson_destroy(&filter);
}

static int64_t count(mongoc_collection_t *coll, const char *json) {
  bson_error_t e;
  bson_t *filter = bson_new_from_json((const uint8_t *)json, -1, &e);
  int64_t n = mongoc_collection_count_documents(coll, filter, NULL, NULL, NULL, &e);
  bson_destroy(filter);
  if (n < 0) fail_msg("count: %s", e.message);
  return n;
}

static int64_t count_by(mongoc_collection_t *coll, const char *owner, bool equal) {
  char json[128];
  snprintf(json, sizeof json, "{\"by\": {\"%s\": \"%s\"}}", equal ? "$eq" : "$ne", owner);
  return count(coll, json);
}

/* Waits until `coll` holds at least `n` documents matching `json`. */
static void wait_count(mongoc_collection_t *coll, const char *json, int64_t n) {
  uint64_t until = procs_ms() + 90000;
  while (count(coll, json) < n) {
    if (procs_ms() > until) fail_msg("fewer than %lld documents %s after 90 s", (long long)n, json);
    uv_sleep(50);
  }
}

/* Waits until the lease copy names an owner other than `not`; returns it. */
static int wait_owner(mongoc_collection_t *leases, char owners[APPS][32], const char *not, uint64_t within_ms) {
  uint64_t until = procs_ms() + within_ms;
  char owner[32];
  int64_t token;
  while (procs_ms() < until) {
    lease_holder(leases, owner, &token);
    for (int i = 0; i < APPS; i++) {
      if (!strcmp(owner, owners[i]) && strcmp(owner, not)) return i;
    }
    uv_sleep(20); /* polls the server: the wait is for a condition, bounded by `within_ms` */
  }
  fail_msg("no new owner within %llu ms (copy: '%s')", (unsigned long long)within_ms, owner);
  return -1;
}

/* The term document of `token`: its owner and when it was claimed (the
 * claimer's lease clock). */
static void lease_term(mongoc_collection_t *leases, int64_t token, char owner[32], int64_t *at) {
  char id[96];
  snprintf(id, sizeof id, "%s#%020lld", TALLY, (long long)token);
  bson_t *filter = BCON_NEW("_id", BCON_UTF8(id));
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(leases, filter, NULL, NULL);
  const bson_t *doc;
  bson_iter_t it;
  owner[0] = '\0';
  *at = 0;
  if (mongoc_cursor_next(cur, &doc)) {
    if (bson_iter_init_find(&it, doc, "owner") && BSON_ITER_HOLDS_UTF8(&it))
      snprintf(owner, 32, "%s", bson_iter_utf8(&it, NULL));
    if (bson_iter_init_find(&it, doc, "at") && BSON_ITER_HOLDS_DATE_TIME(&it)) *at = bson_iter_date_time(&it);
  }
  mongoc_cursor_destroy(cur);
  bson_destroy(filter);
}

static void test_sigkilled_owner_is_replaced(void **state) {
  (void)state;
  NEED_MONGO();
  cqrs_registry_t *reg = ledger_registry();
  cqrs_mongo_t *m = test_mongo_open(reg, NULL, NULL);
  const char *db = cqrs_mongo_database(m);
  mongoc_client_t *client = mongoc_client_new(test_mongo_uri());
  mongoc_client_set_error_api(client, MONGOC_ERROR_API_VERSION_2);
  mongoc_collection_t *leases = mongoc_client_get_collection(client, db, "cqrs_leases");
  mongoc_collection_t *seen = mongoc_client_get_collection(client, db, TALLY);
  mongoc_collection_t *again = mongoc_client_get_collection(client, db, AGAIN);
  setenv("UV_THREADPOOL_SIZE", "8", 1);
  /* The leases' clocks of the three stand at t0 until the test moves them:
   * the first to ask takes the term, which then runs out only when the
   * test says, and nobody renews or tries again meanwhile. */
  int64_t t0 = cqrs_now_ms();
  char t0s[24];
  snprintf(t0s, sizeof t0s, "%lld", (long long)t0);
  char owners[APPS][32];
  procs_child_t c[APPS];
  for (int i = 0; i < APPS; i++) {
    snprintf(owners[i], sizeof owners[i], "app-%d-%d", (int)getpid(), i);
    char *argv[] = {"test_mongo_leases", "app", (char *)db, owners[i], t0s, NULL};
    c[i] = procs_spawn_talking(self, argv);
    children[i] = c[i].pid;
  }
  int first = wait_owner(leases, owners, "", 15000);
  /* Commands come from all three; the owner projects them, and stops in
   * the middle of a batch, its HOLD_AT-th event written and the batch's
   * checkpoint not yet. */
  int held = procs_wait_line(c, APPS, "mid\n", 90000);
  if (held < 0) fail_msg("the owner did not project %d events within 90 s", HOLD_AT);
  assert_int_equal(held, first);
  assert_int_equal(count_by(seen, owners[first], false), 0);
  assert_int_equal(count(again, "{}"), 0);
  /* Killed there; the other two keep sending, and will not stop where it did. */
  for (int i = 0; i < APPS; i++)
    if (i != first) procs_tell(&c[i], "go\n");
  assert_int_equal(kill(c[first].pid, SIGKILL), 0);
  uint64_t killed = procs_ms();
  assert_int_equal(procs_wait_exit(c[first].pid), 128 + SIGKILL);
  children[first] = 0;
  procs_child_close(&c[first]);
  /* Its term (claimed at t0) runs out at t0 + ttl: the others' clocks move
   * to their first lease tick past it (ticks every ttl/6). */
  char advance[48];
  snprintf(advance, sizeof advance, "advance %d\n", TTL_MS + TTL_MS / 6);
  for (int i = 0; i < APPS; i++)
    if (i != first) procs_tell(&c[i], advance);
  int second = wait_owner(leases, owners, owners[first], 15000);
  fprintf(stderr, "taken over %llu ms after the kill\n", (unsigned long long)(procs_ms() - killed));
  /* The next term, claimed at that tick, by the new owner. */
  char term_owner[32];
  int64_t at;
  lease_term(leases, 2, term_owner, &at);
  assert_string_equal(term_owner, owners[second]);
  assert_int_equal(at, t0 + TTL_MS + TTL_MS / 6);
  char by_second[64];
  snprintf(by_second, sizeof by_second, "{\"by\": \"%s\"}", owners[second]);
  wait_count(seen, by_second, 10);
  for (int i = 0; i < APPS; i++) {
    if (i == first) continue;
    assert_int_equal(kill(c[i].pid, SIGTERM), 0);
    assert_int_equal(procs_wait_exit(c[i].pid), 0);
    children[i] = 0;
    procs_child_close(&c[i]);
  }
  /* What was committed last, a process of its own projects. */
  char *argv[] = {"test_mongo_leases", "drain", (char *)db, "drain", t0s, NULL};
  children[APPS] = procs_spawn(self, argv, true);
  assert_int_equal(procs_wait_exit(children[APPS]), 0);
  children[APPS] = 0;

  /* Every event projected: one document per position, none missing. */
  cqrs_store_t *s = NULL;
  cqrs_mongo_store_new(m, &s, NULL);
  int64_t head;
  assert_int_equal(cqrs_store_head(s, &head, NULL), CQRS_OK);
  fprintf(stderr, "%lld events; first owner projected %lld, the second %lld\n", (long long)head,
          (long long)count_by(seen, owners[first], true), (long long)count_by(seen, owners[second], true));
  assert_int_equal(count(seen, "{}"), head);
  char json[96];
  snprintf(json, sizeof json, "{\"_id\": {\"$gte\": 1, \"$lte\": %lld}}", (long long)head);
  assert_int_equal(count(seen, json), head);
  /* An event seen again is one the killed owner had projected and not yet
   * checkpointed (at most one batch; at least the one it stopped at):
   * never one of a live owner's. */
  int64_t repeats = count(again, "{}");
  fprintf(stderr, "%lld event(s) delivered again after the kill\n", (long long)repeats);
  assert_true(repeats >= 1 && repeats <= 64);
  bson_t all = BSON_INITIALIZER;
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(again, &all, NULL, NULL);
  const bson_t *doc;
  while (mongoc_cursor_next(cur, &doc)) {
    bson_iter_t it;
    assert_true(bson_iter_init_find(&it, doc, "position"));
    snprintf(json, sizeof json, "{\"_id\": %lld, \"by\": \"%s\"}", (long long)bson_iter_as_int64(&it), owners[first]);
    assert_int_equal(count(seen, json), 1);
  }
  mongoc_cursor_destroy(cur);
  cqrs_store_destroy(s);
  mongoc_collection_destroy(again);
  mongoc_collection_destroy(seen);
  mongoc_collection_destroy(leases);
  mongoc_client_destroy(client);
  test_mongo_close(m);
  cqrs_registry_destroy(reg);
}

int main(int argc, char **argv) {
  self = argv[0];
  if (argc == 5 && !strcmp(argv[1], "app")) return run_app(argv[2], argv[3], false, strtoll(argv[4], NULL, 10));
  if (argc == 5 && !strcmp(argv[1], "drain")) return run_app(argv[2], argv[3], true, strtoll(argv[4], NULL, 10));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mongo_lease_contract),
      cmocka_unit_test(test_one_taker_wins),
      cmocka_unit_test(test_stale_claim_backs_out),
      cmocka_unit_test_teardown(test_sigkilled_owner_is_replaced, kill_children),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
