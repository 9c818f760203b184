/* cqrs-loadrun: the seed's success metrics measured on MongoDB. Seeds
 * customers, accounts and invoices, then drives the billing context at a
 * fixed rate (open loop: operations are started on schedule whether or not
 * earlier ones have finished) with the seed's mix, 95 % reads through the
 * billing queries and 5 % writes through commands, for a chosen duration.
 * Reports read and write latency percentiles, achieved ops/s, sync lag
 * (projection lag in seconds, sampled from the metrics every 50 ms) and the
 * error rate against the seed's thresholds. See docs/benchmarks.md. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sample.h"

#define TICK_MS 1
#define LAG_SAMPLE_MS 50
#define MAX_IN_FLIGHT 2048

/* The seed's targets. */
#define READ_MS 50.0
#define WRITE_MS 100.0
#define OPS_PER_S 10000.0
#define LAG_S 1.0
#define ERROR_RATE 0.001

typedef struct lat {
  uint64_t *v;
  size_t n, cap;
} lat_t;

typedef struct run {
  sample_t s;
  long rate, duration_s, customers, invoices_per_customer, write_percent;
  bool check, json;
  uint64_t rng;
  uint64_t t0, end;
  uint64_t started, issued, in_flight, skipped;
  uint64_t reads, writes, read_errors, write_errors, rejections;
  uint64_t from_legacy, from_cqs, not_found; /* invoice.read, through mongodb_cqs_enabled */
  lat_t read_lat, write_lat, lag_ms;
  double max_lag_s;
  int64_t max_lag_positions;
  /* Seeded invoices still pending, paid at most once each. */
  char (*pending)[CQRS_ID_MAX];
  int64_t *pending_amount;
  size_t npending;
  uint64_t next_invoice;
  uv_timer_t tick, lag_timer;
  bool seeding;
  uint64_t seed_done, seed_failed;
} run_t;

