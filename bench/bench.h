/* What the scenarios of cqrs-bench share (bench.c), for those in files of
 * their own (issue.c). */
#ifndef CQRS_BENCH_H
#define CQRS_BENCH_H

#include <cqrs/mongo.h>
#include <stdint.h>

extern const char *mongo_uri; /* --mongo URI, or MONGODB_URI */
extern long n_arg;            /* --n N (0: the scenario's default) */
extern unsigned senders_arg;  /* --senders S (0: the scenario's default) */

uint64_t now_ns(void);

/* Latency samples in nanoseconds. */
typedef struct samples {
  uint64_t *v;
  size_t n, cap;
} samples_t;
void sample(samples_t *s, uint64_t ns);
/* Prints the scenario's JSON line (p50 and p99 of `lat`, which it frees)
 * with `extra` (more members, or NULL). */
void report(const char *name, uint64_t ops, double seconds, samples_t *lat, const char *extra);
void die(const char *what, const cqrs_error_t *err);
/* A connection on a database of its own ("cqrs_bench_<what>_<pid>"), with
 * the billing collections and indexes. */
cqrs_mongo_t *bench_mongo(const cqrs_registry_t *reg, uv_loop_t *loop, const char *what);

/* issue.c: invoice.issue from concurrent senders, without and with
 * batches, on the memory store or on MongoDB. */
void bench_invoice_issue(bool mongo);

#endif
