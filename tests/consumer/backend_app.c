/* Links cqrs::conformance: two small backends written against cqrs/backend.h
 * alone, as a backend author would start one (an event store without
 * snapshots, fenced checkpoints, both in memory behind one lock each), pass
 * the suites of their interfaces. Exits with the number of failed tests. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include <cqrs/conformance.h>

/* ---- an event store: the events appended, in position order ---- */

typedef struct log {
  uv_mutex_t lock;
  const cqrs_event_t **events; /* a reference each; events[i] is at position i + 1 */
  char (*commands)[CQRS_ID_MAX]; /* commands[i]: the command id of events[i]'s commit */
  size_t len, cap;
} log_t;

static int64_t stream_version(const log_t *l, const char *type, const char *id) {
  int64_t v = 0;
  for (size_t i = 0; i < l->len; i++) {
    const cqrs_event_t *e = l->events[i];
    if (!strcmp(cqrs_event_aggregate_type(e), type) && !strcmp(cqrs_event_aggregate_id(e), id)) v = e->version;
  }
  return v;
}

static bool committed(const log_t *l, const char *command_id) {
  for (size_t i = 0; i < l->len; i++)
    if (!strcmp(l->commands[i], command_id)) return true;
  return false;
}

static bool grow(log_t *l, size_t need) {
  if (need <= l->cap) return true;
  size_t cap = need * 2;
  const cqrs_event_t **events = realloc((void *)l->events, cap * sizeof *events);
  if (events) l->events = events;
  char(*commands)[CQRS_ID_MAX] = events ? realloc(l->commands, cap * sizeof *commands) : NULL;
  if (commands) l->commands = commands;
  if (commands) l->cap = cap;
  return commands != NULL;
}

static cqrs_code_t log_append(void *impl, const cqrs_append_t *req, cqrs_append_result_t *res, cqrs_error_t *err) {
  log_t *l = impl;
  cqrs_code_t rc = CQRS_OK;
  uv_mutex_lock(&l->lock);
  if (committed(l, req->command_id)) {
    res->duplicate = true;
  } else if (stream_version(l, req->aggregate_type, req->aggregate_id) != req->expected_version) {
    rc = cqrs_error_set(err, CQRS_ECONFLICT, "%s/%s has moved past version %lld", req->aggregate_type,
                        req->aggregate_id, (long long)req->expected_version);
  } else if (!grow(l, l->len + req->count)) {
    rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot grow the log");
  }
  if (!rc && !res->duplicate) {
    res->first_position = (int64_t)l->len + 1;
    for (size_t i = 0; i < req->count; i++) {
      req->events[i]->position = (int64_t)l->len + 1;
      snprintf(l->commands[l->len], CQRS_ID_MAX, "%s", req->command_id); /* checked: below CQRS_ID_MAX */
      l->events[l->len++] = cqrs_event_ref(req->events[i]);
    }
    res->last_position = (int64_t)l->len;
  }
  uv_mutex_unlock(&l->lock);
  return rc;
}

/* Takes a reference on the events to visit under the lock, then visits them
 * outside it, so that a visitor may call the store again. */
static cqrs_code_t visit(log_t *l, const char *type, const char *id, int64_t from, size_t limit,
                         cqrs_event_visit_cb cb, void *data, cqrs_error_t *err) {
  uv_mutex_lock(&l->lock);
  const cqrs_event_t **picked = malloc((l->len ? l->len : 1) * sizeof *picked);
  size_t n = 0;
  for (size_t i = 0; picked && i < l->len && n < limit; i++) {
    const cqrs_event_t *e = l->events[i];
    if (type ? strcmp(cqrs_event_aggregate_type(e), type) || strcmp(cqrs_event_aggregate_id(e), id) || e->version < from
             : e->position < from)
      continue;
    picked[n++] = cqrs_event_ref(e);
  }
  uv_mutex_unlock(&l->lock);
  if (!picked) return cqrs_error_set(err, CQRS_ENOMEM, "cannot read the log");
  bool go = true;
  for (size_t i = 0; i < n; i++) {
    if (go) go = cb(picked[i], data);
    cqrs_event_unref(picked[i]);
  }
  free((void *)picked);
  return CQRS_OK;
}

static cqrs_code_t log_read_stream(void *impl, const char *type, const char *id, int64_t from_version,
                                   cqrs_event_visit_cb cb, void *data, cqrs_error_t *err) {
  return visit(impl, type, id, from_version, SIZE_MAX, cb, data, err);
}

static cqrs_code_t log_read_all(void *impl, int64_t from_position, size_t limit, cqrs_event_visit_cb cb, void *data,
                                cqrs_error_t *err) {
  return visit(impl, NULL, NULL, from_position, limit, cb, data, err);
}