static void lat_add(lat_t *l, uint64_t v) {
  if (l->n == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 65536;
    uint64_t *p = realloc(l->v, l->cap * sizeof *p);
    if (!p) return;
    l->v = p;
  }
  l->v[l->n++] = v;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* Percentile p of l, sorted in place, in the unit stored. */
static double pct(lat_t *l, double p) {
  if (!l->n) return 0;
  qsort(l->v, l->n, sizeof *l->v, cmp_u64);
  return (double)l->v[(size_t)(p * (double)(l->n - 1) + 0.5)];
}

static uint64_t rnd(run_t *r) {
  r->rng ^= r->rng << 13;
  r->rng ^= r->rng >> 7;
  r->rng ^= r->rng << 17;
  return r->rng;
}

static void customer_id(char *buf, size_t cap, long i) { snprintf(buf, cap, "lr-c%ld", i); }
static void account_id(char *buf, size_t cap, long i) { snprintf(buf, cap, "lr-a%ld", i); }

/* ---- operations ---- */

typedef struct op {
  run_t *r;
  uint64_t started;
  bool write;
} op_t;

static op_t *op_new(run_t *r, bool write) {
  op_t *o = malloc(sizeof *o);
  if (!o) return NULL;
  o->r = r;
  o->started = uv_hrtime();
  o->write = write;
  r->in_flight++;
  return o;
}

static void op_end(op_t *o, bool failed, bool rejected) {
  run_t *r = o->r;
  uint64_t us = (uv_hrtime() - o->started) / 1000;
  r->in_flight--;
  if (r->seeding) {
    r->seed_done++;
    if (failed) r->seed_failed++;
  } else if (o->write) {
    r->writes++;
    if (failed) r->write_errors++;
    if (rejected) r->rejections++;
    lat_add(&r->write_lat, us);
  } else {
    r->reads++;
    if (failed) r->read_errors++;
    lat_add(&r->read_lat, us);
  }
  free(o);
}

static void command_done(const cqrs_result_t *res, void *data) {
  static int shown;
  if (res->error.code != CQRS_OK && res->error.code != CQRS_EREJECTED && shown++ < 5)
    fprintf(stderr, "loadrun: command failed: %s\n", res->error.message);
  op_end(data, res->error.code != CQRS_OK && res->error.code != CQRS_EREJECTED, res->error.code == CQRS_EREJECTED);
}

static void send_cmd(run_t *r, const cqrs_command_type_t *type, const void *payload) {
  op_t *o = op_new(r, true);
  cqrs_command_t *cmd;
  if (!o) return;
  if (cqrs_command_new(type, payload, &cmd, NULL) || cqrs_dispatcher_send(r->s.d, cmd, command_done, o)) {
    op_end(o, true, false);
  }
}

static void query_done(cqrs_code_t code, const bson_t *answer, const cqrs_error_t *err, void *data) {
  (void)err;
  op_t *o = data;
  bson_iter_t it;
  if (code == CQRS_ENOT_FOUND) o->r->not_found++;
  if (code == CQRS_OK && answer && bson_iter_init_find(&it, answer, "source") && BSON_ITER_HOLDS_UTF8(&it)) {
    if (!strcmp(bson_iter_utf8(&it, NULL), "cqs")) o->r->from_cqs++;
    else o->r->from_legacy++;
  }
  op_end(o, code != CQRS_OK && code != CQRS_ENOT_FOUND, false);
}

static void query(run_t *r, const char *name, const bson_t *params) {
  op_t *o = op_new(r, false);
  if (o && cqrs_query_bus_send(r->s.q, &r->s.loop, name, params, query_done, o)) op_end(o, true, false);
}

/* Reads: a customer's pending invoices (the seed's main read), an invoice by
 * id, an account's balance. */
static void read_op(run_t *r) {
  uint64_t x = rnd(r);
  long c = (long)(x % (uint64_t)r->customers);
  char id[CQRS_ID_MAX];
  bson_t p = BSON_INITIALIZER;
  switch ((x >> 32) % 10) {
    case 0: case 1: case 2: case 3: case 4: {
      customer_id(id, sizeof id, c);
      BSON_APPEND_UTF8(&p, "customerId", id);
      BSON_APPEND_UTF8(&p, "status", "pending");
      BSON_APPEND_INT32(&p, "limit", 10);
      query(r, "invoice.by_customer", &p);
      break;
    }
    case 5: case 6: case 7:
      /* As the application reads an invoice: through the seed's flag. */
      snprintf(id, sizeof id, "lr-i%ld-%ld", c, (long)((x >> 40) % (uint64_t)r->invoices_per_customer));
      BSON_APPEND_UTF8(&p, "id", id);
      query(r, "invoice.read", &p);
      break;
    default:
      account_id(id, sizeof id, c);
      BSON_APPEND_UTF8(&p, "accountId", id);
      query(r, "account.balance", &p);
  }
  bson_destroy(&p);
}

static void issue(run_t *r, long customer, const char *invoice_id, int64_t cents) {
  billing_issue_invoice_t c;
  memset(&c, 0, sizeof c);
  snprintf(c.invoice_id, sizeof c.invoice_id, "%s", invoice_id);
  customer_id(c.customer_id, sizeof c.customer_id, customer);
  c.amount = sample_eur(cents);
  c.due_date = cqrs_now_ms() + 30LL * 24 * 3600 * 1000;
  send_cmd(r, &billing_issue_invoice, &c);
}

/* Writes: deposits, new invoices, payments of the seeded ones. */
static void write_op(run_t *r) {
  uint64_t x = rnd(r);
  long c = (long)(x % (uint64_t)r->customers);
  unsigned kind = (unsigned)((x >> 32) % 10);
  if (kind >= 7 && r->npending) {
    size_t i = (size_t)((x >> 40) % r->npending);
    billing_pay_invoice_t p;
    memset(&p, 0, sizeof p);
    snprintf(p.invoice_id, sizeof p.invoice_id, "%s", r->pending[i]);
    p.amount = sample_eur(r->pending_amount[i]);
    r->npending--;
    memcpy(r->pending[i], r->pending[r->npending], sizeof r->pending[i]);
    r->pending_amount[i] = r->pending_amount[r->npending];
    send_cmd(r, &billing_pay_invoice, &p);
  } else if (kind >= 4) {
    char id[CQRS_ID_MAX];
    snprintf(id, sizeof id, "lr-n%" PRIu64, r->next_invoice++);
    issue(r, c, id, 1000 + (int64_t)(x % 90000));
  } else {
    billing_move_t m;
    memset(&m, 0, sizeof m);
    account_id(m.account_id, sizeof m.account_id, c);
    m.amount = sample_eur(100 + (int64_t)(x % 10000));
    send_cmd(r, &billing_deposit, &m);
  }
}

/* Starts what the schedule says should have started by now. */
static void tick(uv_timer_t *t) {
  run_t *r = t->data;
  uint64_t now = uv_hrtime();
  if (now >= r->end) {
    uv_timer_stop(t);
    return;
  }
  uint64_t due = (uint64_t)((double)(now - r->t0) / 1e9 * (double)r->rate);
  while (r->started < due) {
    r->started++;
    if (r->in_flight >= MAX_IN_FLIGHT) {
      r->skipped++; /* the system is not keeping up: the op is lost, and counted */
      continue;
    }
    if ((long)(rnd(r) % 100) < r->write_percent) {
      write_op(r);
    } else {
      read_op(r);
    }
  }
}

/* Worst projection lag now, from the metrics an operator would scrape. */
static double lag_now(run_t *r, int64_t *positions) {
  cqrs_metrics_snapshot_t *snap;
  *positions = 0;
  if (cqrs_metrics_snapshot(r->s.metrics, &snap, NULL)) return 0;
  double worst = 0;
  for (size_t i = 0; i < cqrs_metrics_snapshot_count(snap); i++) {
    const cqrs_metric_t *m = cqrs_metrics_snapshot_get(snap, i);
    if (!strcmp(m->name, "cqrs_projection_lag_seconds") && m->value > worst) worst = m->value;
    if (!strcmp(m->name, "cqrs_projection_lag_positions") && m->value > (double)*positions)
      *positions = (int64_t)m->value;
  }
  cqrs_metrics_snapshot_destroy(snap);
  return worst;
}

static void lag_sample(uv_timer_t *t) {
  run_t *r = t->data;
  int64_t positions;
  double s = lag_now(r, &positions);
  if (r->seeding) return;
  lat_add(&r->lag_ms, (uint64_t)(s * 1000.0));
  if (s > r->max_lag_s) r->max_lag_s = s;
  if (positions > r->max_lag_positions) r->max_lag_positions = positions;
  if (uv_hrtime() >= r->end) uv_timer_stop(t);
}

/* ---- seeding ---- */

static void nap(uv_timer_t *t) { (void)t; }

/* Runs until every operation has completed and every projection has caught
 * up (or 120 s have passed: then says so). */
static void wait_quiet(run_t *r) {
  int64_t positions = 1;
  uint64_t give_up = uv_hrtime() + 120000000000u;
  uv_timer_t t;
  uv_timer_init(&r->s.loop, &t);
  while ((r->in_flight || positions) && uv_hrtime() < give_up) {
    uv_timer_start(&t, nap, 5, 0); /* wakes the loop while projections work on the pool */
    uv_run(&r->s.loop, UV_RUN_ONCE);
    if (!r->in_flight) lag_now(r, &positions);
  }
  if (positions) fprintf(stderr, "loadrun: projections still %" PRId64 " events behind after 120 s\n", positions);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&r->s.loop, UV_RUN_NOWAIT);
}

