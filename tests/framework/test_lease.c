/* Leases: the in-memory lease store, fenced checkpoints, and dispatchers
 * that share a projection through a lease: one runs it, another takes over
 * when the first closes, stops renewing, or is fenced off.
 *
 * Time is a manual clock that the dispatchers, their leases and the lease
 * store share, and it moves only when the loop has nothing in flight
 * (settle: uv_run returns once no command, pool job or lease call is out):
 * a renewal always comes back in the time the test allows it, however busy
 * the machine, and a lease runs out only where a test stops its renewals
 * and advances past its term. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <cqrs/backend.h>

#include "ledger.h"

#define MAX_POS 2048

/* ---- the memory lease store and fenced checkpoints ----
 * Their contracts: tests/framework/test_memory_conformance.c. */

static void test_memory_leases(void **state) {
  (void)state;
  cqrs_lease_store_t *l;
  assert_int_equal(cqrs_lease_store_new(NULL, NULL, &l, NULL), CQRS_EINVAL);
  assert_null(l);
  cqrs_lease_store_destroy(NULL);
}

/* A fenced-off write says so. */
static void test_fenced_checkpoints(void **state) {
  (void)state;
  cqrs_checkpoint_store_t *cp;
  assert_int_equal(cqrs_memory_checkpoint_store_new(&cp, NULL), CQRS_OK);
  cqrs_error_t err;
  assert_int_equal(cqrs_checkpoint_store_save_fenced(cp, "p", 10, 2, &err), CQRS_OK);
  assert_int_equal(cqrs_checkpoint_store_save_fenced(cp, "p", 20, 1, &err), CQRS_ECONFLICT);
  assert_non_null(strstr(err.message, "fenced off"));
  cqrs_checkpoint_store_destroy(cp);
}

/* ---- dispatchers sharing a projection ---- */

/* A lease store over the memory one that can stop renewing an owner's
 * leases (as a process that hangs or loses the network would), and can
 * block (its calls then run on the pool). */
typedef struct test_leases {
  cqrs_lease_store_t *inner;
  uv_mutex_t lock; /* the fields below: the test sets them while lease threads read them */
  char mute[CQRS_NAME_MAX]; /* calls of this owner fail */
  /* When the last successful acquire or renewal of lease `watch` was
   * called (the clock's monotonic ms): its holder's deadline is at most
   * ttl - guard later. */
  char watch[CQRS_NAME_MAX];
  uint64_t watch_ok_ms;
  cqrs_clock_t *clock;
} test_leases_t;

static void tl_set(test_leases_t *t, char *field, const char *value) {
  uv_mutex_lock(&t->lock);
  snprintf(field, CQRS_NAME_MAX, "%s", value);
  uv_mutex_unlock(&t->lock);
}

static uint64_t tl_watch_ok_ms(test_leases_t *t) {
  uv_mutex_lock(&t->lock);
  uint64_t at = t->watch_ok_ms;
  uv_mutex_unlock(&t->lock);
  return at;
}

static bool tl_muted(test_leases_t *t, const char *owner) {
  uv_mutex_lock(&t->lock);
  bool muted = !strcmp(t->mute, owner);
  uv_mutex_unlock(&t->lock);
  return muted;
}

static void tl_ok(test_leases_t *t, const char *name, uint64_t at) {
  uv_mutex_lock(&t->lock);
  if (!strcmp(t->watch, name)) t->watch_ok_ms = at;
  uv_mutex_unlock(&t->lock);
}

static cqrs_code_t tl_acquire(void *impl, const char *name, const char *owner, uint64_t ttl, int64_t *token,
                              cqrs_error_t *err) {
  test_leases_t *t = impl;
  uint64_t at = cqrs_clock_monotonic_ms(t->clock);
  if (tl_muted(t, owner)) return cqrs_error_set(err, CQRS_ESTORE, "the server went away");
  cqrs_code_t rc = cqrs_lease_store_acquire(t->inner, name, owner, ttl, token, err);
  if (!rc && *token > 0) tl_ok(t, name, at);
  return rc;
}
static cqrs_code_t tl_renew(void *impl, const char *name, const char *owner, int64_t token, uint64_t ttl,
                            cqrs_error_t *err) {
  test_leases_t *t = impl;
  uint64_t at = cqrs_clock_monotonic_ms(t->clock);
  if (tl_muted(t, owner)) return cqrs_error_set(err, CQRS_ESTORE, "the server went away");
  cqrs_code_t rc = cqrs_lease_store_renew(t->inner, name, owner, token, ttl, err);
  if (!rc) tl_ok(t, name, at);
  return rc;
}
static cqrs_code_t tl_release(void *impl, const char *name, const char *owner, int64_t token, cqrs_error_t *err) {
  return cqrs_lease_store_release(((test_leases_t *)impl)->inner, name, owner, token, err);
}
static const cqrs_lease_ops_t tl_ops = {.blocking = false, .acquire = tl_acquire, .renew = tl_renew,
                                        .release = tl_release, .destroy = NULL};
