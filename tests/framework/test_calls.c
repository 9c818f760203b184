/* Handlers that call out (cqrs_dispatcher_register_call): started on the
 * loop, completed from another thread, decided like any handler, never
 * holding a thread while the call is out, never called twice. */
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

/* A "payment" command: credit a ledger by what the gateway approves. */
typedef struct pay {
  char id[CQRS_ID_MAX];
  int64_t amount;
} pay_t;
static const cqrs_field_t pay_fields[] = {CQRS_STRING(pay_t, id, "id", CQRS_F_REQUIRED),
                                          CQRS_INT64(pay_t, amount, "amount", 0), CQRS_FIELDS_END};
static const cqrs_command_type_t pay_cmd = {.name = "test.pay", .payload_size = sizeof(pay_t), .fields = pay_fields};

enum { MAX_CALLS = 64 };

typedef struct gateway {
  uv_sem_t started;          /* posted by each start */
  cqrs_call_t *calls[MAX_CALLS];
  _Atomic int nstarted, ndecided;
  bool refuse_start;         /* start fails at once */
  bool conflict_once;        /* the first decide lets another writer commit first */
  cqrs_store_t *store;       /* for that other writer */
} gateway_t;

static cqrs_code_t start_payment(cqrs_call_t *call, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  gateway_t *g = data;
  assert_ptr_equal(cqrs_call_command(call), cmd);
  if (g->refuse_start) return cqrs_error_set(err, CQRS_ESTORE, "the gateway is down");
  int i = atomic_fetch_add(&g->nstarted, 1);
  assert_true(i < MAX_CALLS);
  g->calls[i] = call;
  uv_sem_post(&g->started);
  return CQRS_OK;
}

/* Another writer commits a credit on `id` now, directly in the store. */
static void other_writer(cqrs_store_t *store, const char *id) {
  int64_t version = 0;
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(store, &ledger_type, id, &agg, NULL), CQRS_OK);
  version = cqrs_aggregate_version(agg);
  cqrs_aggregate_destroy(agg);
  cqrs_envelope_t *env;
  cqrs_event_t *e;
  assert_int_equal(cqrs_envelope_new("ledger", id, "other-writer", NULL, &env, NULL), CQRS_OK);
  assert_int_equal(cqrs_event_new(&ledger_credited, env, NULL, version + 1, cqrs_now_ms(), &(ledger_amount_t){1}, &e,
                                  NULL),
                   CQRS_OK);
  cqrs_append_t req = {"ledger", id, version, "other-writer", &e, 1};
  cqrs_append_result_t res;
  assert_int_equal(cqrs_store_append(store, &req, &res, NULL), CQRS_OK);
  cqrs_event_unref(e);
  cqrs_envelope_unref(env);
}

static cqrs_code_t decide_payment(cqrs_context_t *ctx, const cqrs_command_t *cmd, const bson_t *reply, void *data,
                                  cqrs_error_t *err) {
  gateway_t *g = data;
  const pay_t *p = cqrs_command_payload(cmd);
  if (atomic_fetch_add(&g->ndecided, 1) == 0 && g->conflict_once) other_writer(g->store, p->id);
  bson_iter_t it;
  if (!bson_iter_init_find(&it, reply, "approved") || !bson_iter_as_bool(&it))
    return cqrs_reject(err, "payment.declined", "the gateway declined %s", p->id);
  cqrs_aggregate_t *agg;
  cqrs_code_t rc = cqrs_context_load(ctx, &ledger_type, p->id, &agg, err);
  if (rc) return rc;
  return cqrs_aggregate_raise(agg, &ledger_credited, &(ledger_amount_t){p->amount}, err);
}

typedef struct fx {
  uv_loop_t loop;
  cqrs_registry_t *reg;
  cqrs_store_t *mem, *store;
  cqrs_dispatcher_t *d;
  gateway_t g;
} fx_t;

static fx_t *fx_new(bool blocking) {
  fx_t *fx = calloc(1, sizeof *fx);
  uv_loop_init(&fx->loop);
  fx->reg = ledger_registry();
  assert_int_equal(cqrs_registry_add_command(fx->reg, &pay_cmd, NULL), CQRS_OK);
  cqrs_memory_store_new(&fx->mem, NULL);
  fx->store = blocking ? ledger_blocking_store(fx->mem, 0) : fx->mem;
  assert_int_equal(uv_sem_init(&fx->g.started, 0), 0);
  fx->g.store = fx->mem;
  cqrs_error_t err;
  if (cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, NULL, &fx->d, &err)) fail_msg("%s", err.message);
  assert_int_equal(ledger_handlers(fx->d, NULL, 0, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_register_call(fx->d, &pay_cmd, start_payment, decide_payment, &fx->g, 0, &err),
                   CQRS_OK);
  return fx;
}

