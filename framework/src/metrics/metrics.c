/* Metrics: a middleware of the command side and the query bus. Counting is
 * one look-up in an insert-only table (readers never lock; a new series is
 * added under a mutex) and relaxed atomic additions, so it may stay on from
 * any thread. Figures that live in the dispatcher (subscribers, the store)
 * are read when a snapshot is taken, on the loop thread. */
#include <math.h>
#include <stdio.h>

#include "events/events-private.h"

/* ---- series ---- */

#define SLOTS 4096     /* power of two */
#define MAX_SERIES 2048 /* keeps probe sequences short; past it, series are dropped and counted */

typedef enum family {
  F_COMMANDS,
  F_COMMAND_DURATION,
  F_CONFLICTS,
  F_RETRIES,
  F_QUERIES,
  F_QUERY_DURATION,
  F_EVENTS,
  F_PENDING,
  F_POSITION,
  F_LAG_POSITIONS,
  F_LAG_SECONDS,
  F_PROJECTION_RETRIES,
  F_DEAD_LETTERS,
  F_PARKED,
  F_STORE_CALLS,
  F_STORE_ERRORS,
  F_HEAD,
  F_LEASES,
  F_DROPPED,
  F_COUNT
} family_t;

static const struct {
  const char *name, *help;
  cqrs_metric_kind_t kind;
  const char *labels[CQRS_METRICS_LABELS];
} families[F_COUNT] = {
    [F_COMMANDS] = {"cqrs_commands_total", "Commands completed, by type and outcome (ok, rejected, error) and reason",
                    CQRS_METRIC_COUNTER, {"type", "outcome", "reason"}},
    [F_COMMAND_DURATION] = {"cqrs_command_duration_seconds", "Command handling time, from handler look-up to completion",
                            CQRS_METRIC_HISTOGRAM, {"type"}},
    [F_CONFLICTS] = {"cqrs_command_conflicts_total", "Commits refused for a concurrency conflict", CQRS_METRIC_COUNTER,
                     {NULL}},
    [F_RETRIES] = {"cqrs_command_retries_total", "Handler re-runs after a conflict", CQRS_METRIC_COUNTER, {NULL}},
    [F_QUERIES] = {"cqrs_queries_total", "Queries answered, by name and outcome (ok, error)", CQRS_METRIC_COUNTER,
                   {"name", "outcome"}},
    [F_QUERY_DURATION] = {"cqrs_query_duration_seconds", "Query time", CQRS_METRIC_HISTOGRAM, {"name"}},
    [F_EVENTS] = {"cqrs_events_published_total", "Events committed by this process's commands and published",
                  CQRS_METRIC_COUNTER, {NULL}},
    [F_PENDING] = {"cqrs_commands_pending", "Commands sent and not yet completed", CQRS_METRIC_GAUGE, {NULL}},
    [F_POSITION] = {"cqrs_projection_position", "Last event position a subscriber handled", CQRS_METRIC_GAUGE,
                    {"projection"}},
    [F_LAG_POSITIONS] = {"cqrs_projection_lag_positions", "Events between the head and what a subscriber handled",
                         CQRS_METRIC_GAUGE, {"projection"}},
    [F_LAG_SECONDS] = {"cqrs_projection_lag_seconds",
                       "Age of the oldest event a subscriber holds and has not handled; 0 when caught up",
                       CQRS_METRIC_GAUGE, {"projection"}},
    [F_PROJECTION_RETRIES] = {"cqrs_projection_retries_total", "Failed deliveries to a subscriber",
                              CQRS_METRIC_COUNTER, {"projection"}},
    [F_DEAD_LETTERS] = {"cqrs_dead_letters_total", "Events a subscriber gave up on", CQRS_METRIC_COUNTER,
                        {"subscriber"}},
    [F_PARKED] = {"cqrs_projection_parked_events",
                  "Events a projection set aside: a poison event retried off its path, and those of its stream behind it",
                  CQRS_METRIC_GAUGE, {"projection"}},
    [F_STORE_CALLS] = {"cqrs_store_calls_total", "Event store calls, by operation", CQRS_METRIC_COUNTER, {"op"}},
    [F_STORE_ERRORS] = {"cqrs_store_errors_total", "Event store failures, by operation and class",
                        CQRS_METRIC_COUNTER, {"op", "class"}},
    [F_HEAD] = {"cqrs_head_position", "Highest event position this process knows of", CQRS_METRIC_GAUGE, {NULL}},
    [F_LEASES] = {"cqrs_leases_held", "Projection and process-manager leases this dispatcher holds (with leases on)",
                  CQRS_METRIC_GAUGE, {NULL}},
    [F_DROPPED] = {"cqrs_metrics_series_dropped_total", "Observations lost because the series table was full",
                   CQRS_METRIC_COUNTER, {NULL}},
};