static const cqrs_lease_ops_t tl_blocking_ops = {.blocking = true, .acquire = tl_acquire, .renew = tl_renew,
                                                 .release = tl_release, .destroy = NULL};

typedef struct seen {
  int count[MAX_POS];
  int64_t n;
  int64_t by[2]; /* deliveries by each dispatcher */
} seen_t;

typedef struct side {
  struct fx *fx;
  int index;
} side_t;

typedef struct fx {
  uv_loop_t loop;
  cqrs_clock_t *clock;
  cqrs_registry_t *reg;
  cqrs_store_t *mem, *store;
  cqrs_checkpoint_store_t *cp_mem, *cp;
  test_leases_t tl;
  cqrs_lease_store_t *leases;
  cqrs_dispatcher_t *d[2];
  side_t side[2];
  seen_t seen;
  int steps[2]; /* step commands each dispatcher handled */
  cqrs_metrics_t *metrics[2];
  int done;
  bool blocking;
} fx_t;

static cqrs_code_t project(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)err;
  side_t *side = data;
  seen_t *s = &side->fx->seen;
  if (e->position < MAX_POS) s->count[e->position]++;
  s->n++;
  s->by[side->index]++;
  return CQRS_OK;
}

/* Dispatcher `i`, under leases of `ttl_ms` and `guard_ms`, with nothing started. */
static void open_leased(fx_t *fx, int i, const char *owner, uint64_t ttl_ms, uint64_t guard_ms) {
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.poll_ms = 10; /* hears of the other's commits */
  o.clock = fx->clock; /* and its leases' (lo.clock NULL) */
  cqrs_error_t err;
  if (cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, &o, &fx->d[i], &err)) fail_msg("%s", err.message);
  assert_int_equal(ledger_handlers(fx->d[i], NULL, 0, NULL), CQRS_OK);
  cqrs_lease_options_t lo;
  cqrs_lease_options_init(&lo);
  lo.leases = fx->leases;
  lo.owner = owner;
  lo.ttl_ms = ttl_ms;
  lo.guard_ms = guard_ms;
  if (cqrs_dispatcher_set_leases(fx->d[i], &lo, &err)) fail_msg("%s", err.message);
  if (!fx->metrics[i] && cqrs_metrics_new(&fx->metrics[i], &err)) fail_msg("%s", err.message);
  if (cqrs_metrics_attach(fx->metrics[i], fx->d[i], &err)) fail_msg("%s", err.message);
}

/* Dispatcher `i` running projection "proj" under leases of ttl and guard. */
static void open_side_ttl(fx_t *fx, int i, const char *owner, uint64_t ttl_ms, uint64_t guard_ms) {
  open_leased(fx, i, owner, ttl_ms, guard_ms);
  cqrs_error_t err;
  fx->side[i] = (side_t){fx, i};
  cqrs_projection_def_t def = {"proj", NULL, project, &fx->side[i], 0};
  if (cqrs_projection_start(fx->d[i], &def, fx->cp, &err)) fail_msg("%s", err.message);
}

static void open_side(fx_t *fx, int i, const char *owner) { open_side_ttl(fx, i, owner, 150, 50); }

/* ---- a process manager: each account opened gets a bonus credit, once ---- */

static cqrs_code_t bonus_opened(cqrs_process_t *p, void *state, const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)state;
  (void)data;
  ledger_move_cmd_t c = {{0}, 100};
  snprintf(c.id, sizeof c.id, "%s", cqrs_event_aggregate_id(e));
  return cqrs_process_send(p, "credit", &c, err);
}

static cqrs_code_t bonus_step(cqrs_process_t *p, void *state, const cqrs_step_outcome_t *o, void *data,
                              cqrs_error_t *err) {
  (void)state;
  (void)o;
  (void)data;
  (void)err;
  cqrs_process_end(p);
  return CQRS_OK;
}

static const cqrs_process_route_t bonus_routes[] = {{&ledger_opened, true, NULL, bonus_opened}, {NULL}};
static const cqrs_process_step_t bonus_steps[] = {{"credit", &ledger_credit}, {NULL, NULL}};
static const cqrs_process_type_t bonus = {.name = "bonus", .routes = bonus_routes, .steps = bonus_steps,
                                          .on_step = bonus_step};

static cqrs_code_t count_step(const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)err;
  if (cqrs_command_type(cmd) == &ledger_credit && cqrs_command_id(cmd)[0] == '~') ++*(int *)data;
  return CQRS_OK;
}
static const cqrs_middleware_t step_counter = {.command_before = count_step};

static void start_bonus(fx_t *fx, int i) {
  cqrs_error_t err;
  if (cqrs_dispatcher_use(fx->d[i], &step_counter, &fx->steps[i], &err) ||
      cqrs_process_start(fx->d[i], &bonus, NULL, fx->cp, &err))
    fail_msg("%s", err.message);
}

