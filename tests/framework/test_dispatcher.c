#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdatomic.h>
#include <string.h>

#include "ledger.h"

typedef struct fx {
  uv_loop_t loop;
  cqrs_registry_t *reg;
  cqrs_store_t *store;
  cqrs_dispatcher_t *d;
  int done_count;
  cqrs_result_t last;
  cqrs_error_t last_error;
  bool closed;
} fx_t;

typedef struct audit_cmd {
  char id[CQRS_ID_MAX];
} audit_cmd_t;
static const cqrs_field_t audit_fields[] = {CQRS_STRING(audit_cmd_t, id, "id", CQRS_F_REQUIRED), CQRS_FIELDS_END};
static const cqrs_command_type_t ledger_audit = {.name = "ledger.audit", .payload_size = sizeof(audit_cmd_t), .fields = audit_fields};

static fx_t *fx_new(unsigned flags, unsigned retries, bool keep_alive) {
  fx_t *fx = calloc(1, sizeof *fx);
  assert_int_equal(uv_loop_init(&fx->loop), 0);
  fx->reg = ledger_registry();
  assert_int_equal(cqrs_registry_add_command(fx->reg, &ledger_audit, NULL), CQRS_OK);
  cqrs_memory_store_new(&fx->store, NULL);
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.conflict_retries = retries;
  o.keep_alive = keep_alive;
  cqrs_error_t err;
  if (cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, &o, &fx->d, &err)) fail_msg("%s", err.message);
  if (ledger_handlers(fx->d, NULL, flags, &err)) fail_msg("%s", err.message);
  return fx;
}

static int setup(void **state) {
  *state = fx_new(0, 5, false);
  return 0;
}

static int setup_blocking(void **state) {
  *state = fx_new(CQRS_HANDLER_BLOCKING, 50, false);
  return 0;
}

/* Commands from other threads: the loop must wait for them. */
static int setup_threads(void **state) {
  *state = fx_new(0, 50, true);
  return 0;
}

static int setup_threads_blocking(void **state) {
  *state = fx_new(CQRS_HANDLER_BLOCKING, 50, true);
  return 0;
}

static void on_closed(void *data) { ((fx_t *)data)->closed = true; }

static int teardown(void **state) {
  fx_t *fx = *state;
  if (fx->d) {
    assert_int_equal(cqrs_dispatcher_close(fx->d, on_closed, fx), CQRS_OK);
    assert_int_equal(uv_run(&fx->loop, UV_RUN_DEFAULT), 0);
    assert_true(fx->closed);
  }
  assert_int_equal(uv_loop_close(&fx->loop), 0);
  cqrs_store_destroy(fx->store);
  cqrs_registry_destroy(fx->reg);
  free(fx);
  return 0;
}

static void on_done(const cqrs_result_t *r, void *data) {
  fx_t *fx = data;
  fx->done_count++;
  fx->last = *r;
  fx->last_error = r->error;
  fx->last.value = NULL;
}

/* Sends and runs the loop until the command completes. */
static const cqrs_error_t *run(fx_t *fx, cqrs_command_t *cmd) {
  int before = fx->done_count;
  assert_int_equal(cqrs_dispatcher_send(fx->d, cmd, on_done, fx), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(fx->done_count, before + 1);
  return &fx->last_error;
}

static int64_t balance(fx_t *fx, const char *id) {
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(fx->store, &ledger_type, id, &agg, NULL), CQRS_OK);
  int64_t b = ((ledger_state_t *)cqrs_aggregate_state(agg))->balance;
  cqrs_aggregate_destroy(agg);
  return b;
}

static void test_commands_reach_their_handler(void **state) {
  fx_t *fx = *state;
  assert_int_equal(run(fx, ledger_open_new("a", "ada"))->code, CQRS_OK);
  assert_int_equal(fx->last.version, 1);
  assert_int_equal(fx->last.events, 1);
  assert_int_equal(run(fx, ledger_credit_new("a", 40))->code, CQRS_OK);
  assert_int_equal(fx->last.version, 2);
  assert_int_equal(run(fx, ledger_debit_new("a", 15))->code, CQRS_OK);
  assert_int_equal(balance(fx, "a"), 25);
  assert_int_equal(cqrs_dispatcher_pending(fx->d), 0);
}

