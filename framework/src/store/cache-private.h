/* The aggregate cache: the states of hot aggregates at their version, so that
 * a command on one replays nothing. Internal; the repository layer of the
 * dispatcher uses it. Thread-safe (one lock per shard). Holds plain copies of
 * `state_size` bytes, so types with a state_cleanup (their state owns
 * pointers) are never cached. Every entry is the true state of its aggregate
 * at its version; the cache keeps the highest version it hears of, and drops
 * an entry when a commit conflicts or when the feed shows a version it lacks. */
#ifndef CQRS_CACHE_PRIVATE_H
#define CQRS_CACHE_PRIVATE_H

#include "base/cqrs-private.h"

typedef struct cqrs__cache cqrs__cache_t;

/* A cache of at most `capacity` aggregates (least recently used evicted).
 * NULL when capacity is 0 or memory is short (*nomem tells which). */
cqrs__cache_t *cqrs__cache_new(size_t capacity, bool *nomem);
void cqrs__cache_destroy(cqrs__cache_t *c);

/* Whether aggregates of `type` may be cached. */
bool cqrs__cache_accepts(const cqrs__cache_t *c, const cqrs_aggregate_type_t *type);

/* On a hit, copies the cached state into `agg` (a fresh aggregate of the same
 * type and id, version 0, no pending events) and sets its version. */
bool cqrs__cache_get(cqrs__cache_t *c, cqrs_aggregate_t *agg);

/* Records the state of `agg` (no pending events) at its version, unless the
 * cache already holds a later one. Silently does nothing without memory.
 * Both calls remember the look-up's hash in `agg`. */
void cqrs__cache_put(cqrs__cache_t *c, cqrs_aggregate_t *agg);

/* The cache's hash of aggregate id `id` (`n` bytes, without its NUL): what
 * an aggregate remembers (key_hash); never 0. The dispatcher's stripe locks
 * use it too, so that a command hashes its aggregate's id once. */
uint32_t cqrs__cache_hash(const char *id, size_t n);

/* Forgets aggregate `id` of the type named `type`. */
void cqrs__cache_drop(cqrs__cache_t *c, const char *type, const char *id);

/* An event seen on the feed: drops its aggregate's entry when the entry is
 * older than the event (another writer committed it). */
void cqrs__cache_seen(cqrs__cache_t *c, const cqrs_event_t *e);

/* cqrs_repository_load through the cache: a hit copies the cached state and
 * reads nothing; a miss loads from the store and fills the cache. The
 * aggregate comes from `pool` when it can (NULL: allocated). `id` must have
 * passed cqrs__check_str (CQRS_ID_MAX): it is not checked again. `key_hash`:
 * its cqrs__cache_hash, or 0 to have it computed. */
cqrs_code_t cqrs__repository_load_cached(cqrs_store_t *store, cqrs__cache_t *cache, cqrs__agg_pool_t *pool,
                                         const cqrs_aggregate_type_t *type, const char *id, uint32_t key_hash,
                                         cqrs_aggregate_t **out, cqrs_error_t *err);
/* cqrs_repository_save, then the cache follows: a commit advances the entry,
 * a failure of any kind (a conflict above all) drops it. The cause's command
 * id must be valid (a command's own id): it is not checked again. */
cqrs_code_t cqrs__repository_save_cached(cqrs_store_t *store, cqrs__cache_t *cache, cqrs_aggregate_t *agg,
                                         const cqrs_cause_t *cause, cqrs_save_result_t *res, cqrs_error_t *err);

/* A batch's commits (command/batch.c): `n` consecutive slices of the
 * pending events of `agg`, each its own commit (`reqs`, whose events carry
 * their command's envelope), in one call of the store
 * (cqrs__store_append_many_valid: *done, `res` and the return as it says).
 * When every commit landed and the state is `clean` (it is the one the
 * commits make: no other events pending), the aggregate is committed,
 * snapshotted when due and cached; otherwise its cache entry is dropped and
 * the aggregate must be discarded. */
cqrs_code_t cqrs__repository_save_many_cached(cqrs_store_t *store, cqrs__cache_t *cache, cqrs_aggregate_t *agg,
                                              const cqrs_append_t *reqs, size_t n, bool clean,
                                              cqrs_append_result_t *res, size_t *done, cqrs_error_t *err);

#endif
