/* The format of the commit documents, checked when the store's indexes are
 * ensured, and the upgrade of a store written in the format before. Format
 * 1 (libcqrs 0.1, and 0.2 until the stream key) made the stream's version
 * unique with a compound index {aggregateType, aggregateId, version}, whose
 * check on insert grows with the collection on a server that enforces
 * unique indexes as exclusion constraints (DocumentDB); format 2 adds to
 * each commit `streamVersion`, one string naming the stream and its first
 * version, unique, and keeps the compound index, no longer unique, for
 * reads. See docs/mongo.md, "Formats". */
#include <string.h>

#include "mongo-private.h"

#define FIRST_COMMIT "00000000000000000001" /* the _id of commit 1 (mongo_store.c) */
#define UPGRADE_BATCH 1000
#define UPGRADE_LOG_EVERY 10000

static cqrs_code_t read_format(mongoc_collection_t *head, int64_t *version, bool *noted, cqrs_error_t *err) {
  bson_t filter = BSON_INITIALIZER, doc;
  BSON_APPEND_UTF8(&filter, "_id", "format");
  cqrs_code_t rc = cqrs__mongo_find_one(head, &filter, NULL, &doc, noted, err, "read the store's format");
  bson_destroy(&filter);
  if (rc || !*noted) return rc;
  bson_iter_t it;
  if (!bson_iter_init_find(&it, &doc, "version") || !cqrs_bson_iter_int64(&it, version))
    rc = cqrs_error_set(err, CQRS_ECODEC, "MongoDB: the store's format note {_id: \"format\"} has no version");
  bson_destroy(&doc);
  return rc;
}

/* Notes the format; *raced when another process noted one first. */
static cqrs_code_t write_format(mongoc_collection_t *head, bool *raced, cqrs_error_t *err) {
  bson_t *doc = BCON_NEW("_id", BCON_UTF8("format"), "version", BCON_INT64(CQRS__MONGO_FORMAT));
  bson_error_t e;
  bool ok = mongoc_collection_insert_one(head, doc, NULL, NULL, &e);
  bson_destroy(doc);
  *raced = !ok && cqrs__mongo_duplicate_key(&e);
  return ok || *raced ? CQRS_OK : cqrs__mongo_error(err, &e, "note the store's format");
}

static cqrs_code_t refuse(const cqrs_mongo_t *m, int64_t version, cqrs_error_t *err) {
  if (version > CQRS__MONGO_FORMAT)
    return cqrs_error_set(err, CQRS_ESTATE,
                          "MongoDB: %s.%s is in format %lld, written by a newer libcqrs; this one reads format %d",
                          m->db, m->events, (long long)version, CQRS__MONGO_FORMAT);
  return cqrs_error_set(err, CQRS_ESTATE,
                        "MongoDB: %s.%s holds commits in format %lld (libcqrs 0.1), without the unique stream key of "
                        "format %d: stop every process that writes to it, then run `cqrs-mongo-upgrade --uri URI "
                        "--database %s --events %s` (or cqrs_mongo_upgrade_store) once; docs/mongo.md, \"Formats\"",
                        m->db, m->events, (long long)version, CQRS__MONGO_FORMAT, m->db, m->events);
}

/* Does the events collection hold a commit? */
static cqrs_code_t has_commits(mongoc_collection_t *events, bool *found, cqrs_error_t *err) {
  bson_t filter = BSON_INITIALIZER, doc;
  BSON_APPEND_UTF8(&filter, "_id", FIRST_COMMIT);
  cqrs_code_t rc = cqrs__mongo_find_one(events, &filter, NULL, &doc, found, err, "look for a commit");
  bson_destroy(&filter);
  if (!rc && *found) bson_destroy(&doc);
  return rc;
}

cqrs_code_t cqrs__mongo_check_format(cqrs_mongo_t *m, cqrs_error_t *err) {
  mconn_t head, events;
  cqrs__mongo_open(m, m->head, &head);
  cqrs__mongo_open(m, m->events, &events);
  int64_t version = 0;
  bool noted = false, found = false, raced = false;
  cqrs_code_t rc = read_format(head.coll, &version, &noted, err);
  if (!rc && !noted && !(rc = has_commits(events.coll, &found, err))) {
    if (found) {
      version = 1; /* commits and no note: the format before the note */
    } else if (!(rc = write_format(head.coll, &raced, err)) && raced) {
      rc = read_format(head.coll, &version, &noted, err);
    } else {
      version = CQRS__MONGO_FORMAT;
    }
  }
  cqrs__mongo_done(m, &events);
  cqrs__mongo_done(m, &head);
  if (!rc && version != CQRS__MONGO_FORMAT) rc = refuse(m, version, err);
  return rc;
}