static void fx_free(fx_t *fx) {
  assert_int_equal(cqrs_dispatcher_close(fx->d, NULL, NULL), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&fx->loop), 0);
  uv_sem_destroy(&fx->g.started);
  if (fx->store != fx->mem) cqrs_store_destroy(fx->store);
  cqrs_store_destroy(fx->mem);
  cqrs_registry_destroy(fx->reg);
  free(fx);
}

typedef struct outcome {
  _Atomic int done;
  cqrs_code_t code;
  char name[CQRS_NAME_MAX];
  size_t events;
} outcome_t;

static void keep(const cqrs_result_t *r, void *data) {
  outcome_t *o = data;
  o->code = r->error.code;
  snprintf(o->name, sizeof o->name, "%s", r->error.name);
  o->events = r->events;
  atomic_fetch_add(&o->done, 1);
}

static void open_ledger(fx_t *fx, const char *id) {
  assert_int_equal(cqrs_dispatcher_send(fx->d, ledger_open_new(id, "o"), NULL, NULL), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
}

static void send_pay(fx_t *fx, const char *id, int64_t amount, outcome_t *o) {
  pay_t p = {{0}, amount};
  snprintf(p.id, sizeof p.id, "%s", id);
  cqrs_command_t *cmd;
  assert_int_equal(cqrs_command_new(&pay_cmd, &p, &cmd, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_send(fx->d, cmd, keep, o), CQRS_OK);
}

static int64_t balance(fx_t *fx, const char *id) {
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(fx->mem, &ledger_type, id, &agg, NULL), CQRS_OK);
  int64_t b = ((const ledger_state_t *)cqrs_aggregate_state(agg))->balance;
  cqrs_aggregate_destroy(agg);
  return b;
}

/* The gateway: waits for `n` starts, then answers each, from its own thread. */
typedef struct answerer {
  gateway_t *g;
  int n;
  bool approve;
  bool fail;
} answerer_t;

static void answer(void *arg) {
  answerer_t *a = arg;
  for (int i = 0; i < a->n; i++) uv_sem_wait(&a->g->started);
  for (int i = 0; i < a->n; i++) {
    if (a->fail) {
      cqrs_error_t e;
      cqrs_reject(&e, "gateway.timeout", "no answer from the gateway");
      assert_int_equal(cqrs_call_fail(a->g->calls[i], &e), CQRS_OK);
      continue;
    }
    bson_t *reply = BCON_NEW("approved", BCON_BOOL(a->approve));
    assert_int_equal(cqrs_call_complete(a->g->calls[i], reply), CQRS_OK);
    bson_destroy(reply);
  }
}

static void run_until(fx_t *fx, outcome_t *o, int n) {
  while (atomic_load(&o->done) < n) uv_run(&fx->loop, UV_RUN_ONCE);
}

/* Started on the loop, completed from the gateway's thread, decided with
 * the reply: the command commits what the reply allows. */
static void test_a_call_completed_from_another_thread(void **state) {
  (void)state;
  fx_t *fx = fx_new(false);
  open_ledger(fx, "a");
  outcome_t o = {0};
  answerer_t a = {&fx->g, 1, true, false};
  uv_thread_t t;
  assert_int_equal(uv_thread_create(&t, answer, &a), 0);
  send_pay(fx, "a", 30, &o);
  run_until(fx, &o, 1);
  uv_thread_join(&t);
  assert_int_equal(o.code, CQRS_OK);
  assert_int_equal(o.events, 1);
  assert_int_equal(atomic_load(&fx->g.nstarted), 1);
  assert_int_equal(atomic_load(&fx->g.ndecided), 1);
  assert_int_equal(balance(fx, "a"), 30);
  /* Declined: decide rejects, nothing committed. */
  answerer_t no = {&fx->g, 1, false, false};
  assert_int_equal(uv_thread_create(&t, answer, &no), 0);
  fx->g.nstarted = 0;
  send_pay(fx, "a", 30, &o);
  run_until(fx, &o, 2);
  uv_thread_join(&t);
  assert_int_equal(o.code, CQRS_EREJECTED);
  assert_string_equal(o.name, "payment.declined");
  assert_int_equal(balance(fx, "a"), 30);
  fx_free(fx);
}

/* A call that fails completes its command with its error; decide never runs. */
static void test_a_failed_call(void **state) {
  (void)state;
  fx_t *fx = fx_new(false);
  open_ledger(fx, "a");
  outcome_t o = {0};
  answerer_t a = {&fx->g, 1, true, true};
  uv_thread_t t;
  assert_int_equal(uv_thread_create(&t, answer, &a), 0);
  send_pay(fx, "a", 30, &o);
  run_until(fx, &o, 1);
  uv_thread_join(&t);
  assert_int_equal(o.code, CQRS_EREJECTED);
  assert_string_equal(o.name, "gateway.timeout");
  assert_int_equal(atomic_load(&fx->g.ndecided), 0);
  /* A start that refuses: the command completes with its error at once. */
  fx->g.refuse_start = true;
  send_pay(fx, "a", 30, &o);
  run_until(fx, &o, 2);
  assert_int_equal(o.code, CQRS_ESTORE);
  assert_int_equal(balance(fx, "a"), 0);
  fx_free(fx);
}

/* decide runs again after a conflict, with the same reply: the gateway is
 * called once. */
static void test_a_conflict_decides_again_and_calls_once(void **state) {
  (void)state;
  fx_t *fx = fx_new(false);
  open_ledger(fx, "a");
  fx->g.conflict_once = true;
  outcome_t o = {0};
  answerer_t a = {&fx->g, 1, true, false};
  uv_thread_t t;
  assert_int_equal(uv_thread_create(&t, answer, &a), 0);
  send_pay(fx, "a", 30, &o);
  run_until(fx, &o, 1);
  uv_thread_join(&t);
  assert_int_equal(o.code, CQRS_OK);
  assert_int_equal(atomic_load(&fx->g.nstarted), 1);
  assert_int_equal(atomic_load(&fx->g.ndecided), 2);
  assert_int_equal(balance(fx, "a"), 31); /* the other writer's 1, then the payment's 30 */
  fx_free(fx);
}

/* Forty calls out at once on a blocking store (decide on the pool): all
 * start before any is answered, so none holds a thread while it is out
 * (libuv's pool has four); then all are decided. */
static void test_calls_out_hold_no_thread(void **state) {
  (void)state;
  fx_t *fx = fx_new(true);
  open_ledger(fx, "a");
  enum { N = 40 };
  outcome_t o = {0};
  answerer_t a = {&fx->g, N, true, false};
  uv_thread_t t;
  assert_int_equal(uv_thread_create(&t, answer, &a), 0);
  for (int i = 0; i < N; i++) send_pay(fx, "a", 1, &o);
  run_until(fx, &o, N);
  uv_thread_join(&t);
  assert_int_equal(o.code, CQRS_OK);
  assert_int_equal(atomic_load(&fx->g.nstarted), N);
  assert_int_equal(balance(fx, "a"), N);
  fx_free(fx);
}

/* A close waits for the calls out; failing them lets it finish. */
static void test_close_waits_for_calls_out(void **state) {
  (void)state;
  fx_t *fx = fx_new(false);
  open_ledger(fx, "a");
  outcome_t o = {0};
  send_pay(fx, "a", 5, &o);
  while (atomic_load(&fx->g.nstarted) == 0) uv_run(&fx->loop, UV_RUN_ONCE);
  assert_int_equal(cqrs_dispatcher_close(fx->d, NULL, NULL), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_NOWAIT);
  assert_int_equal(atomic_load(&o.done), 0);
  cqrs_error_t e;
  cqrs_error_set(&e, CQRS_ECLOSED, "the application stops");
  assert_int_equal(cqrs_call_fail(fx->g.calls[0], &e), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT); /* returns once the close is done */
  assert_int_equal(o.code, CQRS_ECLOSED);
  assert_int_equal(uv_loop_close(&fx->loop), 0);
  uv_sem_destroy(&fx->g.started);
  cqrs_store_destroy(fx->mem);
  cqrs_registry_destroy(fx->reg);
  free(fx);
}

static void test_registration_is_checked(void **state) {
  (void)state;
  fx_t *fx = fx_new(false);
  cqrs_error_t err;
  assert_int_equal(cqrs_dispatcher_register_call(fx->d, &pay_cmd, start_payment, decide_payment, NULL, 0, &err),
                   CQRS_EDUPLICATE);
  assert_int_equal(cqrs_dispatcher_register_call(fx->d, &ledger_open, NULL, decide_payment, NULL, 0, &err),
                   CQRS_EINVAL);
  assert_int_equal(cqrs_call_complete(NULL, NULL), CQRS_EINVAL);
  assert_int_equal(cqrs_call_fail(NULL, NULL), CQRS_EINVAL);
  assert_null(cqrs_call_command(NULL));
  fx_free(fx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_call_completed_from_another_thread),
      cmocka_unit_test(test_a_failed_call),
      cmocka_unit_test(test_a_conflict_decides_again_and_calls_once),
      cmocka_unit_test(test_calls_out_hold_no_thread),
      cmocka_unit_test(test_close_waits_for_calls_out),
      cmocka_unit_test(test_registration_is_checked),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