static void seed_window(run_t *r, uint64_t window) {
  while (r->in_flight >= window) uv_run(&r->s.loop, UV_RUN_ONCE);
}

static int seed(run_t *r) {
  r->seeding = true;
  uint64_t t0 = uv_hrtime();
  for (long c = 0; c < r->customers; c++) {
    billing_register_customer_t rc;
    memset(&rc, 0, sizeof rc);
    customer_id(rc.customer_id, sizeof rc.customer_id, c);
    snprintf(rc.name, sizeof rc.name, "Customer %ld", c);
    snprintf(rc.email, sizeof rc.email, "billing@c%ld.example", c);
    send_cmd(r, &billing_register_customer, &rc);
    billing_open_account_t oa;
    memset(&oa, 0, sizeof oa);
    account_id(oa.account_id, sizeof oa.account_id, c);
    snprintf(oa.owner, sizeof oa.owner, "Customer %ld", c);
    memcpy(oa.currency, "EUR", 4);
    send_cmd(r, &billing_open_account, &oa);
    seed_window(r, 256);
  }
  wait_quiet(r); /* customers exist before their invoices */
  size_t n = (size_t)(r->customers * r->invoices_per_customer);
  r->pending = calloc(n, sizeof *r->pending);
  r->pending_amount = calloc(n, sizeof *r->pending_amount);
  if (!r->pending || !r->pending_amount) return 3;
  for (long c = 0; c < r->customers; c++) {
    for (long k = 0; k < r->invoices_per_customer; k++) {
      char *id = r->pending[r->npending];
      snprintf(id, CQRS_ID_MAX, "lr-i%ld-%ld", c, k);
      r->pending_amount[r->npending] = 1000 + (int64_t)((c * 7919 + k * 104729) % 90000);
      issue(r, c, id, r->pending_amount[r->npending]);
      r->npending++;
      /* Every invoice takes the next number of one book: issued one at a
       * time, they do not conflict on it. */
      seed_window(r, 1);
    }
  }
  wait_quiet(r); /* invoices recorded by the process manager and projected */
  fprintf(stderr, "loadrun: seeded %ld customers, %ld accounts, %zu invoices in %.1f s (%" PRIu64 " failed)\n",
          r->customers, r->customers, n, (double)(uv_hrtime() - t0) / 1e9, r->seed_failed);
  r->seeding = false;
  return r->seed_failed ? 3 : 0;
}