static void close_side(fx_t *fx, int i) {
  assert_int_equal(cqrs_dispatcher_close(fx->d[i], NULL, NULL), CQRS_OK);
  fx->d[i] = NULL;
}

static fx_t *fx_new(bool blocking) {
  fx_t *fx = calloc(1, sizeof *fx);
  fx->blocking = blocking;
  uv_loop_init(&fx->loop);
  assert_int_equal(cqrs_clock_manual_new(1700000000000LL, &fx->clock, NULL), CQRS_OK);
  fx->reg = ledger_registry();
  cqrs_memory_store_new(&fx->mem, NULL);
  ledger_fill(fx->mem, &ledger_type, "acc", 1); /* opens the account */
  fx->store = blocking ? ledger_blocking_store(fx->mem, 1) : fx->mem;
  cqrs_memory_checkpoint_store_new(&fx->cp_mem, NULL);
  fx->cp = blocking ? ledger_blocking_checkpoints(fx->cp_mem) : fx->cp_mem;
  cqrs_memory_lease_store_new_with_clock(fx->clock, &fx->tl.inner, NULL);
  fx->tl.clock = fx->clock;
  uv_mutex_init(&fx->tl.lock);
  cqrs_lease_store_new(blocking ? &tl_blocking_ops : &tl_ops, &fx->tl, &fx->leases, NULL);
  return fx;
}

static int setup(void **state) {
  *state = fx_new(false);
  return 0;
}

static int setup_blocking(void **state) {
  *state = fx_new(true);
  return 0;
}

static int setup_bonus(void **state) {
  fx_t *fx = fx_new(false);
  assert_int_equal(cqrs_registry_add_process(fx->reg, &bonus, NULL), CQRS_OK);
  *state = fx;
  return 0;
}

static int setup_bonus_blocking(void **state) {
  fx_t *fx = fx_new(true);
  assert_int_equal(cqrs_registry_add_process(fx->reg, &bonus, NULL), CQRS_OK);
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  fx_t *fx = *state;
  for (int i = 0; i < 2; i++)
    if (fx->d[i]) close_side(fx, i);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&fx->loop), 0);
  for (int i = 0; i < 2; i++) cqrs_metrics_destroy(fx->metrics[i]);
  cqrs_lease_store_destroy(fx->leases);
  cqrs_lease_store_destroy(fx->tl.inner);
  uv_mutex_destroy(&fx->tl.lock);
  if (fx->cp != fx->cp_mem) cqrs_checkpoint_store_destroy(fx->cp);
  cqrs_checkpoint_store_destroy(fx->cp_mem);
  if (fx->store != fx->mem) cqrs_store_destroy(fx->store);
  cqrs_store_destroy(fx->mem);
  cqrs_registry_destroy(fx->reg);
  cqrs_clock_destroy(fx->clock);
  free(fx);
  return 0;
}

/* Runs the loop until nothing is in flight: commands, pool jobs, lease
 * calls (the framework's timers wait for the clock and hold nothing). */
static void settle(fx_t *fx) { uv_run(&fx->loop, UV_RUN_DEFAULT); }

/* Moves the clock `ms` forward in steps of STEP_MS, settling after each:
 * polls (10 ms) and lease ticks (ttl/6) fire on time, and what they start
 * completes before time moves on. */
#define STEP_MS 5
static void advance(fx_t *fx, uint64_t ms) {
  settle(fx);
  for (uint64_t done = 0; done < ms; done += STEP_MS) {
    assert_int_equal(cqrs_clock_advance(fx->clock, ms - done < STEP_MS ? ms - done : STEP_MS), CQRS_OK);
    settle(fx);
  }
}

static uint64_t clock_ms(fx_t *fx) { return cqrs_clock_monotonic_ms(fx->clock); }

/* The clock's time a waiting loop may take before the test fails: far more
 * than any term here, so reaching it means the awaited never comes. */
#define PATIENCE_MS 20000

static void on_done(const cqrs_result_t *r, void *data) {
  assert_int_equal(r->error.code, CQRS_OK);
  ((fx_t *)data)->done++;
}

static void credit(fx_t *fx, int via, int n) {
  for (int i = 0; i < n; i++)
    assert_int_equal(cqrs_dispatcher_send(fx->d[via], ledger_credit_new("acc", 1), on_done, fx), CQRS_OK);
}

static int64_t head(fx_t *fx) {
  int64_t h;
  assert_int_equal(cqrs_store_head(fx->mem, &h, NULL), CQRS_OK);
  return h;
}

static bool owns(fx_t *fx, int i) { return fx->d[i] && cqrs_projection_owned(fx->d[i], "proj"); }

/* The cqrs_leases_held gauge of dispatcher `i`. */
static double leases_held(fx_t *fx, int i) {
  cqrs_metrics_snapshot_t *snap;
  assert_int_equal(cqrs_metrics_snapshot(fx->metrics[i], &snap, NULL), CQRS_OK);
  double v = cqrs_metrics_snapshot_value(snap, "cqrs_leases_held", NULL);
  cqrs_metrics_snapshot_destroy(snap);
  return v;
}

