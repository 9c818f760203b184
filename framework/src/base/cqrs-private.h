/* libcqrs internals shared between modules. Not installed. */
#ifndef CQRS_PRIVATE_H
#define CQRS_PRIVATE_H

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cqrs/backend.h"

void *cqrs__malloc(size_t size);
void *cqrs__calloc(size_t n, size_t size);
void *cqrs__realloc(void *ptr, size_t size);
void cqrs__free(void *ptr);
char *cqrs__strdup(const char *s);

/* Whether the n bytes at s are valid UTF-8 without NUL: bson_utf8_validate,
 * after a fast pass for the usual all-ASCII ids and names. */
bool cqrs__utf8_valid(const char *s, size_t n);

/* A hash of the NUL-terminated `s` for hash tables, chained through `seed`
 * (hash a type name, then an id with the first result as seed): eight bytes
 * at a time, mixed so that the low bits are usable as a bucket index. */
uint64_t cqrs__hash_str(const char *s, uint64_t seed);
uint64_t cqrs__hash_bytes(const void *p, size_t n, uint64_t seed);
/* A 128-bit hash of the strings a and b, for ids (cqrs_id_derive): not for
 * tables, and no byte of either can stand for the separator between them. */
void cqrs__hash128(const char *a, const char *b, uint64_t h[2]);

/* Fails with CQRS_EINVAL for NULL, empty or invalid UTF-8, CQRS_ETOO_LARGE past cap - 1. */
cqrs_code_t cqrs__check_str(const char *s, size_t cap, const char *what, cqrs_error_t *err);

/* Copies `src` into `dst` (ok may be NULL: success). */
void cqrs__error_copy(cqrs_error_t *dst, const cqrs_error_t *src);

/* The clock (cqrs/clock.h). A manual clock keeps its two times and the
 * alarms set on it: an alarm rings once the clock is advanced to its due
 * time (runtime/timer.c hangs the framework's timers on them). */
typedef struct cqrs__alarm cqrs__alarm_t;
struct cqrs__alarm {
  cqrs__alarm_t *next; /* the clock's list, by due time; clock's lock */
  uint64_t due;        /* monotonic ms */
  bool set;
  /* Due: runs on the thread that advanced the clock, outside its lock. */
  void (*ring)(cqrs__alarm_t *a);
  /* Whether what waits keeps its loop running (cqrs_clock_next_due). */
  bool (*holds)(const cqrs__alarm_t *a);
};

struct cqrs_clock {
  bool manual; /* false: the real clock, and nothing below is used */
  _Atomic int64_t wall;
  _Atomic uint64_t mono;
  uv_mutex_t lock;
  cqrs__alarm_t *alarms;
};

/* Cheap reads: the real clock costs a test and a branch over its system
 * call. `c` may be NULL (the real clock). */
static inline int64_t cqrs__clock_wall(const cqrs_clock_t *c) {
  return c && c->manual ? atomic_load_explicit(&c->wall, memory_order_relaxed) : cqrs_now_ms();
}
static inline uint64_t cqrs__clock_mono(const cqrs_clock_t *c) {
  return c && c->manual ? atomic_load_explicit(&c->mono, memory_order_relaxed) : uv_hrtime() / 1000000u;
}
/* Sets `a` (not set) on manual clock `c` to ring at monotonic `due`, which
 * is later than the clock's time; cancels it. */
void cqrs__alarm_set(cqrs_clock_t *c, cqrs__alarm_t *a, uint64_t due);
void cqrs__alarm_cancel(cqrs_clock_t *c, cqrs__alarm_t *a);

typedef struct cqrs__event {
  cqrs_event_t pub;
  atomic_uint refs;
  uint32_t size; /* bytes of the block, for cqrs__event_restore to rebuild in; 0: not to be rebuilt */
  uint32_t forgotten; /* personal fields read as placeholders (model/personal.c): bits of the type's table */
  _Alignas(max_align_t) unsigned char payload[];
} cqrs__event_t;

typedef struct cqrs__envelope {
  cqrs_envelope_t pub;
  atomic_uint refs;
  struct cqrs__event *host; /* the event whose block holds it, which counts its references; NULL: its own */
  char strings[];
} cqrs__envelope_t;

/* A command's own interceptor, run after its handler on the handler's
 * thread; it may change the outcome (a process manager's step records a
 * refusal under the step's id: process/). */
typedef void (*cqrs__settle_fn)(cqrs_store_t *store, const cqrs_clock_t *clock, const cqrs_command_t *cmd,
                                cqrs_code_t *rc, cqrs_result_t *res, cqrs_error_t *err);

