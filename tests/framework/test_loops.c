/* A dispatcher with several loops (cqrs_dispatcher_options_t.loops): the
 * order of each aggregate's commands, exactly-once completion under many
 * senders, subscribers fed in position order with no gap or duplicate, the
 * caches of the loops kept true, process managers across loops (billing
 * transfers conserve money), closing with commands in flight. Real loops,
 * real threads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <billing/billing.h>

#include "../billing/transfers.h"
#include "ledger.h"

/* ---- a command set of its own: credits that say which thread ran them ---- */

typedef struct move {
  char id[CQRS_ID_MAX];
  int64_t amount;
  char other[CQRS_ID_MAX]; /* expect: the ledger read, when not the target */
} move_t;
static const cqrs_field_t move_fields[] = {CQRS_STRING(move_t, id, "id", CQRS_F_REQUIRED),
                                           CQRS_INT64(move_t, amount, "amount", 0),
                                           CQRS_STRING(move_t, other, "other", CQRS_F_OPTIONAL), CQRS_FIELDS_END};
static const char *move_target(const void *p) { return ((const move_t *)p)->id; }

/* Routed to the loop owning the ledger: open, credit, and a read that is
 * rejected unless the balance is `amount`. */
static const cqrs_command_type_t routed_open = {
    .name = "loops.open", .payload_size = sizeof(move_t), .fields = move_fields, .aggregate_id = move_target};
static const cqrs_command_type_t routed_credit = {
    .name = "loops.credit", .payload_size = sizeof(move_t), .fields = move_fields, .aggregate_id = move_target};
static const cqrs_command_type_t routed_expect = {
    .name = "loops.expect", .payload_size = sizeof(move_t), .fields = move_fields, .aggregate_id = move_target};
/* Routed by `id`, but credits `other`: a command that changes another
 * loop's aggregate than the one it names. */
static const cqrs_command_type_t routed_credit_other = {.name = "loops.credit_other", .payload_size = sizeof(move_t),
                                                        .fields = move_fields, .aggregate_id = move_target};
/* The same without a target: they run on the home loop. */
static const cqrs_command_type_t home_credit = {.name = "loops.credit_home", .payload_size = sizeof(move_t),
                                                .fields = move_fields};
static const cqrs_command_type_t home_expect = {.name = "loops.expect_home", .payload_size = sizeof(move_t),
                                                .fields = move_fields};

#define MAX_THREADS 16

typedef struct threads {
  uv_mutex_t lock;
  uv_thread_t seen[MAX_THREADS];
  int n;
} threads_t;

static void threads_note(threads_t *t) {
  uv_thread_t self = uv_thread_self();
  uv_mutex_lock(&t->lock);
  bool known = false;
  for (int i = 0; i < t->n && !known; i++) known = uv_thread_equal(&t->seen[i], &self);
  if (!known && t->n < MAX_THREADS) t->seen[t->n++] = self;
  uv_mutex_unlock(&t->lock);
}

static cqrs_code_t handle(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  threads_note(data);
  const cqrs_command_type_t *type = cqrs_command_type(cmd);
  const move_t *c = cqrs_command_payload(cmd);
  cqrs_aggregate_t *agg;
  cqrs_code_t rc = cqrs_context_load(ctx, &ledger_type, c->id, &agg, err);
  if (rc) return rc;
  const ledger_state_t *s = cqrs_aggregate_state_const(agg);
  if (type == &routed_open) {
    if (s->opened) return cqrs_reject(err, "ledger.already_open", "%s is open", c->id);
    return cqrs_aggregate_raise(agg, &ledger_opened, &(ledger_opened_t){"owner"}, err);
  }
  if (type == &routed_credit_other) {
    if ((rc = cqrs_context_load(ctx, &ledger_type, c->other, &agg, err))) return rc;
    return cqrs_aggregate_raise(agg, &ledger_credited, &(ledger_amount_t){c->amount}, err);
  }
  if (!s->opened) return cqrs_reject(err, "ledger.not_open", "%s is not open", c->id);
  if (type == &routed_expect || type == &home_expect) {
    if (c->other[0]) {
      if ((rc = cqrs_context_load(ctx, &ledger_type, c->other, &agg, err))) return rc;
      s = cqrs_aggregate_state_const(agg);
    }
    if (s->balance != c->amount)
      return cqrs_reject(err, "ledger.stale", "%s holds %lld, %lld expected", c->id, (long long)s->balance,
                         (long long)c->amount);
    return CQRS_OK;
  }
  return cqrs_aggregate_raise(agg, &ledger_credited, &(ledger_amount_t){c->amount}, err);
}

