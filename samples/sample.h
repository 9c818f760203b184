/* What both samples share: argument parsing, the wiring of a billing
 * context on a loop, sending a command and printing its result, queries. */
#ifndef SAMPLE_H
#define SAMPLE_H

#include <billing/billing.h>

typedef struct sample {
  const char *name;
  uv_loop_t loop;
  cqrs_registry_t *reg;
  cqrs_store_t *store;
  cqrs_keys_t *keys; /* the customers' personal data */
  cqrs_readmodel_t *rm;
  cqrs_checkpoints_t *cp;
  cqrs_dispatcher_t *d;
  cqrs_queries_t *q;
  billing_flags_t *flags; /* mongodb_cqs_enabled: invoice.read goes where it says */
  const char *cqs_mode;   /* --cqs MODE: set it first (NULL: as stored) */
  billing_t *billing;
  void *backend; /* what the MongoDB back end keeps, when used */
  bool reset;    /* --reset: start from an empty database */
  cqrs_dead_letter_info_cb dead_letter_info;
  void *dead_letter_data;
  int failures;  /* results that were not what the script expected */
  int metrics_port;     /* --metrics-port N: serve /metrics (0: any free port); -1: off */
  unsigned linger_s;    /* --linger S: keep serving S seconds after the script */
  cqrs_metrics_t *metrics;
  void *http;           /* cqrs_http_metrics_t, when built */
  void *instance;       /* the entry in cqrs_instances, on MongoDB */
} sample_t;

/* Parses argv (--mongo URI, --help), builds everything. Returns 0, or the
 * exit code to return at once (after printing why). */
int sample_open(sample_t *s, const char *name, int argc, char **argv);
/* Closes and frees everything; returns the exit code. */
int sample_close(sample_t *s);

/* What sample_send expects of a command sent again with the same natural
 * id: success, answered from the first commit (`duplicate`). */
#define SAMPLE_DUPLICATE "(duplicate)"

/* Sends a command built from `payload` and runs the loop until everything
 * it set off has settled. Prints one line. `expect` is the business reason
 * the script expects ("" for success, SAMPLE_DUPLICATE for a command already
 * done); a different outcome counts as a failure. */
void sample_send(sample_t *s, const char *label, const cqrs_command_type_t *type, const void *payload,
                 const char *expect);

/* Runs a query; `out` is initialised here; returns false (and prints why)
 * on error. */
bool sample_query(sample_t *s, const char *name, const bson_t *params, bson_t *out);
/* Runs a query that may find nothing: returns its code (CQRS_OK or
 * CQRS_ENOT_FOUND, with `out` initialised either way); any other error
 * is printed and counted as a failure. */
cqrs_code_t sample_query_maybe(sample_t *s, const char *name, const bson_t *params, bson_t *out);

/* The string or integer at a dotted path of `doc`; "?" or `dflt` when absent. */
const char *sample_str(const bson_t *doc, const char *path);
int64_t sample_int(const bson_t *doc, const char *path, int64_t dflt);

/* "1500.00 EUR" */
void sample_money(char *buf, size_t cap, int64_t amount, const char *currency);

/* Builds money or exits: the samples' amounts are constants. */
cqrs_money_t sample_eur(int64_t cents);

/* The MongoDB back end, when built: opens store, read model and checkpoints
 * on `uri`. Returns 0 or an exit code. */
int sample_mongo_open(sample_t *s, const char *uri);
void sample_mongo_close(sample_t *s);
/* Announces the process's /metrics endpoint in cqrs_instances; 0 or an exit code. */
int sample_mongo_announce(sample_t *s, const char *uri, const char *endpoint);
void sample_mongo_unannounce(sample_t *s);

#endif