static void test_business_failure_is_a_result(void **state) {
  fx_t *fx = *state;
  run(fx, ledger_open_new("a", "ada"));
  const cqrs_error_t *e = run(fx, ledger_debit_new("a", 1));
  assert_int_equal(e->code, CQRS_EREJECTED);
  assert_int_equal(e->domain, CQRS_DOMAIN_BUSINESS);
  assert_string_equal(e->name, "ledger.insufficient");
  assert_int_equal(fx->last.events, 0);
  e = run(fx, ledger_credit_new("nobody", 1));
  assert_string_equal(e->name, "ledger.not_open");
  int64_t head;
  cqrs_store_head(fx->store, &head, NULL);
  assert_int_equal(head, 1);
}

static void test_no_handler_is_a_failed_result(void **state) {
  fx_t *fx = *state;
  audit_cmd_t a = {"a"};
  cqrs_command_t *cmd;
  assert_int_equal(cqrs_command_new(&ledger_audit, &a, &cmd, NULL), CQRS_OK);
  const cqrs_error_t *e = run(fx, cmd);
  assert_int_equal(e->code, CQRS_ENO_HANDLER);
  assert_non_null(strstr(e->message, "ledger.audit"));
}

static cqrs_code_t nop(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)ctx;
  (void)cmd;
  (void)err;
  (*(int *)data)++;
  return CQRS_OK;
}