static const cqrs_command_type_t *const all_types[] = {&routed_open, &routed_credit, &routed_expect,
                                                        &routed_credit_other, &home_credit, &home_expect, NULL};

/* NULL when memory is short. */
static cqrs_command_t *move_try_new(const cqrs_command_type_t *type, const char *id, int64_t amount,
                                    const char *other, cqrs_error_t *err) {
  move_t m;
  memset(&m, 0, sizeof m);
  snprintf(m.id, sizeof m.id, "%s", id);
  if (other) snprintf(m.other, sizeof m.other, "%s", other);
  m.amount = amount;
  cqrs_command_t *cmd;
  return cqrs_command_new(type, &m, &cmd, err) ? NULL : cmd;
}

static cqrs_command_t *move_other_new(const cqrs_command_type_t *type, const char *id, int64_t amount,
                                      const char *other) {
  cqrs_error_t err;
  cqrs_command_t *cmd = move_try_new(type, id, amount, other, &err);
  if (!cmd) fail_msg("%s", err.message);
  return cmd;
}

static cqrs_command_t *move_new(const cqrs_command_type_t *type, const char *id, int64_t amount) {
  return move_other_new(type, id, amount, NULL);
}

/* ---- fixture ---- */

#define LEDGERS 64

/* What a subscriber saw: every event once, positions 1, 2, 3...; per
 * ledger, versions 1, 2, 3... and credits in the order each sender sent. */
typedef struct seen {
  int64_t last_position;
  size_t events;
  int64_t version[LEDGERS];
  bool amounts;                    /* check credits: sender * 1e9 + a sequence, increasing */
  int64_t last_amount[LEDGERS][8];
  int faults;
} seen_t;

typedef struct fx {
  uv_loop_t loop;
  uv_thread_t loop_thread;
  cqrs_registry_t *reg;
  cqrs_store_t *store, *mem; /* mem: under a blocking store, or NULL */
  cqrs_dispatcher_t *d;
  threads_t threads;
  seen_t seen;
  bool closed;
} fx_t;

static int ledger_index(const char *id) {
  int i = -1;
  return sscanf(id, "l-%d", &i) == 1 && i >= 0 && i < LEDGERS ? i : -1;
}

static cqrs_code_t watch(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)err;
  seen_t *s = data;
  s->events++;
  if (e->position != s->last_position + 1) s->faults++;
  s->last_position = e->position;
  int i = ledger_index(cqrs_event_aggregate_id(e));
  if (i < 0) return CQRS_OK;
  if (e->version != s->version[i] + 1) s->faults++;
  s->version[i] = e->version;
  if (s->amounts && e->type == &ledger_credited) {
    int64_t a = ((const ledger_amount_t *)e->payload)->amount;
    int sender = (int)(a / 1000000000);
    if (sender < 8) {
      if (a <= s->last_amount[i][sender]) s->faults++;
      s->last_amount[i][sender] = a;
    }
  }
  return CQRS_OK;
}

static fx_t *fx_new(unsigned loops, bool keep_alive, bool watched, bool blocking) {
  fx_t *fx = calloc(1, sizeof *fx);
  assert_int_equal(uv_loop_init(&fx->loop), 0);
  fx->loop_thread = uv_thread_self();
  uv_mutex_init(&fx->threads.lock);
  fx->reg = ledger_registry();
  for (size_t i = 0; all_types[i]; i++) assert_int_equal(cqrs_registry_add_command(fx->reg, all_types[i], NULL), 0);
  cqrs_memory_store_new(&fx->store, NULL);
  if (blocking) {
    fx->mem = fx->store;
    fx->store = ledger_blocking_store(fx->mem, 0);
  }
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.loops = loops;
  o.keep_alive = keep_alive;
  cqrs_error_t err;
  if (cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, &o, &fx->d, &err)) fail_msg("%s", err.message);
  for (size_t i = 0; all_types[i]; i++)
    if (cqrs_dispatcher_register(fx->d, all_types[i], handle, &fx->threads, 0, &err)) fail_msg("%s", err.message);
  if (watched && cqrs_dispatcher_subscribe(fx->d, "watch", NULL, watch, &fx->seen, 0, &err))
    fail_msg("%s", err.message);
  return fx;
}

