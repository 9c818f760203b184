/* billing-admin: the operator tool of the billing context on MongoDB. One
 * file per subcommand; this header is what they share: the connection, the
 * exit codes scripts rely on, option parsing, output helpers. */
#ifndef BILLING_ADMIN_H
#define BILLING_ADMIN_H

#include <billing/billing.h>
#include <cqrs/mongo.h>
#include <mongoc/mongoc.h>
#include <stdio.h>

/* Exit codes (docs/operations.md): */
enum {
  ADMIN_OK = 0,       /* done, nothing wrong found */
  ADMIN_PROBLEMS = 1, /* differences, malformed documents, stale instances... found */
  ADMIN_USAGE = 2,    /* bad command line */
  ADMIN_SERVER = 3    /* bad URI, server unreachable or failing, a database without the application's data */
};

typedef struct admin {
  const char *uri; /* as given: never print it, print `redacted` */
  char *redacted;  /* the URI with its secrets masked (billing_mongo_uri_redacted) */
  bool json;
  bool allow_empty;  /* --allow-empty: a database without the application's data is meant */
  bool may_be_empty; /* set by a command that creates the data (gen-legacy) */
  cqrs_registry_t *reg;
  cqrs_mongo_t *m;
  cqrs_store_t *store;
  cqrs_keys_t *keys; /* the customers' personal data: opens the store and the read model */
  cqrs_readmodel_t *rm;
  cqrs_checkpoints_t *cp;
  mongoc_client_t *client; /* for scans the framework's interfaces do not offer */
  mongoc_database_t *db;
  int argc; /* the command line, for the audit record (secrets masked there) */
  char **argv;
} admin_t;

/* A subcommand: parses its own arguments (argv[0] is its name). */
typedef int (*admin_cmd_fn)(admin_t *a, int argc, char **argv);

/* Connects (parse the URI, ping the server, registry with the billing
 * types) and, unless allow_empty or may_be_empty, makes sure the database
 * holds some of the application's collections (a typo in the URI's
 * database is not an empty, consistent store). Returns ADMIN_OK or
 * ADMIN_SERVER after printing why. */
int admin_connect(admin_t *a, uv_loop_t *loop);
void admin_disconnect(admin_t *a);

/* Option parsing shared by the subcommands. Each spec is "name" (a flag) or
 * "name=" (takes a value); --help, --json, --uri and --allow-empty are
 * always accepted.
 * Fills vals[i] ("" for a set flag, NULL when absent) and the positional
 * arguments. Returns -1 when --help was asked (usage printed), ADMIN_USAGE
 * after printing the error, 0 otherwise. */
#define ADMIN_MAX_POS 8
typedef struct admin_args {
  const char *vals[16];
  const char *pos[ADMIN_MAX_POS];
  int npos;
} admin_args_t;
int admin_parse(admin_t *a, int argc, char **argv, const char *const *specs, const char *usage, int min_pos,
                int max_pos, admin_args_t *out);
/* Parses a non-negative integer option; ADMIN_USAGE (printed) when bad. */
int admin_int(const char *opt, const char *v, long long lo, long long hi, long long *out);

/* Prints "billing-admin: " + message to stderr. */
void admin_err(const char *fmt, ...) CQRS_PRINTF(1, 2);
/* Prints a driver error about `what` and returns ADMIN_SERVER. */
int admin_server_error(const char *what, const bson_error_t *e);
int admin_cqrs_error(const char *what, const cqrs_error_t *e);

/* Prints `doc` as one line of relaxed extended JSON. */
void admin_print_json(FILE *f, const bson_t *doc);
/* The value at `key` as a short string (strings unquoted) into buf. */
void admin_value_text(const bson_iter_t *it, char *buf, size_t cap);
const char *admin_str(const bson_t *doc, const char *path);
int64_t admin_int64(const bson_t *doc, const char *path, int64_t dflt);
/* The _id of a document as a string (a string, or an ObjectId in hex). */
bool admin_doc_id(const bson_t *doc, char *buf, size_t cap);

/* The dispatcher the write paths use (migrate): connects, runs a loop on
 * the calling thread and `work` on another thread with the dispatcher ready
 * and the command handlers registered; with `projections`, the billing
 * context runs (billing_start into the MongoDB read model), and closing the
 * dispatcher afterwards delivers what it still holds. */
typedef int (*admin_work_fn)(admin_t *a, cqrs_dispatcher_t *d, void *data);
int admin_run_dispatcher(admin_t *a, bool projections, admin_work_fn work, void *data);

/* A progress line on stderr: a bar with rate and ETA, redrawn in place on a
 * terminal, one line per 10 % otherwise. */
typedef struct admin_progress {
  const char *label;
  int64_t total, done, started_ms, drawn_ms;
  int last_decile;
  bool tty;
} admin_progress_t;
void admin_progress_start(admin_progress_t *p, const char *label, int64_t total);
void admin_progress_update(admin_progress_t *p, int64_t done);
void admin_progress_end(admin_progress_t *p);

/* What the store says of a projection (lag.c). */
typedef struct admin_store_lag {
  const char *name;
  int64_t checkpoint, head, behind;
  bool at_least; /* more than the commits it reads past a checkpoint (100,000) */
  double lag_s;  /* age of the oldest event not handled; 0 when none */
} admin_store_lag_t;
/* Fills lags[i] for each of admin_projections (a lag for each). Returns
 * ADMIN_OK or an exit code (printed). */
int admin_store_lags(admin_t *a, admin_store_lag_t *lags);

/* Records an admin action in cqrs_audit (audit.c): {at, who: user@host,
 * action ("projection.reset"), target, detail, arguments: the command line
 * with every secret masked}. A failed write is said on stderr and does not
 * fail the action (it is done already). */
void admin_audit(admin_t *a, const char *action, const char *target, const char *detail);

/* The subcommands. */
int admin_check(admin_t *a, int argc, char **argv);
int admin_migrate(admin_t *a, int argc, char **argv);
int admin_gen_legacy(admin_t *a, int argc, char **argv);
int admin_flag(admin_t *a, int argc, char **argv);
int admin_rebuild(admin_t *a, int argc, char **argv);
int admin_dead_letters(admin_t *a, int argc, char **argv);
int admin_events(admin_t *a, int argc, char **argv);
int admin_status(admin_t *a, int argc, char **argv);
int admin_projections_cmd(admin_t *a, int argc, char **argv);
int admin_audit_cmd(admin_t *a, int argc, char **argv);
int admin_forget(admin_t *a, int argc, char **argv);
int admin_keys(admin_t *a, int argc, char **argv);
int admin_verify(admin_t *a, int argc, char **argv);

/* The projections the tool knows, by name: their collections and handler. */
typedef struct admin_projection {
  const char *name; /* "billing.invoices" */
  const char *const *collections; /* NULL-terminated */
  cqrs_event_handler_cb handler;
  const cqrs_event_type_t *const *types;
} admin_projection_t;
extern const admin_projection_t admin_projections[]; /* ends with a NULL name */
const admin_projection_t *admin_projection_find(const char *name);
bool admin_projection_wants(const admin_projection_t *p, const cqrs_event_type_t *t);

#endif
