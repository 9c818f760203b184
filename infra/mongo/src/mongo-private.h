/* libcqrs-mongo internals. */
#ifndef CQRS_MONGO_PRIVATE_H
#define CQRS_MONGO_PRIVATE_H

#include <mongoc/mongoc.h>
#include <stdatomic.h>

#include "cqrs/mongo.h"

/* The last version known of a stream, so that an append need not look up
 * the commit its expected version names. Commits are never deleted, so a
 * version once seen stays true. Direct-mapped; a collision just forgets. */
#define VERSION_SLOTS 1024
typedef struct version_slot {
  int64_t version; /* 0: empty */
  char key[CQRS_NAME_MAX + CQRS_ID_MAX];
} version_slot_t;

struct cqrs_mongo {
  mongoc_client_pool_t *pool;
  mongoc_uri_t *uri;
  char *redacted;
  char *db, *events, *snapshots, *checkpoints, *dead_letters;
  const cqrs_registry_t *reg;
  uv_loop_t *loop;
  _Atomic int64_t next_position; /* the next global position, as last seen; 0: unknown */
  uv_mutex_t versions_lock;
  /* Positions are claimed one after the other (each after its predecessor
   * is visible): within a process, writers queue here instead of colliding. */
  uv_mutex_t append_lock;
  version_slot_t *versions;
};

/* Remembers that stream (type, id) reached `version`; tells whether it did. */
void cqrs__mongo_version_seen(cqrs_mongo_t *m, const char *type, const char *id, int64_t version);
bool cqrs__mongo_version_known(cqrs_mongo_t *m, const char *type, const char *id, int64_t version);

/* A pooled client and one of m's collections; release with cqrs__mongo_done. */
typedef struct mconn {
  mongoc_client_t *client;
  mongoc_collection_t *coll;
} mconn_t;

void cqrs__mongo_open(cqrs_mongo_t *m, const char *coll, mconn_t *c);
void cqrs__mongo_done(cqrs_mongo_t *m, mconn_t *c);

/* Fills `err` with a store error about `what` from a driver error. */
cqrs_code_t cqrs__mongo_error(cqrs_error_t *err, const bson_error_t *e, const char *what);
bool cqrs__mongo_duplicate_key(const bson_error_t *e);

/* Finds one document; *found false when none. `out` initialised when found. */
cqrs_code_t cqrs__mongo_find_one(mongoc_collection_t *coll, const bson_t *filter, const bson_t *opts, bson_t *out,
                                 bool *found, cqrs_error_t *err, const char *what);

/* The stored-commit codec, reachable by the fuzz harness (fuzz/fuzz_commit.c):
 * decode visits every event of one commit document (CQRS_ECODEC when it is
 * malformed or corrupt); build writes the document of `req` at `position`. */
cqrs_code_t cqrs__mongo_decode_commit(const cqrs_registry_t *reg, const bson_t *doc, cqrs_event_visit_cb cb,
                                      void *data, cqrs_error_t *err);
void cqrs__mongo_build_commit(bson_t *doc, const cqrs_append_t *req, int64_t position);

#endif
