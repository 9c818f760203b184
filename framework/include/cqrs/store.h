/* libcqrs: event stores as applications use them, and the in-memory store.
 * Writing a store of your own: cqrs/backend.h. */
#ifndef CQRS_STORE_H
#define CQRS_STORE_H

#include "cqrs/registry.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One commit: the pending events of one aggregate, all or nothing. */
typedef struct cqrs_append {
  const char *aggregate_type;
  const char *aggregate_id;
  int64_t expected_version; /* the stream's version before the commit */
  const char *command_id;   /* a command id already committed, on any stream, appends nothing */
  cqrs_event_t *const *events;
  size_t count;
} cqrs_append_t;

typedef struct cqrs_append_result {
  int64_t first_position; /* positions given to the events (0 when duplicate) */
  int64_t last_position;
  bool duplicate; /* the command id had committed before: nothing appended */
} cqrs_append_result_t;

typedef struct cqrs_snapshot {
  const char *aggregate_type;
  const char *aggregate_id;
  int64_t version;
  uint32_t schema_version;
  bson_t state; /* owned by whoever initialised it */
} cqrs_snapshot_t;

typedef struct cqrs_store cqrs_store_t;

/* Destroys the store. Nothing may use it afterwards. NULL does nothing. */
CQRS_EXPORT void cqrs_store_destroy(cqrs_store_t *store);
/* True when the store's calls block (network I/O): call them from a thread
 * of your own or the libuv pool, not from a loop thread. */
CQRS_EXPORT bool cqrs_store_blocking(const cqrs_store_t *store);

/* Checked entry points: validate arguments (NULL, empty or oversized ids,
 * negative versions, zero events) before calling the implementation. */
CQRS_EXPORT cqrs_code_t cqrs_store_append(cqrs_store_t *s, const cqrs_append_t *req, cqrs_append_result_t *res,
                                          cqrs_error_t *err);
/* Appends `n` commits of one stream in order (each expecting the version
 * the one before leaves), each its own commit as cqrs_store_append makes
 * it, in one call of the store (backend.h, append_many; a store without
 * it appends each in turn). Stops at the first that does not commit:
 * *done says how many did (res[0..*done) filled), and the return is what
 * that one came to: CQRS_OK with res[*done].duplicate, CQRS_ECONFLICT or
 * an error; CQRS_OK with *done == n when all committed. Commits of several
 * streams, or versions that do not follow: CQRS_EINVAL, nothing appended. */
CQRS_EXPORT cqrs_code_t cqrs_store_append_many(cqrs_store_t *s, const cqrs_append_t *reqs, size_t n,
                                               cqrs_append_result_t *res, size_t *done, cqrs_error_t *err);
CQRS_EXPORT cqrs_code_t cqrs_store_read_stream(cqrs_store_t *s, const char *aggregate_type,
                                               const char *aggregate_id, int64_t from_version,
                                               cqrs_event_visit_cb cb, void *data, cqrs_error_t *err);
CQRS_EXPORT cqrs_code_t cqrs_store_read_all(cqrs_store_t *s, int64_t from_position, size_t limit,
                                            cqrs_event_visit_cb cb, void *data, cqrs_error_t *err);
CQRS_EXPORT cqrs_code_t cqrs_store_head(cqrs_store_t *s, int64_t *position, cqrs_error_t *err);
/* Whether a commit of command id `command_id` is stored (*found). A store
 * that cannot tell (no has_command op) is CQRS_ESTATE. */
CQRS_EXPORT cqrs_code_t cqrs_store_has_command(cqrs_store_t *s, const char *command_id, bool *found,
                                               cqrs_error_t *err);
CQRS_EXPORT cqrs_code_t cqrs_store_snapshot_load(cqrs_store_t *s, const char *aggregate_type,
                                                 const char *aggregate_id, cqrs_snapshot_t *out, bool *found,
                                                 cqrs_error_t *err);
CQRS_EXPORT cqrs_code_t cqrs_store_snapshot_save(cqrs_store_t *s, const cqrs_snapshot_t *snap, cqrs_error_t *err);

/* The in-memory store, the embedded default: non-blocking, thread-safe,
 * lock-free reads. Holds up to 2^26 events. NULL `out`: CQRS_EINVAL;
 * CQRS_ENOMEM; on error *out is NULL. `err` may be NULL. */
CQRS_EXPORT cqrs_code_t cqrs_memory_store_new(cqrs_store_t **out, cqrs_error_t *err);

/* Bytes the memory store holds beyond event payloads (for benchmarks). */
CQRS_EXPORT size_t cqrs_memory_store_overhead(const cqrs_store_t *store);

#ifdef __cplusplus
}
#endif
#endif
