/* libcqrs-mongo: the event store, snapshots, read models, checkpoints and
 * dead letters on MongoDB (mongo-c-driver). Every call here blocks on the
 * network: the objects it makes declare themselves blocking, so libcqrs
 * calls them only from the libuv thread pool. Needs no multi-document
 * transactions, change streams or atomic findAndModify. */
#ifndef CQRS_MONGO_H
#define CQRS_MONGO_H

#include <cqrs/cqrs.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cqrs_mongo cqrs_mongo_t;

/* Database and collection names; NULL fields take the defaults. `size`: the
 * caller's sizeof (CQRS_MONGO_OPTIONS_INIT sets it), so that options
 * appended later leave older programs working (docs/versioning.md); 0 is
 * read as the size 0.2.0 had. */
typedef struct cqrs_mongo_options {
  size_t size;
  const char *database;     /* default: the URI's, else "cqrs" */
  const char *events;       /* one document per commit; default "cqrs_events" */
  const char *snapshots;    /* default "cqrs_snapshots" */
  const char *checkpoints;  /* default "cqrs_checkpoints" */
  const char *dead_letters; /* default "cqrs_dead_letters" */
  int32_t server_selection_timeout_ms; /* 0: the URI's, else 2000 */
  const char *leases;       /* default "cqrs_leases" */
  const char *keys;         /* the key store's (cqrs_mongo_keys_new); default "cqrs_keys" */
} cqrs_mongo_options_t;

/* cqrs_mongo_options_t o = {CQRS_MONGO_OPTIONS_INIT, .database = "billing"}; */
#define CQRS_MONGO_OPTIONS_INIT .size = sizeof(cqrs_mongo_options_t)

/* Parses `uri` and creates a client pool; does not contact the server, so a
 * server that is down now is an error of the first operation, not of this
 * call. `reg` (borrowed) decodes events. `loop` (borrowed) runs dead-letter
 * writes; may be NULL if dead letters are not sent here. Errors never quote
 * credentials. Free with cqrs_mongo_destroy after every object made from it. */
CQRS_EXPORT cqrs_code_t cqrs_mongo_new(const char *uri, const cqrs_mongo_options_t *opts,
                                       const cqrs_registry_t *reg, uv_loop_t *loop, cqrs_mongo_t **out,
                                       cqrs_error_t *err);
/* Waits for the dead letters being written (cqrs_mongo_dead_letter). */
CQRS_EXPORT void cqrs_mongo_destroy(cqrs_mongo_t *m);

/* The URI with any password replaced by "***", for printing. */
CQRS_EXPORT const char *cqrs_mongo_uri_redacted(const cqrs_mongo_t *m);
CQRS_EXPORT const char *cqrs_mongo_database(const cqrs_mongo_t *m);

/* Checks the store's format, then creates the indexes the store needs,
 * idempotently (blocks): on the events collection {timestamp: 1}, {type: 1,
 * timestamp: 1} (a commit's first event), {events.type: 1,
 * events.timestamp: 1} (every event), {aggregateType, aggregateId, version}
 * (a stream's reads), and the unique {streamVersion} (the stream's version),
 * {commandId} and {position}; on dead letters {at: 1}. An empty store is
 * noted in the current format; one written by libcqrs 0.1 (or another
 * format) is refused with CQRS_ESTATE and a message naming
 * cqrs_mongo_upgrade_store. */
CQRS_EXPORT cqrs_code_t cqrs_mongo_ensure_indexes(cqrs_mongo_t *m, cqrs_error_t *err);

/* Upgrades the store to the current format, then ensures the indexes
 * (blocks; minutes for a large store): every commit gets its stream key
 * (streamVersion), the unique index {aggregateType, aggregateId, version}
 * becomes a plain one and {streamVersion} a unique one. Run it with every
 * process that writes to the store stopped. Idempotent; one that stopped
 * part-way is finished by the next; a store already current costs a look.
 * *keyed (may be NULL): the commits it wrote. Progress goes to the log hook
 * (cqrs_log, domain "mongo"). CQRS_ECODEC names a commit it cannot read
 * (nothing after it is upgraded); CQRS_ESTATE: a store of a newer format. */
CQRS_EXPORT cqrs_code_t cqrs_mongo_upgrade_store(cqrs_mongo_t *m, int64_t *keyed, cqrs_error_t *err);

/* Creates one index on collection `coll` if absent (blocks). `keys` e.g.
 * {"customer.id": 1, status: 1}. */