/* ---- report ---- */

/* Mean time per query and per command type, from the metrics' histograms. */
static void breakdown(run_t *r) {
  cqrs_metrics_snapshot_t *snap;
  if (cqrs_metrics_snapshot(r->s.metrics, &snap, NULL)) return;
  printf("  mean time by query and command (ms, whole run including seeding):\n");
  for (size_t i = 0; i < cqrs_metrics_snapshot_count(snap); i++) {
    const cqrs_metric_t *m = cqrs_metrics_snapshot_get(snap, i);
    if (m->kind != CQRS_METRIC_HISTOGRAM || !m->count) continue;
    printf("    %-24s %8.2f  (%" PRIu64 ")\n", m->label_values[0], m->sum * 1000 / (double)m->count, m->count);
  }
  cqrs_metrics_snapshot_destroy(snap);
}


static const char *verdict(bool ok) { return ok ? "yes" : "NO"; }

static uint64_t shadow_differing(run_t *r) {
  uint64_t differing = 0;
  billing_flags_shadow_counts(r->s.flags, NULL, &differing);
  return differing;
}

static int report(run_t *r, double seconds, double drain_s) {
  uint64_t ops = r->reads + r->writes;
  uint64_t errors = r->read_errors + r->write_errors + r->skipped;
  double achieved = seconds > 0 ? (double)ops / seconds : 0;
  double err_rate = ops + r->skipped ? (double)errors / (double)(ops + r->skipped) : 0;
  double rp50 = pct(&r->read_lat, 0.50) / 1000, rp95 = pct(&r->read_lat, 0.95) / 1000,
         rp99 = pct(&r->read_lat, 0.99) / 1000;
  double wp50 = pct(&r->write_lat, 0.50) / 1000, wp95 = pct(&r->write_lat, 0.95) / 1000,
         wp99 = pct(&r->write_lat, 0.99) / 1000;
  double lag99 = pct(&r->lag_ms, 0.99) / 1000;
  bool ok_read = rp99 < READ_MS, ok_write = wp99 < WRITE_MS, ok_ops = achieved > OPS_PER_S,
       ok_lag = r->max_lag_s < LAG_S, ok_err = err_rate < ERROR_RATE;
  if (r->json) {
    printf("{\"name\": \"loadrun\", \"rate\": %ld, \"seconds\": %.2f, \"reads\": %" PRIu64 ", \"writes\": %" PRIu64
           ", \"ops_per_s\": %.0f, \"read_ms\": [%.2f, %.2f, %.2f], \"write_ms\": [%.2f, %.2f, %.2f], "
           "\"lag_s_p99\": %.3f, \"lag_s_max\": %.3f, \"lag_positions_max\": %" PRId64 ", \"drain_s\": %.3f, "
           "\"errors\": %" PRIu64 ", \"skipped\": %" PRIu64 ", \"rejections\": %" PRIu64 ", \"error_rate\": %.5f, "
           "\"invoice_reads\": {\"legacy\": %" PRIu64 ", \"cqs\": %" PRIu64 ", \"not_found\": %" PRIu64
           ", \"shadow_differences\": %" PRIu64 "}}\n",
           r->rate, seconds, r->reads, r->writes, achieved, rp50, rp95, rp99, wp50, wp95, wp99, lag99, r->max_lag_s,
           r->max_lag_positions, drain_s, r->read_errors + r->write_errors, r->skipped, r->rejections, err_rate,
           r->from_legacy, r->from_cqs, r->not_found, shadow_differing(r));
  } else {
    printf("load run: %ld ops/s asked for %ld s (the last completed after %.1f s); %" PRIu64 " reads, %" PRIu64
           " writes\n",
           r->rate, r->duration_s, seconds, r->reads, r->writes);
    printf("  %-22s %-28s %-12s %s\n", "figure", "measured", "target", "met");
    printf("  %-22s p50 %.2f  p95 %.2f  p99 %-7.2f %-12s %s\n", "read latency (ms)", rp50, rp95, rp99, "p99 < 50",
           verdict(ok_read));
    printf("  %-22s p50 %.2f  p95 %.2f  p99 %-7.2f %-12s %s\n", "write latency (ms)", wp50, wp95, wp99, "p99 < 100",
           verdict(ok_write));
    printf("  %-22s %-28.0f %-12s %s\n", "throughput (ops/s)", achieved, "> 10000", verdict(ok_ops));
    printf("  %-22s max %.3f  p99 %-13.3f %-12s %s\n", "sync lag (s)", r->max_lag_s, lag99, "max < 1", verdict(ok_lag));
    printf("  %-22s %.4f %% (%" PRIu64 " errors, %" PRIu64 " not started) %s %s\n", "error rate", err_rate * 100,
           r->read_errors + r->write_errors, r->skipped, "< 0.1 %", verdict(ok_err));
    printf("  business rejections: %" PRIu64 "; projections caught up %.3f s after the last operation\n",
           r->rejections, drain_s);
    uint64_t compared = 0, differing = 0;
    billing_flags_shadow_counts(r->s.flags, &compared, &differing);
    printf("  invoice reads through %s: %" PRIu64 " from legacy, %" PRIu64 " from CQS, %" PRIu64
           " not found; shadow: %" PRIu64 " compared, %" PRIu64 " differed\n",
           BILLING_CQS_FLAG, r->from_legacy, r->from_cqs, r->not_found, compared, differing);
    breakdown(r);
  }
  return r->check && !(ok_read && ok_write && ok_ops && ok_lag && ok_err) ? 1 : 0;
}

