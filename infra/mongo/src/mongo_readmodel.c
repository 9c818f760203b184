/* Read models, checkpoints and dead letters on MongoDB. Read-model writes
 * are guarded by _position, so replaying an event changes nothing: a
 * replace or an update matches only a document whose _position is lower. */
#include <stdio.h>
#include <string.h>

#include "mongo-private.h"

static void position_below(bson_t *filter, int64_t position) {
  bson_t range;
  BSON_APPEND_DOCUMENT_BEGIN(filter, CQRS_RM_POSITION, &range);
  BSON_APPEND_INT64(&range, "$lt", position);
  bson_append_document_end(filter, &range);
}

static int64_t reply_count(const bson_t *reply, const char *key) {
  bson_iter_t it;
  return bson_iter_init_find(&it, reply, key) ? bson_iter_as_int64(&it) : 0;
}

static cqrs_code_t mrm_put(void *impl, const char *coll, const char *id, const bson_t *doc, int64_t position,
                           bool *applied, cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  bson_t filter = BSON_INITIALIZER, body = BSON_INITIALIZER, opts = BSON_INITIALIZER, reply;
  BSON_APPEND_UTF8(&filter, "_id", id);
  position_below(&filter, position);
  BSON_APPEND_UTF8(&body, "_id", id);
  bson_iter_t it;
  if (bson_iter_init(&it, doc)) {
    while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "_id") && strcmp(k, CQRS_RM_POSITION)) bson_append_iter(&body, NULL, 0, &it);
    }
  }
  BSON_APPEND_INT64(&body, CQRS_RM_POSITION, position);
  BSON_APPEND_BOOL(&opts, "upsert", true);
  mconn_t c;
  cqrs__mongo_open(m, coll, &c);
  bson_error_t e;
  bool ok = mongoc_collection_replace_one(c.coll, &filter, &body, &opts, &reply, &e);
  cqrs__mongo_done(m, &c);
  cqrs_code_t rc = CQRS_OK;
  if (ok) {
    *applied = reply_count(&reply, "matchedCount") + reply_count(&reply, "upsertedCount") > 0;
  } else if (cqrs__mongo_duplicate_key(&e)) {
    *applied = false; /* the document is at this position or later */
  } else {
    rc = cqrs__mongo_error(err, &e, "write a read-model document");
  }
  bson_destroy(&reply);
  bson_destroy(&filter);
  bson_destroy(&body);
  bson_destroy(&opts);
  return rc;
}

static cqrs_code_t update(cqrs_mongo_t *m, const char *coll, bson_t *filter, const bson_t *set, int64_t position,
                          bool many, int64_t *matched, cqrs_error_t *err) {
  position_below(filter, position);
  bson_t u = BSON_INITIALIZER, s, reply;
  BSON_APPEND_DOCUMENT_BEGIN(&u, "$set", &s);
  bson_iter_t it;
  if (bson_iter_init(&it, set)) {
    while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "_id") && strcmp(k, CQRS_RM_POSITION)) bson_append_iter(&s, NULL, 0, &it);
    }
  }
  BSON_APPEND_INT64(&s, CQRS_RM_POSITION, position);
  bson_append_document_end(&u, &s);
  mconn_t c;
  cqrs__mongo_open(m, coll, &c);
  bson_error_t e;
  bool ok = many ? mongoc_collection_update_many(c.coll, filter, &u, NULL, &reply, &e)
                 : mongoc_collection_update_one(c.coll, filter, &u, NULL, &reply, &e);
  cqrs__mongo_done(m, &c);
  cqrs_code_t rc = ok ? CQRS_OK : cqrs__mongo_error(err, &e, "update read-model documents");
  *matched = ok ? reply_count(&reply, "matchedCount") : 0;
  bson_destroy(&reply);
  bson_destroy(&u);
  return rc;
}

static cqrs_code_t mrm_get(void *impl, const char *coll, const char *id, bson_t *out, bool *found, cqrs_error_t *err);

