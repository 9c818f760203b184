/* The in-memory event store. Appends serialise on a write lock and publish
 * with release stores; reads take no lock but the read side of the stream
 * table's rwlock for a look-up, and walk arrays whose chunks never move. */
#include <uv.h>

#include "cqrs-private.h"


#define LOG_CHUNK_BITS 12
#define LOG_CHUNK (1u << LOG_CHUNK_BITS)
#define LOG_DIR 16384u /* LOG_DIR * LOG_CHUNK = 2^26 events */
#define STREAM_CHUNKS 40 /* chunk k holds 8 << k events */

typedef struct stream {
  uint64_t hash;
  _Atomic int64_t count;
  cqrs_event_t **chunks[STREAM_CHUNKS];
  bool has_snapshot;
  int64_t snapshot_version;
  uint32_t snapshot_schema;
  bson_t *snapshot;
  size_t keylen, idat;
  char key[]; /* "type\0id", the id at idat */
} stream_t;

/* The streams by (type, id): open addressing, hashed without building the
 * key; grows under the write lock, read under the read lock. */
typedef struct stream_set {
  stream_t **slots;
  size_t cap, len; /* cap a power of two, len <= 7/10 cap */
} stream_set_t;

static uint64_t stream_hash(const char *type, const char *id) { return cqrs__hash_str(id, cqrs__hash_str(type, 0)); }

static stream_t *streams_find(const stream_set_t *set, uint64_t h, const char *type, const char *id) {
  if (!set->cap) return NULL;
  for (size_t i = h & (set->cap - 1);; i = (i + 1) & (set->cap - 1)) {
    stream_t *s = set->slots[i];
    if (!s) return NULL;
    if (s->hash == h && !strcmp(s->key + s->idat, id) && !strcmp(s->key, type)) return s;
  }
}

static void streams_put(stream_t **slots, size_t cap, stream_t *s) {
  size_t i = s->hash & (cap - 1);
  while (slots[i]) i = (i + 1) & (cap - 1);
  slots[i] = s;
}

/* Makes room for one more stream; false: no memory, the set unchanged. */
static bool streams_reserve(stream_set_t *set) {
  if ((set->len + 1) * 10 <= set->cap * 7) return true;
  size_t cap = set->cap ? set->cap * 2 : 1024;
  stream_t **slots = cqrs__calloc(cap, sizeof *slots);
  if (!slots) return false;
  for (size_t i = 0; i < set->cap; i++) {
    if (set->slots[i]) streams_put(slots, cap, set->slots[i]);
  }
  cqrs__free(set->slots);
  set->slots = slots;
  set->cap = cap;
  return true;
}

/* The command ids committed, for idempotency: an open-addressing set of
 * pointers. An id usually is the causation id of the commit's envelope,
 * which the store keeps alive with the events, so it is not copied; other
 * ids are copied and listed in `owned`. */
typedef struct id_slot {
  uint32_t hash;
  const char *id; /* NULL: free */
} id_slot_t;

typedef struct id_set {
  id_slot_t *slots;
  size_t cap, len; /* cap a power of two, len <= 7/10 cap */
  char **owned;
  size_t nowned, owned_cap;
} id_set_t;

static uint32_t hash_id(const char *s) { return (uint32_t)cqrs__hash_str(s, 0); }

static bool ids_has(const id_set_t *set, const char *id, uint32_t h) {
  if (!set->cap) return false;
  for (size_t i = h & (set->cap - 1);; i = (i + 1) & (set->cap - 1)) {
    const id_slot_t *sl = &set->slots[i];
    if (!sl->id) return false;
    if (sl->hash == h && !strcmp(sl->id, id)) return true;
  }
}

static void ids_put(id_slot_t *slots, size_t cap, uint32_t h, const char *id) {
  size_t i = h & (cap - 1);
  while (slots[i].id) i = (i + 1) & (cap - 1);
  slots[i].hash = h;
  slots[i].id = id;
}

/* Makes room for one more id (and one more owned copy); false: no memory,
 * the set unchanged. */
