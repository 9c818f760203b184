/* The aggregate cache (see cache-private.h). Sharded by a hash of the type
 * name and the id; each shard is a chained hash table with a fixed number
 * of buckets and an LRU list, under its own mutex, so handlers on pool
 * threads contend only when they touch the same shard. A small cache has one
 * shard (exact LRU); a large one 16, each holding a 16th of the capacity. */
#include <sched.h>

#include "store/cache-private.h"

#define SHARDS 16 /* a power of two */
#define SHARDED_FROM 256 /* capacity from which the cache is split in SHARDS */

typedef struct entry {
  struct entry *chain;       /* next in the bucket */
  struct entry *prev, *next; /* LRU: head is the most recent */
  const cqrs_aggregate_type_t *type;
  uint32_t hash;
  int64_t version;
  char id[CQRS_ID_MAX];
  _Alignas(max_align_t) unsigned char state[];
} entry_t;

typedef struct shard {
  _Atomic bool locked; /* see shard_lock */
  entry_t **buckets;
  uint32_t mask;
  entry_t *head, *tail;
  size_t count, cap;
  uint32_t gen; /* moves on each removal: an entry an aggregate remembers from an older one may be gone */
} shard_t;

struct cqrs__cache {
  size_t nshards;
  shard_t shards[SHARDS];
};

/* Of the id alone: aggregates of two types rarely share one, and find()
 * compares the type anyway. */
uint32_t cqrs__cache_hash(const char *id, size_t n) {
  uint32_t h = (uint32_t)cqrs__hash_bytes(id, n, 0);
  return h ? h : 1;
}

static uint32_t hash_of(const char *type, const char *id) {
  CQRS__UNUSED(type);
  return cqrs__cache_hash(id, strlen(id));
}

/* Computed once per aggregate: a load's look-up and its commit's update. */
static uint32_t agg_hash(cqrs_aggregate_t *agg) {
  if (!agg->key_hash) agg->key_hash = hash_of(agg->type->name, agg->id);
  return agg->key_hash;
}

cqrs__cache_t *cqrs__cache_new(size_t capacity, bool *nomem) {
  *nomem = false;
  if (capacity == 0) return NULL;
  cqrs__cache_t *c = cqrs__calloc(1, sizeof *c);
  size_t nshards = capacity < SHARDED_FROM ? 1 : SHARDS;
  size_t per = (capacity + nshards - 1) / nshards, nb = 8;
  while (nb < per && nb < ((size_t)1 << 30)) nb <<= 1;
  size_t made = 0;
  if (c) c->nshards = nshards;
  for (; c && made < nshards; made++) {
    shard_t *s = &c->shards[made];
    s->buckets = cqrs__calloc(nb, sizeof *s->buckets);
    if (!s->buckets) break;
    atomic_init(&s->locked, false);
    s->mask = (uint32_t)(nb - 1);
    s->cap = per;
  }
  if (c && made == nshards) return c;
  while (c && made) {
    shard_t *s = &c->shards[--made];
    cqrs__free(s->buckets);
  }
  cqrs__free(c);
  *nomem = true;
  return NULL;
}

void cqrs__cache_destroy(cqrs__cache_t *c) {
  if (!c) return;
  for (size_t i = 0; i < c->nshards; i++) {
    shard_t *s = &c->shards[i];
    for (entry_t *e = s->head, *n; e; e = n) {
      n = e->next;
      cqrs__free(e);
    }
    cqrs__free(s->buckets);
  }
  cqrs__free(c);
}

bool cqrs__cache_accepts(const cqrs__cache_t *c, const cqrs_aggregate_type_t *type) {
  return c && type && !type->state_cleanup;
}

/* The entry for (type name, id) and the link that points at it. */
static entry_t **find(shard_t *s, uint32_t h, const char *type, const char *id) {
  entry_t **link = &s->buckets[h & s->mask];
  for (; *link; link = &(*link)->chain) {
    entry_t *e = *link;
    if (e->hash == h && !strcmp(e->id, id) && (e->type->name == type || !strcmp(e->type->name, type))) break;
  }
  return link;
}

static void lru_unlink(shard_t *s, entry_t *e) {
  if (e->prev) {
    e->prev->next = e->next;
  } else {
    s->head = e->next;
  }
  if (e->next) {
    e->next->prev = e->prev;
  } else {
    s->tail = e->prev;
  }
}

static void lru_push_front(shard_t *s, entry_t *e) {
  e->prev = NULL;
  e->next = s->head;
  if (s->head) {
    s->head->prev = e;
  } else {
    s->tail = e;
  }
  s->head = e;
}

