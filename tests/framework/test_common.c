#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ledger.h"

static void test_strerror_names_every_code(void **state) {
  (void)state;
  for (int c = 0; c < CQRS_CODE_COUNT; c++) {
    assert_non_null(cqrs_strerror((cqrs_code_t)c));
    assert_true(strlen(cqrs_code_name((cqrs_code_t)c)) > 0);
  }
  assert_string_equal(cqrs_code_name(CQRS_ECONFLICT), "conflict");
  assert_string_equal(cqrs_code_name((cqrs_code_t)999), "unknown_code");
  assert_string_equal(cqrs_strerror((cqrs_code_t)-1), "unknown error code");
}

static void test_error_and_rejection_shapes(void **state) {
  (void)state;
  cqrs_error_t err;
  assert_int_equal(cqrs_error_set(&err, CQRS_ESTORE, "down: %d", 42), CQRS_ESTORE);
  assert_int_equal(err.domain, CQRS_DOMAIN_STORE);
  assert_string_equal(err.name, "store_unavailable");
  assert_string_equal(err.message, "down: 42");
  assert_int_equal(cqrs_error_set(&err, CQRS_EINVAL, NULL), CQRS_EINVAL);
  assert_int_equal(err.domain, CQRS_DOMAIN_FRAMEWORK);
  assert_string_equal(err.message, "invalid argument");
  assert_int_equal(cqrs_reject(&err, "account.not_enough_money", "balance %d", 3), CQRS_EREJECTED);
  assert_int_equal(err.domain, CQRS_DOMAIN_BUSINESS);
  assert_string_equal(err.name, "account.not_enough_money");
  assert_string_equal(err.message, "balance 3");
  cqrs_error_clear(&err);
  assert_int_equal(err.code, CQRS_OK);
  assert_int_equal(err.domain, CQRS_DOMAIN_NONE);
  /* A NULL error is allowed everywhere. */
  assert_int_equal(cqrs_error_set(NULL, CQRS_ENOMEM, "x"), CQRS_ENOMEM);
  assert_int_equal(cqrs_reject(NULL, "r", "x"), CQRS_EREJECTED);
}

static void test_version(void **state) {
  (void)state;
  unsigned h = cqrs_version_hex();
  char want[32];
  snprintf(want, sizeof want, "%u.%u.%u", h >> 16, (h >> 8) & 0xff, h & 0xff);
  assert_string_equal(cqrs_version(), want);
  assert_true(h >= 0x000100);
}

static void test_ids_are_unique(void **state) {
  (void)state;
  char a[CQRS_EVENT_ID_LEN], b[CQRS_EVENT_ID_LEN];
  cqrs_new_id(a);
  cqrs_new_id(b);
  assert_int_equal(strlen(a), 24);
  assert_string_not_equal(a, b);
  assert_true(cqrs_now_ms() > 1700000000000);
}

/* ObjectIds: lowercase hex, the first 8 digits the current second, the next
 * 10 the same in one process, the counter moving by one; a forked child
 * draws another process part. */
static void test_ids_are_object_ids(void **state) {
  (void)state;
  enum { N = 2000 };
  static char ids[N][CQRS_EVENT_ID_LEN];
  long before = (long)time(NULL);
  for (int i = 0; i < N; i++) cqrs_new_id(ids[i]);
  long after = (long)time(NULL);
  for (int i = 0; i < N; i++) {
    assert_int_equal(strspn(ids[i], "0123456789abcdef"), 24);
    long t = strtol((char[9]){ids[i][0], ids[i][1], ids[i][2], ids[i][3], ids[i][4], ids[i][5], ids[i][6], ids[i][7], 0}, NULL, 16);
    assert_true(t >= before && t <= after);
    assert_memory_equal(ids[i] + 8, ids[0] + 8, 10);
    if (i) {
      unsigned long c0 = strtoul(ids[i - 1] + 18, NULL, 16), c1 = strtoul(ids[i] + 18, NULL, 16);
      assert_int_equal(c1, (c0 + 1) & 0xffffff);
    }
  }
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  pid_t child = fork();
  assert_true(child >= 0);
  if (child == 0) {
    char id[CQRS_EVENT_ID_LEN];
    cqrs_new_id(id);
    _exit(write(fds[1], id, sizeof id) == (ssize_t)sizeof id ? 0 : 1);
  }
  char theirs[CQRS_EVENT_ID_LEN] = {0};
  assert_int_equal(read(fds[0], theirs, sizeof theirs), (ssize_t)sizeof theirs);
  int status;
  assert_int_equal(waitpid(child, &status, 0), child);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  close(fds[0]);
  close(fds[1]);
  assert_int_equal(strspn(theirs, "0123456789abcdef"), 24);
  assert_memory_not_equal(theirs + 8, ids[0] + 8, 10);
}