/* Runs the loop, advancing the clock, until `i` owns the projection and it
 * has handled the head. */
static void run_until_projected(fx_t *fx, int i, int want_done) {
  uint64_t until = clock_ms(fx) + PATIENCE_MS;
  settle(fx);
  while (fx->done < want_done || !owns(fx, i) || cqrs_projection_position(fx->d[i], "proj") < head(fx) ||
         fx->seen.n < head(fx)) {
    if (clock_ms(fx) > until)
      fail_msg("dispatcher %d: owns %d, position %lld, head %lld, seen %lld", i, owns(fx, i),
               (long long)cqrs_projection_position(fx->d[i], "proj"), (long long)head(fx), (long long)fx->seen.n);
    advance(fx, STEP_MS);
  }
}

static void assert_each_once(fx_t *fx) {
  int64_t h = head(fx);
  assert_true(h < MAX_POS);
  for (int64_t p = 1; p <= h; p++) {
    if (fx->seen.count[p] != 1) fail_msg("position %lld projected %d times", (long long)p, fx->seen.count[p]);
  }
  assert_int_equal(fx->seen.n, h);
}

/* Runs the loop until one of the two owns the projection and has handled
 * the head; returns which. (With a blocking lease store the two race for
 * it at start.) */
static int run_until_owned(fx_t *fx, int want_done) {
  uint64_t until = clock_ms(fx) + PATIENCE_MS;
  settle(fx);
  while (!owns(fx, 0) && !owns(fx, 1) && clock_ms(fx) < until) advance(fx, STEP_MS);
  int i = owns(fx, 0) ? 0 : 1;
  run_until_projected(fx, i, want_done);
  return i;
}

/* One of two dispatchers runs the projection; the other takes over when
 * it closes (which releases the lease), from the checkpoint. */
static void test_takeover_on_close(void **state) {
  fx_t *fx = *state;
  open_side(fx, 0, "a");
  open_side(fx, 1, "b");
  credit(fx, 0, 20);
  credit(fx, 1, 10);
  int first = run_until_owned(fx, 30), other = !first;
  assert_false(owns(fx, other));
  assert_int_equal(fx->seen.by[other], 0);
  assert_int_equal(fx->seen.by[first], 31);
  assert_true(leases_held(fx, first) == 1.0 && leases_held(fx, other) == 0.0);
  /* What `first` closes on it still delivers; then the other takes over. */
  credit(fx, other, 5);
  close_side(fx, first);
  run_until_projected(fx, other, 35);
  int64_t by_first = fx->seen.by[first];
  credit(fx, other, 15);
  run_until_projected(fx, other, 50);
  assert_each_once(fx);
  assert_int_equal(fx->seen.by[first], by_first);
  assert_true(fx->seen.by[other] >= 15);
  assert_int_equal(cqrs_dispatcher_dead_letter_count(fx->d[other]), 0);
  assert_true(leases_held(fx, other) == 1.0);
}

/* The owner stops renewing (its lease store is out of reach): it stops at
 * its deadline, and the other takes over once the lease has expired, while
 * commands keep coming; at no time do both own it. */
#define TTL_MS 150
#define GUARD_MS 50
static void test_takeover_when_renewals_stop(void **state) {
  fx_t *fx = *state;
  tl_set(&fx->tl, fx->tl.watch, "proj");
  open_side(fx, 0, "a");
  open_side(fx, 1, "b");
  credit(fx, 0, 10);
  int first = run_until_owned(fx, 10), other = !first;
  tl_set(&fx->tl, fx->tl.mute, first ? "b" : "a");
  /* Its last renewal that the store took: its deadline is ttl - guard
   * after it, the store's term ttl after it. */
  uint64_t renewed = tl_watch_ok_ms(&fx->tl), stopped = 0, taken = 0;
  /* Commands for 1.2 s of the clock, several terms. */
  for (int round = 0; round < 60; round++) {
    credit(fx, round % 2, 2);
    for (int k = 0; k < 4; k++) {
      advance(fx, STEP_MS);
      if (owns(fx, 0) && owns(fx, 1)) fail_msg("both own the projection at %llu", (unsigned long long)clock_ms(fx));
      if (!stopped && !owns(fx, first)) stopped = clock_ms(fx);
      if (!taken && owns(fx, other)) taken = clock_ms(fx);
    }
  }
  run_until_projected(fx, other, 130);
  assert_false(owns(fx, first));
  assert_true(cqrs_projection_live(fx->d[other], "proj"));
  assert_true(fx->seen.by[other] > 0);
  /* It stopped once its deadline had passed, at its next tick at the
   * latest; the other took over once the store's term had run out, at its
   * next tick at the latest (ticks every ttl/6). */
  if (stopped < renewed + TTL_MS - GUARD_MS || stopped > renewed + TTL_MS - GUARD_MS + TTL_MS / 6 + STEP_MS ||
      taken < renewed + TTL_MS || taken > renewed + TTL_MS + TTL_MS / 6 + STEP_MS)
    fail_msg("renewed at %llu: stopped %+lld ms after, taken over %+lld ms after", (unsigned long long)renewed,
             (long long)(stopped - renewed), (long long)(taken - renewed));
  assert_each_once(fx);
  /* It lost the lease, and gave up none of its events to the dead letters. */
  assert_int_equal(cqrs_dispatcher_dead_letter_count(fx->d[0]), 0);
  assert_int_equal(cqrs_dispatcher_dead_letter_count(fx->d[1]), 0);
  /* Reachable again: it stays a standby while the other renews. */
  tl_set(&fx->tl, fx->tl.mute, "");
  credit(fx, first, 5);
  run_until_projected(fx, other, 135);
  advance(fx, 3 * TTL_MS);
  assert_false(owns(fx, first));
  assert_true(owns(fx, other));
  assert_each_once(fx);
}

