/* The event store on MongoDB: one document per commit, so an append is one
 * insert, atomic without transactions. Unique indexes enforce the stream's
 * version (optimistic concurrency), the command id (idempotency) and the
 * global position. A writer claims position (last committed) + 1 and lets
 * the unique index turn away a racer, who re-reads and tries again: a
 * position is only claimed after its predecessor is visible, so readers
 * never meet a gap, nor a commit that lands late behind a later one. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mongo-private.h"

#define CLAIM_ATTEMPTS 200

static void append_event(bson_t *out, const cqrs_event_t *e) {
  BSON_APPEND_UTF8(out, "eventId", e->id);
  BSON_APPEND_UTF8(out, "type", e->type->name);
  BSON_APPEND_INT32(out, "schemaVersion", (int32_t)e->schema_version);
  BSON_APPEND_INT64(out, "version", e->version);
  BSON_APPEND_DATE_TIME(out, "timestamp", e->timestamp);
  bson_t data;
  BSON_APPEND_DOCUMENT_BEGIN(out, "data", &data);
  cqrs_fields_encode(e->type->fields, e->payload, &data, NULL);
  bson_append_document_end(out, &data);
}

/* The commit document: the first event at the top level (the seed's shape:
 * type, data, timestamp, version), the others under "more". */
static void build_commit(bson_t *doc, const cqrs_append_t *req, int64_t position) {
  append_event(doc, req->events[0]);
  BSON_APPEND_UTF8(doc, "aggregateType", req->aggregate_type);
  BSON_APPEND_UTF8(doc, "aggregateId", req->aggregate_id);
  BSON_APPEND_INT64(doc, "lastVersion", req->expected_version + (int64_t)req->count);
  BSON_APPEND_INT64(doc, "position", position);
  BSON_APPEND_INT64(doc, "lastPosition", position + (int64_t)req->count - 1);
  BSON_APPEND_UTF8(doc, "commandId", req->command_id);
  const cqrs_envelope_t *env = req->events[0]->envelope;
  BSON_APPEND_UTF8(doc, "correlationId", env && env->correlation_id[0] ? env->correlation_id : req->command_id);
  if (req->count > 1) {
    bson_t more;
    BSON_APPEND_ARRAY_BEGIN(doc, "more", &more);
    for (size_t i = 1; i < req->count; i++) {
      char key[16];
      const char *k;
      bson_uint32_to_string((uint32_t)(i - 1), &k, key, sizeof key);
      bson_t ev;
      bson_append_document_begin(&more, k, -1, &ev);
      append_event(&ev, req->events[i]);
      bson_append_document_end(&more, &ev);
    }
    bson_append_array_end(doc, &more);
  }
}

static cqrs_code_t head_on(mongoc_collection_t *coll, int64_t *position, cqrs_error_t *err) {
  bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, sort, doc;
  BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
  BSON_APPEND_INT32(&sort, "position", -1);
  bson_append_document_end(&opts, &sort);
  bool found;
  cqrs_code_t rc = cqrs__mongo_find_one(coll, &filter, &opts, &doc, &found, err, "read the head");
  *position = 0;
  if (!rc && found) {
    bson_iter_t it;
    if (bson_iter_init_find(&it, &doc, "lastPosition")) *position = bson_iter_as_int64(&it);
    /* The next claim is head + 1: a head at INT64_MAX is corrupt data. */
    if (*position < 0 || *position == INT64_MAX)
      rc = cqrs_error_set(err, CQRS_ECODEC, "corrupt commit: last position %lld", (long long)*position);
    bson_destroy(&doc);
  }
  bson_destroy(&filter);
  bson_destroy(&opts);
  return rc;
}

static cqrs_code_t exists(mongoc_collection_t *coll, const bson_t *filter, bool *found, cqrs_error_t *err,
                          const char *what) {
  bson_t doc, opts = BSON_INITIALIZER, proj;
  BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
  BSON_APPEND_INT32(&proj, "_id", 1);
  bson_append_document_end(&opts, &proj);
  cqrs_code_t rc = cqrs__mongo_find_one(coll, filter, &opts, &doc, found, err, what);
  if (!rc && *found) bson_destroy(&doc);
  bson_destroy(&opts);
  return rc;
}

static cqrs_code_t command_exists(mongoc_collection_t *coll, const char *command_id, bool *found, cqrs_error_t *err) {
  bson_t filter = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "commandId", command_id);
  cqrs_code_t rc = exists(coll, &filter, found, err, "look up a command id");
  bson_destroy(&filter);
  return rc;
}