struct cqrs_command {
  const cqrs_command_type_t *type;
  char id[CQRS_ID_MAX];
  char correlation_id[CQRS_ID_MAX];
  bool internal;          /* sent by the framework (a process step): may use reserved ids */
  cqrs__settle_fn settle; /* NULL: none; a process step's: process/steps.c */
  _Alignas(max_align_t) unsigned char payload[];
};

struct cqrs_aggregate {
  const cqrs_aggregate_type_t *type;
  char id[CQRS_ID_MAX];
  int64_t version;
  const cqrs_envelope_t *envelope; /* for raised events; NULL until needed */
  cqrs_event_t **pending; /* pending_inline until a command raises more */
  size_t pending_count, pending_cap;
  void *state; /* state_inline */
  size_t state_cap; /* room in state_inline */
  const char *cause_id, *correlation_id; /* borrowed, for the envelope of raised events; NULL: set at commit */
  const cqrs_clock_t *clock; /* stamps raised events (borrowed); NULL: the real clock */
  const char *env_cause, *env_corr; /* the (borrowed) strings `envelope` was copied from; NULL: unknown */
  uint32_t key_hash; /* the aggregate cache's hash of type name and id; 0: not computed yet */
  uint32_t cache_gen; /* cache.c: `cache_entry` is this aggregate's in `cache_shard` while it has this generation */
  const void *cache_shard;
  void *cache_entry; /* NULL: none known */
  struct cqrs_aggregate *next_free;
  cqrs_event_t *pending_inline[2];
  _Alignas(max_align_t) unsigned char state_inline[];
};

/* Aggregates kept for reuse by one thread (the dispatcher's loop thread), so
 * that a command allocates none. */
typedef struct cqrs__agg_pool {
  cqrs_aggregate_t *head;
  size_t n;
} cqrs__agg_pool_t;
/* cqrs_aggregate_new, taking a block from `pool` (may be NULL) when it can;
 * id_checked: the caller has checked `id` with cqrs__check_str. */
cqrs_code_t cqrs__aggregate_new_pooled(cqrs__agg_pool_t *pool, const cqrs_aggregate_type_t *type, const char *id,
                                       bool id_checked, cqrs_aggregate_t **out, cqrs_error_t *err);
/* cqrs_aggregate_destroy, keeping the block in `pool` (may be NULL). */
void cqrs__aggregate_release(cqrs__agg_pool_t *pool, cqrs_aggregate_t *agg);
void cqrs__agg_pool_free(cqrs__agg_pool_t *pool);

/* Envelope used by events an aggregate raises from now on (e.g. the command
 * being handled); NULL ids mean "set at commit". Takes a reference. */
void cqrs__aggregate_set_envelope(cqrs_aggregate_t *agg, const cqrs_envelope_t *env);
/* Names the command whose events the aggregate raises from now on, and the
 * clock that stamps them (the dispatcher's); all borrowed: they must
 * outlive the aggregate or the next call. */
void cqrs__aggregate_set_cause(cqrs_aggregate_t *agg, const char *cause_id, const char *correlation_id,
                               const cqrs_clock_t *clock);
/* Marks the pending events committed: version moves, list empties. */
void cqrs__aggregate_committed(cqrs_aggregate_t *agg);
/* Drops the pending events (their effect on the state stays: discard the
 * aggregate afterwards). */
void cqrs__aggregate_clear_pending(cqrs_aggregate_t *agg);

cqrs_event_t *cqrs__event_mut(const cqrs_event_t *e);
/* An event that carries its envelope in its own block: one allocation where
 * there would be two. References to that envelope are references to the
 * event. Strings known valid: non-NULL, within their caps. `aggregate_type`
 * is borrowed, not copied: an aggregate type descriptor's name, which like
 * the event's own type descriptor outlives the event. */
cqrs_code_t cqrs__event_new_hosting(const cqrs_event_type_t *type, const char *aggregate_type,
                                    const char *aggregate_id, const char *causation_id, const char *correlation_id,
                                    int64_t version, int64_t timestamp, const void *payload, cqrs_event_t **out,
                                    cqrs_error_t *err);
/* What a stored event is rebuilt from (the memory store's compact form):
 * `payload_len` bytes of payload, the rest of the type's payload zero. */
typedef struct cqrs__event_parts {
  const cqrs_event_type_t *type;
  const char *strs[4]; /* aggregate type, aggregate id, causation id, correlation id */
  size_t lens[4];      /* their sizes with the NUL; lens[3] == 0: the correlation id is the causation id */
  bool same_envelope;  /* the strings are those of the event in *inout (below) */
  const char *id;      /* id_len bytes, no NUL */
  size_t id_len;
  int64_t version, position, timestamp;
  uint32_t schema_version;
  const void *payload;
  size_t payload_len;
} cqrs__event_parts_t;
/* An event (one reference, the caller's) hosting its envelope, from `p`.
 * *inout: NULL, or the event a previous call made, whose reference the call
 * takes over: when nobody else holds it any more, the new event is built in
 * its block (a read of many events allocates once). On failure *inout is
 * NULL and the old reference released. */