static void usage(FILE *to) {
  fprintf(to,
          "usage: cqrs-loadrun --mongo URI [--rate OPS] [--duration S] [--customers N] [--invoices K]\n"
          "                    [--write-percent W] [--reset] [--cqs MODE] [--metrics-port P] [--json] [--check]\n"
          "  Seeds N customers with an account and K pending invoices each (default 200, 5), then\n"
          "  runs 95 %% reads (billing queries) and 5 %% writes (commands; W %%) at OPS per second\n"
          "  (default 1000) for S seconds (default 10), and reports the seed's figures.\n"
          "  --reset drops the URI's database first; --check exits 1 when a target is missed.\n"
          "  Invoices are read as the application reads them, through the flag mongodb_cqs_enabled\n"
          "  (invoice.read; --cqs MODE sets it first: off, shadow, PERCENT, on; the load's own invoices\n"
          "  exist on the CQS side only).\n");
}

static long arg_long(int argc, char **argv, int *i, long lo, long hi) {
  char *end;
  long v = *i + 1 < argc ? strtol(argv[*i + 1], &end, 10) : -1;
  if (*i + 1 >= argc || *end || v < lo || v > hi) {
    fprintf(stderr, "cqrs-loadrun: %s needs a number in %ld..%ld\n", argv[*i], lo, hi);
    exit(2);
  }
  (*i)++;
  return v;
}

