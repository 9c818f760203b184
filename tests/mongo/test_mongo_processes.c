/* Several real processes on one store: writers race on positions (each on
 * a stream of its own and all on one shared stream) while another process
 * follows the store through a dispatcher's poll_ms. The test binary runs
 * them by executing itself with a role as its first argument. */
#include <spawn.h>
#include <sys/wait.h>
#include <uv.h>

#include <cqrs/backend.h>

#include "framework/ledger.h"
#include "mongo_fixture.h"
#include "procs.h"

extern char **environ;
static const char *self; /* argv[0]: this binary (under valgrind, /proc/self/exe is valgrind) */

#define WRITERS 3
#define OWN_COMMITS 25    /* per writer, on its own stream */
#define SHARED_COMMITS 10 /* per writer, on the shared stream */
#define TOTAL (WRITERS * (OWN_COMMITS + SHARED_COMMITS))

static bool last_version(const cqrs_event_t *e, void *data) {
  *(int64_t *)data = e->version;
  return true;
}

/* Appends one credit to `stream` as command `cmd`, retrying conflicts the
 * way a dispatcher does: read the stream again, then append after it. */
static int append_one(cqrs_store_t *s, const char *stream, const char *cmd, int64_t amount) {
  for (int attempt = 0; attempt < 1000; attempt++) {
    int64_t version = 0;
    cqrs_error_t err;
    if (cqrs_store_read_stream(s, "ledger", stream, 1, last_version, &version, &err)) {
      fprintf(stderr, "read %s: %s\n", stream, err.message);
      return 1;
    }
    cqrs_envelope_t *env;
    cqrs_event_t *e;
    ledger_amount_t a = {amount};
    if (cqrs_envelope_new("ledger", stream, cmd, NULL, &env, &err) ||
        cqrs_event_new(&ledger_credited, env, NULL, version + 1, cqrs_now_ms(), &a, &e, &err)) {
      fprintf(stderr, "event: %s\n", err.message);
      return 1;
    }
    cqrs_append_t req = {"ledger", stream, version, cmd, &e, 1};
    cqrs_append_result_t res;
    cqrs_code_t rc = cqrs_store_append(s, &req, &res, &err);
    cqrs_event_unref(e);
    cqrs_envelope_unref(env);
    if (rc == CQRS_OK) return 0;
    if (rc != CQRS_ECONFLICT) {
      fprintf(stderr, "append %s: %s\n", cmd, err.message);
      return 1;
    }
  }
  fprintf(stderr, "append %s: conflicts without end\n", cmd);
  return 1;
}

static int run_writer(const char *db, int id) {
  cqrs_registry_t *reg = ledger_registry();
  cqrs_mongo_t *m = procs_connect(reg, NULL, db);
  cqrs_store_t *s = NULL;
  cqrs_mongo_store_new(m, &s, NULL);
  int failed = 0;
  for (int i = 0; i < OWN_COMMITS + SHARED_COMMITS && !failed; i++) {
    char stream[32], cmd[64];
    bool shared = i % 3 == 2 && i / 3 < SHARED_COMMITS;
    snprintf(stream, sizeof stream, shared ? "shared" : "own-%d", id);
    snprintf(cmd, sizeof cmd, "w%d-%d", id, i);
    failed = append_one(s, stream, cmd, id * 1000 + i);
  }
  cqrs_store_destroy(s);
  cqrs_mongo_destroy(m);
  cqrs_registry_destroy(reg);
  return failed;
}

/* ---- the follower: a dispatcher that learns of other processes' commits
 * only by polling the store ---- */

typedef struct follower {
  cqrs_dispatcher_t *d;
  uv_timer_t timer;
  int64_t last, seen, errors;
  uint64_t deadline;
} follower_t;

static cqrs_code_t follow(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)err;
  follower_t *f = data;
  if (e->position != f->last + 1) {
    fprintf(stderr, "follower: position %lld after %lld\n", (long long)e->position, (long long)f->last);
    f->errors++;
  }
  f->last = e->position;
  f->seen++;
  return CQRS_OK;
}

static void follower_tick(uv_timer_t *t) {
  follower_t *f = t->data;
  if (f->seen < TOTAL && uv_now(t->loop) < f->deadline) return;
  uv_close((uv_handle_t *)t, NULL);
  cqrs_dispatcher_close(f->d, NULL, NULL);
}

