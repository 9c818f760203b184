#include "store/cache-private.h"
#include "store/keys-private.h"

typedef struct replay {
  cqrs_aggregate_t *agg;
  cqrs_code_t rc;
  cqrs_error_t *err;
} replay_t;

static bool replay_one(const cqrs_event_t *e, void *data) {
  replay_t *r = data;
  r->rc = cqrs_aggregate_apply(r->agg, e, r->err);
  return r->rc == CQRS_OK;
}

/* Restores the state from the newest usable snapshot; a stale or undecodable
 * one is ignored (the events replay from the start). A version that leaves
 * no room for a next event is corrupt data: an error, not an overflow. */
static cqrs_code_t load_snapshot(cqrs_store_t *store, cqrs_aggregate_t *agg, cqrs_error_t *err) {
  const cqrs_aggregate_type_t *type = agg->type;
  if (!type->snapshot_fields) return CQRS_OK;
  cqrs_snapshot_t snap;
  bool found = false;
  if (cqrs_store_snapshot_load(store, type->name, agg->id, &snap, &found, NULL) || !found) return CQRS_OK;
  cqrs_code_t rc = CQRS_OK;
  if (snap.version == INT64_MAX) {
    rc = cqrs_error_set(err, CQRS_ECODEC, "corrupt snapshot of %s/%s: version %lld", type->name, agg->id,
                        (long long)snap.version);
  } else if (snap.schema_version == type->snapshot_version && snap.version > 0) {
    void *state = cqrs__calloc(1, type->state_size ? type->state_size : 1);
    if (state && cqrs__sealed_snapshot_decode(store, type, agg->id, &snap.state, state, NULL) == CQRS_OK) {
      if (type->state_cleanup) type->state_cleanup(agg->state);
      memcpy(agg->state, state, type->state_size);
      agg->version = snap.version;
    }
    cqrs__free(state);
  }
  bson_destroy(&snap.state);
  return rc;
}

/* Snapshot, then the events after it, into a fresh aggregate. */
static cqrs_code_t load_from_store(cqrs_store_t *store, cqrs_aggregate_t *agg, cqrs_error_t *err) {
  cqrs_code_t sr = load_snapshot(store, agg, err);
  if (sr) return sr;
  replay_t r = {agg, CQRS_OK, err};
  cqrs_code_t rc = cqrs_store_read_stream(store, agg->type->name, agg->id, agg->version + 1, replay_one, &r, err);
  return rc ? rc : r.rc;
}

static cqrs_code_t load(cqrs_store_t *store, cqrs__cache_t *cache, cqrs__agg_pool_t *pool,
                        const cqrs_aggregate_type_t *type, const char *id, bool id_checked, uint32_t key_hash,
                        cqrs_aggregate_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  if (!store) return cqrs_error_set(err, CQRS_EINVAL, "store is NULL");
  cqrs_aggregate_t *agg;
  cqrs_code_t rc = cqrs__aggregate_new_pooled(pool, type, id, id_checked, &agg, err);
  if (rc) return rc;
  agg->key_hash = key_hash;
  if (!cqrs__cache_get(cache, agg)) {
    if ((rc = load_from_store(store, agg, err))) {
      cqrs__aggregate_release(pool, agg);
      return rc;
    }
    cqrs__cache_put(cache, agg);
  }
  *out = agg;
  return CQRS_OK;
}

cqrs_code_t cqrs__repository_load_cached(cqrs_store_t *store, cqrs__cache_t *cache, cqrs__agg_pool_t *pool,
                                         const cqrs_aggregate_type_t *type, const char *id, uint32_t key_hash,
                                         cqrs_aggregate_t **out, cqrs_error_t *err) {
  return load(store, cache, pool, type, id, true, key_hash, out, err);
}

cqrs_code_t cqrs_repository_load(cqrs_store_t *store, const cqrs_aggregate_type_t *type, const char *id,
                                 cqrs_aggregate_t **out, cqrs_error_t *err) {
  return load(store, NULL, NULL, type, id, false, 0, out, err);
}

/* Gives the pending events an envelope naming their cause. */
static cqrs_code_t stamp_cause(cqrs_aggregate_t *agg, const cqrs_cause_t *cause, cqrs_error_t *err) {
  const cqrs_envelope_t *cur = agg->envelope;
  const char *corr = cause->correlation_id && *cause->correlation_id ? cause->correlation_id : cause->command_id;
  /* The usual case: the raise made the envelope from these very strings. */
  if (cur && agg->env_cause == cause->command_id && agg->env_corr == corr) return CQRS_OK;
  if (cur && !strcmp(cur->causation_id, cause->command_id) && !strcmp(cur->correlation_id, corr)) return CQRS_OK;
  cqrs_envelope_t *env;
  cqrs_code_t rc = cqrs_envelope_new(agg->type->name, agg->id, cause->command_id, corr, &env, err);
  if (rc) return rc;
  for (size_t i = 0; i < agg->pending_count; i++) {
    cqrs__event_set_envelope(agg->pending[i], env);
  }
  cqrs__aggregate_set_envelope(agg, env);
  return CQRS_OK;
}