int main(int argc, char **argv) {
  static run_t r;
  r.rate = 1000;
  r.duration_s = 10;
  r.customers = 200;
  r.invoices_per_customer = 5;
  r.write_percent = 5;
  r.rng = 0x9e3779b97f4a7c15u;
  char *sargv[10] = {"loadrun"};
  int sargc = 1;
  const char *uri = getenv("MONGODB_URI");
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(argv[i], "--mongo") && i + 1 < argc) {
      uri = argv[++i];
    } else if (!strcmp(argv[i], "--rate")) {
      r.rate = arg_long(argc, argv, &i, 1, 10000000);
    } else if (!strcmp(argv[i], "--duration")) {
      r.duration_s = arg_long(argc, argv, &i, 1, 86400);
    } else if (!strcmp(argv[i], "--customers")) {
      r.customers = arg_long(argc, argv, &i, 1, 10000000);
    } else if (!strcmp(argv[i], "--invoices")) {
      r.invoices_per_customer = arg_long(argc, argv, &i, 1, 1000);
    } else if (!strcmp(argv[i], "--write-percent")) {
      r.write_percent = arg_long(argc, argv, &i, 0, 100);
    } else if (!strcmp(argv[i], "--reset")) {
      sargv[sargc++] = "--reset";
    } else if (!strcmp(argv[i], "--cqs") && i + 1 < argc) {
      sargv[sargc++] = "--cqs";
      sargv[sargc++] = argv[++i];
    } else if (!strcmp(argv[i], "--metrics-port") && i + 1 < argc) {
      sargv[sargc++] = "--metrics-port";
      sargv[sargc++] = argv[++i];
    } else if (!strcmp(argv[i], "--json")) {
      r.json = true;
    } else if (!strcmp(argv[i], "--check")) {
      r.check = true;
    } else {
      fprintf(stderr, "cqrs-loadrun: unknown argument '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  if (!uri || !*uri) {
    fprintf(stderr, "cqrs-loadrun: needs --mongo URI (or MONGODB_URI)\n");
    return 2;
  }
  sargv[sargc++] = "--mongo";
  sargv[sargc++] = (char *)uri;
  /* Reads and writes both wait on MongoDB from the thread pool. */
  if (!getenv("UV_THREADPOOL_SIZE")) setenv("UV_THREADPOOL_SIZE", "16", 1);
  int rc = sample_open(&r.s, "loadrun", sargc, sargv);
  if (rc) return rc == 1 ? 0 : rc;
  cqrs_error_t err;
  if (!r.s.metrics && (cqrs_metrics_new(&r.s.metrics, &err) || cqrs_metrics_attach(r.s.metrics, r.s.d, &err) ||
                       cqrs_metrics_attach_query_bus(r.s.metrics, r.s.q, &err))) {
    fprintf(stderr, "cqrs-loadrun: metrics: %s\n", err.message);
    return 3;
  }
  uv_timer_init(&r.s.loop, &r.lag_timer);
  r.lag_timer.data = &r;
  uv_timer_start(&r.lag_timer, lag_sample, LAG_SAMPLE_MS, LAG_SAMPLE_MS);
  uv_unref((uv_handle_t *)&r.lag_timer);
  if ((rc = seed(&r))) {
    fprintf(stderr, "cqrs-loadrun: seeding failed\n");
  } else {
    uv_ref((uv_handle_t *)&r.lag_timer);
    r.t0 = uv_hrtime();
    r.end = r.t0 + (uint64_t)r.duration_s * 1000000000u;
    uv_timer_init(&r.s.loop, &r.tick);
    r.tick.data = &r;
    uv_timer_start(&r.tick, tick, TICK_MS, TICK_MS);
    while (uv_hrtime() < r.end || r.in_flight) uv_run(&r.s.loop, UV_RUN_ONCE);
    double seconds = (double)(uv_hrtime() - r.t0) / 1e9;
    uint64_t last = uv_hrtime();
    uv_timer_stop(&r.lag_timer);
    uv_unref((uv_handle_t *)&r.lag_timer);
    wait_quiet(&r);
    double drain_s = (double)(uv_hrtime() - last) / 1e9;
    uv_close((uv_handle_t *)&r.tick, NULL);
    rc = report(&r, seconds, drain_s);
  }
  uv_close((uv_handle_t *)&r.lag_timer, NULL);
  int closed = sample_close(&r.s);
  free(r.read_lat.v);
  free(r.write_lat.v);
  free(r.lag_ms.v);
  free(r.pending);
  free(r.pending_amount);
  return rc ? rc : closed;
}