static cqrs_code_t log_head(void *impl, int64_t *position, cqrs_error_t *err) {
  (void)err;
  log_t *l = impl;
  uv_mutex_lock(&l->lock);
  *position = (int64_t)l->len;
  uv_mutex_unlock(&l->lock);
  return CQRS_OK;
}

static void log_destroy(void *impl) {
  log_t *l = impl;
  for (size_t i = 0; i < l->len; i++) cqrs_event_unref(l->events[i]);
  free((void *)l->events);
  free(l->commands);
  uv_mutex_destroy(&l->lock);
  free(l);
}

static const cqrs_store_ops_t log_ops = {.name = "consumer log", .blocking = false, .append = log_append,
                                         .read_stream = log_read_stream, .read_all = log_read_all,
                                         .head = log_head, .destroy = log_destroy};

static cqrs_store_t *make_store(const cqrs_registry_t *reg, void *data) {
  (void)reg, (void)data; /* the events are kept as they came: nothing to decode */
  log_t *l = calloc(1, sizeof *l);
  if (!l || uv_mutex_init(&l->lock)) {
    free(l);
    return NULL;
  }
  cqrs_store_t *s = NULL;
  cqrs_store_new(&log_ops, l, &s, NULL); /* takes `l` over, even when it fails */
  return s;
}

/* ---- fenced checkpoints: a short list of names ---- */

typedef struct mark {
  struct mark *next;
  int64_t position, token; /* token: the highest that wrote, 0 for none */
  char name[CQRS_NAME_MAX];
} mark_t;

typedef struct marks {
  uv_mutex_t lock;
  mark_t *head;
} marks_t;

static mark_t *find_mark(marks_t *m, const char *name) {
  mark_t *k = m->head;
  while (k && strcmp(k->name, name)) k = k->next;
  return k;
}

static cqrs_code_t marks_load(void *impl, const char *name, int64_t *position, cqrs_error_t *err) {
  (void)err;
  marks_t *m = impl;
  uv_mutex_lock(&m->lock);
  mark_t *k = find_mark(m, name);
  *position = k ? k->position : 0;
  uv_mutex_unlock(&m->lock);
  return CQRS_OK;
}

static cqrs_code_t marks_save_fenced(void *impl, const char *name, int64_t position, int64_t token,
                                     cqrs_error_t *err) {
  marks_t *m = impl;
  cqrs_code_t rc = CQRS_OK;
  uv_mutex_lock(&m->lock);
  mark_t *k = find_mark(m, name);
  if (!k && (k = calloc(1, sizeof *k))) {
    snprintf(k->name, sizeof k->name, "%s", name); /* the checked calls keep names below CQRS_NAME_MAX */
    k->next = m->head;
    m->head = k;
  }
  if (!k) {
    rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot save checkpoint %s", name);
  } else if (token && token < k->token) {
    rc = cqrs_error_set(err, CQRS_ECONFLICT, "checkpoint %s: token %lld is fenced off by %lld", name,
                        (long long)token, (long long)k->token);
  } else {
    k->position = position;
    if (token) k->token = token;
  }
  uv_mutex_unlock(&m->lock);
  return rc;
}

static cqrs_code_t marks_save(void *impl, const char *name, int64_t position, cqrs_error_t *err) {
  return marks_save_fenced(impl, name, position, 0, err);
}

static void marks_destroy(void *impl) {
  marks_t *m = impl;
  while (m->head) {
    mark_t *k = m->head;
    m->head = k->next;
    free(k);
  }
  uv_mutex_destroy(&m->lock);
  free(m);
}

static const cqrs_checkpoint_ops_t marks_ops = {.blocking = false, .load = marks_load, .save = marks_save,
                                                .destroy = marks_destroy, .save_fenced = marks_save_fenced};

static cqrs_checkpoints_t *make_checkpoints(void *data) {
  (void)data;
  marks_t *m = calloc(1, sizeof *m);
  if (!m || uv_mutex_init(&m->lock)) {
    free(m);
    return NULL;
  }
  cqrs_checkpoints_t *cp = NULL;
  cqrs_checkpoints_new(&marks_ops, m, &cp, NULL);
  return cp;
}

int main(void) {
  int failures = cqrs_conformance_store(&(cqrs_store_factory_t){
      .name = "consumer log", .create = make_store, .without_snapshots = true, .without_command_lookup = true});
  failures += cqrs_conformance_checkpoints(
      &(cqrs_checkpoints_factory_t){.name = "consumer checkpoints", .create = make_checkpoints, .without_controls = true});
  printf("%s: %d failed\n", failures ? "FAILED" : "ok", failures);
  return failures;
}
