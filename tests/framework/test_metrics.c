#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "ledger.h"
#include "prom_check.h"

/* A command whose handler commits behind its own back once: a conflict. */
typedef struct racy_cmd {
  char id[CQRS_ID_MAX];
} racy_cmd_t;
static const cqrs_field_t racy_fields[] = {CQRS_STRING(racy_cmd_t, id, "id", CQRS_F_REQUIRED), CQRS_FIELDS_END};
static const cqrs_command_type_t racy = {.name = "test.racy", .payload_size = sizeof(racy_cmd_t),
                                         .fields = racy_fields};

typedef struct fx {
  uv_loop_t loop;
  cqrs_registry_t *reg;
  cqrs_store_t *store;
  cqrs_dispatcher_t *d;
  cqrs_metrics_t *m;
  int done;
  int races; /* racy commands still to disturb */
  int sunk;  /* events the dead-letter sink received */
  int sub_fail_first, sub_calls;
  bool sub_fail_always;
  cqrs_clock_t *clock; /* NULL: the real one */
} fx_t;

static cqrs_code_t handle_racy(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  fx_t *fx = data;
  const racy_cmd_t *c = cqrs_command_payload(cmd);
  cqrs_aggregate_t *agg;
  cqrs_code_t rc = cqrs_context_load(ctx, &ledger_type, c->id, &agg, err);
  if (rc) return rc;
  if (fx->races > 0) {
    fx->races--;
    ledger_fill(fx->store, &ledger_type, c->id, 1);
  }
  ledger_amount_t e = {1};
  return cqrs_aggregate_raise(agg, &ledger_credited, &e, err);
}

static void sink(const char *subscriber, const cqrs_event_t *e, const cqrs_error_t *error, void *data) {
  (void)subscriber, (void)e, (void)error;
  ((fx_t *)data)->sunk++;
}

static fx_t *fx_new(bool with_sink, uint64_t retry_base_ms, bool manual_clock) {
  fx_t *fx = calloc(1, sizeof *fx);
  uv_loop_init(&fx->loop);
  if (manual_clock) assert_int_equal(cqrs_clock_manual_new(1700000000000LL, &fx->clock, NULL), CQRS_OK);
  fx->reg = ledger_registry();
  assert_int_equal(cqrs_registry_add_command(fx->reg, &racy, NULL), CQRS_OK);
  cqrs_memory_store_new(&fx->store, NULL);
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.retry_base_ms = retry_base_ms;
  o.retry_attempts = 3;
  o.clock = fx->clock;
  if (with_sink) {
    o.dead_letter = sink;
    o.dead_letter_data = fx;
  }
  cqrs_error_t err;
  if (cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, &o, &fx->d, &err)) fail_msg("%s", err.message);
  assert_int_equal(ledger_handlers(fx->d, NULL, 0, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_register(fx->d, &racy, handle_racy, fx, 0, NULL), CQRS_OK);
  if (cqrs_metrics_new(&fx->m, &err) || cqrs_metrics_attach(fx->m, fx->d, &err)) fail_msg("%s", err.message);
  return fx;
}

static int setup(void **state) {
  *state = fx_new(false, 20, false);
  return 0;
}

/* A first retry 300 ms away on a manual clock: the lag between is exact. */
static int setup_slow(void **state) {
  *state = fx_new(false, 300, true);
  return 0;
}

static int setup_sink(void **state) {
  *state = fx_new(true, 20, false);
  return 0;
}

static int teardown(void **state) {
  fx_t *fx = *state;
  assert_int_equal(cqrs_dispatcher_close(fx->d, NULL, NULL), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&fx->loop), 0);
  cqrs_metrics_destroy(fx->m);
  cqrs_store_destroy(fx->store);
  cqrs_registry_destroy(fx->reg);
  cqrs_clock_destroy(fx->clock);
  free(fx);
  return 0;
}

static void on_done(const cqrs_result_t *r, void *data) {
  (void)r;
  ((fx_t *)data)->done++;
}