/* Whether index `name` of the events collection exists, and is unique. */
static cqrs_code_t index_state(mongoc_collection_t *coll, const char *name, bool *exists, bool *unique,
                               cqrs_error_t *err) {
  *exists = *unique = false;
  mongoc_cursor_t *cur = mongoc_collection_find_indexes_with_opts(coll, NULL);
  const bson_t *doc;
  while (mongoc_cursor_next(cur, &doc)) {
    bson_iter_t it;
    if (!bson_iter_init_find(&it, doc, "name") || !BSON_ITER_HOLDS_UTF8(&it) || strcmp(bson_iter_utf8(&it, NULL), name))
      continue;
    *exists = true;
    *unique = bson_iter_init_find(&it, doc, "unique") && bson_iter_as_bool(&it);
  }
  bson_error_t e;
  cqrs_code_t rc = mongoc_cursor_error(cur, &e) ? cqrs__mongo_error(err, &e, "list the indexes") : CQRS_OK;
  mongoc_cursor_destroy(cur);
  return rc;
}

static const char *str_at(const bson_t *doc, const char *key) {
  bson_iter_t it;
  return bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_UTF8(&it) ? bson_iter_utf8(&it, NULL) : NULL;
}

/* Sends the updates queued in *bulk (if any) and starts a new one. */
static cqrs_code_t flush(mongoc_collection_t *coll, mongoc_bulk_operation_t **bulk, size_t *queued, cqrs_error_t *err) {
  cqrs_code_t rc = CQRS_OK;
  if (*queued) {
    bson_t reply;
    bson_error_t e;
    if (!mongoc_bulk_operation_execute(*bulk, &reply, &e)) rc = cqrs__mongo_error(err, &e, "key the commits");
    bson_destroy(&reply);
  }
  mongoc_bulk_operation_destroy(*bulk);
  *bulk = mongoc_collection_create_bulk_operation_with_opts(coll, NULL);
  *queued = 0;
  return rc;
}

/* Gives every commit that lacks it (or holds another) its streamVersion,
 * in commit order, until one it cannot read; *keyed: how many it wrote. */
static cqrs_code_t key_commits(mongoc_collection_t *coll, int64_t *keyed, cqrs_error_t *err) {
  bson_t *opts = BCON_NEW("sort", "{", "_id", BCON_INT32(1), "}", "projection", "{", "aggregateType", BCON_INT32(1),
                          "aggregateId", BCON_INT32(1), "version", BCON_INT32(1), "streamVersion", BCON_INT32(1), "}");
  bson_t filter = BSON_INITIALIZER;
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll, &filter, opts, NULL);
  mongoc_bulk_operation_t *bulk = mongoc_collection_create_bulk_operation_with_opts(coll, NULL);
  size_t queued = 0;
  int64_t seen = 0;
  const bson_t *doc;
  cqrs_code_t rc = CQRS_OK, bad = CQRS_OK; /* bad: a commit it cannot key (those before it are keyed) */
  while (!rc && !bad && mongoc_cursor_next(cur, &doc)) {
    const char *id = str_at(doc, "_id"), *type = str_at(doc, "aggregateType"), *aid = str_at(doc, "aggregateId");
    const char *have = str_at(doc, "streamVersion");
    bson_iter_t it;
    int64_t version;
    char key[CQRS__MONGO_STREAM_KEY_MAX];
    if (!id || !type || !aid || !bson_iter_init_find(&it, doc, "version") || !cqrs_bson_iter_int64(&it, &version) ||
        version < 1) {
      bad = cqrs_error_set(err, CQRS_ECODEC, "MongoDB: commit %.40s has no aggregateType, aggregateId or version: "
                           "it and the commits after it were not upgraded", id ? id : "(without a string _id)");
    } else if (!cqrs__mongo_stream_version_key(key, sizeof key, type, aid, version)) {
      bad = cqrs_error_set(err, CQRS_ETOO_LARGE, "MongoDB: the stream key of commit %.40s is over %d bytes: it and "
                           "the commits after it were not upgraded", id, CQRS__MONGO_STREAM_KEY_MAX - 1);
    } else if (!have || strcmp(have, key)) {
      bson_t *sel = BCON_NEW("_id", BCON_UTF8(id));
      bson_t *set = BCON_NEW("$set", "{", "streamVersion", BCON_UTF8(key), "}");
      bson_error_t e;
      if (!mongoc_bulk_operation_update_one_with_opts(bulk, sel, set, NULL, &e))
        rc = cqrs__mongo_error(err, &e, "key a commit");
      bson_destroy(sel);
      bson_destroy(set);
      int64_t sent = (int64_t)queued + 1;
      if (!rc && ++queued == UPGRADE_BATCH && !(rc = flush(coll, &bulk, &queued, err))) *keyed += sent;
    }
    if (!bad && ++seen % UPGRADE_LOG_EVERY == 0)
      cqrs_log(CQRS_LOG_INFO, "mongo", "upgrade: %lld commits read, %lld keyed", (long long)seen,
               (long long)(*keyed + (int64_t)queued));
  }
  bson_error_t e;
  if (!rc && !bad && mongoc_cursor_error(cur, &e)) rc = cqrs__mongo_error(err, &e, "read the commits");
  int64_t sent = (int64_t)queued;
  if (!rc && !(rc = flush(coll, &bulk, &queued, err))) *keyed += sent;
  mongoc_bulk_operation_destroy(bulk);
  mongoc_cursor_destroy(cur);
  bson_destroy(&filter);
  bson_destroy(opts);
  return rc ? rc : bad;
}

