/* The in-memory event store's tables, shared by its two files:
 * memory_store.c (the store's operations: append, reads, snapshots) and
 * memory_store_tables.c (the tables' growth and freeing), which it calls and
 * which calls nothing back. The look-ups an append or a read makes per
 * command or per event are static inline here: a call across files on the
 * hot path would cost every command (docs/benchmarks.md). Not installed. */
#ifndef CQRS_MEMORY_STORE_PRIVATE_H
#define CQRS_MEMORY_STORE_PRIVATE_H

#include <uv.h>

#include "base/cqrs-private.h"

#define LOG_CHUNK_BITS 12
#define LOG_CHUNK (1u << LOG_CHUNK_BITS)
#define LOG_DIR 16384u /* LOG_DIR * LOG_CHUNK = 2^26 events: positions fit in 32 bits */
#define STREAM_CHUNKS 40 /* chunk k holds 8 << k events */
#define ARENA_BLOCK ((size_t)1 << 20)

typedef struct rec rec_t;

typedef struct stream {
  uint64_t hash;
  _Atomic int64_t count;
  const rec_t **chunks[STREAM_CHUNKS];
  bool has_snapshot;
  int64_t snapshot_version;
  uint32_t snapshot_schema;
  bson_t *snapshot;
  size_t keylen, idat;
  char key[]; /* "type\0id", the id at idat */
} stream_t;

/* The ids of a commit's events: causation id, correlation id (unless the
 * same), the command id (when it is neither); each under CQRS_ID_MAX. */
#define CAUSE_SAME 1u /* correlation id = causation id */
#define CAUSE_CMD 2u  /* the command id follows */
typedef struct cause {
  uint8_t flags;
  uint8_t len, corr_len; /* sizes with the NUL; corr_len 0 when CAUSE_SAME */
  char strings[];
} cause_t;

static inline const char *cause_correlation(const cause_t *c) {
  return c->strings + (c->flags & CAUSE_SAME ? 0 : c->len);
}

static inline const char *cause_command(const cause_t *c) {
  return c->flags & CAUSE_CMD ? c->strings + c->len + c->corr_len : c->strings;
}

#define REC_KEPT 1u /* the event itself is kept: its pointer is the data */
struct rec {
  const cqrs_event_type_t *type;
  const cause_t *cause;
  const stream_t *stream;
  int64_t version, timestamp;
  uint32_t position;
  uint32_t schema_version;
  uint16_t payload_len;
  uint8_t flags, id_len;
  unsigned char data[]; /* payload_len bytes of payload, then the id (id_len bytes, no NUL) */
};

static inline const cqrs_event_t *kept_of(const rec_t *r) {
  const cqrs_event_t *e;
  memcpy(&e, r->data, sizeof e);
  return e;
}

/* Records and causes, bump-allocated in blocks that are never freed before
 * the store: one commit's records lie next to each other. */
typedef struct arena_block {
  struct arena_block *next;
  size_t used, cap;
  _Alignas(max_align_t) unsigned char data[];
} arena_block_t;

static inline size_t round8(size_t n) { return (n + 7) & ~(size_t)7; }

/* A new block of at least `n` bytes in front of *head; false: no memory,
 * nothing changed. */
bool cqrs__memstore_arena_grow(arena_block_t **head, size_t n);

/* Room for `n` more bytes in the current block, else a new block; false:
 * no memory, nothing changed. */
static inline bool arena_reserve(arena_block_t **head, size_t n) {
  if (*head && (*head)->cap - (*head)->used >= n) return true;
  return cqrs__memstore_arena_grow(head, n);
}

/* After arena_reserve for at least round8(n). */
static inline void *arena_take(arena_block_t *b, size_t n) {
  void *p = b->data + b->used;
  b->used += round8(n);
  return p;
}

/* The streams by (type, id): open addressing, hashed without building the
 * key; filled and grown under the append lock, read without a lock. A grown
 * table is published whole; the one it replaces stays (in `older`) until
 * the store goes, for readers still probing it: the tables together take
 * less than twice the last one. */
typedef struct stream_slot {
  _Atomic(stream_t *) stream; /* NULL: free; set once, after the hash */
  uint64_t hash;              /* the stream's: probing past others reads no stream */
} stream_slot_t;

typedef struct stream_table {
  struct stream_table *older;
  size_t cap; /* a power of two */
  stream_slot_t slots[];
} stream_table_t;

typedef struct stream_set {
  _Atomic(stream_table_t *) table;
  size_t len; /* <= 7/10 of the table's cap */
} stream_set_t;

/* Of the id alone: streams of two types rarely share one, and the look-up
 * compares the type anyway. */
static inline uint64_t stream_hash(const char *type, const char *id) {
  CQRS__UNUSED(type);
  return cqrs__hash_str(id, 0);
}

/* From any thread, without a lock. */
static inline stream_t *streams_find(stream_set_t *set, uint64_t h, const char *type, const char *id) {
  const stream_table_t *t = atomic_load_explicit(&set->table, memory_order_acquire);
  if (!t) return NULL;
  for (size_t i = h & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
    stream_t *s = atomic_load_explicit(&t->slots[i].stream, memory_order_acquire);
    if (!s) return NULL;
    if (t->slots[i].hash == h && !strcmp(s->key + s->idat, id) && !strcmp(s->key, type)) return s;
  }
}

