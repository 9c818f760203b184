/* status: the seed's dashboard. Processes register their /metrics endpoint
 * in cqrs_instances ({_id: "host:pid", endpoint, app, startedAt,
 * heartbeatAt}, the heartbeat refreshed every 5 s); this scrapes each one
 * twice (libcurl), reads the Prometheus text and shows commands/s,
 * queries/s, sync lag, error rate and read/write latency, each against the
 * seed's target. A heartbeat older than 15 s marks the process stale.
 *
 * The sync lag is also read from the store: each projection's checkpoint
 * against the head, the events of its types past it (the commits that hold
 * them, read without their payloads) and the age of the oldest, whether or
 * not a process runs it. A figure nobody measured is
 * unknown (null in --json), and unknown is never "ok". */
#include <curl/curl.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "admin.h"
#include "billing_mongo.h"
#include "prom.h"

#define INSTANCES "cqrs_instances"
#define STALE_MS 15000
#define MAX_INSTANCES 64

static const char usage[] =
    "usage: billing-admin status [--watch] [--interval SECONDS] [--count N] [--json]\n"
    "The dashboard of every process registered in cqrs_instances: commands/s (sent by clients; the\n"
    "process managers' steps apart), queries/s, sync lag, error rate, write and read latency (p99),\n"
    "each against the seed's targets (write < 100 ms, read < 50 ms, > 10k ops/s, lag < 1 s, errors\n"
    "< 0.1 %). The sync lag is the larger of what the processes report and what the store says: each\n"
    "projection's checkpoint against the head, the events it has still to handle and the age of the\n"
    "oldest. Rates are taken between two scrapes INTERVAL apart (default 1). A figure nobody measured\n"
    "is unknown, which meets no target. --watch redraws every INTERVAL until interrupted (or N times\n"
    "with --count). Exit: 0 all targets met, 1 a target missed or unknown, a process stale or\n"
    "unreachable or none registered, 3 server error.\n";

typedef struct instance {
  char id[128], endpoint[256], app[64];
  int64_t heartbeat;
  bool stale, reachable;
  char error[256];
  prom_doc_t before, now;
  double seconds; /* between the scrapes */
} instance_t;

/* NAN: unknown. */
typedef struct figures {
  double cmds, steps, queries, lag, errors, ops, write_p99, read_p99;
} figures_t;

#define UNKNOWN NAN

typedef struct buffer {
  char *data;
  size_t len;
} buffer_t;

static size_t on_data(char *p, size_t size, size_t n, void *data) {
  buffer_t *b = data;
  size_t add = size * n;
  if (b->len + add > (16u << 20)) return 0; /* no endpoint has 16 MB of metrics */
  char *d = realloc(b->data, b->len + add + 1);
  if (!d) return 0;
  memcpy(d + b->len, p, add);
  b->data = d;
  b->len += add;
  d[b->len] = '\0';
  return add;
}

static bool scrape(instance_t *in, prom_doc_t *out) {
  CURL *c = curl_easy_init();
  if (!c) {
    snprintf(in->error, sizeof in->error, "cannot start libcurl");
    return false;
  }
  buffer_t b = {NULL, 0};
  char cerr[CURL_ERROR_SIZE] = "";
  curl_easy_setopt(c, CURLOPT_URL, in->endpoint);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 2000L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 1000L);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  CURLcode rc = curl_easy_perform(c);
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(c);
  bool ok = false;
  if (rc != CURLE_OK) {
    snprintf(in->error, sizeof in->error, "%s", cerr[0] ? cerr : curl_easy_strerror(rc));
  } else if (status != 200) {
    snprintf(in->error, sizeof in->error, "HTTP status %ld", status);
  } else {
    char perr[128];
    prom_free(out);
    ok = prom_parse(b.data ? b.data : "", out, perr, sizeof perr);
    if (!ok) snprintf(in->error, sizeof in->error, "not Prometheus text: %s", perr);
  }
  free(b.data);
  return ok;
}

