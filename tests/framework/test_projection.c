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
#include "work_fault.h"

#define MAX_POS 4096

typedef struct seen {
  /* Written by a blocking projection's handler on the pool, read by the
   * test on the loop while deliveries go on: atomic, and order[i] written
   * before n counts it. */
  _Atomic int count[MAX_POS];
  int64_t order[MAX_POS];
  _Atomic size_t n;
  int fail_at; /* position to fail on forever; 0: none */
} seen_t;

static cqrs_code_t watch(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  seen_t *s = data;
  if (s->fail_at && e->position == s->fail_at) return cqrs_error_set(err, CQRS_EHANDLER, "cannot project %lld", (long long)e->position);
  if (e->position < MAX_POS) s->count[e->position]++;
  size_t n = atomic_load(&s->n);
  if (n < MAX_POS) {
    s->order[n] = e->position;
    atomic_store(&s->n, n + 1);
  }
  return CQRS_OK;
}

typedef struct fx {
  uv_loop_t loop;
  cqrs_clock_t *clock; /* manual: back-offs, retries and wait time-outs follow it */
  cqrs_registry_t *reg;
  cqrs_store_t *mem, *store; /* store: mem, or a blocking view of it */
  cqrs_checkpoint_store_t *cp_mem, *cp;
  cqrs_dispatcher_t *d;
  int done;
} fx_t;

static void open_dispatcher(fx_t *fx) {
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.retry_base_ms = 1;
  o.clock = fx->clock;
  cqrs_error_t err;
  if (cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, &o, &fx->d, &err)) fail_msg("%s", err.message);
  assert_int_equal(ledger_handlers(fx->d, NULL, 0, NULL), CQRS_OK);
}

static void run_idle(fx_t *fx) { ledger_run_idle(&fx->loop, fx->clock); }

/* One turn of the loop; when nothing is left for it, the clock moves to
 * the next timer that keeps the loop running. */
static void step(fx_t *fx) {
  uint64_t in;
  if (!uv_run(&fx->loop, UV_RUN_ONCE) && cqrs_clock_next_due(fx->clock, &in))
    assert_int_equal(cqrs_clock_advance(fx->clock, in), CQRS_OK);
}

static void close_dispatcher(fx_t *fx) {
  assert_int_equal(cqrs_dispatcher_close(fx->d, NULL, NULL), CQRS_OK);
  run_idle(fx);
  fx->d = NULL;
}

