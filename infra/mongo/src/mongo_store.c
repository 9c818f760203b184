/* The event store on MongoDB: one document per commit, so an append is one
 * insert, atomic without transactions. Commits are numbered 1, 2, 3...
 * (their _id), and unique indexes, each on one field (a compound one's
 * check grows with the collection on DocumentDB), enforce the stream's
 * version (streamVersion: optimistic concurrency), the command id
 * (idempotency) and the global position. A writer claims the number and
 * position after the newest commit and lets the primary key turn away a
 * racer, who looks for the head and tries again: a commit is only claimed
 * after its predecessor is visible, so readers never meet a gap, nor a
 * commit that lands late behind a later one. Every read is served by the
 * primary key, a unique index or the prefix of {aggregateType,
 * aggregateId, version} on MongoDB, whatever the collection's size
 * (docs/scaling.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mongo-private.h"

#define CLAIM_ATTEMPTS 200

/* MongoDB refuses documents over 16 MiB. */
#define MAX_COMMIT_BYTES (16 * 1024 * 1024)

/* "<length of type>:<type>/<id>": the stream, unambiguously (the length
 * says where the type ends). False when it does not fit `cap`. */
static bool stream_name(char *buf, size_t cap, const char *type, const char *id) {
  int n = snprintf(buf, cap, "%zu:%s/%s", strlen(type), type, id);
  return n >= 0 && (size_t)n < cap;
}

bool cqrs__mongo_stream_version_key(char *buf, size_t cap, const char *type, const char *id, int64_t version) {
  if (version < 0 || !stream_name(buf, cap, type, id)) return false;
  size_t len = strlen(buf);
  int n = snprintf(buf + len, cap - len, "#%020lld", (long long)version);
  return n >= 0 && (size_t)n < cap - len;
}

/* Keys are never cut: one that does not fit is refused. */
static cqrs_code_t key_too_long(cqrs_error_t *err, const char *type, const char *id) {
  return cqrs_error_set(err, CQRS_ETOO_LARGE, "the key of stream %.64s/%.64s is over %d bytes", type, id,
                        CQRS__MONGO_STREAM_KEY_MAX - 1);
}

/* The commit document: the seed's top-level fields (`type`, `timestamp`,
 * `version` of the first event), the commit's metadata (the envelope, the
 * stream's key at the first version and the positions), and every event in
 * `events` as the framework's codec writes
 * its body, the id under "eventId" (cqrs_event_body_to_bson), where the
 * multikey index {events.type, events.timestamp} finds each of them by type
 * and time. Over MongoDB's limit: CQRS_ETOO_LARGE; a payload that cannot be
 * encoded: its error, and nothing is stored. */
static cqrs_code_t build_commit(bson_t *doc, const cqrs_append_t *req, int64_t position, cqrs_error_t *err) {
  const cqrs_event_t *first = req->events[0];
  char stream_key[CQRS__MONGO_STREAM_KEY_MAX];
  if (!cqrs__mongo_stream_version_key(stream_key, sizeof stream_key, req->aggregate_type, req->aggregate_id,
                                      first->version))
    return key_too_long(err, req->aggregate_type, req->aggregate_id);
  const cqrs_unknown_event_t *u = first->type == &cqrs_unknown_event_type ? first->payload : NULL;
  BSON_APPEND_UTF8(doc, "type", u ? u->type : first->type->name);
  BSON_APPEND_DATE_TIME(doc, "timestamp", first->timestamp);
  BSON_APPEND_INT64(doc, "version", first->version);
  BSON_APPEND_UTF8(doc, "aggregateType", req->aggregate_type);
  BSON_APPEND_UTF8(doc, "aggregateId", req->aggregate_id);
  BSON_APPEND_UTF8(doc, "streamVersion", stream_key);
  BSON_APPEND_INT64(doc, "lastVersion", req->expected_version + (int64_t)req->count);
  BSON_APPEND_INT64(doc, "position", position);
  BSON_APPEND_INT64(doc, "lastPosition", position + (int64_t)req->count - 1);
  BSON_APPEND_UTF8(doc, "commandId", req->command_id);
  const cqrs_envelope_t *env = first->envelope;
  BSON_APPEND_UTF8(doc, "correlationId", env && env->correlation_id[0] ? env->correlation_id : req->command_id);
  bson_t events;
  BSON_APPEND_ARRAY_BEGIN(doc, "events", &events);
  for (size_t i = 0; i < req->count; i++) {
    char key[16];
    const char *k;
    bson_uint32_to_string((uint32_t)i, &k, key, sizeof key);
    bson_t ev;
    cqrs_code_t rc = CQRS_ETOO_LARGE;
    if (bson_append_document_begin(&events, k, -1, &ev)) {
      rc = cqrs_event_body_to_bson(req->events[i], "eventId", &ev, err);
      if (!bson_append_document_end(&events, &ev) && !rc) rc = CQRS_ETOO_LARGE;
    }
    if (rc && rc != CQRS_ETOO_LARGE) {
      bson_append_array_end(doc, &events);
      return rc; /* nothing is stored with part of its data */
    }
    if (rc || doc->len + events.len > MAX_COMMIT_BYTES) {
      bson_append_array_end(doc, &events);
      return cqrs_error_set(err, CQRS_ETOO_LARGE,
                            "a commit of %zu events to %s/%s is over MongoDB's 16 MB document limit", req->count,
                            req->aggregate_type, req->aggregate_id);
    }
  }
  bson_append_array_end(doc, &events);
  return CQRS_OK;
}

/* ---- reads ---- */

static const char *str_of(const bson_t *doc, const char *key) {
  bson_iter_t it;
  if (bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_UTF8(&it)) return bson_iter_utf8(&it, NULL);
  return NULL;
}

