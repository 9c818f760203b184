/* The in-memory event store. Appends serialise on one lock, held only for
 * what must be serial (the command-id check, the version check, the
 * positions, the records' bytes) and taken with a short spin first: with
 * loops on several cores, a writer that slept on it cost more than the whole
 * append (docs/benchmarks.md, "Several loops"). What an append can do alone
 * (hashing, the stream look-up, planning the records, building a new
 * stream) it does before. Appends publish with release stores, stream count
 * before head, so a reader that sees position p sees every position before
 * it and the stream at that version. Reads take no lock: the stream table
 * is read with acquire loads (a grown table replaces the old one, which is
 * kept until the store goes), and arrays whose chunks never move.
 *
 * Events are kept in a compact form, not as the cqrs_event_t the commit
 * made: a record in an arena (what the event says beyond its stream, its
 * position and its type: the timestamp, the id, the payload up to the end
 * of the string that ends it), the causation and correlation ids once per
 * commit. A read builds each event afresh (one allocation, freed after
 * the callback unless it took a reference), so a stored event costs about
 * half of what it did. An event this form cannot say exactly (an unknown
 * type's raw document, an envelope naming another stream) is kept as is. */
#include <pthread.h>
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

static const char *cause_correlation(const cause_t *c) { return c->strings + (c->flags & CAUSE_SAME ? 0 : c->len); }

