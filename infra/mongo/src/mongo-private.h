/* libcqrs-mongo internals. */
#ifndef CQRS_MONGO_PRIVATE_H
#define CQRS_MONGO_PRIVATE_H

#include <mongoc/mongoc.h>
#include <stdatomic.h>

#include "cqrs/backend.h"
#include "cqrs/mongo.h"

/* The last version known of a stream, so that an append need not look up
 * the commit its expected version names. Commits are never deleted, so a
 * version once seen stays true. Direct-mapped; a collision just forgets. */
#define VERSION_SLOTS 1024
typedef struct version_slot {
  int64_t version; /* 0: empty */
  char key[CQRS_NAME_MAX + CQRS_ID_MAX];
} version_slot_t;

/* "A read of the feed from `position` starts at commit `seq`." */
#define FEED_HINTS 8
typedef struct feed_hint {
  int64_t position, seq; /* seq 0: empty */
} feed_hint_t;

struct cqrs_mongo {
  mongoc_client_pool_t *pool;
  mongoc_uri_t *uri;
  char *redacted;
  char *db, *events, *head, *snapshots, *checkpoints, *dead_letters, *leases, *keys;
  const cqrs_registry_t *reg;
  uv_loop_t *loop;
  /* The newest commit seen (its number and last position; 0: none yet) and
   * where recent reads of the feed ended, so that the next claim and the
   * next read need no search. */
  uv_mutex_t hint_lock;
  int64_t head_seq, head_last;
  feed_hint_t feed_hints[FEED_HINTS];
  unsigned feed_next;
  uv_mutex_t versions_lock;
  /* Positions are claimed one after the other (each after its predecessor
   * is visible): within a process, writers queue here instead of colliding,
   * and the one at work writes everyone's commits in one insert. */
  uv_mutex_t group_lock;
  uv_cond_t group_cond;
  struct pending *group_head, *group_tail;
  bool group_writing;
  /* Gathering (group_commit): commits queued, how many the last group and
   * its queue held, the insert's round trip (a moving mean), and the cond a
   * leader waiting for the rest of them sleeps on. */
  size_t group_queued, group_demand;
  uint64_t group_rtt_ns, group_ended;
  bool group_gathering;
  uv_cond_t group_full;
  atomic_bool note_writing; /* a head note write is in flight (group_commit) */
  version_slot_t *versions;
  /* Dead letters being written on the pool: cqrs_mongo_destroy waits for
   * them (mongo_readmodel.c). */
  uv_mutex_t dl_lock;
  uv_cond_t dl_cond;
  size_t dl_writing;
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

/* What a driver or server error means for the caller, decided here once. */
typedef enum mongo_fault {
  MONGO_FAULT_TRANSIENT, /* network, failover, time limits: retry with back-off */
  MONGO_FAULT_PERMANENT, /* validation, authorisation, bad value: retrying cannot help */
  MONGO_FAULT_TOO_LARGE  /* a document over the server's 16 MB */
} mongo_fault_t;
mongo_fault_t cqrs__mongo_classify(const bson_error_t *e);

/* Fills `err` with a store error about `what` from a driver error: the
 * driver's domain and code as its cause, classified (CQRS_ETOO_LARGE for
 * an oversized document, else CQRS_ESTORE, transient or not). */
cqrs_code_t cqrs__mongo_error(cqrs_error_t *err, const bson_error_t *e, const char *what);
bool cqrs__mongo_duplicate_key(const bson_error_t *e);

/* The format of the commit documents, noted in `<events>_head` as
 * {_id: "format", version} (docs/mongo.md, "Formats"). 2: each commit holds
 * `streamVersion`, the key of its stream at its first version, under a
 * unique index of that one field; 1 (libcqrs 0.1 and 0.2 before it, no
 * note) had a unique index on {aggregateType, aggregateId, version}
 * instead, whose check grows with the collection on DocumentDB. */
#define CQRS__MONGO_FORMAT 2

/* The stream key of (type, id) at `version`, unambiguous and never cut:
 * "<length of type>:<type>/<id>#<version, 20 digits>". False when it does
 * not fit `cap` (CQRS__MONGO_STREAM_KEY_MAX holds any valid type and id). */
#define CQRS__MONGO_STREAM_KEY_MAX (CQRS_NAME_MAX + CQRS_ID_MAX + 32)
CQRS_EXPORT bool cqrs__mongo_stream_version_key(char *buf, size_t cap, const char *type, const char *id,
                                               int64_t version); /* exported for tests and cqrs-bench */

/* ensure_indexes' first step: CQRS_OK for a store of this format, or an
 * empty one (then noted as such); a store of another format is refused
 * with CQRS_ESTATE and a message naming the upgrade (mongo_format.c). */
cqrs_code_t cqrs__mongo_check_format(cqrs_mongo_t *m, cqrs_error_t *err);

/* Finds one document; *found false when none. `out` initialised when found. */
cqrs_code_t cqrs__mongo_find_one(mongoc_collection_t *coll, const bson_t *filter, const bson_t *opts, bson_t *out,
                                 bool *found, cqrs_error_t *err, const char *what);

/* The stored-commit codec, reachable by the fuzz harness (fuzz/fuzz_commit.c):
 * decode visits every event of one commit document (CQRS_ECODEC when it is
 * malformed or corrupt); build writes the document of `req` at `position`. */
cqrs_code_t cqrs__mongo_decode_commit(const cqrs_registry_t *reg, const bson_t *doc, cqrs_event_visit_cb cb,
                                      void *data, cqrs_error_t *err);
cqrs_code_t cqrs__mongo_build_commit(bson_t *doc, const cqrs_append_t *req, int64_t position, cqrs_error_t *err);

/* Tests only (tests/mongo/test_mongo_leases.c): when set, a lease claim
 * calls it between reading the newest term and inserting the next, so that
 * a test can stall the claim there while others move the lease on. */
typedef void (*cqrs__mongo_claim_hook_fn)(const char *name, const char *owner);
CQRS_EXPORT extern _Atomic(cqrs__mongo_claim_hook_fn) cqrs__mongo_lease_claim_hook; /* claims run on lease threads */

#endif