cqrs_code_t cqrs__event_restore(const cqrs__event_parts_t *p, cqrs_event_t **inout, cqrs_error_t *err);

/* Gives a (pending) event another envelope, taking a reference on it. */
void cqrs__event_set_envelope(cqrs_event_t *e, const cqrs_envelope_t *env);
/* cqrs_envelope_new for strings known valid: non-NULL, within their caps. */
cqrs_code_t cqrs__envelope_make(const char *aggregate_type, const char *aggregate_id, const char *causation_id,
                                const char *correlation_id, cqrs_envelope_t **out, cqrs_error_t *err);
const cqrs_envelope_t *cqrs__envelope_ref(const cqrs_envelope_t *env);

/* Calls that reached the implementation, by operation, for metrics. */
typedef enum cqrs__store_op {
  CQRS__STORE_APPEND,
  CQRS__STORE_READ_STREAM,
  CQRS__STORE_READ_ALL,
  CQRS__STORE_HEAD,
  CQRS__STORE_SNAPSHOT_LOAD,
  CQRS__STORE_SNAPSHOT_SAVE,
  CQRS__STORE_HAS_COMMAND,
  CQRS__STORE_APPEND_MANY,
  CQRS__STORE_OPS
} cqrs__store_op_t;

struct cqrs_store {
  const cqrs_store_ops_t *ops;
  void *impl;
  _Atomic uint64_t calls[CQRS__STORE_OPS];
  _Atomic uint64_t errors[CQRS__STORE_OPS][2]; /* [op][0 transient (CQRS_ESTORE), 1 permanent] */
  _Atomic int64_t head_seen;                   /* highest position an append or a head call returned */
  cqrs_keys_t *keys;                           /* personal data (store/sealed.c); NULL: none */
  const cqrs_registry_t *reg;                  /* decodes the events it opens */
};

/* A growable array of event references. */
typedef struct cqrs__event_vec {
  const cqrs_event_t **items;
  size_t len, cap;
} cqrs__event_vec_t;
cqrs_code_t cqrs__event_vec_push_ref(cqrs__event_vec_t *v, const cqrs_event_t *e);
void cqrs__event_vec_clear(cqrs__event_vec_t *v); /* unrefs all, keeps capacity */
void cqrs__event_vec_free(cqrs__event_vec_t *v);

/* cqrs_store_append for a request whose strings are known valid (an
 * aggregate's type name and id, a command's id): no second check. */
cqrs_code_t cqrs__store_append_valid(cqrs_store_t *s, const cqrs_append_t *req, cqrs_append_result_t *res,
                                     cqrs_error_t *err);
/* cqrs_store_append_many, likewise. */
cqrs_code_t cqrs__store_append_many_valid(cqrs_store_t *s, const cqrs_append_t *reqs, size_t n,
                                          cqrs_append_result_t *res, size_t *done, cqrs_error_t *err);

bool cqrs__checkpoints_blocking(const cqrs_checkpoints_t *cp);
bool cqrs__checkpoints_fenced(const cqrs_checkpoints_t *cp);
bool cqrs__checkpoints_controlled(const cqrs_checkpoints_t *cp); /* keeps control records */
bool cqrs__leases_blocking(const cqrs_leases_t *l);

/* Objects a module builds for types it registers, freed with the registry. */
cqrs_code_t cqrs__registry_keep(cqrs_registry_t *reg, const char *key, void *obj, void (*free_fn)(void *),
                                cqrs_error_t *err);
void *cqrs__registry_kept(const cqrs_registry_t *reg, const char *key);
/* Removes the names registered for descriptor `type` (a registration that
 * failed half-way takes back what it added). */
void cqrs__registry_forget(cqrs_registry_t *reg, const void *type);

#define CQRS__UNUSED(x) (void)(x)

/* Whether the reserved room of a descriptor or ops table is all zero (what
 * a later version may give a meaning to). */
static inline bool cqrs__reserved_zero(void *const *reserved, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (reserved[i]) return false;
  }
  return true;
}
#define CQRS__RESERVED_ZERO(desc) \
  cqrs__reserved_zero((desc)->reserved, sizeof(desc)->reserved / sizeof *(desc)->reserved)

/* Command ids starting with this character belong to process managers:
 * the dispatcher refuses them from anyone else, so no outside command can
 * take the id of a step before the step runs. */
#define CQRS__RESERVED_ID_PREFIX '~'
/* Command types whose names start with this are the framework's own: the
 * registry refuses them from applications. */
#define CQRS__RESERVED_TYPE_PREFIX "cqrs."

#endif