static bool get_int(const bson_t *doc, const char *key, int64_t *v) {
  bson_iter_t it;
  return bson_iter_init_find(&it, doc, key) && cqrs_bson_iter_int64(&it, v);
}

typedef struct reader {
  const cqrs_registry_t *reg;
  int64_t last_version; /* the highest version visited */
  int64_t min_version, min_position;
  size_t limit, seen;
  bool placeholders; /* unknown types: placeholders (the feed) or errors (a stream's load) */
  cqrs_event_visit_cb cb;
  void *data;
  bool stopped;
} reader_t;

/* Visits the events of one commit until the reader stops. */
static cqrs_code_t visit_commit(reader_t *r, const bson_t *doc, cqrs_error_t *err) {
  int64_t position;
  const char *atype = str_of(doc, "aggregateType"), *aid = str_of(doc, "aggregateId");
  bson_iter_t it, events;
  if (!atype || !aid || !get_int(doc, "position", &position) || !bson_iter_init_find(&it, doc, "events") ||
      !BSON_ITER_HOLDS_ARRAY(&it) || !bson_iter_recurse(&it, &events))
    return cqrs_error_set(err, CQRS_ECODEC, "malformed commit document");
  cqrs_error_t bad;
  if (position < 1 || cqrs_bson_check_utf8(doc, &bad))
    return cqrs_error_set(err, CQRS_ECODEC, "corrupt commit at position %lld: %.180s", (long long)position,
                          position < 1 ? "not a position" : bad.message);
  cqrs_envelope_t *env;
  cqrs_code_t rc = cqrs_envelope_new(atype, aid, str_of(doc, "commandId"), str_of(doc, "correlationId"), &env, err);
  if (rc) return rc;
  for (int64_t i = 0; !rc && !r->stopped && bson_iter_next(&events); i++) {
    uint32_t len;
    const uint8_t *raw;
    bson_t ev;
    if (!BSON_ITER_HOLDS_DOCUMENT(&events)) {
      rc = cqrs_error_set(err, CQRS_ECODEC, "malformed commit at position %lld", (long long)position);
      break;
    }
    bson_iter_document(&events, &len, &raw);
    if (!bson_init_static(&ev, raw, len)) {
      rc = cqrs_error_set(err, CQRS_ECODEC, "malformed commit at position %lld", (long long)position);
      break;
    }
    if (i > INT64_MAX - position) { /* its position would pass INT64_MAX */
      rc = cqrs_error_set(err, CQRS_ECODEC, "corrupt commit at position %lld: event %lld has no position",
                          (long long)position, (long long)i);
      break;
    }
    int64_t version = 0;
    get_int(&ev, "version", &version);
    if (version < r->min_version || position + i < r->min_position) continue;
    cqrs_event_t *e;
    rc = cqrs_event_body_from_bson(r->reg, &ev, "eventId", env, position + i, r->placeholders, &e, err);
    if (rc) break;
    if (version > r->last_version) r->last_version = version;
    if (!r->cb(e, r->data) || ++r->seen >= r->limit) r->stopped = true;
    cqrs_event_unref(e);
  }
  cqrs_envelope_unref(env);
  return rc;
}

/* ---- commit numbers ----
 *
 * A commit's _id is its commit number, 1, 2, 3... without gaps, written as
 * a zero-padded decimal string (the one filter FerretDB 1.24 hands to its
 * SQL backend rather than filtering in Go). The head is found by galloping
 * primary-key probes from the newest commit this process has seen, and the
 * feed reads commits by key, or by a range of keys, from the commit the
 * unique position index names; other look-ups use the unique indexes and
 * the prefix of the stream's. See docs/scaling.md for what each server
 * makes of them. */

#define SEQ_KEY_LEN 24

static void seq_key(char buf[SEQ_KEY_LEN], int64_t seq) { snprintf(buf, SEQ_KEY_LEN, "%020lld", (long long)seq); }

typedef struct commit_ref {
  int64_t seq, position, last_position;
} commit_ref_t;

/* Finds the document with _id `key`; `out` initialised when found. */
static cqrs_code_t by_key(mongoc_collection_t *coll, const char *key, bson_t *out, bool *found, cqrs_error_t *err,
                          const char *what) {
  bson_t filter = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "_id", key);
  cqrs_code_t rc = cqrs__mongo_find_one(coll, &filter, NULL, out, found, err, what);
  bson_destroy(&filter);
  return rc;
}

/* Commit `seq`, whole (`out` initialised when found). */
static cqrs_code_t fetch_commit(mongoc_collection_t *coll, int64_t seq, bson_t *out, bool *found, cqrs_error_t *err) {
  char key[SEQ_KEY_LEN];
  seq_key(key, seq);
  return by_key(coll, key, out, found, err, "read a commit");
}

/* The positions of commit `seq`. */
static cqrs_code_t probe_commit(mongoc_collection_t *coll, int64_t seq, commit_ref_t *ref, bool *found,
                                cqrs_error_t *err) {
  bson_t doc;
  cqrs_code_t rc = fetch_commit(coll, seq, &doc, found, err);
  if (rc || !*found) return rc;
  ref->seq = seq;
  if (!get_int(&doc, "position", &ref->position) || !get_int(&doc, "lastPosition", &ref->last_position)) {
    rc = cqrs_error_set(err, CQRS_ECODEC, "malformed commit #%lld", (long long)seq);
  } else if (ref->position < 1 || ref->last_position < ref->position || ref->last_position == INT64_MAX) {
    /* The next claim is last + 1: a head at INT64_MAX is corrupt data, not an overflow. */
    rc = cqrs_error_set(err, CQRS_ECODEC, "corrupt commit #%lld: positions %lld..%lld", (long long)seq,
                        (long long)ref->position, (long long)ref->last_position);
  }
  bson_destroy(&doc);
  return rc;
}

