/* Commits written straight to the events collection, behind the store's
 * back, shaped as infra/mongo/src/mongo_store.c's build_commit writes them:
 * the format of every commit ever stored, which the store must go on
 * reading. For tests of old or corrupt stored commits. Format 1 (libcqrs
 * 0.1) has no streamVersion; format 2 adds it (the key of the stream at
 * the commit's first version, "<length of type>:<type>/<id>#<version, 20
 * digits>", written here by hand). */
#ifndef TEST_RAW_COMMIT_H
#define TEST_RAW_COMMIT_H

#include <mongoc/mongoc.h>

#include "mongo_fixture.h"

/* A client of its own on the events collection ("cqrs_events") of `m`. */
typedef struct raw_events {
  mongoc_client_t *client;
  mongoc_collection_t *coll;
} raw_events_t;

static inline void raw_events_open(raw_events_t *r, cqrs_mongo_t *m) {
  r->client = mongoc_client_new(test_mongo_uri());
  assert_non_null(r->client);
  r->coll = mongoc_client_get_collection(r->client, cqrs_mongo_database(m), "cqrs_events");
}

static inline void raw_events_close(raw_events_t *r) {
  mongoc_collection_destroy(r->coll);
  mongoc_client_destroy(r->client);
}

/* What a commit says of itself; the type, time and version of its first
 * event stand at its top (the seed's fields). */
typedef struct raw_commit {
  int64_t seq; /* its _id, zero-padded */
  const char *type;
  int64_t at, version;
  const char *stream; /* aggregate type "ledger" */
  int64_t last_version, position, last_position;
  const char *command_id, *correlation_id;
} raw_commit_t;

/* Writes the commit's own fields into `doc`, as format `format` (1 or 2)
 * has them, and begins its `events`. */
static inline void raw_commit_begin_format(bson_t *doc, bson_t *events, const raw_commit_t *c, int format) {
  char id[24];
  snprintf(id, sizeof id, "%020lld", (long long)c->seq);
  BSON_APPEND_UTF8(doc, "_id", id);
  BSON_APPEND_UTF8(doc, "type", c->type);
  BSON_APPEND_DATE_TIME(doc, "timestamp", c->at);
  BSON_APPEND_INT64(doc, "version", c->version);
  BSON_APPEND_UTF8(doc, "aggregateType", "ledger");
  BSON_APPEND_UTF8(doc, "aggregateId", c->stream);
  if (format >= 2) {
    char key[200];
    snprintf(key, sizeof key, "6:ledger/%s#%020lld", c->stream, (long long)c->version);
    BSON_APPEND_UTF8(doc, "streamVersion", key);
  }
  BSON_APPEND_INT64(doc, "lastVersion", c->last_version);
  BSON_APPEND_INT64(doc, "position", c->position);
  BSON_APPEND_INT64(doc, "lastPosition", c->last_position);
  BSON_APPEND_UTF8(doc, "commandId", c->command_id);
  BSON_APPEND_UTF8(doc, "correlationId", c->correlation_id);
  BSON_APPEND_ARRAY_BEGIN(doc, "events", events);
}

/* The same in the current format. */
static inline void raw_commit_begin(bson_t *doc, bson_t *events, const raw_commit_t *c) {
  raw_commit_begin_format(doc, events, c, 2);
}

/* Appends event `i`: eventId, type, schemaVersion as an int32, version as
 * an int64, timestamp as a date, data. */
static inline void raw_commit_event(bson_t *events, uint32_t i, const char *id, const char *type, int32_t schema,
                                    int64_t version, int64_t at, const bson_t *data) {
  char key[16];
  snprintf(key, sizeof key, "%u", i);
  bson_t ev;
  BSON_APPEND_DOCUMENT_BEGIN(events, key, &ev);
  BSON_APPEND_UTF8(&ev, "eventId", id);
  BSON_APPEND_UTF8(&ev, "type", type);
  BSON_APPEND_INT32(&ev, "schemaVersion", schema);
  BSON_APPEND_INT64(&ev, "version", version);
  BSON_APPEND_DATE_TIME(&ev, "timestamp", at);
  BSON_APPEND_DOCUMENT(&ev, "data", data);
  bson_append_document_end(events, &ev);
}

/* Ends `events` and inserts `doc`. */
static inline void raw_commit_insert(raw_events_t *r, bson_t *doc, bson_t *events) {
  bson_append_array_end(doc, events);
  bson_error_t e;
  if (!mongoc_collection_insert_one(r->coll, doc, NULL, NULL, &e)) fail_msg("insert: %s", e.message);
}

#endif
