/* Helpers of the tests that run real separate processes on one MongoDB
 * database: each test binary re-executes itself as the child. Included by
 * one translation unit each; cmocka's headers come first. */
#ifndef TEST_MONGO_PROCS_H
#define TEST_MONGO_PROCS_H

#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
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

/* A child that the test talks to: its standard input (`to`, the test
 * writes) and output (`from`, the test reads), so that the test can make
 * it stop at a point of its choosing and wait there until told to go on.
 * Every line it has said is kept, so that none is missed while the test
 * waits for another child. */
typedef struct procs_child {
  pid_t pid;
  int to, from;
  char said[1024]; /* the lines heard, each ending in '\n' */
  size_t said_len;
  char partial[64];
  size_t partial_len;
  bool eof; /* its output closed: it exited */
} procs_child_t;

/* Starts `self` with `argv` and waits until it writes "ready\n". */
static inline procs_child_t procs_spawn_talking(const char *self, char *const argv[]) {
  int in[2], out[2];
  assert_int_equal(pipe(in), 0);
  assert_int_equal(pipe(out), 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&fa, in[1]);
  posix_spawn_file_actions_addclose(&fa, out[0]);
  procs_child_t c;
  memset(&c, 0, sizeof c);
  assert_int_equal(posix_spawn(&c.pid, self, &fa, NULL, argv, environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  close(in[0]);
  close(out[1]);
  c.to = in[1];
  c.from = out[0];
  char buf[8] = {0};
  assert_int_equal(read(c.from, buf, 6), 6);
  assert_string_equal(buf, "ready\n");
  return c;
}

/* Whether child `c` has said `line` ("mid\n"). */
static inline bool procs_heard(const procs_child_t *c, const char *line) {
  size_t n = strlen(line);
  for (size_t at = 0; at + n <= c->said_len; at++) {
    if ((at == 0 || c->said[at - 1] == '\n') && !memcmp(c->said + at, line, n)) return true;
  }
  return false;
}

/* Waits up to `within_ms` until one of the `n` children (pid 0: gone) has
 * said `line`; returns its index, or -1. */
static inline int procs_wait_line(procs_child_t *c, int n, const char *line, int within_ms) {
  struct pollfd fds[8];
  assert_true(n <= 8);
  uint64_t until = uv_hrtime() / 1000000u + (uint64_t)within_ms;
  for (;;) {
    for (int i = 0; i < n; i++)
      if (c[i].pid > 0 && procs_heard(&c[i], line)) return i;
    uint64_t now = uv_hrtime() / 1000000u;
    if (now >= until) return -1;
    for (int i = 0; i < n; i++) fds[i] = (struct pollfd){c[i].pid > 0 && !c[i].eof ? c[i].from : -1, POLLIN, 0};
    if (poll(fds, (nfds_t)n, (int)(until - now)) <= 0) continue;
    for (int i = 0; i < n; i++) {
      char ch;
      if (!(fds[i].revents & (POLLIN | POLLHUP))) continue;
      if (read(c[i].from, &ch, 1) != 1) {
        c[i].eof = true;
        continue;
      }
      if (c[i].partial_len < sizeof c[i].partial - 1) c[i].partial[c[i].partial_len++] = ch;
      if (ch != '\n') continue;
      if (c[i].said_len + c[i].partial_len < sizeof c[i].said) {
        memcpy(c[i].said + c[i].said_len, c[i].partial, c[i].partial_len);
        c[i].said_len += c[i].partial_len;
      }
      c[i].partial_len = 0;
    }
  }
}

/* Writes `line` to a child (procs_child_hear reads it; written ahead, the
 * line waits in the pipe for a child that has not stopped yet). */
static inline void procs_tell(procs_child_t *c, const char *line) {
  assert_int_equal(write(c->to, line, strlen(line)), (ssize_t)strlen(line));
}

static inline void procs_child_close(procs_child_t *c) {
  if (c->to >= 0) close(c->to);
  if (c->from >= 0) close(c->from);
  c->to = c->from = -1;
}

/* In the child: says `line` to the test. */
static inline void procs_child_say(const char *line) {
  fputs(line, stdout);
  fflush(stdout);
}

/* In the child: reads the next line the test wrote (without its '\n') into
 * `buf`; waits for one when `block`, else returns false at once when none
 * is there. Exits when the test has gone. Not thread-safe. */
static inline bool procs_child_hear(char *buf, size_t cap, bool block) {
  static char partial[64];
  static size_t len;
  for (;;) {
    struct pollfd in = {STDIN_FILENO, POLLIN, 0};
    if (!block && poll(&in, 1, 0) <= 0) return false;
    char ch;
    ssize_t n = read(STDIN_FILENO, &ch, 1);
    if (n == 0) exit(3); /* the test went away */
    if (n < 0) continue;
    if (ch != '\n') {
      if (len < sizeof partial - 1) partial[len++] = ch;
      continue;
    }
    partial[len] = '\0';
    snprintf(buf, cap, "%s", partial);
    len = 0;
    return true;
  }
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
