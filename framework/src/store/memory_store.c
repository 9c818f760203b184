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
 * type's raw document, an envelope naming another stream) is kept as is.
 *
 * The tables (arena, streams, command ids, the log's chunks) and their
 * look-ups are in memory-store-private.h, their growth and freeing in
 * memory_store_tables.c. */
#include <pthread.h>

#include "store/memory-store-private.h"

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

/* What an append calls is inlined in it, as when it was its only caller:
 * append_many calls the same, and the single append is every command's. */
#define HOT static inline __attribute__((always_inline))

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
#define TAILS 16
typedef struct tail {
  uint64_t store; /* the store's serial: a type need outlive only the stores that hold its events */
  const cqrs_event_type_t *type;
  const cqrs_field_t *field; /* NULL: the payload is kept whole */
} tail_t;
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
HOT size_t plan_event(const memstore_t *m, const cqrs_append_t *req, size_t i, plan_t *p) {
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

HOT const cause_t *write_cause(arena_block_t *a, const plan_t *plan, const cqrs_envelope_t *env,
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

HOT const rec_t *write_rec(arena_block_t *a, const plan_t *plan, const cqrs_event_t *e, const stream_t *s,
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

/* What an append does under the lock, once its records are planned:
 * `*s` is the stream found (NULL: none yet), `*fresh` a new one for a
 * first commit (taken when used). */
HOT cqrs_code_t commit_locked(memstore_t *m, const cqrs_append_t *req, const plan_t *plans, size_t need, uint32_t idh,
                              uint64_t sh, stream_t **sp, stream_t **freshp, cqrs_append_result_t *res,
                              cqrs_error_t *err) {
  if (ids_has(m, req->command_id, idh)) {
    res->duplicate = true;
    return CQRS_OK;
  }
  /* Another writer may have made the stream since the look-up. */
  stream_t *s = *sp ? *sp : (*sp = streams_find(&m->streams, sh, req->aggregate_type, req->aggregate_id));
  stream_t *fresh = *freshp;
  int64_t count = s ? atomic_load_explicit(&s->count, memory_order_relaxed) : 0;
  if (count != req->expected_version)
    return cqrs_error_set(err, CQRS_ECONFLICT, "%s/%s is at version %lld, expected %lld", req->aggregate_type,
                          req->aggregate_id, (long long)count, (long long)req->expected_version);
  int64_t head = atomic_load_explicit(&m->head, memory_order_relaxed);
  if ((uint64_t)head + req->count > (uint64_t)LOG_DIR * LOG_CHUNK)
    return cqrs_error_set(err, CQRS_ETOO_LARGE, "the memory store is full");
  stream_t *target = s ? s : fresh;
  /* Allocate everything first so that a failure leaves the store unchanged. */
  if (!arena_reserve(&m->arena, need) || !ids_reserve(&m->commands) ||
      (!s && !streams_reserve(&m->streams, &m->overhead)) || !chunks_reserve(m, target, count, head, req->count))
    return cqrs_error_set(err, CQRS_ENOMEM, "memory store: out of memory");
  if (!s) {
    streams_put(atomic_load_explicit(&m->streams.table, memory_order_relaxed), fresh);
    m->streams.len++;
    m->overhead += sizeof *fresh + fresh->keylen;
    *sp = fresh;
    *freshp = NULL;
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
  return CQRS_OK;
}

static cqrs_code_t mem_append(void *impl, const cqrs_append_t *req, cqrs_append_result_t *res, cqrs_error_t *err) {
  memstore_t *m = impl;
  plan_t few[4], *plans = req->count > 4 ? cqrs__malloc(req->count * sizeof *plans) : few;
  if (!plans) return cqrs_error_set(err, CQRS_ENOMEM, "memory store: out of memory");
  /* Outside the lock: what does not depend on the other writers. */
  uint32_t idh = hash_id(req->command_id);
  uint64_t sh = stream_hash(req->aggregate_type, req->aggregate_id);
  stream_t *s = streams_find(&m->streams, sh, req->aggregate_type, req->aggregate_id);
  stream_t *fresh = NULL;
  size_t need = 0;
  for (size_t i = 0; i < req->count; i++) need += plan_event(m, req, i, &plans[i]);
  if (!s && req->expected_version == 0 && !(fresh = cqrs__memstore_stream_new(req->aggregate_type, req->aggregate_id, sh))) {
    if (plans != few) cqrs__free(plans);
    return cqrs_error_set(err, CQRS_ENOMEM, "memory store: out of memory");
  }
  lock_appends(m);
  cqrs_code_t rc = commit_locked(m, req, plans, need, idh, sh, &s, &fresh, res, err);
  pthread_mutex_unlock(&m->lock);
  cqrs__memstore_stream_free(fresh);
  if (plans != few) cqrs__free(plans);
  return rc;
}

/* The commits of one stream under one hold of the lock: planned first,
 * then each in turn until one does not commit. */
static cqrs_code_t mem_append_many(void *impl, const cqrs_append_t *reqs, size_t n, cqrs_append_result_t *res,
                                   size_t *done, cqrs_error_t *err) {
  memstore_t *m = impl;
  size_t events = 0;
  for (size_t i = 0; i < n; i++) events += reqs[i].count;
  plan_t *plans = cqrs__malloc(events * sizeof *plans);
  size_t *needs = cqrs__malloc(n * sizeof *needs);
  const cqrs_append_t *first = &reqs[0];
  uint64_t sh = stream_hash(first->aggregate_type, first->aggregate_id);
  stream_t *s = streams_find(&m->streams, sh, first->aggregate_type, first->aggregate_id);
  stream_t *fresh = NULL;
  cqrs_code_t rc = CQRS_OK;
  if (!plans || !needs ||
      (!s && first->expected_version == 0 &&
       !(fresh = cqrs__memstore_stream_new(first->aggregate_type, first->aggregate_id, sh)))) {
    rc = cqrs_error_set(err, CQRS_ENOMEM, "memory store: out of memory");
    goto out;
  }
  for (size_t i = 0, at = 0; i < n; at += reqs[i++].count) {
    needs[i] = 0;
    for (size_t k = 0; k < reqs[i].count; k++) needs[i] += plan_event(m, &reqs[i], k, &plans[at + k]);
  }
  lock_appends(m);
  for (size_t at = 0; *done < n; at += reqs[(*done)++].count) {
    const cqrs_append_t *req = &reqs[*done];
    rc = commit_locked(m, req, plans + at, needs[*done], hash_id(req->command_id), sh, &s, &fresh, &res[*done], err);
    if (rc || res[*done].duplicate) break;
  }
  pthread_mutex_unlock(&m->lock);
out:
  cqrs__memstore_stream_free(fresh);
  cqrs__free(needs);
  cqrs__free(plans);
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

static cqrs_code_t mem_has_command(void *impl, const char *command_id, bool *found, cqrs_error_t *err) {
  CQRS__UNUSED(err);
  memstore_t *m = impl;
  uint32_t h = hash_id(command_id);
  lock_appends(m);
  *found = ids_has(m, command_id, h);
  pthread_mutex_unlock(&m->lock);
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
  cqrs__memstore_tables_free(m);
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
    .has_command = mem_has_command,
    .append_many = mem_append_many,
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