static int load_instances(admin_t *a, instance_t *ins, size_t *n) {
  mongoc_collection_t *c = mongoc_database_get_collection(a->db, INSTANCES);
  bson_t all = BSON_INITIALIZER;
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, &all, NULL, NULL);
  const bson_t *doc;
  int64_t now = cqrs_now_ms();
  *n = 0;
  while (*n < MAX_INSTANCES && mongoc_cursor_next(cur, &doc)) {
    instance_t *in = &ins[(*n)++];
    memset(in, 0, sizeof *in);
    admin_doc_id(doc, in->id, sizeof in->id);
    const char *ep = admin_str(doc, "endpoint"), *app = admin_str(doc, "app");
    snprintf(in->endpoint, sizeof in->endpoint, "%s", ep ? ep : "");
    snprintf(in->app, sizeof in->app, "%s", app ? app : "");
    in->heartbeat = admin_int64(doc, "heartbeatAt", 0);
    in->stale = now - in->heartbeat > STALE_MS;
  }
  bson_error_t e;
  int rc = mongoc_cursor_error(cur, &e) ? admin_server_error("read cqrs_instances", &e) : ADMIN_OK;
  mongoc_cursor_destroy(cur);
  bson_destroy(&all);
  mongoc_collection_destroy(c);
  return rc;
}

static double delta(const instance_t *in, const char *name, const char *key, const char *value) {
  return prom_sum(&in->now, name, key, value, NULL) - prom_sum(&in->before, name, key, value, NULL);
}

/* Commands only the billing process managers send (their steps), not the
 * clients: the steps account.withdraw and account.deposit are the clients'
 * commands too, and are counted as theirs (the metrics do not say who sent
 * a command). */
static const char *const step_types[] = {"invoice.record", "transfer.complete", "transfer.fail", "transfer.refund",
                                         "account.refund", NULL};

static double steps_delta(const instance_t *in) {
  double sum = 0;
  for (size_t i = 0; step_types[i]; i++) sum += delta(in, "cqrs_commands_total", "type", step_types[i]);
  return sum;
}

static double quantile_or_unknown(const instance_t *in, const char *base) {
  /* Latency of what happened between the scrapes; since the start when nothing did. */
  double q = prom_quantile(&in->now, &in->before, base, 0.99);
  if (q < 0) q = prom_quantile(&in->now, NULL, base, 0.99);
  return q < 0 ? UNKNOWN : q;
}

static void compute(const instance_t *in, figures_t *f) {
  double s = in->seconds > 0 ? in->seconds : 1;
  double all = delta(in, "cqrs_commands_total", NULL, NULL), qs = delta(in, "cqrs_queries_total", NULL, NULL);
  double steps = steps_delta(in);
  double errs = delta(in, "cqrs_commands_total", "outcome", "error") + delta(in, "cqrs_queries_total", "outcome", "error");
  f->cmds = (all - steps) / s;
  f->steps = steps / s;
  f->queries = qs / s;
  f->ops = f->cmds + f->queries;
  f->errors = all + qs > 0 ? 100.0 * errs / (all + qs) : UNKNOWN; /* no operation, no rate */
  bool found;
  prom_sum(&in->now, "cqrs_projection_lag_seconds", NULL, NULL, &found);
  f->lag = found ? prom_max(&in->now, "cqrs_projection_lag_seconds") : UNKNOWN;
  f->write_p99 = quantile_or_unknown(in, "cqrs_command_duration_seconds");
  f->read_p99 = quantile_or_unknown(in, "cqrs_query_duration_seconds");
}

/* Whether the figures meet the seed's targets: every one known and within. */
static bool meets(const figures_t *f) {
  return f->ops > 10000 && f->lag < 1.0 && f->errors < 0.1 && f->write_p99 < 0.100 && f->read_p99 < 0.050;
}

static const char *mark(double v, bool ok) { return isnan(v) ? "unknown" : ok ? "ok" : "MISSED"; }

static void fmt_ms(char *buf, size_t cap, double secs) {
  if (isnan(secs)) snprintf(buf, cap, "unknown");
  else snprintf(buf, cap, "%.1f ms", secs * 1000);
}

