#include "store/keys-private.h"

cqrs_code_t cqrs_store_new(const cqrs_store_ops_t *ops, void *impl, cqrs_store_t **out, cqrs_error_t *err) {
  cqrs_code_t rc = CQRS_OK;
  cqrs_store_t *s = NULL;
  if (!out) {
    rc = cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  } else if (!ops || !ops->append || !ops->read_stream || !ops->read_all || !ops->head) {
    rc = cqrs_error_set(err, CQRS_EINVAL, "NULL ops or a missing append, read_stream, read_all or head");
  } else if (!CQRS__RESERVED_ZERO(ops)) {
    rc = cqrs_error_set(err, CQRS_EINVAL, "ops: reserved fields must be zero");
  } else if (!(s = cqrs__calloc(1, sizeof *s))) {
    rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate a store");
  }
  if (out) *out = s;
  if (rc) {
    if (ops && ops->destroy) ops->destroy(impl);
    return rc;
  }
  s->ops = ops;
  s->impl = impl;
  return CQRS_OK;
}

void cqrs_store_destroy(cqrs_store_t *s) {
  if (!s) return;
  if (s->ops->destroy) s->ops->destroy(s->impl);
  cqrs__free(s);
}

/* A key store that does I/O makes the store's calls block too. */
bool cqrs_store_blocking(const cqrs_store_t *s) { return s && (s->ops->blocking || cqrs_keys_blocking(s->keys)); }
void *cqrs_store_impl(const cqrs_store_t *s) { return s ? s->impl : NULL; }

/* Counts a call that reached the implementation. A conflict is an answer,
 * not a failure; a failure is transient as its error says (a CQRS_ESTORE
 * the implementation marked permanent is not). `err` is the one the
 * implementation filled: never NULL here (see err_or). */
static cqrs_code_t counted(cqrs_store_t *s, cqrs__store_op_t op, cqrs_code_t rc, const cqrs_error_t *err) {
  atomic_fetch_add_explicit(&s->calls[op], 1, memory_order_relaxed);
  if (rc != CQRS_OK && rc != CQRS_ECONFLICT) {
    bool transient = rc == CQRS_ESTORE && (err->code != CQRS_ESTORE || cqrs_error_transient(err));
    atomic_fetch_add_explicit(&s->errors[op][transient ? 0 : 1], 1, memory_order_relaxed);
  }
  return rc;
}

/* The error an implementation fills: the caller's, or `own` when the
 * caller passed none, so that a failure's class can still be counted. */
static cqrs_error_t *err_or(cqrs_error_t *err, cqrs_error_t *own) {
  if (err) return err;
  cqrs_error_clear(own);
  return own;
}

static void saw_position(cqrs_store_t *s, int64_t position) {
  int64_t seen = atomic_load_explicit(&s->head_seen, memory_order_relaxed);
  while (position > seen &&
         !atomic_compare_exchange_weak_explicit(&s->head_seen, &seen, position, memory_order_relaxed,
                                                memory_order_relaxed)) {
  }
}

static cqrs_code_t check_stream(const char *type, const char *id, cqrs_error_t *err) {
  cqrs_code_t rc = cqrs__check_str(type, CQRS_NAME_MAX, "aggregate type", err);
  return rc ? rc : cqrs__check_str(id, CQRS_ID_MAX, "aggregate id", err);
}

cqrs_code_t cqrs_store_append(cqrs_store_t *s, const cqrs_append_t *req, cqrs_append_result_t *res,
                              cqrs_error_t *err) {
  if (!s || !req || !res) return cqrs_error_set(err, CQRS_EINVAL, "NULL store, request or result");
  memset(res, 0, sizeof *res);
  cqrs_code_t rc = check_stream(req->aggregate_type, req->aggregate_id, err);
  if (rc) return rc;
  if ((rc = cqrs__check_str(req->command_id, CQRS_ID_MAX, "command id", err))) return rc;
  return cqrs__store_append_valid(s, req, res, err);
}

/* One commit, its personal fields sealed first when it has any. */
static cqrs_code_t append_one(cqrs_store_t *s, const cqrs_append_t *req, cqrs_append_result_t *res,
                              cqrs_error_t *err) {
  return cqrs__sealed_needed(req) ? cqrs__sealed_append(s, req, res, err) : s->ops->append(s->impl, req, res, err);
}