static fx_t *fx_new(bool blocking) {
  fx_t *fx = calloc(1, sizeof *fx);
  uv_loop_init(&fx->loop);
  assert_int_equal(cqrs_clock_manual_new(1700000000000LL, &fx->clock, NULL), CQRS_OK);
  fx->reg = ledger_registry();
  cqrs_memory_store_new(&fx->mem, NULL);
  fx->store = blocking ? ledger_blocking_store(fx->mem, 2) : fx->mem;
  cqrs_memory_checkpoint_store_new(&fx->cp_mem, NULL);
  fx->cp = blocking ? ledger_blocking_checkpoints(fx->cp_mem) : fx->cp_mem;
  open_dispatcher(fx);
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

static int teardown(void **state) {
  fx_t *fx = *state;
  if (fx->d) close_dispatcher(fx);
  assert_int_equal(uv_loop_close(&fx->loop), 0);
  if (fx->cp != fx->cp_mem) cqrs_checkpoint_store_destroy(fx->cp);
  cqrs_checkpoint_store_destroy(fx->cp_mem);
  if (fx->store != fx->mem) cqrs_store_destroy(fx->store);
  cqrs_store_destroy(fx->mem);
  cqrs_registry_destroy(fx->reg);
  cqrs_clock_destroy(fx->clock);
  free(fx);
  return 0;
}

static void on_done(const cqrs_result_t *r, void *data) {
  assert_int_equal(r->error.code, CQRS_OK);
  ((fx_t *)data)->done++;
}

static void credit(fx_t *fx, const char *id, int n) {
  for (int i = 0; i < n; i++)
    assert_int_equal(cqrs_dispatcher_send(fx->d, ledger_credit_new(id, 1), on_done, fx), CQRS_OK);
}

static int64_t head(fx_t *fx) {
  int64_t h;
  assert_int_equal(cqrs_store_head(fx->mem, &h, NULL), CQRS_OK);
  return h;
}

/* Every position in (from, to] seen once, in order, and no other. */
static void assert_range_once(const seen_t *s, int64_t from, int64_t h) {
  assert_true(h < MAX_POS);
  for (int64_t p = 1; p <= h; p++) {
    int want = p > from ? 1 : 0;
    if (s->count[p] != want) fail_msg("position %lld seen %d times, want %d", (long long)p, s->count[p], want);
  }
  assert_int_equal(s->n, (size_t)(h - from));
  for (size_t i = 1; i < s->n; i++) assert_true(s->order[i] > s->order[i - 1]);
}

static void assert_exactly_once(fx_t *fx, const seen_t *s, int64_t from) { assert_range_once(s, from, head(fx)); }

static void start(fx_t *fx, const char *name, seen_t *s, unsigned flags) {
  cqrs_projection_def_t def = {name, NULL, watch, s, flags};
  cqrs_error_t err;
  if (cqrs_projection_start(fx->d, &def, fx->cp, &err)) fail_msg("%s", err.message);
}

static void test_catch_up_then_live(void **state) {
  fx_t *fx = *state;
  ledger_fill(fx->mem, &ledger_type, "a", 300);
  ledger_fill(fx->mem, &ledger_type, "b", 400);
  assert_int_equal(cqrs_checkpoint_store_save(fx->cp, "proj", 100, NULL), CQRS_OK);
  seen_t *s = calloc(1, sizeof *s);
  start(fx, "proj", s, 0);
  credit(fx, "a", 50); /* live, perhaps while still catching up */
  while (fx->done < 50 || !cqrs_projection_live(fx->d, "proj") || cqrs_projection_position(fx->d, "proj") < head(fx))
    step(fx);
  assert_exactly_once(fx, s, 100);
  credit(fx, "b", 20);
  run_idle(fx);
  assert_int_equal(fx->done, 70);
  assert_exactly_once(fx, s, 100);
  int64_t saved;
  close_dispatcher(fx);
  assert_int_equal(cqrs_checkpoint_store_load(fx->cp_mem, "proj", &saved, NULL), CQRS_OK);
  assert_int_equal(saved, head(fx));
  free(s);
}

static void test_restart_resumes_from_checkpoint(void **state) {
  fx_t *fx = *state;
  seen_t *first = calloc(1, sizeof *first), *second = calloc(1, sizeof *second);
  ledger_fill(fx->mem, &ledger_type, "a", 1); /* opens it */
  start(fx, "proj", first, 0);
  credit(fx, "a", 30);
  while (fx->done < 30 || cqrs_projection_position(fx->d, "proj") < head(fx)) step(fx);
  close_dispatcher(fx);
  int64_t stop = head(fx);
  /* While no projection runs, others write. */
  ledger_fill(fx->mem, &ledger_type, "z", 40);
  open_dispatcher(fx);
  start(fx, "proj", second, 0);
  credit(fx, "a", 5);
  while (fx->done < 35 || !cqrs_projection_live(fx->d, "proj") || cqrs_projection_position(fx->d, "proj") < head(fx))
    step(fx);
  assert_range_once(first, 0, stop);
  assert_exactly_once(fx, second, stop);
  free(first);
  free(second);
}

/* Memory checkpoints that count their saves. */
typedef struct counted_cp {
  cqrs_checkpoint_store_t *inner;
  int saves;
} counted_cp_t;

static cqrs_code_t cc_load(void *impl, const char *name, int64_t *position, cqrs_error_t *err) {
  return cqrs_checkpoint_store_load(((counted_cp_t *)impl)->inner, name, position, err);
}

static cqrs_code_t cc_save(void *impl, const char *name, int64_t position, cqrs_error_t *err) {
  counted_cp_t *c = impl;
  c->saves++;
  return cqrs_checkpoint_store_save(c->inner, name, position, err);
}

/* The checkpoint is saved once per batch the loop ran, not per event, and
 * is at the head when the loop returns, without closing. */
static void test_checkpoint_saved_per_batch(void **state) {
  fx_t *fx = *state;
  static const cqrs_checkpoint_ops_t ops = {.blocking = false, .load = cc_load, .save = cc_save, .destroy = NULL,
                                            .save_fenced = NULL};
  counted_cp_t cc = {fx->cp_mem, 0};
  cqrs_checkpoint_store_t *cp;
  assert_int_equal(cqrs_checkpoint_store_new(&ops, &cc, &cp, NULL), CQRS_OK);
  ledger_fill(fx->mem, &ledger_type, "a", 1);
  seen_t *s = calloc(1, sizeof *s);
  cqrs_projection_def_t def = {"proj", NULL, watch, s, 0};
  assert_int_equal(cqrs_projection_start(fx->d, &def, cp, NULL), CQRS_OK);
  run_idle(fx);
  int64_t saved = 0;
  cc.saves = 0;
  credit(fx, "a", 200);
  run_idle(fx);
  assert_int_equal(fx->done, 200);
  assert_exactly_once(fx, s, 0);
  assert_int_equal(cqrs_checkpoint_store_load(fx->cp_mem, "proj", &saved, NULL), CQRS_OK);
  assert_int_equal(saved, head(fx));
  if (cc.saves > 2) fail_msg("%d checkpoint saves for one batch of 200 commands", cc.saves);
  credit(fx, "a", 1);
  run_idle(fx);
  assert_int_equal(cqrs_checkpoint_store_load(fx->cp_mem, "proj", &saved, NULL), CQRS_OK);
  assert_int_equal(saved, head(fx));
  close_dispatcher(fx);
  cqrs_checkpoint_store_destroy(cp);
  free(s);
}

static void test_failing_projection_dead_letters_and_moves_on(void **state) {
  fx_t *fx = *state;
  ledger_fill(fx->mem, &ledger_type, "a", 10);
  seen_t *s = calloc(1, sizeof *s);
  s->fail_at = 4;
  start(fx, "proj", s, 0);
  run_idle(fx);
  while (cqrs_projection_position(fx->d, "proj") < 10) step(fx);
  assert_int_equal(s->n, 9);
  assert_int_equal(s->count[4], 0);
  assert_int_equal(cqrs_dispatcher_dead_letter_count(fx->d), 1);
  free(s);
}

/* ---- a poison event set aside ---- */

typedef struct poisoned {
  int letters;
  int64_t position;
  char message[CQRS_MESSAGE_MAX];
  unsigned attempts;
  int64_t first_failed_at;
  bool later_seen; /* had the event behind it in its stream been projected when it was dead-lettered */
  seen_t *seen;
} poisoned_t;

static void poison_sink(const cqrs_dead_letter_t *dl, void *data) {
  poisoned_t *p = data;
  assert_string_equal(dl->subscriber, "proj");
  p->letters++;
  p->position = dl->event->position;
  p->attempts = dl->attempts;
  p->first_failed_at = dl->first_failed_at;
  snprintf(p->message, sizeof p->message, "%s", dl->error->message);
  p->later_seen = p->seen->count[6] > 0;
}

static void guard_cb(uv_timer_t *t) { *(bool *)t->data = true; }

/* A projection whose handler fails on one event (5, the second of stream
 * b) with a back-off of a minute: the events of the other streams after it
 * are projected at once, without waiting for its retry rounds; the one
 * behind it in its own stream (6) waits for it, and the checkpoint stays
 * before it. Closing cuts the back-off short: it ends in the dead letters
 * after its attempts, then 6 is projected and the checkpoint reaches the
 * head. */
static void test_poison_event_is_set_aside(void **state) {
  fx_t *fx = *state;
  close_dispatcher(fx);
  seen_t *s = calloc(1, sizeof *s);
  poisoned_t p = {.seen = s};
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.retry_base_ms = 60000;
  o.dead_letter_info = poison_sink;
  o.dead_letter_data = &p;
  cqrs_error_t err;
  if (cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, &o, &fx->d, &err)) fail_msg("%s", err.message);
  ledger_fill(fx->mem, &ledger_type, "a", 3); /* 1..3 */
  ledger_fill(fx->mem, &ledger_type, "b", 3); /* 4..6 */
  ledger_fill(fx->mem, &ledger_type, "c", 3); /* 7..9 */
  s->fail_at = 5;
  bool timeout = false;
  uv_timer_t guard; /* fails the test rather than waiting out the back-off */
  uv_timer_init(&fx->loop, &guard);
  guard.data = &timeout;
  uv_timer_start(&guard, guard_cb, 20000, 0);
  start(fx, "proj", s, fx->store != fx->mem ? CQRS_SUBSCRIBE_BLOCKING : 0);
  while (!s->count[9] && !timeout) uv_run(&fx->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&guard, NULL);
  if (timeout) fail_msg("the events after the poison one waited for its retries (seen %zu)", s->n);
  for (int64_t i = 1; i <= 9; i++) assert_int_equal(s->count[i], i == 5 || i == 6 ? 0 : 1);
  assert_int_equal(p.letters, 0);
  int64_t saved = -1;
  assert_int_equal(cqrs_checkpoint_store_load(fx->cp_mem, "proj", &saved, NULL), CQRS_OK);
  assert_int_equal(saved, 4);
  cqrs_metrics_t *m;
  cqrs_metrics_snapshot_t *snap;
  assert_int_equal(cqrs_metrics_new(&m, NULL), CQRS_OK);
  assert_int_equal(cqrs_metrics_attach(m, fx->d, NULL), CQRS_OK);
  assert_int_equal(cqrs_metrics_snapshot(m, &snap, NULL), CQRS_OK);
  assert_int_equal(cqrs_metrics_snapshot_value(snap, "cqrs_projection_parked_events", "projection", "proj", NULL), 2);
  cqrs_metrics_snapshot_destroy(snap);
  close_dispatcher(fx);
  cqrs_metrics_destroy(m);
  assert_int_equal(p.letters, 1);
  assert_int_equal(p.position, 5);
  assert_int_equal(p.attempts, 3); /* the default */
  assert_true(p.first_failed_at > 0 && p.first_failed_at <= cqrs_now_ms());
  assert_non_null(strstr(p.message, "cannot project 5"));
  assert_false(p.later_seen);
  assert_int_equal(s->count[6], 1);
  assert_int_equal(s->count[5], 0);
  assert_int_equal(cqrs_checkpoint_store_load(fx->cp_mem, "proj", &saved, NULL), CQRS_OK);
  assert_int_equal(saved, 9);
  free(s);
}