static const char *const store_ops[CQRS__STORE_OPS] = {
    [CQRS__STORE_APPEND] = "append",
    [CQRS__STORE_READ_STREAM] = "read_stream",
    [CQRS__STORE_READ_ALL] = "read_all",
    [CQRS__STORE_HEAD] = "head",
    [CQRS__STORE_SNAPSHOT_LOAD] = "snapshot_load",
    [CQRS__STORE_SNAPSHOT_SAVE] = "snapshot_save",
    [CQRS__STORE_HAS_COMMAND] = "has_command",
    [CQRS__STORE_APPEND_MANY] = "append_many",
};

static const uint64_t bounds_ns[CQRS_METRICS_BUCKETS - 1] = {
    10000,     25000,     50000,     100000,     250000,     500000,     1000000,
    2500000,   5000000,   10000000,  25000000,   50000000,   100000000,  250000000,
    500000000, 1000000000, 2500000000, 5000000000, 10000000000};

double cqrs_metrics_bucket_bound(size_t i) {
  return i < CQRS_METRICS_BUCKETS - 1 ? (double)bounds_ns[i] / 1e9 : (double)INFINITY;
}

typedef struct series {
  family_t family;
  uint32_t hash;
  char labels[CQRS_METRICS_LABELS][CQRS_NAME_MAX];
  _Atomic uint64_t value; /* counters; histograms: observations */
  _Atomic uint64_t sum_ns;
  _Atomic uint64_t buckets[CQRS_METRICS_BUCKETS]; /* not cumulative */
} series_t;

/* The hot path, a command that succeeded, finds its two series by the type
 * pointer: no hashing of names. Entries are set once and kept. */
#define TYPE_CACHE 256
typedef struct type_entry {
  const cqrs_command_type_t *type;
  series_t *ok, *duration;
} type_entry_t;

struct cqrs_metrics {
  _Atomic(series_t *) slots[SLOTS];
  _Atomic(type_entry_t *) types[TYPE_CACHE];
  uv_mutex_t lock; /* taken only to add a series */
  size_t nseries;
  _Atomic uint64_t conflicts, retries, events, dropped;
  cqrs_dispatcher_t *d;
};