cqrs_code_t cqrs__store_append_valid(cqrs_store_t *s, const cqrs_append_t *req, cqrs_append_result_t *res,
                                     cqrs_error_t *err) {
  cqrs_error_t own;
  err = err_or(err, &own);
  memset(res, 0, sizeof *res);
  cqrs_code_t rc;
  if (req->expected_version < 0) return cqrs_error_set(err, CQRS_EINVAL, "expected version is negative");
  if (!req->events || req->count == 0) return cqrs_error_set(err, CQRS_EINVAL, "nothing to append");
  for (size_t i = 0; i < req->count; i++) {
    const cqrs_event_t *e = req->events[i];
    if (!e || e->version != req->expected_version + (int64_t)i + 1)
      return cqrs_error_set(err, CQRS_EINVAL, "event %zu is NULL or its version does not follow", i);
  }
  rc = counted(s, CQRS__STORE_APPEND, append_one(s, req, res, err), err);
  if (rc == CQRS_OK) saw_position(s, res->last_position);
  return rc;
}

/* One stream, versions that follow from commit to commit. */
static cqrs_code_t check_many(const cqrs_append_t *reqs, size_t n, cqrs_error_t *err) {
  for (size_t i = 1; i < n; i++) {
    const cqrs_append_t *a = &reqs[i - 1], *b = &reqs[i];
    if ((b->aggregate_type != a->aggregate_type && strcmp(b->aggregate_type, a->aggregate_type)) ||
        (b->aggregate_id != a->aggregate_id && strcmp(b->aggregate_id, a->aggregate_id)))
      return cqrs_error_set(err, CQRS_EINVAL, "commit %zu is of another stream than the one before", i);
    if (a->expected_version > INT64_MAX - (int64_t)a->count ||
        b->expected_version != a->expected_version + (int64_t)a->count)
      return cqrs_error_set(err, CQRS_EINVAL, "commit %zu does not follow the one before", i);
  }
  return CQRS_OK;
}

cqrs_code_t cqrs_store_append_many(cqrs_store_t *s, const cqrs_append_t *reqs, size_t n, cqrs_append_result_t *res,
                                   size_t *done, cqrs_error_t *err) {
  if (done) *done = 0;
  if (!s || !reqs || !res || !done || n == 0)
    return cqrs_error_set(err, CQRS_EINVAL, "NULL store, requests, results or count, or no commit");
  for (size_t i = 0; i < n; i++) {
    cqrs_code_t rc = check_stream(reqs[i].aggregate_type, reqs[i].aggregate_id, err);
    if (!rc) rc = cqrs__check_str(reqs[i].command_id, CQRS_ID_MAX, "command id", err);
    if (rc) return rc;
  }
  return cqrs__store_append_many_valid(s, reqs, n, res, done, err);
}

cqrs_code_t cqrs__store_append_many_valid(cqrs_store_t *s, const cqrs_append_t *reqs, size_t n,
                                          cqrs_append_result_t *res, size_t *done, cqrs_error_t *err) {
  cqrs_error_t own;
  err = err_or(err, &own);
  *done = 0;
  memset(res, 0, n * sizeof *res);
  cqrs_code_t rc = check_many(reqs, n, err);
  for (size_t i = 0; i < n && !rc; i++) {
    const cqrs_append_t *req = &reqs[i];
    if (req->expected_version < 0) return cqrs_error_set(err, CQRS_EINVAL, "expected version is negative");
    if (!req->events || req->count == 0) return cqrs_error_set(err, CQRS_EINVAL, "nothing to append");
    for (size_t k = 0; k < req->count; k++) {
      const cqrs_event_t *e = req->events[k];
      if (!e || e->version != req->expected_version + (int64_t)k + 1)
        return cqrs_error_set(err, CQRS_EINVAL, "commit %zu: event %zu is NULL or its version does not follow", i, k);
    }
  }
  if (rc) return rc;
  bool sealed = false;
  for (size_t i = 0; i < n && !sealed; i++) sealed = cqrs__sealed_needed(&reqs[i]);
  if (!s->ops->append_many || sealed) {
    /* Each in turn, as the op would (personal fields are sealed commit by
     * commit, by append's path). */
    for (; *done < n; ++*done) {
      cqrs_append_result_t *r = &res[*done];
      rc = counted(s, CQRS__STORE_APPEND, append_one(s, &reqs[*done], r, err), err);
      if (rc || r->duplicate) return rc;
      saw_position(s, r->last_position);
    }
    return CQRS_OK;
  }
  rc = counted(s, CQRS__STORE_APPEND_MANY, s->ops->append_many(s->impl, reqs, n, res, done, err), err);
  if (*done > n) *done = n; /* a store's slip: never read past the requests */
  if (*done) saw_position(s, res[*done - 1].last_position);
  return rc;
}