static cqrs_code_t version_exists(mongoc_collection_t *coll, const cqrs_append_t *req, const char *key,
                                  int64_t version, bool *found, cqrs_error_t *err) {
  bson_t filter = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "aggregateType", req->aggregate_type);
  BSON_APPEND_UTF8(&filter, "aggregateId", req->aggregate_id);
  BSON_APPEND_INT64(&filter, key, version);
  cqrs_code_t rc = exists(coll, &filter, found, err, "read the stream's version");
  bson_destroy(&filter);
  return rc;
}

static cqrs_code_t conflict(const cqrs_append_t *req, cqrs_error_t *err) {
  return cqrs_error_set(err, CQRS_ECONFLICT, "%s/%s has moved past version %lld", req->aggregate_type,
                        req->aggregate_id, (long long)req->expected_version);
}

static cqrs_code_t claim_and_insert(cqrs_mongo_t *m, mongoc_collection_t *coll, const cqrs_append_t *req,
                                    cqrs_append_result_t *res, cqrs_error_t *err);

static cqrs_code_t append_on(cqrs_mongo_t *m, mongoc_collection_t *coll, const cqrs_append_t *req,
                             cqrs_append_result_t *res, cqrs_error_t *err) {
  bool found;
  cqrs_code_t rc;
  if (req->expected_version > 0 &&
      !cqrs__mongo_version_known(m, req->aggregate_type, req->aggregate_id, req->expected_version)) {
    /* The unique index catches an expected version that is behind; one
     * that is ahead of the stream needs this look, unless this process has
     * seen the stream reach it. */
    if ((rc = version_exists(coll, req, "lastVersion", req->expected_version, &found, err))) return rc;
    if (!found) {
      if ((rc = command_exists(coll, req->command_id, &found, err))) return rc;
      if (found) {
        res->duplicate = true;
        return CQRS_OK;
      }
      return conflict(req, err);
    }
  }
  uv_mutex_lock(&m->append_lock);
  rc = claim_and_insert(m, coll, req, res, err);
  uv_mutex_unlock(&m->append_lock);
  return rc;
}

static cqrs_code_t claim_and_insert(cqrs_mongo_t *m, mongoc_collection_t *coll, const cqrs_append_t *req,
                                    cqrs_append_result_t *res, cqrs_error_t *err) {
  bool found;
  cqrs_code_t rc;
  int64_t position = atomic_load(&m->next_position);
  if (position <= 0) {
    if ((rc = head_on(coll, &position, err))) return rc;
    position++;
  }
  for (int attempt = 0; attempt < CLAIM_ATTEMPTS; attempt++) {
    if (req->count > (uint64_t)(INT64_MAX - position)) /* the positions would wrap */
      return cqrs_error_set(err, CQRS_ECODEC, "corrupt commit: no room for %zu events after position %lld",
                            req->count, (long long)position);
    bson_t doc = BSON_INITIALIZER;
    build_commit(&doc, req, position);
    bson_error_t e;
    bool ok = mongoc_collection_insert_one(coll, &doc, NULL, NULL, &e);
    bson_destroy(&doc);
    if (ok) {
      for (size_t i = 0; i < req->count; i++) req->events[i]->position = position + (int64_t)i;
      res->first_position = position;
      res->last_position = position + (int64_t)req->count - 1;
      int64_t next = res->last_position + 1, seen = atomic_load(&m->next_position);
      while (seen < next && !atomic_compare_exchange_weak(&m->next_position, &seen, next)) {
      }
      cqrs__mongo_version_seen(m, req->aggregate_type, req->aggregate_id,
                               req->expected_version + (int64_t)req->count);
      return CQRS_OK;
    }
    if (!cqrs__mongo_duplicate_key(&e)) return cqrs__mongo_error(err, &e, "append a commit");
    /* Which unique index turned us away? FerretDB does not say. Most often
     * another writer's commit took the position: then the head has reached
     * it, and the next claim is head + 1. (Trying the next position blindly
     * would be wrong: a commit spans a range of positions and the index
     * holds only its first.) Racers re-reading the head together collide
     * again: spread them out, more at each collision. */
    if (attempt > 1) uv_sleep((unsigned)(rand() % (1 << (attempt < 6 ? attempt : 6))));
    int64_t head;
    if ((rc = head_on(coll, &head, err))) return rc;
    if (head >= position) {
      position = head + 1;
      continue;
    }
    if ((rc = command_exists(coll, req->command_id, &found, err))) return rc;
    if (found) {
      res->duplicate = true;
      return CQRS_OK;
    }
    if ((rc = version_exists(coll, req, "version", req->expected_version + 1, &found, err))) return rc;
    if (found) return conflict(req, err);
    position = head + 1;
  }
  return cqrs_error_set(err, CQRS_ESTORE, "MongoDB: no free global position after %d attempts", CLAIM_ATTEMPTS);
}

