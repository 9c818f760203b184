/* The in-memory event store's tables where they grow and where they go:
 * the arena's blocks, the stream set's tables, the streams, the command-id
 * set. What an append or a read looks up in them is inline in
 * memory-store-private.h; memory_store.c calls these only when a table is
 * full, a stream is new or the store goes. */
#include "store/memory-store-private.h"

bool cqrs__memstore_arena_grow(arena_block_t **head, size_t n) {
  size_t cap = n > ARENA_BLOCK ? n : ARENA_BLOCK;
  arena_block_t *b = cqrs__malloc(sizeof *b + cap);
  if (!b) return false;
  b->next = *head;
  b->used = 0;
  b->cap = cap;
  *head = b;
  return true;
}

bool cqrs__memstore_streams_grow(stream_set_t *set, size_t *overhead) {
  stream_table_t *old = atomic_load_explicit(&set->table, memory_order_relaxed);
  size_t cap = old ? old->cap * 2 : 1024;
  stream_table_t *t = cqrs__calloc(1, sizeof *t + cap * sizeof t->slots[0]);
  if (!t) return false;
  t->cap = cap;
  t->older = old;
  for (size_t i = 0; old && i < old->cap; i++) {
    stream_t *s = atomic_load_explicit(&old->slots[i].stream, memory_order_relaxed);
    if (s) streams_put(t, s);
  }
  atomic_store_explicit(&set->table, t, memory_order_release);
  *overhead += cap * sizeof t->slots[0];
  return true;
}

stream_t *cqrs__memstore_stream_new(const char *type, const char *id, uint64_t hash) {
  size_t lt = strlen(type) + 1, li = strlen(id) + 1;
  stream_t *s = cqrs__calloc(1, sizeof *s + lt + li);
  if (!s) return NULL;
  memcpy(s->key, type, lt);
  memcpy(s->key + lt, id, li);
  s->keylen = lt + li;
  s->idat = lt;
  s->hash = hash;
  return s;
}

void cqrs__memstore_stream_free(stream_t *s) {
  if (!s) return;
  for (size_t k = 0; k < STREAM_CHUNKS; k++) cqrs__free(s->chunks[k]);
  if (s->snapshot) bson_destroy(s->snapshot);
  cqrs__free(s);
}

bool cqrs__memstore_ids_grow(id_set_t *set) {
  size_t cap = set->cap ? set->cap * 2 : 1024;
  uint64_t *slots = cqrs__calloc(cap, sizeof *slots);
  if (!slots) return false;
  for (size_t i = 0; i < set->cap; i++) {
    if (set->slots[i]) ids_put(slots, cap, set->slots[i]);
  }
  cqrs__free(set->slots);
  set->slots = slots;
  set->cap = cap;
  return true;
}

void cqrs__memstore_tables_free(memstore_t *m) {
  int64_t head = atomic_load(&m->head);
  for (int64_t p = 0; p < head; p++) {
    const rec_t *r = log_at(m, p);
    if (r->flags & REC_KEPT) cqrs_event_unref(kept_of(r));
  }
  for (size_t g = 0; g < LOG_DIR; g++) cqrs__free(m->log[g]);
  stream_table_t *t = atomic_load(&m->streams.table);
  for (size_t i = 0; t && i < t->cap; i++) cqrs__memstore_stream_free(atomic_load(&t->slots[i].stream));
  while (t) {
    stream_table_t *older = t->older;
    cqrs__free(t);
    t = older;
  }
  while (m->arena) {
    arena_block_t *b = m->arena;
    m->arena = b->next;
    cqrs__free(b);
  }
  cqrs__free(m->commands.slots);
}
