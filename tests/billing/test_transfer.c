#include <stdio.h>

#include "fixture.h"
#include "framework/ledger.h"

/* ---- the transfer aggregate, given / when / then ---- */

static int setup(void **state) {
  *state = bfx_new(&billing_transfer, "t-1");
  return 0;
}

#define T (((bfx_t *)*state)->t)

static void given_eur_account(void **state, const char *id, int64_t balance) {
  billing_account_opened_t o = {"Owner", "EUR"};
  assert_int_equal(cqrs_test_given_for(T, &billing_account, id, &billing_account_opened, &o), CQRS_OK);
  if (balance)
    assert_int_equal(cqrs_test_given_for(T, &billing_account, id, &billing_account_deposited,
                                         &(billing_account_moved_t){EUR(balance), balance, ""}),
                     CQRS_OK);
}

static void test_request(void **state) {
  given_eur_account(state, "a", 1000);
  CQRS_WHEN(T, &billing_request_transfer, (billing_request_transfer_t){"t-1", "a", "b", EUR(400)});
  CQRS_THEN_EVENTS(T, {&billing_transfer_requested, &(billing_transfer_requested_t){"a", "b", EUR(400)}});
}

static void test_request_without_enough_money_changes_nothing(void **state) {
  given_eur_account(state, "a", 1000);
  CQRS_WHEN(T, &billing_request_transfer, (billing_request_transfer_t){"t-1", "a", "b", EUR(1001)});
  CQRS_THEN_REJECTED(T, "account.not_enough_money");
}

static void test_request_from_unusable_accounts(void **state) {
  CQRS_WHEN(T, &billing_request_transfer, (billing_request_transfer_t){"t-1", "a", "b", EUR(1)});
  CQRS_THEN_REJECTED(T, "account.not_open");
  given_eur_account(state, "a", 0);
  assert_int_equal(cqrs_test_given_for(T, &billing_account, "a", &billing_account_closed,
                                       &(billing_account_closed_t){1}),
                   CQRS_OK);
  CQRS_WHEN(T, &billing_request_transfer, (billing_request_transfer_t){"t-1", "a", "b", EUR(1)});
  CQRS_THEN_REJECTED(T, "account.closed");
  given_eur_account(state, "c", 500);
  CQRS_WHEN(T, &billing_request_transfer, (billing_request_transfer_t){"t-1", "c", "b", USD(1)});
  CQRS_THEN_REJECTED(T, "account.currency_mismatch");
  CQRS_WHEN(T, &billing_request_transfer, (billing_request_transfer_t){"t-1", "c", "c", EUR(1)});
  CQRS_THEN_REJECTED(T, "transfer.same_account");
}

static void test_request_twice_is_refused(void **state) {
  given_eur_account(state, "a", 1000);
  CQRS_GIVEN(T, &billing_transfer_requested, (billing_transfer_requested_t){"a", "b", EUR(400)});
  CQRS_WHEN(T, &billing_request_transfer, (billing_request_transfer_t){"t-1", "a", "b", EUR(400)});
  CQRS_THEN_REJECTED(T, "transfer.already_requested");
}

static void test_outcomes_are_recorded_once(void **state) {
  CQRS_WHEN(T, &billing_complete_transfer, (billing_transfer_outcome_t){"t-1", ""});
  CQRS_THEN_REJECTED(T, "transfer.unknown");
  CQRS_GIVEN(T, &billing_transfer_requested, (billing_transfer_requested_t){"a", "b", EUR(400)});
  CQRS_WHEN(T, &billing_refund_transfer, (billing_transfer_outcome_t){"t-1", "account.closed"});
  CQRS_THEN_EVENTS(T, {&billing_transfer_refunded, &(billing_transfer_ended_t){"account.closed"}});
  CQRS_WHEN(T, &billing_refund_transfer, (billing_transfer_outcome_t){"t-1", "account.closed"});
  CQRS_THEN_EVENTS(T, {NULL, NULL}); /* the same outcome again: nothing new */
  CQRS_WHEN(T, &billing_complete_transfer, (billing_transfer_outcome_t){"t-1", ""});
  CQRS_THEN_REJECTED(T, "transfer.already_ended");
  CQRS_WHEN(T, &billing_fail_transfer, (billing_transfer_outcome_t){"t-1", "x"});
  CQRS_THEN_REJECTED(T, "transfer.already_ended");
}