static cqrs_code_t ms_append(void *impl, const cqrs_append_t *req, cqrs_append_result_t *res, cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  mconn_t c;
  cqrs__mongo_open(m, m->events, &c);
  cqrs_code_t rc = append_on(m, c.coll, req, res, err);
  cqrs__mongo_done(m, &c);
  return rc;
}

/* ---- reads ---- */

static const char *str_of(const bson_t *doc, const char *key) {
  bson_iter_t it;
  if (bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_UTF8(&it)) return bson_iter_utf8(&it, NULL);
  return NULL;
}

static bool int_of(const bson_iter_t *it, int64_t *v) {
  switch (bson_iter_type(it)) {
  case BSON_TYPE_INT64:
  case BSON_TYPE_INT32:
    *v = bson_iter_as_int64(it);
    return true;
  case BSON_TYPE_DOUBLE: {
    double d = bson_iter_double(it);
    if (!(d > -9.2e18 && d < 9.2e18)) return false; /* the cast would be undefined */
    *v = (int64_t)d;
    return true;
  }
  case BSON_TYPE_DATE_TIME:
    *v = bson_iter_date_time(it);
    return true;
  default:
    return false;
  }
}

static bool get_int(const bson_t *doc, const char *key, int64_t *v) {
  bson_iter_t it;
  return bson_iter_init_find(&it, doc, key) && int_of(&it, v);
}

/* Decodes one event of a commit (the top level, or an element of "more"). */
static cqrs_code_t decode_event(const cqrs_registry_t *reg, const bson_t *ev, const cqrs_envelope_t *env,
                                int64_t position, cqrs_event_t **out, cqrs_error_t *err) {
  const char *type = str_of(ev, "type");
  int64_t schema = 0, version = 0, ts = 0;
  bson_iter_t it;
  if (!type || !get_int(ev, "schemaVersion", &schema) || !get_int(ev, "version", &version) ||
      !get_int(ev, "timestamp", &ts) || !bson_iter_init_find(&it, ev, "data") || !BSON_ITER_HOLDS_DOCUMENT(&it))
    return cqrs_error_set(err, CQRS_ECODEC, "malformed event at position %lld", (long long)position);
  if (schema < 1 || schema > UINT32_MAX) return cqrs_error_set(err, CQRS_ECODEC, "bad schema version");
  uint32_t len;
  const uint8_t *raw;
  bson_iter_document(&it, &len, &raw);
  bson_t data;
  if (!bson_init_static(&data, raw, len)) return cqrs_error_set(err, CQRS_ECODEC, "malformed event data");
  const cqrs_event_type_t *etype;
  void *payload;
  cqrs_code_t rc = cqrs_registry_decode_payload(reg, type, (uint32_t)schema, &data, &etype, &payload, err);
  if (rc) return rc;
  rc = cqrs_event_new(etype, env, str_of(ev, "eventId"), version, ts, payload, out, err);
  cqrs_payload_free(payload);
  if (!rc) (*out)->position = position;
  return rc;
}

typedef struct reader {
  const cqrs_registry_t *reg;
  int64_t last_version; /* the highest version visited */
  int64_t min_version, min_position;
  size_t limit, seen;
  cqrs_event_visit_cb cb;
  void *data;
  bool stopped;
} reader_t;