static void on_closed(void *data) { ((fx_t *)data)->closed = true; }

static void fx_close(fx_t *fx) {
  if (fx->d) {
    assert_int_equal(cqrs_dispatcher_close(fx->d, on_closed, fx), CQRS_OK);
    assert_int_equal(uv_run(&fx->loop, UV_RUN_DEFAULT), 0);
    assert_true(fx->closed);
    fx->d = NULL;
  }
}

static int teardown(void **state) {
  fx_t *fx = *state;
  fx_close(fx);
  assert_int_equal(uv_loop_close(&fx->loop), 0);
  cqrs_store_destroy(fx->store);
  cqrs_store_destroy(fx->mem);
  cqrs_registry_destroy(fx->reg);
  uv_mutex_destroy(&fx->threads.lock);
  free(fx);
  return 0;
}

static int setup4(void **state) {
  *state = fx_new(4, false, true, false);
  return 0;
}

/* A blocking store: commands stay on the home and its thread pool. */
static int setup4_blocking(void **state) {
  *state = fx_new(4, false, true, true);
  return 0;
}

/* No subscriber: the feed reads nothing, so nothing but the loops
 * themselves keeps their caches true. */
static int setup4_unwatched(void **state) {
  *state = fx_new(4, false, false, false);
  return 0;
}

static int setup3_threads(void **state) {
  *state = fx_new(3, true, true, false);
  return 0;
}

/* Completions: each command once, on the home loop's thread, and per ledger
 * in the order sent (versions 1, 2, 3... as results say). */
typedef struct tally {
  fx_t *fx;
  atomic_int done, ok, rejected, off_thread, out_of_order, closed;
  int64_t version[LEDGERS];
  char *hits; /* per command sent, when numbered */
} tally_t;

typedef struct sent {
  tally_t *t;
  int ledger;
  long n; /* index in t->hits, or -1 */
} sent_t;

static void count(const cqrs_result_t *r, void *data) {
  sent_t *s = data;
  tally_t *t = s->t;
  uv_thread_t self = uv_thread_self();
  if (!uv_thread_equal(&self, &t->fx->loop_thread)) atomic_fetch_add(&t->off_thread, 1);
  atomic_fetch_add(&t->done, 1);
  if (cqrs_result_ok(r)) {
    atomic_fetch_add(&t->ok, 1);
    if (s->ledger >= 0 && r->events) {
      if (r->version != t->version[s->ledger] + 1) atomic_fetch_add(&t->out_of_order, 1);
      t->version[s->ledger] = r->version;
    }
  } else if (r->error.code == CQRS_ECLOSED) {
    atomic_fetch_add(&t->closed, 1);
  } else {
    atomic_fetch_add(&t->rejected, 1);
  }
  if (t->hits && s->n >= 0) t->hits[s->n]++;
  free(s);
}

static cqrs_code_t send_one(fx_t *fx, tally_t *t, const cqrs_command_type_t *type, int ledger, int64_t amount, long n) {
  char id[16];
  snprintf(id, sizeof id, "l-%d", ledger);
  cqrs_command_t *cmd = move_try_new(type, id, amount, NULL, NULL);
  if (!cmd) return CQRS_ENOMEM;
  sent_t *s = malloc(sizeof *s);
  *s = (sent_t){t, ledger, n};
  cqrs_code_t rc = cqrs_dispatcher_send(fx->d, cmd, count, s);
  if (rc) free(s);
  return rc;
}

static void open_all(fx_t *fx, tally_t *t) {
  for (int i = 0; i < LEDGERS; i++) assert_int_equal(send_one(fx, t, &routed_open, i, 0, -1), CQRS_OK);
}

static int64_t balance(fx_t *fx, int i) {
  char id[16];
  snprintf(id, sizeof id, "l-%d", i);
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(fx->store, &ledger_type, id, &agg, NULL), CQRS_OK);
  int64_t b = ((const ledger_state_t *)cqrs_aggregate_state_const(agg))->balance;
  cqrs_aggregate_destroy(agg);
  return b;
}

static void assert_seen_everything(fx_t *fx) {
  int64_t head;
  assert_int_equal(cqrs_store_head(fx->store, &head, NULL), CQRS_OK);
  assert_int_equal(fx->seen.faults, 0);
  assert_int_equal(fx->seen.last_position, head);
  assert_int_equal(fx->seen.events, (size_t)head);
}