/* ---- the whole flow, through the process manager ---- */

typedef struct flow {
  uv_loop_t loop;
  cqrs_registry_t *reg;
  cqrs_store_t *mem, *store;
  cqrs_readmodel_t *rm;
  cqrs_checkpoints_t *cp;
  cqrs_dispatcher_t *d;
  billing_t *billing;
  cqrs_queries_t *q;
} flow_t;

static void flow_start(flow_t *f, bool with_process) {
  cqrs_error_t err;
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.retry_base_ms = 1;
  if (cqrs_dispatcher_new(&f->loop, f->reg, f->store, &o, &f->d, &err)) fail_msg("%s", err.message);
  if (with_process) {
    if (billing_start(f->d, f->rm, f->cp, NULL, &f->billing, &err)) fail_msg("%s", err.message);
  } else {
    assert_int_equal(billing_register_handlers(f->d, &err), CQRS_OK);
  }
}

static void flow_stop(flow_t *f) {
  assert_int_equal(cqrs_dispatcher_close(f->d, NULL, NULL), CQRS_OK);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  f->d = NULL;
  billing_destroy(f->billing);
  f->billing = NULL;
}

static flow_t *flow_new(bool blocking) {
  flow_t *f = calloc(1, sizeof *f);
  uv_loop_init(&f->loop);
  f->reg = cqrs_registry_new();
  assert_int_equal(billing_register(f->reg, NULL), CQRS_OK);
  f->mem = cqrs_memory_store_new();
  f->store = blocking ? ledger_blocking_store(f->mem, 0) : f->mem;
  f->rm = cqrs_memory_readmodel_new();
  f->cp = cqrs_memory_checkpoints_new();
  f->q = cqrs_queries_new(f->rm);
  assert_int_equal(billing_register_queries(f->q, NULL, NULL), CQRS_OK);
  flow_start(f, true);
  return f;
}

static int flow_setup(void **state) {
  *state = flow_new(false);
  return 0;
}

static int flow_setup_blocking(void **state) {
  *state = flow_new(true);
  return 0;
}

static int flow_teardown(void **state) {
  flow_t *f = *state;
  if (f->d) flow_stop(f);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  cqrs_queries_destroy(f->q);
  cqrs_checkpoints_destroy(f->cp);
  cqrs_readmodel_destroy(f->rm);
  if (f->store != f->mem) cqrs_store_destroy(f->store);
  cqrs_store_destroy(f->mem);
  cqrs_registry_destroy(f->reg);
  free(f);
  return 0;
}

typedef struct outcome {
  cqrs_error_t error;
  int done;
} outcome_t;

static void on_done(const cqrs_result_t *r, void *data) {
  outcome_t *o = data;
  o->error = r->error;
  o->done++;
}

/* Sends and runs the loop until the command and all it set off are done. */
static const cqrs_error_t *run(flow_t *f, const cqrs_command_type_t *type, const void *payload) {
  static outcome_t o;
  memset(&o, 0, sizeof o);
  cqrs_command_t *cmd;
  assert_int_equal(cqrs_command_new(type, payload, &cmd, &o.error), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_send(f->d, cmd, on_done, &o), CQRS_OK);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(o.done, 1);
  return &o.error;
}

