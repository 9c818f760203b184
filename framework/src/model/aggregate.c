#include "base/cqrs-private.h"

#define POOL_MAX 64
#define STATE_ROOM 256 /* pooled blocks hold states up to this size */

cqrs_code_t cqrs__aggregate_new_pooled(cqrs__agg_pool_t *pool, const cqrs_aggregate_type_t *type, const char *id,
                                       bool id_checked, cqrs_aggregate_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  if (!type || !type->name || !type->apply)
    return cqrs_error_set(err, CQRS_EINVAL, "aggregate type lacks a name or an apply table");
  cqrs_code_t rc = id_checked ? CQRS_OK : cqrs__check_str(id, CQRS_ID_MAX, "aggregate id", err);
  if (rc) return rc;
  if (type->state_size > SIZE_MAX - sizeof(cqrs_aggregate_t))
    return cqrs_error_set(err, CQRS_ETOO_LARGE, "aggregate state too large");
  /* One block: the aggregate, room for two pending events, the state. */
  cqrs_aggregate_t *agg = NULL;
  if (pool && pool->head && pool->head->state_cap >= type->state_size) {
    agg = pool->head;
    pool->head = agg->next_free;
    pool->n--;
  } else {
    size_t cap = pool && type->state_size < STATE_ROOM ? STATE_ROOM : type->state_size;
    if (!(agg = cqrs__malloc(sizeof *agg + cap))) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate an aggregate");
    agg->state_cap = cap;
  }
  agg->type = type;
  memcpy(agg->id, id, strlen(id) + 1);
  agg->version = 0;
  agg->envelope = NULL;
  agg->cause_id = agg->correlation_id = NULL;
  agg->clock = NULL;
  agg->env_cause = agg->env_corr = NULL;
  agg->key_hash = 0;
  agg->cache_entry = NULL;
  agg->next_free = NULL;
  agg->pending = agg->pending_inline;
  agg->pending_count = 0;
  agg->pending_cap = sizeof agg->pending_inline / sizeof agg->pending_inline[0];
  agg->state = agg->state_inline;
  memset(agg->state, 0, type->state_size);
  if (type->state_init) type->state_init(agg->state);
  *out = agg;
  return CQRS_OK;
}

cqrs_code_t cqrs_aggregate_new(const cqrs_aggregate_type_t *type, const char *id, cqrs_aggregate_t **out,
                               cqrs_error_t *err) {
  return cqrs__aggregate_new_pooled(NULL, type, id, false, out, err);
}

void cqrs__aggregate_clear_pending(cqrs_aggregate_t *agg) {
  for (size_t i = 0; i < agg->pending_count; i++) cqrs_event_unref(agg->pending[i]);
  agg->pending_count = 0;
}

void cqrs__aggregate_release(cqrs__agg_pool_t *pool, cqrs_aggregate_t *agg) {
  if (!agg) return;
  cqrs__aggregate_clear_pending(agg);
  if (agg->pending != agg->pending_inline) cqrs__free(agg->pending);
  if (agg->type->state_cleanup) agg->type->state_cleanup(agg->state);
  cqrs_envelope_unref(agg->envelope);
  if (pool && pool->n < POOL_MAX && agg->state_cap >= STATE_ROOM) {
    agg->next_free = pool->head;
    pool->head = agg;
    pool->n++;
    return;
  }
  cqrs__free(agg);
}

void cqrs__agg_pool_free(cqrs__agg_pool_t *pool) {
  while (pool->head) {
    cqrs_aggregate_t *agg = pool->head;
    pool->head = agg->next_free;
    cqrs__free(agg);
  }
  pool->n = 0;
}

void cqrs_aggregate_destroy(cqrs_aggregate_t *agg) { cqrs__aggregate_release(NULL, agg); }

void cqrs__aggregate_set_cause(cqrs_aggregate_t *agg, const char *cause_id, const char *correlation_id,
                               const cqrs_clock_t *clock) {
  agg->cause_id = cause_id;
  agg->correlation_id = correlation_id;
  agg->clock = clock;
}

void cqrs__aggregate_set_envelope(cqrs_aggregate_t *agg, const cqrs_envelope_t *env) {
  cqrs_envelope_unref(agg->envelope);
  agg->envelope = env;
  agg->env_cause = agg->env_corr = NULL;
}

static void apply_to_state(cqrs_aggregate_t *agg, const cqrs_event_t *e) {
  for (const cqrs_apply_entry_t *a = agg->type->apply; a->type; a++) {
    if (a->type == e->type) {
      a->apply(agg->state, e);
      return;
    }
  }
}