/* ---- tests ---- */

/* From the loop thread: each ledger's commands commit in the order sent,
 * complete in that order on the loop thread, and reach the subscriber in
 * position order; several threads ran them. On a blocking store they all
 * complete and are seen in position order too. */
static void test_order_across_loops(void **state) {
  fx_t *fx = *state;
  fx->seen.amounts = !fx->mem;
  tally_t t = {.fx = fx};
  open_all(fx, &t);
  if (fx->mem) uv_run(&fx->loop, UV_RUN_DEFAULT); /* else the credits follow the opens unasked */
  enum { ROUNDS = 100 };
  for (int k = 1; k <= ROUNDS; k++)
    for (int i = 0; i < LEDGERS; i++) assert_int_equal(send_one(fx, &t, &routed_credit, i, k, -1), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(atomic_load(&t.done), LEDGERS * (ROUNDS + 1));
  assert_int_equal(atomic_load(&t.ok), LEDGERS * (ROUNDS + 1));
  assert_int_equal(atomic_load(&t.off_thread), 0);
  /* On a blocking store commands run on the thread pool, several at once,
   * with one loop as with four: no order between them is promised. */
  if (!fx->mem) assert_int_equal(atomic_load(&t.out_of_order), 0);
  assert_int_equal(cqrs_dispatcher_pending(fx->d), 0);
  for (int i = 0; i < LEDGERS; i++) {
    assert_int_equal(balance(fx, i), ROUNDS * (ROUNDS + 1) / 2);
    if (!fx->mem) assert_int_equal(t.version[i], ROUNDS + 1);
  }
  assert_seen_everything(fx);
  if (!fx->mem) assert_true(fx->threads.n >= 3); /* 64 ledgers over 4 loops: every loop owns some */
}

typedef struct sender {
  fx_t *fx;
  tally_t *t;
  int who;
  long from, count;
  atomic_int refused;
} sender_t;

static void send_range(void *arg) {
  sender_t *s = arg;
  for (long k = 0; k < s->count; k++) {
    int ledger = (int)((k * 7 + s->who) % LEDGERS);
    int64_t amount = (int64_t)s->who * 1000000000 + k + 1;
    if (send_one(s->fx, s->t, &routed_credit, ledger, amount, s->from + k)) atomic_fetch_add(&s->refused, 1);
  }
}

/* Four threads send to shared ledgers at once: every command completes
 * exactly once, each sender's credits of a ledger commit in its order, no
 * credit is lost, the subscriber sees each event once in position order. */
static void test_exactly_once_many_senders(void **state) {
  fx_t *fx = *state;
  fx->seen.amounts = true;
  enum { SENDERS = 4, EACH = 3000 };
  tally_t t = {.fx = fx, .hits = calloc(SENDERS * EACH, 1)};
  open_all(fx, &t);
  while (atomic_load(&t.done) < LEDGERS) uv_run(&fx->loop, UV_RUN_ONCE);
  sender_t s[SENDERS];
  uv_thread_t th[SENDERS];
  for (int i = 0; i < SENDERS; i++) {
    s[i] = (sender_t){.fx = fx, .t = &t, .who = i, .from = (long)i * EACH, .count = EACH};
    assert_int_equal(uv_thread_create(&th[i], send_range, &s[i]), 0);
  }
  while (atomic_load(&t.done) < LEDGERS + SENDERS * EACH) uv_run(&fx->loop, UV_RUN_ONCE);
  for (int i = 0; i < SENDERS; i++) {
    uv_thread_join(&th[i]);
    assert_int_equal(atomic_load(&s[i].refused), 0);
  }
  assert_int_equal(atomic_load(&t.ok), LEDGERS + SENDERS * EACH);
  assert_int_equal(atomic_load(&t.off_thread), 0);
  for (long n = 0; n < SENDERS * EACH; n++)
    if (t.hits[n] != 1) fail_msg("command %ld completed %d times", n, t.hits[n]);
  int64_t total = 0, want = 0;
  for (int i = 0; i < LEDGERS; i++) total += balance(fx, i);
  for (int w = 0; w < SENDERS; w++)
    for (long k = 0; k < EACH; k++) want += (int64_t)w * 1000000000 + k + 1;
  assert_int_equal(total, want);
  assert_seen_everything(fx);
  fx_close(fx);
  free(t.hits);
}

/* Sends a command naming ledger `named` about ledger `other`, and waits. */
static void send_about(fx_t *fx, tally_t *t, const cqrs_command_type_t *type, int named, int other, int64_t amount) {
  char id[16], about[16];
  snprintf(id, sizeof id, "l-%d", named);
  snprintf(about, sizeof about, "l-%d", other);
  sent_t *s = malloc(sizeof *s);
  *s = (sent_t){t, -1, -1};
  assert_int_equal(cqrs_dispatcher_send(fx->d, move_other_new(type, id, amount, about), count, s), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
}

/* A command that names no aggregate runs on the home loop, whatever it
 * changes; no loop decides on a state older than a commit its caller has
 * heard of: the home's credit drops the owner's cached copy, the owner's
 * credit drops the home's, and a loop reading another's aggregate reads
 * it from the store. */
static void test_caches_follow_other_loops(void **state) {
  fx_t *fx = *state;
  tally_t t = {.fx = fx};
  open_all(fx, &t);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  int64_t want[LEDGERS] = {0};
  for (int round = 0; round < 5; round++) {
    for (int i = 0; i < LEDGERS; i++) {
      /* Each step waits for the one before: the caller has heard of it. */
      assert_int_equal(send_one(fx, &t, &routed_credit, i, 1, -1), CQRS_OK);
      uv_run(&fx->loop, UV_RUN_DEFAULT);
      want[i] += 1;
      assert_int_equal(send_one(fx, &t, &home_expect, i, want[i], -1), CQRS_OK);
      uv_run(&fx->loop, UV_RUN_DEFAULT);
      assert_int_equal(send_one(fx, &t, &home_credit, i, 10, -1), CQRS_OK);
      uv_run(&fx->loop, UV_RUN_DEFAULT);
      want[i] += 10;
      assert_int_equal(send_one(fx, &t, &routed_expect, i, want[i], -1), CQRS_OK);
      uv_run(&fx->loop, UV_RUN_DEFAULT);
      for (int j = 1; j < 4; j++) send_about(fx, &t, &routed_expect, (i + j) % LEDGERS, i, want[i]);
      /* Another loop credits it, under another ledger's name. */
      for (int j = 1; j < 4; j++) {
        send_about(fx, &t, &routed_credit_other, (i + j) % LEDGERS, i, 100);
        want[i] += 100;
        assert_int_equal(send_one(fx, &t, &routed_expect, i, want[i], -1), CQRS_OK);
        uv_run(&fx->loop, UV_RUN_DEFAULT);
        assert_int_equal(send_one(fx, &t, &home_expect, i, want[i], -1), CQRS_OK);
        uv_run(&fx->loop, UV_RUN_DEFAULT);
      }
    }
  }
  assert_int_equal(atomic_load(&t.rejected), 0);
  assert_int_equal(atomic_load(&t.ok), LEDGERS * 36 + LEDGERS * 5 * 9);
  if (fx->seen.events) assert_seen_everything(fx);
}

/* Another writer of the store (a second process, say) credits each ledger
 * after its owner cached it: once the home's feed has read that commit (the
 * next commit anywhere shows it the gap), the owner answers from the new
 * state, not from its cached one. */
static void credit_behind(fx_t *fx, int i, int64_t amount, int round) {
  char id[16], cmd[32];
  snprintf(id, sizeof id, "l-%d", i);
  snprintf(cmd, sizeof cmd, "behind-%d-%d", i, round);
  cqrs_aggregate_t *agg;
  cqrs_error_t err;
  assert_int_equal(cqrs_repository_load(fx->store, &ledger_type, id, &agg, &err), CQRS_OK);
  assert_int_equal(cqrs_aggregate_raise(agg, &ledger_credited, &(ledger_amount_t){amount}, &err), CQRS_OK);
  cqrs_cause_t cause = {cmd, NULL};
  assert_int_equal(cqrs_repository_save(fx->store, agg, &cause, NULL, &err), CQRS_OK);
  cqrs_aggregate_destroy(agg);
}

static void test_caches_follow_other_writers(void **state) {
  fx_t *fx = *state;
  tally_t t = {.fx = fx};
  open_all(fx, &t);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  int64_t want[LEDGERS] = {0};
  for (int round = 0; round < 3; round++) {
    for (int i = 0; i < LEDGERS; i++) {
      assert_int_equal(send_one(fx, &t, &routed_expect, i, want[i], -1), CQRS_OK); /* cached now */
      uv_run(&fx->loop, UV_RUN_DEFAULT);
      credit_behind(fx, i, 7, round);
      want[i] += 7;
      int j = (i + 1) % LEDGERS;
      assert_int_equal(send_one(fx, &t, &routed_credit, j, 1, -1), CQRS_OK);
      uv_run(&fx->loop, UV_RUN_DEFAULT);
      want[j] += 1;
      assert_int_equal(send_one(fx, &t, &routed_expect, i, want[i], -1), CQRS_OK);
      uv_run(&fx->loop, UV_RUN_DEFAULT);
    }
  }
  assert_int_equal(atomic_load(&t.rejected), 0);
  for (int i = 0; i < LEDGERS; i++) assert_int_equal(balance(fx, i), want[i]);
}

/* Closing with commands in flight, sent from the loop and from another
 * thread: every accepted command completes once (some as CQRS_ECLOSED at
 * most, none lost), later sends are refused, the member threads end, the
 * loop closes with nothing left. */
typedef struct closer {
  fx_t *fx;
  tally_t *t;
  int at;
  atomic_int count;
} closer_t;

static void close_midway(const cqrs_result_t *r, void *data) {
  closer_t *c = data;
  (void)r;
  if (atomic_fetch_add(&c->count, 1) + 1 == c->at) {
    assert_int_equal(cqrs_dispatcher_close(c->fx->d, on_closed, c->fx), CQRS_OK);
    assert_int_equal(cqrs_dispatcher_close(c->fx->d, NULL, NULL), CQRS_ECLOSED);
  }
}

static void test_close_with_commands_in_flight(void **state) {
  fx_t *fx = *state;
  tally_t t = {.fx = fx};
  open_all(fx, &t);
  while (atomic_load(&t.done) < LEDGERS) uv_run(&fx->loop, UV_RUN_ONCE);
  enum { N = 4000 };
  closer_t c = {.fx = fx, .t = &t, .at = N / 4};
  sender_t s = {.fx = fx, .t = &t, .who = 1, .from = -1, .count = N};
  uv_thread_t th;
  assert_int_equal(uv_thread_create(&th, send_range, &s), 0);
  int accepted = 0;
  for (int k = 0; k < N; k++) {
    char id[16];
    snprintf(id, sizeof id, "l-%d", k % LEDGERS);
    if (cqrs_dispatcher_send(fx->d, move_new(&routed_credit, id, 1), close_midway, &c) == CQRS_OK) accepted++;
  }
  uv_run(&fx->loop, UV_RUN_DEFAULT); /* runs until the close completes */
  uv_thread_join(&th);
  assert_true(fx->closed);
  fx->d = NULL;
  assert_int_equal(atomic_load(&c.count), accepted);
  assert_int_equal(atomic_load(&t.done), LEDGERS + N - atomic_load(&s.refused));
  assert_int_equal(atomic_load(&t.off_thread), 0);
  assert_true(atomic_load(&c.count) >= N / 4);
}

static void test_bad_options(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  cqrs_registry_t *reg = ledger_registry();
  cqrs_store_t *store;
  cqrs_memory_store_new(&store, NULL);
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  cqrs_dispatcher_t *d = (void *)1;
  cqrs_error_t err;
  o.loops = 65;
  assert_int_equal(cqrs_dispatcher_new(&loop, reg, store, &o, &d, &err), CQRS_EINVAL);
  assert_null(d);
  assert_non_null(strstr(err.message, "loops"));
  o.loops = 2;
  o.home_percent = 101;
  assert_int_equal(cqrs_dispatcher_new(&loop, reg, store, &o, &d, &err), CQRS_EINVAL);
  assert_non_null(strstr(err.message, "home_percent"));
  /* 0 loops is one, and a group closes at once when idle. */
  o.loops = 0;
  o.home_percent = 0;
  assert_int_equal(cqrs_dispatcher_new(&loop, reg, store, &o, &d, &err), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_close(d, NULL, NULL), CQRS_OK);
  o.loops = 8;
  assert_int_equal(cqrs_dispatcher_new(&loop, reg, store, &o, &d, &err), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_close(d, NULL, NULL), CQRS_OK);
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&loop), 0);
  cqrs_store_destroy(store);
  cqrs_registry_destroy(reg);
}