static cqrs_code_t mrm_patch(void *impl, const char *coll, const char *id, const bson_t *set, int64_t position,
                             bool *applied, cqrs_error_t *err) {
  bson_t filter = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "_id", id);
  int64_t matched;
  cqrs_code_t rc = update(impl, coll, &filter, set, position, false, &matched, err);
  bson_destroy(&filter);
  if (rc) return rc;
  *applied = matched > 0;
  if (*applied) return CQRS_OK;
  bson_t doc;
  bool found;
  if ((rc = mrm_get(impl, coll, id, &doc, &found, err))) return rc;
  if (!found) return cqrs_error_set(err, CQRS_ENOT_FOUND, "%s/%s does not exist", coll, id);
  bson_destroy(&doc);
  return CQRS_OK;
}

static cqrs_code_t mrm_patch_where(void *impl, const char *coll, const bson_t *filter, const bson_t *set,
                                   int64_t position, size_t *count, cqrs_error_t *err) {
  bson_t f = BSON_INITIALIZER;
  bson_concat(&f, filter);
  int64_t matched;
  cqrs_code_t rc = update(impl, coll, &f, set, position, true, &matched, err);
  bson_destroy(&f);
  *count = (size_t)matched;
  return rc;
}

static cqrs_code_t mrm_get(void *impl, const char *coll, const char *id, bson_t *out, bool *found, cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  bson_t filter = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "_id", id);
  mconn_t c;
  cqrs__mongo_open(m, coll, &c);
  cqrs_code_t rc = cqrs__mongo_find_one(c.coll, &filter, NULL, out, found, err, "read a read-model document");
  cqrs__mongo_done(m, &c);
  bson_destroy(&filter);
  return rc;
}

static cqrs_code_t mrm_find(void *impl, const char *coll, const cqrs_find_t *q, cqrs_doc_visit_cb cb, void *data,
                            cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  bson_t empty = BSON_INITIALIZER, opts = BSON_INITIALIZER, sort;
  BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
  if (q->sort) BSON_APPEND_INT32(&sort, q->sort, q->descending ? -1 : 1);
  BSON_APPEND_INT32(&sort, "_id", q->descending ? -1 : 1);
  bson_append_document_end(&opts, &sort);
  if (q->limit) BSON_APPEND_INT64(&opts, "limit", (int64_t)q->limit);
  mconn_t c;
  cqrs__mongo_open(m, coll, &c);
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c.coll, q->filter ? q->filter : &empty, &opts, NULL);
  const bson_t *doc;
  while (mongoc_cursor_next(cur, &doc)) {
    if (!cb(doc, data)) break;
  }
  bson_error_t e;
  cqrs_code_t rc = mongoc_cursor_error(cur, &e) ? cqrs__mongo_error(err, &e, "find read-model documents") : CQRS_OK;
  mongoc_cursor_destroy(cur);
  cqrs__mongo_done(m, &c);
  bson_destroy(&empty);
  bson_destroy(&opts);
  return rc;
}

static const cqrs_readmodel_ops_t mongo_rm_ops = {.blocking = true, .put = mrm_put, .patch = mrm_patch,
                                                  .patch_where = mrm_patch_where, .get = mrm_get, .find = mrm_find,
                                                  .destroy = NULL};

cqrs_code_t cqrs_mongo_readmodel_new(cqrs_mongo_t *m, cqrs_readmodel_t **out, cqrs_error_t *err) {
  if (!m) {
    if (out) *out = NULL;
    return cqrs_error_set(err, CQRS_EINVAL, "NULL connection");
  }
  return cqrs_readmodel_new(&mongo_rm_ops, m, out, err);
}

/* ---- checkpoints ---- */

/* The checkpoint document of `name` into `doc` (destroy it when *found). */
static cqrs_code_t cp_doc(cqrs_mongo_t *m, const char *name, bson_t *doc, bool *found, cqrs_error_t *err,
                          const char *what) {
  bson_t filter = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "_id", name);
  mconn_t c;
  cqrs__mongo_open(m, m->checkpoints, &c);
  cqrs_code_t rc = cqrs__mongo_find_one(c.coll, &filter, NULL, doc, found, err, what);
  cqrs__mongo_done(m, &c);
  bson_destroy(&filter);
  return rc;
}