/* Without a sink the dead letter is kept in memory with its attempts; the
 * events behind it in its stream follow it, in order. */
static void test_poison_event_in_memory(void **state) {
  fx_t *fx = *state; /* 3 attempts, 1 ms back-off */
  seen_t *s = calloc(1, sizeof *s);
  ledger_fill(fx->mem, &ledger_type, "a", 4); /* 1..4 */
  ledger_fill(fx->mem, &ledger_type, "b", 2); /* 5..6 */
  s->fail_at = 2;
  start(fx, "proj", s, fx->store != fx->mem ? CQRS_SUBSCRIBE_BLOCKING : 0);
  while (cqrs_dispatcher_dead_letter_count(fx->d) < 1 || s->n < 5) step(fx);
  cqrs_dead_letter_t dl;
  assert_true(cqrs_dispatcher_dead_letter_info(fx->d, 0, &dl));
  assert_string_equal(dl.subscriber, "proj");
  assert_int_equal(dl.event->position, 2);
  assert_int_equal(dl.attempts, 3);
  assert_non_null(strstr(dl.error->message, "cannot project 2"));
  assert_false(cqrs_dispatcher_dead_letter_info(fx->d, 1, &dl));
  assert_false(cqrs_dispatcher_dead_letter_info(NULL, 0, &dl));
  /* b's events went first; a's 3 and 4 after its 2 was given up on. */
  int64_t want[] = {1, 5, 6, 3, 4};
  for (size_t i = 0; i < 5; i++) assert_int_equal(s->order[i], want[i]);
  run_idle(fx);
  int64_t saved = -1;
  close_dispatcher(fx);
  assert_int_equal(cqrs_checkpoint_store_load(fx->cp_mem, "proj", &saved, NULL), CQRS_OK);
  assert_int_equal(saved, 6);
  free(s);
}

