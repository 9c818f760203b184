/* libcqrs: repositories: load an aggregate from its newest snapshot and the
 * events after it; save its pending events with the expected version. */
#ifndef CQRS_REPOSITORY_H
#define CQRS_REPOSITORY_H

#include "cqrs/store.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Who caused the events a save commits. */
typedef struct cqrs_cause {
  const char *command_id;     /* also the idempotency key of the commit */
  const char *correlation_id; /* NULL: command_id */
} cqrs_cause_t;

typedef struct cqrs_save_result {
  size_t committed;     /* events appended (0 for a duplicate command id) */
  bool duplicate;       /* the command id had committed before */
  int64_t last_position;
} cqrs_save_result_t;

/* Loads aggregate `id` of `type` from `store`: the newest snapshot of the
 * current schema version when the type takes snapshots, then every later
 * event. A stream that does not exist yields a new aggregate at version 0.
 * Blocks when the store does. Free *out with cqrs_aggregate_destroy. */
CQRS_EXPORT cqrs_code_t cqrs_repository_load(cqrs_store_t *store, const cqrs_aggregate_type_t *type,
                                             const char *id, cqrs_aggregate_t **out, cqrs_error_t *err);

/* Commits the pending events of `agg` expecting its current version. On
 * success they become committed (the aggregate's version moves on) and a
 * snapshot is written when the type's policy says so (a failed snapshot is
 * not an error of the save). On CQRS_ECONFLICT nothing is written and the
 * aggregate is stale: load it again. `res` may be NULL. */
CQRS_EXPORT cqrs_code_t cqrs_repository_save(cqrs_store_t *store, cqrs_aggregate_t *agg, const cqrs_cause_t *cause,
                                             cqrs_save_result_t *res, cqrs_error_t *err);

#ifdef __cplusplus
}
#endif
#endif
