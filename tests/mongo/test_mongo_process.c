/* Transfers as process managers on MongoDB: a process SIGKILLed at random
 * moments with transfers in flight, then restarted; a hand-sent withdrawal
 * naming a transfer; a replay through a process manager with no
 * checkpoint. Real server, real separate processes. */
#include <signal.h>
#include <sys/wait.h>
#include <uv.h>

#include <billing/billing.h>

#include "billing_app.h"
#include "billing/transfers.h"

static void app_open(app_t *a, const char *db, bool fresh_checkpoints) {
  app_open_with(a, test_mongo_uri(), db, 0, fresh_checkpoints);
}

static cqrs_code_t run(app_t *a, const cqrs_command_type_t *type, const void *payload) {
  return app_run(a, type, payload, false);
}

static int64_t balance(app_t *a, const char *id) {
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(a->store, &billing_account, id, &agg, NULL), CQRS_OK);
  int64_t b = ((const billing_account_state_t *)cqrs_aggregate_state_const(agg))->balance;
  cqrs_aggregate_destroy(agg);
  return b;
}

/* The transfer's status, checked against the accounts (transfers.h). */
static int32_t agrees(app_t *a, const char *tid) { return transfer_agrees(a->store, tid); }

static void setup_accounts(app_t *a) {
  assert_int_equal(run(a, &billing_open_account, &(billing_open_account_t){"a", "Ada", "EUR"}), CQRS_OK);
  assert_int_equal(run(a, &billing_open_account, &(billing_open_account_t){"b", "Bob", "EUR"}), CQRS_OK);
  assert_int_equal(run(a, &billing_open_account, &(billing_open_account_t){"c", "Cid", "EUR"}), CQRS_OK);
  assert_int_equal(run(a, &billing_deposit, &(billing_move_t){"a", {10000, "EUR"}, ""}), CQRS_OK);
  assert_int_equal(run(a, &billing_close_account, &(billing_close_account_t){"c"}), CQRS_OK);
}

enum { TRANSFERS = 12 };

static void kill_me(uv_timer_t *t) {
  (void)t;
  kill(getpid(), SIGKILL);
}

/* Killed at random moments with transfers in flight, restarted each time:
 * money is conserved and every transfer ends as its record says. */
static void test_killed_with_transfers_in_flight(void **state) {
  (void)state;
  NEED_MONGO();
  char db[64];
  test_mongo_db(db, sizeof db);
  /* Every process that uses the store is a child until the last restart:
   * this one starts no thread before it forks (ThreadSanitizer insists). */
  pid_t setup = fork();
  assert_true(setup >= 0);
  if (setup == 0) {
    app_t s;
    app_open(&s, db, false);
    setup_accounts(&s);
    app_close(&s, false);
    _exit(0);
  }
  int st;
  assert_int_equal(waitpid(setup, &st, 0), setup);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  app_t a;
  const unsigned delays[] = {15, 60, 150, 400};
  for (int round = 0; round < 4; round++) {
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
      app_t c;
      app_open(&c, db, false);
      for (int i = 0; i < TRANSFERS / 4; i++) {
        billing_request_transfer_t r = {"", "a", "", {100 + i, "EUR"}};
        snprintf(r.transfer_id, sizeof r.transfer_id, "r%d-%d", round, i);
        snprintf(r.to, sizeof r.to, "%s", i % 3 == 2 ? "c" : "b");
        cqrs_command_t *cmd;
        if (cqrs_command_new(&billing_request_transfer, &r, &cmd, NULL) == CQRS_OK)
          cqrs_dispatcher_send(c.d, cmd, NULL, NULL);
      }
      uv_timer_t t;
      uv_timer_init(&c.loop, &t);
      uv_timer_start(&t, kill_me, delays[round], 0);
      uv_run(&c.loop, UV_RUN_DEFAULT);
      kill(getpid(), SIGKILL);
    }
    int status;
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  }
  app_open(&a, db, false); /* the restart finishes what the kills left */
  while (!cqrs_projection_live(a.d, "process:transfer")) uv_run(&a.loop, UV_RUN_ONCE);
  uv_run(&a.loop, UV_RUN_DEFAULT);
  assert_int_equal(balance(&a, "a") + balance(&a, "b") + balance(&a, "c"), 10000);
  for (int round = 0; round < 4; round++) {
    for (int i = 0; i < TRANSFERS / 4; i++) {
      char tid[16];
      snprintf(tid, sizeof tid, "r%d-%d", round, i);
      agrees(&a, tid);
    }
  }
  assert_int_equal(cqrs_process_open_count(a.d, "transfer"), 0);
  app_close(&a, true);
}

/* A withdrawal naming a transfer moves no transfer; a process manager with
 * no checkpoint replays everything and sends nothing. */
static void test_forged_withdrawal_and_replay(void **state) {
  (void)state;
  NEED_MONGO();
  char db[64];
  test_mongo_db(db, sizeof db);
  app_t a;
  app_open(&a, db, false);
  setup_accounts(&a);
  billing_request_transfer_t ok = {"t-ok", "a", "b", {300, "EUR"}}, ref = {"t-ref", "a", "c", {200, "EUR"}};
  assert_int_equal(run(&a, &billing_request_transfer, &ok), CQRS_OK);
  assert_int_equal(run(&a, &billing_request_transfer, &ref), CQRS_OK);
  assert_int_equal(agrees(&a, "t-ok"), BILLING_TRANSFER_COMPLETED);
  assert_int_equal(agrees(&a, "t-ref"), BILLING_TRANSFER_REFUNDED);
  assert_int_equal(run(&a, &billing_withdraw, &(billing_move_t){"a", {1, "EUR"}, "t-ref"}), CQRS_OK);
  assert_int_equal(agrees(&a, "t-ref"), BILLING_TRANSFER_REFUNDED);
  assert_int_equal(balance(&a, "b"), 300);
  assert_int_equal(balance(&a, "c"), 0);
  int64_t head;
  assert_int_equal(cqrs_store_head(a.store, &head, NULL), CQRS_OK);
  app_close(&a, false);

  app_open(&a, db, true);
  while (!cqrs_projection_live(a.d, "process:transfer")) uv_run(&a.loop, UV_RUN_ONCE);
  uv_run(&a.loop, UV_RUN_DEFAULT);
  int64_t after;
  assert_int_equal(cqrs_store_head(a.store, &after, NULL), CQRS_OK);
  assert_int_equal(after, head);
  assert_int_equal(balance(&a, "a"), 10000 - 300 - 1);
  assert_int_equal(balance(&a, "b"), 300);
  app_close(&a, true);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_killed_with_transfers_in_flight),
      cmocka_unit_test(test_forged_withdrawal_and_replay),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
