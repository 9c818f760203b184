/* libcqrs: middleware around command and query handling, and the metrics
 * that plug into it: counters and latency histograms of commands and queries,
 * projection positions and lag, store calls; a snapshot, and the Prometheus
 * text exposition format (0.0.4). The names are listed in docs/operations.md. */
#ifndef CQRS_METRICS_H
#define CQRS_METRICS_H

#include "cqrs/dispatcher.h"
#include "cqrs/query.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- middleware ---- */

/* What the framework measured of one command. */
typedef struct cqrs_command_stats {
  uint64_t duration_ns; /* from the start of its handling (handler look-up) to its completion */
  unsigned conflicts;   /* commits refused for a concurrency conflict (each but the last retried) */
} cqrs_command_stats_t;

/* Callbacks around handling; any may be NULL. `data` is the pointer given to
 * cqrs_dispatcher_use / cqrs_query_bus_use. A `before` that returns an error
 * (filled into `err`, e.g. cqrs_reject for authorisation) stops the command
 * or query: its handler never runs, the `after`s still run with that error.
 * Command callbacks run on the loop thread, query callbacks on the thread
 * that runs the query. `reserved` must be zero. */
typedef struct cqrs_middleware {
  cqrs_code_t (*command_before)(const cqrs_command_t *cmd, void *data, cqrs_error_t *err);
  /* Once per command, just before its done callback. */
  void (*command_after)(const cqrs_command_t *cmd, const cqrs_result_t *result, const cqrs_command_stats_t *stats,
                        void *data);
  cqrs_code_t (*query_before)(const char *name, const bson_t *params, void *data, cqrs_error_t *err);
  /* `err` is set when `code` is not CQRS_OK. */
  void (*query_after)(const char *name, cqrs_code_t code, const cqrs_error_t *err, uint64_t duration_ns,
                      void *data);
  void *reserved[4];
} cqrs_middleware_t;

#define CQRS_MIDDLEWARE_MAX 8 /* per dispatcher and per query bus */

/* Adds `mw` (borrowed, must outlive `d`) in front of every command `d`
 * handles from now on, in the order added. Loop thread, before sending.
 * Errors: NULL arguments, CQRS_ECLOSED, CQRS_ETOO_LARGE past the maximum. */
CQRS_EXPORT cqrs_code_t cqrs_dispatcher_use(cqrs_dispatcher_t *d, const cqrs_middleware_t *mw, void *data,
                                            cqrs_error_t *err);
/* The same around the registered queries of `q` (unknown names are not
 * seen). Before running any query; not thread-safe. */
CQRS_EXPORT cqrs_code_t cqrs_query_bus_use(cqrs_query_bus_t *q, const cqrs_middleware_t *mw, void *data,
                                           cqrs_error_t *err);

/* ---- metrics ---- */

typedef struct cqrs_metrics cqrs_metrics_t;

/* Creates an empty set of metrics. Counting is lock-free from any thread.
 * Free with cqrs_metrics_destroy once what it watches is closed. */
CQRS_EXPORT cqrs_code_t cqrs_metrics_new(cqrs_metrics_t **out, cqrs_error_t *err);
CQRS_EXPORT void cqrs_metrics_destroy(cqrs_metrics_t *m);

/* Counts the commands of `d` (through cqrs_dispatcher_use) and reads its
 * subscribers' positions and its store's calls at each snapshot. One
 * dispatcher per metrics; `d` (borrowed) must stay open while snapshots are
 * taken. Loop thread. */
CQRS_EXPORT cqrs_code_t cqrs_metrics_attach(cqrs_metrics_t *m, cqrs_dispatcher_t *d, cqrs_error_t *err);
/* Counts the queries of `q` (through cqrs_query_bus_use). */
CQRS_EXPORT cqrs_code_t cqrs_metrics_attach_query_bus(cqrs_metrics_t *m, cqrs_query_bus_t *q, cqrs_error_t *err);

typedef enum cqrs_metric_kind { CQRS_METRIC_COUNTER, CQRS_METRIC_GAUGE, CQRS_METRIC_HISTOGRAM } cqrs_metric_kind_t;

#define CQRS_METRICS_LABELS 3
#define CQRS_METRICS_BUCKETS 20 /* 19 bounds from 10 us to 10 s, then +Inf */

/* One series of a snapshot. Strings are the snapshot's. */
typedef struct cqrs_metric {
  const char *name; /* the family, e.g. "cqrs_commands_total" */
  const char *help;
  cqrs_metric_kind_t kind;
  size_t nlabels;
  const char *label_names[CQRS_METRICS_LABELS];
  char label_values[CQRS_METRICS_LABELS][CQRS_NAME_MAX];
  double value;                           /* counters and gauges */
  uint64_t count;                         /* histograms: observations */
  double sum;                             /* histograms: seconds */
  uint64_t buckets[CQRS_METRICS_BUCKETS]; /* histograms: cumulative, <= cqrs_metrics_bucket_bound(i) */
} cqrs_metric_t;

/* Upper bound in seconds of bucket i; +Inf for the last. */
CQRS_EXPORT double cqrs_metrics_bucket_bound(size_t i);

typedef struct cqrs_metrics_snapshot cqrs_metrics_snapshot_t;

/* Copies every figure now, series grouped by family, in a stable order. On
 * the loop thread of the attached dispatcher (it reads its subscribers).
 * Free with cqrs_metrics_snapshot_destroy. Errors: NULL, CQRS_ENOMEM. */
CQRS_EXPORT cqrs_code_t cqrs_metrics_snapshot(const cqrs_metrics_t *m, cqrs_metrics_snapshot_t **out,
                                              cqrs_error_t *err);
CQRS_EXPORT void cqrs_metrics_snapshot_destroy(cqrs_metrics_snapshot_t *s);
CQRS_EXPORT size_t cqrs_metrics_snapshot_count(const cqrs_metrics_snapshot_t *s);
/* The i-th series (borrowed), NULL past the end. */
CQRS_EXPORT const cqrs_metric_t *cqrs_metrics_snapshot_get(const cqrs_metrics_snapshot_t *s, size_t i);
/* Sum over the series of family `name` whose labels match the given
 * (label, value) pairs, NULL-terminated: value for counters and gauges,
 * count for histograms. 0 when none matches. */
CQRS_EXPORT double cqrs_metrics_snapshot_value(const cqrs_metrics_snapshot_t *s, const char *name, ...);

/* Renders `s` in the Prometheus text format into a new NUL-terminated
 * buffer `*out` of `*len` bytes, to free with cqrs_metrics_text_free. */
CQRS_EXPORT cqrs_code_t cqrs_metrics_render(const cqrs_metrics_snapshot_t *s, char **out, size_t *len,
                                            cqrs_error_t *err);
CQRS_EXPORT void cqrs_metrics_text_free(char *text);

#ifdef __cplusplus
}
#endif
#endif