static cqrs_code_t mcp_load(void *impl, const char *name, int64_t *position, cqrs_error_t *err) {
  bson_t doc;
  bool found;
  cqrs_code_t rc = cp_doc(impl, name, &doc, &found, err, "load a checkpoint");
  *position = 0;
  if (!rc && found) {
    bson_iter_t it;
    if (bson_iter_init_find(&it, &doc, "position")) *position = bson_iter_as_int64(&it);
    bson_destroy(&doc);
  }
  return rc;
}

/* An update of one checkpoint document, made if missing. Two writers
 * making it at once (a projection's first save beside its first report)
 * both try the insert and one gets a duplicate key: the document exists
 * now, so that one's update is tried once more and matches it. Under a
 * fence a second duplicate key is the fence's (a higher token wrote). */
static bool cp_upsert(cqrs_mongo_t *m, const bson_t *filter, const bson_t *update, bson_error_t *e) {
  bson_t opts = BSON_INITIALIZER;
  BSON_APPEND_BOOL(&opts, "upsert", true);
  mconn_t c;
  cqrs__mongo_open(m, m->checkpoints, &c);
  bool ok = mongoc_collection_update_one(c.coll, filter, update, &opts, NULL, e);
  if (!ok && cqrs__mongo_duplicate_key(e)) ok = mongoc_collection_update_one(c.coll, filter, update, &opts, NULL, e);
  cqrs__mongo_done(m, &c);
  bson_destroy(&opts);
  return ok;
}

/* Token 0: a plain save (an operator's reset), whoever wrote before. Else a
 * document written under a higher token does not match the filter, so the
 * upsert tries to insert a second one with its _id: duplicate key, fenced
 * off. On MongoDB the filter and the write are one atomic step; FerretDB
 * 1.24 reads then writes, so two saves racing under two tokens may both
 * land (docs/scaling.md: the lease's timing keeps them apart). */
static cqrs_code_t mcp_save_fenced(void *impl, const char *name, int64_t position, int64_t token,
                                   cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  bson_t filter = BSON_INITIALIZER, u = BSON_INITIALIZER, s;
  BSON_APPEND_UTF8(&filter, "_id", name);
  if (token) {
    bson_t t, not;
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "token", &t);
    BSON_APPEND_DOCUMENT_BEGIN(&t, "$not", &not);
    BSON_APPEND_INT64(&not, "$gt", token);
    bson_append_document_end(&t, &not);
    bson_append_document_end(&filter, &t);
  }
  BSON_APPEND_DOCUMENT_BEGIN(&u, "$set", &s);
  BSON_APPEND_INT64(&s, "position", position);
  if (token) BSON_APPEND_INT64(&s, "token", token);
  BSON_APPEND_DATE_TIME(&s, "at", cqrs_now_ms());
  bson_append_document_end(&u, &s);
  bson_error_t e;
  bool ok = cp_upsert(m, &filter, &u, &e);
  bson_destroy(&filter);
  bson_destroy(&u);
  if (ok) return CQRS_OK;
  if (token && cqrs__mongo_duplicate_key(&e))
    return cqrs_error_set(err, CQRS_ECONFLICT, "checkpoint %s: a higher token than %lld has written (fenced off)",
                          name, (long long)token);
  return cqrs__mongo_error(err, &e, "save a checkpoint");
}

static cqrs_code_t mcp_save(void *impl, const char *name, int64_t position, cqrs_error_t *err) {
  return mcp_save_fenced(impl, name, position, 0, err);
}

/* Control records: the operator's part {paused, request, action,
 * position} and the projection's {done, result, state, owner, reportedAt,
 * reached, parked}, each under `control` in a document of its own beside
 * the checkpoint's, `_id: {projection: NAME, part: "request" | "report"}`.
 * Apart, three writers (the projection saving its checkpoint, its process
 * reporting, an operator) never write one document at once: a server that
 * applies an update by reading the document and writing it whole (FerretDB
 * 1.x) would otherwise let one of them undo another's write (a report
 * taking a checkpoint back). Records that 0.2.0 kept in the checkpoint's
 * own document, under `control`, are read when there is no newer part. */