/* Inlined in both saves: the single one is every command's. `forced`: a
 * subject was just forgotten, and the snapshot before holds what it forgot
 * (sealed with a key now gone): replace it at once. */
static inline __attribute__((always_inline)) void maybe_snapshot(cqrs_store_t *store, cqrs_aggregate_t *agg,
                                                                 int64_t before, bool forced) {
  const cqrs_aggregate_type_t *type = agg->type;
  if (!type->snapshot_every || !type->snapshot_fields) return;
  if (!forced && agg->version / type->snapshot_every == before / type->snapshot_every) return;
  cqrs_snapshot_t snap = {type->name, agg->id, agg->version, type->snapshot_version, BSON_INITIALIZER};
  if (cqrs__sealed_snapshot_encode(store, type, agg->id, agg->state, &snap.state, NULL) == CQRS_OK)
    cqrs_store_snapshot_save(store, &snap, NULL);
  bson_destroy(&snap.state);
}

static bool forgets(const cqrs_aggregate_t *agg) {
  for (size_t i = 0; i < agg->pending_count; i++) {
    if (agg->pending[i]->type == &cqrs_forgotten_event_type) return true;
  }
  return false;
}

/* An aggregate with pending events has a checked type name and id: its
 * raise checked the name (or the envelope it raised with did), its creation
 * the id. So once the command id is known valid, the request is. */
static cqrs_code_t save(cqrs_store_t *store, cqrs_aggregate_t *agg, const cqrs_cause_t *cause, bool cause_checked,
                        cqrs_save_result_t *res, cqrs_error_t *err) {
  cqrs_save_result_t local;
  if (!res) res = &local;
  memset(res, 0, sizeof *res);
  if (!store || !agg || !cause) return cqrs_error_set(err, CQRS_EINVAL, "NULL store, aggregate or cause");
  cqrs_code_t rc = cause_checked ? CQRS_OK : cqrs__check_str(cause->command_id, CQRS_ID_MAX, "command id", err);
  if (rc) return rc;
  if (agg->pending_count == 0) return CQRS_OK;
  if ((rc = stamp_cause(agg, cause, err))) return rc;
  cqrs_append_t req = {agg->type->name, agg->id, agg->version, cause->command_id, agg->pending, agg->pending_count};
  cqrs_append_result_t ar;
  if ((rc = cqrs__store_append_valid(store, &req, &ar, err))) return rc;
  res->duplicate = ar.duplicate;
  res->last_position = ar.last_position;
  if (ar.duplicate) {
    /* The command had committed before: this run's events are not facts. */
    cqrs__aggregate_clear_pending(agg);
    return CQRS_OK;
  }
  int64_t before = agg->version;
  bool forced = forgets(agg);
  res->committed = agg->pending_count;
  cqrs__aggregate_committed(agg);
  maybe_snapshot(store, agg, before, forced);
  return CQRS_OK;
}

cqrs_code_t cqrs_repository_save(cqrs_store_t *store, cqrs_aggregate_t *agg, const cqrs_cause_t *cause,
                                 cqrs_save_result_t *res, cqrs_error_t *err) {
  return save(store, agg, cause, false, res, err);
}

cqrs_code_t cqrs__repository_save_cached(cqrs_store_t *store, cqrs__cache_t *cache, cqrs_aggregate_t *agg,
                                         const cqrs_cause_t *cause, cqrs_save_result_t *res, cqrs_error_t *err) {
  cqrs_save_result_t local;
  if (!res) res = &local;
  cqrs_code_t rc = save(store, agg, cause, true, res, err);
  if (!cache || !agg) return rc;
  if (rc || res->duplicate) {
    /* A duplicate: the command committed before, maybe from a state this
     * load did not see (another writer's commit, or a killed process's
     * landing late), so what was loaded may be stale. */
    cqrs__cache_drop(cache, agg->type->name, agg->id);
  } else if (res->committed) {
    cqrs__cache_put(cache, agg);
  }
  return rc;
}

cqrs_code_t cqrs__repository_save_many_cached(cqrs_store_t *store, cqrs__cache_t *cache, cqrs_aggregate_t *agg,
                                              const cqrs_append_t *reqs, size_t n, bool clean,
                                              cqrs_append_result_t *res, size_t *done, cqrs_error_t *err) {
  cqrs_code_t rc = cqrs__store_append_many_valid(store, reqs, n, res, done, err);
  size_t events = 0;
  for (size_t i = 0; i < n; i++) events += reqs[i].count;
  if (rc == CQRS_OK && *done == n && clean && events == agg->pending_count) {
    int64_t before = agg->version;
    bool forced = forgets(agg);
    cqrs__aggregate_committed(agg);
    maybe_snapshot(store, agg, before, forced);
    if (cache) cqrs__cache_put(cache, agg);
  } else if (cache) {
    /* What the state says is not what landed (a commit that did not, or a
     * command's events the batch left out), or a duplicate's state that may
     * be stale: the next load reads the store. */
    cqrs__cache_drop(cache, agg->type->name, agg->id);
  }
  return rc;
}