static void run_cmd(fx_t *fx, cqrs_command_t *cmd) {
  assert_int_equal(cqrs_dispatcher_send(fx->d, cmd, on_done, fx), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
}

static cqrs_metrics_snapshot_t *snap(fx_t *fx) {
  cqrs_metrics_snapshot_t *s;
  cqrs_error_t err;
  if (cqrs_metrics_snapshot(fx->m, &s, &err)) fail_msg("%s", err.message);
  return s;
}

#define VALUE(s, ...) cqrs_metrics_snapshot_value(s, __VA_ARGS__, NULL)

/* An authorisation middleware: refuses credits to "locked". */
static int befores, afters;
static cqrs_code_t deny_locked(const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)data;
  befores++;
  const ledger_move_cmd_t *c = cqrs_command_payload(cmd);
  if (cqrs_command_type(cmd) == &ledger_credit && !strcmp(c->id, "locked"))
    return cqrs_reject(err, "auth.denied", "ledger %s is locked", c->id);
  if (cqrs_command_type(cmd) == &ledger_credit && !strcmp(c->id, "broken"))
    return CQRS_EHANDLER; /* fails without saying why */
  return CQRS_OK;
}
static void count_after(const cqrs_command_t *cmd, const cqrs_result_t *r, const cqrs_command_stats_t *st,
                        void *data) {
  (void)cmd, (void)r, (void)data;
  afters++;
  assert_true(st->duration_ns > 0);
}
static const cqrs_middleware_t auth_mw = {.command_before = deny_locked, .command_after = count_after};

static void test_commands_by_outcome(void **state) {
  fx_t *fx = *state;
  befores = afters = 0;
  assert_int_equal(cqrs_dispatcher_use(fx->d, &auth_mw, NULL, NULL), CQRS_OK);
  run_cmd(fx, ledger_open_new("a", "ann"));
  run_cmd(fx, ledger_credit_new("a", 10));
  run_cmd(fx, ledger_open_new("a", "ann"));      /* rejected: already open */
  run_cmd(fx, ledger_debit_new("a", 100));       /* rejected: insufficient */
  run_cmd(fx, ledger_credit_new("locked", 5));   /* refused by the middleware */
  run_cmd(fx, ledger_credit_new("broken", 5));   /* an error from the middleware */
  run_cmd(fx, ledger_open_new("locked", "lou")); /* the middleware lets this one pass */
  assert_int_equal(fx->done, 7);
  assert_int_equal(befores, 7);
  assert_int_equal(afters, 7);

  cqrs_metrics_snapshot_t *s = snap(fx);
  assert_int_equal(VALUE(s, "cqrs_commands_total", "type", "ledger.open", "outcome", "ok"), 2);
  assert_int_equal(VALUE(s, "cqrs_commands_total", "type", "ledger.credit", "outcome", "ok"), 1);
  assert_int_equal(VALUE(s, "cqrs_commands_total", "type", "ledger.open", "outcome", "rejected", "reason",
                         "ledger.already_open"), 1);
  assert_int_equal(VALUE(s, "cqrs_commands_total", "type", "ledger.debit", "outcome", "rejected", "reason",
                         "ledger.insufficient"), 1);
  assert_int_equal(VALUE(s, "cqrs_commands_total", "outcome", "rejected", "reason", "auth.denied"), 1);
  assert_int_equal(VALUE(s, "cqrs_commands_total", "outcome", "error", "reason", "handler_failed"), 1);
  assert_int_equal(VALUE(s, "cqrs_commands_total"), 7);
  assert_int_equal(VALUE(s, "cqrs_command_duration_seconds"), 7);
  assert_int_equal(VALUE(s, "cqrs_command_duration_seconds", "type", "ledger.credit"), 3);
  assert_int_equal(VALUE(s, "cqrs_events_published_total"), 3);
  assert_int_equal(VALUE(s, "cqrs_store_calls_total", "op", "append"), 3);
  assert_int_equal(VALUE(s, "cqrs_head_position"), 3);
  assert_int_equal(VALUE(s, "cqrs_command_conflicts_total"), 0);
  /* The middleware refused before the handler: "locked" got no credit. */
  assert_int_equal(VALUE(s, "cqrs_store_errors_total"), 0);
  cqrs_metrics_snapshot_destroy(s);
}

static void test_conflicts_and_retries(void **state) {
  fx_t *fx = *state;
  fx->races = 1;
  racy_cmd_t c = {"r"};
  cqrs_command_t *cmd;
  assert_int_equal(cqrs_command_new(&racy, &c, &cmd, NULL), CQRS_OK);
  run_cmd(fx, cmd);
  cqrs_metrics_snapshot_t *s = snap(fx);
  assert_int_equal(VALUE(s, "cqrs_command_conflicts_total"), 1);
  assert_int_equal(VALUE(s, "cqrs_command_retries_total"), 1);
  assert_int_equal(VALUE(s, "cqrs_commands_total", "type", "test.racy", "outcome", "ok"), 1);
  cqrs_metrics_snapshot_destroy(s);
}