static void fmt_num(char *buf, size_t cap, const char *fmt, double v) {
  if (isnan(v)) snprintf(buf, cap, "unknown");
  else snprintf(buf, cap, fmt, v);
}

static void append_figure(bson_t *d, const char *key, double v) {
  if (isnan(v)) BSON_APPEND_NULL(d, key);
  else BSON_APPEND_DOUBLE(d, key, v);
}

static void figures_json(bson_t *out, const char *key, const figures_t *f) {
  bson_t d;
  BSON_APPEND_DOCUMENT_BEGIN(out, key, &d);
  append_figure(&d, "commandsPerSecond", f->cmds);
  append_figure(&d, "processStepsPerSecond", f->steps);
  append_figure(&d, "queriesPerSecond", f->queries);
  append_figure(&d, "opsPerSecond", f->ops);
  append_figure(&d, "syncLagSeconds", f->lag);
  append_figure(&d, "errorRatePercent", f->errors);
  append_figure(&d, "writeP99Seconds", f->write_p99);
  append_figure(&d, "readP99Seconds", f->read_p99);
  BSON_APPEND_BOOL(&d, "targetsMet", meets(f));
  bson_append_document_end(out, &d);
}

static void store_lags_json(bson_t *out, const admin_store_lag_t *lags, size_t n) {
  bson_t arr;
  BSON_APPEND_ARRAY_BEGIN(out, "projections", &arr);
  for (size_t i = 0; i < n; i++) {
    char key[16];
    const char *k;
    bson_t d;
    bson_uint32_to_string((uint32_t)i, &k, key, sizeof key);
    bson_append_document_begin(&arr, k, -1, &d);
    BSON_APPEND_UTF8(&d, "name", lags[i].name);
    BSON_APPEND_INT64(&d, "checkpoint", lags[i].checkpoint);
    BSON_APPEND_INT64(&d, "head", lags[i].head);
    BSON_APPEND_INT64(&d, "behindEvents", lags[i].behind);
    BSON_APPEND_BOOL(&d, "behindAtLeast", lags[i].at_least);
    BSON_APPEND_DOUBLE(&d, "lagSeconds", lags[i].lag_s);
    bson_append_document_end(&arr, &d);
  }
  bson_append_array_end(out, &arr);
}

static void store_lags_text(const admin_store_lag_t *lags, size_t n) {
  printf("\n%-24s %12s %12s  %s\n", "projection (the store)", "checkpoint", "head", "to handle");
  for (size_t i = 0; i < n; i++) {
    const admin_store_lag_t *l = &lags[i];
    printf("%-24s %12lld %12lld  ", l->name, (long long)l->checkpoint, (long long)l->head);
    if (l->behind)
      printf("%s%lld events behind, the oldest %.1f s old\n", l->at_least ? "at least " : "", (long long)l->behind,
             l->lag_s);
    else
      printf("caught up\n");
  }
}

/* Adds one process's figures to the total (unknown stays unknown until
 * some process knows it). */
static void add_up(figures_t *t, const figures_t *f, double *weighted_errors, double *ops_count) {
  t->cmds = isnan(t->cmds) ? f->cmds : t->cmds + f->cmds;
  t->steps = isnan(t->steps) ? f->steps : t->steps + f->steps;
  t->queries = isnan(t->queries) ? f->queries : t->queries + f->queries;
  t->ops = isnan(t->ops) ? f->ops : t->ops + f->ops;
  if (!isnan(f->lag) && (isnan(t->lag) || f->lag > t->lag)) t->lag = f->lag;
  if (!isnan(f->errors)) {
    *weighted_errors += f->errors * f->ops;
    *ops_count += f->ops;
  }
  if (!isnan(f->write_p99) && (isnan(t->write_p99) || f->write_p99 > t->write_p99)) t->write_p99 = f->write_p99;
  if (!isnan(f->read_p99) && (isnan(t->read_p99) || f->read_p99 > t->read_p99)) t->read_p99 = f->read_p99;
}