static void open_with(flow_t *f, const char *id, const char *currency, int64_t cents) {
  billing_open_account_t o = {"", "Owner", ""};
  snprintf(o.account_id, sizeof o.account_id, "%s", id);
  snprintf(o.currency, sizeof o.currency, "%s", currency);
  assert_int_equal(run(f, &billing_open_account, &o)->code, CQRS_OK);
  if (cents) {
    billing_move_t m = {"", {cents, ""}, ""};
    snprintf(m.account_id, sizeof m.account_id, "%s", id);
    snprintf(m.amount.currency, sizeof m.amount.currency, "%s", currency);
    assert_int_equal(run(f, &billing_deposit, &m)->code, CQRS_OK);
  }
}

/* Balance on the write side, and the same on the read side. */
static int64_t balance(flow_t *f, const char *id) {
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(f->mem, &billing_account, id, &agg, NULL), CQRS_OK);
  int64_t b = ((const billing_account_state_t *)cqrs_aggregate_state_const(agg))->balance;
  cqrs_aggregate_destroy(agg);
  bson_t params = BSON_INITIALIZER, out = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&params, "accountId", id);
  assert_int_equal(cqrs_queries_run(f->q, "account.balance", &params, &out, NULL), CQRS_OK);
  bson_iter_t it, v;
  assert_true(bson_iter_init(&it, &out) && bson_iter_find_descendant(&it, "balance.amount", &v));
  assert_int_equal(bson_iter_as_int64(&v), b);
  bson_destroy(&params);
  bson_destroy(&out);
  return b;
}

static int64_t total_eur(flow_t *f) {
  bson_t out = BSON_INITIALIZER;
  assert_int_equal(cqrs_queries_run(f->q, "account.total", NULL, &out, NULL), CQRS_OK);
  bson_iter_t it, v;
  int64_t total = bson_iter_init(&it, &out) && bson_iter_find_descendant(&it, "totals.EUR", &v) ? bson_iter_as_int64(&v) : 0;
  bson_destroy(&out);
  return total;
}

static int32_t transfer_status(flow_t *f, const char *id, char *reason) {
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(f->mem, &billing_transfer, id, &agg, NULL), CQRS_OK);
  const billing_transfer_state_t *s = cqrs_aggregate_state_const(agg);
  int32_t status = s->status;
  if (reason) strcpy(reason, s->reason);
  cqrs_aggregate_destroy(agg);
  return status;
}

static void request(flow_t *f, const char *tid, const char *from, const char *to, cqrs_money_t amount,
                    const char *expect) {
  billing_request_transfer_t r = {"", "", "", amount};
  snprintf(r.transfer_id, sizeof r.transfer_id, "%s", tid);
  snprintf(r.from, sizeof r.from, "%s", from);
  snprintf(r.to, sizeof r.to, "%s", to);
  const cqrs_error_t *e = run(f, &billing_request_transfer, &r);
  if (strcmp(e->code ? e->name : "", expect)) fail_msg("transfer %s: got '%s' (%s)", tid, e->name, e->message);
}

static void test_flow_completes(void **state) {
  flow_t *f = *state;
  open_with(f, "a", "EUR", 100000);
  open_with(f, "b", "EUR", 0);
  request(f, "t-1", "a", "b", EUR(30000), "");
  assert_int_equal(transfer_status(f, "t-1", NULL), BILLING_TRANSFER_COMPLETED);
  assert_int_equal(balance(f, "a"), 70000);
  assert_int_equal(balance(f, "b"), 30000);
  assert_int_equal(total_eur(f), 100000);
}

static void test_flow_refused_for_want_of_money(void **state) {
  flow_t *f = *state;
  open_with(f, "a", "EUR", 100);
  open_with(f, "b", "EUR", 0);
  request(f, "t-1", "a", "b", EUR(101), "account.not_enough_money");
  assert_int_equal(transfer_status(f, "t-1", NULL), BILLING_TRANSFER_NONE);
  assert_int_equal(balance(f, "a"), 100);
  assert_int_equal(balance(f, "b"), 0);
}

