#include <pthread.h>

#include "model/personal-private.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
/* All but the link to the next block, which LeakSanitizer must see. */
#define POOL_POISON(p, n) ASAN_POISON_MEMORY_REGION((char *)(p) + sizeof(void *), (n) - sizeof(void *))
#define POOL_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((char *)(p) + sizeof(void *), (n) - sizeof(void *))
#else
#define POOL_POISON(p, n) ((void)(p), (void)(n))
#define POOL_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* Event blocks up to EVENT_BLOCK bytes are all that size and kept for reuse
 * by the thread that frees them (at most POOL_MAX each): a command's event
 * is made and freed on the loop thread, so the next one takes its block
 * back without malloc. A thread's pool is freed when the thread exits; the
 * pools hang from one list, so that what a thread still running at exit
 * holds is reachable, not a leak. Under AddressSanitizer a pooled block is
 * poisoned: a use after the last unref is still caught. A block's `size` is
 * its true size, so cqrs__event_restore may rebuild in it. */
#define EVENT_BLOCK 512
#define POOL_MAX 64

typedef struct block_pool {
  struct block_pool *next, **prev; /* in `pools` */
  void *head;
  unsigned n;
} block_pool_t;

static _Thread_local block_pool_t *tls_pool;
static block_pool_t *pools;
static pthread_mutex_t pools_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;
static pthread_key_t pool_key;
static bool pool_key_ok;

static void pool_drop(void *data) {
  block_pool_t *bp = data;
  pthread_mutex_lock(&pools_lock);
  *bp->prev = bp->next;
  if (bp->next) bp->next->prev = bp->prev;
  pthread_mutex_unlock(&pools_lock);
  while (bp->head) {
    void *b = bp->head;
    POOL_UNPOISON(b, EVENT_BLOCK);
    bp->head = *(void **)b;
    cqrs__free(b);
  }
  if (tls_pool == bp) tls_pool = NULL;
  cqrs__free(bp);
}

static void pool_key_make(void) { pool_key_ok = pthread_key_create(&pool_key, pool_drop) == 0; }

/* This thread's pool, made on its first free (NULL without memory). */
static block_pool_t *pool_mine(void) {
  block_pool_t *bp = tls_pool;
  if (bp) return bp;
  pthread_once(&pool_once, pool_key_make);
  if (!pool_key_ok || !(bp = cqrs__calloc(1, sizeof *bp))) return NULL;
  if (pthread_setspecific(pool_key, bp)) {
    cqrs__free(bp);
    return NULL;
  }
  pthread_mutex_lock(&pools_lock);
  bp->next = pools;
  bp->prev = &pools;
  if (pools) pools->prev = &bp->next;
  pools = bp;
  pthread_mutex_unlock(&pools_lock);
  return tls_pool = bp;
}

static cqrs__event_t *block_alloc(size_t n) {
  if (n > EVENT_BLOCK) {
    cqrs__event_t *b = cqrs__malloc(n);
    if (b) b->size = 0;
    return b;
  }
  block_pool_t *bp = tls_pool;
  cqrs__event_t *b;
  if (bp && bp->head) {
    b = bp->head;
    POOL_UNPOISON(b, EVENT_BLOCK);
    bp->head = *(void **)b;
    bp->n--;
  } else if (!(b = cqrs__malloc(EVENT_BLOCK))) {
    return NULL;
  }
  b->size = EVENT_BLOCK;
  return b;
}

static void block_free(cqrs__event_t *b) {
  block_pool_t *bp;
  if (b->size != EVENT_BLOCK || !(bp = pool_mine()) || bp->n >= POOL_MAX) {
    cqrs__free(b);
    return;
  }
  *(void **)b = bp->head;
  bp->head = b;
  bp->n++;
  POOL_POISON(b, EVENT_BLOCK);
}

static cqrs__event_t *block_of(const cqrs_event_t *e) {
  return (cqrs__event_t *)((char *)(uintptr_t)e - offsetof(cqrs__event_t, pub));
}

static cqrs__envelope_t *env_block_of(const cqrs_envelope_t *env) {
  return (cqrs__envelope_t *)((char *)(uintptr_t)env - offsetof(cqrs__envelope_t, pub));
}

cqrs_event_t *cqrs__event_mut(const cqrs_event_t *e) { return &block_of(e)->pub; }

/* Whether `env` lives in the block of event `b` (see cqrs__event_new_hosting):
 * the event's own pointer to it is no reference. */
static bool hosts(const cqrs__event_t *b, const cqrs_envelope_t *env) { return env && env_block_of(env)->host == b; }