/* The newest commit known to this process (seq 0: none). */
static commit_ref_t hint_get(cqrs_mongo_t *m) {
  uv_mutex_lock(&m->hint_lock);
  commit_ref_t h = {m->head_seq, 0, m->head_last};
  uv_mutex_unlock(&m->hint_lock);
  return h;
}

static void feed_hint_locked(cqrs_mongo_t *m, int64_t position, int64_t seq) {
  feed_hint_t *f = &m->feed_hints[m->feed_next++ % FEED_HINTS];
  f->position = position;
  f->seq = seq;
}

/* Remembers that commit `ref` exists: the head is at least there, and a read
 * of the feed from its position starts at it. */
static void hint_seen(cqrs_mongo_t *m, const commit_ref_t *ref) {
  uv_mutex_lock(&m->hint_lock);
  if (ref->seq > m->head_seq) {
    m->head_seq = ref->seq;
    m->head_last = ref->last_position;
  }
  feed_hint_locked(m, ref->position, ref->seq);
  uv_mutex_unlock(&m->hint_lock);
}

/* Remembers that a read from `position` starts at commit `seq`. */
static void hint_next(cqrs_mongo_t *m, int64_t position, int64_t seq) {
  uv_mutex_lock(&m->hint_lock);
  feed_hint_locked(m, position, seq);
  uv_mutex_unlock(&m->hint_lock);
}

/* The newest commit (seq 0 when none): probes forward from the newest known,
 * doubling the step, then halves the gap. Commits are never deleted, so
 * what was seen once stays. About 2 log2(n) probes cold, 1 warm. */
/* A process that has just started would need ~2 log2(n) probes; on a
 * server that scans for every probe (FerretDB) that is seconds. A one-
 * document collection remembers a recent head, written every HEAD_EVERY
 * commits: reading it is one probe of a tiny collection, and the search
 * goes on from there. It may lag; it is never ahead. */
#define HEAD_EVERY 16

static void head_note_read(cqrs_mongo_t *m, commit_ref_t *lo) {
  mconn_t c;
  cqrs__mongo_open(m, m->head, &c);
  bson_t doc;
  bool found;
  cqrs_error_t ignored;
  int64_t seq;
  if (!by_key(c.coll, "head", &doc, &found, &ignored, "read the head note") && found) {
    if (get_int(&doc, "seq", &seq) && seq > 0) lo->seq = seq;
    bson_destroy(&doc);
  }
  cqrs__mongo_done(m, &c);
}

static void head_note_write(cqrs_mongo_t *m, int64_t seq) {
  bson_t *filter = BCON_NEW("_id", BCON_UTF8("head"));
  bson_t *update = BCON_NEW("$max", "{", "seq", BCON_INT64(seq), "}");
  bson_t *opts = BCON_NEW("upsert", BCON_BOOL(true));
  mconn_t c;
  cqrs__mongo_open(m, m->head, &c);
  mongoc_collection_update_one(c.coll, filter, update, opts, NULL, NULL);
  cqrs__mongo_done(m, &c);
  bson_destroy(filter);
  bson_destroy(update);
  bson_destroy(opts);
}

static cqrs_code_t find_head(cqrs_mongo_t *m, mongoc_collection_t *coll, commit_ref_t *head, cqrs_error_t *err) {
  commit_ref_t lo = hint_get(m), r;
  int64_t hi = 0, step = 1;
  bool found;
  cqrs_code_t rc;
  if (!lo.seq) {
    head_note_read(m, &lo);
    if (lo.seq) {
      if ((rc = probe_commit(coll, lo.seq, &r, &found, err))) return rc;
      lo = found ? r : (commit_ref_t){0, 0, 0};
    }
  }
  for (;;) {
    if ((rc = probe_commit(coll, lo.seq + step, &r, &found, err))) return rc;
    if (!found) {
      hi = lo.seq + step;
      break;
    }
    lo = r;
    if (step < ((int64_t)1 << 40)) step *= 2;
  }
  while (hi - lo.seq > 1) {
    int64_t mid = lo.seq + (hi - lo.seq) / 2;
    if ((rc = probe_commit(coll, mid, &r, &found, err))) return rc;
    if (found) {
      lo = r;
    } else {
      hi = mid;
    }
  }
  *head = lo;
  if (lo.seq) hint_seen(m, &lo);
  return CQRS_OK;
}

static cqrs_code_t head_on(cqrs_mongo_t *m, mongoc_collection_t *coll, int64_t *position, cqrs_error_t *err) {
  commit_ref_t head;
  cqrs_code_t rc = find_head(m, coll, &head, err);
  *position = rc ? 0 : head.last_position;
  return rc;
}

/* The number of the commit whose first position is p, if any: the unique
 * position index answers in one look-up on a server that reads through its
 * indexes, whatever the store's size (a reader resuming from a checkpoint
 * starts at a commit's first position). */
static cqrs_code_t commit_starting_at(mongoc_collection_t *coll, int64_t p, int64_t *seq, bool *found,
                                      cqrs_error_t *err) {
  bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, proj, doc;
  BSON_APPEND_INT64(&filter, "position", p);
  BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
  BSON_APPEND_INT32(&proj, "_id", 1);
  bson_append_document_end(&opts, &proj);
  cqrs_code_t rc = cqrs__mongo_find_one(coll, &filter, &opts, &doc, found, err, "find a commit by position");
  bson_destroy(&filter);
  bson_destroy(&opts);
  if (rc || !*found) return rc;
  const char *key = str_of(&doc, "_id");
  char *end = NULL;
  *seq = key ? strtoll(key, &end, 10) : 0;
  if (!key || *end || *seq < 1)
    rc = cqrs_error_set(err, CQRS_ECODEC, "corrupt commit at position %lld: its _id is not a commit number",
                        (long long)p);
  bson_destroy(&doc);
  return rc;
}

