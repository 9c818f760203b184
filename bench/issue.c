/* invoice-issue, invoice-issue-mongo: invoice.issue from S concurrent
 * senders (--senders, default 16), each waiting for its command's result
 * before it sends the next (cqrs_dispatcher_execute_ex), as S clients
 * would. Every issue goes through the one book of the year. Run twice in
 * one process, each time on a fresh store: batches off (options.batch_max
 * 1: each issue alone, as before batches), then on (the default). One JSON
 * line each: commits per second, p50 and p99 of a command from send to
 * result, the conflicts that reached a caller, and the store's append
 * calls. docs/benchmarks.md, "Batches". */
#include <billing/billing.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "billing_mongo.h"

#define DUE 1798761600000LL

typedef struct issuer {
  cqrs_dispatcher_t *d;
  uv_async_t *wake;
  atomic_int *finished;
  int id;
  long from, count;
  samples_t lat;
  long ok, conflicts, errors;
  cqrs_error_t last;
} issuer_t;

static void issue_range(void *arg) {
  issuer_t *s = arg;
  for (long i = 0; i < s->count; i++) {
    billing_issue_invoice_t p = {"", "", {1000, "EUR"}, DUE};
    snprintf(p.invoice_id, sizeof p.invoice_id, "inv-%ld", s->from + i);
    snprintf(p.customer_id, sizeof p.customer_id, "c-%d", s->id);
    cqrs_command_t *cmd;
    cqrs_error_t err;
    if (cqrs_command_new(&billing_issue_invoice, &p, &cmd, &err)) die("command", &err);
    uint64_t t0 = now_ns();
    cqrs_code_t rc = cqrs_dispatcher_execute_ex(s->d, cmd, NULL, &err);
    sample(&s->lat, now_ns() - t0);
    if (rc == CQRS_OK) {
      s->ok++;
    } else if (rc == CQRS_ECONFLICT) {
      s->conflicts++;
    } else {
      s->errors++;
      s->last = err;
    }
  }
  atomic_fetch_add(s->finished, 1);
  uv_async_send(s->wake);
}

static void on_registered(const cqrs_result_t *r, void *data) {
  if (r->error.code) die("register a customer", &r->error);
  (*(int *)data)++;
}

static double store_calls(cqrs_metrics_t *m, const char *op) {
  cqrs_metrics_snapshot_t *s;
  cqrs_error_t err;
  if (cqrs_metrics_snapshot(m, &s, &err)) die("metrics", &err);
  double v = cqrs_metrics_snapshot_value(s, "cqrs_store_calls_total", "op", op, NULL);
  cqrs_metrics_snapshot_destroy(s);
  return v;
}

static void nothing(uv_async_t *a) { (void)a; }