const cqrs_event_t *cqrs_event_ref(const cqrs_event_t *e) {
  if (e) atomic_fetch_add_explicit(&block_of(e)->refs, 1, memory_order_relaxed);
  return e;
}

void cqrs_event_unref(const cqrs_event_t *e) {
  if (!e) return;
  cqrs__event_t *b = block_of(e);
  if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) != 1) return;
  if (!hosts(b, b->pub.envelope)) cqrs_envelope_unref(b->pub.envelope);
  block_free(b);
}

void cqrs__event_set_envelope(cqrs_event_t *e, const cqrs_envelope_t *env) {
  cqrs__event_t *b = block_of(e);
  if (!hosts(b, e->envelope)) cqrs_envelope_unref(e->envelope);
  e->envelope = hosts(b, env) ? env : cqrs__envelope_ref(env);
}

cqrs_code_t cqrs_envelope_new(const char *aggregate_type, const char *aggregate_id, const char *causation_id,
                              const char *correlation_id, cqrs_envelope_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  cqrs_code_t rc;
  if ((rc = cqrs__check_str(aggregate_type, CQRS_NAME_MAX, "aggregate type", err)) ||
      (rc = cqrs__check_str(aggregate_id, CQRS_ID_MAX, "aggregate id", err)))
    return rc;
  if (!causation_id) causation_id = "";
  if (!correlation_id || !*correlation_id) correlation_id = causation_id;
  if (strnlen(causation_id, CQRS_ID_MAX) >= CQRS_ID_MAX || strnlen(correlation_id, CQRS_ID_MAX) >= CQRS_ID_MAX)
    return cqrs_error_set(err, CQRS_ETOO_LARGE, "causation or correlation id too long");
  if (!cqrs__utf8_valid(causation_id, strlen(causation_id)) || !cqrs__utf8_valid(correlation_id, strlen(correlation_id)))
    return cqrs_error_set(err, CQRS_EINVAL, "causation or correlation id is not valid UTF-8");
  return cqrs__envelope_make(aggregate_type, aggregate_id, causation_id, correlation_id, out, err);
}

/* The strings of an envelope and their sizes (with the NUL); the
 * correlation id takes no room when it is the causation id, kept once (most
 * commands start their own conversation), nor the aggregate type when it is
 * borrowed (n[0] == 0: an aggregate type's name, see cqrs__event_new_hosting). */
typedef struct env_strs {
  const char *s[4]; /* aggregate type, aggregate id, causation id, correlation id */
  size_t n[4];
  bool same;
} env_strs_t;

/* Fills `v` and returns the bytes the strings take (none for a borrowed type). */
static size_t env_strings(env_strs_t *v, const char *aggregate_type, bool borrow_type, const char *aggregate_id,
                          const char *causation_id, const char *correlation_id) {
  v->s[0] = aggregate_type;
  v->s[1] = aggregate_id;
  v->s[2] = causation_id;
  v->s[3] = correlation_id;
  v->same = causation_id == correlation_id || !strcmp(causation_id, correlation_id);
  size_t total = 0;
  for (int i = 0; i < 4; i++) {
    v->n[i] = (i == 3 && v->same) || (i == 0 && borrow_type) ? 0 : strlen(v->s[i]) + 1;
    total += v->n[i];
  }
  return total;
}

static void env_fill(cqrs__envelope_t *b, cqrs__event_t *host, const env_strs_t *v) {
  atomic_init(&b->refs, 1);
  b->host = host;
  char *p = b->strings;
  const char **dst[4] = {&b->pub.aggregate_type, &b->pub.aggregate_id, &b->pub.causation_id, &b->pub.correlation_id};
  for (int i = 0; i < 4; i++) {
    *dst[i] = v->n[i] ? memcpy(p, v->s[i], v->n[i]) : i == 0 ? v->s[0] : b->pub.causation_id;
    p += v->n[i];
  }
}

cqrs_code_t cqrs__envelope_make(const char *aggregate_type, const char *aggregate_id, const char *causation_id,
                                const char *correlation_id, cqrs_envelope_t **out, cqrs_error_t *err) {
  env_strs_t v;
  size_t n = env_strings(&v, aggregate_type, false, aggregate_id, causation_id, correlation_id);
  cqrs__envelope_t *b = cqrs__malloc(sizeof *b + n);
  if (!b) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate an envelope");
  env_fill(b, NULL, &v);
  *out = &b->pub;
  return CQRS_OK;
}