/* A checkpoint write refused because a newer holder has written: the
 * owner stops delivering at once, without dead letters. */
static void test_fenced_checkpoint_stops_the_owner(void **state) {
  fx_t *fx = *state;
  open_side(fx, 0, "a");
  credit(fx, 0, 5);
  run_until_projected(fx, 0, 5);
  /* Another process takes the lease (as if a's had run out while a was
   * paused) and writes its checkpoint; a has not noticed yet. */
  int64_t z;
  assert_int_equal(cqrs_lease_store_release(fx->tl.inner, "proj", "a", 1, NULL), CQRS_OK);
  assert_int_equal(cqrs_lease_store_acquire(fx->tl.inner, "proj", "z", 60000, &z, NULL), CQRS_OK);
  assert_int_equal(z, 2);
  assert_int_equal(cqrs_checkpoint_store_save_fenced(fx->cp_mem, "proj", head(fx), z, NULL), CQRS_OK);
  assert_true(owns(fx, 0));
  credit(fx, 0, 3);
  uint64_t until = clock_ms(fx) + PATIENCE_MS;
  settle(fx);
  while ((owns(fx, 0) || fx->done < 8) && clock_ms(fx) < until) advance(fx, STEP_MS);
  assert_false(owns(fx, 0));
  int64_t delivered = fx->seen.n;
  credit(fx, 0, 3);
  advance(fx, 300);
  assert_int_equal(fx->done, 11);
  assert_int_equal(fx->seen.n, delivered); /* a stays a standby: z holds it */
  assert_false(owns(fx, 0));
  assert_int_equal(cqrs_dispatcher_dead_letter_count(fx->d[0]), 0);
  int64_t pos;
  assert_int_equal(cqrs_checkpoint_store_load(fx->cp_mem, "proj", &pos, NULL), CQRS_OK);
  assert_int_equal(pos, 6); /* z's */
}

static bool owns_bonus(fx_t *fx, int i) { return fx->d[i] && cqrs_projection_owned(fx->d[i], "process:bonus"); }

static int64_t balance(fx_t *fx, const char *id) {
  cqrs_aggregate_t *agg;
  if (cqrs_repository_load(fx->mem, &ledger_type, id, &agg, NULL)) return -1;
  int64_t b = ((const ledger_state_t *)cqrs_aggregate_state_const(agg))->balance;
  cqrs_aggregate_destroy(agg);
  return b;
}

/* Opens accounts b<from>..b<to - 1> through dispatcher `via` and waits until
 * each has had its bonus. */
static void open_and_wait(fx_t *fx, int via, int from, int to) {
  char id[16];
  for (int i = from; i < to; i++) {
    snprintf(id, sizeof id, "b%d", i);
    assert_int_equal(cqrs_dispatcher_send(fx->d[via], ledger_open_new(id, "x"), on_done, fx), CQRS_OK);
  }
  uint64_t until = clock_ms(fx) + PATIENCE_MS;
  settle(fx);
  for (int i = from; i < to; i++) {
    snprintf(id, sizeof id, "b%d", i);
    while (balance(fx, id) != 100) {
      if (clock_ms(fx) > until) fail_msg("%s has %lld", id, (long long)balance(fx, id));
      advance(fx, STEP_MS);
    }
  }
}

/* Closes its dispatcher when the first step it ran completes, once armed:
 * that step's outcome, and those of the others it has out, go unrecorded. */
typedef struct closer {
  fx_t *fx;
  int side;
  bool armed;
} closer_t;

static void close_on_step(const cqrs_command_t *cmd, const cqrs_result_t *r, const cqrs_command_stats_t *st,
                          void *data) {
  (void)r, (void)st;
  closer_t *c = data;
  if (!c->armed || cqrs_command_type(cmd) != &ledger_credit || cqrs_command_id(cmd)[0] != '~') return;
  c->armed = false;
  close_side(c->fx, c->side);
}
static const cqrs_middleware_t step_closer = {.command_after = close_on_step};