static void run_mode(bool mongo, bool batched, long n, unsigned senders) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  cqrs_registry_t *reg;
  cqrs_error_t err;
  if (cqrs_registry_new(&reg, &err) || billing_register(reg, &err)) die("registry", &err);
  cqrs_mongo_t *m = NULL;
  cqrs_store_t *store = NULL;
  cqrs_keys_t *keys = NULL; /* customers' personal fields are sealed */
  if (mongo) {
    m = bench_mongo(reg, &loop, batched ? "issue_batched" : "issue_alone");
    if (cqrs_mongo_store_new(m, &store, &err) || billing_mongo_keys(m, &keys, &err)) die("store", &err);
  } else if (cqrs_memory_store_new(&store, &err) || cqrs_memory_keys_new(NULL, &keys, &err)) {
    die("store", &err);
  }
  if (cqrs_store_set_keys(store, keys, reg, &err)) die("keys", &err);
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.keep_alive = true;
  o.batch_max = batched ? 0 : 1;
  cqrs_dispatcher_t *d;
  cqrs_metrics_t *metrics;
  if (cqrs_dispatcher_new(&loop, reg, store, &o, &d, &err) || billing_register_handlers(d, &err) ||
      cqrs_metrics_new(&metrics, &err) || cqrs_metrics_attach(metrics, d, &err))
    die("dispatcher", &err);
  int registered = 0;
  for (unsigned i = 0; i < senders; i++) {
    billing_register_customer_t c = {"", "Acme", "billing@acme.example"};
    snprintf(c.customer_id, sizeof c.customer_id, "c-%u", i);
    cqrs_command_t *cmd;
    if (cqrs_command_new(&billing_register_customer, &c, &cmd, &err)) die("command", &err);
    cqrs_dispatcher_send(d, cmd, on_registered, &registered);
  }
  while (registered < (int)senders) uv_run(&loop, UV_RUN_ONCE);
  double appends0 = store_calls(metrics, "append");
  uv_async_t wake;
  uv_async_init(&loop, &wake, nothing);
  atomic_int finished = 0;
  issuer_t *s = calloc(senders, sizeof *s);
  uv_thread_t *th = calloc(senders, sizeof *th);
  uint64_t t0 = now_ns();
  for (unsigned i = 0; i < senders; i++) {
    long share = n / senders + ((long)i < n % (long)senders);
    s[i] = (issuer_t){.d = d, .wake = &wake, .finished = &finished, .id = (int)i, .count = share};
    s[i].from = i ? s[i - 1].from + s[i - 1].count : 0;
    uv_thread_create(&th[i], issue_range, &s[i]);
  }
  while (atomic_load(&finished) < (int)senders) uv_run(&loop, UV_RUN_ONCE);
  double seconds = (double)(now_ns() - t0) / 1e9;
  samples_t lat = {0};
  long ok = 0, conflicts = 0, errors = 0;
  const cqrs_error_t *last = NULL;
  for (unsigned i = 0; i < senders; i++) {
    uv_thread_join(&th[i]);
    for (size_t k = 0; k < s[i].lat.n; k++) sample(&lat, s[i].lat.v[k]);
    free(s[i].lat.v);
    ok += s[i].ok;
    conflicts += s[i].conflicts;
    errors += s[i].errors;
    if (s[i].errors) last = &s[i].last;
  }
  double appends = store_calls(metrics, "append") - appends0, many = store_calls(metrics, "append_many");
  char extra[512];
  snprintf(extra, sizeof extra,
           "\"store\": \"%s\", \"batched\": %s, \"senders\": %u, \"commands\": %ld, \"commits_per_s\": %.1f, "
           "\"conflicts_to_callers\": %ld, \"errors\": %ld, \"append_calls\": %.0f, \"append_many_calls\": %.0f, "
           "\"commits_per_store_call\": %.2f, \"latency\": \"per command, send to result\"%s%s%s",
           mongo ? "mongo" : "memory", batched ? "true" : "false", senders, n, (double)ok / seconds, conflicts, errors,
           appends, many, appends + many > 0 ? (double)ok / (appends + many) : 0, last ? ", \"last_error\": \"" : "",
           last ? cqrs_code_name(last->code) : "", last ? "\"" : "");
  report(mongo ? "invoice-issue-mongo" : "invoice-issue", (uint64_t)ok, seconds, &lat, extra);
  free(s);
  free(th);
  uv_close((uv_handle_t *)&wake, NULL);
  cqrs_dispatcher_close(d, NULL, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  cqrs_metrics_destroy(metrics);
  cqrs_store_destroy(store);
  cqrs_keys_destroy(keys);
  if (m) {
    cqrs_mongo_drop_database(m, NULL);
    cqrs_mongo_destroy(m);
  }
  cqrs_registry_destroy(reg);
}

void bench_invoice_issue(bool mongo) {
  long n = n_arg ? n_arg : mongo ? 1000 : 100000;
  unsigned senders = senders_arg ? senders_arg : 16;
  run_mode(mongo, false, n, senders);
  run_mode(mongo, true, n, senders);
}