/* Every allocation that fails, whichever thread makes it (the members'
 * start, their handlers and commits, the home's completions), is an error
 * or a failed command, never a crash, a leak or a command lost. */
static atomic_long fail_at = -1;
static void *failing_malloc(size_t n) { return atomic_fetch_sub(&fail_at, 1) == 0 ? NULL : malloc(n); }
static void *failing_realloc(void *p, size_t n) {
  return atomic_fetch_sub(&fail_at, 1) == 0 ? NULL : realloc(p, n);
}

static int round_trip_loops(void) {
  uv_loop_t loop;
  if (uv_loop_init(&loop)) return 1;
  fx_t fx = {.loop_thread = uv_thread_self()};
  uv_mutex_init(&fx.threads.lock);
  cqrs_registry_t *reg = NULL;
  cqrs_store_t *store = NULL;
  cqrs_dispatcher_t *d = NULL;
  int rc = 1, sent = 0;
  tally_t t = {.fx = &fx};
  if (cqrs_registry_new(&reg, NULL) || cqrs_registry_add_aggregate(reg, &ledger_type, NULL)) goto out;
  for (size_t i = 0; all_types[i]; i++)
    if (cqrs_registry_add_command(reg, all_types[i], NULL)) goto out;
  if (cqrs_memory_store_new(&store, NULL)) goto out;
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.loops = 3;
  if (cqrs_dispatcher_new(&loop, reg, store, &o, &d, NULL)) goto out;
  fx.d = d;
  bool registered = true;
  for (size_t i = 0; all_types[i]; i++) registered &= !cqrs_dispatcher_register(d, all_types[i], handle, &fx.threads, 0, NULL);
  if (registered && !cqrs_dispatcher_subscribe(d, "watch", NULL, watch, &fx.seen, 0, NULL)) {
    for (int i = 0; i < 8; i++) sent += send_one(&fx, &t, &routed_open, i, 0, -1) == CQRS_OK;
    for (int i = 0; i < 16; i++) sent += send_one(&fx, &t, &routed_credit, i % 8, 1, -1) == CQRS_OK;
    uv_run(&loop, UV_RUN_DEFAULT);
    if (atomic_load(&t.done) != sent) fail_msg("%d of %d commands completed", atomic_load(&t.done), sent);
    rc = sent == 24 && atomic_load(&t.ok) == 24 && fx.seen.events == 24 ? 0 : 1;
  }
  if (cqrs_dispatcher_close(d, NULL, NULL)) fail_msg("close refused");
  if (uv_run(&loop, UV_RUN_DEFAULT)) fail_msg("the loop kept running after the close");
out:
  if (uv_loop_close(&loop)) fail_msg("handles left open");
  cqrs_store_destroy(store);
  cqrs_registry_destroy(reg);
  uv_mutex_destroy(&fx.threads.lock);
  return rc;
}