/* The commit that holds global position p: a recent read or append left
 * its number, or it starts at p (commit_starting_at), or a binary search
 * over commit numbers finds it. *seq is the head + 1 when p is past the
 * head. */
static cqrs_code_t locate(cqrs_mongo_t *m, mongoc_collection_t *coll, int64_t p, int64_t *seq, cqrs_error_t *err) {
  if (p <= 1) {
    *seq = 1;
    return CQRS_OK;
  }
  uv_mutex_lock(&m->hint_lock);
  int64_t hit = 0;
  for (int i = 0; i < FEED_HINTS && !hit; i++) {
    if (m->feed_hints[i].seq && m->feed_hints[i].position == p) hit = m->feed_hints[i].seq;
  }
  uv_mutex_unlock(&m->hint_lock);
  if (hit) {
    *seq = hit;
    return CQRS_OK;
  }
  bool starts;
  cqrs_code_t rc = commit_starting_at(coll, p, seq, &starts, err);
  if (rc || starts) return rc;
  commit_ref_t head, r;
  if ((rc = find_head(m, coll, &head, err))) return rc;
  if (p > head.last_position) {
    *seq = head.seq + 1;
    return CQRS_OK;
  }
  int64_t lo = 1, hi = head.seq; /* the answer lies in [lo, hi] */
  while (lo < hi) {
    int64_t mid = lo + (hi - lo + 1) / 2;
    bool found;
    if ((rc = probe_commit(coll, mid, &r, &found, err))) return rc;
    if (!found) return cqrs_error_set(err, CQRS_ECODEC, "commit #%lld is missing below the head", (long long)mid);
    if (r.position <= p) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  *seq = lo;
  return CQRS_OK;
}

/* ---- look-ups an index serves ---- */

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

/* {field: value}, through that field's unique index. */
static cqrs_code_t key_exists(mongoc_collection_t *coll, const char *field, const char *value, bool *found,
                              cqrs_error_t *err, const char *what) {
  bson_t filter = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, field, value);
  cqrs_code_t rc = exists(coll, &filter, found, err, what);
  bson_destroy(&filter);
  return rc;
}

/* {commandId}: the unique command_id index. */
static cqrs_code_t command_exists(mongoc_collection_t *coll, const char *command_id, bool *found, cqrs_error_t *err) {
  return key_exists(coll, "commandId", command_id, found, err, "look up a command id");
}

/* {streamVersion}: the unique stream_version_key index. A commit begins
 * at `version` of the stream. */
static cqrs_code_t version_taken(mongoc_collection_t *coll, const cqrs_append_t *req, int64_t version, bool *found,
                                 cqrs_error_t *err) {
  char key[CQRS__MONGO_STREAM_KEY_MAX];
  if (!cqrs__mongo_stream_version_key(key, sizeof key, req->aggregate_type, req->aggregate_id, version))
    return key_too_long(err, req->aggregate_type, req->aggregate_id);
  return key_exists(coll, "streamVersion", key, found, err, "read the stream's version");
}

/* {aggregateType, aggregateId, lastVersion}: the stream_version index's
 * prefix, then at most the stream's own commits. A commit ends at
 * `version` of the stream. */
static cqrs_code_t version_reached(mongoc_collection_t *coll, const cqrs_append_t *req, int64_t version, bool *found,
                                   cqrs_error_t *err) {
  bson_t filter = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "aggregateType", req->aggregate_type);
  BSON_APPEND_UTF8(&filter, "aggregateId", req->aggregate_id);
  BSON_APPEND_INT64(&filter, "lastVersion", version);
  cqrs_code_t rc = exists(coll, &filter, found, err, "read the stream's version");
  bson_destroy(&filter);
  return rc;
}

static cqrs_code_t conflict(const cqrs_append_t *req, cqrs_error_t *err) {
  return cqrs_error_set(err, CQRS_ECONFLICT, "%s/%s has moved past version %lld", req->aggregate_type,
                        req->aggregate_id, (long long)req->expected_version);
}

/* ---- append ---- */

/* One commit waiting for its group (see write_group). */
typedef struct pending {
  const cqrs_append_t *req;
  cqrs_append_result_t *res;
  cqrs_error_t *err;
  cqrs_code_t rc;
  bool done;
  struct pending *next;
  /* A chain (ms_append_many): the commit before this one of the same
   * stream, which must land first; whether each has an outcome (`decided`,
   * set by finish) and landed. */
  const struct pending *after;
  bool decided, landed;
} pending_t;

static void group_commit(cqrs_mongo_t *m, mongoc_collection_t *coll, pending_t *first, pending_t *last, size_t count);


/* Whether `req` may go to the insert: CQRS_OK unless the stream is behind
 * the version it expects (a conflict), or CQRS_OK with res->duplicate when
 * its command committed before. */
static cqrs_code_t stream_reaches(cqrs_mongo_t *m, mongoc_collection_t *coll, const cqrs_append_t *req,
                                  cqrs_append_result_t *res, cqrs_error_t *err) {
  bool found;
  cqrs_code_t rc;
  if (req->expected_version > 0 &&
      !cqrs__mongo_version_known(m, req->aggregate_type, req->aggregate_id, req->expected_version)) {
    /* The unique index catches an expected version that is behind; one
     * that is ahead of the stream needs this look, unless this process has
     * seen the stream reach it. */
    if ((rc = version_reached(coll, req, req->expected_version, &found, err))) return rc;
    if (!found) {
      if ((rc = command_exists(coll, req->command_id, &found, err))) return rc;
      if (found) {
        res->duplicate = true;
        return CQRS_OK;
      }
      return conflict(req, err);
    }
  }
  return CQRS_OK;
}

