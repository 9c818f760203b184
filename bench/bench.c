/* cqrs-bench SCENARIO [--mongo URI] [--n N]: runs one benchmark scenario and
 * prints one JSON line: name, operations, seconds, ops/s, p50 and p99
 * latency in microseconds, peak RSS in KiB, and what the scenario adds.
 * Scenarios: dispatch, pipeline, pipeline-2threads, rehydrate,
 * mongo-append, mongo-ops, projection-lag, projection-lag-mongo,
 * query-mongo, memory-overhead, personal, invoice-issue (issue.c). See
 * docs/benchmarks.md. */
#include <billing/billing.h>
#include <cqrs/backend.h>
#include <cqrs/mongo.h>
#include <inttypes.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "billing_mongo.h"
#include "mongo-private.h" /* the store's client pool, for command monitoring */
#include <mongoc/mongoc.h>

const char *mongo_uri;
long n_arg;
unsigned senders_arg;
static long batch_arg, queries_arg;
static bool metrics_arg; /* --metrics: count commands and projections as an operator would */
static unsigned loops_arg = 1; /* --loops N: loops that run commands (pipeline scenarios) */
static unsigned home_arg;      /* --home P: the share of aggregates the home loop keeps, percent */

uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static long peak_rss_kib(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

/* CPU seconds of every thread of the process, user and system. */
static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

void sample(samples_t *s, uint64_t ns) {
  if (s->n == s->cap) {
    s->cap = s->cap ? s->cap * 2 : 4096;
    s->v = realloc(s->v, s->cap * sizeof *s->v);
  }
  s->v[s->n++] = ns;
}

static double pct(samples_t *s, double p) {
  if (!s->n) return 0;
  qsort(s->v, s->n, sizeof *s->v, cmp_u64);
  size_t i = (size_t)(p * (double)(s->n - 1));
  return (double)s->v[i] / 1000.0;
}

void report(const char *name, uint64_t ops, double seconds, samples_t *lat, const char *extra) {
  double p50 = pct(lat, 0.50), p99 = pct(lat, 0.99);
  printf("{\"name\": \"%s\", \"operations\": %" PRIu64 ", \"seconds\": %.4f, \"ops_per_s\": %.0f, \"p50_us\": %.3f, "
         "\"p99_us\": %.3f, \"peak_rss_kib\": %ld%s%s}\n",
         name, ops, seconds, seconds > 0 ? (double)ops / seconds : 0, p50, p99, peak_rss_kib(), extra ? ", " : "",
         extra ? extra : "");
  fflush(stdout);
  free(lat->v);
}

void die(const char *what, const cqrs_error_t *err) {
  fprintf(stderr, "cqrs-bench: %s: %s\n", what, err ? err->message : "failed");
  exit(1);
}

/* ---- dispatch: a command to a no-op handler on the loop ---- */

typedef struct nop_cmd {
  char id[16];
} nop_cmd_t;
static const cqrs_field_t nop_fields[] = {CQRS_STRING(nop_cmd_t, id, "id", 0), CQRS_FIELDS_END};
static const cqrs_command_type_t nop_type = {.name = "bench.nop", .payload_size = sizeof(nop_cmd_t),
                                             .fields = nop_fields};

static cqrs_code_t nop_handler(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)ctx;
  (void)cmd;
  (void)data;
  (void)err;
  return CQRS_OK;
}

static void count_done(const cqrs_result_t *r, void *data) {
  if (r->error.code == CQRS_OK) (*(uint64_t *)data)++;
}