/* The store's reads fail for a while after a commit: the projection still
 * hears of it, with no further command to wake the feed. */
typedef struct logged {
  int warnings;
  char last[256];
} logged_t;

static void capture_log(cqrs_log_level_t level, const char *domain, const char *message, void *data) {
  logged_t *l = data;
  if (level == CQRS_LOG_WARNING && !strcmp(domain, "bus")) l->warnings++;
  snprintf(l->last, sizeof l->last, "%s", message);
}

static void test_feed_retries_a_failed_read(void **state) {
  fx_t *fx = *state; /* blocking store */
  logged_t logged = {0, ""};
  cqrs_log_set_handler(capture_log, &logged);
  seen_t *s = calloc(1, sizeof *s);
  ledger_fill(fx->mem, &ledger_type, "a", 1);
  start(fx, "proj", s, 0);
  run_idle(fx);
  assert_true(cqrs_projection_live(fx->d, "proj"));
  ledger_fill(fx->mem, &ledger_type, "c", 1); /* another writer's: the next commit does not follow */
  ledger_blocking_store_fail_reads(fx->store, 3);
  credit(fx, "a", 1);
  run_idle(fx); /* returns once the retries have delivered it */
  assert_int_equal(fx->done, 1);
  assert_exactly_once(fx, s, 0);
  assert_int_equal(cqrs_projection_position(fx->d, "proj"), 3);
  cqrs_log_set_handler(NULL, NULL);
  /* The library told the log handler, not stderr. */
  assert_int_equal(logged.warnings, 1);
  assert_non_null(strstr(logged.last, "event feed cannot read the store: the server went away"));
  free(s);
}