static cqrs_code_t append_on(cqrs_mongo_t *m, mongoc_collection_t *coll, const cqrs_append_t *req,
                             cqrs_append_result_t *res, cqrs_error_t *err) {
  cqrs_code_t rc = stream_reaches(m, coll, req, res, err);
  if (rc || res->duplicate) return rc;
  pending_t me = {.req = req, .res = res, .err = err};
  group_commit(m, coll, &me, &me, 1);
  return me.rc;
}

static void committed(cqrs_mongo_t *m, const cqrs_append_t *req, const commit_ref_t *ref, cqrs_append_result_t *res) {
  for (size_t i = 0; i < req->count; i++) req->events[i]->position = ref->position + (int64_t)i;
  res->first_position = ref->position;
  res->last_position = ref->last_position;
  hint_seen(m, ref);
  cqrs__mongo_version_seen(m, req->aggregate_type, req->aggregate_id, req->expected_version + (int64_t)req->count);
}

/* Which unique index turned commit `seq` away? FerretDB does not say.
 * Sets *retry when another writer took the number (the caller claims the
 * next), else answers: a duplicate command, or a conflict. */
static cqrs_code_t disambiguate(mongoc_collection_t *coll, const cqrs_append_t *req, int64_t seq,
                                bool *retry, cqrs_append_result_t *res, cqrs_error_t *err) {
  bool found;
  bson_t doc;
  *retry = false;
  cqrs_code_t rc = fetch_commit(coll, seq, &doc, &found, err);
  if (rc) return rc;
  if (found) {
    const char *cmd = str_of(&doc, "commandId");
    bool ours = cmd && !strcmp(cmd, req->command_id);
    bson_destroy(&doc);
    if (!ours) {
      *retry = true;
      return CQRS_OK;
    }
  }
  if ((rc = command_exists(coll, req->command_id, &found, err))) return rc;
  if (found) {
    res->duplicate = true;
    return CQRS_OK;
  }
  if ((rc = version_taken(coll, req, req->expected_version + 1, &found, err))) return rc;
  if (found) return conflict(req, err);
  *retry = true; /* the position index, behind a stale head: look again */
  return CQRS_OK;
}

/* Group commit. Concurrent appends of one process queue here; whoever finds
 * no writer at work takes everything queued (up to GROUP_MAX) and writes it
 * as one ordered insert of consecutive commit numbers and positions, so the
 * server sees one round trip per group rather than per commit. Each commit
 * keeps its own outcome: the insert stops at the first refused document;
 * the commits before it are in, that one is answered alone (a duplicate, a
 * conflict, or a number another process took), and the rest go again. */
#define GROUP_MAX 64

static bool insert_group(mongoc_collection_t *coll, const bson_t **docs, size_t n, size_t *inserted, bson_error_t *e) {
  bson_t opts = BSON_INITIALIZER, reply;
  BSON_APPEND_BOOL(&opts, "ordered", true);
  bool ok = n == 1 ? mongoc_collection_insert_one(coll, docs[0], NULL, &reply, e)
                   : mongoc_collection_insert_many(coll, docs, n, &opts, &reply, e);
  *inserted = ok ? n : 0;
  /* An ordered insert stops at its first write error, so that error's index
   * is the number inserted (mongo-java-server counts every document sent in
   * insertedCount, refused or not); insertedCount is the fallback. */
  bson_iter_t root, it;
  if (!ok && ((bson_iter_init(&root, &reply) && bson_iter_find_descendant(&root, "writeErrors.0.index", &it)) ||
              bson_iter_init_find(&it, &reply, "insertedCount")) && BSON_ITER_HOLDS_INT(&it)) {
    int64_t c = bson_iter_as_int64(&it);
    if (c > 0 && (size_t)c < n) *inserted = (size_t)c;
  }
  bson_destroy(&reply);
  bson_destroy(&opts);
  return ok;
}

/* The outcome; `done` is set under the lock afterwards (group_commit). */
static void finish(pending_t *p, cqrs_code_t rc) {
  p->rc = rc;
  p->decided = true;
}

static void fail_all(pending_t **g, size_t from, size_t n, cqrs_code_t rc, const cqrs_error_t *err) {
  for (size_t i = from; i < n; i++) {
    if (g[i]->err) *g[i]->err = *err;
    finish(g[i], rc);
  }
}

/* Writes the commits of `g` (n of them, none done) until each has an
 * outcome. *note: the commit number the head note should be raised to
 * (0: none), written once the group is released (group_commit). */