static void bench_dispatch(void) {
  long total = n_arg ? n_arg : 2000000, batch = batch_arg ? batch_arg : 1000;
  uv_loop_t loop;
  uv_loop_init(&loop);
  cqrs_registry_t *reg = NULL;
  cqrs_registry_new(&reg, NULL);
  cqrs_registry_add_command(reg, &nop_type, NULL);
  cqrs_store_t *store = NULL;
  cqrs_memory_store_new(&store, NULL);
  cqrs_dispatcher_t *d;
  cqrs_error_t err;
  if (cqrs_dispatcher_new(&loop, reg, store, NULL, &d, &err)) die("dispatcher", &err);
  cqrs_dispatcher_register(d, &nop_type, nop_handler, NULL, 0, NULL);
  cqrs_command_t **cmds = malloc((size_t)batch * sizeof *cmds);
  nop_cmd_t p = {"x"};
  samples_t lat = {0};
  uint64_t done = 0, busy = 0;
  for (long sent = 0; sent < total; sent += batch) {
    for (long i = 0; i < batch; i++) cqrs_command_new(&nop_type, &p, &cmds[i], NULL); /* built outside the timing */
    uint64_t t0 = now_ns();
    for (long i = 0; i < batch; i++) cqrs_dispatcher_send(d, cmds[i], count_done, &done);
    uv_run(&loop, UV_RUN_DEFAULT);
    uint64_t dt = now_ns() - t0;
    busy += dt;
    sample(&lat, dt / (uint64_t)batch);
  }
  if (done != (uint64_t)total) fprintf(stderr, "dispatch: %" PRIu64 " of %ld done\n", done, total);
  char extra[128];
  snprintf(extra, sizeof extra, "\"ns_per_op\": %.1f, \"latency\": \"per command, mean of each batch of %ld\"",
           (double)busy / (double)total, batch);
  report("dispatch", (uint64_t)total, (double)busy / 1e9, &lat, extra);
  cqrs_dispatcher_close(d, NULL, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  free(cmds);
  cqrs_store_destroy(store);
  cqrs_registry_destroy(reg);
}

/* ---- pipeline: deposits on 10,000 accounts through the whole path ---- */

#define ACCOUNTS 10000

typedef struct pipe_env {
  uv_loop_t loop;
  cqrs_registry_t *reg;
  cqrs_store_t *store;
  cqrs_readmodel_t *rm;
  cqrs_checkpoints_t *cp;
  cqrs_dispatcher_t *d;
  billing_t *b;
  cqrs_metrics_t *m;
} pipe_env_t;

static void pipe_open(pipe_env_t *e, bool keep_alive) {
  memset(e, 0, sizeof *e);
  uv_loop_init(&e->loop);
  cqrs_registry_new(&e->reg, NULL);
  billing_register(e->reg, NULL);
  cqrs_memory_store_new(&e->store, NULL);
  cqrs_memory_readmodel_new(&e->rm, NULL);
  cqrs_memory_checkpoints_new(&e->cp, NULL);
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.keep_alive = keep_alive;
  o.loops = loops_arg;
  o.home_percent = home_arg;
  cqrs_error_t err;
  if (cqrs_dispatcher_new(&e->loop, e->reg, e->store, &o, &e->d, &err)) die("dispatcher", &err);
  if (billing_register_handlers(e->d, &err)) die("handlers", &err);
  if (metrics_arg && (cqrs_metrics_new(&e->m, &err) || cqrs_metrics_attach(e->m, e->d, &err))) die("metrics", &err);
  /* One projection: the balances. */
  e->b = billing_projector_new(e->rm, NULL);
  static const cqrs_event_type_t *const types[] = {&billing_account_opened, &billing_account_deposited, NULL};
  cqrs_projection_def_t def = {"balances", types, billing_project_balances, e->b, 0};
  if (cqrs_projection_start(e->d, &def, e->cp, &err)) die("projection", &err);
  uint64_t ok = 0;
  for (int i = 0; i < ACCOUNTS; i++) {
    billing_open_account_t c = {"", "Owner", "EUR"};
    snprintf(c.account_id, sizeof c.account_id, "acc-%d", i);
    cqrs_command_t *cmd;
    cqrs_command_new(&billing_open_account, &c, &cmd, NULL);
    cqrs_dispatcher_send(e->d, cmd, count_done, &ok);
  }
  if (keep_alive) {
    while (ok < ACCOUNTS) uv_run(&e->loop, UV_RUN_ONCE);
  } else {
    uv_run(&e->loop, UV_RUN_DEFAULT);
  }
}

static void pipe_close(pipe_env_t *e) {
  cqrs_dispatcher_close(e->d, NULL, NULL);
  uv_run(&e->loop, UV_RUN_DEFAULT);
  uv_loop_close(&e->loop);
  cqrs_metrics_destroy(e->m);
  billing_destroy(e->b);
  cqrs_checkpoints_destroy(e->cp);
  cqrs_readmodel_destroy(e->rm);
  cqrs_store_destroy(e->store);
  cqrs_registry_destroy(e->reg);
}

static cqrs_command_t *deposit_cmd(long i) {
  billing_move_t c = {"", {1, "EUR"}, ""};
  snprintf(c.account_id, sizeof c.account_id, "acc-%ld", i % ACCOUNTS);
  cqrs_command_t *cmd;
  cqrs_command_new(&billing_deposit, &c, &cmd, NULL);
  return cmd;
}

static void bench_pipeline(void) {
  long total = n_arg ? n_arg : 500000, batch = batch_arg ? batch_arg : 1000;
  pipe_env_t e;
  pipe_open(&e, false);
  samples_t lat = {0};
  uint64_t done = 0, busy = 0;
  cqrs_command_t **cmds = malloc((size_t)batch * sizeof *cmds);
  double cpu = 0;
  for (long sent = 0; sent < total; sent += batch) {
    for (long i = 0; i < batch; i++) cmds[i] = deposit_cmd(sent + i);
    double c0 = cpu_seconds();
    uint64_t t0 = now_ns();
    for (long i = 0; i < batch; i++) cqrs_dispatcher_send(e.d, cmds[i], count_done, &done);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    uint64_t dt = now_ns() - t0;
    cpu += cpu_seconds() - c0;
    busy += dt;
    sample(&lat, dt / (uint64_t)batch);
  }
  if (done != (uint64_t)total) fprintf(stderr, "pipeline: %" PRIu64 " of %ld done\n", done, total);
  char extra[256];
  snprintf(extra, sizeof extra,
           "\"accounts\": %d, \"senders\": 1, \"loops\": %u, \"home_percent\": %u, \"cpu_us_per_op\": %.3f, "
           "\"metrics\": %s, \"latency\": \"per command, mean of each batch of %ld\"",
           ACCOUNTS, loops_arg, home_arg, cpu * 1e6 / (double)total, metrics_arg ? "true" : "false", batch);
  report("pipeline", (uint64_t)total, (double)busy / 1e9, &lat, extra);
  free(cmds);
  pipe_close(&e);
}

/* ---- personal: what personal data costs (docs/privacy.md) ---- */

typedef struct pii {
  char name[BILLING_NAME_MAX];
  char email[BILLING_EMAIL_MAX];
} pii_t;
static const cqrs_field_t pii_plain_fields[] = {CQRS_STRING(pii_t, name, "name", 0),
                                                CQRS_STRING(pii_t, email, "email", 0), CQRS_FIELDS_END};
static const cqrs_field_t pii_sealed_fields[] = {CQRS_STRING(pii_t, name, "name", CQRS_F_PERSONAL),
                                                 CQRS_STRING(pii_t, email, "email", CQRS_F_PERSONAL),
                                                 CQRS_SUBJECT_OWNER, CQRS_FIELDS_END};
static const cqrs_event_type_t pii_plain = {.name = "bench.pii_plain", .schema_version = 1, .payload_size = sizeof(pii_t), .fields = pii_plain_fields};
static const cqrs_event_type_t pii_sealed = {.name = "bench.pii_sealed", .schema_version = 1, .payload_size = sizeof(pii_t), .fields = pii_sealed_fields};

static bool count_event(const cqrs_event_t *e, void *data) {
  (void)e;
  (*(long *)data)++;
  return true;
}

/* Appends one event of `type` to each of `n` streams "<prefix><i>" at
 * `version`; returns ns per append. */
static double pii_appends(cqrs_store_t *store, const cqrs_event_type_t *type, const char *prefix, long n,
                          int64_t version) {
  uint64_t busy = 0;
  for (long i = 0; i < n; i++) {
    char id[32], cmd_id[48];
    snprintf(id, sizeof id, "%s%ld", prefix, i);
    snprintf(cmd_id, sizeof cmd_id, "%s-v%lld", id, (long long)version);
    pii_t p;
    memset(&p, 0, sizeof p);
    snprintf(p.name, sizeof p.name, "Customer number %ld", i);
    snprintf(p.email, sizeof p.email, "billing.department@customer-%ld.example.org", i);
    cqrs_envelope_t *env;
    cqrs_event_t *e;
    if (cqrs_envelope_new("bench", id, cmd_id, NULL, &env, NULL) ||
        cqrs_event_new(type, env, NULL, version, 1, &p, &e, NULL))
      die("event", NULL);
    cqrs_append_t req = {"bench", id, version - 1, cmd_id, &e, 1};
    cqrs_append_result_t res;
    cqrs_error_t err;
    uint64_t t0 = now_ns();
    if (cqrs_store_append(store, &req, &res, &err)) die("append", &err);
    busy += now_ns() - t0;
    cqrs_event_unref(e);
    cqrs_envelope_unref(env);
  }
  return (double)busy / (double)n;
}

static double pii_reads(cqrs_store_t *store, int64_t from, long n) {
  long seen = 0;
  cqrs_error_t err;
  uint64_t t0 = now_ns();
  if (cqrs_store_read_all(store, from, (size_t)n, count_event, &seen, &err)) die("read", &err);
  uint64_t dt = now_ns() - t0;
  if (seen != n) die("read: events missing", NULL);
  return (double)dt / (double)n;
}

/* Sends `n` commands built by `make` and runs them; returns us per command. */
static double run_commands(pipe_env_t *e, long n, cqrs_command_t *(*make)(long i), samples_t *lat) {
  uint64_t done = 0, busy = 0;
  const long batch = 1000;
  cqrs_command_t *cmds[1000];
  for (long sent = 0; sent < n; sent += batch) {
    long k = n - sent < batch ? n - sent : batch;
    for (long i = 0; i < k; i++) cmds[i] = make(sent + i);
    uint64_t t0 = now_ns();
    for (long i = 0; i < k; i++) cqrs_dispatcher_send(e->d, cmds[i], count_done, &done);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    uint64_t dt = now_ns() - t0;
    busy += dt;
    if (lat) sample(lat, dt / (uint64_t)k);
  }
  if (done != (uint64_t)n) fprintf(stderr, "personal: %" PRIu64 " of %ld commands done\n", done, n);
  return (double)busy / 1e3 / (double)n;
}

static cqrs_command_t *register_cmd(long i) {
  billing_register_customer_t c;
  memset(&c, 0, sizeof c);
  snprintf(c.customer_id, sizeof c.customer_id, "cust-%ld", i);
  snprintf(c.name, sizeof c.name, "Customer number %ld", i);
  snprintf(c.email, sizeof c.email, "billing@customer-%ld.example.org", i);
  cqrs_command_t *cmd;
  cqrs_command_new(&billing_register_customer, &c, &cmd, NULL);
  return cmd;
}

static cqrs_command_t *change_cmd(long i) {
  billing_change_email_t c;
  memset(&c, 0, sizeof c);
  snprintf(c.customer_id, sizeof c.customer_id, "cust-%ld", i);
  snprintf(c.email, sizeof c.email, "accounts@customer-%ld.example.org", i);
  cqrs_command_t *cmd;
  cqrs_command_new(&billing_change_email, &c, &cmd, NULL);
  return cmd;
}

static cqrs_command_t *forget_cmd(long i) {
  billing_forget_customer_t c;
  memset(&c, 0, sizeof c);
  snprintf(c.customer_id, sizeof c.customer_id, "cust-%ld", i);
  cqrs_command_t *cmd;
  cqrs_command_new(&billing_forget_customer, &c, &cmd, NULL);
  return cmd;
}

/* In memory, one thread: (1) the store alone, the same payload (a name and
 * an e-mail) as a plain event type and as a personal one: the cost of
 * sealing per event (a new subject: its key made; a known one: cached) and
 * of opening it; (2) customer.register and customer.change_email through
 * the whole billing path, projections on; (3) customer.forget: the key
 * deleted, the fact recorded, the customer's snapshot replaced, the read
 * side's customer overwritten (with no invoices: billing.invoices also
 * overwrites every invoice of the customer, a scan of the in-memory read
 * model, which MongoDB serves from its customer.id index). */
static void bench_personal(void) {
  long n = n_arg ? n_arg : 100000, forgets = n < 10000 ? n : 10000;
  cqrs_registry_t *reg = NULL;
  cqrs_registry_new(&reg, NULL);
  cqrs_registry_add_event(reg, &pii_plain, NULL);
  cqrs_registry_add_event(reg, &pii_sealed, NULL);
  cqrs_store_t *store = NULL;
  cqrs_keys_t *keys = NULL;
  cqrs_error_t err;
  if (cqrs_memory_store_new(&store, &err) || cqrs_memory_keys_new(NULL, &keys, &err) ||
      cqrs_store_set_keys(store, keys, reg, &err))
    die("store", &err);
  double plain_append = pii_appends(store, &pii_plain, "p", n, 1);
  double plain_read = pii_reads(store, 1, n);
  double sealed_new = pii_appends(store, &pii_sealed, "s", n, 1);
  double sealed_known = pii_appends(store, &pii_sealed, "s", n, 2);
  double sealed_read = pii_reads(store, n + 1, 2 * n);
  cqrs_store_destroy(store);
  cqrs_keys_destroy(keys);
  cqrs_registry_destroy(reg);

  pipe_env_t e;
  memset(&e, 0, sizeof e);
  uv_loop_init(&e.loop);
  cqrs_registry_new(&e.reg, NULL);
  billing_register(e.reg, NULL);
  if (cqrs_memory_store_new(&e.store, &err) || cqrs_memory_readmodel_new(&e.rm, &err) ||
      cqrs_memory_checkpoints_new(&e.cp, &err) || cqrs_memory_keys_new(NULL, &keys, &err) ||
      cqrs_store_set_keys(e.store, keys, e.reg, &err) || cqrs_dispatcher_new(&e.loop, e.reg, e.store, NULL, &e.d, &err) ||
      billing_start(e.d, e.rm, e.cp, NULL, &e.b, &err))
    die("billing", &err);
  samples_t lat = {0};
  double reg_us = run_commands(&e, n, register_cmd, &lat);
  double change_us = run_commands(&e, n, change_cmd, NULL);
  double forget_us = run_commands(&e, forgets, forget_cmd, NULL);
  char extra[1024];
  snprintf(extra, sizeof extra,
           "\"events\": %ld, \"plain_append_ns\": %.0f, \"sealed_append_new_subject_ns\": %.0f, "
           "\"sealed_append_known_subject_ns\": %.0f, \"plain_read_ns\": %.0f, \"sealed_read_ns\": %.0f, "
           "\"seal_ns_per_event\": %.0f, \"open_ns_per_event\": %.0f, \"register_us\": %.2f, "
           "\"change_email_us\": %.2f, \"forgets\": %ld, \"forget_us\": %.2f, "
           "\"latency\": \"customer.register, per command, mean of each batch of 1000\"",
           n, plain_append, sealed_new, sealed_known, plain_read, sealed_read, sealed_known - plain_append,
           sealed_read - plain_read, reg_us, change_us, forgets, forget_us);
  report("personal", (uint64_t)n, reg_us * (double)n / 1e6, &lat, extra);
  pipe_close(&e);
  cqrs_keys_destroy(keys);
}

typedef struct sender {
  pipe_env_t *e;
  long from, count;
  atomic_uint_fast64_t *done, *sent;
} sender_t;

/* Commands in flight at most (both senders together): a sender that gets
 * this far ahead of the completions waits, as a real client holding a
 * bounded number of requests would, instead of queueing the whole run
 * (which peaked near 600 MB for 500,000 commands). */
#define SEND_WINDOW 16384

static void count_done_atomic(const cqrs_result_t *r, void *data) {
  if (r->error.code == CQRS_OK) atomic_fetch_add((atomic_uint_fast64_t *)data, 1);
}

static void send_range(void *arg) {
  sender_t *s = arg;
  for (long i = 0; i < s->count; i++) {
    while (atomic_load(s->sent) - atomic_load(s->done) >= SEND_WINDOW) sched_yield();
    atomic_fetch_add(s->sent, 1);
    cqrs_dispatcher_send(s->e->d, deposit_cmd(s->from + i), count_done_atomic, s->done);
  }
}

static void bench_pipeline_threads(void) {
  long total = n_arg ? n_arg : 500000;
  pipe_env_t e;
  pipe_open(&e, true);
  atomic_uint_fast64_t done = 0, sent = 0;
  sender_t s[2] = {{&e, 0, total / 2, &done, &sent}, {&e, total / 2, total - total / 2, &done, &sent}};
  uv_thread_t t[2];
  samples_t lat = {0};
  double c0 = cpu_seconds();
  uint64_t t0 = now_ns();
  for (int i = 0; i < 2; i++) uv_thread_create(&t[i], send_range, &s[i]);
  uint64_t last = t0, last_done = 0;
  while (atomic_load(&done) < (uint64_t)total) {
    uv_run(&e.loop, UV_RUN_ONCE);
    uint64_t d = atomic_load(&done), now = now_ns();
    if (d - last_done >= 10000) {
      sample(&lat, (now - last) / (d - last_done));
      last = now;
      last_done = d;
    }
  }
  uint64_t dt = now_ns() - t0;
  double cpu = cpu_seconds() - c0;
  for (int i = 0; i < 2; i++) uv_thread_join(&t[i]);
  char extra[256];
  snprintf(extra, sizeof extra,
           "\"accounts\": %d, \"senders\": 2, \"loops\": %u, \"home_percent\": %u, \"cpu_us_per_op\": %.3f, "
           "\"latency\": \"per command, mean over each 10000 completions\"",
           ACCOUNTS, loops_arg, home_arg, cpu * 1e6 / (double)total);
  report("pipeline-2threads", (uint64_t)total, (double)dt / 1e9, &lat, extra);
  pipe_close(&e);
}

/* ---- rehydrate: loading one aggregate of 1k, 10k, 100k events ---- */

static void bench_rehydrate(void) {
  static const long sizes[] = {1000, 10000, 100000};
  for (int snap = 0; snap < 2; snap++) {
    for (size_t k = 0; k < 3; k++) {
      long n = sizes[k];
      cqrs_store_t *store = NULL;
      cqrs_memory_store_new(&store, NULL);
      cqrs_aggregate_type_t type = billing_account;
      type.snapshot_every = snap ? 100 : 0;
      if (!snap) type.snapshot_fields = NULL;
      /* Build the stream through the repository, so snapshots are taken as in production. */
      cqrs_aggregate_t *agg;
      cqrs_repository_load(store, &type, "a", &agg, NULL);
      billing_account_opened_t o = {"Owner", "EUR"};
      cqrs_aggregate_raise(agg, &billing_account_opened, &o, NULL);
      char cmd[32];
      for (long i = 1; i < n; i++) {
        billing_account_moved_t mv = {{1, "EUR"}, i, ""};
        cqrs_aggregate_raise(agg, &billing_account_deposited, &mv, NULL);
        if (i % 1000 == 0 || i == n - 1) {
          snprintf(cmd, sizeof cmd, "c%ld", i);
          cqrs_cause_t cause = {cmd, NULL};
          cqrs_error_t err;
          if (cqrs_repository_save(store, agg, &cause, NULL, &err)) die("save", &err);
        }
      }
      cqrs_aggregate_destroy(agg);
      samples_t lat = {0};
      int reps = (int)(2000000 / n) + 3;
      uint64_t busy = 0;
      int64_t version = 0;
      for (int r = 0; r < reps; r++) {
        uint64_t t0 = now_ns();
        cqrs_repository_load(store, &type, "a", &agg, NULL);
        uint64_t dt = now_ns() - t0;
        version = cqrs_aggregate_version(agg);
        cqrs_aggregate_destroy(agg);
        busy += dt;
        sample(&lat, dt);
      }
      char name[64], extra[200];
      snprintf(name, sizeof name, "rehydrate-%ldk%s", n / 1000, snap ? "-snapshots" : "");
      double per_load = (double)busy / reps;
      snprintf(extra, sizeof extra,
               "\"events\": %ld, \"version\": %" PRId64 ", \"events_applied_per_s\": %.0f, \"latency\": \"per load\"",
               n, version, snap ? 0.0 : (double)n / (per_load / 1e9));
      report(name, (uint64_t)reps, (double)busy / 1e9, &lat, extra);
      cqrs_store_destroy(store);
    }
  }
}

/* ---- memory overhead of the in-memory store ---- */

static void bench_memory_overhead(void) {
  cqrs_store_t *store = NULL;
  cqrs_memory_store_new(&store, NULL);
  long n = n_arg ? n_arg : 1000000;
  size_t before = cqrs_memory_store_overhead(store);
  cqrs_aggregate_t *agg;
  uint64_t t0 = now_ns();
  long streams = n / 10;
  for (long s = 0; s < streams; s++) {
    char id[32], cmd[32];
    snprintf(id, sizeof id, "acc-%ld", s);
    snprintf(cmd, sizeof cmd, "c%ld", s);
    cqrs_repository_load(store, &billing_account, id, &agg, NULL);
    for (int i = 0; i < 10; i++) {
      billing_account_moved_t mv = {{1, "EUR"}, i, ""};
      cqrs_aggregate_raise(agg, &billing_account_deposited, &mv, NULL);
    }
    cqrs_cause_t cause = {cmd, NULL};
    cqrs_repository_save(store, agg, &cause, NULL, NULL);
    cqrs_aggregate_destroy(agg);
  }
  double secs = (double)(now_ns() - t0) / 1e9;
  size_t per = (cqrs_memory_store_overhead(store) - before) / (size_t)n;
  char extra[160];
  snprintf(extra, sizeof extra, "\"bytes_per_event_beyond_payload\": %zu, \"payload_bytes\": %zu, \"streams\": %ld", per,
           sizeof(billing_account_moved_t), streams);
  samples_t lat = {0};
  report("memory-overhead", (uint64_t)n, secs, &lat, extra);
  cqrs_store_destroy(store);
}

/* A connection on a database of its own ("cqrs_bench_<what>_<pid>"), with
 * the billing collections and indexes. */
cqrs_mongo_t *bench_mongo(const cqrs_registry_t *reg, uv_loop_t *loop, const char *what) {
  cqrs_mongo_options_t o = billing_mongo_options;
  char db[64];
  snprintf(db, sizeof db, "cqrs_bench_%s_%d", what, (int)getpid());
  o.database = db;
  cqrs_mongo_t *m;
  cqrs_error_t err;
  cqrs_mongo_quiet_logs();
  if (cqrs_mongo_new(mongo_uri, &o, reg, loop, &m, &err) || billing_mongo_indexes(m, &err)) die("mongo", &err);
  return m;
}

/* ---- projection lag: from the end of an append to the projection ---- */

/* A store that forwards to another and notes when each position's append
 * returned. */
#define MAX_POS (1u << 20)
static uint64_t *appended_at;

typedef struct timed {
  cqrs_store_t *inner;
} timed_t;

static cqrs_code_t t_append(void *impl, const cqrs_append_t *r, cqrs_append_result_t *res, cqrs_error_t *err) {
  cqrs_code_t rc = cqrs_store_append(((timed_t *)impl)->inner, r, res, err);
  uint64_t now = now_ns();
  if (!rc && !res->duplicate)
    for (int64_t p = res->first_position; p <= res->last_position; p++)
      if ((uint64_t)p < MAX_POS) appended_at[p] = now;
  return rc;
}
static cqrs_code_t t_read_stream(void *impl, const char *t, const char *id, int64_t from, cqrs_event_visit_cb cb,
                                 void *data, cqrs_error_t *err) {
  return cqrs_store_read_stream(((timed_t *)impl)->inner, t, id, from, cb, data, err);
}
static cqrs_code_t t_read_all(void *impl, int64_t from, size_t limit, cqrs_event_visit_cb cb, void *data,
                              cqrs_error_t *err) {
  return cqrs_store_read_all(((timed_t *)impl)->inner, from, limit, cb, data, err);
}
static cqrs_code_t t_head(void *impl, int64_t *p, cqrs_error_t *err) {
  return cqrs_store_head(((timed_t *)impl)->inner, p, err);
}
static cqrs_code_t t_snap_load(void *impl, const char *t, const char *id, cqrs_snapshot_t *out, bool *found,
                               cqrs_error_t *err) {
  return cqrs_store_snapshot_load(((timed_t *)impl)->inner, t, id, out, found, err);
}
static cqrs_code_t t_snap_save(void *impl, const cqrs_snapshot_t *s, cqrs_error_t *err) {
  return cqrs_store_snapshot_save(((timed_t *)impl)->inner, s, err);
}
static cqrs_store_ops_t timed_ops = {.name = "timed", .blocking = false, .append = t_append,
                                     .read_stream = t_read_stream, .read_all = t_read_all, .head = t_head,
                                     .snapshot_load = t_snap_load, .snapshot_save = t_snap_save, .destroy = NULL};

typedef struct lag_proj {
  billing_t *b;
  samples_t lat;
  uint64_t seen;
} lag_proj_t;

static cqrs_code_t lag_handler(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  lag_proj_t *lp = data;
  cqrs_code_t rc = billing_project_balances(e, lp->b, err);
  uint64_t now = now_ns();
  if (!rc && (uint64_t)e->position < MAX_POS && appended_at[e->position] && e->type == &billing_account_deposited)
    sample(&lp->lat, now - appended_at[e->position]);
  lp->seen++;
  return rc;
}

static void bench_projection_lag(bool mongo) {
  long total = n_arg ? n_arg : (mongo ? 2000 : 100000);
  appended_at = calloc(MAX_POS, sizeof *appended_at);
  uv_loop_t loop;
  uv_loop_init(&loop);
  cqrs_registry_t *reg = NULL;
  cqrs_registry_new(&reg, NULL);
  billing_register(reg, NULL);
  cqrs_mongo_t *m = NULL;
  cqrs_store_t *inner;
  cqrs_readmodel_t *rm;
  cqrs_checkpoints_t *cp;
  cqrs_error_t err;
  if (mongo) {
    m = bench_mongo(reg, &loop, "lag");
    cqrs_mongo_store_new(m, &inner, NULL);
    cqrs_mongo_readmodel_new(m, &rm, NULL);
    cqrs_mongo_checkpoints_new(m, &cp, NULL);
    timed_ops.blocking = true;
  } else {
    cqrs_memory_store_new(&inner, NULL);
    cqrs_memory_readmodel_new(&rm, NULL);
    cqrs_memory_checkpoints_new(&cp, NULL);
  }
  timed_t timed = {inner};
  cqrs_store_t *store = NULL;
  cqrs_store_new(&timed_ops, &timed, &store, NULL);
  cqrs_dispatcher_t *d;
  if (cqrs_dispatcher_new(&loop, reg, store, NULL, &d, &err)) die("dispatcher", &err);
  billing_register_handlers(d, NULL);
  lag_proj_t lp = {billing_projector_new(rm, NULL), {0}, 0};
  static const cqrs_event_type_t *const types[] = {&billing_account_opened, &billing_account_deposited, NULL};
  cqrs_projection_def_t def = {"balances", types, lag_handler, &lp, mongo ? CQRS_SUBSCRIBE_BLOCKING : 0};
  if (cqrs_projection_start(d, &def, cp, &err)) die("projection", &err);
  uint64_t done = 0;
  int accounts = mongo ? 100 : 1000;
  for (int i = 0; i < accounts; i++) {
    billing_open_account_t c = {"", "Owner", "EUR"};
    snprintf(c.account_id, sizeof c.account_id, "acc-%d", i);
    cqrs_command_t *cmd;
    cqrs_command_new(&billing_open_account, &c, &cmd, NULL);
    cqrs_dispatcher_send(d, cmd, count_done, &done);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  /* Commands one after another, as a client would send them. */
  uint64_t t0 = now_ns();
  for (long i = 0; i < total; i++) {
    billing_move_t c = {"", {1, "EUR"}, ""};
    snprintf(c.account_id, sizeof c.account_id, "acc-%ld", i % accounts);
    cqrs_command_t *cmd;
    cqrs_command_new(&billing_deposit, &c, &cmd, NULL);
    cqrs_dispatcher_send(d, cmd, count_done, &done);
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  double secs = (double)(now_ns() - t0) / 1e9;
  char extra[200];
  snprintf(extra, sizeof extra, "\"store\": \"%s\", \"latency\": \"append returned -> projection handler ran\"",
           mongo ? "mongodb" : "memory");
  report(mongo ? "projection-lag-mongo" : "projection-lag", (uint64_t)total, secs, &lp.lat, extra);
  cqrs_dispatcher_close(d, NULL, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  billing_destroy(lp.b);
  cqrs_store_destroy(store);
  cqrs_checkpoints_destroy(cp);
  cqrs_readmodel_destroy(rm);
  cqrs_store_destroy(inner);
  if (m) {
    cqrs_mongo_drop_database(m, NULL);
    cqrs_mongo_destroy(m);
  }
  cqrs_registry_destroy(reg);
  free(appended_at);
}

/* ---- mongo-append: the store against raw driver inserts ---- */

typedef struct appender {
  cqrs_store_t *s;          /* the framework's store, or NULL for raw */
  mongoc_client_pool_t *pool; /* raw */
  const char *db;
  int id;
  long commits;
  samples_t lat;
  int failures;
} appender_t;

/* The same document the store writes for a one-event commit (commit number
 * `seq` as its _id; see infra/mongo/src/mongo_store.c). */
static void commit_doc(bson_t *doc, int64_t seq, const char *stream, int64_t version, int64_t position,
                       const char *cmd) {
  char eid[25], id[24], key[CQRS__MONGO_STREAM_KEY_MAX];
  cqrs_new_id(eid);
  snprintf(id, sizeof id, "%020lld", (long long)seq);
  if (!cqrs__mongo_stream_version_key(key, sizeof key, "account", stream, version)) die("stream key", NULL);
  int64_t now = cqrs_now_ms();
  BSON_APPEND_UTF8(doc, "_id", id);
  BSON_APPEND_UTF8(doc, "type", "account.deposited");
  BSON_APPEND_DATE_TIME(doc, "timestamp", now);
  BSON_APPEND_INT64(doc, "version", version);
  BSON_APPEND_UTF8(doc, "aggregateType", "account");
  BSON_APPEND_UTF8(doc, "aggregateId", stream);
  BSON_APPEND_UTF8(doc, "streamVersion", key);
  BSON_APPEND_INT64(doc, "lastVersion", version);
  BSON_APPEND_INT64(doc, "position", position);
  BSON_APPEND_INT64(doc, "lastPosition", position);
  BSON_APPEND_UTF8(doc, "commandId", cmd);
  BSON_APPEND_UTF8(doc, "correlationId", cmd);
  bson_t events, ev, data, amount;
  BSON_APPEND_ARRAY_BEGIN(doc, "events", &events);
  BSON_APPEND_DOCUMENT_BEGIN(&events, "0", &ev);
  BSON_APPEND_UTF8(&ev, "eventId", eid);
  BSON_APPEND_UTF8(&ev, "type", "account.deposited");
  BSON_APPEND_INT32(&ev, "schemaVersion", 1);
  BSON_APPEND_INT64(&ev, "version", version);
  BSON_APPEND_DATE_TIME(&ev, "timestamp", now);
  BSON_APPEND_DOCUMENT_BEGIN(&ev, "data", &data);
  BSON_APPEND_DOCUMENT_BEGIN(&data, "amount", &amount);
  BSON_APPEND_INT64(&amount, "amount", 1);
  BSON_APPEND_UTF8(&amount, "currency", "EUR");
  bson_append_document_end(&data, &amount);
  BSON_APPEND_INT64(&data, "balance", version);
  BSON_APPEND_UTF8(&data, "transferId", "");
  bson_append_document_end(&ev, &data);
  bson_append_document_end(&events, &ev);
  bson_append_array_end(doc, &events);
}

static _Atomic int64_t raw_position;

/* Round trips, counted by the driver's command monitoring (APM) on each
 * side's pool: what a group of commits costs the server, by kind, and how
 * long the server took for inserts, updates and finds (the group insert is
 * on the critical path; what else is there shows here). */
enum { RT_INSERT, RT_UPDATE, RT_FIND_ID, RT_FIND_COMMAND, RT_FIND_STREAM, RT_OTHER, RT_KINDS };
static const char *const rt_names[RT_KINDS] = {"insert", "update", "find_id", "find_command", "find_stream", "other"};
enum { RT_T_INSERT, RT_T_UPDATE, RT_T_FIND, RT_T_OTHER, RT_TIMES }; /* by command name: a reply names no filter */
typedef struct round_trips {
  _Atomic uint64_t n[RT_KINDS], us[RT_TIMES], timed[RT_TIMES], docs, singles;
} round_trips_t;
static round_trips_t rt;

static int rt_kind(const char *name, const bson_t *cmd) {
  if (!strcmp(name, "insert")) return RT_INSERT;
  if (!strcmp(name, "update")) return RT_UPDATE;
  if (strcmp(name, "find")) return RT_OTHER;
  bson_iter_t it, f;
  if (bson_iter_init_find(&it, cmd, "filter") && BSON_ITER_HOLDS_DOCUMENT(&it) && bson_iter_recurse(&it, &f) &&
      bson_iter_next(&f)) {
    const char *k = bson_iter_key(&f);
    if (!strcmp(k, "_id")) return RT_FIND_ID;
    if (!strcmp(k, "commandId")) return RT_FIND_COMMAND;
    if (!strcmp(k, "aggregateType") || !strcmp(k, "streamVersion")) return RT_FIND_STREAM;
  }
  return RT_OTHER;
}

static void rt_started(const mongoc_apm_command_started_t *e) {
  const bson_t *cmd = mongoc_apm_command_started_get_command(e);
  int k = rt_kind(mongoc_apm_command_started_get_command_name(e), cmd);
  atomic_fetch_add(&rt.n[k], 1);
  bson_iter_t it, docs;
  if (k == RT_INSERT && bson_iter_init_find(&it, cmd, "documents") && BSON_ITER_HOLDS_ARRAY(&it) &&
      bson_iter_recurse(&it, &docs)) {
    uint64_t n = 0;
    while (bson_iter_next(&docs)) n++;
    atomic_fetch_add(&rt.docs, n);
    if (n == 1) atomic_fetch_add(&rt.singles, 1);
  }
}

static void rt_duration(const char *name, int64_t us) {
  int t = !strcmp(name, "insert") ? RT_T_INSERT
          : !strcmp(name, "update") ? RT_T_UPDATE
          : !strcmp(name, "find")   ? RT_T_FIND
                                    : RT_T_OTHER;
  atomic_fetch_add(&rt.us[t], (uint64_t)us);
  atomic_fetch_add(&rt.timed[t], 1);
}
static void rt_succeeded(const mongoc_apm_command_succeeded_t *e) {
  rt_duration(mongoc_apm_command_succeeded_get_command_name(e), mongoc_apm_command_succeeded_get_duration(e));
}
static void rt_failed(const mongoc_apm_command_failed_t *e) {
  rt_duration(mongoc_apm_command_failed_get_command_name(e), mongoc_apm_command_failed_get_duration(e));
}

static void rt_watch(mongoc_client_pool_t *pool) {
  mongoc_apm_callbacks_t *cb = mongoc_apm_callbacks_new();
  mongoc_apm_set_command_started_cb(cb, rt_started);
  mongoc_apm_set_command_succeeded_cb(cb, rt_succeeded);
  mongoc_apm_set_command_failed_cb(cb, rt_failed);
  if (!mongoc_client_pool_set_apm_callbacks(pool, cb, NULL)) die("command monitoring", NULL);
  mongoc_apm_callbacks_destroy(cb);
}

static void rt_reset(void) {
  for (int k = 0; k < RT_KINDS; k++) atomic_store(&rt.n[k], 0);
  for (int t = 0; t < RT_TIMES; t++) {
    atomic_store(&rt.us[t], 0);
    atomic_store(&rt.timed[t], 0);
  }
  atomic_store(&rt.docs, 0);
  atomic_store(&rt.singles, 0);
}

static double rt_ratio(uint64_t a, uint64_t b) { return b ? (double)a / (double)b : 0; }

/* Appends the counts per commit to `out`: "round_trips_per_commit":
 * {"insert": 0.07, ...}, the documents per insert, the share of inserts
 * that carried one, and the server's mean milliseconds per insert, update
 * and find. */
static void rt_print(char *out, size_t cap, long commits) {
  size_t len = strlen(out);
  len += (size_t)snprintf(out + len, cap - len, ", \"round_trips_per_commit\": {");
  for (int k = 0; k < RT_KINDS && len < cap; k++)
    len += (size_t)snprintf(out + len, cap - len, "%s\"%s\": %.3f", k ? ", " : "", rt_names[k],
                            rt_ratio(atomic_load(&rt.n[k]), (uint64_t)commits));
  uint64_t ins = atomic_load(&rt.n[RT_INSERT]);
  if (len < cap)
    snprintf(out + len, cap - len,
             "}, \"docs_per_insert\": %.2f, \"single_doc_inserts\": %.2f, \"insert_ms\": %.2f, "
             "\"update_ms\": %.2f, \"find_ms\": %.2f",
             rt_ratio(atomic_load(&rt.docs), ins), rt_ratio(atomic_load(&rt.singles), ins),
             rt_ratio(atomic_load(&rt.us[RT_T_INSERT]), atomic_load(&rt.timed[RT_T_INSERT])) / 1e3,
             rt_ratio(atomic_load(&rt.us[RT_T_UPDATE]), atomic_load(&rt.timed[RT_T_UPDATE])) / 1e3,
             rt_ratio(atomic_load(&rt.us[RT_T_FIND]), atomic_load(&rt.timed[RT_T_FIND])) / 1e3);
}

static void run_appender(void *arg) {
  appender_t *a = arg;
  char stream[32];
  snprintf(stream, sizeof stream, "w%d", a->id);
  mongoc_client_t *client = a->pool ? mongoc_client_pool_pop(a->pool) : NULL;
  mongoc_collection_t *coll = client ? mongoc_client_get_collection(client, a->db, "raw_commands") : NULL;
  for (long i = 0; i < a->commits; i++) {
    char cmd[72];
    snprintf(cmd, sizeof cmd, "%s-%ld", stream, i);
    uint64_t t0 = now_ns();
    if (a->s) {
      cqrs_envelope_t *env;
      cqrs_event_t *e;
      cqrs_envelope_new("account", stream, cmd, NULL, &env, NULL);
      billing_account_moved_t mv = {{1, "EUR"}, i + 1, ""};
      cqrs_event_new(&billing_account_deposited, env, NULL, i + 1, cqrs_now_ms(), &mv, &e, NULL);
      cqrs_envelope_unref(env);
      cqrs_append_t req = {"account", stream, i, cmd, &e, 1};
      cqrs_append_result_t res;
      cqrs_error_t err;
      if (cqrs_store_append(a->s, &req, &res, &err)) {
        fprintf(stderr, "append: %s\n", err.message);
        a->failures++;
      }
      cqrs_event_unref(e);
    } else {
      bson_t doc = BSON_INITIALIZER;
      int64_t seq = atomic_fetch_add(&raw_position, 1) + 1;
      commit_doc(&doc, seq, stream, i + 1, seq, cmd);
      bson_error_t e;
      if (!mongoc_collection_insert_one(coll, &doc, NULL, NULL, &e)) {
        fprintf(stderr, "raw insert: %s\n", e.message);
        a->failures++;
      }
      bson_destroy(&doc);
    }
    sample(&a->lat, now_ns() - t0);
  }
  if (coll) mongoc_collection_destroy(coll);
  if (client) mongoc_client_pool_push(a->pool, client);
}

static double run_appenders(appender_t *a, int n, samples_t *all) {
  uv_thread_t t[16];
  uint64_t t0 = now_ns();
  for (int i = 0; i < n; i++) uv_thread_create(&t[i], run_appender, &a[i]);
  for (int i = 0; i < n; i++) {
    uv_thread_join(&t[i]);
    for (size_t k = 0; k < a[i].lat.n; k++) sample(all, a[i].lat.v[k]);
    free(a[i].lat.v);
    if (a[i].failures) die("appender failed", NULL);
  }
  return (double)(now_ns() - t0) / 1e9;
}

static void bench_mongo_append(void) {
  long commits = n_arg ? n_arg : 2000;
  cqrs_registry_t *reg = NULL;
  cqrs_registry_new(&reg, NULL);
  billing_register(reg, NULL);
  cqrs_mongo_t *m = bench_mongo(reg, NULL, "append");
  const char *db = cqrs_mongo_database(m);
  cqrs_error_t err;
  /* The raw collection gets the same indexes, so the server does the same work. */
  static const char *const idx[][2] = {{"{\"timestamp\": 1}", "timestamp"},
                                      {"{\"type\": 1, \"timestamp\": 1}", "type_timestamp"},
                                      {"{\"events.type\": 1, \"events.timestamp\": 1}", "events_type_timestamp"},
                                      {"{\"aggregateType\": 1, \"aggregateId\": 1, \"version\": 1}", "stream_version"},
                                      {"{\"streamVersion\": 1}", "stream_version_key"},
                                      {"{\"commandId\": 1}", "command_id"},
                                      {"{\"position\": 1}", "position"}};
  for (int i = 0; i < 7; i++) {
    bson_error_t be;
    bson_t *keys = bson_new_from_json((const uint8_t *)idx[i][0], -1, &be);
    if (cqrs_mongo_ensure_index(m, "raw_commands", keys, idx[i][1], i >= 4, &err)) die("index", &err);
    bson_destroy(keys);
  }
  /* The store gets a connection of its own, watched from its first client. */
  cqrs_mongo_options_t o = billing_mongo_options;
  o.database = db;
  cqrs_mongo_t *ms;
  if (cqrs_mongo_new(mongo_uri, &o, reg, NULL, &ms, &err)) die("mongo", &err);
  rt_watch(ms->pool);
  cqrs_store_t *store = NULL;
  cqrs_mongo_store_new(ms, &store, NULL);
  mongoc_uri_t *uri = mongoc_uri_new(mongo_uri);
  mongoc_client_pool_t *pool = mongoc_client_pool_new(uri);
  rt_watch(pool);
  static const int writers[] = {1, 4, 16};
  double raw1_per_insert = 0;
  for (int w = 0; w < 3; w++) {
    int n = writers[w];
    appender_t fa[16], ra[16];
    for (int i = 0; i < n; i++) {
      fa[i] = (appender_t){store, NULL, db, w * 100 + i, commits / n, {0}, 0};
      ra[i] = (appender_t){NULL, pool, db, w * 100 + i, commits / n, {0}, 0};
    }
    samples_t raw_lat = {0}, fw_lat = {0};
    long done = (commits / n) * n;
    char name[48], extra[600], raw_rt[600] = "", fw_rt[600] = "";
    /* Alternate, so that neither side gets the warmer server. */
    rt_reset();
    double raw_s = run_appenders(ra, n, &raw_lat);
    rt_print(raw_rt, sizeof raw_rt, done);
    rt_reset();
    double fw_s = run_appenders(fa, n, &fw_lat);
    rt_print(fw_rt, sizeof fw_rt, done);
    if (w == 0) raw1_per_insert = raw_s / (double)done;
    snprintf(extra, sizeof extra, "\"writers\": %d, \"latency\": \"per insert\"%s", n, raw_rt);
    snprintf(name, sizeof name, "mongo-append-raw-%dw", n);
    report(name, (uint64_t)done, raw_s, &raw_lat, extra);
    /* ratio_to_raw: to raw inserts from as many threads; ratio_to_raw_1w: to
     * raw single inserts from one thread (seconds per insert of the 1-writer
     * run), the reading of issue 12's "16 writers >= 3 x raw single inserts". */
    snprintf(extra, sizeof extra,
             "\"writers\": %d, \"ratio_to_raw\": %.3f, \"ratio_to_raw_1w\": %.3f, \"latency\": \"per commit\"%s", n,
             raw_s / fw_s, (double)done / fw_s * raw1_per_insert, fw_rt);
    snprintf(name, sizeof name, "mongo-append-%dw", n);
    report(name, (uint64_t)done, fw_s, &fw_lat, extra);
  }
  mongoc_client_pool_destroy(pool);
  mongoc_uri_destroy(uri);
  cqrs_store_destroy(store);
  cqrs_mongo_destroy(ms);
  cqrs_mongo_drop_database(m, NULL);
  cqrs_mongo_destroy(m);
  cqrs_registry_destroy(reg);
}

/* ---- mongo-ops: each store operation at 1k, 50k and 500k commits ---- */

#define OPS_STREAM_LEN 10 /* commits per stream in the seeded store */
#define OPS_REPS 11
#define OPS_STEADY 50 /* steady appends measured at each size */

/* Appends commits (from, to] straight to the collection, in the store's own
 * format, one event each: the j-th commit seeded (j from `seeded`) is
 * version j % 10 + 1 of stream "s<j / 10>", so that every seeded stream
 * holds ten commits whatever else the store holds. */
static void ops_seed(mongoc_collection_t *commits, int64_t from, int64_t to, int64_t seeded) {
  enum { BATCH = 1000 };
  bson_t *docs[BATCH];
  for (int64_t k = from + 1; k <= to;) {
    size_t n = 0;
    for (; n < BATCH && k <= to; n++, k++) {
      char stream[32], cmd[48];
      int64_t j = seeded + (k - from - 1), version = j % OPS_STREAM_LEN + 1;
      snprintf(stream, sizeof stream, "s%lld", (long long)(j / OPS_STREAM_LEN));
      snprintf(cmd, sizeof cmd, "seed-%lld", (long long)k);
      docs[n] = bson_new();
      commit_doc(docs[n], k, stream, version, k, cmd);
    }
    bson_error_t e;
    if (!mongoc_collection_insert_many(commits, (const bson_t **)docs, n, NULL, NULL, &e)) {
      fprintf(stderr, "cqrs-bench: seed: %s\n", e.message);
      exit(1);
    }
    for (size_t i = 0; i < n; i++) bson_destroy(docs[i]);
  }
}

/* The store notes its head every 16 commits (infra/mongo/src/mongo_store.c,
 * HEAD_EVERY); seeded commits bypass it, so note it as it would have. */
static void ops_seed_head(mongoc_client_t *client, const char *db, int64_t to) {
  char name[160];
  snprintf(name, sizeof name, "%s_head", billing_mongo_options.events);
  mongoc_collection_t *c = mongoc_client_get_collection(client, db, name);
  bson_t *filter = BCON_NEW("_id", BCON_UTF8("head"));
  bson_t *doc = BCON_NEW("_id", BCON_UTF8("head"), "seq", BCON_INT64(to - to % 16));
  bson_t *opts = BCON_NEW("upsert", BCON_BOOL(true));
  mongoc_collection_replace_one(c, filter, doc, opts, NULL, NULL);
  bson_destroy(filter);
  bson_destroy(doc);
  bson_destroy(opts);
  mongoc_collection_destroy(c);
}

static bool ops_count(const cqrs_event_t *e, void *data) {
  (void)e;
  (*(size_t *)data)++;
  return true;
}

/* A fresh connection knows nothing of the store: what a process starting
 * on it pays. */
static cqrs_mongo_t *ops_connect(const cqrs_registry_t *reg, const char *db) {
  cqrs_mongo_options_t o = billing_mongo_options;
  o.database = db;
  cqrs_mongo_t *m;
  cqrs_error_t err;
  if (cqrs_mongo_new(mongo_uri, &o, reg, NULL, &m, &err)) die("mongo", &err);
  return m;
}

static void ops_report(const char *op, long size, samples_t *lat, uint64_t ops) {
  double total = 0;
  for (size_t i = 0; i < lat->n; i++) total += (double)lat->v[i] / 1e9;
  char name[64], extra[96];
  snprintf(name, sizeof name, "mongo-ops-%s-%ldk", op, size / 1000);
  snprintf(extra, sizeof extra, "\"stored_commits\": %ld, \"op\": \"%s\"", size, op);
  report(name, ops, total, lat, extra);
}

static void bench_mongo_ops(void) {
  static const long default_sizes[] = {1000, 50000, 500000};
  long sizes[3];
  size_t nsizes = 0;
  for (size_t i = 0; i < 3; i++) {
    if (n_arg && default_sizes[i] > n_arg) break;
    sizes[nsizes++] = default_sizes[i];
  }
  cqrs_registry_t *reg = NULL;
  cqrs_registry_new(&reg, NULL);
  billing_register(reg, NULL);
  cqrs_mongo_t *m = bench_mongo(reg, NULL, "ops");
  const char *db = cqrs_mongo_database(m);
  mongoc_client_t *client = mongoc_client_new(mongo_uri);
  mongoc_collection_t *commits = mongoc_client_get_collection(client, db, billing_mongo_options.events);
  int64_t stored = 0, seeded = 0;
  srand(42);
  for (size_t si = 0; si < nsizes; si++) {
    long size = sizes[si];
    uint64_t t0 = now_ns();
    /* The store holds `size` commits when measured: seeded ones, and those
     * the measures of the sizes before appended. */
    ops_seed(commits, stored, size, seeded);
    seeded += size - stored;
    cqrs_error_t err;
    ops_seed_head(client, db, size);
    fprintf(stderr, "cqrs-bench: seeded %ld commits in %.1f s\n", size, (double)(now_ns() - t0) / 1e9);
    stored = size;
    samples_t head = {0}, first = {0}, start_first = {0}, dup = {0}, load = {0}, feed = {0}, steady = {0};
    for (int r = 0; r < OPS_REPS; r++) {
      /* head and the first command of a process that has just started */
      cqrs_mongo_t *fresh = ops_connect(reg, db);
      cqrs_store_t *s = NULL;
      cqrs_mongo_store_new(fresh, &s, NULL);
      int64_t h;
      uint64_t t = now_ns();
      if (cqrs_store_head(s, &h, &err)) die("head", &err);
      sample(&head, now_ns() - t);
      if (h != stored) die("head is not the number of commits", NULL);
      cqrs_store_destroy(s);
      cqrs_mongo_destroy(fresh);
      /* A process starting: it connects and commits its first command,
       * which finds the head (as cqrs_dispatcher_new would first). */
      uint64_t start = now_ns();
      fresh = ops_connect(reg, db);
      cqrs_mongo_store_new(fresh, &s, NULL);
      char stream[32], cmd[48];
      snprintf(stream, sizeof stream, "new-%ld-%d", size, r);
      snprintf(cmd, sizeof cmd, "first-%ld-%d", size, r);
      cqrs_envelope_t *env;
      cqrs_event_t *e;
      cqrs_envelope_new("account", stream, cmd, NULL, &env, NULL);
      billing_account_moved_t mv = {{1, "EUR"}, 1, ""};
      cqrs_event_new(&billing_account_deposited, env, NULL, 1, cqrs_now_ms(), &mv, &e, NULL);
      cqrs_append_t req = {"account", stream, 0, cmd, &e, 1};
      cqrs_append_result_t res;
      t = now_ns();
      if (cqrs_store_append(s, &req, &res, &err)) die("first append", &err);
      sample(&first, now_ns() - t);
      sample(&start_first, now_ns() - start);
      stored++;
      /* the same command again: found by its id */
      t = now_ns();
      if (cqrs_store_append(s, &req, &res, &err)) die("repeated append", &err);
      sample(&dup, now_ns() - t);
      if (!res.duplicate) die("a repeated command was not a duplicate", NULL);
      cqrs_event_unref(e);
      cqrs_envelope_unref(env);
      /* a stream of 10 commits anywhere in the store */
      snprintf(stream, sizeof stream, "s%ld", (long)(rand() % (seeded / OPS_STREAM_LEN)));
      size_t n = 0;
      t = now_ns();
      if (cqrs_store_read_stream(s, "account", stream, 1, ops_count, &n, &err)) die("load", &err);
      sample(&load, now_ns() - t);
      if (n != OPS_STREAM_LEN) die("a stream did not load whole", NULL);
      /* 256 events of the feed from anywhere */
      int64_t from = 1 + rand() % (size - 256);
      n = 0;
      t = now_ns();
      if (cqrs_store_read_all(s, from, 256, ops_count, &n, &err)) die("feed", &err);
      sample(&feed, now_ns() - t);
      if (n != 256) die("the feed did not read 256 events", NULL);
      cqrs_store_destroy(s);
      cqrs_mongo_destroy(fresh);
    }
    /* Steady appends: a process that knows the head and the versions of
     * the streams it writes (its own commits), one commit at a time, two
     * to each new stream (versions 1 and 2). */
    cqrs_mongo_t *warm = ops_connect(reg, db);
    cqrs_store_t *ws = NULL;
    cqrs_mongo_store_new(warm, &ws, NULL);
    int64_t h;
    if (cqrs_store_head(ws, &h, &err)) die("head", &err);
    for (int i = 0; i < OPS_STEADY; i++) {
      char stream[32], cmd[48];
      snprintf(stream, sizeof stream, "steady-%ld-%d", size, i / 2);
      snprintf(cmd, sizeof cmd, "steady-%ld-%d", size, i);
      cqrs_envelope_t *env;
      cqrs_event_t *e;
      cqrs_envelope_new("account", stream, cmd, NULL, &env, NULL);
      billing_account_moved_t mv = {{1, "EUR"}, 1, ""};
      cqrs_event_new(&billing_account_deposited, env, NULL, i % 2 + 1, cqrs_now_ms(), &mv, &e, NULL);
      cqrs_append_t req = {"account", stream, i % 2, cmd, &e, 1};
      cqrs_append_result_t res;
      uint64_t t = now_ns();
      if (cqrs_store_append(ws, &req, &res, &err)) die("steady append", &err);
      sample(&steady, now_ns() - t);
      if (res.duplicate) die("a steady append was a duplicate", NULL);
      cqrs_event_unref(e);
      cqrs_envelope_unref(env);
      stored++;
    }
    cqrs_store_destroy(ws);
    cqrs_mongo_destroy(warm);
    ops_report("head", size, &head, OPS_REPS);
    ops_report("first-command", size, &first, OPS_REPS);
    ops_report("start-to-first-command", size, &start_first, OPS_REPS);
    ops_report("command-id", size, &dup, OPS_REPS);
    ops_report("stream-load", size, &load, OPS_REPS);
    ops_report("feed-256", size, &feed, OPS_REPS);
    ops_report("steady-append", size, &steady, OPS_STEADY);
  }
  mongoc_collection_destroy(commits);
  mongoc_client_destroy(client);
  cqrs_mongo_drop_database(m, NULL);
  cqrs_mongo_destroy(m);
  cqrs_registry_destroy(reg);
}

/* ---- query-mongo: a customer's invoices by status, 100,000 invoices ---- */

static void bench_query_mongo(void) {
  long invoices = n_arg ? n_arg : 100000, customers = 1000, queries = queries_arg ? queries_arg : 200;
  cqrs_registry_t *reg = NULL;
  cqrs_registry_new(&reg, NULL);
  billing_register(reg, NULL);
  cqrs_mongo_t *m = bench_mongo(reg, NULL, "query");
  const char *db = cqrs_mongo_database(m);
  cqrs_error_t err;
  /* Loading goes straight through the driver, in bulk: it is not measured. */
  uint64_t load0 = now_ns();
  mongoc_client_t *client = mongoc_client_new(mongo_uri);
  mongoc_collection_t *coll = mongoc_client_get_collection(client, db, "billing_queries");
  static const char *const statuses[] = {"pending", "paid", "cancelled"};
  for (long i = 0; i < invoices;) {
    mongoc_bulk_operation_t *bulk = mongoc_collection_create_bulk_operation_with_opts(coll, NULL);
    for (int k = 0; k < 1000 && i < invoices; k++, i++) {
      char id[32], num[32], cust[32];
      snprintf(id, sizeof id, "inv_%ld", i);
      snprintf(num, sizeof num, "INV-2026-%03ld", i + 1);
      snprintf(cust, sizeof cust, "cust_%ld", (i * 7919) % customers);
      bson_t *doc = BCON_NEW("_id", BCON_UTF8(id), "invoiceNumber", BCON_UTF8(num), "amount", BCON_INT64(1000 + i % 5000),
                             "currency", BCON_UTF8("EUR"), "customer", "{", "id", BCON_UTF8(cust), "name",
                             BCON_UTF8("Customer"), "email", BCON_UTF8("c@example.com"), "}", "status",
                             BCON_UTF8(statuses[i % 3]), "createdAt", BCON_DATE_TIME(1700000000000 + i * 1000),
                             "updatedAt", BCON_DATE_TIME(1700000000000 + i * 1000), "_position", BCON_INT64(i + 1));
      mongoc_bulk_operation_insert(bulk, doc);
      bson_destroy(doc);
    }
    bson_error_t be;
    if (!mongoc_bulk_operation_execute(bulk, NULL, &be)) {
      fprintf(stderr, "bulk: %s\n", be.message);
      exit(1);
    }
    mongoc_bulk_operation_destroy(bulk);
  }
  mongoc_collection_destroy(coll);
  mongoc_client_destroy(client);
  double load_s = (double)(now_ns() - load0) / 1e9;
  cqrs_readmodel_t *rm = NULL;
  cqrs_mongo_readmodel_new(m, &rm, NULL);
  cqrs_queries_t *q = NULL;
  cqrs_queries_new(rm, &q, NULL);
  billing_register_queries(q, NULL, NULL);
  samples_t lat = {0};
  uint64_t busy = 0;
  long found = 0;
  for (long i = 0; i < queries; i++) {
    bson_t params = BSON_INITIALIZER, out = BSON_INITIALIZER;
    char cust[32];
    snprintf(cust, sizeof cust, "cust_%ld", (i * 31) % customers);
    BSON_APPEND_UTF8(&params, "customerId", cust);
    BSON_APPEND_UTF8(&params, "status", statuses[i % 3]);
    BSON_APPEND_INT32(&params, "limit", 10);
    uint64_t t0 = now_ns();
    if (cqrs_queries_run(q, "invoice.by_customer", &params, &out, &err)) die("query", &err);
    uint64_t dt = now_ns() - t0;
    busy += dt;
    sample(&lat, dt);
    bson_iter_t it, arr;
    if (bson_iter_init_find(&it, &out, "invoices") && bson_iter_recurse(&it, &arr))
      while (bson_iter_next(&arr)) found++;
    bson_destroy(&params);
    bson_destroy(&out);
  }
  char extra[200];
  snprintf(extra, sizeof extra,
           "\"invoices\": %ld, \"customers\": %ld, \"results_per_query\": %.1f, \"load_seconds\": %.1f, "
           "\"latency\": \"per query\"",
           invoices, customers, (double)found / (double)queries, load_s);
  report("query-mongo", (uint64_t)queries, (double)busy / 1e9, &lat, extra);
  cqrs_queries_destroy(q);
  cqrs_readmodel_destroy(rm);
  cqrs_mongo_drop_database(m, NULL);
  cqrs_mongo_destroy(m);
  cqrs_registry_destroy(reg);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: cqrs-bench SCENARIO [--mongo URI] [--n N] [--batch B] [--queries Q] [--loops L]\n"
                    "       [--home P] [--metrics] [--senders S]\n");
    return 2;
  }
  for (int i = 2; i < argc; i++) {
    if (!strcmp(argv[i], "--mongo") && i + 1 < argc) mongo_uri = argv[++i];
    else if (!strcmp(argv[i], "--n") && i + 1 < argc) n_arg = atol(argv[++i]);
    else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch_arg = atol(argv[++i]);
    else if (!strcmp(argv[i], "--queries") && i + 1 < argc) queries_arg = atol(argv[++i]);
    else if (!strcmp(argv[i], "--metrics")) metrics_arg = true;
    else if (!strcmp(argv[i], "--loops") && i + 1 < argc) loops_arg = (unsigned)atol(argv[++i]);
    else if (!strcmp(argv[i], "--home") && i + 1 < argc) home_arg = (unsigned)atol(argv[++i]);
    else if (!strcmp(argv[i], "--senders") && i + 1 < argc) senders_arg = (unsigned)atol(argv[++i]);
  }
  if (!mongo_uri) mongo_uri = getenv("MONGODB_URI");
  const char *s = argv[1];
  if (!strcmp(s, "dispatch")) bench_dispatch();
  else if (!strcmp(s, "pipeline")) bench_pipeline();
  else if (!strcmp(s, "pipeline-2threads")) bench_pipeline_threads();
  else if (!strcmp(s, "rehydrate")) bench_rehydrate();
  else if (!strcmp(s, "memory-overhead")) bench_memory_overhead();
  else if (!strcmp(s, "personal")) bench_personal();
  else if (!strcmp(s, "projection-lag")) bench_projection_lag(false);
  else if (!strcmp(s, "projection-lag-mongo") && mongo_uri) bench_projection_lag(true);
  else if (!strcmp(s, "mongo-append") && mongo_uri) bench_mongo_append();
  else if (!strcmp(s, "query-mongo") && mongo_uri) bench_query_mongo();
  else if (!strcmp(s, "mongo-ops") && mongo_uri) bench_mongo_ops();
  else if (!strcmp(s, "invoice-issue")) bench_invoice_issue(false);
  else if (!strcmp(s, "invoice-issue-mongo") && mongo_uri) bench_invoice_issue(true);
  else {
    fprintf(stderr, "cqrs-bench: unknown scenario '%s', or no MongoDB URI for it\n", s);
    return 2;
  }
  return 0;
}