static int run_follower(const char *db) {
  cqrs_registry_t *reg = ledger_registry();
  uv_loop_t loop;
  uv_loop_init(&loop);
  cqrs_mongo_t *m = procs_connect(reg, &loop, db);
  cqrs_store_t *s = NULL;
  cqrs_mongo_store_new(m, &s, NULL);
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.poll_ms = 20;
  follower_t f = {0};
  cqrs_error_t err;
  /* A projection from position 0, not a subscriber from the head: the
   * head of a blocking store is read on the pool once the loop runs, by
   * when the writers (started on "ready") may have committed. */
  cqrs_checkpoints_t *cp = NULL;
  const cqrs_projection_def_t def = {.name = "follower", .handler = follow, .data = &f};
  if (cqrs_memory_checkpoints_new(&cp, &err) || cqrs_dispatcher_new(&loop, reg, s, &o, &f.d, &err) ||
      cqrs_projection_start(f.d, &def, cp, &err)) {
    fprintf(stderr, "follower: %s\n", err.message);
    return 1;
  }
  printf("ready\n");
  fflush(stdout);
  uv_timer_init(&loop, &f.timer);
  f.timer.data = &f;
  f.deadline = uv_now(&loop) + 60000;
  uv_timer_start(&f.timer, follower_tick, 10, 10);
  uv_run(&loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(&loop) != 0 || f.errors || f.seen != TOTAL;
  if (f.seen != TOTAL) fprintf(stderr, "follower: saw %lld of %d events\n", (long long)f.seen, TOTAL);
  cqrs_checkpoints_destroy(cp);
  cqrs_store_destroy(s);
  cqrs_mongo_destroy(m);
  cqrs_registry_destroy(reg);
  return rc;
}

/* ---- the test ---- */

static pid_t spawn_self(char *const argv[], int *out_fd) {
  int fds[2] = {-1, -1};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (out_fd) {
    assert_int_equal(pipe(fds), 0);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
  }
  pid_t pid;
  assert_int_equal(posix_spawn(&pid, self, &fa, NULL, argv, environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  if (out_fd) {
    close(fds[1]);
    *out_fd = fds[0];
  }
  return pid;
}

static int wait_exit(pid_t pid) {
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

typedef struct tally {
  int64_t last;
  int gaps;
  int commands[WRITERS][OWN_COMMITS + SHARED_COMMITS];
  int64_t shared_version;
  int shared_gaps;
} tally_t;

static bool count_event(const cqrs_event_t *e, void *data) {
  tally_t *t = data;
  if (e->position != t->last + 1) t->gaps++;
  t->last = e->position;
  int w, i;
  if (sscanf(cqrs_event_causation_id(e), "w%d-%d", &w, &i) == 2 && w >= 0 && w < WRITERS && i >= 0 &&
      i < OWN_COMMITS + SHARED_COMMITS)
    t->commands[w][i]++;
  if (!strcmp(cqrs_event_aggregate_id(e), "shared")) {
    if (e->version != t->shared_version + 1) t->shared_gaps++;
    t->shared_version = e->version;
  }
  return true;
}

static void test_processes_share_one_store(void **state) {
  (void)state;
  NEED_MONGO();
  cqrs_registry_t *reg = ledger_registry();
  cqrs_mongo_t *m = test_mongo_open(reg, NULL, NULL);
  const char *db = cqrs_mongo_database(m);
  char *follower_argv[] = {"test_mongo_processes", "follower", (char *)db, NULL};
  int out;
  pid_t follower = spawn_self(follower_argv, &out);
  char ready[8] = {0};
  assert_int_equal(read(out, ready, 6), 6);
  assert_string_equal(ready, "ready\n");
  close(out);
  pid_t writers[WRITERS];
  char ids[WRITERS][8];
  for (int i = 0; i < WRITERS; i++) {
    snprintf(ids[i], sizeof ids[i], "%d", i);
    char *argv[] = {"test_mongo_processes", "writer", (char *)db, ids[i], NULL};
    writers[i] = spawn_self(argv, NULL);
  }
  for (int i = 0; i < WRITERS; i++) assert_int_equal(wait_exit(writers[i]), 0);
  assert_int_equal(wait_exit(follower), 0);

  /* What the store holds: every command once, no gap, the shared stream in
   * order. */
  cqrs_store_t *s = NULL;
  cqrs_mongo_store_new(m, &s, NULL);
  tally_t *t = calloc(1, sizeof *t);
  cqrs_error_t err;
  assert_int_equal(cqrs_store_read_all(s, 1, SIZE_MAX, count_event, t, &err), CQRS_OK);
  assert_int_equal(t->last, TOTAL);
  assert_int_equal(t->gaps, 0);
  for (int w = 0; w < WRITERS; w++)
    for (int i = 0; i < OWN_COMMITS + SHARED_COMMITS; i++) assert_int_equal(t->commands[w][i], 1);
  assert_int_equal(t->shared_version, WRITERS * SHARED_COMMITS);
  assert_int_equal(t->shared_gaps, 0);
  int64_t head;
  assert_int_equal(cqrs_store_head(s, &head, &err), CQRS_OK);
  assert_int_equal(head, TOTAL);
  free(t);
  cqrs_store_destroy(s);
  test_mongo_close(m);
  cqrs_registry_destroy(reg);
}

int main(int argc, char **argv) {
  self = argv[0];
  if (argc == 3 && !strcmp(argv[1], "follower")) return run_follower(argv[2]);
  if (argc == 4 && !strcmp(argv[1], "writer")) return run_writer(argv[2], atoi(argv[3]));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_processes_share_one_store),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