static void write_group(cqrs_mongo_t *m, mongoc_collection_t *coll, pending_t **g, size_t n, int64_t *note) {
  commit_ref_t head = hint_get(m);
  cqrs_error_t herr;
  cqrs_code_t rc;
  if (!head.seq && (rc = find_head(m, coll, &head, &herr))) {
    fail_all(g, 0, n, rc, &herr);
    return;
  }
  const bson_t *docs[GROUP_MAX];
  bson_t built[GROUP_MAX];
  commit_ref_t claims[GROUP_MAX];
  size_t from = 0;
  for (int attempt = 0; from < n; attempt++) {
    if (attempt >= CLAIM_ATTEMPTS) {
      cqrs_error_set(&herr, CQRS_ESTORE, "MongoDB: no free global position after %d attempts", CLAIM_ATTEMPTS);
      fail_all(g, from, n, CQRS_ESTORE, &herr);
      return;
    }
    /* Claim numbers and positions one after the other. */
    size_t k = 0;
    pending_t *batch[GROUP_MAX];
    commit_ref_t at = head;
    for (size_t i = from; i < n; i++) {
      const cqrs_append_t *req = g[i]->req;
      if (g[i]->after && g[i]->after->decided && !g[i]->after->landed) {
        /* The commit before it in its chain did not land: never after it. */
        finish(g[i], CQRS_ESTATE);
        continue;
      }
      if (at.last_position < 0 || req->count > (uint64_t)(INT64_MAX - 1 - at.last_position)) {
        /* The positions would pass INT64_MAX: the head read is corrupt. */
        finish(g[i], cqrs_error_set(g[i]->err, CQRS_ECODEC, "corrupt commit: no room for %zu events after position %lld",
                                    req->count, (long long)at.last_position));
        continue;
      }
      commit_ref_t c = {at.seq + 1, at.last_position + 1, at.last_position + (int64_t)req->count};
      char key[SEQ_KEY_LEN];
      seq_key(key, c.seq);
      bson_init(&built[k]);
      BSON_APPEND_UTF8(&built[k], "_id", key);
      if ((rc = build_commit(&built[k], req, c.position, g[i]->err))) {
        bson_destroy(&built[k]);
        finish(g[i], rc);
        continue;
      }
      docs[k] = &built[k];
      claims[k] = c;
      batch[k++] = g[i];
      at = c;
    }
    /* The refused ones are out; the rest are the batch now. */
    for (size_t i = 0; i < k; i++) g[from + i] = batch[i];
    n = from + k;
    if (!k) return;
    size_t inserted;
    bson_error_t e;
    bool ok = insert_group(coll, docs, k, &inserted, &e);
    for (size_t i = 0; i < k; i++) bson_destroy(&built[i]);
    for (size_t i = 0; i < inserted; i++) {
      committed(m, batch[i]->req, &claims[i], batch[i]->res);
      batch[i]->landed = true;
      finish(batch[i], CQRS_OK);
    }
    if (inserted && (claims[0].seq - 1) / HEAD_EVERY != claims[inserted - 1].seq / HEAD_EVERY)
      *note = claims[inserted - 1].seq;
    if (ok) return;
    if (inserted) head = claims[inserted - 1];
    from += inserted;
    pending_t *p = g[from];
    if (!cqrs__mongo_duplicate_key(&e)) {
      fail_all(g, from, n, cqrs__mongo_error(&herr, &e, "append a commit"), &herr);
      return;
    }
    bool retry;
    if ((rc = disambiguate(coll, p->req, claims[inserted].seq, &retry, p->res, p->err)) || !retry) {
      finish(p, rc);
      from++;
      continue;
    }
    /* Another process took the number. Racers looking for the head together
     * collide again: spread them out, more at each collision. */
    if (attempt > 1) uv_sleep((unsigned)(rand() % (1 << (attempt < 6 ? attempt : 6))));
    if ((rc = find_head(m, coll, &head, &herr))) {
      fail_all(g, from, n, rc, &herr);
      return;
    }
  }
}

/* Gathering. Writers that wait for their commit come back together when
 * it is in: the first one back would find the queue nearly empty and send
 * a group of one, the rest queueing behind it, so groups alternate small
 * and large and cost a round trip more than the writers need. A leader
 * that finds fewer commits queued than the last group and its queue held,
 * right after that group, waits for them a little (a share of the insert's
 * round trip, at most GATHER_MAX_NS): they are the writers coming back. A
 * lone writer never waits; a guess that is wrong costs that wait once. */
#define GATHER_SHARE 4
#define GATHER_MAX_NS 2000000u

static void gather(cqrs_mongo_t *m, uint64_t ended) {
  uint64_t now = uv_hrtime(), rtt = m->group_rtt_ns;
  if (m->group_queued >= m->group_demand || !rtt || now - ended > rtt) return;
  uint64_t end = now + (rtt / GATHER_SHARE < GATHER_MAX_NS ? rtt / GATHER_SHARE : GATHER_MAX_NS);
  m->group_gathering = true;
  while (m->group_queued < m->group_demand && now < end) {
    uv_cond_timedwait(&m->group_full, &m->group_lock, end - now);
    now = uv_hrtime();
  }
  m->group_gathering = false;
}

/* Queues the commits first..last (`count`, linked) and returns once each has
 * its outcome (the last one's comes last). */
static void group_commit(cqrs_mongo_t *m, mongoc_collection_t *coll, pending_t *first, pending_t *last, size_t count) {
  uv_mutex_lock(&m->group_lock);
  if (m->group_tail) {
    m->group_tail->next = first;
  } else {
    m->group_head = first;
  }
  m->group_tail = last;
  if ((m->group_queued += count) >= m->group_demand && m->group_gathering) uv_cond_signal(&m->group_full);
  while (!last->done) {
    if (m->group_writing) {
      uv_cond_wait(&m->group_cond, &m->group_lock);
      continue;
    }
    m->group_writing = true;
    gather(m, m->group_ended);
    pending_t *g[GROUP_MAX], *results[GROUP_MAX];
    size_t n = 0;
    while (m->group_head && n < GROUP_MAX) {
      g[n] = m->group_head;
      results[n] = g[n];
      n++;
      m->group_head = m->group_head->next;
    }
    if (!m->group_head) m->group_tail = NULL;
    m->group_queued -= n;
    uv_mutex_unlock(&m->group_lock);
    int64_t note = 0;
    uint64_t t0 = uv_hrtime();
    write_group(m, coll, g, n, &note);
    uint64_t t1 = uv_hrtime();
    /* Outcomes are published under the lock: a waiter may return (and its
     * pending_t go) as soon as it sees done. */
    uv_mutex_lock(&m->group_lock);
    for (size_t i = 0; i < n; i++) results[i]->done = true;
    m->group_writing = false;
    m->group_rtt_ns = m->group_rtt_ns ? (m->group_rtt_ns * 7 + (t1 - t0)) / 8 : t1 - t0;
    /* The writers coming back: this group's and those queued behind it,
     * but not this one if it writes the note first. */
    size_t back = n + m->group_queued - (note && n ? 1 : 0);
    m->group_demand = back < GROUP_MAX ? back : GROUP_MAX;
    m->group_ended = t1;
    uv_cond_broadcast(&m->group_cond);
    if (note) {
      /* The note is a round trip as long as the insert: written here, after
       * the group is released, the next group's insert runs beside it
       * rather than behind it. It names a commit that is in, so it never
       * leads, whenever it lands; one in flight at a time (a skipped one
       * only lets the note lag more, until the next multiple). */
      uv_mutex_unlock(&m->group_lock);
      if (!atomic_exchange(&m->note_writing, true)) {
        head_note_write(m, note);
        atomic_store(&m->note_writing, false);
      }
      uv_mutex_lock(&m->group_lock);
    }
  }
  uv_mutex_unlock(&m->group_lock);
}