static void test_registration_rules(void **state) {
  fx_t *fx = *state;
  int calls = 0;
  cqrs_error_t err;
  assert_int_equal(cqrs_dispatcher_register(fx->d, &ledger_open, nop, &calls, 0, &err), CQRS_EDUPLICATE);
  assert_non_null(strstr(err.message, "ledger.open"));
  cqrs_command_type_t stranger = ledger_audit;
  stranger.name = "ledger.stranger";
  assert_int_equal(cqrs_dispatcher_register(fx->d, &stranger, nop, &calls, 0, &err), CQRS_EUNKNOWN_TYPE);
  assert_int_equal(cqrs_dispatcher_register(fx->d, NULL, nop, &calls, 0, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_dispatcher_register(fx->d, &ledger_audit, NULL, &calls, 0, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_dispatcher_register(NULL, &ledger_audit, nop, &calls, 0, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_dispatcher_register(fx->d, &ledger_audit, nop, &calls, 0, &err), CQRS_OK);
  audit_cmd_t a = {"a"};
  cqrs_command_t *cmd;
  cqrs_command_new(&ledger_audit, &a, &cmd, NULL);
  assert_int_equal(run(fx, cmd)->code, CQRS_OK);
  assert_int_equal(calls, 1);
}

static void test_null_arguments(void **state) {
  fx_t *fx = *state;
  /* The command is taken over even when refused: ASan checks it is freed. */
  assert_int_equal(cqrs_dispatcher_send(NULL, ledger_open_new("a", "b"), on_done, fx), CQRS_EINVAL);
  assert_int_equal(cqrs_dispatcher_send(fx->d, NULL, on_done, fx), CQRS_EINVAL);
  uv_run(&fx->loop, UV_RUN_NOWAIT);
  assert_int_equal(fx->done_count, 0);
  cqrs_dispatcher_t *d;
  cqrs_error_t err;
  assert_int_equal(cqrs_dispatcher_new(NULL, fx->reg, fx->store, NULL, &d, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_dispatcher_new(&fx->loop, fx->reg, NULL, NULL, &d, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_dispatcher_close(NULL, NULL, NULL), CQRS_EINVAL);
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_context_load(NULL, &ledger_type, "a", &agg, &err), CQRS_EINVAL);
}

static cqrs_code_t failing(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)ctx;
  (void)cmd;
  (void)err;
  (*(int *)data)++;
  return CQRS_EHANDLER; /* and says nothing */
}

static void test_failing_handler(void **state) {
  fx_t *fx = *state;
  int calls = 0;
  assert_int_equal(cqrs_dispatcher_register(fx->d, &ledger_audit, failing, &calls, 0, NULL), CQRS_OK);
  audit_cmd_t a = {"a"};
  cqrs_command_t *cmd;
  cqrs_command_new(&ledger_audit, &a, &cmd, NULL);
  const cqrs_error_t *e = run(fx, cmd);
  assert_int_equal(e->code, CQRS_EHANDLER);
  assert_non_null(strstr(e->message, "ledger.audit"));
  assert_int_equal(calls, 1); /* only conflicts are retried */
}

/* Credits, but on its first run writes behind its own back, as a concurrent
 * writer would, so that its commit conflicts. */
typedef struct sneaky {
  fx_t *fx;
  int runs;
  int sneaks;
} sneaky_t;

static cqrs_code_t sneaky_credit(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  sneaky_t *s = data;
  s->runs++;
  cqrs_aggregate_t *agg;
  cqrs_code_t rc = cqrs_context_load(ctx, &ledger_type, "a", &agg, err);
  if (rc) return rc;
  if (s->sneaks-- > 0) {
    cqrs_aggregate_t *other;
    assert_int_equal(cqrs_repository_load(s->fx->store, &ledger_type, "a", &other, NULL), CQRS_OK);
    ledger_amount_t one = {1};
    cqrs_aggregate_raise(other, &ledger_credited, &one, NULL);
    char id[32];
    snprintf(id, sizeof id, "sneak-%d", s->runs);
    cqrs_cause_t cause = {id, NULL};
    assert_int_equal(cqrs_repository_save(s->fx->store, other, &cause, NULL, NULL), CQRS_OK);
    cqrs_aggregate_destroy(other);
  }
  ledger_amount_t a = {((const ledger_move_cmd_t *)cqrs_command_payload(cmd))->amount};
  return cqrs_aggregate_raise(agg, &ledger_credited, &a, err);
}

static void test_conflict_is_retried(void **state) {
  fx_t *fx = *state;
  sneaky_t s = {fx, 0, 1};
  cqrs_command_type_t t = ledger_audit;
  (void)t;
  run(fx, ledger_open_new("a", "ada"));
  /* Swap in the sneaky handler on a fresh dispatcher for credits. */
  cqrs_dispatcher_t *d2;
  assert_int_equal(cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, NULL, &d2, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_register(d2, &ledger_credit, sneaky_credit, &s, 0, NULL), CQRS_OK);
  cqrs_dispatcher_t *main_d = fx->d;
  fx->d = d2;
  assert_int_equal(run(fx, ledger_credit_new("a", 10))->code, CQRS_OK);
  assert_int_equal(s.runs, 2); /* one conflict, retried */
  assert_int_equal(balance(fx, "a"), 11);
  assert_int_equal(fx->last.version, 3);
  fx->d = main_d;
  cqrs_dispatcher_close(d2, NULL, NULL);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
}

static void test_conflict_retries_are_bounded(void **state) {
  fx_t *fx = *state;
  run(fx, ledger_open_new("a", "ada"));
  sneaky_t s = {fx, 0, 100};
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.conflict_retries = 2;
  cqrs_dispatcher_t *d2;
  assert_int_equal(cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, &o, &d2, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_register(d2, &ledger_credit, sneaky_credit, &s, 0, NULL), CQRS_OK);
  cqrs_dispatcher_t *main_d = fx->d;
  fx->d = d2;
  const cqrs_error_t *e = run(fx, ledger_credit_new("a", 10));
  assert_int_equal(e->code, CQRS_ECONFLICT);
  assert_string_equal(e->name, "conflict");
  assert_int_equal(s.runs, 3);
  assert_int_equal(balance(fx, "a"), 3); /* only the sneaky writes */
  fx->d = main_d;
  cqrs_dispatcher_close(d2, NULL, NULL);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
}

#define SENDERS 4
#define PER_SENDER 50

typedef struct sender {
  fx_t *fx;
  int refused;
} sender_t;

static void send_credits(void *arg) {
  sender_t *s = arg;
  for (int i = 0; i < PER_SENDER; i++) {
    if (cqrs_dispatcher_send(s->fx->d, ledger_credit_new("race", 1), on_done, s->fx)) s->refused++;
  }
}

static void count_done(const cqrs_result_t *r, void *data) {
  int *ok = data;
  if (r->error.code == CQRS_OK) (*ok)++;
}

static void test_racing_threads_lose_no_update(void **state) {
  fx_t *fx = *state;
  int base = fx->done_count;
  assert_int_equal(cqrs_dispatcher_send(fx->d, ledger_open_new("race", "ada"), on_done, fx), CQRS_OK);
  while (fx->done_count == base) uv_run(&fx->loop, UV_RUN_ONCE);
  base = fx->done_count;
  uv_thread_t threads[SENDERS];
  sender_t senders[SENDERS];
  for (int i = 0; i < SENDERS; i++) {
    senders[i] = (sender_t){fx, 0};
    assert_int_equal(uv_thread_create(&threads[i], send_credits, &senders[i]), 0);
  }
  /* Run the loop while the threads send; stop when every command is done. */
  while (fx->done_count - base < SENDERS * PER_SENDER) uv_run(&fx->loop, UV_RUN_ONCE);
  for (int i = 0; i < SENDERS; i++) {
    uv_thread_join(&threads[i]);
    assert_int_equal(senders[i].refused, 0);
  }
  assert_int_equal(balance(fx, "race"), SENDERS * PER_SENDER);
  int ok = 0;
  for (int i = 0; i < 3; i++) cqrs_dispatcher_send(fx->d, ledger_credit_new("race", 1), count_done, &ok);
  while (ok < 3) uv_run(&fx->loop, UV_RUN_ONCE);
  assert_int_equal(balance(fx, "race"), SENDERS * PER_SENDER + 3);
}

/* A handler that, once running, asks the loop to run a callback (an async
 * handle's) and blocks until the loop has run it: it can end only if the
 * loop keeps turning while it runs. It gives up after 30 s (a failure, not
 * a hang). */
typedef struct gate {
  uv_async_t wake;
  uv_mutex_t lock;
  uv_cond_t cond;
  bool woken;      /* the loop ran the callback */
  bool done_first; /* the command completed before that */
  bool done;
} gate_t;

static cqrs_code_t wait_for_the_loop(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)ctx, (void)cmd;
  gate_t *g = data;
  uv_async_send(&g->wake);
  uv_mutex_lock(&g->lock);
  int rc = 0;
  while (!g->woken && rc == 0) rc = uv_cond_timedwait(&g->cond, &g->lock, 30 * 1000000000ull);
  bool woken = g->woken;
  uv_mutex_unlock(&g->lock);
  return woken ? CQRS_OK : cqrs_error_set(err, CQRS_EHANDLER, "the loop ran nothing while the handler waited");
}

static void on_wake(uv_async_t *h) {
  gate_t *g = h->data;
  uv_mutex_lock(&g->lock);
  g->woken = true;
  uv_cond_signal(&g->cond);
  uv_mutex_unlock(&g->lock);
}

static void note_order(const cqrs_result_t *r, void *data) {
  gate_t *g = data;
  assert_int_equal(r->error.code, CQRS_OK);
  uv_mutex_lock(&g->lock);
  g->done_first = !g->woken;
  uv_mutex_unlock(&g->lock);
  g->done = true;
}

static void test_blocking_handler_keeps_the_loop_responsive(void **state) {
  fx_t *fx = *state;
  gate_t g = {.woken = false};
  assert_int_equal(uv_mutex_init(&g.lock), 0);
  assert_int_equal(uv_cond_init(&g.cond), 0);
  assert_int_equal(uv_async_init(&fx->loop, &g.wake, on_wake), 0);
  g.wake.data = &g;
  uv_unref((uv_handle_t *)&g.wake);
  assert_int_equal(cqrs_dispatcher_register(fx->d, &ledger_audit, wait_for_the_loop, &g, CQRS_HANDLER_BLOCKING, NULL),
                   CQRS_OK);
  audit_cmd_t a = {"a"};
  cqrs_command_t *cmd;
  cqrs_command_new(&ledger_audit, &a, &cmd, NULL);
  assert_int_equal(cqrs_dispatcher_send(fx->d, cmd, note_order, &g), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_true(g.done);
  assert_false(g.done_first);
  uv_close((uv_handle_t *)&g.wake, NULL);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  uv_cond_destroy(&g.cond);
  uv_mutex_destroy(&g.lock);
}

static void test_close_drains_in_flight_commands(void **state) {
  fx_t *fx = *state;
  run(fx, ledger_open_new("a", "ada"));
  int ok = 0;
  for (int i = 0; i < 10; i++) assert_int_equal(cqrs_dispatcher_send(fx->d, ledger_credit_new("a", 1), count_done, &ok), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_close(fx->d, on_closed, fx), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_close(fx->d, on_closed, fx), CQRS_ECLOSED);
  assert_int_equal(cqrs_dispatcher_send(fx->d, ledger_credit_new("a", 1), count_done, &ok), CQRS_ECLOSED);
  assert_int_equal(uv_run(&fx->loop, UV_RUN_DEFAULT), 0);
  assert_true(fx->closed);
  assert_int_equal(ok, 10);
  fx->d = NULL;
  assert_int_equal(balance(fx, "a"), 10);
}

static void test_repeated_command_id_commits_once(void **state) {
  fx_t *fx = *state;
  run(fx, ledger_open_new("a", "ada"));
  cqrs_command_t *c1 = ledger_credit_new("a", 5), *c2 = ledger_credit_new("a", 5);
  cqrs_command_set_id(c1, "client-1", NULL);
  cqrs_command_set_id(c2, "client-1", NULL);
  assert_int_equal(run(fx, c1)->code, CQRS_OK);
  assert_false(fx->last.duplicate);
  assert_int_equal(run(fx, c2)->code, CQRS_OK);
  assert_true(fx->last.duplicate);
  assert_int_equal(fx->last.events, 0);
  assert_int_equal(balance(fx, "a"), 5);
}

static cqrs_code_t two_changes(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)cmd;
  (void)data;
  cqrs_aggregate_t *x, *y;
  ledger_opened_t o = {"ada"};
  if (cqrs_context_load(ctx, &ledger_type, "x", &x, err) || cqrs_context_load(ctx, &ledger_type, "y", &y, err))
    return err->code;
  cqrs_aggregate_raise(x, &ledger_opened, &o, err);
  cqrs_aggregate_raise(y, &ledger_opened, &o, err);
  return CQRS_OK;
}

static void test_one_aggregate_changes_per_command(void **state) {
  fx_t *fx = *state;
  assert_int_equal(cqrs_dispatcher_register(fx->d, &ledger_audit, two_changes, NULL, 0, NULL), CQRS_OK);
  audit_cmd_t a = {"a"};
  cqrs_command_t *cmd;
  cqrs_command_new(&ledger_audit, &a, &cmd, NULL);
  const cqrs_error_t *e = run(fx, cmd);
  assert_int_equal(e->code, CQRS_ESTATE);
  int64_t head;
  cqrs_store_head(fx->store, &head, NULL);
  assert_int_equal(head, 0);
}

static cqrs_code_t with_value(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)data;
  bson_t v = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&v, "echo", ((const audit_cmd_t *)cqrs_command_payload(cmd))->id);
  assert_ptr_equal(cqrs_context_command(ctx), cmd);
  cqrs_code_t rc = cqrs_context_set_value(ctx, &v, err);
  bson_destroy(&v);
  return rc;
}

