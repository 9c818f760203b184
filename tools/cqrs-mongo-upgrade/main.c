/* cqrs-mongo-upgrade: upgrades a libcqrs MongoDB event store to the
 * current format of its commit documents (cqrs_mongo_upgrade_store; see
 * docs/mongo.md, "Formats"). Stop every process that writes to the store
 * first. Exit codes: 0 upgraded (or already current), 2 usage, 3 failed. */
#include <cqrs/mongo.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
  fprintf(f, "usage: cqrs-mongo-upgrade [--uri URI] [--database DB] [--events COLLECTION]\n\n"
             "Upgrades the event store in COLLECTION (default cqrs_events; the billing context's is\n"
             "billing_commands) of database DB (default: the URI's, else cqrs) to the current format:\n"
             "each commit gets its stream key, under a unique index of that one field. Stop every\n"
             "process that writes to the store first. Can be run again; a run that stopped part-way\n"
             "is finished by the next. URI: --uri, else $MONGODB_URI.\n");
}

static void print_log(cqrs_log_level_t level, const char *domain, const char *message, void *data) {
  (void)data;
  if (level <= CQRS_LOG_INFO) fprintf(stderr, "%s: %s\n", domain, message);
}

int main(int argc, char **argv) {
  const char *uri = getenv("MONGODB_URI"), *database = NULL, *events = NULL;
  for (int i = 1; i < argc; i++) {
    const char **to = !strcmp(argv[i], "--uri") ? &uri : !strcmp(argv[i], "--database") ? &database
                                                        : !strcmp(argv[i], "--events")   ? &events
                                                                                          : NULL;
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    }
    if (!to || i + 1 == argc) {
      fprintf(stderr, "cqrs-mongo-upgrade: unknown option or missing value: '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
    *to = argv[++i];
  }
  if (!uri || !*uri) {
    fprintf(stderr, "cqrs-mongo-upgrade: no URI (--uri, or MONGODB_URI)\n");
    return 2;
  }
  cqrs_log_set_handler(print_log, NULL);
  cqrs_mongo_quiet_logs();
  cqrs_error_t err;
  cqrs_registry_t *reg = NULL;
  cqrs_mongo_t *m = NULL;
  cqrs_mongo_options_t o = {CQRS_MONGO_OPTIONS_INIT, .database = database, .events = events};
  int64_t keyed = 0;
  cqrs_code_t rc = cqrs_registry_new(&reg, &err);
  if (!rc) rc = cqrs_mongo_new(uri, &o, reg, NULL, &m, &err);
  if (!rc) rc = cqrs_mongo_upgrade_store(m, &keyed, &err);
  if (rc) {
    fprintf(stderr, "cqrs-mongo-upgrade: %s\n", err.message);
  } else {
    printf("%s.%s: in the current format (%lld commits keyed by this run)\n", cqrs_mongo_database(m),
           events ? events : "cqrs_events", (long long)keyed);
  }
  cqrs_mongo_destroy(m);
  cqrs_registry_destroy(reg);
  return rc ? 3 : 0;
}