static cqrs_code_t ms_append(void *impl, const cqrs_append_t *req, cqrs_append_result_t *res, cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  mconn_t c;
  cqrs__mongo_open(m, m->events, &c);
  cqrs_code_t rc = append_on(m, c.coll, req, res, err);
  cqrs__mongo_done(m, &c);
  return rc;
}

/* append_many: the commits of one stream as a chain through group commit,
 * in order, so that consecutive commits share its ordered inserts (one
 * round trip for up to GROUP_MAX commits rather than one each); a commit
 * whose predecessor did not land is never written (write_group). Only the
 * first commit can expect a version the stream has not reached (each after
 * it expects what the one before leaves): append's look is for it alone.
 * Chains of GROUP_MAX at most, on the stack: a group takes no more. */
static cqrs_code_t append_chain(cqrs_mongo_t *m, mongoc_collection_t *coll, const cqrs_append_t *reqs, size_t n,
                                cqrs_append_result_t *res, size_t *landed, cqrs_error_t *err) {
  pending_t p[GROUP_MAX];
  for (size_t i = 0; i < n; i++) {
    p[i] = (pending_t){.req = &reqs[i], .res = &res[i], .err = err, .next = i + 1 < n ? &p[i + 1] : NULL,
                       .after = i ? &p[i - 1] : NULL};
  }
  group_commit(m, coll, &p[0], &p[n - 1], n);
  for (*landed = 0; *landed < n && p[*landed].landed;) ++*landed;
  return *landed < n ? p[*landed].rc : CQRS_OK;
}

static cqrs_code_t ms_append_many(void *impl, const cqrs_append_t *reqs, size_t n, cqrs_append_result_t *res,
                                  size_t *done, cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  mconn_t c;
  cqrs__mongo_open(m, m->events, &c);
  *done = 0;
  cqrs_code_t rc = stream_reaches(m, c.coll, &reqs[0], &res[0], err);
  if (!rc && !res[0].duplicate) {
    size_t k, landed;
    do {
      k = n - *done < GROUP_MAX ? n - *done : GROUP_MAX;
      rc = append_chain(m, c.coll, reqs + *done, k, res + *done, &landed, err);
      *done += landed;
    } while (landed == k && *done < n);
  }
  cqrs__mongo_done(m, &c);
  return rc;
}

/* ---- reads ---- */

/* Visits the commits `filter` matches in `sort_key` order (from an index:
 * stream_version for a stream, the primary key for the feed). The feed
 * passes `last`, the commit before the first it asks for: it ends at a
 * commit that does not follow the last one, as a commit not visible yet
 * (a racing insert) would leave, and the next read starts there. */
static cqrs_code_t read_commits(mongoc_collection_t *coll, const bson_t *filter, const char *sort_key, int64_t limit,
                                reader_t *r, commit_ref_t *last, cqrs_error_t *err) {
  bson_t opts = BSON_INITIALIZER, sort;
  BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
  BSON_APPEND_INT32(&sort, sort_key, 1);
  bson_append_document_end(&opts, &sort);
  if (limit > 0) BSON_APPEND_INT64(&opts, "limit", limit);
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll, filter, &opts, NULL);
  const bson_t *doc;
  cqrs_code_t rc = CQRS_OK;
  while (!rc && !r->stopped && mongoc_cursor_next(cur, &doc)) {
    bson_iter_t it;
    commit_ref_t at = {0, 0, 0};
    if (last && bson_iter_init_find(&it, doc, "_id") && BSON_ITER_HOLDS_UTF8(&it))
      at.seq = strtoll(bson_iter_utf8(&it, NULL), NULL, 10);
    if (last && at.seq != last->seq + 1) break;
    if ((rc = visit_commit(r, doc, err)) || !last) continue;
    if (!get_int(doc, "position", &at.position) || !get_int(doc, "lastPosition", &at.last_position))
      rc = cqrs_error_set(err, CQRS_ECODEC, "malformed commit #%lld", (long long)at.seq);
    *last = at;
  }
  bson_error_t e;
  if (!rc && mongoc_cursor_error(cur, &e)) rc = cqrs__mongo_error(err, &e, "read events");
  mongoc_cursor_destroy(cur);
  bson_destroy(&opts);
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
  reader_t r = {m->reg, 0, from_version, 0, SIZE_MAX, 0, false, cb, data, false};
  mconn_t c;
  cqrs__mongo_open(m, m->events, &c);
  cqrs_code_t rc = read_commits(c.coll, &filter, "version", 0, &r, NULL, err);
  cqrs__mongo_done(m, &c);
  bson_destroy(&filter);
  /* Read to the end: the stream was at this version. */
  if (!rc && !r.stopped && r.last_version > 0) cqrs__mongo_version_seen(m, type, id, r.last_version);
  return rc;
}