static cqrs_code_t flaky(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)e;
  fx_t *fx = data;
  fx->sub_calls++;
  if (fx->sub_fail_always || fx->sub_calls <= fx->sub_fail_first)
    return cqrs_error_set(err, CQRS_EHANDLER, "not yet");
  return CQRS_OK;
}

static void test_lag_returns_to_zero(void **state) {
  fx_t *fx = *state;
  static const cqrs_event_type_t *const debits[] = {&ledger_debited, NULL};
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "flaky", NULL, flaky, fx, 0, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "debits", debits, flaky, fx, 0, NULL), CQRS_OK);
  fx->sub_fail_first = 1;
  assert_int_equal(cqrs_dispatcher_send(fx->d, ledger_open_new("l", "lea"), on_done, fx), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT); /* the first delivery failed; the retry waits 300 ms of the clock */
  assert_int_equal(cqrs_clock_advance(fx->clock, 250), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  cqrs_metrics_snapshot_t *s = snap(fx);
  assert_int_equal(VALUE(s, "cqrs_projection_lag_positions", "projection", "flaky"), 1);
  assert_int_equal(VALUE(s, "cqrs_projection_position", "projection", "flaky"), 0);
  assert_true(VALUE(s, "cqrs_projection_lag_seconds", "projection", "flaky") == 0.25); /* since the commit */
  assert_int_equal(VALUE(s, "cqrs_projection_retries_total", "projection", "flaky"), 1);
  /* It wants debits only: an opening is nothing it waits for. */
  assert_int_equal(VALUE(s, "cqrs_projection_lag_positions", "projection", "debits"), 0);
  cqrs_metrics_snapshot_destroy(s);

  assert_int_equal(cqrs_clock_advance(fx->clock, 50), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT); /* delivered on the second try */
  s = snap(fx);
  assert_int_equal(VALUE(s, "cqrs_projection_lag_positions", "projection", "flaky"), 0);
  assert_int_equal(VALUE(s, "cqrs_projection_lag_seconds", "projection", "flaky"), 0);
  assert_int_equal(VALUE(s, "cqrs_projection_position", "projection", "flaky"), 1);
  assert_int_equal(VALUE(s, "cqrs_projection_retries_total", "projection", "flaky"), 1);
  assert_int_equal(fx->sub_calls, 2);
  assert_int_equal(VALUE(s, "cqrs_dead_letters_total", "subscriber", "flaky"), 0);
  assert_int_equal(VALUE(s, "cqrs_projection_lag_positions"), 0);
  cqrs_metrics_snapshot_destroy(s);
}

static void dead_letters_counted(fx_t *fx) {
  fx->sub_fail_always = true;
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "doomed", NULL, flaky, fx, 0, NULL), CQRS_OK);
  run_cmd(fx, ledger_open_new("x", "xi"));
  run_cmd(fx, ledger_credit_new("x", 1));
  cqrs_metrics_snapshot_t *s = snap(fx);
  assert_int_equal(VALUE(s, "cqrs_dead_letters_total", "subscriber", "doomed"), 2);
  assert_int_equal(VALUE(s, "cqrs_projection_retries_total", "projection", "doomed"), 6);
  assert_int_equal(VALUE(s, "cqrs_projection_lag_positions", "projection", "doomed"), 0);
  cqrs_metrics_snapshot_destroy(s);
}

static void test_dead_letters_in_memory(void **state) { dead_letters_counted(*state); }

static void test_dead_letters_with_sink(void **state) {
  fx_t *fx = *state;
  dead_letters_counted(fx);
  assert_int_equal(fx->sunk, 2); /* the dispatcher's sink still gets them */
}

static cqrs_code_t q_ok(const cqrs_readmodel_t *rm, const bson_t *p, bson_t *out, void *data, cqrs_error_t *err) {
  (void)rm, (void)p, (void)data, (void)err;
  BSON_APPEND_INT32(out, "n", 1);
  return CQRS_OK;
}
static cqrs_code_t q_missing(const cqrs_readmodel_t *rm, const bson_t *p, bson_t *out, void *data,
                             cqrs_error_t *err) {
  (void)rm, (void)p, (void)out, (void)data;
  return cqrs_error_set(err, CQRS_ENOT_FOUND, "nothing");
}
static cqrs_code_t q_fail(const cqrs_readmodel_t *rm, const bson_t *p, bson_t *out, void *data, cqrs_error_t *err) {
  (void)rm, (void)p, (void)out, (void)data, (void)err;
  return CQRS_ESTORE;
}
static cqrs_code_t q_deny(const char *name, const bson_t *params, void *data, cqrs_error_t *err) {
  (void)params, (void)data;
  return strcmp(name, "secret") ? CQRS_OK : cqrs_reject(err, "auth.denied", "no");
}
static const cqrs_middleware_t q_auth = {.query_before = q_deny};