cqrs_code_t cqrs_mongo_upgrade_store(cqrs_mongo_t *m, int64_t *keyed, cqrs_error_t *err) {
  if (keyed) *keyed = 0;
  if (!m) return cqrs_error_set(err, CQRS_EINVAL, "NULL connection");
  int64_t version = 0, n = 0;
  bool noted, exists, unique, raced;
  mconn_t head, events;
  cqrs__mongo_open(m, m->head, &head);
  cqrs__mongo_open(m, m->events, &events);
  cqrs_code_t rc = read_format(head.coll, &version, &noted, err);
  if (!rc && noted && version > CQRS__MONGO_FORMAT) rc = refuse(m, version, err);
  if (!rc && !(noted && version == CQRS__MONGO_FORMAT)) {
    /* Every step can be run again: an upgrade that stopped part-way is
     * finished by the next. The unique compound index goes first, for
     * DocumentDB checks it again at each commit keyed, at a cost that grows
     * with the collection; no process writes meanwhile (the caller's
     * promise), and the note is written last, so that until then
     * cqrs_mongo_ensure_indexes refuses the store. */
    if (!(rc = index_state(events.coll, "stream_version", &exists, &unique, err)) && unique) {
      bson_error_t e;
      if (!mongoc_collection_drop_index_with_opts(events.coll, "stream_version", NULL, &e))
        rc = cqrs__mongo_error(err, &e, "drop the unique index stream_version");
    }
    cqrs_log(CQRS_LOG_INFO, "mongo", "upgrade of %s.%s to format %d: keying the commits", m->db, m->events,
             CQRS__MONGO_FORMAT);
    if (!rc) rc = key_commits(events.coll, &n, err);
    if (!rc) {
      bson_t *keys = BCON_NEW("streamVersion", BCON_INT32(1));
      rc = cqrs_mongo_ensure_index(m, m->events, keys, "stream_version_key", true, err);
      bson_destroy(keys);
    }
    if (!rc) rc = write_format(head.coll, &raced, err);
    if (!rc && raced && !(rc = read_format(head.coll, &version, &noted, err)) && version != CQRS__MONGO_FORMAT)
      rc = refuse(m, version, err);
    if (!rc)
      cqrs_log(CQRS_LOG_INFO, "mongo", "upgrade of %s.%s: %lld commits keyed, format %d noted", m->db, m->events,
               (long long)n, CQRS__MONGO_FORMAT);
  }
  cqrs__mongo_done(m, &events);
  cqrs__mongo_done(m, &head);
  if (keyed) *keyed = n;
  return rc ? rc : cqrs_mongo_ensure_indexes(m, err);
}