static void instance_line(const instance_t *in, const figures_t *f) {
  char w[32], r[32], lag[32], err[32];
  fmt_ms(w, sizeof w, f->write_p99);
  fmt_ms(r, sizeof r, f->read_p99);
  fmt_num(lag, sizeof lag, "%.3fs", f->lag);
  fmt_num(err, sizeof err, "%.3f%%", f->errors);
  printf("%-24s %-34s %9.1f %9.1f %9s %8s %10s %10s\n", in->id, in->endpoint, f->cmds, f->queries, lag, err, w, r);
}

static void targets_text(const figures_t *t, size_t n, int problems) {
  char w[32], r[32], lag[32], err[32], ops[32];
  fmt_ms(w, sizeof w, t->write_p99);
  fmt_ms(r, sizeof r, t->read_p99);
  fmt_num(lag, sizeof lag, "%.3fs", t->lag);
  fmt_num(err, sizeof err, "%.3f%%", t->errors);
  fmt_num(ops, sizeof ops, "%.1f ops/s", t->ops);
  if (!n) printf("(no process registered in %s)\n", INSTANCES);
  printf("\ntargets (the seed's):\n");
  printf("  throughput   %16s   > 10000 ops/s   %s\n", ops, mark(t->ops, t->ops > 10000));
  printf("  write p99    %13s   < 100 ms        %s\n", w, mark(t->write_p99, t->write_p99 < 0.100));
  printf("  read p99     %13s   < 50 ms         %s\n", r, mark(t->read_p99, t->read_p99 < 0.050));
  printf("  sync lag     %13s   < 1 s           %s\n", lag, mark(t->lag, t->lag < 1.0));
  printf("  error rate   %13s   < 0.1 %%         %s\n", err, mark(t->errors, t->errors < 0.1));
  printf("%s\n", problems ? "problems found" : "all targets met");
}

static int render(admin_t *a, instance_t *ins, size_t n, double interval, bool watch, const admin_store_lag_t *lags,
                  size_t nlags) {
  figures_t total = {UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN};
  double weighted_errors = 0, ops_count = 0;
  int problems = n ? 0 : 1;
  bson_t out = BSON_INITIALIZER, list;
  BSON_APPEND_ARRAY_BEGIN(&out, "instances", &list);
  time_t t = time(NULL);
  struct tm tm;
  char when[32];
  gmtime_r(&t, &tm);
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (!a->json) {
    if (watch) printf("\033[H\033[2J");
    printf("billing status, %s, rates over %.1f s\n\n", when, interval);
    printf("%-24s %-34s %9s %9s %9s %8s %10s %10s\n", "instance", "endpoint", "cmd/s", "query/s", "sync lag",
           "errors", "write p99", "read p99");
  }
  for (size_t i = 0; i < n; i++) {
    instance_t *in = &ins[i];
    bson_t item;
    char key[16];
    const char *k;
    bson_uint32_to_string((uint32_t)i, &k, key, sizeof key);
    bson_append_document_begin(&list, k, -1, &item);
    BSON_APPEND_UTF8(&item, "id", in->id);
    BSON_APPEND_UTF8(&item, "endpoint", in->endpoint);
    BSON_APPEND_BOOL(&item, "stale", in->stale);
    BSON_APPEND_BOOL(&item, "reachable", in->reachable);
    if (in->stale || !in->reachable) {
      problems++;
      char why[300];
      if (in->stale) snprintf(why, sizeof why, "stale: last heartbeat %lld s ago", (long long)((cqrs_now_ms() - in->heartbeat) / 1000));
      else snprintf(why, sizeof why, "unreachable: %s", in->error);
      BSON_APPEND_UTF8(&item, "problem", why);
      if (!a->json) printf("%-24s %-34s %s\n", in->id, in->endpoint, why);
    } else {
      figures_t f;
      compute(in, &f);
      figures_json(&item, "figures", &f);
      if (!meets(&f)) problems++;
      if (!a->json) instance_line(in, &f);
      add_up(&total, &f, &weighted_errors, &ops_count);
    }
    bson_append_document_end(&list, &item);
  }
  bson_append_array_end(&out, &list);
  total.errors = ops_count > 0 ? weighted_errors / ops_count : UNKNOWN;
  /* The store's word on lag stands whether or not a process answered. */
  for (size_t i = 0; i < nlags; i++) {
    if (isnan(total.lag) || lags[i].lag_s > total.lag) total.lag = lags[i].lag_s;
    if (lags[i].behind && lags[i].lag_s >= 1.0) problems++;
  }
  if (!meets(&total)) problems += !problems;
  if (a->json) {
    BSON_APPEND_UTF8(&out, "at", when);
    store_lags_json(&out, lags, nlags);
    figures_json(&out, "total", &total);
    BSON_APPEND_INT32(&out, "problems", problems);
    admin_print_json(stdout, &out);
  } else {
    store_lags_text(lags, nlags);
    targets_text(&total, n, problems);
  }
  bson_destroy(&out);
  fflush(stdout);
  return problems ? ADMIN_PROBLEMS : ADMIN_OK;
}

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