static bool ids_reserve(id_set_t *set, bool copy) {
  if (copy && set->nowned == set->owned_cap) {
    size_t cap = set->owned_cap ? set->owned_cap * 2 : 16;
    char **o = cqrs__realloc(set->owned, cap * sizeof *o);
    if (!o) return false;
    set->owned = o;
    set->owned_cap = cap;
  }
  if ((set->len + 1) * 10 <= set->cap * 7) return true;
  size_t cap = set->cap ? set->cap * 2 : 1024;
  id_slot_t *slots = cqrs__calloc(cap, sizeof *slots);
  if (!slots) return false;
  for (size_t i = 0; i < set->cap; i++) {
    if (set->slots[i].id) ids_put(slots, cap, set->slots[i].hash, set->slots[i].id);
  }
  cqrs__free(set->slots);
  set->slots = slots;
  set->cap = cap;
  return true;
}

static void ids_free(id_set_t *set) {
  for (size_t i = 0; i < set->nowned; i++) cqrs__free(set->owned[i]);
  cqrs__free(set->owned);
  cqrs__free(set->slots);
}

typedef struct memstore {
  uv_rwlock_t lock; /* write: appends and snapshots; read: stream look-ups */
  stream_set_t streams;
  id_set_t commands;
  _Atomic int64_t head;
  size_t overhead;
  cqrs_event_t **log[LOG_DIR];
} memstore_t;

static size_t chunk_index(int64_t i, size_t *offset) {
  uint64_t q = (uint64_t)i / 8 + 1;
  size_t k = 63 - (size_t)__builtin_clzll(q);
  *offset = (size_t)((uint64_t)i - 8 * ((UINT64_C(1) << k) - 1));
  return k;
}

static stream_t *find_stream(memstore_t *m, const char *type, const char *id) {
  return streams_find(&m->streams, stream_hash(type, id), type, id);
}

static stream_t *find_stream_locked_read(memstore_t *m, const char *type, const char *id) {
  uv_rwlock_rdlock(&m->lock);
  stream_t *s = find_stream(m, type, id);
  uv_rwlock_rdunlock(&m->lock);
  return s;
}