/* Under the append lock (or before the table is published). */
static inline void streams_put(stream_table_t *t, stream_t *s) {
  size_t i = s->hash & (t->cap - 1);
  while (atomic_load_explicit(&t->slots[i].stream, memory_order_relaxed)) i = (i + 1) & (t->cap - 1);
  t->slots[i].hash = s->hash;
  atomic_store_explicit(&t->slots[i].stream, s, memory_order_release);
}

/* Publishes a table twice the size of the set's (or a first one), under the
 * append lock, and adds its bytes to *overhead; false: no memory, the set
 * unchanged. */
bool cqrs__memstore_streams_grow(stream_set_t *set, size_t *overhead);

/* Makes room for one more stream, under the append lock; false: no memory,
 * the set unchanged. */
static inline bool streams_reserve(stream_set_t *set, size_t *overhead) {
  stream_table_t *old = atomic_load_explicit(&set->table, memory_order_relaxed);
  if (old && (set->len + 1) * 10 <= old->cap * 7) return true;
  return cqrs__memstore_streams_grow(set, overhead);
}

/* A stream of its own for aggregate `id` of the type named `type`, not yet
 * in the table, with its `hash` (stream_hash); NULL: no memory. */
stream_t *cqrs__memstore_stream_new(const char *type, const char *id, uint64_t hash);
/* Frees `s` (NULL: nothing), its chunks and its snapshot. */
void cqrs__memstore_stream_free(stream_t *s);

/* The command ids committed, for idempotency: an open-addressing set of
 * 8-byte slots, the id's hash (high half) and the position of its commit's
 * first event (low half; 0: free), whose cause names the command. */
typedef struct id_set {
  uint64_t *slots;
  size_t cap, len; /* cap a power of two, len <= 7/10 cap */
} id_set_t;

static inline void ids_put(uint64_t *slots, size_t cap, uint64_t slot) {
  size_t i = (size_t)(slot >> 32) & (cap - 1);
  while (slots[i]) i = (i + 1) & (cap - 1);
  slots[i] = slot;
}

/* Doubles the set's slots (or makes the first); false: no memory, the set
 * unchanged. */
bool cqrs__memstore_ids_grow(id_set_t *set);

/* Makes room for one more id; false: no memory, the set unchanged. */
static inline bool ids_reserve(id_set_t *set) {
  if ((set->len + 1) * 10 <= set->cap * 7) return true;
  return cqrs__memstore_ids_grow(set);
}

typedef struct memstore {
  uv_mutex_t lock;      /* appends (lock_appends), the overhead */
  uv_mutex_t snap_lock; /* the streams' snapshots */
  uint64_t serial;      /* this store's, among every memory store of the process */
  stream_set_t streams;
  id_set_t commands;
  arena_block_t *arena;
  _Atomic int64_t head;
  size_t overhead;
  const rec_t **log[LOG_DIR];
} memstore_t;

static inline const rec_t *log_at(const memstore_t *m, int64_t p) {
  return m->log[(size_t)p >> LOG_CHUNK_BITS][(size_t)p & (LOG_CHUNK - 1)];
}

static inline uint32_t hash_id(const char *s) { return (uint32_t)cqrs__hash_str(s, 0); }

static inline bool ids_has(const memstore_t *m, const char *id, uint32_t h) {
  const id_set_t *set = &m->commands;
  if (!set->cap) return false;
  for (size_t i = h & (set->cap - 1);; i = (i + 1) & (set->cap - 1)) {
    uint64_t sl = set->slots[i];
    if (!sl) return false;
    if ((uint32_t)(sl >> 32) == h && !strcmp(cause_command(log_at(m, (int64_t)(uint32_t)sl - 1)->cause), id))
      return true;
  }
}

static inline size_t chunk_index(int64_t i, size_t *offset) {
  uint64_t q = (uint64_t)i / 8 + 1;
  size_t k = 63 - (size_t)__builtin_clzll(q);
  *offset = (size_t)((uint64_t)i - 8 * ((UINT64_C(1) << k) - 1));
  return k;
}

/* The chunks that events count .. count + n - 1 of `s` and positions
 * head + 1 .. head + n need, under the append lock; false: no memory (the
 * chunks allocated stay, empty). */
static inline bool chunks_reserve(memstore_t *m, stream_t *s, int64_t count, int64_t head, size_t n) {
  for (size_t i = 0; i < n; i++) {
    size_t off, k = chunk_index(count + (int64_t)i, &off);
    if (!s->chunks[k]) {
      if (!(s->chunks[k] = cqrs__calloc((size_t)8 << k, sizeof(rec_t *)))) return false;
      m->overhead += ((size_t)8 << k) * sizeof(rec_t *);
    }
    size_t g = (size_t)(head + (int64_t)i) >> LOG_CHUNK_BITS;
    if (!m->log[g]) {
      if (!(m->log[g] = cqrs__calloc(LOG_CHUNK, sizeof(rec_t *)))) return false;
      m->overhead += LOG_CHUNK * sizeof(rec_t *);
    }
  }
  return true;
}

/* Frees what the tables hold (the log and its kept events, the streams and
 * their tables, the arena, the command ids), not `m` nor its locks. */
void cqrs__memstore_tables_free(memstore_t *m);

#endif