static void test_projection_rules(void **state) {
  fx_t *fx = *state;
  seen_t s;
  memset(&s, 0, sizeof s);
  cqrs_projection_def_t def = {"p", NULL, watch, &s, 0};
  cqrs_error_t err;
  assert_int_equal(cqrs_projection_start(fx->d, &def, fx->cp, &err), CQRS_OK);
  assert_int_equal(cqrs_projection_start(fx->d, &def, fx->cp, &err), CQRS_EDUPLICATE);
  assert_int_equal(cqrs_projection_start(fx->d, NULL, fx->cp, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_projection_start(fx->d, &def, NULL, &err), CQRS_EINVAL);
  def.name = "";
  assert_int_equal(cqrs_projection_start(fx->d, &def, fx->cp, &err), CQRS_EINVAL);
  assert_false(cqrs_projection_live(fx->d, "nope"));
  assert_int_equal(cqrs_projection_position(fx->d, "nope"), 0);
  assert_int_equal(cqrs_checkpoint_store_save(fx->cp_mem, "", 1, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_checkpoint_store_save(fx->cp_mem, "x", -1, &err), CQRS_EINVAL);
}

/* ---- read-your-writes ---- */

typedef struct waited {
  cqrs_code_t status;
  int calls;
  int64_t position;
  seen_t *seen;
} waited_t;

static void on_waited(cqrs_code_t status, void *data) {
  waited_t *w = data;
  w->status = status;
  w->calls++;
  if (status == CQRS_OK && w->seen) {
    /* The projection has handled the position it was asked for. */
    bool found = false;
    for (size_t i = 0; i < w->seen->n; i++) found |= w->seen->order[i] == w->position;
    assert_true(found);
  }
}

typedef struct pos_of {
  int64_t position;
  int done;
} pos_of_t;

static void note_position(const cqrs_result_t *r, void *data) {
  ((pos_of_t *)data)->position = r->position;
  ((pos_of_t *)data)->done++;
}

/* A command's result carries the position of its last event; waiting for a
 * projection to reach it calls back once it has. */
static void test_wait_for_a_projection(void **state) {
  fx_t *fx = *state;
  seen_t *s = calloc(1, sizeof *s);
  start(fx, "waited", s, CQRS_SUBSCRIBE_BLOCKING);
  assert_int_equal(cqrs_dispatcher_send(fx->d, ledger_open_new("w", "o"), on_done, fx), CQRS_OK);
  while (!fx->done) step(fx); /* on the pool, a credit could overtake it */
  pos_of_t p = {0, 0};
  assert_int_equal(cqrs_dispatcher_send(fx->d, ledger_credit_new("w", 5), note_position, &p), CQRS_OK);
  while (!p.done) step(fx);
  assert_int_equal(p.position, 2);
  waited_t w = {CQRS_OK, 0, p.position, s};
  assert_int_equal(cqrs_projection_wait(fx->d, "waited", p.position, 5000, on_waited, &w), CQRS_OK);
  assert_int_equal(w.calls, 0); /* never inside the call */
  waited_t all = {CQRS_OK, 0, p.position, s};
  assert_int_equal(cqrs_projection_wait(fx->d, NULL, p.position, 5000, on_waited, &all), CQRS_OK);
  run_idle(fx);
  assert_int_equal(w.calls, 1);
  assert_int_equal(w.status, CQRS_OK);
  assert_int_equal(all.calls, 1);
  assert_int_equal(all.status, CQRS_OK);

  /* A position nobody will reach: a timeout. An unknown name: refused. */
  waited_t late = {CQRS_OK, 0, 0, NULL};
  assert_int_equal(cqrs_projection_wait(fx->d, "waited", p.position + 100, 30, on_waited, &late), CQRS_OK);
  assert_int_equal(cqrs_projection_wait(fx->d, "nobody", 1, 30, on_waited, &late), CQRS_ENOT_FOUND);
  assert_int_equal(cqrs_projection_wait(fx->d, "waited", 1, 30, NULL, NULL), CQRS_EINVAL);
  run_idle(fx);
  assert_int_equal(late.calls, 1);
  assert_int_equal(late.status, CQRS_ETIMEOUT);

  /* Closing completes a waiter that is still waiting. */
  waited_t closing = {CQRS_OK, 0, 0, NULL};
  assert_int_equal(cqrs_projection_wait(fx->d, "waited", p.position + 100, 60000, on_waited, &closing), CQRS_OK);
  close_dispatcher(fx);
  assert_int_equal(closing.calls, 1);
  assert_int_equal(closing.status, CQRS_ECLOSED);
  free(s);
}

typedef struct sync_job {
  cqrs_dispatcher_t *d;
  int64_t position;
  _Atomic int got;
  const char *name; /* NULL: "waited" */
} sync_job_t;

static void sync_waiter(void *arg) {
  sync_job_t *j = arg;
  atomic_store(&j->got, cqrs_projection_wait_sync(j->d, j->name ? j->name : "waited", j->position, 5000));
}

static void tick(uv_timer_t *t) { (void)t; }

static void test_wait_from_another_thread(void **state) {
  fx_t *fx = *state;
  seen_t *s = calloc(1, sizeof *s);
  start(fx, "waited", s, CQRS_SUBSCRIBE_BLOCKING);
  assert_int_equal(cqrs_projection_wait_sync(fx->d, "waited", 1, 10), CQRS_ESTATE); /* loop thread */
  assert_int_equal(cqrs_dispatcher_send(fx->d, ledger_open_new("w", "o"), on_done, fx), CQRS_OK);
  sync_job_t j = {fx->d, 1, CQRS_ECODEC, NULL};
  uv_thread_t t;
  assert_int_equal(uv_thread_create(&t, sync_waiter, &j), 0);
  uv_timer_t keep;
  uv_timer_init(&fx->loop, &keep);
  while (atomic_load(&j.got) == CQRS_ECODEC) {
    uv_timer_start(&keep, tick, 5, 0);
    uv_run(&fx->loop, UV_RUN_ONCE);
  }
  uv_thread_join(&t);
  assert_int_equal(atomic_load(&j.got), CQRS_OK);
  assert_true(s->n >= 1);
  /* An unknown name: refused, as on the loop thread, not reached at once. */
  sync_job_t unknown = {fx->d, 1, CQRS_ECODEC, "nobody"};
  assert_int_equal(uv_thread_create(&t, sync_waiter, &unknown), 0);
  while (atomic_load(&unknown.got) == CQRS_ECODEC) {
    uv_timer_start(&keep, tick, 5, 0);
    uv_run(&fx->loop, UV_RUN_ONCE);
  }
  uv_thread_join(&t);
  assert_int_equal(atomic_load(&unknown.got), CQRS_ENOT_FOUND);
  uv_close((uv_handle_t *)&keep, NULL);
  uv_run(&fx->loop, UV_RUN_NOWAIT); /* `keep` lives on this stack */
  free(s);
}

/* A name longer than any subscriber's may be is unknown, from another
 * thread too: never cut to the name of one that exists. */
static void test_wait_for_an_over_long_name(void **state) {
  fx_t *fx = *state;
  seen_t *s = calloc(1, sizeof *s);
  char name[CQRS_NAME_MAX], longer[CQRS_NAME_MAX + 8];
  memset(name, 'w', sizeof name - 1);
  name[sizeof name - 1] = '\0';
  snprintf(longer, sizeof longer, "%s-other", name);
  start(fx, name, s, CQRS_SUBSCRIBE_BLOCKING);
  waited_t w = {CQRS_OK, 0, 0, NULL};
  assert_int_equal(cqrs_projection_wait(fx->d, longer, 0, 30, on_waited, &w), CQRS_ENOT_FOUND);
  sync_job_t j = {fx->d, 0, CQRS_ECODEC, longer};
  uv_thread_t t;
  assert_int_equal(uv_thread_create(&t, sync_waiter, &j), 0);
  uv_timer_t keep;
  uv_timer_init(&fx->loop, &keep);
  while (atomic_load(&j.got) == CQRS_ECODEC) {
    uv_timer_start(&keep, tick, 5, 0);
    uv_run(&fx->loop, UV_RUN_ONCE);
  }
  uv_thread_join(&t);
  assert_int_equal(atomic_load(&j.got), CQRS_ENOT_FOUND);
  assert_int_equal(w.calls, 0);
  uv_close((uv_handle_t *)&keep, NULL);
  uv_run(&fx->loop, UV_RUN_NOWAIT); /* `keep` lives on this stack */
  free(s);
}

typedef struct exec_job {
  cqrs_dispatcher_t *d;
  seen_t *seen;
  _Atomic int got;
  cqrs_execution_t x;
  int seen_after; /* what the projection had handled when the call returned */
} exec_job_t;

static void executor(void *arg) {
  exec_job_t *j = arg;
  cqrs_error_t err;
  cqrs_code_t rc = cqrs_dispatcher_execute_sync(j->d, ledger_credit_new("x", 5), "slow", 10000, &j->x, &err);
  j->seen_after = (int)j->seen->n; /* the wait saw the projection handle it: ordered before */
  atomic_store(&j->got, rc);
}

/* Read-your-writes from a worker thread in one call: the command's figures
 * (its position), and the projection has handled it by the time it returns,
 * though it runs on the pool behind the command. */
static void test_execute_and_wait_for_a_projection(void **state) {
  fx_t *fx = *state;
  seen_t *s = calloc(1, sizeof *s);
  assert_int_equal(cqrs_dispatcher_send(fx->d, ledger_open_new("x", "o"), on_done, fx), CQRS_OK);
  /* The ledger is open before the credit goes: on the pool, the two would
   * race for the aggregate (a credit first is rejected: not open). */
  while (fx->done < 1) uv_run(&fx->loop, UV_RUN_ONCE);
  start(fx, "slow", s, CQRS_SUBSCRIBE_BLOCKING);
  exec_job_t j = {fx->d, s, CQRS_ECODEC, {0}, 0};
  uv_thread_t t;
  assert_int_equal(uv_thread_create(&t, executor, &j), 0);
  uv_timer_t keep;
  uv_timer_init(&fx->loop, &keep);
  while (atomic_load(&j.got) == CQRS_ECODEC) {
    uv_timer_start(&keep, tick, 5, 0);
    uv_run(&fx->loop, UV_RUN_ONCE);
  }
  uv_thread_join(&t);
  assert_int_equal(atomic_load(&j.got), CQRS_OK);
  assert_int_equal(j.x.events, 1);
  assert_false(j.x.duplicate);
  assert_int_equal(j.x.position, head(fx));
  assert_int_equal(j.x.version, 2);
  assert_int_equal(j.seen_after, (int)head(fx));
  uv_close((uv_handle_t *)&keep, NULL);
  uv_run(&fx->loop, UV_RUN_NOWAIT);
  free(s);
}

/* ---- a blocking store's head ---- */

/* A blocking store is never called on the loop thread, not even for its
 * head when the dispatcher starts: that is read on the pool. Until it is
 * known nothing is published; a command committed meanwhile is published
 * once it is, to the subscribers that were there before it. */
static void test_the_head_is_read_on_the_pool(void **state) {
  fx_t *fx = *state; /* blocking */
  close_dispatcher(fx);
  ledger_fill(fx->mem, &ledger_type, "a", 3);
  ledger_blocking_store_watch(fx->store);
  ledger_blocking_store_hold_head(fx->store, true);
  open_dispatcher(fx);
  seen_t *plain = calloc(1, sizeof *plain), *proj = calloc(1, sizeof *proj);
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "plain", NULL, watch, plain, 0, NULL), CQRS_OK);
  start(fx, "proj", proj, 0);
  assert_int_equal(cqrs_dispatcher_send(fx->d, ledger_open_new("b", "bo"), on_done, fx), CQRS_OK);
  while (!fx->done) step(fx); /* committed while the head is being read */
  ledger_blocking_store_hold_head(fx->store, false);
  run_idle(fx);
  assert_int_equal(plain->n, 1);
  assert_int_equal(plain->order[0], 4);
  assert_true(cqrs_projection_live(fx->d, "proj"));
  assert_exactly_once(fx, proj, 0);
  credit(fx, "b", 1);
  run_idle(fx);
  assert_range_once(plain, 3, 5);
  assert_exactly_once(fx, proj, 0);
  close_dispatcher(fx);
  assert_int_equal(ledger_blocking_store_calls_on_watched(fx->store), 0);
  free(plain);
  free(proj);
}

