/* Helpers of the tests that run real separate processes on one MongoDB
 * database: each test binary re-executes itself as the child. Included by
 * one translation unit each; cmocka's headers come first. */
#ifndef TEST_MONGO_PROCS_H
#define TEST_MONGO_PROCS_H

#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <cqrs/mongo.h>

#include "mongo_fixture.h"

extern char **environ;

/* A child's connection to `db` (exits 1 when it cannot connect). */
static inline cqrs_mongo_t *procs_connect(const cqrs_registry_t *reg, uv_loop_t *loop, const char *db) {
  cqrs_mongo_options_t o = {.database = db};
  cqrs_mongo_t *m;
  cqrs_error_t err;
  cqrs_mongo_quiet_logs();
  if (cqrs_mongo_new(test_mongo_uri(), &o, reg, loop, &m, &err)) {
    fprintf(stderr, "connect: %s\n", err.message);
    exit(1);
  }
  return m;
}

/* Starts `self` with `argv`, its standard output into a pipe whose read
 * end is *out. */
static inline pid_t procs_spawn_piped(const char *self, char *const argv[], int *out) {
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  pid_t pid;
  assert_int_equal(posix_spawn(&pid, self, &fa, NULL, argv, environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  *out = fds[0];
  return pid;
}

/* Starts `self` with `argv`; with `ready`, waits until the child writes
 * "ready\n" on its standard output. */
static inline pid_t procs_spawn(const char *self, char *const argv[], bool ready) {
  int fd;
  pid_t pid = procs_spawn_piped(self, argv, &fd);
  if (ready) {
    char buf[8] = {0};
    assert_int_equal(read(fd, buf, 6), 6);
    assert_string_equal(buf, "ready\n");
  }
  close(fd);
  return pid;
}

/* The child's exit code, or 128 + the signal that ended it. */
static inline int procs_wait_exit(pid_t pid) {
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* After a failure: the children still running go too. */
static inline void procs_kill_all(pid_t *children, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (children[i] > 0 && kill(children[i], SIGKILL) == 0) waitpid(children[i], NULL, 0);
    children[i] = 0;
  }
}

static inline uint64_t procs_ms(void) { return uv_hrtime() / 1000000u; }

#endif
