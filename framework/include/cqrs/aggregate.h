/* libcqrs: aggregate types and aggregates. */
#ifndef CQRS_AGGREGATE_H
#define CQRS_AGGREGATE_H

#include "cqrs/event.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Applies one event to the state. Must not fail: an event is a fact. */
typedef void (*cqrs_apply_cb)(void *state, const cqrs_event_t *e);
/* The 0.1 name, removed in 0.3. */
typedef cqrs_apply_cb cqrs_apply_fn CQRS_DEPRECATED("use cqrs_apply_cb");

typedef struct cqrs_apply_entry {
  const cqrs_event_type_t *type;
  cqrs_apply_cb apply;
} cqrs_apply_entry_t;

/* An aggregate type, declared once as a static const. The state is a plain
 * struct of `state_size` bytes, zeroed, then `state_init` (optional).
 * `apply` ends with {NULL, NULL}; events of types not listed change nothing.
 * Snapshots are taken every `snapshot_every` events (0: never) through
 * `snapshot_fields`; a snapshot whose `snapshot_version` differs from the
 * current one is ignored on load. */
typedef struct cqrs_aggregate_type {
  const char *name; /* e.g. "account" */
  size_t state_size;
  void (*state_init)(void *state);    /* optional */
  void (*state_cleanup)(void *state); /* optional */
  const cqrs_apply_entry_t *apply;
  const cqrs_field_t *snapshot_fields; /* optional */
  uint32_t snapshot_version;
  uint32_t snapshot_every;
  /* Room for what later versions add without changing the size (docs/versioning.md): zero. */
  void *reserved[4];
} cqrs_aggregate_type_t;

typedef struct cqrs_aggregate cqrs_aggregate_t;

/* Creates an empty aggregate (version 0, no pending events). Repositories
 * and the test helpers use it; handlers get aggregates from their context. */
CQRS_EXPORT cqrs_code_t cqrs_aggregate_new(const cqrs_aggregate_type_t *type, const char *id,
                                           cqrs_aggregate_t **out, cqrs_error_t *err);
CQRS_EXPORT void cqrs_aggregate_destroy(cqrs_aggregate_t *agg);

/* Raises an event: copies `payload`, applies it to the state at once and
 * appends it to the pending list that the framework commits. Validates the
 * payload against the event type's field table (CQRS_EINVAL on failure). */
CQRS_EXPORT cqrs_code_t cqrs_aggregate_raise(cqrs_aggregate_t *agg, const cqrs_event_type_t *type,
                                             const void *payload, cqrs_error_t *err);

/* Applies a committed event (rehydration). The version must follow. */
CQRS_EXPORT cqrs_code_t cqrs_aggregate_apply(cqrs_aggregate_t *agg, const cqrs_event_t *e, cqrs_error_t *err);

CQRS_EXPORT const cqrs_aggregate_type_t *cqrs_aggregate_type(const cqrs_aggregate_t *agg);
CQRS_EXPORT const char *cqrs_aggregate_id(const cqrs_aggregate_t *agg);
/* The state struct; the domain reads and (only through apply) writes it. */
CQRS_EXPORT void *cqrs_aggregate_state(cqrs_aggregate_t *agg);
CQRS_EXPORT const void *cqrs_aggregate_state_const(const cqrs_aggregate_t *agg);
/* Version of the last committed event applied (0: new aggregate). */
CQRS_EXPORT int64_t cqrs_aggregate_version(const cqrs_aggregate_t *agg);
/* Pending (raised, not yet committed) events, borrowed. */
CQRS_EXPORT size_t cqrs_aggregate_pending_count(const cqrs_aggregate_t *agg);
CQRS_EXPORT const cqrs_event_t *cqrs_aggregate_pending(const cqrs_aggregate_t *agg, size_t i);

#ifdef __cplusplus
}
#endif
#endif