/* ---- failures of the pool and of the store ---- */

/* A projection whose checkpoint load cannot be queued never loads: its
 * start fails and leaves no subscriber behind (the name is free again). */
static void test_start_fails_when_the_pool_refuses(void **state) {
  fx_t *fx = *state; /* blocking checkpoints: loaded on the pool */
  ledger_fill(fx->mem, &ledger_type, "a", 3);
  seen_t *s = calloc(1, sizeof *s);
  cqrs_projection_def_t def = {"proj", NULL, watch, s, 0};
  cqrs_error_t err;
  work_fault_fail(0, 1);
  assert_int_equal(cqrs_projection_start(fx->d, &def, fx->cp, &err), CQRS_ENOMEM);
  assert_non_null(strstr(err.message, "proj"));
  assert_false(cqrs_projection_live(fx->d, "proj"));
  if (cqrs_projection_start(fx->d, &def, fx->cp, &err)) fail_msg("%s", err.message);
  run_idle(fx);
  assert_true(cqrs_projection_live(fx->d, "proj"));
  assert_exactly_once(fx, s, 0);
  free(s);
}

/* Waits at most 10 s for every projection to reach the store's head. */
static cqrs_code_t wait_head(fx_t *fx) {
  waited_t w = {CQRS_CODE_COUNT, 0, 0, NULL};
  cqrs_code_t rc = cqrs_projection_wait(fx->d, NULL, head(fx), 10000, on_waited, &w);
  if (rc) return rc;
  while (!w.calls) step(fx);
  return w.status;
}