/* Fails the N-th allocation from now on. */
static long fail_at = -1;
static void *failing_malloc(size_t n) { return fail_at-- == 0 ? NULL : malloc(n); }
static void *failing_realloc(void *p, size_t n) { return fail_at-- == 0 ? NULL : realloc(p, n); }

static int run_flow(void) {
  /* A whole command round trip: every allocation failure must surface as an
   * error, never a crash or a leak (ASan and valgrind watch the leaks). */
  cqrs_registry_t *reg = NULL;
  if (cqrs_registry_new(&reg, NULL)) return 1;
  int rc = 1;
  cqrs_store_t *store = NULL;
  cqrs_aggregate_t *agg = NULL;
  cqrs_command_t *cmd = NULL;
  if (cqrs_registry_add_aggregate(reg, &ledger_type, NULL) || cqrs_registry_add_command(reg, &ledger_credit, NULL))
    goto out;
  if (cqrs_memory_store_new(&store, NULL)) goto out;
  ledger_move_cmd_t c = {"acc", 5};
  if (cqrs_command_new(&ledger_credit, &c, &cmd, NULL)) goto out;
  if (cqrs_repository_load(store, &ledger_type, "acc", &agg, NULL)) goto out;
  ledger_amount_t a = {5};
  if (cqrs_aggregate_raise(agg, &ledger_credited, &a, NULL)) goto out;
  cqrs_cause_t cause = {cqrs_command_id(cmd), NULL};
  if (cqrs_repository_save(store, agg, &cause, NULL, NULL)) goto out;
  rc = 0;
out:
  cqrs_aggregate_destroy(agg);
  cqrs_command_destroy(cmd);
  cqrs_store_destroy(store);
  cqrs_registry_destroy(reg);
  return rc;
}

static void test_every_allocation_failure_is_an_error(void **state) {
  (void)state;
  cqrs_allocator_t hook = {failing_malloc, failing_realloc, free};
  int failures = 0;
  long n;
  for (n = 0; n < 200; n++) {
    fail_at = n;
    cqrs_set_allocator(&hook);
    int rc = run_flow();
    cqrs_set_allocator(NULL);
    if (fail_at >= 0) break; /* the flow needed fewer than n allocations: done */
    failures += rc;
  }
  assert_true(n > 5);
  assert_true(n < 200);
  assert_true(failures > 0);
  assert_int_equal(run_flow(), 0);
}

/* The whole round trip on a loop: send, handler, commit, publication to a
 * projection, completion, close. Returns 0 when everything succeeded, 1
 * when something reported an error; crashes and leaks are the failures. */
static int projected, tried;
/* Fails the first event, which is dead-lettered at once (one attempt):
 * publication then has to queue it, so that path fails its allocations too. */
static cqrs_code_t count_projected(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)e, (void)data;
  if (tried++ == 0) return cqrs_error_set(err, CQRS_EHANDLER, "not this one");
  projected++;
  return CQRS_OK;
}