static void copy_str(const bson_t *doc, const char *key, char *out, size_t cap) {
  bson_iter_t it;
  if (bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_UTF8(&it)) {
    uint32_t len;
    const char *v = bson_iter_utf8(&it, &len);
    if (len < cap) memcpy(out, v, (size_t)len + 1); /* longer than written: left empty */
  }
}

static int64_t get_int(const bson_t *doc, const char *key) {
  bson_iter_t it;
  int64_t v = 0;
  if (bson_iter_init_find(&it, doc, key)) cqrs_bson_iter_int64(&it, &v);
  return v;
}

static void part_id(bson_t *filter, const char *name, const char *part) {
  bson_t id;
  BSON_APPEND_DOCUMENT_BEGIN(filter, "_id", &id);
  BSON_APPEND_UTF8(&id, "projection", name);
  BSON_APPEND_UTF8(&id, "part", part);
  bson_append_document_end(filter, &id);
}

/* Reads the parts of `doc`'s `control` that `parts` names into `out`;
 * false when it has none. */
static bool read_parts(const bson_t *doc, unsigned parts, cqrs_projection_control_t *out) {
  bson_iter_t it;
  if (!bson_iter_init_find(&it, doc, "control") || !BSON_ITER_HOLDS_DOCUMENT(&it)) return false;
  uint32_t len;
  const uint8_t *data;
  bson_iter_document(&it, &len, &data);
  bson_t ctl;
  if (!bson_init_static(&ctl, data, len)) return false;
  if (parts & CQRS_CONTROL_REQUEST) {
    bson_iter_t v;
    out->paused = bson_iter_init_find(&v, &ctl, "paused") && bson_iter_as_bool(&v);
    out->request = get_int(&ctl, "request");
    int64_t action = get_int(&ctl, "action");
    out->action =
        action >= 0 && action <= CQRS_PROJECTION_REPLAY ? (cqrs_projection_action_t)action : CQRS_PROJECTION_NO_ACTION;
    out->position = get_int(&ctl, "position");
  }
  if (parts & CQRS_CONTROL_REPORT) {
    out->done = get_int(&ctl, "done");
    out->result[0] = out->state[0] = out->owner[0] = '\0';
    copy_str(&ctl, "result", out->result, sizeof out->result);
    copy_str(&ctl, "state", out->state, sizeof out->state);
    copy_str(&ctl, "owner", out->owner, sizeof out->owner);
    out->reported_at = get_int(&ctl, "reportedAt");
    out->reached = get_int(&ctl, "reached");
    out->parked = get_int(&ctl, "parked");
  }
  return true;
}

static cqrs_code_t mcp_control_load(void *impl, const char *name, cqrs_projection_control_t *out, bool *found,
                                    cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  static const char *const names[] = {"request", "report"};
  static const unsigned parts[] = {CQRS_CONTROL_REQUEST, CQRS_CONTROL_REPORT};
  *found = false;
  unsigned read = 0;
  bson_t legacy;
  bool any_legacy;
  cqrs_code_t rc = cp_doc(m, name, &legacy, &any_legacy, err, "load a control record");
  for (size_t i = 0; !rc && i < 2; i++) {
    bson_t filter = BSON_INITIALIZER, doc;
    bool any;
    part_id(&filter, name, names[i]);
    mconn_t c;
    cqrs__mongo_open(m, m->checkpoints, &c);
    rc = cqrs__mongo_find_one(c.coll, &filter, NULL, &doc, &any, err, "load a control record");
    cqrs__mongo_done(m, &c);
    bson_destroy(&filter);
    if (!rc && any) {
      if (read_parts(&doc, parts[i], out)) read |= parts[i];
      bson_destroy(&doc);
    }
  }
  if (!rc && any_legacy && read != (CQRS_CONTROL_REQUEST | CQRS_CONTROL_REPORT) &&
      read_parts(&legacy, ~read & (CQRS_CONTROL_REQUEST | CQRS_CONTROL_REPORT), out))
    read = CQRS_CONTROL_REQUEST | CQRS_CONTROL_REPORT;
  if (any_legacy) bson_destroy(&legacy);
  *found = !rc && read != 0;
  return rc;
}

