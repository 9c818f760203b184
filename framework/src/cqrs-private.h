/* libcqrs internals shared between modules. Not installed. */
#ifndef CQRS_PRIVATE_H
#define CQRS_PRIVATE_H

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cqrs/cqrs.h"

void *cqrs__malloc(size_t size);
void *cqrs__calloc(size_t n, size_t size);
void *cqrs__realloc(void *ptr, size_t size);
void cqrs__free(void *ptr);
char *cqrs__strdup(const char *s);

/* Whether the n bytes at s are valid UTF-8 without NUL: bson_utf8_validate,
 * after a fast pass for the usual all-ASCII ids and names. */
bool cqrs__utf8_valid(const char *s, size_t n);

/* Fails with CQRS_EINVAL for NULL, empty or invalid UTF-8, CQRS_ETOO_LARGE past cap - 1. */
cqrs_code_t cqrs__check_str(const char *s, size_t cap, const char *what, cqrs_error_t *err);

/* Copies `src` into `dst` (ok may be NULL: success). */
void cqrs__error_copy(cqrs_error_t *dst, const cqrs_error_t *src);

typedef struct cqrs__event {
  cqrs_event_t pub;
  atomic_uint refs;
  _Alignas(max_align_t) unsigned char payload[];
} cqrs__event_t;

typedef struct cqrs__envelope {
  cqrs_envelope_t pub;
  atomic_uint refs;
  char strings[];
} cqrs__envelope_t;

struct cqrs_command {
  const cqrs_command_type_t *type;
  char id[CQRS_ID_MAX];
  char correlation_id[CQRS_ID_MAX];
  _Alignas(max_align_t) unsigned char payload[];
};

struct cqrs_aggregate {
  const cqrs_aggregate_type_t *type;
  char id[CQRS_ID_MAX];
  int64_t version;
  const cqrs_envelope_t *envelope; /* for raised events; NULL until needed */
  cqrs_event_t **pending;
  size_t pending_count, pending_cap;
  void *state;
};

/* Envelope used by events an aggregate raises from now on (e.g. the command
 * being handled); NULL ids mean "set at commit". Takes a reference. */
void cqrs__aggregate_set_envelope(cqrs_aggregate_t *agg, const cqrs_envelope_t *env);
/* Marks the pending events committed: version moves, list empties. */
void cqrs__aggregate_committed(cqrs_aggregate_t *agg);
/* Drops the pending events (their effect on the state stays: discard the
 * aggregate afterwards). */
void cqrs__aggregate_clear_pending(cqrs_aggregate_t *agg);

cqrs_event_t *cqrs__event_mut(const cqrs_event_t *e);
const cqrs_envelope_t *cqrs__envelope_ref(const cqrs_envelope_t *env);

struct cqrs_store {
  const cqrs_store_ops_t *ops;
  void *impl;
};

/* A growable array of event references. */
typedef struct cqrs__event_vec {
  const cqrs_event_t **items;
  size_t len, cap;
} cqrs__event_vec_t;
cqrs_code_t cqrs__event_vec_push_ref(cqrs__event_vec_t *v, const cqrs_event_t *e);
void cqrs__event_vec_clear(cqrs__event_vec_t *v); /* unrefs all, keeps capacity */
void cqrs__event_vec_free(cqrs__event_vec_t *v);

bool cqrs__checkpoints_blocking(const cqrs_checkpoints_t *cp);

#define CQRS__UNUSED(x) (void)(x)

#endif