/* The process manager runs where its lease is: only that dispatcher sends
 * steps; when it closes with steps out the other takes over, sends again
 * those whose outcome was not recorded, and every instance has its step's
 * effect once. */
static void test_process_manager_runs_at_its_owner(void **state) {
  fx_t *fx = *state;
  closer_t closer[2];
  cqrs_error_t err;
  for (int i = 0; i < 2; i++) {
    closer[i] = (closer_t){fx, i, false};
    open_side(fx, i, i ? "b" : "a");
    if (cqrs_dispatcher_use(fx->d[i], &step_closer, &closer[i], &err)) fail_msg("%s", err.message);
    start_bonus(fx, i);
  }
  uint64_t until = clock_ms(fx) + PATIENCE_MS;
  settle(fx);
  while (!owns_bonus(fx, 0) && !owns_bonus(fx, 1) && clock_ms(fx) < until) advance(fx, STEP_MS);
  int first = owns_bonus(fx, 0) ? 0 : 1, other = !first;
  assert_true(owns_bonus(fx, first));
  open_and_wait(fx, other, 0, 10);
  assert_int_equal(fx->steps[first], 11); /* and "acc", opened before */
  assert_int_equal(fx->steps[other], 0);
  assert_false(owns_bonus(fx, other));
  /* The first closes as its first step for b10..b19 completes. */
  closer[first].armed = true;
  open_and_wait(fx, other, 10, 20);
  assert_null(fx->d[first]);
  assert_true(owns_bonus(fx, other));
  /* The first ran one step at least before it closed, and recorded the
   * outcome of none: the other sent each instance's step once (again under
   * the same id for those the first had run, which changes nothing: the
   * balances below). */
  assert_true(fx->steps[first] >= 12 && fx->steps[first] <= 21);
  assert_int_equal(fx->steps[other], 10);
  for (int i = 0; i < 20; i++) {
    char id[16];
    snprintf(id, sizeof id, "b%d", i);
    assert_int_equal(balance(fx, id), 100);
  }
  /* Each ends once its step's outcome is recorded. */
  until = clock_ms(fx) + PATIENCE_MS;
  while (cqrs_process_open_count(fx->d[other], "bonus") && clock_ms(fx) < until) advance(fx, STEP_MS);
  assert_int_equal(cqrs_process_open_count(fx->d[other], "bonus"), 0);
}

/* ---- acting past the lease's deadline ---- */

static void on_closed(void *data) { *(bool *)data = true; }

/* Closes dispatcher `i` and runs the loop until it has: whatever it had in
 * flight has finished. */
static void close_and_wait(fx_t *fx, int i) {
  bool closed = false;
  assert_int_equal(cqrs_dispatcher_close(fx->d[i], on_closed, &closed), CQRS_OK);
  fx->d[i] = NULL;
  settle(fx);
  assert_true(closed);
}

/* Runs the loop until `d` no longer holds lease `name`. */
static void run_until_lost(fx_t *fx, cqrs_dispatcher_t *d, const char *name) {
  uint64_t until = clock_ms(fx) + PATIENCE_MS;
  settle(fx);
  while (cqrs_projection_owned(d, name) && clock_ms(fx) < until) advance(fx, STEP_MS);
  assert_false(cqrs_projection_owned(d, name));
}

/* A blocking projection under a lease whose deadline comes SLOW_TTL_MS -
 * SLOW_GUARD_MS after it is acquired. Its handler waits for the test before
 * each of the first SLOW_PAST deliveries; the deadline passes while the
 * last of those is under way. */
#define SLOW_EVENTS 30
#define SLOW_PAST 3
#define SLOW_TTL_MS 600
#define SLOW_GUARD_MS 200

typedef struct slow {
  cqrs_clock_t *clock;
  uv_sem_t started, go;
  _Atomic bool free_run; /* past the test's deliveries: no more waiting (a delivery then is the failure) */
  uv_mutex_t lock;
  int n;
  uint64_t at[SLOW_EVENTS]; /* the clock's time when each delivery started */
} slow_t;

static cqrs_code_t slow_project(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)e;
  (void)err;
  slow_t *s = data;
  uint64_t at = cqrs_clock_monotonic_ms(s->clock);
  uv_mutex_lock(&s->lock);
  if (s->n < SLOW_EVENTS) s->at[s->n] = at;
  s->n++;
  uv_mutex_unlock(&s->lock);
  if (!atomic_load(&s->free_run)) {
    uv_sem_post(&s->started);
    uv_sem_wait(&s->go);
  }
  return CQRS_OK;
}

/* The lease store goes away just after the projection took its lease: the
 * batch on the pool (all the events) stops at the deadline by itself,
 * though the loop has not noticed the deadline yet (it cannot stop a batch
 * in flight): the delivery under way when it passes finishes, and no other
 * starts. (A batch used to run to its end, past the deadline, beside the
 * next holder.) */