static void test_every_allocation_failure(void **state) {
  (void)state;
  cqrs_allocator_t hook = {failing_malloc, failing_realloc, free};
  int failures = 0;
  long n;
  for (n = 0; n < 3000; n++) {
    atomic_store(&fail_at, n);
    cqrs_set_allocator(&hook);
    int rc = round_trip_loops();
    cqrs_set_allocator(NULL);
    if (atomic_load(&fail_at) >= 0) break; /* the round trip needed fewer than n allocations: done */
    failures += rc;
  }
  assert_true(n > 20);
  assert_true(n < 3000);
  assert_true(failures > 0);
  assert_int_equal(round_trip_loops(), 0);
}

/* ---- billing transfers across loops ---- */

#define ACCOUNTS 12

static void acct_id(char *buf, size_t n, int i) { snprintf(buf, n, "acc-%d", i); }

static void count_billing(const cqrs_result_t *r, void *data) {
  if (!cqrs_result_ok(r) && !cqrs_result_rejected(r)) fail_msg("%s", r->error.message);
  (*(int *)data)++;
}

static void test_transfers_across_loops(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  cqrs_registry_t *reg;
  cqrs_registry_new(&reg, NULL);
  assert_int_equal(billing_register(reg, NULL), CQRS_OK);
  cqrs_store_t *store;
  cqrs_memory_store_new(&store, NULL);
  cqrs_readmodel_t *rm;
  cqrs_memory_readmodel_new(&rm, NULL);
  cqrs_checkpoint_store_t *cp;
  cqrs_memory_checkpoint_store_new(&cp, NULL);
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.loops = 3;
  o.retry_base_ms = 1;
  cqrs_dispatcher_t *d;
  billing_t *b = NULL;
  cqrs_error_t err;
  if (cqrs_dispatcher_new(&loop, reg, store, &o, &d, &err)) fail_msg("%s", err.message);
  if (billing_start(d, rm, cp, NULL, &b, &err)) fail_msg("%s", err.message);
  int done = 0;
  for (int i = 0; i < ACCOUNTS; i++) {
    billing_open_account_t a = {"", "Owner", "EUR"};
    acct_id(a.account_id, sizeof a.account_id, i);
    cqrs_command_t *cmd;
    assert_int_equal(cqrs_command_new(&billing_open_account, &a, &cmd, NULL), CQRS_OK);
    assert_int_equal(cqrs_dispatcher_send(d, cmd, count_billing, &done), CQRS_OK);
    billing_move_t m = {"", {1000, "EUR"}, ""};
    acct_id(m.account_id, sizeof m.account_id, i);
    assert_int_equal(cqrs_command_new(&billing_deposit, &m, &cmd, NULL), CQRS_OK);
    assert_int_equal(cqrs_dispatcher_send(d, cmd, count_billing, &done), CQRS_OK);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  enum { TRANSFERS = 400 };
  for (int k = 0; k < TRANSFERS; k++) {
    billing_request_transfer_t r = {"", "", "", {(k % 7) * 50 + 1, "EUR"}};
    snprintf(r.transfer_id, sizeof r.transfer_id, "t-%d", k);
    acct_id(r.from, sizeof r.from, k % ACCOUNTS);
    acct_id(r.to, sizeof r.to, (k * 5 + 1) % ACCOUNTS);
    cqrs_command_t *cmd;
    assert_int_equal(cqrs_command_new(&billing_request_transfer, &r, &cmd, NULL), CQRS_OK);
    assert_int_equal(cqrs_dispatcher_send(d, cmd, count_billing, &done), CQRS_OK);
  }
  uv_run(&loop, UV_RUN_DEFAULT); /* the process manager's steps too */
  assert_int_equal(done, 2 * ACCOUNTS + TRANSFERS);
  assert_int_equal(cqrs_dispatcher_dead_letter_count(d), 0);
  int completed = 0;
  for (int k = 0; k < TRANSFERS; k++) {
    char tid[16];
    snprintf(tid, sizeof tid, "t-%d", k);
    int32_t st = transfer_agrees(store, tid);
    if (st == BILLING_TRANSFER_REQUESTED) fail_msg("transfer %s never ended", tid);
    completed += st == BILLING_TRANSFER_COMPLETED;
  }
  assert_true(completed > TRANSFERS / 2);
  int64_t total = 0;
  for (int i = 0; i < ACCOUNTS; i++) {
    char id[16];
    acct_id(id, sizeof id, i);
    cqrs_aggregate_t *agg;
    assert_int_equal(cqrs_repository_load(store, &billing_account, id, &agg, NULL), CQRS_OK);
    int64_t bal = ((const billing_account_state_t *)cqrs_aggregate_state_const(agg))->balance;
    assert_true(bal >= 0);
    total += bal;
    cqrs_aggregate_destroy(agg);
  }
  assert_int_equal(total, 1000 * ACCOUNTS);
  assert_int_equal(cqrs_dispatcher_close(d, NULL, NULL), CQRS_OK);
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&loop), 0);
  billing_destroy(b);
  cqrs_checkpoint_store_destroy(cp);
  cqrs_readmodel_destroy(rm);
  cqrs_store_destroy(store);
  cqrs_registry_destroy(reg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_order_across_loops, setup4, teardown),
      cmocka_unit_test_setup_teardown(test_order_across_loops, setup4_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_exactly_once_many_senders, setup3_threads, teardown),
      cmocka_unit_test_setup_teardown(test_caches_follow_other_loops, setup4, teardown),
      cmocka_unit_test_setup_teardown(test_caches_follow_other_loops, setup4_unwatched, teardown),
      cmocka_unit_test_setup_teardown(test_caches_follow_other_writers, setup4, teardown),
      cmocka_unit_test_setup_teardown(test_close_with_commands_in_flight, setup4, teardown),
      cmocka_unit_test(test_bad_options),
      cmocka_unit_test(test_every_allocation_failure),
      cmocka_unit_test(test_transfers_across_loops),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