CQRS_EXPORT cqrs_code_t cqrs_mongo_ensure_index(cqrs_mongo_t *m, const char *coll, const bson_t *keys,
                                                const char *name, bool unique, cqrs_error_t *err);

/* Lists the index names of `coll` into `out` (an array document). */
CQRS_EXPORT cqrs_code_t cqrs_mongo_index_names(cqrs_mongo_t *m, const char *coll, bson_t *out, cqrs_error_t *err);

/* Views on `m` (borrowed, must outlive them) into *out; free each with its
 * own _destroy. NULL `m` or `out`: CQRS_EINVAL; CQRS_ENOMEM; on error *out is
 * NULL. `err` may be NULL. */
CQRS_EXPORT cqrs_code_t cqrs_mongo_store_new(cqrs_mongo_t *m, cqrs_store_t **out, cqrs_error_t *err);
CQRS_EXPORT cqrs_code_t cqrs_mongo_readmodel_new(cqrs_mongo_t *m, cqrs_readmodel_t **out, cqrs_error_t *err);
CQRS_EXPORT cqrs_code_t cqrs_mongo_checkpoints_new(cqrs_mongo_t *m, cqrs_checkpoints_t **out, cqrs_error_t *err);
/* Leases (lease.h) in the leases collection: per name a document {_id:
 * name, owner, token, expires} and one per term {_id: "name#<token>"},
 * whose insert is what decides between processes taking the lease at once.
 * Expiry compares the holder's clock with the taker's: docs/scaling.md. */
CQRS_EXPORT cqrs_code_t cqrs_mongo_leases_new(cqrs_mongo_t *m, cqrs_leases_t **out, cqrs_error_t *err);
/* The same, with the terms' times read from `clock` (borrowed, must outlive
 * them; NULL: the real clock): a test's manual clock, for the leases of
 * dispatchers in one process. */
CQRS_EXPORT cqrs_code_t cqrs_mongo_leases_new_with_clock(cqrs_mongo_t *m, cqrs_clock_t *clock, cqrs_leases_t **out,
                                                         cqrs_error_t *err);

/* A key store for personal data (cqrs/personal.h) in the keys collection:
 * one document per subject, {_id: subject, state: "keyed" | "forgotten",
 * generation, key: BinData (the data key, wrapped when `opts` gives a
 * master key), wrap: BinData (which master key; absent: none), createdAt,
 * forgottenAt}; forgetting removes `key` and `wrap` with the update that
 * marks the subject forgotten. Needs no index beyond _id (docs/mongo.md).
 * `opts` as cqrs_memory_keys_new's; the master key is never stored. Free
 * with cqrs_keys_destroy before cqrs_mongo_destroy. */
CQRS_EXPORT cqrs_code_t cqrs_mongo_keys_new(cqrs_mongo_t *m, const cqrs_keys_options_t *opts, cqrs_keys_t **out,
                                            cqrs_error_t *err);
/* The name of m's keys collection. */
CQRS_EXPORT const char *cqrs_mongo_keys_collection(const cqrs_mongo_t *m);

/* A dead-letter sink for cqrs_dispatcher_options_t (data: the cqrs_mongo_t):
 * writes {subscriber, event, error, at} to the dead-letters collection from
 * the thread pool of the loop given to cqrs_mongo_new (a dispatcher's sink
 * needs it), never on the caller's thread; without a loop, on the caller's
 * thread (a tool's). cqrs_mongo_destroy waits for the writes in flight. A
 * write that fails is logged through cqrs_log (domain "mongo", an error
 * naming the subscriber and the event). */
CQRS_EXPORT void cqrs_mongo_dead_letter(const char *subscriber, const cqrs_event_t *e, const cqrs_error_t *error,
                                        void *data);
/* The same for cqrs_dispatcher_options_t.dead_letter_info, which also
 * writes how often delivery failed and when first: {..., attempts,
 * firstFailedAt}. */
CQRS_EXPORT void cqrs_mongo_dead_letter_info(const cqrs_dead_letter_t *dl, void *data);

/* Drops the whole database (blocks). For tests. */
CQRS_EXPORT cqrs_code_t cqrs_mongo_drop_database(cqrs_mongo_t *m, cqrs_error_t *err);

/* Sends mongo-c-driver's own log lines below ERROR nowhere (process-wide). */
CQRS_EXPORT void cqrs_mongo_quiet_logs(void);

#ifdef __cplusplus
}
#endif
#endif