static uint32_t hash_labels(family_t f, const char *const *labels) {
  uint32_t h = 2166136261u ^ (uint32_t)f;
  for (size_t i = 0; i < CQRS_METRICS_LABELS; i++) {
    for (const char *p = labels[i]; p && *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
    h = (h ^ 0xffu) * 16777619u;
  }
  return h;
}

static bool same(const series_t *s, family_t f, uint32_t h, const char *const *labels) {
  if (s->hash != h || s->family != f) return false;
  for (size_t i = 0; i < CQRS_METRICS_LABELS; i++) {
    if (strncmp(s->labels[i], labels[i] ? labels[i] : "", CQRS_NAME_MAX - 1)) return false;
  }
  return true;
}

/* Finds the series, adding it when new; NULL (counted) when full or out of
 * memory. Any thread. */
static series_t *lookup(cqrs_metrics_t *m, family_t f, const char *l0, const char *l1, const char *l2) {
  const char *labels[CQRS_METRICS_LABELS] = {l0, l1, l2};
  uint32_t h = hash_labels(f, labels);
  size_t i = h & (SLOTS - 1);
  for (;; i = (i + 1) & (SLOTS - 1)) {
    series_t *s = atomic_load_explicit(&m->slots[i], memory_order_acquire);
    if (!s) break;
    if (same(s, f, h, labels)) return s;
  }
  series_t *found = NULL;
  uv_mutex_lock(&m->lock);
  for (;; i = (i + 1) & (SLOTS - 1)) { /* from where the lock-free probe stopped */
    series_t *s = atomic_load_explicit(&m->slots[i], memory_order_relaxed);
    if (!s) break;
    if (same(s, f, h, labels)) {
      found = s;
      break;
    }
  }
  if (!found && m->nseries < MAX_SERIES && (found = cqrs__calloc(1, sizeof *found))) {
    found->family = f;
    found->hash = h;
    for (size_t k = 0; k < CQRS_METRICS_LABELS; k++)
      snprintf(found->labels[k], sizeof found->labels[k], "%s", labels[k] ? labels[k] : "");
    atomic_store_explicit(&m->slots[i], found, memory_order_release);
    m->nseries++;
  }
  uv_mutex_unlock(&m->lock);
  if (!found) atomic_fetch_add_explicit(&m->dropped, 1, memory_order_relaxed);
  return found;
}

static void add(series_t *s, uint64_t n) {
  if (s) atomic_fetch_add_explicit(&s->value, n, memory_order_relaxed);
}

static void observe(series_t *s, uint64_t ns) {
  if (!s) return;
  size_t b = 0;
  while (b < CQRS_METRICS_BUCKETS - 1 && ns > bounds_ns[b]) b++;
  atomic_fetch_add_explicit(&s->buckets[b], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&s->sum_ns, ns, memory_order_relaxed);
  atomic_fetch_add_explicit(&s->value, 1, memory_order_relaxed);
}

/* ---- the metrics middleware ---- */

static type_entry_t *type_entry(cqrs_metrics_t *m, const cqrs_command_type_t *type) {
  _Atomic(type_entry_t *) *slot = &m->types[((uintptr_t)type >> 4) % TYPE_CACHE];
  type_entry_t *e = atomic_load_explicit(slot, memory_order_acquire);
  if (e) return e->type == type ? e : NULL;
  if (!(e = cqrs__malloc(sizeof *e))) return NULL;
  e->type = type;
  e->ok = lookup(m, F_COMMANDS, type->name, "ok", "");
  e->duration = lookup(m, F_COMMAND_DURATION, type->name, NULL, NULL);
  type_entry_t *none = NULL;
  if (!e->ok || !e->duration || !atomic_compare_exchange_strong(slot, &none, e)) {
    cqrs__free(e); /* another thread won, or a type shares the slot: the slow path serves it */
    return none && none->type == type ? none : NULL;
  }
  return e;
}

static void on_command(const cqrs_command_t *cmd, const cqrs_result_t *r, const cqrs_command_stats_t *st,
                       void *data) {
  cqrs_metrics_t *m = data;
  const char *type = cmd->type->name;
  cqrs_code_t code = r->error.code;
  type_entry_t *te = type_entry(m, cmd->type);
  if (code == CQRS_OK) {
    add(te ? te->ok : lookup(m, F_COMMANDS, type, "ok", ""), 1);
    if (!r->duplicate && r->events) atomic_fetch_add_explicit(&m->events, r->events, memory_order_relaxed);
  } else if (code == CQRS_EREJECTED) {
    add(lookup(m, F_COMMANDS, type, "rejected", r->error.name), 1);
  } else {
    add(lookup(m, F_COMMANDS, type, "error", cqrs_code_name(code)), 1);
  }
  observe(te ? te->duration : lookup(m, F_COMMAND_DURATION, type, NULL, NULL), st->duration_ns);
  if (st->conflicts) {
    atomic_fetch_add_explicit(&m->conflicts, st->conflicts, memory_order_relaxed);
    unsigned reruns = st->conflicts - (code == CQRS_ECONFLICT ? 1 : 0);
    atomic_fetch_add_explicit(&m->retries, reruns, memory_order_relaxed);
  }
}

/* A query that finds nothing has answered: only failures count as errors. */
static void on_query(const char *name, cqrs_code_t code, const cqrs_error_t *err, uint64_t ns, void *data) {
  (void)err;
  cqrs_metrics_t *m = data;
  add(lookup(m, F_QUERIES, name, code == CQRS_OK || code == CQRS_ENOT_FOUND ? "ok" : "error", NULL), 1);
  observe(lookup(m, F_QUERY_DURATION, name, NULL, NULL), ns);
}

static const cqrs_middleware_t metrics_mw = {.command_after = on_command, .query_after = on_query};

cqrs_code_t cqrs_metrics_new(cqrs_metrics_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  cqrs_metrics_t *m = cqrs__calloc(1, sizeof *m);
  if (!m) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate metrics");
  if (uv_mutex_init(&m->lock)) {
    cqrs__free(m);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot create a mutex");
  }
  *out = m;
  return CQRS_OK;
}

void cqrs_metrics_destroy(cqrs_metrics_t *m) {
  if (!m) return;
  for (size_t i = 0; i < SLOTS; i++) cqrs__free(atomic_load(&m->slots[i]));
  for (size_t i = 0; i < TYPE_CACHE; i++) cqrs__free(atomic_load(&m->types[i]));
  uv_mutex_destroy(&m->lock);
  cqrs__free(m);
}

cqrs_code_t cqrs_metrics_attach(cqrs_metrics_t *m, cqrs_dispatcher_t *d, cqrs_error_t *err) {
  if (!m || !d) return cqrs_error_set(err, CQRS_EINVAL, "NULL metrics or dispatcher");
  if (m->d) return cqrs_error_set(err, CQRS_ESTATE, "these metrics already watch a dispatcher");
  cqrs_code_t rc = cqrs_dispatcher_use(d, &metrics_mw, m, err);
  if (rc) return rc;
  m->d = d;
  return CQRS_OK;
}

cqrs_code_t cqrs_metrics_attach_queries(cqrs_metrics_t *m, cqrs_queries_t *q, cqrs_error_t *err) {
  if (!m || !q) return cqrs_error_set(err, CQRS_EINVAL, "NULL metrics or query bus");
  return cqrs_queries_use(q, &metrics_mw, m, err);
}

/* ---- snapshots ---- */

struct cqrs_metrics_snapshot {
  cqrs_metric_t *items;
  size_t len, cap;
};

static cqrs_metric_t *push(cqrs_metrics_snapshot_t *s, family_t f, const char *l0, const char *l1) {
  if (s->len == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 64;
    cqrs_metric_t *p = cqrs__realloc(s->items, cap * sizeof *p);
    if (!p) return NULL;
    s->items = p;
    s->cap = cap;
  }
  cqrs_metric_t *x = &s->items[s->len++];
  memset(x, 0, sizeof *x);
  x->name = families[f].name;
  x->help = families[f].help;
  x->kind = families[f].kind;
  while (x->nlabels < CQRS_METRICS_LABELS && families[f].labels[x->nlabels]) {
    x->label_names[x->nlabels] = families[f].labels[x->nlabels];
    x->nlabels++;
  }
  const char *given[2] = {l0, l1};
  for (size_t i = 0; i < 2 && i < x->nlabels; i++)
    snprintf(x->label_values[i], sizeof x->label_values[i], "%s", given[i] ? given[i] : "");
  return x;
}

static int by_labels(const void *a, const void *b) {
  const cqrs_metric_t *x = a, *y = b;
  for (size_t i = 0; i < CQRS_METRICS_LABELS; i++) {
    int c = strcmp(x->label_values[i], y->label_values[i]);
    if (c) return c;
  }
  return 0;
}

/* Copies the table's series of family f, sorted by labels. */
static bool copy_family(const cqrs_metrics_t *m, cqrs_metrics_snapshot_t *s, family_t f) {
  size_t first = s->len;
  for (size_t i = 0; i < SLOTS; i++) {
    series_t *se = atomic_load_explicit((_Atomic(series_t *) *)&m->slots[i], memory_order_acquire);
    if (!se || se->family != f) continue;
    cqrs_metric_t *x = push(s, f, NULL, NULL);
    if (!x) return false;
    memcpy(x->label_values, se->labels, sizeof x->label_values);
    uint64_t n = atomic_load_explicit(&se->value, memory_order_relaxed);
    x->value = (double)n;
    if (x->kind == CQRS_METRIC_HISTOGRAM) {
      uint64_t cum = 0;
      for (size_t b = 0; b < CQRS_METRICS_BUCKETS; b++) {
        cum += atomic_load_explicit(&se->buckets[b], memory_order_relaxed);
        x->buckets[b] = cum;
      }
      /* Observations racing with the copy: keep count and +Inf equal. */
      x->count = cum;
      x->value = (double)cum;
      x->sum = (double)atomic_load_explicit(&se->sum_ns, memory_order_relaxed) / 1e9;
    }
  }
  if (s->len > first) qsort(s->items + first, s->len - first, sizeof *s->items, by_labels);
  return true;
}

static bool scalar(cqrs_metrics_snapshot_t *s, family_t f, double v) {
  cqrs_metric_t *x = push(s, f, NULL, NULL);
  if (x) x->value = v;
  return x != NULL;
}

static uint64_t load(const _Atomic uint64_t *a) { return atomic_load_explicit(a, memory_order_relaxed); }

static int64_t head_of(const cqrs_dispatcher_t *d) {
  int64_t head = atomic_load_explicit(&d->store->head_seen, memory_order_relaxed);
  int64_t feed = cqrs__events_feed_position(d);
  return feed > head ? feed : head;
}

static bool subscribers(const cqrs_metrics_t *m, cqrs_metrics_snapshot_t *s) {
  const cqrs_dispatcher_t *d = m->d;
  int64_t head = head_of(d), now = cqrs__clock_wall(d->clock);
  static const family_t per_sub[] = {F_POSITION,           F_LAG_POSITIONS, F_LAG_SECONDS,
                                     F_PROJECTION_RETRIES, F_DEAD_LETTERS,  F_PARKED};
  for (size_t k = 0; k < sizeof per_sub / sizeof per_sub[0]; k++) {
    cqrs__sub_figures_t fig;
    for (size_t i = 0; cqrs__events_sub_figures(d, i, &fig); i++) {
      cqrs_metric_t *x = push(s, per_sub[k], fig.name, NULL);
      if (!x) return false;
      int64_t behind = head > fig.handled_up_to ? head - fig.handled_up_to : 0;
      switch (per_sub[k]) {
        case F_POSITION: x->value = (double)fig.position; break;
        case F_LAG_POSITIONS: x->value = (double)behind; break;
        case F_LAG_SECONDS:
          x->value = behind && fig.oldest_pending_ts && now > fig.oldest_pending_ts
                         ? (double)(now - fig.oldest_pending_ts) / 1000.0
                         : 0.0;
          break;
        case F_PROJECTION_RETRIES: x->value = (double)fig.retries; break;
        case F_PARKED: x->value = (double)fig.parked; break;
        default: x->value = (double)fig.dead_letters; break;
      }
    }
  }
  return true;
}

static bool store_figures(const cqrs_store_t *st, cqrs_metrics_snapshot_t *s) {
  for (size_t op = 0; op < CQRS__STORE_OPS; op++) {
    cqrs_metric_t *x = push(s, F_STORE_CALLS, store_ops[op], NULL);
    if (!x) return false;
    x->value = (double)load(&st->calls[op]);
  }
  for (size_t op = 0; op < CQRS__STORE_OPS; op++) {
    for (size_t c = 0; c < 2; c++) {
      cqrs_metric_t *x = push(s, F_STORE_ERRORS, store_ops[op], c ? "permanent" : "transient");
      if (!x) return false;
      x->value = (double)load(&st->errors[op][c]);
    }
  }
  return true;
}

cqrs_code_t cqrs_metrics_snapshot(const cqrs_metrics_t *m, cqrs_metrics_snapshot_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  if (!m) return cqrs_error_set(err, CQRS_EINVAL, "NULL metrics");
  cqrs_metrics_snapshot_t *s = cqrs__calloc(1, sizeof *s);
  bool ok = s && copy_family(m, s, F_COMMANDS) && copy_family(m, s, F_COMMAND_DURATION) &&
            scalar(s, F_CONFLICTS, (double)load(&m->conflicts)) && scalar(s, F_RETRIES, (double)load(&m->retries)) &&
            copy_family(m, s, F_QUERIES) && copy_family(m, s, F_QUERY_DURATION) &&
            scalar(s, F_EVENTS, (double)load(&m->events));
  if (ok && m->d) {
    ok = scalar(s, F_PENDING, (double)cqrs_dispatcher_pending(m->d)) && subscribers(m, s) &&
         store_figures(m->d->store, s) && scalar(s, F_HEAD, (double)head_of(m->d)) &&
         (!m->d->leasing || scalar(s, F_LEASES, (double)cqrs__leases_held(m->d->leasing)));
  }
  if (ok) ok = scalar(s, F_DROPPED, (double)load(&m->dropped));
  if (!ok) {
    cqrs_metrics_snapshot_destroy(s);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot take a snapshot of the metrics");
  }
  *out = s;
  return CQRS_OK;
}

void cqrs_metrics_snapshot_destroy(cqrs_metrics_snapshot_t *s) {
  if (!s) return;
  cqrs__free(s->items);
  cqrs__free(s);
}

size_t cqrs_metrics_snapshot_count(const cqrs_metrics_snapshot_t *s) { return s ? s->len : 0; }

const cqrs_metric_t *cqrs_metrics_snapshot_get(const cqrs_metrics_snapshot_t *s, size_t i) {
  return s && i < s->len ? &s->items[i] : NULL;
}

static bool has_label(const cqrs_metric_t *x, const char *label, const char *value) {
  for (size_t i = 0; i < x->nlabels; i++) {
    if (!strcmp(x->label_names[i], label)) return !strcmp(x->label_values[i], value);
  }
  return false;
}

double cqrs_metrics_snapshot_value(const cqrs_metrics_snapshot_t *s, const char *name, ...) {
  if (!s || !name) return 0;
  double sum = 0;
  for (size_t i = 0; i < s->len; i++) {
    const cqrs_metric_t *x = &s->items[i];
    if (strcmp(x->name, name)) continue;
    va_list ap;
    va_start(ap, name);
    bool match = true;
    for (const char *label; match && (label = va_arg(ap, const char *));) {
      const char *value = va_arg(ap, const char *);
      match = value && has_label(x, label, value);
    }
    va_end(ap);
    if (match) sum += x->kind == CQRS_METRIC_HISTOGRAM ? (double)x->count : x->value;
  }
  return sum;
}

/* ---- Prometheus text format 0.0.4 ---- */

typedef struct buf {
  char *p;
  size_t len, cap;
  bool failed;
} buf_t;

static void put(buf_t *b, const char *fmt, ...) CQRS_PRINTF(2, 3);
static void put(buf_t *b, const char *fmt, ...) {
  if (b->failed) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
      b->failed = true;
      return;
    }
    if ((size_t)n < b->cap - b->len) {
      b->len += (size_t)n;
      return;
    }
    size_t cap = (b->cap + (size_t)n + 1) * 2;
    char *p = cqrs__realloc(b->p, cap);
    if (!p) {
      b->failed = true;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
}

static void put_escaped(buf_t *b, const char *v) {
  for (; *v; v++) {
    if (*v == '\\') put(b, "\\\\");
    else if (*v == '"') put(b, "\\\"");
    else if (*v == '\n') put(b, "\\n");
    else put(b, "%c", *v);
  }
}

/* {a="x",b="y"[,le="..."]} or nothing */
static void put_labels(buf_t *b, const cqrs_metric_t *x, const char *le) {
  if (!x->nlabels && !le) return;
  put(b, "{");
  for (size_t i = 0; i < x->nlabels; i++) {
    put(b, "%s%s=\"", i ? "," : "", x->label_names[i]);
    put_escaped(b, x->label_values[i]);
    put(b, "\"");
  }
  if (le) put(b, "%sle=\"%s\"", x->nlabels ? "," : "", le);
  put(b, "}");
}

static void put_value(buf_t *b, double v) {
  if (v == (double)(int64_t)v && v < 9e15 && v > -9e15) {
    put(b, " %lld\n", (long long)v);
  } else {
    put(b, " %.9g\n", v);
  }
}

cqrs_code_t cqrs_metrics_render(const cqrs_metrics_snapshot_t *s, char **out, size_t *len, cqrs_error_t *err) {
  if (!s || !out || !len) return cqrs_error_set(err, CQRS_EINVAL, "NULL snapshot or output");
  *out = NULL;
  *len = 0;
  buf_t b = {cqrs__malloc(4096), 0, 4096, false};
  if (!b.p) return cqrs_error_set(err, CQRS_ENOMEM, "cannot render the metrics");
  const char *family = NULL;
  for (size_t i = 0; i < s->len; i++) {
    const cqrs_metric_t *x = &s->items[i];
    if (!family || strcmp(family, x->name)) {
      family = x->name;
      static const char *const kinds[] = {"counter", "gauge", "histogram"};
      put(&b, "# HELP %s %s\n# TYPE %s %s\n", x->name, x->help, x->name, kinds[x->kind]);
    }
    if (x->kind != CQRS_METRIC_HISTOGRAM) {
      put(&b, "%s", x->name);
      put_labels(&b, x, NULL);
      put_value(&b, x->value);
      continue;
    }
    for (size_t k = 0; k < CQRS_METRICS_BUCKETS; k++) {
      char le[32];
      if (k < CQRS_METRICS_BUCKETS - 1) {
        snprintf(le, sizeof le, "%g", cqrs_metrics_bucket_bound(k));
      } else {
        snprintf(le, sizeof le, "+Inf");
      }
      put(&b, "%s_bucket", x->name);
      put_labels(&b, x, le);
      put_value(&b, (double)x->buckets[k]);
    }
    put(&b, "%s_sum", x->name);
    put_labels(&b, x, NULL);
    put_value(&b, x->sum);
    put(&b, "%s_count", x->name);
    put_labels(&b, x, NULL);
    put_value(&b, (double)x->count);
  }
  if (b.failed) {
    cqrs__free(b.p);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot render the metrics");
  }
  *out = b.p;
  *len = b.len;
  return CQRS_OK;
}

void cqrs_metrics_text_free(char *text) { cqrs__free(text); }