cqrs_code_t cqrs_store_read_stream(cqrs_store_t *s, const char *type, const char *id, int64_t from_version,
                                   cqrs_event_visit_cb cb, void *data, cqrs_error_t *err) {
  cqrs_error_t own;
  err = err_or(err, &own);
  if (!s || !cb) return cqrs_error_set(err, CQRS_EINVAL, "NULL store or callback");
  cqrs_code_t rc = check_stream(type, id, err);
  if (rc) return rc;
  cqrs__opener_t o = {s, cb, data, CQRS_OK, err};
  rc = s->ops->read_stream(s->impl, type, id, from_version < 1 ? 1 : from_version, cqrs__sealed_visit, &o, err);
  return counted(s, CQRS__STORE_READ_STREAM, rc ? rc : o.rc, err);
}

cqrs_code_t cqrs_store_read_all(cqrs_store_t *s, int64_t from_position, size_t limit, cqrs_event_visit_cb cb,
                                void *data, cqrs_error_t *err) {
  cqrs_error_t own;
  err = err_or(err, &own);
  if (!s || !cb) return cqrs_error_set(err, CQRS_EINVAL, "NULL store or callback");
  if (limit == 0) return CQRS_OK;
  cqrs__opener_t o = {s, cb, data, CQRS_OK, err};
  cqrs_code_t rc = s->ops->read_all(s->impl, from_position < 1 ? 1 : from_position, limit, cqrs__sealed_visit, &o, err);
  return counted(s, CQRS__STORE_READ_ALL, rc ? rc : o.rc, err);
}

cqrs_code_t cqrs_store_head(cqrs_store_t *s, int64_t *position, cqrs_error_t *err) {
  cqrs_error_t own;
  err = err_or(err, &own);
  if (!s || !position) return cqrs_error_set(err, CQRS_EINVAL, "NULL store or position");
  cqrs_code_t rc = counted(s, CQRS__STORE_HEAD, s->ops->head(s->impl, position, err), err);
  if (rc == CQRS_OK) saw_position(s, *position);
  return rc;
}

cqrs_code_t cqrs_store_has_command(cqrs_store_t *s, const char *command_id, bool *found, cqrs_error_t *err) {
  cqrs_error_t own;
  err = err_or(err, &own);
  if (!s || !found) return cqrs_error_set(err, CQRS_EINVAL, "NULL store or flag");
  *found = false;
  cqrs_code_t rc = cqrs__check_str(command_id, CQRS_ID_MAX, "command id", err);
  if (rc) return rc;
  if (!s->ops->has_command) return cqrs_error_set(err, CQRS_ESTATE, "store %s does not look up command ids", s->ops->name);
  return counted(s, CQRS__STORE_HAS_COMMAND, s->ops->has_command(s->impl, command_id, found, err), err);
}

cqrs_code_t cqrs_store_snapshot_load(cqrs_store_t *s, const char *type, const char *id, cqrs_snapshot_t *out,
                                     bool *found, cqrs_error_t *err) {
  cqrs_error_t own;
  err = err_or(err, &own);
  if (!s || !out || !found) return cqrs_error_set(err, CQRS_EINVAL, "NULL store, snapshot or flag");
  *found = false;
  cqrs_code_t rc = check_stream(type, id, err);
  if (rc) return rc;
  if (!s->ops->snapshot_load) return CQRS_OK;
  return counted(s, CQRS__STORE_SNAPSHOT_LOAD, s->ops->snapshot_load(s->impl, type, id, out, found, err), err);
}

cqrs_code_t cqrs_store_snapshot_save(cqrs_store_t *s, const cqrs_snapshot_t *snap, cqrs_error_t *err) {
  cqrs_error_t own;
  err = err_or(err, &own);
  if (!s || !snap) return cqrs_error_set(err, CQRS_EINVAL, "NULL store or snapshot");
  cqrs_code_t rc = check_stream(snap->aggregate_type, snap->aggregate_id, err);
  if (rc) return rc;
  if (snap->version < 1) return cqrs_error_set(err, CQRS_EINVAL, "snapshot version must be >= 1");
  if (!s->ops->snapshot_save) return cqrs_error_set(err, CQRS_ESTATE, "store %s keeps no snapshots", s->ops->name);
  return counted(s, CQRS__STORE_SNAPSHOT_SAVE, s->ops->snapshot_save(s->impl, snap, err), err);
}