static void read_value(const cqrs_result_t *r, void *data) {
  bson_iter_t it;
  if (r->value && bson_iter_init_find(&it, r->value, "echo")) snprintf(data, 16, "%s", bson_iter_utf8(&it, NULL));
}

static void test_result_carries_a_value(void **state) {
  fx_t *fx = *state;
  assert_int_equal(cqrs_dispatcher_register(fx->d, &ledger_audit, with_value, NULL, 0, NULL), CQRS_OK);
  audit_cmd_t a = {"hello"};
  cqrs_command_t *cmd;
  cqrs_command_new(&ledger_audit, &a, &cmd, NULL);
  char got[16] = "";
  assert_int_equal(cqrs_dispatcher_send(fx->d, cmd, read_value, got), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_string_equal(got, "hello");
}

typedef struct exec_job {
  fx_t *fx;
  cqrs_code_t first, second, rejected;
  bool second_duplicate;
  char reason[CQRS_NAME_MAX];
  _Atomic bool finished;
} exec_job_t;

static void exec_worker(void *arg) {
  exec_job_t *j = arg;
  cqrs_command_t *c1 = ledger_credit_new("a", 5), *c2 = ledger_credit_new("a", 5);
  cqrs_command_set_id(c1, "exec-1", NULL);
  cqrs_command_set_id(c2, "exec-1", NULL);
  j->first = cqrs_dispatcher_execute(j->fx->d, c1, NULL, NULL);
  j->second = cqrs_dispatcher_execute(j->fx->d, c2, NULL, &j->second_duplicate);
  cqrs_error_t err;
  j->rejected = cqrs_dispatcher_execute(j->fx->d, ledger_debit_new("a", 1000), &err, NULL);
  snprintf(j->reason, sizeof j->reason, "%s", err.name);
  j->finished = true;
}

static void test_execute_waits_for_the_result(void **state) {
  fx_t *fx = *state;
  int base = fx->done_count;
  assert_int_equal(cqrs_dispatcher_send(fx->d, ledger_open_new("a", "ada"), on_done, fx), CQRS_OK);
  while (fx->done_count == base) uv_run(&fx->loop, UV_RUN_ONCE);
  exec_job_t job = {.fx = fx};
  uv_thread_t t;
  assert_int_equal(uv_thread_create(&t, exec_worker, &job), 0);
  while (!job.finished) uv_run(&fx->loop, UV_RUN_NOWAIT);
  uv_thread_join(&t);
  assert_int_equal(job.first, CQRS_OK);
  assert_int_equal(job.second, CQRS_OK);
  assert_true(job.second_duplicate);
  assert_int_equal(job.rejected, CQRS_EREJECTED);
  assert_string_equal(job.reason, "ledger.insufficient");
  assert_int_equal(balance(fx, "a"), 5);
  /* On the loop thread it would deadlock: refused. */
  cqrs_error_t err;
  assert_int_equal(cqrs_dispatcher_execute(fx->d, ledger_credit_new("a", 1), &err, NULL), CQRS_ESTATE);
  assert_int_equal(cqrs_dispatcher_execute(NULL, NULL, &err, NULL), CQRS_EINVAL);
}

/* ---- send racing close ---- */

typedef struct racer {
  cqrs_dispatcher_t *d;
  _Atomic long accepted;
  long completed; /* loop thread */
} racer_t;

static void race_done(const cqrs_result_t *r, void *data) {
  (void)r;
  ((racer_t *)data)->completed++;
}

static void race_sender(void *arg) {
  racer_t *rc = arg;
  for (long i = 0;; i++) {
    cqrs_code_t code = cqrs_dispatcher_send(rc->d, ledger_credit_new("race", 1), race_done, rc);
    if (code == CQRS_ECLOSED) return;
    assert_int_equal(code, CQRS_OK);
    atomic_fetch_add(&rc->accepted, 1);
  }
}

static void race_closed(void *data) { *(bool *)data = true; }

/* Threads send in a tight loop while the loop thread closes: every send is
 * either refused or completed, never accepted and lost; run under
 * ThreadSanitizer too. */
static void test_send_racing_close(void **state) {
  (void)state;
  cqrs_registry_t *reg = ledger_registry();
  for (int round = 0; round < 200; round++) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    cqrs_store_t *store = NULL;
    cqrs_memory_store_new(&store, NULL);
    cqrs_dispatcher_options_t o;
    cqrs_dispatcher_options_init(&o);
    o.keep_alive = true;
    racer_t rc = {NULL, 0, 0};
    assert_int_equal(cqrs_dispatcher_new(&loop, reg, store, &o, &rc.d, NULL), CQRS_OK);
    assert_int_equal(ledger_handlers(rc.d, NULL, 0, NULL), CQRS_OK);
    uv_thread_t t[2];
    for (int i = 0; i < 2; i++) assert_int_equal(uv_thread_create(&t[i], race_sender, &rc), 0);
    while (atomic_load(&rc.accepted) < round % 50) uv_run(&loop, UV_RUN_NOWAIT);
    bool closed = false;
    assert_int_equal(cqrs_dispatcher_close(rc.d, race_closed, &closed), CQRS_OK);
    /* Every sender now hears CQRS_ECLOSED; none calls after the close completes. */
    for (int i = 0; i < 2; i++) uv_thread_join(&t[i]);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(closed);
    assert_int_equal(rc.completed, atomic_load(&rc.accepted));
    assert_int_equal(uv_loop_close(&loop), 0);
    cqrs_store_destroy(store);
  }
  cqrs_registry_destroy(reg);
}