static void test_queries_by_outcome(void **state) {
  fx_t *fx = *state;
  cqrs_readmodel_t *rm = NULL;
  cqrs_memory_readmodel_new(&rm, NULL);
  cqrs_query_bus_t *q = NULL;
  cqrs_query_bus_new(rm, &q, NULL);
  assert_int_equal(cqrs_query_bus_register(q, "ok", q_ok, NULL, NULL), CQRS_OK);
  assert_int_equal(cqrs_query_bus_register(q, "missing", q_missing, NULL, NULL), CQRS_OK);
  assert_int_equal(cqrs_query_bus_register(q, "fail", q_fail, NULL, NULL), CQRS_OK);
  assert_int_equal(cqrs_query_bus_register(q, "secret", q_ok, NULL, NULL), CQRS_OK);
  assert_int_equal(cqrs_query_bus_use(q, &q_auth, NULL, NULL), CQRS_OK);
  assert_int_equal(cqrs_metrics_attach_query_bus(fx->m, q, NULL), CQRS_OK);
  const char *names[] = {"ok", "ok", "missing", "fail", "secret", "unknown"};
  cqrs_code_t want[] = {CQRS_OK, CQRS_OK, CQRS_ENOT_FOUND, CQRS_ESTORE, CQRS_EREJECTED, CQRS_ENOT_FOUND};
  for (size_t i = 0; i < 6; i++) {
    bson_t out = BSON_INITIALIZER;
    assert_int_equal(cqrs_query_bus_run(q, names[i], NULL, &out, NULL), want[i]);
    bson_destroy(&out);
  }
  cqrs_metrics_snapshot_t *s = snap(fx);
  assert_int_equal(VALUE(s, "cqrs_queries_total", "name", "ok", "outcome", "ok"), 2);
  assert_int_equal(VALUE(s, "cqrs_queries_total", "name", "missing", "outcome", "ok"), 1);
  assert_int_equal(VALUE(s, "cqrs_queries_total", "name", "fail", "outcome", "error"), 1);
  assert_int_equal(VALUE(s, "cqrs_queries_total", "name", "secret", "outcome", "error"), 1);
  assert_int_equal(VALUE(s, "cqrs_queries_total"), 5); /* an unknown name is not a series */
  assert_int_equal(VALUE(s, "cqrs_query_duration_seconds", "name", "ok"), 2);
  cqrs_metrics_snapshot_destroy(s);
  cqrs_query_bus_destroy(q);
  cqrs_readmodel_destroy(rm);
}

static bool visit_none(const cqrs_event_t *e, void *data) {
  (void)e, (void)data;
  return true;
}

/* Metrics on a dispatcher over a store wrapping a memory store (`wrap`:
 * ledger_blocking_store or ledger_flaky_store). */
typedef struct store_fx {
  uv_loop_t loop;
  cqrs_store_t *inner, *st;
  cqrs_registry_t *reg;
  cqrs_dispatcher_t *d;
  cqrs_metrics_t *m;
} store_fx_t;

static void store_fx_open(store_fx_t *f, bool blocking) {
  cqrs_memory_store_new(&f->inner, NULL);
  f->st = blocking ? ledger_blocking_store(f->inner, 0) : ledger_flaky_store(f->inner);
  uv_loop_init(&f->loop);
  f->reg = ledger_registry();
  assert_int_equal(cqrs_dispatcher_new(&f->loop, f->reg, f->st, NULL, &f->d, NULL), CQRS_OK);
  assert_int_equal(cqrs_metrics_new(&f->m, NULL), CQRS_OK);
  assert_int_equal(cqrs_metrics_attach(f->m, f->d, NULL), CQRS_OK);
  uv_run(&f->loop, UV_RUN_DEFAULT); /* a blocking store's head is read on the pool */
}