/* Visits the events of one commit; false to stop. */
static cqrs_code_t visit_commit(reader_t *r, const bson_t *doc, cqrs_error_t *err) {
  int64_t position;
  const char *atype = str_of(doc, "aggregateType"), *aid = str_of(doc, "aggregateId");
  if (!atype || !aid || !get_int(doc, "position", &position))
    return cqrs_error_set(err, CQRS_ECODEC, "malformed commit document");
  cqrs_error_t bad;
  if (position < 1 || cqrs_bson_check_utf8(doc, &bad))
    return cqrs_error_set(err, CQRS_ECODEC, "corrupt commit at position %lld: %.180s", (long long)position,
                          position < 1 ? "not a position" : bad.message);
  cqrs_envelope_t *env;
  cqrs_code_t rc = cqrs_envelope_new(atype, aid, str_of(doc, "commandId"), str_of(doc, "correlationId"), &env, err);
  if (rc) return rc;
  bson_iter_t more, it;
  bool has_more = bson_iter_init_find(&it, doc, "more") && BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &more);
  const bson_t *ev = doc;
  bson_t sub;
  for (int64_t i = 0; !rc && !r->stopped; i++) {
    if (i > 0) {
      if (!has_more || !bson_iter_next(&more)) break;
      if (position > INT64_MAX - i) {
        rc = cqrs_error_set(err, CQRS_ECODEC, "corrupt commit at position %lld: too many events", (long long)position);
        break;
      }
      uint32_t len;
      const uint8_t *raw;
      if (!BSON_ITER_HOLDS_DOCUMENT(&more)) {
        rc = cqrs_error_set(err, CQRS_ECODEC, "malformed commit at position %lld", (long long)position);
        break;
      }
      bson_iter_document(&more, &len, &raw);
      if (!bson_init_static(&sub, raw, len)) {
        rc = cqrs_error_set(err, CQRS_ECODEC, "malformed commit at position %lld", (long long)position);
        break;
      }
      ev = &sub;
    }
    int64_t version = 0;
    get_int(ev, "version", &version);
    if (version < r->min_version || position + i < r->min_position) continue;
    cqrs_event_t *e;
    if ((rc = decode_event(r->reg, ev, env, position + i, &e, err))) break;
    if (version > r->last_version) r->last_version = version;
    if (!r->cb(e, r->data) || ++r->seen >= r->limit) r->stopped = true;
    cqrs_event_unref(e);
  }
  cqrs_envelope_unref(env);
  return rc;
}

cqrs_code_t cqrs__mongo_decode_commit(const cqrs_registry_t *reg, const bson_t *doc, cqrs_event_visit_cb cb,
                                      void *data, cqrs_error_t *err) {
  reader_t r = {reg, 0, 0, 0, SIZE_MAX, 0, cb, data, false};
  return visit_commit(&r, doc, err);
}

void cqrs__mongo_build_commit(bson_t *doc, const cqrs_append_t *req, int64_t position) {
  build_commit(doc, req, position);
}

static cqrs_code_t read_commits(cqrs_mongo_t *m, const bson_t *filter, const char *sort_key, int64_t limit,
                                reader_t *r, cqrs_error_t *err) {
  mconn_t c;
  cqrs__mongo_open(m, m->events, &c);
  bson_t opts = BSON_INITIALIZER, sort;
  BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
  BSON_APPEND_INT32(&sort, sort_key, 1);
  bson_append_document_end(&opts, &sort);
  if (limit > 0) BSON_APPEND_INT64(&opts, "limit", limit);
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c.coll, filter, &opts, NULL);
  const bson_t *doc;
  cqrs_code_t rc = CQRS_OK;
  while (!rc && !r->stopped && mongoc_cursor_next(cur, &doc)) rc = visit_commit(r, doc, err);
  bson_error_t e;
  if (!rc && mongoc_cursor_error(cur, &e)) rc = cqrs__mongo_error(err, &e, "read events");
  mongoc_cursor_destroy(cur);
  bson_destroy(&opts);
  cqrs__mongo_done(m, &c);
  return rc;
}

static cqrs_code_t ms_read_stream(void *impl, const char *type, const char *id, int64_t from_version,
                                  cqrs_event_visit_cb cb, void *data, cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  bson_t filter = BSON_INITIALIZER, range;
  BSON_APPEND_UTF8(&filter, "aggregateType", type);
  BSON_APPEND_UTF8(&filter, "aggregateId", id);
  BSON_APPEND_DOCUMENT_BEGIN(&filter, "lastVersion", &range);
  BSON_APPEND_INT64(&range, "$gte", from_version);
  bson_append_document_end(&filter, &range);
  reader_t r = {m->reg, 0, from_version, 0, SIZE_MAX, 0, cb, data, false};
  cqrs_code_t rc = read_commits(m, &filter, "version", 0, &r, err);
  bson_destroy(&filter);
  /* Read to the end: the stream was at this version. */
  if (!rc && !r.stopped && r.last_version > 0) cqrs__mongo_version_seen(m, type, id, r.last_version);
  return rc;
}

static cqrs_code_t ms_read_all(void *impl, int64_t from_position, size_t limit, cqrs_event_visit_cb cb, void *data,
                               cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  bson_t filter = BSON_INITIALIZER, range;
  BSON_APPEND_DOCUMENT_BEGIN(&filter, "lastPosition", &range);
  BSON_APPEND_INT64(&range, "$gte", from_position);
  bson_append_document_end(&filter, &range);
  reader_t r = {m->reg, 0, 0, from_position, limit, 0, cb, data, false};
  /* A commit holds one event or more: `limit` commits hold enough. */
  cqrs_code_t rc = read_commits(m, &filter, "position", limit > (size_t)INT64_MAX ? 0 : (int64_t)limit, &r, err);
  bson_destroy(&filter);
  return rc;
}