/* The catch-up read of a non-blocking store fails: it is tried again
 * (back-off), with no commit to wake it. */
static void test_inline_catch_up_retries_a_failed_read(void **state) {
  fx_t *fx = *state;
  close_dispatcher(fx);
  fx->store = ledger_flaky_store(fx->mem);
  open_dispatcher(fx);
  ledger_fill(fx->mem, &ledger_type, "a", 3);
  logged_t logged = {0, ""};
  cqrs_log_set_handler(capture_log, &logged);
  seen_t *s = calloc(1, sizeof *s);
  ledger_store_fail_reads(fx->store, 2, false);
  start(fx, "proj", s, 0);
  assert_int_equal(wait_head(fx), CQRS_OK);
  cqrs_log_set_handler(NULL, NULL);
  assert_true(cqrs_projection_live(fx->d, "proj"));
  assert_exactly_once(fx, s, 0);
  assert_int_equal(logged.warnings, 2);
  assert_non_null(strstr(logged.last, "projection proj cannot read the store: the server went away"));
  free(s);
}

static void on_any_done(const cqrs_result_t *r, void *data) {
  ((pos_of_t *)data)->position = r->error.code ? -1 : r->position;
  ((pos_of_t *)data)->done++;
}

/* Sends `first`, and `again` (the same command) if `first` failed to run:
 * with one failure injected, one of them commits. Takes over both; returns
 * the position of the commit. */
static int64_t send_twice(fx_t *fx, cqrs_command_t *first, cqrs_command_t *again) {
  cqrs_command_t *cmds[2] = {first, again};
  for (int i = 0; i < 2; i++) {
    pos_of_t p = {-1, 0};
    if (cqrs_dispatcher_send(fx->d, cmds[i], on_any_done, &p) == CQRS_OK) {
      while (!p.done) step(fx);
    }
    if (p.position > 0) {
      if (i == 0) cqrs_command_destroy(again);
      return p.position;
    }
  }
  fail_msg("a command failed twice");
  return 0;
}

#define OPEN_TWICE(fx, id) send_twice((fx), ledger_open_new((id), "owner"), ledger_open_new((id), "owner"))

/* A projection on a blocking store and checkpoints, its handler on the
 * pool: catch-up, a batch, the feed reading another writer's commit. The
 * n-th submission to the pool fails, for every n on that path: the start
 * says so, or the projection still reaches the head (nothing stalls until
 * the next commit) and its checkpoint follows. */
static void test_pool_failures_stall_nothing(void **state) {
  (void)state;
  for (unsigned long n = 0;; n++) {
    fx_t *fx = fx_new(true);
    seen_t *s = calloc(1, sizeof *s);
    ledger_fill(fx->mem, &ledger_type, "a", 3);
    unsigned long before = work_fault_calls();
    work_fault_fail(n, 1);
    cqrs_projection_def_t def = {"proj", NULL, watch, s, CQRS_SUBSCRIBE_BLOCKING};
    cqrs_error_t err;
    if (cqrs_projection_start(fx->d, &def, fx->cp, &err)) {
      assert_int_equal(err.code, CQRS_ENOMEM);
      if (cqrs_projection_start(fx->d, &def, fx->cp, &err)) fail_msg("n=%lu: %s", n, err.message);
    }
    run_idle(fx);
    OPEN_TWICE(fx, "b");
    ledger_fill(fx->mem, &ledger_type, "c", 1); /* the next commit does not follow: the feed reads */
    OPEN_TWICE(fx, "d");
    run_idle(fx);
    bool reached = work_fault_calls() - before > n;
    work_fault_fail(0, 0);
    cqrs_code_t rc = wait_head(fx);
    if (rc) fail_msg("n=%lu: projection stuck at %lld of %lld (%s)", n,
                     (long long)cqrs_projection_position(fx->d, "proj"), (long long)head(fx), cqrs_code_name(rc));
    assert_exactly_once(fx, s, 0);
    close_dispatcher(fx);
    int64_t saved = 0;
    assert_int_equal(cqrs_checkpoint_store_load(fx->cp_mem, "proj", &saved, NULL), CQRS_OK);
    if (saved != head(fx)) fail_msg("n=%lu: checkpoint %lld, head %lld", n, (long long)saved, (long long)head(fx));
    free(s);
    teardown((void **)&fx);
    if (!reached) break;
  }
}

/* A process manager whose instances end at once, on blocking checkpoints:
 * it saves them on the pool. */
static cqrs_code_t end_at_once(cqrs_process_t *p, void *state, const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)state, (void)e, (void)data, (void)err;
  cqrs_process_end(p);
  return CQRS_OK;
}
static const cqrs_process_route_t brief_routes[] = {{&ledger_opened, true, NULL, end_at_once},
                                                    {NULL, false, NULL, NULL}};
static const cqrs_process_type_t brief = {.name = "brief", .routes = brief_routes};

/* The n-th submission to the pool fails, for every n: the process
 * manager's checkpoint still reaches the head, with no commit after. */