int admin_status(admin_t *a, int argc, char **argv) {
  static const char *const specs[] = {"watch", "interval=", "count=", NULL};
  admin_args_t args;
  int rc = admin_parse(a, argc, argv, specs, usage, 0, 0, &args);
  if (rc) return rc < 0 ? ADMIN_OK : rc;
  long long interval = 1, count = args.vals[0] ? 0 : 1;
  if ((args.vals[1] && admin_int("--interval", args.vals[1], 1, 3600, &interval)) ||
      (args.vals[2] && admin_int("--count", args.vals[2], 1, INT32_MAX, &count)))
    return ADMIN_USAGE;
  if ((rc = admin_connect(a, NULL))) return rc;
  if (curl_global_init(CURL_GLOBAL_DEFAULT)) {
    admin_err("cannot initialise libcurl");
    return ADMIN_SERVER;
  }
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  instance_t *ins = calloc(MAX_INSTANCES, sizeof *ins);
  if (!ins) return ADMIN_SERVER;
  size_t n = 0;
  int64_t t0 = 0;
  for (long long round = 0; !stop && (!count || round < count); round++) {
    /* Each round: the registry again (processes come and go), a first
     * scrape (or the previous round's), the interval, a second scrape. */
    size_t old_n = n;
    instance_t *old = NULL;
    if (round) {
      old = malloc(old_n * sizeof *old + 1);
      if (old) memcpy(old, ins, old_n * sizeof *old);
    }
    rc = load_instances(a, ins, &n);
    for (size_t i = 0; !rc && i < n; i++) {
      for (size_t j = 0; old && j < old_n; j++) {
        if (!strcmp(old[j].id, ins[i].id) && old[j].reachable) {
          ins[i].before = old[j].now; /* taken over */
          old[j].now = (prom_doc_t){NULL, 0, 0};
          ins[i].reachable = true;
        }
      }
      if (!ins[i].stale && !ins[i].reachable) ins[i].reachable = scrape(&ins[i], &ins[i].before);
    }
    for (size_t j = 0; old && j < old_n; j++) {
      prom_free(&old[j].before);
      prom_free(&old[j].now);
    }
    free(old);
    if (rc) break;
    if (!round) t0 = cqrs_now_ms();
    for (int64_t waited = 0; !stop && waited < interval * 1000; waited += 100) uv_sleep(100);
    int64_t t1 = cqrs_now_ms();
    for (size_t i = 0; i < n; i++) {
      if (ins[i].stale || !ins[i].reachable) continue;
      ins[i].reachable = scrape(&ins[i], &ins[i].now);
      ins[i].seconds = (double)(t1 - t0) / 1000.0;
    }
    t0 = t1;
    admin_store_lag_t lags[4];
    size_t nlags = 0;
    while (admin_projections[nlags].name) nlags++;
    rc = admin_store_lags(a, lags);
    if (!rc) rc = render(a, ins, n, (double)interval, args.vals[0] != NULL, lags, nlags);
  }
  for (size_t i = 0; i < n; i++) {
    prom_free(&ins[i].before);
    prom_free(&ins[i].now);
  }
  free(ins);
  curl_global_cleanup();
  return rc;
}