static const char *cause_command(const cause_t *c) {
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

/* Records and causes, bump-allocated in blocks that are never freed before
 * the store: one commit's records lie next to each other. */
typedef struct arena_block {
  struct arena_block *next;
  size_t used, cap;
  _Alignas(max_align_t) unsigned char data[];
} arena_block_t;

static size_t round8(size_t n) { return (n + 7) & ~(size_t)7; }

/* Room for `n` more bytes in the current block, else a new block; false:
 * no memory, nothing changed. */
static bool arena_reserve(arena_block_t **head, size_t n) {
  if (*head && (*head)->cap - (*head)->used >= n) return true;
  size_t cap = n > ARENA_BLOCK ? n : ARENA_BLOCK;
  arena_block_t *b = cqrs__malloc(sizeof *b + cap);
  if (!b) return false;
  b->next = *head;
  b->used = 0;
  b->cap = cap;
  *head = b;
  return true;
}

/* After arena_reserve for at least round8(n). */
static void *arena_take(arena_block_t *b, size_t n) {
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
static uint64_t stream_hash(const char *type, const char *id) {
  CQRS__UNUSED(type);
  return cqrs__hash_str(id, 0);
}

/* From any thread, without a lock. */
static stream_t *streams_find(stream_set_t *set, uint64_t h, const char *type, const char *id) {
  const stream_table_t *t = atomic_load_explicit(&set->table, memory_order_acquire);
  if (!t) return NULL;
  for (size_t i = h & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
    stream_t *s = atomic_load_explicit(&t->slots[i].stream, memory_order_acquire);
    if (!s) return NULL;
    if (t->slots[i].hash == h && !strcmp(s->key + s->idat, id) && !strcmp(s->key, type)) return s;
  }
}

/* Under the append lock (or before the table is published). */
static void streams_put(stream_table_t *t, stream_t *s) {
  size_t i = s->hash & (t->cap - 1);
  while (atomic_load_explicit(&t->slots[i].stream, memory_order_relaxed)) i = (i + 1) & (t->cap - 1);
  t->slots[i].hash = s->hash;
  atomic_store_explicit(&t->slots[i].stream, s, memory_order_release);
}

/* Makes room for one more stream, under the append lock; false: no memory,
 * the set unchanged. */
static bool streams_reserve(stream_set_t *set, size_t *overhead) {
  stream_table_t *old = atomic_load_explicit(&set->table, memory_order_relaxed);
  if (old && (set->len + 1) * 10 <= old->cap * 7) return true;
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

/* The command ids committed, for idempotency: an open-addressing set of
 * 8-byte slots, the id's hash (high half) and the position of its commit's
 * first event (low half; 0: free), whose cause names the command. */
typedef struct id_set {
  uint64_t *slots;
  size_t cap, len; /* cap a power of two, len <= 7/10 cap */
} id_set_t;

#define TAILS 16
typedef struct tail {
  uint64_t store; /* the store's serial: a type need outlive only the stores that hold its events */
  const cqrs_event_type_t *type;
  const cqrs_field_t *field; /* NULL: the payload is kept whole */
} tail_t;

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

static const rec_t *log_at(const memstore_t *m, int64_t p) {
  return m->log[(size_t)p >> LOG_CHUNK_BITS][(size_t)p & (LOG_CHUNK - 1)];
}

static uint32_t hash_id(const char *s) { return (uint32_t)cqrs__hash_str(s, 0); }

static bool ids_has(const memstore_t *m, const char *id, uint32_t h) {
  const id_set_t *set = &m->commands;
  if (!set->cap) return false;
  for (size_t i = h & (set->cap - 1);; i = (i + 1) & (set->cap - 1)) {
    uint64_t sl = set->slots[i];
    if (!sl) return false;
    if ((uint32_t)(sl >> 32) == h && !strcmp(cause_command(log_at(m, (int64_t)(uint32_t)sl - 1)->cause), id))
      return true;
  }
}

static void ids_put(uint64_t *slots, size_t cap, uint64_t slot) {
  size_t i = (size_t)(slot >> 32) & (cap - 1);
  while (slots[i]) i = (i + 1) & (cap - 1);
  slots[i] = slot;
}

/* Makes room for one more id; false: no memory, the set unchanged. */
static bool ids_reserve(id_set_t *set) {
  if ((set->len + 1) * 10 <= set->cap * 7) return true;
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

static size_t chunk_index(int64_t i, size_t *offset) {
  uint64_t q = (uint64_t)i / 8 + 1;
  size_t k = 63 - (size_t)__builtin_clzll(q);
  *offset = (size_t)((uint64_t)i - 8 * ((UINT64_C(1) << k) - 1));
  return k;
}

static stream_t *find_stream(memstore_t *m, const char *type, const char *id) {
  return streams_find(&m->streams, stream_hash(type, id), type, id);
}

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif
#define LOCK_SPINS 200 /* a few microseconds: longer than any append holds the lock */

/* The lock is held for well under a microsecond: a writer that finds it
 * taken waits for it awake a while before it sleeps in the kernel. */
/* pthread's calls directly (uv_mutex_t is a pthread_mutex_t on Unix):
 * libuv's wrappers add a call and a check on every append. */
static void lock_appends(memstore_t *m) {
  for (int i = 0; i < LOCK_SPINS; i++) {
    if (!pthread_mutex_trylock(&m->lock)) return;
    CPU_RELAX();
  }
  uv_mutex_lock(&m->lock);
}

/* Whether `e` can be stored as a record that rebuilds it exactly. */
static bool compactable(const cqrs_event_t *e, const cqrs_append_t *req) {
  const cqrs_envelope_t *env = e->envelope;
  return env && e->type != &cqrs_unknown_event_type && e->type->payload_size <= UINT16_MAX &&
         !strcmp(env->aggregate_id, req->aggregate_id) &&
         /* the envelope borrows the descriptor's name, which the repository passes */
         (env->aggregate_type == req->aggregate_type || !strcmp(env->aggregate_type, req->aggregate_type));
}

/* Where a payload may end early: its last member, when the field table
 * names it a string that reaches the end of the struct. Looked up once per
 * type, store and thread (a small cache of the thread's: appends plan
 * outside the lock). */
static _Thread_local tail_t tails[TAILS];
static _Atomic uint64_t serials;

static const cqrs_field_t *tail_string(const memstore_t *m, const cqrs_event_type_t *type) {
  tail_t *t = &tails[((uintptr_t)type >> 4) % TAILS];
  if (t->type == type && t->store == m->serial) return t->field;
  const cqrs_field_t *last = NULL;
  for (const cqrs_field_t *f = type->fields; f && f->kind != CQRS_FIELD_END; f++) {
    if (!last || f->offset > last->offset) last = f;
  }
  t->store = m->serial;
  t->type = type;
  t->field = last && last->kind == CQRS_FIELD_STRING && last->offset + last->size == type->payload_size ? last : NULL;
  return t->field;
}

/* The payload's bytes up to the NUL of a string that ends it; what follows
 * that NUL means nothing (the field is a NUL-terminated string) and is zero
 * when the event is built again, as after a trip through BSON. */
static size_t trimmed(const memstore_t *m, const cqrs_event_t *e) {
  const cqrs_field_t *f = tail_string(m, e->type);
  if (!f) return e->type->payload_size;
  return f->offset + strnlen((const char *)e->payload + f->offset, f->size);
}

/* How event i of a commit is stored. */
typedef struct plan {
  size_t rec, cause;  /* bytes of its record and of its cause (0: the one before's) */
  size_t payload, id; /* bytes of payload and id kept */
  uint8_t cause_flags;
  bool compact;
} plan_t;

/* A cause of its own for the first event and for another envelope than the
 * one before. Returns the bytes the event takes. */
static size_t plan_event(const memstore_t *m, const cqrs_append_t *req, size_t i, plan_t *p) {
  const cqrs_event_t *e = req->events[i];
  const cqrs_envelope_t *env = e->envelope;
  const cqrs_envelope_t *prev = i ? req->events[i - 1]->envelope : NULL;
  bool new_cause = i == 0 || !env || !prev ||
                   (env != prev && (strcmp(env->causation_id, prev->causation_id) ||
                                    strcmp(env->correlation_id, prev->correlation_id)));
  p->cause = 0;
  p->cause_flags = 0;
  if (new_cause) {
    const char *cause = env ? env->causation_id : "", *corr = env ? env->correlation_id : "";
    size_t n = sizeof(cause_t) + strlen(cause) + 1;
    if (corr != cause && strcmp(cause, corr)) {
      n += strlen(corr) + 1;
    } else {
      p->cause_flags |= CAUSE_SAME;
    }
    if (i == 0 && strcmp(cause, req->command_id)) {
      n += strlen(req->command_id) + 1;
      p->cause_flags |= CAUSE_CMD;
    }
    p->cause = round8(n);
  }
  p->compact = compactable(e, req);
  p->payload = p->compact ? trimmed(m, e) : 0;
  p->id = p->compact ? strlen(e->id) : 0;
  p->rec = round8(offsetof(rec_t, data) + (p->compact ? p->payload + p->id : sizeof e));
  return p->rec + p->cause;
}

static const cause_t *write_cause(arena_block_t *a, const plan_t *plan, const cqrs_envelope_t *env,
                                  const char *command_id) {
  cause_t *c = arena_take(a, plan->cause);
  const char *cause = env ? env->causation_id : "", *corr = env ? env->correlation_id : "";
  char *p = c->strings;
  size_t n = strlen(cause) + 1;
  memcpy(p, cause, n);
  p += n;
  c->flags = plan->cause_flags;
  c->len = (uint8_t)n;
  c->corr_len = 0;
  if (!(c->flags & CAUSE_SAME)) {
    n = strlen(corr) + 1;
    memcpy(p, corr, n);
    p += n;
    c->corr_len = (uint8_t)n;
  }
  if (c->flags & CAUSE_CMD) memcpy(p, command_id, strlen(command_id) + 1);
  return c;
}

static const rec_t *write_rec(arena_block_t *a, const plan_t *plan, const cqrs_event_t *e, const stream_t *s,
                              const cause_t *cause, int64_t position) {
  rec_t *r = arena_take(a, plan->rec);
  r->type = e->type;
  r->cause = cause;
  r->stream = s;
  r->version = e->version;
  r->timestamp = e->timestamp;
  r->position = (uint32_t)position;
  r->schema_version = e->schema_version;
  r->flags = 0;
  r->id_len = 0;
  r->payload_len = 0;
  if (!plan->compact) {
    r->flags = REC_KEPT;
    cqrs_event_ref(e);
    memcpy(r->data, &e, sizeof e);
    return r;
  }
  r->payload_len = (uint16_t)plan->payload;
  if (plan->payload) memcpy(r->data, e->payload, plan->payload);
  r->id_len = (uint8_t)plan->id;
  memcpy(r->data + plan->payload, e->id, plan->id);
  return r;
}

static const cqrs_event_t *kept_of(const rec_t *r) {
  const cqrs_event_t *e;
  memcpy(&e, r->data, sizeof e);
  return e;
}

/* A read in progress: the event last built, and what its envelope says. */
typedef struct reader {
  cqrs_event_t *spare;
  const stream_t *stream;
  const cause_t *cause;
} reader_t;

/* Hands the event of record `r` to `cb`, built in the reader's last one
 * when it can (see cqrs__event_restore); false: stop (the callback said so,
 * or *rc tells the error). */
static bool visit(reader_t *rd, const rec_t *r, cqrs_event_visit_cb cb, void *data, cqrs_code_t *rc,
                  cqrs_error_t *err) {
  if (r->flags & REC_KEPT) return cb(kept_of(r), data);
  const stream_t *s = r->stream;
  const cause_t *c = r->cause;
  cqrs__event_parts_t p = {
      .type = r->type,
      .strs = {s->key, s->key + s->idat, c->strings, cause_correlation(c)},
      .lens = {s->idat, s->keylen - s->idat, c->len, c->corr_len},
      .same_envelope = rd->spare && rd->stream == s && rd->cause == c,
      .id = (const char *)r->data + r->payload_len,
      .id_len = r->id_len,
      .version = r->version,
      .position = r->position,
      .timestamp = r->timestamp,
      .schema_version = r->schema_version,
      .payload = r->data,
      .payload_len = r->payload_len,
  };
  if ((*rc = cqrs__event_restore(&p, &rd->spare, err))) return false;
  rd->stream = s;
  rd->cause = c;
  return cb(rd->spare, data);
}

/* A stream of its own for the request's aggregate, not yet in the table;
 * NULL: no memory. */
static stream_t *stream_new(const cqrs_append_t *req, uint64_t hash) {
  size_t lt = strlen(req->aggregate_type) + 1, li = strlen(req->aggregate_id) + 1;
  stream_t *s = cqrs__calloc(1, sizeof *s + lt + li);
  if (!s) return NULL;
  memcpy(s->key, req->aggregate_type, lt);
  memcpy(s->key + lt, req->aggregate_id, li);
  s->keylen = lt + li;
  s->idat = lt;
  s->hash = hash;
  return s;
}

static void stream_free(stream_t *s) {
  if (!s) return;
  for (size_t k = 0; k < STREAM_CHUNKS; k++) cqrs__free(s->chunks[k]);
  if (s->snapshot) bson_destroy(s->snapshot);
  cqrs__free(s);
}

/* The chunks that events count .. count + n - 1 of `s` and positions
 * head + 1 .. head + n need, under the append lock; false: no memory (the
 * chunks allocated stay, empty). */
static bool chunks_reserve(memstore_t *m, stream_t *s, int64_t count, int64_t head, size_t n) {
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

static cqrs_code_t mem_append(void *impl, const cqrs_append_t *req, cqrs_append_result_t *res, cqrs_error_t *err) {
  memstore_t *m = impl;
  cqrs_code_t rc = CQRS_OK;
  plan_t few[4], *plans = req->count > 4 ? cqrs__malloc(req->count * sizeof *plans) : few;
  if (!plans) return cqrs_error_set(err, CQRS_ENOMEM, "memory store: out of memory");
  /* Outside the lock: what does not depend on the other writers. */
  uint32_t idh = hash_id(req->command_id);
  uint64_t sh = stream_hash(req->aggregate_type, req->aggregate_id);
  stream_t *s = streams_find(&m->streams, sh, req->aggregate_type, req->aggregate_id);
  stream_t *fresh = NULL;
  size_t need = 0;
  for (size_t i = 0; i < req->count; i++) need += plan_event(m, req, i, &plans[i]);
  if (!s && req->expected_version == 0 && !(fresh = stream_new(req, sh))) {
    if (plans != few) cqrs__free(plans);
    return cqrs_error_set(err, CQRS_ENOMEM, "memory store: out of memory");
  }
  lock_appends(m);
  if (ids_has(m, req->command_id, idh)) {
    res->duplicate = true;
    goto out;
  }
  /* Another writer may have made the stream since the look-up. */
  if (!s) s = streams_find(&m->streams, sh, req->aggregate_type, req->aggregate_id);
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
  stream_t *target = s ? s : fresh;
  /* Allocate everything first so that a failure leaves the store unchanged. */
  if (!arena_reserve(&m->arena, need) || !ids_reserve(&m->commands) ||
      (!s && !streams_reserve(&m->streams, &m->overhead)) || !chunks_reserve(m, target, count, head, req->count)) {
    rc = cqrs_error_set(err, CQRS_ENOMEM, "memory store: out of memory");
    goto out;
  }
  if (!s) {
    streams_put(atomic_load_explicit(&m->streams.table, memory_order_relaxed), fresh);
    m->streams.len++;
    m->overhead += sizeof *fresh + fresh->keylen;
    fresh = NULL;
  }
  const cause_t *cause = NULL;
  for (size_t i = 0; i < req->count; i++) {
    cqrs_event_t *e = req->events[i];
    int64_t pos = head + (int64_t)i;
    const plan_t *p = &plans[i];
    if (p->cause) cause = write_cause(m->arena, p, e->envelope, req->command_id);
    const rec_t *r = write_rec(m->arena, p, e, target, cause, pos + 1);
    e->position = pos + 1;
    size_t off, k = chunk_index(count + (int64_t)i, &off);
    target->chunks[k][off] = r;
    m->log[(size_t)pos >> LOG_CHUNK_BITS][(size_t)pos & (LOG_CHUNK - 1)] = r;
    m->overhead += p->rec + p->cause - p->payload;
  }
  ids_put(m->commands.slots, m->commands.cap, (uint64_t)idh << 32 | (uint64_t)(head + 1));
  m->commands.len++;
  m->overhead += sizeof(uint64_t) * 10 / 7;
  atomic_store_explicit(&target->count, count + (int64_t)req->count, memory_order_release);
  atomic_store_explicit(&m->head, head + (int64_t)req->count, memory_order_release);
  res->first_position = head + 1;
  res->last_position = head + (int64_t)req->count;
out:
  pthread_mutex_unlock(&m->lock);
  stream_free(fresh);
  if (plans != few) cqrs__free(plans);
  return rc;
}

static cqrs_code_t mem_read_stream(void *impl, const char *type, const char *id, int64_t from_version,
                                   cqrs_event_visit_cb cb, void *data, cqrs_error_t *err) {
  stream_t *s = find_stream(impl, type, id);
  if (!s) return CQRS_OK;
  int64_t count = atomic_load_explicit(&s->count, memory_order_acquire);
  int64_t i = from_version - 1;
  cqrs_code_t rc = CQRS_OK;
  reader_t rd = {NULL, NULL, NULL};
  bool more = true;
  while (more && i < count) {
    size_t off, k = chunk_index(i, &off);
    const rec_t **chunk = s->chunks[k];
    size_t end = (size_t)8 << k;
    if ((int64_t)(end - off) > count - i) end = off + (size_t)(count - i);
    for (size_t j = off; more && j < end; j++) more = visit(&rd, chunk[j], cb, data, &rc, err);
    i += (int64_t)(end - off);
  }
  cqrs_event_unref(rd.spare);
  return rc;
}

static cqrs_code_t mem_read_all(void *impl, int64_t from_position, size_t limit, cqrs_event_visit_cb cb, void *data,
                                cqrs_error_t *err) {
  memstore_t *m = impl;
  int64_t head = atomic_load_explicit(&m->head, memory_order_acquire);
  int64_t end = head;
  if (from_position - 1 < head && (uint64_t)limit < (uint64_t)(head - (from_position - 1)))
    end = from_position - 1 + (int64_t)limit;
  cqrs_code_t rc = CQRS_OK;
  reader_t rd = {NULL, NULL, NULL};
  for (int64_t p = from_position - 1; p < end; p++) {
    if (!visit(&rd, log_at(m, p), cb, data, &rc, err)) break;
  }
  cqrs_event_unref(rd.spare);
  return rc;
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
  stream_t *s = find_stream(m, type, id);
  uv_mutex_lock(&m->snap_lock);
  if (s && s->has_snapshot) {
    out->version = s->snapshot_version;
    out->schema_version = s->snapshot_schema;
    bson_copy_to(s->snapshot, &out->state);
    *found = true;
  }
  uv_mutex_unlock(&m->snap_lock);
  return CQRS_OK;
}

static cqrs_code_t mem_snapshot_save(void *impl, const cqrs_snapshot_t *snap, cqrs_error_t *err) {
  memstore_t *m = impl;
  cqrs_code_t rc = CQRS_OK;
  stream_t *s = find_stream(m, snap->aggregate_type, snap->aggregate_id);
  uv_mutex_lock(&m->snap_lock);
  if (!s || atomic_load_explicit(&s->count, memory_order_acquire) < snap->version) {
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
  uv_mutex_unlock(&m->snap_lock);
  return rc;
}

static void mem_destroy(void *impl) {
  memstore_t *m = impl;
  int64_t head = atomic_load(&m->head);
  for (int64_t p = 0; p < head; p++) {
    const rec_t *r = log_at(m, p);
    if (r->flags & REC_KEPT) cqrs_event_unref(kept_of(r));
  }
  for (size_t g = 0; g < LOG_DIR; g++) cqrs__free(m->log[g]);
  stream_table_t *t = atomic_load(&m->streams.table);
  for (size_t i = 0; t && i < t->cap; i++) stream_free(atomic_load(&t->slots[i].stream));
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
  uv_mutex_destroy(&m->lock);
  uv_mutex_destroy(&m->snap_lock);
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
  if (uv_mutex_init(&m->lock)) {
    cqrs__free(m);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot initialise the memory store's lock");
  }
  if (uv_mutex_init(&m->snap_lock)) {
    uv_mutex_destroy(&m->lock);
    cqrs__free(m);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot initialise the memory store's lock");
  }
  m->overhead = sizeof *m;
  m->serial = atomic_fetch_add_explicit(&serials, 1, memory_order_relaxed) + 1;
  return cqrs_store_new(&memory_ops, m, out, err);
}

size_t cqrs_memory_store_overhead(const cqrs_store_t *store) {
  if (!store || store->ops != &memory_ops) return 0;
  memstore_t *m = store->impl;
  uv_mutex_lock(&m->lock);
  size_t n = m->overhead;
  uv_mutex_unlock(&m->lock);
  return n;
}