static void test_pool_failures_keep_saving_checkpoints(void **state) {
  (void)state;
  for (unsigned long n = 0;; n++) {
    fx_t *fx = fx_new(false);
    close_dispatcher(fx);
    assert_int_equal(cqrs_registry_add_process(fx->reg, &brief, NULL), CQRS_OK);
    cqrs_checkpoint_store_t *cp = ledger_blocking_checkpoints(fx->cp_mem);
    open_dispatcher(fx);
    unsigned long before = work_fault_calls();
    work_fault_fail(n, 1);
    cqrs_error_t err;
    if (cqrs_process_start(fx->d, &brief, NULL, cp, &err)) {
      assert_int_equal(err.code, CQRS_ENOMEM);
      if (cqrs_process_start(fx->d, &brief, NULL, cp, &err)) fail_msg("n=%lu: %s", n, err.message);
    }
    run_idle(fx);
    OPEN_TWICE(fx, "a");
    int64_t last = OPEN_TWICE(fx, "b"); /* the process's own records follow, not of its types */
    run_idle(fx);
    bool reached = work_fault_calls() - before > n;
    work_fault_fail(0, 0);
    int64_t saved = 0;
    assert_int_equal(cqrs_checkpoint_store_load(fx->cp_mem, "process:brief", &saved, NULL), CQRS_OK);
    if (saved != last) fail_msg("n=%lu: checkpoint %lld, want %lld", n, (long long)saved, (long long)last);
    close_dispatcher(fx);
    cqrs_checkpoint_store_destroy(cp);
    teardown((void **)&fx);
    if (!reached) break;
  }
}

/* The same with the n-th allocation failing while it runs: an event may
 * be dead-lettered (no room to hold it), but the projection reaches the
 * head and nothing stalls. */
static _Atomic long alloc_fail_at = -1, alloc_count;
static bool alloc_fails(void) { return atomic_fetch_add(&alloc_count, 1) + 1 == atomic_load(&alloc_fail_at); }
static void *failing_malloc(size_t n) { return alloc_fails() ? NULL : malloc(n); }
static void *failing_realloc(void *p, size_t n) { return alloc_fails() ? NULL : realloc(p, n); }

static void quiet(cqrs_log_level_t level, const char *domain, const char *message, void *data) {
  (void)level, (void)domain, (void)message, (void)data;
}

static void test_allocation_failures_stall_nothing(void **state) {
  (void)state;
  cqrs_log_set_handler(quiet, NULL);
  for (long n = 1;; n++) {
    fx_t *fx = fx_new(true);
    seen_t *s = calloc(1, sizeof *s);
    ledger_fill(fx->mem, &ledger_type, "a", 3);
    cqrs_projection_def_t def = {"proj", NULL, watch, s, CQRS_SUBSCRIBE_BLOCKING};
    if (cqrs_projection_start(fx->d, &def, fx->cp, NULL)) fail_msg("cannot start");
    cqrs_command_t *b1 = ledger_open_new("b", "o"), *b2 = ledger_open_new("b", "o");
    cqrs_command_t *d1 = ledger_open_new("d", "o"), *d2 = ledger_open_new("d", "o");
    atomic_store(&alloc_count, 0);
    atomic_store(&alloc_fail_at, n);
    /* Switched only while nothing runs on the pool (uv_run has returned). */
    cqrs_set_allocator(&(cqrs_allocator_t){failing_malloc, failing_realloc, free});
    run_idle(fx);
    send_twice(fx, b1, b2);
    run_idle(fx);
    cqrs_set_allocator(NULL);
    ledger_fill(fx->mem, &ledger_type, "c", 1);
    cqrs_set_allocator(&(cqrs_allocator_t){failing_malloc, failing_realloc, free});
    send_twice(fx, d1, d2);
    run_idle(fx);
    cqrs_set_allocator(NULL);
    bool reached = atomic_load(&alloc_count) >= n;
    cqrs_code_t rc = wait_head(fx);
    if (rc) fail_msg("n=%ld: projection stuck at %lld of %lld (%s)", n,
                     (long long)cqrs_projection_position(fx->d, "proj"), (long long)head(fx), cqrs_code_name(rc));
    close_dispatcher(fx);
    free(s);
    teardown((void **)&fx);
    if (!reached) break;
  }
  cqrs_log_set_handler(NULL, NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_wait_for_a_projection, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wait_for_a_projection, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_wait_from_another_thread, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_wait_for_an_over_long_name, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_execute_and_wait_for_a_projection, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_catch_up_then_live, setup, teardown),
      cmocka_unit_test_setup_teardown(test_catch_up_then_live, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_restart_resumes_from_checkpoint, setup, teardown),
      cmocka_unit_test_setup_teardown(test_checkpoint_saved_per_batch, setup, teardown),
      cmocka_unit_test_setup_teardown(test_restart_resumes_from_checkpoint, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_failing_projection_dead_letters_and_moves_on, setup, teardown),
      cmocka_unit_test_setup_teardown(test_failing_projection_dead_letters_and_moves_on, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_poison_event_is_set_aside, setup, teardown),
      cmocka_unit_test_setup_teardown(test_poison_event_is_set_aside, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_poison_event_in_memory, setup, teardown),
      cmocka_unit_test_setup_teardown(test_poison_event_in_memory, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_projection_rules, setup, teardown),
      cmocka_unit_test_setup_teardown(test_feed_retries_a_failed_read, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_start_fails_when_the_pool_refuses, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_the_head_is_read_on_the_pool, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_inline_catch_up_retries_a_failed_read, setup, teardown),
      cmocka_unit_test(test_pool_failures_stall_nothing),
      cmocka_unit_test(test_pool_failures_keep_saving_checkpoints),
      cmocka_unit_test(test_allocation_failures_stall_nothing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