static void test_blocking_batch_stops_at_the_deadline(void **state) {
  fx_t *fx = *state;
  ledger_fill(fx->mem, &ledger_type, "more", SLOW_EVENTS - 1);
  assert_int_equal(head(fx), SLOW_EVENTS);
  open_leased(fx, 0, "a", SLOW_TTL_MS, SLOW_GUARD_MS);
  tl_set(&fx->tl, fx->tl.watch, "slow");
  slow_t slow = {.clock = fx->clock, .n = 0};
  assert_int_equal(uv_mutex_init(&slow.lock), 0);
  assert_int_equal(uv_sem_init(&slow.started, 0), 0);
  assert_int_equal(uv_sem_init(&slow.go, 0), 0);
  cqrs_error_t err;
  cqrs_projection_def_t def = {"slow", NULL, slow_project, &slow, CQRS_SUBSCRIBE_BLOCKING};
  if (cqrs_projection_start(fx->d[0], &def, fx->cp, &err)) fail_msg("%s", err.message);
  assert_true(cqrs_projection_owned(fx->d[0], "slow")); /* a store that does not block answers at once */
  tl_set(&fx->tl, fx->tl.mute, "a");
  uint64_t deadline = tl_watch_ok_ms(&fx->tl) + SLOW_TTL_MS - SLOW_GUARD_MS; /* the holder's */
  /* The batch is on the pool (its catch-up was inline): let its first
   * deliveries through, and move the clock to the deadline during the last. */
  for (int i = 0; i < SLOW_PAST; i++) {
    uv_sem_wait(&slow.started);
    if (i == SLOW_PAST - 1) {
      assert_int_equal(cqrs_clock_advance(fx->clock, deadline - clock_ms(fx)), CQRS_OK);
      atomic_store(&slow.free_run, true);
    }
    uv_sem_post(&slow.go);
  }
  run_until_lost(fx, fx->d[0], "slow");
  close_and_wait(fx, 0);
  uv_mutex_lock(&slow.lock);
  int n = slow.n;
  uv_mutex_unlock(&slow.lock);
  assert_int_equal(n, SLOW_PAST);
  for (int i = 0; i < n; i++) {
    if (slow.at[i] >= deadline)
      fail_msg("delivery %d started %llu ms after the deadline", i, (unsigned long long)(slow.at[i] - deadline));
  }
  uv_sem_destroy(&slow.go);
  uv_sem_destroy(&slow.started);
  uv_mutex_destroy(&slow.lock);
}

/* A process manager under a lease of PM_TTL_MS whose store goes away while
 * its first input (the "acc" opened before it started) is on its way: that
 * input comes back past the lease's deadline, and before the lease's tick
 * has noticed (the loop was busy), with a step to send. It sends none; the
 * next holder does. (It used to send it: held was all it asked.) */
#define PM_TTL_MS 1200
#define PM_GUARD_MS 400

typedef struct stall {
  fx_t *fx;
  bool stalled;
  bool held_after; /* the lease still held when the stall ended: its tick had not run */
} stall_t;

/* The first input of the process manager mutes the store and holds the
 * loop until its holder's deadline has come: the clock moves there while
 * the loop is inside this call, so the lease's tick has not run. */
static cqrs_code_t stall_input(const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)err;
  stall_t *st = data;
  test_leases_t *tl = &st->fx->tl;
  if (st->stalled || strcmp(cqrs_command_type(cmd)->name, "cqrs.process.input")) return CQRS_OK;
  st->stalled = true;
  tl_set(tl, tl->mute, "a");
  uint64_t deadline = tl_watch_ok_ms(tl) + PM_TTL_MS - PM_GUARD_MS;
  assert_int_equal(cqrs_clock_advance(st->fx->clock, deadline - clock_ms(st->fx)), CQRS_OK);
  st->held_after = cqrs_projection_owned(st->fx->d[0], "process:bonus");
  return CQRS_OK;
}

static const cqrs_middleware_t input_staller = {.command_before = stall_input};

static void test_process_manager_stops_at_the_deadline(void **state) {
  fx_t *fx = *state;
  int64_t before = balance(fx, "acc");
  open_leased(fx, 0, "a", PM_TTL_MS, PM_GUARD_MS);
  tl_set(&fx->tl, fx->tl.watch, "process:bonus");
  stall_t st = {fx, false, false};
  cqrs_error_t err;
  if (cqrs_dispatcher_use(fx->d[0], &input_staller, &st, &err)) fail_msg("%s", err.message);
  start_bonus(fx, 0);
  assert_true(owns_bonus(fx, 0));
  run_until_lost(fx, fx->d[0], "process:bonus");
  assert_true(st.stalled);
  assert_true(st.held_after);
  /* Anything it sent before it noticed has run by the time it has closed. */
  close_and_wait(fx, 0);
  assert_int_equal(fx->steps[0], 0);
  assert_int_equal(balance(fx, "acc"), before);
  /* The step was due: the next holder sends it, once. */
  open_leased(fx, 1, "b", PM_TTL_MS, PM_GUARD_MS);
  start_bonus(fx, 1);
  uint64_t until = clock_ms(fx) + PATIENCE_MS;
  settle(fx);
  while (balance(fx, "acc") == before && clock_ms(fx) < until) advance(fx, STEP_MS);
  assert_int_equal(balance(fx, "acc"), before + 100);
  assert_int_equal(fx->steps[1], 1);
}