/* Probes this many commits by key before a range read: a feed that follows
 * the head mostly finds zero to a few new commits, which probes serve
 * cheapest on servers that filter the primary key but sort nothing. */
#define FEED_PROBES 4
#define FEED_KEYS 256 /* commits a page names by key, at most */

static cqrs_code_t ms_read_all(void *impl, int64_t from_position, size_t limit, cqrs_event_visit_cb cb, void *data,
                               cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  reader_t r = {m->reg, 0, 0, from_position, limit, 0, true, cb, data, false};
  mconn_t c;
  cqrs__mongo_open(m, m->events, &c);
  int64_t seq = 1;
  cqrs_code_t rc = locate(m, c.coll, from_position, &seq, err);
  commit_ref_t last = {0, 0, 0};
  bool more = true;
  for (size_t n = 0; !rc && more && !r.stopped && n < limit && n < FEED_PROBES; n++, seq++) {
    bson_t doc;
    if ((rc = fetch_commit(c.coll, seq, &doc, &more, err)) || !more) break;
    if (!(rc = visit_commit(&r, &doc, err))) {
      last.seq = seq;
      if (!get_int(&doc, "position", &last.position) || !get_int(&doc, "lastPosition", &last.last_position))
        rc = cqrs_error_set(err, CQRS_ECODEC, "malformed commit #%lld", (long long)seq);
    }
    bson_destroy(&doc);
  }
  if (!rc && more && !r.stopped && limit > FEED_PROBES) {
    /* A commit holds one event or more: `want` commits hold enough. A page
     * of the feed (the dispatcher reads 256 events at a time) names its
     * commits' keys, which a server that serves only equality from its
     * indexes (mongo-java-server) answers from the primary key too; a
     * longer read is one range of keys. */
    size_t want = limit - r.seen;
    char key[SEQ_KEY_LEN];
    bson_t filter = BSON_INITIALIZER, range;
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "_id", &range);
    if (want <= FEED_KEYS) {
      bson_t keys;
      BSON_APPEND_ARRAY_BEGIN(&range, "$in", &keys);
      for (size_t i = 0; i < want; i++) {
        char idx[16];
        const char *k;
        bson_uint32_to_string((uint32_t)i, &k, idx, sizeof idx);
        seq_key(key, seq + (int64_t)i);
        bson_append_utf8(&keys, k, -1, key, -1);
      }
      bson_append_array_end(&range, &keys);
    } else {
      seq_key(key, seq);
      BSON_APPEND_UTF8(&range, "$gte", key);
    }
    bson_append_document_end(&filter, &range);
    rc = read_commits(c.coll, &filter, "_id", want > (size_t)INT64_MAX ? 0 : (int64_t)want, &r, &last, err);
    bson_destroy(&filter);
  }
  cqrs__mongo_done(m, &c);
  if (last.seq) {
    /* The next read most likely starts at the next commit. */
    hint_seen(m, &last);
    hint_next(m, last.last_position + 1, last.seq + 1);
  }
  return rc;
}

static cqrs_code_t ms_head(void *impl, int64_t *position, cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  mconn_t c;
  cqrs__mongo_open(m, m->events, &c);
  cqrs_code_t rc = head_on(m, c.coll, position, err);
  cqrs__mongo_done(m, &c);
  return rc;
}

static cqrs_code_t ms_has_command(void *impl, const char *command_id, bool *found, cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  mconn_t c;
  cqrs__mongo_open(m, m->events, &c);
  cqrs_code_t rc = command_exists(c.coll, command_id, found, err);
  cqrs__mongo_done(m, &c);
  return rc;
}

/* ---- snapshots ---- */

static cqrs_code_t ms_snapshot_load(void *impl, const char *type, const char *id, cqrs_snapshot_t *out, bool *found,
                                    cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  char key[CQRS__MONGO_STREAM_KEY_MAX];
  if (!stream_name(key, sizeof key, type, id)) return key_too_long(err, type, id);
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
  char key[CQRS__MONGO_STREAM_KEY_MAX];
  if (!stream_name(key, sizeof key, snap->aggregate_type, snap->aggregate_id))
    return key_too_long(err, snap->aggregate_type, snap->aggregate_id);
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
    .append_many = ms_append_many,
    .read_stream = ms_read_stream,
    .read_all = ms_read_all,
    .head = ms_head,
    .has_command = ms_has_command,
    .snapshot_load = ms_snapshot_load,
    .snapshot_save = ms_snapshot_save,
    .destroy = NULL, /* the store is a view on m */
};

cqrs_code_t cqrs_mongo_store_new(cqrs_mongo_t *m, cqrs_store_t **out, cqrs_error_t *err) {
  if (!m) {
    if (out) *out = NULL;
    return cqrs_error_set(err, CQRS_EINVAL, "NULL connection");
  }
  return cqrs_store_new(&mongo_store_ops, m, out, err);
}

/* ---- for the fuzz harness (fuzz/fuzz_commit.c) ---- */

cqrs_code_t cqrs__mongo_decode_commit(const cqrs_registry_t *reg, const bson_t *doc, cqrs_event_visit_cb cb,
                                      void *data, cqrs_error_t *err) {
  reader_t r = {.reg = reg, .limit = SIZE_MAX, .placeholders = true, .cb = cb, .data = data};
  return visit_commit(&r, doc, err);
}

cqrs_code_t cqrs__mongo_build_commit(bson_t *doc, const cqrs_append_t *req, int64_t position, cqrs_error_t *err) {
  return build_commit(doc, req, position, err);
}