static int completed_ok, completed;
static void round_trip_done(const cqrs_result_t *r, void *data) {
  (void)data;
  completed++;
  completed_ok += cqrs_result_ok(r);
}

static int run_round_trip(void) {
  uv_loop_t loop;
  if (uv_loop_init(&loop)) return 1;
  projected = tried = completed = completed_ok = 0;
  int rc = 1, sent = 0;
  cqrs_registry_t *reg = NULL;
  cqrs_registry_new(&reg, NULL);
  cqrs_store_t *store = NULL;
  cqrs_memory_store_new(&store, NULL);
  cqrs_checkpoint_store_t *cp = NULL;
  cqrs_memory_checkpoint_store_new(&cp, NULL);
  cqrs_dispatcher_t *d = NULL;
  if (!reg || !store || !cp) goto out;
  if (cqrs_registry_add_aggregate(reg, &ledger_type, NULL) || cqrs_registry_add_command(reg, &ledger_open, NULL) ||
      cqrs_registry_add_command(reg, &ledger_credit, NULL) || cqrs_registry_add_command(reg, &ledger_debit, NULL))
    goto out;
  cqrs_dispatcher_options_t opts;
  cqrs_dispatcher_options_init(&opts);
  opts.retry_base_ms = 1;
  opts.retry_attempts = 1;
  if (cqrs_dispatcher_new(&loop, reg, store, &opts, &d, NULL)) goto out;
  bool ok = ledger_handlers(d, NULL, 0, NULL) == CQRS_OK;
  cqrs_projection_def_t def = {"count", NULL, count_projected, NULL, 0};
  ok = ok && cqrs_projection_start(d, &def, cp, NULL) == CQRS_OK;
  ledger_open_cmd_t o = {"acc", "owner"};
  ledger_move_cmd_t c = {"acc", 5};
  for (int i = 0; i < 3; i++) {
    cqrs_command_t *cmd;
    if (cqrs_command_new(i ? &ledger_credit : &ledger_open, i ? (const void *)&c : (const void *)&o, &cmd, NULL)) continue;
    sent += cqrs_dispatcher_send(d, cmd, round_trip_done, NULL) == CQRS_OK;
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  if (completed != sent) fail_msg("%d commands accepted, %d completed", sent, completed);
  size_t dead = cqrs_dispatcher_dead_letter_count(d);
  if (cqrs_dispatcher_close(d, NULL, NULL)) fail_msg("close refused");
  uv_run(&loop, UV_RUN_DEFAULT);
  d = NULL;
  rc = ok && sent == 3 && completed_ok == 3 && projected == 2 && dead == 1 ? 0 : 1;
out:
  if (d) {
    cqrs_dispatcher_close(d, NULL, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  if (uv_loop_close(&loop)) fail_msg("the loop still has handles");
  cqrs_checkpoint_store_destroy(cp);
  cqrs_store_destroy(store);
  cqrs_registry_destroy(reg);
  return rc;
}

static void test_every_allocation_failure_of_a_round_trip(void **state) {
  (void)state;
  cqrs_allocator_t hook = {failing_malloc, failing_realloc, free};
  int failures = 0;
  long n;
  for (n = 0; n < 2000; n++) {
    fail_at = n;
    cqrs_set_allocator(&hook);
    int rc = run_round_trip();
    cqrs_set_allocator(NULL);
    if (fail_at >= 0) break; /* the round trip needed fewer than n allocations: done */
    failures += rc;
  }
  assert_true(n > 20);
  assert_true(n < 2000);
  assert_true(failures > 0);
  assert_int_equal(run_round_trip(), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_strerror_names_every_code),
      cmocka_unit_test(test_error_and_rejection_shapes),
      cmocka_unit_test(test_ids_are_object_ids),
      cmocka_unit_test(test_ids_are_unique),
      cmocka_unit_test(test_version),
      cmocka_unit_test(test_every_allocation_failure_is_an_error),
      cmocka_unit_test(test_every_allocation_failure_of_a_round_trip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