static cqrs_code_t mem_append(void *impl, const cqrs_append_t *req, cqrs_append_result_t *res, cqrs_error_t *err) {
  memstore_t *m = impl;
  cqrs_code_t rc = CQRS_OK;
  uv_rwlock_wrlock(&m->lock);
  uint32_t idh = hash_id(req->command_id);
  if (ids_has(&m->commands, req->command_id, idh)) {
    res->duplicate = true;
    goto out;
  }
  uint64_t sh = stream_hash(req->aggregate_type, req->aggregate_id);
  stream_t *s = streams_find(&m->streams, sh, req->aggregate_type, req->aggregate_id);
  int64_t count = s ? atomic_load_explicit(&s->count, memory_order_relaxed) : 0;
  if (count != req->expected_version) {
    rc = cqrs_error_set(err, CQRS_ECONFLICT, "%s/%s is at version %lld, expected %lld", req->aggregate_type,
                        req->aggregate_id, (long long)count, (long long)req->expected_version);
    goto out;
  }
  int64_t head = atomic_load_explicit(&m->head, memory_order_relaxed);
  if ((uint64_t)head + req->count > (uint64_t)LOG_DIR * LOG_CHUNK) {
    rc = cqrs_error_set(err, CQRS_ETOO_LARGE, "the memory store is full");
    goto out;
  }
  /* Allocate everything first so that a failure leaves the store unchanged. */
  const cqrs_envelope_t *env = req->events[0]->envelope;
  bool copy = !env || strcmp(env->causation_id, req->command_id);
  for (size_t i = 1; !copy && i < req->count; i++) copy = req->events[i]->envelope != env;
  char *id_copy = copy ? cqrs__strdup(req->command_id) : NULL;
  bool ok = (!copy || id_copy) && ids_reserve(&m->commands, copy);
  stream_t *fresh = NULL;
  if (ok && !s) {
    size_t lt = strlen(req->aggregate_type) + 1, li = strlen(req->aggregate_id) + 1;
    fresh = streams_reserve(&m->streams) ? cqrs__calloc(1, sizeof *fresh + lt + li) : NULL;
    if (fresh) {
      memcpy(fresh->key, req->aggregate_type, lt);
      memcpy(fresh->key + lt, req->aggregate_id, li);
      fresh->keylen = lt + li;
      fresh->idat = lt;
      fresh->hash = sh;
    }
    ok = fresh != NULL;
  }
  stream_t *target = s ? s : fresh;
  for (size_t i = 0; ok && i < req->count; i++) {
    size_t off, k = chunk_index(count + (int64_t)i, &off);
    if (!target->chunks[k]) {
      target->chunks[k] = cqrs__calloc((size_t)8 << k, sizeof(cqrs_event_t *));
      ok = target->chunks[k] != NULL;
      if (ok) m->overhead += ((size_t)8 << k) * sizeof(cqrs_event_t *);
    }
    size_t g = (size_t)(head + (int64_t)i) >> LOG_CHUNK_BITS;
    if (ok && !m->log[g]) {
      m->log[g] = cqrs__calloc(LOG_CHUNK, sizeof(cqrs_event_t *));
      ok = m->log[g] != NULL;
      if (ok) m->overhead += LOG_CHUNK * sizeof(cqrs_event_t *);
    }
  }
  if (!ok) {
    cqrs__free(id_copy);
    if (fresh) {
      for (size_t k = 0; k < STREAM_CHUNKS; k++) cqrs__free(fresh->chunks[k]);
      cqrs__free(fresh);
    }
    rc = cqrs_error_set(err, CQRS_ENOMEM, "memory store: out of memory");
    goto out;
  }
  /* The events' envelope, which the store now keeps, holds the id. */
  ids_put(m->commands.slots, m->commands.cap, idh, copy ? id_copy : env->causation_id);
  m->commands.len++;
  if (copy) m->commands.owned[m->commands.nowned++] = id_copy;
  m->overhead += sizeof(id_slot_t) * 10 / 7 + (copy ? strlen(id_copy) + 1 + sizeof id_copy : 0);
  if (fresh) {
    streams_put(m->streams.slots, m->streams.cap, fresh);
    m->streams.len++;
    m->overhead += sizeof *fresh + fresh->keylen + sizeof(stream_t *) * 10 / 7;
  }
  for (size_t i = 0; i < req->count; i++) {
    cqrs_event_t *e = req->events[i];
    int64_t pos = head + (int64_t)i;
    e->position = pos + 1;
    cqrs_event_ref(e);
    size_t off, k = chunk_index(count + (int64_t)i, &off);
    target->chunks[k][off] = e;
    m->log[(size_t)pos >> LOG_CHUNK_BITS][(size_t)pos & (LOG_CHUNK - 1)] = e;
    m->overhead += sizeof(cqrs__event_t);
    if (i == 0 || e->envelope != req->events[i - 1]->envelope) m->overhead += sizeof(cqrs__envelope_t) + 64;
  }
  atomic_store_explicit(&target->count, count + (int64_t)req->count, memory_order_release);
  atomic_store_explicit(&m->head, head + (int64_t)req->count, memory_order_release);
  res->first_position = head + 1;
  res->last_position = head + (int64_t)req->count;
out:
  uv_rwlock_wrunlock(&m->lock);
  return rc;
}

static cqrs_code_t mem_read_stream(void *impl, const char *type, const char *id, int64_t from_version,
                                   cqrs_event_visit_cb cb, void *data, cqrs_error_t *err) {
  CQRS__UNUSED(err);
  stream_t *s = find_stream_locked_read(impl, type, id);
  if (!s) return CQRS_OK;
  int64_t count = atomic_load_explicit(&s->count, memory_order_acquire);
  int64_t i = from_version - 1;
  while (i < count) {
    size_t off, k = chunk_index(i, &off);
    cqrs_event_t **chunk = s->chunks[k];
    size_t end = (size_t)8 << k;
    if ((int64_t)(end - off) > count - i) end = off + (size_t)(count - i);
    for (size_t j = off; j < end; j++) {
      if (!cb(chunk[j], data)) return CQRS_OK;
    }
    i += (int64_t)(end - off);
  }
  return CQRS_OK;
}

static cqrs_code_t mem_read_all(void *impl, int64_t from_position, size_t limit, cqrs_event_visit_cb cb, void *data,
                                cqrs_error_t *err) {
  CQRS__UNUSED(err);
  memstore_t *m = impl;
  int64_t head = atomic_load_explicit(&m->head, memory_order_acquire);
  int64_t end = head;
  if (from_position - 1 < head && (uint64_t)limit < (uint64_t)(head - (from_position - 1)))
    end = from_position - 1 + (int64_t)limit;
  for (int64_t p = from_position - 1; p < end; p++) {
    if (!cb(m->log[(size_t)p >> LOG_CHUNK_BITS][(size_t)p & (LOG_CHUNK - 1)], data)) break;
  }
  return CQRS_OK;
}