static void remove_entry(shard_t *s, entry_t **link) {
  entry_t *e = *link;
  *link = e->chain;
  lru_unlink(s, e);
  s->count--;
  s->gen++;
  cqrs__free(e);
}

/* A shard's lock is held for a look-up and a copy of one state, never
 * across a call out (a mutex costs a command more than what it guards): a
 * test-and-set that spins briefly, then yields the core to the holder. */
static void shard_lock(shard_t *s) {
  for (unsigned spins = 0; atomic_exchange_explicit(&s->locked, true, memory_order_acquire); spins++) {
    while (atomic_load_explicit(&s->locked, memory_order_relaxed)) {
      if (spins++ >= 64) sched_yield();
    }
  }
}

static void shard_unlock(shard_t *s) { atomic_store_explicit(&s->locked, false, memory_order_release); }

static shard_t *shard_of(cqrs__cache_t *c, uint32_t h) { return &c->shards[(h >> 24) & (c->nshards - 1)]; }

/* The aggregate keeps where its entry is, so that its commit's put need not
 * look it up again (what a load then a commit does). */
static void remember(cqrs_aggregate_t *agg, const shard_t *s, entry_t *e) {
  agg->cache_shard = s;
  agg->cache_gen = s->gen;
  agg->cache_entry = e;
}

static entry_t *remembered(const cqrs_aggregate_t *agg, const shard_t *s) {
  entry_t *e = agg->cache_entry;
  return e && agg->cache_shard == s && agg->cache_gen == s->gen && e->type == agg->type ? e : NULL;
}

bool cqrs__cache_get(cqrs__cache_t *c, cqrs_aggregate_t *agg) {
  if (!cqrs__cache_accepts(c, agg->type)) return false;
  uint32_t h = agg_hash(agg);
  shard_t *s = shard_of(c, h);
  shard_lock(s);
  entry_t *e = *find(s, h, agg->type->name, agg->id);
  if (e) {
    memcpy(agg->state, e->state, agg->type->state_size);
    agg->version = e->version;
    remember(agg, s, e);
    if (s->head != e) {
      lru_unlink(s, e);
      lru_push_front(s, e);
    }
  }
  shard_unlock(s);
  return e != NULL;
}

void cqrs__cache_put(cqrs__cache_t *c, cqrs_aggregate_t *agg) {
  if (!cqrs__cache_accepts(c, agg->type) || agg->pending_count || agg->version < 1) return;
  const cqrs_aggregate_type_t *type = agg->type;
  uint32_t h = agg_hash(agg);
  shard_t *s = shard_of(c, h);
  shard_lock(s);
  entry_t *e = remembered(agg, s);
  entry_t **link = e ? NULL : find(s, h, type->name, agg->id);
  if (!e) e = *link;
  if (e && e->type != type) {
    /* Two descriptors under one name: trust neither. */
    remove_entry(s, link);
    e = NULL;
    link = find(s, h, type->name, agg->id);
  }
  if (!e) {
    if (s->count >= s->cap) {
      entry_t *old = s->tail;
      remove_entry(s, find(s, old->hash, old->type->name, old->id));
      link = find(s, h, type->name, agg->id);
    }
    e = cqrs__malloc(sizeof *e + type->state_size);
    if (e) {
      e->chain = NULL;
      e->type = type;
      e->hash = h;
      e->version = 0;
      memcpy(e->id, agg->id, strlen(agg->id) + 1);
      *link = e;
      lru_push_front(s, e);
      s->count++;
    }
  } else if (s->head != e) {
    lru_unlink(s, e);
    lru_push_front(s, e);
  }
  if (e && agg->version > e->version) {
    memcpy(e->state, agg->state, type->state_size);
    e->version = agg->version;
  }
  if (e) remember(agg, s, e);
  shard_unlock(s);
}

static void drop_if(cqrs__cache_t *c, const char *type, const char *id, int64_t newer_than) {
  uint32_t h = hash_of(type, id);
  shard_t *s = shard_of(c, h);
  shard_lock(s);
  entry_t **link = find(s, h, type, id);
  if (*link && (*link)->version < newer_than) {
    remove_entry(s, link);
  }
  shard_unlock(s);
}

void cqrs__cache_drop(cqrs__cache_t *c, const char *type, const char *id) {
  if (c && type && id) drop_if(c, type, id, INT64_MAX);
}

void cqrs__cache_seen(cqrs__cache_t *c, const cqrs_event_t *e) {
  if (c && e && e->envelope) drop_if(c, e->envelope->aggregate_type, e->envelope->aggregate_id, e->version);
}