static cqrs_code_t uf_load(void *impl, const char *name, int64_t *position, cqrs_error_t *err) {
  return cqrs_checkpoint_store_load(impl, name, position, err);
}
static cqrs_code_t uf_save(void *impl, const char *name, int64_t position, cqrs_error_t *err) {
  return cqrs_checkpoint_store_save(impl, name, position, err);
}

static void test_lease_rules(void **state) {
  fx_t *fx = *state;
  cqrs_error_t err;
  cqrs_dispatcher_t *d;
  assert_int_equal(cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, NULL, &d, &err), CQRS_OK);
  cqrs_lease_options_t lo;
  cqrs_lease_options_init(&lo);
  assert_int_equal(lo.ttl_ms, 3000);
  assert_int_equal(cqrs_dispatcher_set_leases(d, &lo, &err), CQRS_EINVAL); /* no store */
  lo.leases = fx->leases;
  assert_int_equal(cqrs_dispatcher_set_leases(d, &lo, &err), CQRS_EINVAL); /* no owner */
  lo.owner = "a";
  lo.guard_ms = lo.ttl_ms;
  assert_int_equal(cqrs_dispatcher_set_leases(d, &lo, &err), CQRS_EINVAL);
  lo.guard_ms = 100;
  assert_int_equal(cqrs_dispatcher_set_leases(NULL, &lo, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_dispatcher_set_leases(d, &lo, &err), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_set_leases(d, &lo, &err), CQRS_ESTATE);
  /* Under leases, checkpoints must fence their writes. */
  static const cqrs_checkpoint_ops_t unfenced_ops = {.blocking = false, .load = uf_load, .save = uf_save,
                                                     .destroy = NULL, .save_fenced = NULL};
  cqrs_checkpoint_store_t *unfenced;
  assert_int_equal(cqrs_checkpoint_store_new(&unfenced_ops, fx->cp_mem, &unfenced, &err), CQRS_OK);
  side_t side = {fx, 0};
  cqrs_projection_def_t def = {"proj", NULL, project, &side, 0};
  assert_int_equal(cqrs_projection_start(d, &def, unfenced, &err), CQRS_EINVAL);
  assert_non_null(strstr(err.message, "fence"));
  cqrs_checkpoint_store_destroy(unfenced);
  assert_int_equal(cqrs_projection_start(d, &def, fx->cp, &err), CQRS_OK);
  assert_true(cqrs_projection_owned(d, "proj") || fx->blocking);
  assert_false(cqrs_projection_owned(d, "nothing"));
  assert_false(cqrs_projection_owned(NULL, "proj"));
  /* Leases come before projections. */
  cqrs_dispatcher_t *d2;
  assert_int_equal(cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, NULL, &d2, &err), CQRS_OK);
  cqrs_projection_def_t def2 = {"proj2", NULL, project, &side, 0};
  assert_int_equal(cqrs_projection_start(d2, &def2, fx->cp, &err), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_set_leases(d2, &lo, &err), CQRS_ESTATE);
  assert_int_equal(cqrs_dispatcher_close(d2, NULL, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_close(d, NULL, NULL), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  /* Closing released it. */
  int64_t token;
  assert_int_equal(cqrs_lease_store_acquire(fx->leases, "proj", "z", 1000, &token, &err), CQRS_OK);
  assert_true(token > 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_memory_leases),
      cmocka_unit_test(test_fenced_checkpoints),
      cmocka_unit_test_setup_teardown(test_takeover_on_close, setup, teardown),
      cmocka_unit_test_setup_teardown(test_takeover_on_close, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_takeover_when_renewals_stop, setup, teardown),
      cmocka_unit_test_setup_teardown(test_takeover_when_renewals_stop, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_fenced_checkpoint_stops_the_owner, setup, teardown),
      cmocka_unit_test_setup_teardown(test_fenced_checkpoint_stops_the_owner, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_process_manager_runs_at_its_owner, setup_bonus, teardown),
      cmocka_unit_test_setup_teardown(test_process_manager_runs_at_its_owner, setup_bonus_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_blocking_batch_stops_at_the_deadline, setup, teardown),
      cmocka_unit_test_setup_teardown(test_process_manager_stops_at_the_deadline, setup_bonus, teardown),
      cmocka_unit_test_setup_teardown(test_lease_rules, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lease_rules, setup_blocking, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