static cqrs_code_t mcp_control_save(void *impl, const char *name, const cqrs_projection_control_t *ctl,
                                    unsigned parts, cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  for (int i = 0; i < 2; i++) {
    unsigned part = i ? CQRS_CONTROL_REPORT : CQRS_CONTROL_REQUEST;
    if (!(parts & part)) continue;
    bson_t filter = BSON_INITIALIZER, u = BSON_INITIALIZER, s;
    part_id(&filter, name, i ? "report" : "request");
    BSON_APPEND_DOCUMENT_BEGIN(&u, "$set", &s);
    if (part == CQRS_CONTROL_REQUEST) {
      BSON_APPEND_BOOL(&s, "control.paused", ctl->paused);
      BSON_APPEND_INT64(&s, "control.request", ctl->request);
      BSON_APPEND_INT32(&s, "control.action", (int32_t)ctl->action);
      BSON_APPEND_INT64(&s, "control.position", ctl->position);
    } else {
      BSON_APPEND_INT64(&s, "control.done", ctl->done);
      BSON_APPEND_UTF8(&s, "control.result", ctl->result);
      BSON_APPEND_UTF8(&s, "control.state", ctl->state);
      BSON_APPEND_UTF8(&s, "control.owner", ctl->owner);
      BSON_APPEND_DATE_TIME(&s, "control.reportedAt", ctl->reported_at);
      BSON_APPEND_INT64(&s, "control.reached", ctl->reached);
      BSON_APPEND_INT64(&s, "control.parked", ctl->parked);
    }
    bson_append_document_end(&u, &s);
    bson_error_t e;
    bool ok = cp_upsert(m, &filter, &u, &e);
    bson_destroy(&filter);
    bson_destroy(&u);
    if (!ok) return cqrs__mongo_error(err, &e, "save a control record");
  }
  return CQRS_OK;
}

static const cqrs_checkpoint_ops_t mongo_cp_ops = {.blocking = true,
                                                   .load = mcp_load,
                                                   .save = mcp_save,
                                                   .destroy = NULL,
                                                   .save_fenced = mcp_save_fenced,
                                                   .control_load = mcp_control_load,
                                                   .control_save = mcp_control_save};

cqrs_code_t cqrs_mongo_checkpoint_store_new(cqrs_mongo_t *m, cqrs_checkpoint_store_t **out, cqrs_error_t *err) {
  if (!m) {
    if (out) *out = NULL;
    return cqrs_error_set(err, CQRS_EINVAL, "NULL connection");
  }
  return cqrs_checkpoint_store_new(&mongo_cp_ops, m, out, err);
}

/* ---- dead letters ---- */

/* A dead letter's write, on the pool. What the log says of one that is
 * lost: "dead letter of <subscriber>: <type> #<position> (event <id>)". */
typedef struct dl_work {
  uv_work_t req;
  cqrs_mongo_t *m;
  bson_t *doc; /* a pointer: a bson_t needs 128-byte alignment */
  char what[CQRS_NAME_MAX * 2 + CQRS_ID_MAX + 64];
} dl_work_t;

/* Its last touch of `m`: cqrs_mongo_destroy may go on once it is done. */
static void dl_written(cqrs_mongo_t *m) {
  uv_mutex_lock(&m->dl_lock);
  if (--m->dl_writing == 0) uv_cond_broadcast(&m->dl_cond);
  uv_mutex_unlock(&m->dl_lock);
}