static void store_fx_close(store_fx_t *f) {
  cqrs_dispatcher_close(f->d, NULL, NULL);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  cqrs_metrics_destroy(f->m);
  cqrs_store_destroy(f->st);
  cqrs_store_destroy(f->inner);
  cqrs_registry_destroy(f->reg);
}

static void test_store_errors_by_class(void **state) {
  (void)state;
  store_fx_t f;
  store_fx_open(&f, true);
  ledger_blocking_store_fail_reads(f.st, 1);
  assert_int_equal(cqrs_metrics_attach(f.m, f.d, NULL), CQRS_ESTATE);
  cqrs_error_t err;
  assert_int_equal(cqrs_store_read_all(f.st, 1, 10, visit_none, NULL, &err), CQRS_ESTORE);
  cqrs_metrics_snapshot_t *s;
  assert_int_equal(cqrs_metrics_snapshot(f.m, &s, NULL), CQRS_OK);
  assert_int_equal(VALUE(s, "cqrs_store_errors_total", "op", "read_all", "class", "transient"), 1);
  assert_int_equal(VALUE(s, "cqrs_store_errors_total", "class", "permanent"), 0);
  assert_int_equal(VALUE(s, "cqrs_store_calls_total", "op", "head"), 1); /* the dispatcher read it once */
  cqrs_metrics_snapshot_destroy(s);
  store_fx_close(&f);
}

/* A permanent store failure (CQRS_ESTORE, not transient) is counted as
 * permanent, also when the caller passes no error to fill. */
static void test_store_errors_permanent(void **state) {
  (void)state;
  store_fx_t f;
  store_fx_open(&f, false);
  ledger_store_fail_reads(f.st, 3, true);
  cqrs_error_t err;
  assert_int_equal(cqrs_store_read_all(f.st, 1, 10, visit_none, NULL, &err), CQRS_ESTORE);
  assert_false(cqrs_error_transient(&err));
  assert_int_equal(cqrs_store_read_all(f.st, 1, 10, visit_none, NULL, NULL), CQRS_ESTORE);
  ledger_store_fail_reads(f.st, 1, false);
  assert_int_equal(cqrs_store_read_all(f.st, 1, 10, visit_none, NULL, NULL), CQRS_ESTORE);
  cqrs_metrics_snapshot_t *s;
  assert_int_equal(cqrs_metrics_snapshot(f.m, &s, NULL), CQRS_OK);
  assert_int_equal(VALUE(s, "cqrs_store_errors_total", "op", "read_all", "class", "permanent"), 2);
  assert_int_equal(VALUE(s, "cqrs_store_errors_total", "op", "read_all", "class", "transient"), 1);
  cqrs_metrics_snapshot_destroy(s);
  store_fx_close(&f);
}

static void test_prometheus_text(void **state) {
  fx_t *fx = *state;
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "p\"q\\r", NULL, flaky, fx, 0, NULL), CQRS_OK);
  run_cmd(fx, ledger_open_new("t", "tom"));
  run_cmd(fx, ledger_open_new("t", "tom"));
  cqrs_metrics_snapshot_t *s = snap(fx);
  char *text;
  size_t len;
  assert_int_equal(cqrs_metrics_render(s, &text, &len, NULL), CQRS_OK);
  assert_int_equal(strlen(text), len);
  char why[128];
  if (!prom_check(text, why, sizeof why)) fail_msg("%s\n%s", why, text);
  assert_true(prom_value(text, "cqrs_commands_total{type=\"ledger.open\",outcome=\"ok\",reason=\"\"}") == 1);
  assert_true(prom_value(text, "cqrs_commands_total{type=\"ledger.open\",outcome=\"rejected\","
                               "reason=\"ledger.already_open\"}") == 1);
  assert_true(prom_value(text, "cqrs_command_duration_seconds_count{type=\"ledger.open\"}") == 2);
  assert_true(prom_value(text, "cqrs_command_duration_seconds_bucket{type=\"ledger.open\",le=\"+Inf\"}") == 2);
  assert_true(prom_value(text, "cqrs_projection_position{projection=\"p\\\"q\\\\r\"}") == 1);
  assert_true(prom_value(text, "cqrs_head_position") == 1);
  assert_true(strstr(text, "# TYPE cqrs_command_duration_seconds histogram\n") != NULL);
  cqrs_metrics_text_free(text);
  cqrs_metrics_snapshot_destroy(s);
  /* the checker can fail */
  assert_false(prom_check("cqrs_x{a=\"1\" 2\n", why, sizeof why));
  assert_false(prom_check("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n", why, sizeof why));
}