static cqrs_code_t ms_head(void *impl, int64_t *position, cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  mconn_t c;
  cqrs__mongo_open(m, m->events, &c);
  cqrs_code_t rc = head_on(c.coll, position, err);
  cqrs__mongo_done(m, &c);
  return rc;
}

/* ---- snapshots ---- */

/* An unambiguous key for (type, id): "<length of type>:<type>/<id>". */
static void snapshot_key(char *buf, size_t cap, const char *type, const char *id) {
  snprintf(buf, cap, "%zu:%s/%s", strlen(type), type, id);
}

static cqrs_code_t ms_snapshot_load(void *impl, const char *type, const char *id, cqrs_snapshot_t *out, bool *found,
                                    cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  char key[CQRS_NAME_MAX + CQRS_ID_MAX + 16];
  snapshot_key(key, sizeof key, type, id);
  bson_t filter = BSON_INITIALIZER, doc;
  BSON_APPEND_UTF8(&filter, "_id", key);
  mconn_t c;
  cqrs__mongo_open(m, m->snapshots, &c);
  cqrs_code_t rc = cqrs__mongo_find_one(c.coll, &filter, NULL, &doc, found, err, "load a snapshot");
  cqrs__mongo_done(m, &c);
  bson_destroy(&filter);
  if (rc || !*found) return rc;
  int64_t version = 0, schema = 0;
  bson_iter_t it;
  if (get_int(&doc, "version", &version) && get_int(&doc, "schemaVersion", &schema) &&
      bson_iter_init_find(&it, &doc, "state") && BSON_ITER_HOLDS_DOCUMENT(&it)) {
    uint32_t len;
    const uint8_t *raw;
    bson_iter_document(&it, &len, &raw);
    out->version = version;
    out->schema_version = (uint32_t)schema;
    bson_t state;
    if (bson_init_static(&state, raw, len)) {
      bson_copy_to(&state, &out->state);
    } else {
      *found = false;
    }
  } else {
    *found = false; /* unreadable: as if there were none */
  }
  bson_destroy(&doc);
  return CQRS_OK;
}

static cqrs_code_t ms_snapshot_save(void *impl, const cqrs_snapshot_t *snap, cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  char key[CQRS_NAME_MAX + CQRS_ID_MAX + 16];
  snapshot_key(key, sizeof key, snap->aggregate_type, snap->aggregate_id);
  bson_t filter = BSON_INITIALIZER, doc = BSON_INITIALIZER, range;
  BSON_APPEND_UTF8(&filter, "_id", key);
  BSON_APPEND_DOCUMENT_BEGIN(&filter, "version", &range);
  BSON_APPEND_INT64(&range, "$lt", snap->version);
  bson_append_document_end(&filter, &range);
  BSON_APPEND_UTF8(&doc, "_id", key);
  BSON_APPEND_UTF8(&doc, "aggregateType", snap->aggregate_type);
  BSON_APPEND_UTF8(&doc, "aggregateId", snap->aggregate_id);
  BSON_APPEND_INT64(&doc, "version", snap->version);
  BSON_APPEND_INT32(&doc, "schemaVersion", (int32_t)snap->schema_version);
  BSON_APPEND_DOCUMENT(&doc, "state", &snap->state);
  bson_t opts = BSON_INITIALIZER;
  BSON_APPEND_BOOL(&opts, "upsert", true);
  mconn_t c;
  cqrs__mongo_open(m, m->snapshots, &c);
  bson_error_t e;
  bool ok = mongoc_collection_replace_one(c.coll, &filter, &doc, &opts, NULL, &e);
  cqrs__mongo_done(m, &c);
  bson_destroy(&filter);
  bson_destroy(&doc);
  bson_destroy(&opts);
  /* A duplicate key: a newer snapshot is there already, and stays. */
  if (!ok && !cqrs__mongo_duplicate_key(&e)) return cqrs__mongo_error(err, &e, "save a snapshot");
  return CQRS_OK;
}

static const cqrs_store_ops_t mongo_store_ops = {
    .name = "mongodb",
    .blocking = true,
    .append = ms_append,
    .read_stream = ms_read_stream,
    .read_all = ms_read_all,
    .head = ms_head,
    .snapshot_load = ms_snapshot_load,
    .snapshot_save = ms_snapshot_save,
    .destroy = NULL, /* the store is a view on m */
};

cqrs_store_t *cqrs_mongo_store_new(cqrs_mongo_t *m) { return m ? cqrs_store_new(&mongo_store_ops, m) : NULL; }