/* An envelope hosted by an event counts its references on the event. */
void cqrs_envelope_unref(const cqrs_envelope_t *env) {
  if (!env) return;
  cqrs__envelope_t *b = env_block_of(env);
  if (b->host) {
    cqrs_event_unref(&b->host->pub);
  } else if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1) {
    cqrs__free(b);
  }
}

const cqrs_envelope_t *cqrs__envelope_ref(const cqrs_envelope_t *env) {
  if (!env) return env;
  cqrs__envelope_t *b = env_block_of(env);
  atomic_fetch_add_explicit(b->host ? &b->host->refs : &b->refs, 1, memory_order_relaxed);
  return env;
}

/* `env` is a reference the event takes over, or the envelope it hosts. */
static void event_fill(cqrs__event_t *b, const cqrs_event_type_t *type, const cqrs_envelope_t *env, const char *id,
                       int64_t version, int64_t timestamp, const void *payload) {
  atomic_init(&b->refs, 1);
  b->forgotten = 0;
  memcpy(b->payload, payload, type->payload_size);
  cqrs_event_t *e = &b->pub;
  e->type = type;
  e->envelope = env;
  e->version = version;
  e->position = 0;
  e->timestamp = timestamp;
  e->schema_version = type->schema_version;
  if (id && *id) {
    memcpy(e->id, id, strlen(id) + 1);
  } else {
    cqrs_new_id(e->id);
  }
  e->payload = b->payload;
}

static const cqrs_field_t no_fields[] = {CQRS_FIELDS_END};

const cqrs_event_type_t cqrs_unknown_event_type = {
    .name = "cqrs.unknown_event",
    .schema_version = 1,
    .payload_size = sizeof(cqrs_unknown_event_t),
    .fields = no_fields,
};

/* `extra` bytes follow the payload in the same block. */
static cqrs_code_t event_new(const cqrs_event_type_t *type, const cqrs_envelope_t *env, const char *id,
                             int64_t version, int64_t timestamp, const void *payload, size_t extra,
                             cqrs_event_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  if (!type || !payload || !type->name) return cqrs_error_set(err, CQRS_EINVAL, "NULL event type or payload");
  /* INT64_MAX would leave no version for the next event: only corrupt data
   * gets there, and refusing it keeps every "version + 1" defined. */
  if (version < 1 || version == INT64_MAX)
    return cqrs_error_set(err, CQRS_EINVAL, "event version %lld is not between 1 and INT64_MAX - 1", (long long)version);
  if (id && strnlen(id, CQRS_EVENT_ID_LEN) >= CQRS_EVENT_ID_LEN)
    return cqrs_error_set(err, CQRS_ETOO_LARGE, "event id longer than %d bytes", CQRS_EVENT_ID_LEN - 1);
  if (id && !cqrs__utf8_valid(id, strlen(id)))
    return cqrs_error_set(err, CQRS_EINVAL, "event id is not valid UTF-8");
  cqrs__event_t *b = block_alloc(sizeof *b + type->payload_size + extra);
  if (!b) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate an event");
  event_fill(b, type, cqrs__envelope_ref(env), id, version, timestamp, payload);
  *out = &b->pub;
  return CQRS_OK;
}

/* An event block with room for its envelope after the payload. */
static cqrs__event_t *hosting_block(const cqrs_event_type_t *type, const env_strs_t *v, size_t n,
                                    cqrs__envelope_t **env) {
  size_t align = _Alignof(cqrs__envelope_t);
  size_t at = (sizeof(cqrs__event_t) + type->payload_size + align - 1) / align * align;
  cqrs__event_t *b = block_alloc(at + sizeof(cqrs__envelope_t) + n);
  if (!b) return NULL;
  *env = (cqrs__envelope_t *)(void *)((char *)b + at);
  env_fill(*env, b, v);
  return b;
}

cqrs_code_t cqrs__event_new_hosting(const cqrs_event_type_t *type, const char *aggregate_type,
                                    const char *aggregate_id, const char *causation_id, const char *correlation_id,
                                    int64_t version, int64_t timestamp, const void *payload, cqrs_event_t **out,
                                    cqrs_error_t *err) {
  env_strs_t v;
  size_t n = env_strings(&v, aggregate_type, true, aggregate_id, causation_id, correlation_id);
  cqrs__envelope_t *env;
  cqrs__event_t *b = hosting_block(type, &v, n, &env);
  if (!b) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate an event");
  event_fill(b, type, &env->pub, NULL, version, timestamp, payload);
  *out = &b->pub;
  return CQRS_OK;
}