/* The aggregate type name the last raise checked: a descriptor is constant,
 * so its name is checked once for a run of commands on aggregates of one type. */
static _Atomic(const char *) name_checked;

cqrs_code_t cqrs_aggregate_raise(cqrs_aggregate_t *agg, const cqrs_event_type_t *type, const void *payload,
                                 cqrs_error_t *err) {
  if (!agg || !type || !payload) return cqrs_error_set(err, CQRS_EINVAL, "NULL aggregate, event type or payload");
  if (type->fields) {
    cqrs_error_t e;
    if (cqrs_fields_validate(type->fields, payload, &e))
      return cqrs_error_set(err, CQRS_EINVAL, "event %.64s: %.180s", type->name, e.message);
  }
  if (!agg->envelope && atomic_load_explicit(&name_checked, memory_order_relaxed) != agg->type->name) {
    cqrs_code_t rc = cqrs__check_str(agg->type->name, CQRS_NAME_MAX, "aggregate type", err);
    if (rc) return rc;
    atomic_store_explicit(&name_checked, agg->type->name, memory_order_relaxed);
  }
  if (agg->pending_count == agg->pending_cap) {
    size_t cap = agg->pending_cap * 2;
    bool inline_ = agg->pending == agg->pending_inline;
    cqrs_event_t **p = cqrs__realloc(inline_ ? NULL : agg->pending, cap * sizeof *p);
    if (!p) return cqrs_error_set(err, CQRS_ENOMEM, "cannot grow the pending events");
    if (inline_) memcpy(p, agg->pending_inline, sizeof agg->pending_inline);
    agg->pending = p;
    agg->pending_cap = cap;
  }
  cqrs_event_t *e;
  int64_t version = agg->version + (int64_t)agg->pending_count + 1;
  cqrs_code_t rc;
  if (agg->envelope) {
    rc = cqrs_event_new(type, agg->envelope, NULL, version, cqrs__clock_wall(agg->clock), payload, &e, err);
  } else {
    /* The first event of a command carries the commit's envelope. */
    const char *cause = agg->cause_id ? agg->cause_id : "";
    const char *corr = agg->correlation_id && *agg->correlation_id ? agg->correlation_id : cause;
    rc = cqrs__event_new_hosting(type, agg->type->name, agg->id, cause, corr, version, cqrs__clock_wall(agg->clock),
                                 payload, &e, err);
    if (!rc) {
      agg->envelope = cqrs__envelope_ref(e->envelope);
      agg->env_cause = cause;
      agg->env_corr = corr;
    }
  }
  if (rc) return rc;
  apply_to_state(agg, e);
  agg->pending[agg->pending_count++] = e;
  return CQRS_OK;
}

cqrs_code_t cqrs_aggregate_apply(cqrs_aggregate_t *agg, const cqrs_event_t *e, cqrs_error_t *err) {
  if (!agg || !e) return cqrs_error_set(err, CQRS_EINVAL, "NULL aggregate or event");
  if (agg->pending_count) return cqrs_error_set(err, CQRS_ESTATE, "aggregate has pending events");
  if (e->version != agg->version + 1)
    return cqrs_error_set(err, CQRS_ESTATE, "event version %lld does not follow %lld", (long long)e->version,
                          (long long)agg->version);
  apply_to_state(agg, e);
  agg->version = e->version;
  return CQRS_OK;
}

void cqrs__aggregate_committed(cqrs_aggregate_t *agg) {
  agg->version += (int64_t)agg->pending_count;
  cqrs__aggregate_clear_pending(agg);
}

const cqrs_aggregate_type_t *cqrs_aggregate_type(const cqrs_aggregate_t *agg) { return agg ? agg->type : NULL; }
const char *cqrs_aggregate_id(const cqrs_aggregate_t *agg) { return agg ? agg->id : NULL; }
void *cqrs_aggregate_state(cqrs_aggregate_t *agg) { return agg ? agg->state : NULL; }
const void *cqrs_aggregate_state_const(const cqrs_aggregate_t *agg) { return agg ? agg->state : NULL; }
int64_t cqrs_aggregate_version(const cqrs_aggregate_t *agg) { return agg ? agg->version : 0; }
size_t cqrs_aggregate_pending_count(const cqrs_aggregate_t *agg) { return agg ? agg->pending_count : 0; }
const cqrs_event_t *cqrs_aggregate_pending(const cqrs_aggregate_t *agg, size_t i) {
  return agg && i < agg->pending_count ? agg->pending[i] : NULL;
}
