/* billing-admin: entry point, global options and the subcommand table. */
#include <stdlib.h>
#include <string.h>

#include "admin.h"

static const struct {
  const char *name;
  admin_cmd_fn fn;
  bool needs_server;
  const char *summary;
} commands[] = {
    {"status", admin_status, true, "the dashboard of every running process (--watch redraws)"},
    {"check", admin_check, true, "compare the read side with what the event store implies (--repair)"},
    {"migrate", admin_migrate, true, "migrate the legacy billing_documents collection into events"},
    {"flag", admin_flag, true, "show or set mongodb_cqs_enabled: off, shadow, PERCENT, on"},
    {"rebuild", admin_rebuild, true, "rebuild a projection into a fresh collection, then switch over"},
    {"projections", admin_projections_cmd, true, "list projections; pause, resume, reset or skip on the running app"},
    {"dead-letters", admin_dead_letters, true, "list, replay or drop dead letters"},
    {"events", admin_events, true, "tail the event store, or stream one aggregate"},
    {"gen-legacy", admin_gen_legacy, true, "write a generated legacy billing_documents collection"},
    {"keys", admin_keys, true, "list the subjects of personal data: with a key, or forgotten"},
    {"forget", admin_forget, true, "forget a customer (customer.forget), then verify nothing of them is left"},
    {"verify", admin_verify, true, "search every collection for values that must be gone"},
    {"audit", admin_audit_cmd, true, "the record of admin actions (cqrs_audit)"},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f) {
  fprintf(f, "usage: billing-admin [--uri URI] [--json] [--allow-empty] COMMAND [ARGS...]\n\n"
             "The operator tool of the billing context on MongoDB. URI: --uri, else\n"
             "$BILLING_MONGODB_URI, else $MONGODB_URI (the database: the URI's, else \"cqrs\", as for the\n"
             "samples and the load run). A database that holds none of the billing context's collections\n"
             "is refused (a wrong database name), and check refuses an empty event store, unless\n"
             "--allow-empty says it is meant.\n\n"
             "commands:\n");
  for (size_t i = 0; i < NCOMMANDS; i++) fprintf(f, "  %-13s %s\n", commands[i].name, commands[i].summary);
  fprintf(f, "\nEach command takes --help. Exit codes: 0 ok, 1 problems found (differences,\n"
             "malformed documents, stale processes, thresholds missed), 2 usage, 3 server or URI error\n"
             "(also: a database without the application's data).\n");
}

static int run(admin_t *a, int argc, char **argv) {
  int i = 1;
  for (; i < argc && argv[i][0] == '-'; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return ADMIN_OK;
    } else if (!strcmp(argv[i], "--json")) {
      a->json = true;
    } else if (!strcmp(argv[i], "--allow-empty")) {
      a->allow_empty = true;
    } else if (!strcmp(argv[i], "--uri")) {
      if (i + 1 == argc) {
        admin_err("--uri needs a value: --uri mongodb://[user:password@]host[:port][/database]");
        return ADMIN_USAGE;
      }
      a->uri = argv[++i];
    } else if (!strncmp(argv[i], "--uri=", 6)) {
      a->uri = argv[i] + 6;
    } else {
      admin_err("unknown option '%s' (see billing-admin --help)", argv[i]);
      return ADMIN_USAGE;
    }
  }
  if (i == argc) {
    usage(stderr);
    return ADMIN_USAGE;
  }
  for (size_t c = 0; c < NCOMMANDS; c++) {
    if (!strcmp(argv[i], commands[c].name)) {
      int rc = commands[c].fn(a, argc - i, argv + i);
      admin_disconnect(a);
      return rc;
    }
  }
  admin_err("unknown command '%s' (see billing-admin --help)", argv[i]);
  return ADMIN_USAGE;
}

int main(int argc, char **argv) {
  /* A kill loses no finished line (stdout is often a file or a pipe). */
  setvbuf(stdout, NULL, _IOLBF, 0);
  admin_t a;
  memset(&a, 0, sizeof a);
  /* The command line as given, for the audit record: option parsing
   * permutes argv. */
  char **line = calloc((size_t)argc + 1, sizeof *line);
  if (!line) {
    admin_err("out of memory");
    return ADMIN_SERVER;
  }
  memcpy(line, argv, (size_t)argc * sizeof *line);
  a.argc = argc;
  a.argv = line;
  int rc = run(&a, argc, argv);
  free(line);
  return rc;
}