cqrs_code_t cqrs__event_restore(const cqrs__event_parts_t *p, cqrs_event_t **inout, cqrs_error_t *err) {
  env_strs_t v = {.same = p->lens[3] == 0};
  memcpy(v.s, p->strs, sizeof v.s);
  memcpy(v.n, p->lens, sizeof v.n);
  size_t n = v.n[0] + v.n[1] + v.n[2] + v.n[3];
  size_t align = _Alignof(cqrs__envelope_t);
  size_t at = (sizeof(cqrs__event_t) + p->type->payload_size + align - 1) / align * align;
  size_t total = at + sizeof(cqrs__envelope_t) + n;
  cqrs__event_t *b = *inout ? block_of(*inout) : NULL;
  *inout = NULL;
  /* Rebuilt in place only when the caller's reference is the last one: then
   * no one else can reach it any more. */
  if (b && (b->size < total || atomic_load_explicit(&b->refs, memory_order_acquire) != 1)) {
    cqrs_event_unref(&b->pub);
    b = NULL;
  }
  cqrs__envelope_t *env = b ? (cqrs__envelope_t *)(void *)((char *)b + at) : NULL;
  if (!b) {
    if (!(b = cqrs__malloc(total))) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate an event");
    b->size = total <= UINT32_MAX ? (uint32_t)total : 0;
    env = (cqrs__envelope_t *)(void *)((char *)b + at);
    env_fill(env, b, &v);
  } else if (!p->same_envelope || b->pub.envelope != &env->pub) {
    env_fill(env, b, &v); /* the envelope in the block is another one, or elsewhere */
  }
  atomic_init(&b->refs, 1);
  b->forgotten = 0;
  memcpy(b->payload, p->payload, p->payload_len);
  memset(b->payload + p->payload_len, 0, p->type->payload_size - p->payload_len);
  cqrs_event_t *e = &b->pub;
  e->type = p->type;
  e->envelope = &env->pub;
  e->version = p->version;
  e->position = p->position;
  e->timestamp = p->timestamp;
  e->schema_version = p->schema_version;
  memcpy(e->id, p->id, p->id_len);
  e->id[p->id_len] = '\0';
  e->payload = b->payload;
  *inout = e;
  return CQRS_OK;
}

cqrs_code_t cqrs_event_new(const cqrs_event_type_t *type, const cqrs_envelope_t *env, const char *id,
                           int64_t version, int64_t timestamp, const void *payload, cqrs_event_t **out,
                           cqrs_error_t *err) {
  return event_new(type, env, id, version, timestamp, payload, 0, out, err);
}

cqrs_code_t cqrs_unknown_event_new(const char *type_name, uint32_t schema_version, const bson_t *data,
                                   const cqrs_envelope_t *env, const char *id, int64_t version, int64_t timestamp,
                                   cqrs_event_t **out, cqrs_error_t *err) {
  if (out) *out = NULL;
  if (!data) return cqrs_error_set(err, CQRS_EINVAL, "NULL payload document");
  cqrs_code_t rc = cqrs__check_str(type_name, CQRS_NAME_MAX, "event type name", err);
  if (rc) return rc;
  cqrs_unknown_event_t u = {.schema_version = schema_version, .data_len = data->len};
  memcpy(u.type, type_name, strlen(type_name) + 1);
  if ((rc = event_new(&cqrs_unknown_event_type, env, id, version, timestamp, &u, data->len, out, err))) return rc;
  /* The raw document lives right after the payload, in the event's block. */
  cqrs_unknown_event_t *p = (cqrs_unknown_event_t *)block_of(*out)->payload;
  uint8_t *raw = block_of(*out)->payload + sizeof *p;
  memcpy(raw, bson_get_data(data), data->len);
  p->data = raw;
  return CQRS_OK;
}

cqrs_code_t cqrs__event_vec_push_ref(cqrs__event_vec_t *v, const cqrs_event_t *e) {
  if (v->len == v->cap) {
    size_t cap = v->cap ? v->cap * 2 : 16;
    const cqrs_event_t **items = cqrs__realloc((void *)v->items, cap * sizeof *items);
    if (!items) return CQRS_ENOMEM;
    v->items = items;
    v->cap = cap;
  }
  v->items[v->len++] = cqrs_event_ref(e);
  return CQRS_OK;
}

void cqrs__event_vec_clear(cqrs__event_vec_t *v) {
  for (size_t i = 0; i < v->len; i++) cqrs_event_unref(v->items[i]);
  v->len = 0;
}

void cqrs__event_vec_free(cqrs__event_vec_t *v) {
  cqrs__event_vec_clear(v);
  cqrs__free((void *)v->items);
  v->items = NULL;
  v->cap = 0;
}