static void test_flow_refunds_a_closed_destination(void **state) {
  flow_t *f = *state;
  open_with(f, "a", "EUR", 1000);
  open_with(f, "b", "EUR", 0);
  assert_int_equal(run(f, &billing_close_account, &(billing_close_account_t){"b"})->code, CQRS_OK);
  request(f, "t-1", "a", "b", EUR(400), "");
  char reason[CQRS_NAME_MAX];
  assert_int_equal(transfer_status(f, "t-1", reason), BILLING_TRANSFER_REFUNDED);
  assert_string_equal(reason, "account.closed");
  assert_int_equal(balance(f, "a"), 1000);
  assert_int_equal(balance(f, "b"), 0);
  assert_int_equal(total_eur(f), 1000);
}

static void test_flow_refunds_another_currency(void **state) {
  flow_t *f = *state;
  open_with(f, "a", "EUR", 1000);
  open_with(f, "u", "USD", 0);
  request(f, "t-1", "a", "u", EUR(400), "");
  char reason[CQRS_NAME_MAX];
  assert_int_equal(transfer_status(f, "t-1", reason), BILLING_TRANSFER_REFUNDED);
  assert_string_equal(reason, "account.currency_mismatch");
  assert_int_equal(balance(f, "a"), 1000);
  assert_int_equal(balance(f, "u"), 0);
}

static void test_flow_refunds_an_unknown_destination(void **state) {
  flow_t *f = *state;
  open_with(f, "a", "EUR", 1000);
  request(f, "t-1", "a", "ghost", EUR(400), "");
  assert_int_equal(transfer_status(f, "t-1", NULL), BILLING_TRANSFER_REFUNDED);
  assert_int_equal(balance(f, "a"), 1000);
}

/* Many transfers at once between three accounts; on the blocking store the
 * handlers and the process manager run on the thread pool in parallel. */
static void test_flow_many_at_once(void **state) {
  flow_t *f = *state;
  const char *acc[] = {"x", "y", "z"};
  for (int i = 0; i < 3; i++) open_with(f, acc[i], "EUR", 10000);
  outcome_t outcomes[60];
  memset(outcomes, 0, sizeof outcomes);
  for (int i = 0; i < 60; i++) {
    billing_request_transfer_t r = {"", "", "", EUR(1000 + 97 * i)};
    snprintf(r.transfer_id, sizeof r.transfer_id, "m-%d", i);
    snprintf(r.from, sizeof r.from, "%s", acc[i % 3]);
    snprintf(r.to, sizeof r.to, "%s", acc[(i % 3 + 1 + (i / 3) % 2) % 3]); /* never the source */
    cqrs_command_t *cmd;
    assert_int_equal(cqrs_command_new(&billing_request_transfer, &r, &cmd, NULL), CQRS_OK);
    assert_int_equal(cqrs_dispatcher_send(f->d, cmd, on_done, &outcomes[i]), CQRS_OK);
  }
  uv_run(&f->loop, UV_RUN_DEFAULT);
  int completed = 0;
  for (int i = 0; i < 60; i++) {
    assert_int_equal(outcomes[i].done, 1);
    char tid[16];
    snprintf(tid, sizeof tid, "m-%d", i);
    int32_t st = transfer_status(f, tid, NULL);
    if (outcomes[i].error.code == CQRS_OK) {
      assert_true(st == BILLING_TRANSFER_COMPLETED || st == BILLING_TRANSFER_FAILED);
      completed += st == BILLING_TRANSFER_COMPLETED;
    } else {
      assert_int_equal(outcomes[i].error.code, CQRS_EREJECTED);
      assert_int_equal(st, BILLING_TRANSFER_NONE);
    }
  }
  assert_true(completed > 0);
  int64_t sum = 0;
  for (int i = 0; i < 3; i++) {
    int64_t b = balance(f, acc[i]);
    assert_true(b >= 0);
    sum += b;
  }
  assert_int_equal(sum, 30000);
  assert_int_equal(total_eur(f), 30000);
}