static void dl_insert(uv_work_t *w) {
  dl_work_t *d = w->data;
  mconn_t c;
  cqrs__mongo_open(d->m, d->m->dead_letters, &c);
  bson_error_t e;
  if (!mongoc_collection_insert_one(c.coll, d->doc, NULL, NULL, &e))
    cqrs_log(CQRS_LOG_ERROR, "mongo", "%s not written: %s", d->what, e.message);
  cqrs__mongo_done(d->m, &c);
  bson_destroy(d->doc);
  d->doc = NULL;
  dl_written(d->m);
}

static void dl_done(uv_work_t *w, int status) {
  dl_work_t *d = w->data;
  if (status) { /* cancelled: nothing cancels it today */
    cqrs_log(CQRS_LOG_ERROR, "mongo", "%s not written: cancelled", d->what);
    bson_destroy(d->doc);
    dl_written(d->m);
  }
  bson_free(d);
}

/* Writes {subscriber, event, error, at[, attempts, firstFailedAt]} from the
 * pool (attempts 0 and no `figures`: not known). */
static void dl_send(cqrs_mongo_t *m, const char *subscriber, const cqrs_event_t *e, const cqrs_error_t *error,
                    bool figures, unsigned attempts, int64_t first_failed_at) {
  if (!m || !subscriber || !e || !error) {
    cqrs_log(CQRS_LOG_ERROR, "mongo", "dead letter with a NULL argument dropped");
    return;
  }
  dl_work_t *d = bson_malloc0(sizeof *d);
  d->m = m;
  d->req.data = d;
  const cqrs_unknown_event_t *u = e->type == &cqrs_unknown_event_type ? e->payload : NULL;
  snprintf(d->what, sizeof d->what, "dead letter of %s: %s #%lld (event %s)", subscriber,
           u ? u->type : e->type->name, (long long)e->position, e->id);
  d->doc = bson_new();
  BSON_APPEND_UTF8(d->doc, "subscriber", subscriber);
  bson_t ev, er;
  BSON_APPEND_DOCUMENT_BEGIN(d->doc, "event", &ev);
  cqrs_event_to_bson(e, &ev, NULL);
  bson_append_document_end(d->doc, &ev);
  BSON_APPEND_DOCUMENT_BEGIN(d->doc, "error", &er);
  BSON_APPEND_UTF8(&er, "code", cqrs_code_name(error->code));
  BSON_APPEND_UTF8(&er, "name", error->name);
  BSON_APPEND_UTF8(&er, "message", error->message);
  bson_append_document_end(d->doc, &er);
  BSON_APPEND_DATE_TIME(d->doc, "at", cqrs_now_ms());
  if (figures) {
    BSON_APPEND_INT32(d->doc, "attempts", attempts > INT32_MAX ? INT32_MAX : (int32_t)attempts);
    if (first_failed_at) BSON_APPEND_DATE_TIME(d->doc, "firstFailedAt", first_failed_at);
  }
  uv_mutex_lock(&m->dl_lock);
  m->dl_writing++;
  uv_mutex_unlock(&m->dl_lock);
  if (!m->loop) { /* no dispatcher's loop to keep free: a tool's or a test's thread */
    dl_insert(&d->req);
    bson_free(d);
  } else if (uv_queue_work(m->loop, &d->req, dl_insert, dl_done)) {
    /* Never on the loop's thread, which the dispatcher calls this on. */
    cqrs_log(CQRS_LOG_ERROR, "mongo", "%s not written: cannot queue work on the thread pool", d->what);
    bson_destroy(d->doc);
    bson_free(d);
    dl_written(m);
  }
}

void cqrs_mongo_dead_letter(const char *subscriber, const cqrs_event_t *e, const cqrs_error_t *error, void *data) {
  dl_send(data, subscriber, e, error, false, 0, 0);
}

void cqrs_mongo_dead_letter_info(const cqrs_dead_letter_t *dl, void *data) {
  if (!dl) {
    cqrs_log(CQRS_LOG_ERROR, "mongo", "dead letter with a NULL argument dropped");
    return;
  }
  dl_send(data, dl->subscriber, dl->event, dl->error, true, dl->attempts, dl->first_failed_at);
}