static cqrs_code_t mem_head(void *impl, int64_t *position, cqrs_error_t *err) {
  CQRS__UNUSED(err);
  *position = atomic_load_explicit(&((memstore_t *)impl)->head, memory_order_acquire);
  return CQRS_OK;
}

static cqrs_code_t mem_snapshot_load(void *impl, const char *type, const char *id, cqrs_snapshot_t *out,
                                     bool *found, cqrs_error_t *err) {
  CQRS__UNUSED(err);
  memstore_t *m = impl;
  uv_rwlock_rdlock(&m->lock);
  stream_t *s = find_stream(m, type, id);
  if (s && s->has_snapshot) {
    out->version = s->snapshot_version;
    out->schema_version = s->snapshot_schema;
    bson_copy_to(s->snapshot, &out->state);
    *found = true;
  }
  uv_rwlock_rdunlock(&m->lock);
  return CQRS_OK;
}

static cqrs_code_t mem_snapshot_save(void *impl, const cqrs_snapshot_t *snap, cqrs_error_t *err) {
  memstore_t *m = impl;
  cqrs_code_t rc = CQRS_OK;
  uv_rwlock_wrlock(&m->lock);
  stream_t *s = find_stream(m, snap->aggregate_type, snap->aggregate_id);
  if (!s || atomic_load_explicit(&s->count, memory_order_relaxed) < snap->version) {
    rc = cqrs_error_set(err, CQRS_EINVAL, "snapshot of %s/%s is ahead of its stream", snap->aggregate_type,
                        snap->aggregate_id);
  } else if (!s->has_snapshot || snap->version >= s->snapshot_version) {
    bson_t *copy = bson_copy(&snap->state);
    if (s->snapshot) bson_destroy(s->snapshot);
    s->snapshot = copy;
    s->snapshot_version = snap->version;
    s->snapshot_schema = snap->schema_version;
    s->has_snapshot = true;
  }
  uv_rwlock_wrunlock(&m->lock);
  return rc;
}

static void mem_destroy(void *impl) {
  memstore_t *m = impl;
  int64_t head = atomic_load(&m->head);
  for (int64_t p = 0; p < head; p++) cqrs_event_unref(m->log[(size_t)p >> LOG_CHUNK_BITS][(size_t)p & (LOG_CHUNK - 1)]);
  for (size_t g = 0; g < LOG_DIR; g++) cqrs__free(m->log[g]);
  for (size_t i = 0; i < m->streams.cap; i++) {
    stream_t *s = m->streams.slots[i];
    if (!s) continue;
    for (size_t k = 0; k < STREAM_CHUNKS; k++) cqrs__free(s->chunks[k]);
    if (s->snapshot) bson_destroy(s->snapshot);
    cqrs__free(s);
  }
  cqrs__free(m->streams.slots);
  ids_free(&m->commands);
  uv_rwlock_destroy(&m->lock);
  cqrs__free(m);
}

static const cqrs_store_ops_t memory_ops = {
    .name = "memory",
    .blocking = false,
    .append = mem_append,
    .read_stream = mem_read_stream,
    .read_all = mem_read_all,
    .head = mem_head,
    .snapshot_load = mem_snapshot_load,
    .snapshot_save = mem_snapshot_save,
    .destroy = mem_destroy,
};

cqrs_code_t cqrs_memory_store_new(cqrs_store_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  memstore_t *m = cqrs__calloc(1, sizeof *m);
  if (!m) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate a memory store");
  if (uv_rwlock_init(&m->lock)) {
    cqrs__free(m);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot initialise the memory store's lock");
  }
  m->overhead = sizeof *m;
  return cqrs_store_new(&memory_ops, m, out, err);
}

size_t cqrs_memory_store_overhead(const cqrs_store_t *store) {
  if (!store || store->ops != &memory_ops) return 0;
  memstore_t *m = store->impl;
  uv_rwlock_rdlock(&m->lock);
  size_t n = m->overhead;
  uv_rwlock_rdunlock(&m->lock);
  return n;
}