static void test_bad_arguments(void **state) {
  fx_t *fx = *state;
  cqrs_error_t err;
  assert_int_equal(cqrs_dispatcher_use(NULL, &auth_mw, NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_dispatcher_use(fx->d, NULL, NULL, &err), CQRS_EINVAL);
  cqrs_middleware_t odd = {.reserved = {(void *)1}};
  assert_int_equal(cqrs_dispatcher_use(fx->d, &odd, NULL, &err), CQRS_EINVAL);
  static const cqrs_middleware_t nothing = {0};
  for (int i = 1; i < CQRS_MIDDLEWARE_MAX; i++) assert_int_equal(cqrs_dispatcher_use(fx->d, &nothing, NULL, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_use(fx->d, &nothing, NULL, &err), CQRS_ETOO_LARGE);
  assert_non_null(strstr(err.message, "at most"));
  assert_int_equal(cqrs_metrics_new(NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_metrics_attach(NULL, fx->d, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_metrics_snapshot(fx->m, NULL, &err), CQRS_EINVAL);
  cqrs_metrics_snapshot_t *s = NULL;
  assert_int_equal(cqrs_metrics_snapshot(NULL, &s, &err), CQRS_EINVAL);
  assert_null(s);
  assert_int_equal(cqrs_metrics_render(NULL, NULL, NULL, &err), CQRS_EINVAL);
  assert_null(cqrs_metrics_snapshot_get(NULL, 0));
  assert_int_equal(cqrs_metrics_snapshot_value(NULL, "x", NULL), 0);
  cqrs_metrics_destroy(NULL);
  cqrs_metrics_snapshot_destroy(NULL);
  /* Still counting, through the middleware that came first. */
  run_cmd(fx, ledger_open_new("b", "bo"));
  assert_int_equal(fx->done, 1);
  s = snap(fx);
  assert_int_equal(VALUE(s, "cqrs_commands_total", "outcome", "ok"), 1);
  cqrs_metrics_snapshot_destroy(s);
}

/* Allocation failures while counting and snapshotting: no crash, no leak. */
static int fail_at = -1, allocs;
static void *failing_malloc(size_t n) { return ++allocs == fail_at ? NULL : malloc(n); }
static void *failing_realloc(void *p, size_t n) { return ++allocs == fail_at ? NULL : realloc(p, n); }

static void test_allocation_failures(void **state) {
  (void)state;
  for (fail_at = 1; fail_at < 400; fail_at++) {
    fx_t *fx = fx_new(false, 20, false);
    cqrs_allocator_t a = {failing_malloc, failing_realloc, free};
    cqrs_command_t *cmd = ledger_open_new("f", "fay");
    allocs = 0;
    cqrs_set_allocator(&a);
    bool failed = false;
    if (cqrs_dispatcher_send(fx->d, cmd, on_done, fx) == CQRS_OK) uv_run(&fx->loop, UV_RUN_DEFAULT);
    cqrs_metrics_snapshot_t *s;
    char *text = NULL;
    size_t len;
    if (cqrs_metrics_snapshot(fx->m, &s, NULL) == CQRS_OK) {
      if (cqrs_metrics_render(s, &text, &len, NULL) == CQRS_OK) {
        cqrs_metrics_text_free(text);
      } else {
        failed = true;
      }
      cqrs_metrics_snapshot_destroy(s);
    } else {
      failed = true;
    }
    bool reached = allocs >= fail_at;
    cqrs_set_allocator(NULL);
    teardown((void **)&fx);
    if (!reached) break; /* every allocation on the path has been failed once */
    (void)failed;
  }
  assert_true(fail_at > 3);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_commands_by_outcome, setup, teardown),
      cmocka_unit_test_setup_teardown(test_conflicts_and_retries, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lag_returns_to_zero, setup_slow, teardown),
      cmocka_unit_test_setup_teardown(test_dead_letters_in_memory, setup, teardown),
      cmocka_unit_test_setup_teardown(test_dead_letters_with_sink, setup_sink, teardown),
      cmocka_unit_test_setup_teardown(test_queries_by_outcome, setup, teardown),
      cmocka_unit_test(test_store_errors_by_class),
      cmocka_unit_test(test_store_errors_permanent),
      cmocka_unit_test_setup_teardown(test_prometheus_text, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
      cmocka_unit_test(test_allocation_failures),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