/* A program built against a header whose options struct was shorter: the
 * dispatcher reads only what the caller's size covers (the bytes past it
 * are poison here) and takes the defaults for the rest. A struct filled by
 * hand (size 0) is read as 0.2.0's. */
static void test_options_are_read_as_far_as_their_size(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  cqrs_registry_t *reg = ledger_registry();
  cqrs_store_t *store = NULL;
  cqrs_memory_store_new(&store, NULL);
  cqrs_dispatcher_options_t o;
  memset(&o, 0xff, sizeof o);
  cqrs_dispatcher_options_init_size(&o, offsetof(cqrs_dispatcher_options_t, loops));
  assert_int_equal(o.size, offsetof(cqrs_dispatcher_options_t, loops));
  assert_int_equal(o.conflict_retries, 5);
  assert_int_equal(o.loops, 0xffffffffu); /* not the caller's: not touched */
  o.conflict_retries = 2;
  cqrs_dispatcher_t *d;
  cqrs_error_t err;
  if (cqrs_dispatcher_new(&loop, reg, store, &o, &d, &err)) fail_msg("%s", err.message); /* 0xffffffff loops: refused */
  assert_int_equal(ledger_handlers(d, NULL, 0, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_send(d, ledger_open_new("l-1", "o"), NULL, NULL), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(cqrs_dispatcher_close(d, NULL, NULL), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  cqrs_dispatcher_options_t by_hand = {.conflict_retries = 1};
  assert_int_equal(cqrs_dispatcher_new(&loop, reg, store, &by_hand, &d, &err), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_close(d, NULL, NULL), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  int64_t head;
  assert_int_equal(cqrs_store_head(store, &head, NULL), CQRS_OK);
  assert_int_equal(head, 1);
  cqrs_store_destroy(store);
  cqrs_registry_destroy(reg);
}

/* Descriptors and ops tables keep room for later versions: it must be zero. */
static void test_reserved_room_must_be_zero(void **state) {
  (void)state;
  cqrs_registry_t *reg = ledger_registry();
  cqrs_error_t err;
  static const cqrs_field_t fields[] = {CQRS_FIELDS_END};
  cqrs_event_type_t e = {.name = "x.happened", .schema_version = 1, .payload_size = 1, .fields = fields};
  e.reserved[3] = &e;
  assert_int_equal(cqrs_registry_add_event(reg, &e, &err), CQRS_EINVAL);
  assert_non_null(strstr(err.message, "reserved"));
  e.reserved[3] = NULL;
  assert_int_equal(cqrs_registry_add_event(reg, &e, &err), CQRS_OK);
  cqrs_registry_destroy(reg);
}

/* The idempotent pattern: a command whose id comes from its natural id
 * (make_id) is answered "duplicate" when sent again after it committed,
 * even though its handler now rejects it (the ledger is open): a caller
 * tells a retry from a conflict, which a command of another id still is. */
static cqrs_code_t open_once_id(const void *payload, char *buf, size_t cap, cqrs_error_t *err) {
  (void)err;
  snprintf(buf, cap, "open-%s", ((const ledger_open_cmd_t *)payload)->id);
  return CQRS_OK;
}
static const cqrs_field_t open_once_fields[] = {CQRS_STRING(ledger_open_cmd_t, id, "id", CQRS_F_REQUIRED),
                                                CQRS_STRING(ledger_open_cmd_t, owner, "owner", CQRS_F_REQUIRED),
                                                CQRS_FIELDS_END};
static const cqrs_command_type_t open_once = {.name = "test.open_once", .payload_size = sizeof(ledger_open_cmd_t),
                                              .fields = open_once_fields, .make_id = open_once_id};

static cqrs_code_t handle_open_once(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)data;
  const ledger_open_cmd_t *c = cqrs_command_payload(cmd);
  cqrs_aggregate_t *agg;
  cqrs_code_t rc = cqrs_context_load(ctx, &ledger_type, c->id, &agg, err);
  if (rc) return rc;
  if (((const ledger_state_t *)cqrs_aggregate_state(agg))->opened)
    return cqrs_reject(err, "ledger.already_open", "ledger %s is already open", c->id);
  ledger_opened_t e = {{0}};
  memcpy(e.owner, c->owner, sizeof e.owner);
  return cqrs_aggregate_raise(agg, &ledger_opened, &e, err);
}

typedef struct outcome {
  cqrs_code_t code;
  bool duplicate;
  size_t events;
} outcome_t;

static void keep_outcome(const cqrs_result_t *r, void *data) {
  outcome_t *o = data;
  o->code = r->error.code;
  o->duplicate = r->duplicate;
  o->events = r->events;
}

static void test_a_natural_id_sent_again_is_a_duplicate(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  cqrs_registry_t *reg = ledger_registry();
  assert_int_equal(cqrs_registry_add_command(reg, &open_once, NULL), CQRS_OK);
  cqrs_store_t *store = NULL;
  cqrs_memory_store_new(&store, NULL);
  cqrs_dispatcher_t *d;
  assert_int_equal(cqrs_dispatcher_new(&loop, reg, store, NULL, &d, NULL), CQRS_OK);
  assert_int_equal(ledger_handlers(d, NULL, 0, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_register(d, &open_once, handle_open_once, NULL, 0, NULL), CQRS_OK);
  outcome_t first = {0}, again = {0}, other = {0};
  ledger_open_cmd_t p = {"o-1", "ada"};
  cqrs_command_t *cmd;
  assert_int_equal(cqrs_command_new(&open_once, &p, &cmd, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_send(d, cmd, keep_outcome, &first), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(cqrs_command_new(&open_once, &p, &cmd, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_send(d, cmd, keep_outcome, &again), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  /* Another command on the same ledger: a conflict with what is, rejected. */
  assert_int_equal(cqrs_dispatcher_send(d, ledger_open_new("o-1", "bob"), keep_outcome, &other), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(first.code, CQRS_OK);
  assert_false(first.duplicate);
  assert_int_equal(first.events, 1);
  assert_int_equal(again.code, CQRS_OK);
  assert_true(again.duplicate);
  assert_int_equal(again.events, 0);
  assert_int_equal(other.code, CQRS_EREJECTED);
  assert_int_equal(cqrs_dispatcher_close(d, NULL, NULL), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  bool found = false;
  assert_int_equal(cqrs_store_has_command(store, "open-o-1", &found, NULL), CQRS_OK);
  assert_true(found);
  cqrs_store_destroy(store);
  cqrs_registry_destroy(reg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_commands_reach_their_handler, setup, teardown),
      cmocka_unit_test_setup_teardown(test_commands_reach_their_handler, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_business_failure_is_a_result, setup, teardown),
      cmocka_unit_test_setup_teardown(test_no_handler_is_a_failed_result, setup, teardown),
      cmocka_unit_test_setup_teardown(test_registration_rules, setup, teardown),
      cmocka_unit_test_setup_teardown(test_null_arguments, setup, teardown),
      cmocka_unit_test_setup_teardown(test_failing_handler, setup, teardown),
      cmocka_unit_test_setup_teardown(test_conflict_is_retried, setup, teardown),
      cmocka_unit_test_setup_teardown(test_conflict_retries_are_bounded, setup, teardown),
      cmocka_unit_test_setup_teardown(test_racing_threads_lose_no_update, setup_threads_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_racing_threads_lose_no_update, setup_threads, teardown),
      cmocka_unit_test_setup_teardown(test_blocking_handler_keeps_the_loop_responsive, setup, teardown),
      cmocka_unit_test_setup_teardown(test_close_drains_in_flight_commands, setup, teardown),
      cmocka_unit_test_setup_teardown(test_close_drains_in_flight_commands, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_repeated_command_id_commits_once, setup, teardown),
      cmocka_unit_test_setup_teardown(test_one_aggregate_changes_per_command, setup, teardown),
      cmocka_unit_test_setup_teardown(test_result_carries_a_value, setup, teardown),
      cmocka_unit_test_setup_teardown(test_execute_waits_for_the_result, setup_threads, teardown),
      cmocka_unit_test(test_send_racing_close),
      cmocka_unit_test(test_options_are_read_as_far_as_their_size),
      cmocka_unit_test(test_reserved_room_must_be_zero),
      cmocka_unit_test(test_a_natural_id_sent_again_is_a_duplicate),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