/* The process stops after the debit committed and before the credit; on
 * restart the process manager resumes from its checkpoint. `at_request`:
 * the checkpoint had passed the transfer's request (the debit was the
 * process manager's own), or not (the debit came before it saw anything). */
static void stop_between_debit_and_credit(flow_t *f, bool at_request) {
  open_with(f, "a", "EUR", 1000);
  open_with(f, "b", "EUR", 500);
  flow_stop(f);

  /* The run that stops: a request, then the debit, and nothing more. */
  flow_start(f, false);
  request(f, "t-1", "a", "b", EUR(300), "");
  int64_t requested_at;
  assert_int_equal(cqrs_store_head(f->mem, &requested_at, NULL), CQRS_OK);
  billing_move_t debit = {"a", EUR(300), "t-1"};
  cqrs_command_t *cmd;
  assert_int_equal(cqrs_command_new(&billing_withdraw, &debit, &cmd, NULL), CQRS_OK);
  assert_int_equal(cqrs_command_set_id(cmd, "t-1/debit", NULL), CQRS_OK);
  outcome_t o = {{0}, 0};
  assert_int_equal(cqrs_dispatcher_send(f->d, cmd, on_done, &o), CQRS_OK);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(o.error.code, CQRS_OK);
  flow_stop(f);
  if (at_request) assert_int_equal(cqrs_checkpoints_save(f->cp, "billing.process", requested_at, NULL), CQRS_OK);

  /* Stopped: the money is in flight, the transfer not ended. */
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(f->mem, &billing_account, "a", &agg, NULL), CQRS_OK);
  assert_int_equal(((const billing_account_state_t *)cqrs_aggregate_state_const(agg))->balance, 700);
  cqrs_aggregate_destroy(agg);
  assert_int_equal(transfer_status(f, "t-1", NULL), BILLING_TRANSFER_REQUESTED);

  /* Restart: the process manager catches up from its checkpoint. */
  flow_start(f, true);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  while (!cqrs_projection_live(f->d, "billing.process")) uv_run(&f->loop, UV_RUN_ONCE);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(transfer_status(f, "t-1", NULL), BILLING_TRANSFER_COMPLETED);
  assert_int_equal(balance(f, "a"), 700); /* debited once, not twice */
  assert_int_equal(balance(f, "b"), 800);
  assert_int_equal(total_eur(f), 1500);
}

static void test_stop_before_the_process_saw_the_request(void **state) { stop_between_debit_and_credit(*state, false); }
static void test_stop_after_the_process_debited(void **state) { stop_between_debit_and_credit(*state, true); }

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_request, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_request_without_enough_money_changes_nothing, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_request_from_unusable_accounts, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_request_twice_is_refused, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_outcomes_are_recorded_once, setup, bfx_teardown),
      cmocka_unit_test_setup_teardown(test_flow_completes, flow_setup, flow_teardown),
      cmocka_unit_test_setup_teardown(test_flow_refused_for_want_of_money, flow_setup, flow_teardown),
      cmocka_unit_test_setup_teardown(test_flow_refunds_a_closed_destination, flow_setup, flow_teardown),
      cmocka_unit_test_setup_teardown(test_flow_refunds_another_currency, flow_setup, flow_teardown),
      cmocka_unit_test_setup_teardown(test_flow_refunds_an_unknown_destination, flow_setup, flow_teardown),
      cmocka_unit_test_setup_teardown(test_flow_many_at_once, flow_setup, flow_teardown),
      cmocka_unit_test_setup_teardown(test_flow_many_at_once, flow_setup_blocking, flow_teardown),
      cmocka_unit_test_setup_teardown(test_flow_completes, flow_setup_blocking, flow_teardown),
      cmocka_unit_test_setup_teardown(test_stop_before_the_process_saw_the_request, flow_setup, flow_teardown),
      cmocka_unit_test_setup_teardown(test_stop_after_the_process_debited, flow_setup, flow_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
