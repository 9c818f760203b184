/* libcqrs: leases, so that when several processes run the same application
 * each projection and process manager runs in exactly one of them. A lease
 * is held by one owner until it expires; every acquisition hands out a
 * fencing token higher than any before it for that name, and checkpoint
 * writes carry it (cqrs_checkpoint_store_save_fenced), so an owner that lost its
 * lease cannot move a checkpoint back. See docs/scaling.md, "One owner per
 * projection". */
#ifndef CQRS_LEASE_H
#define CQRS_LEASE_H

#include "cqrs/projection.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Where leases live (a lease store of your own: cqrs/backend.h). */
typedef struct cqrs_lease_store cqrs_lease_store_t;

CQRS_EXPORT void cqrs_lease_store_destroy(cqrs_lease_store_t *l);
/* The operations, with their arguments checked (names and owners: non-empty,
 * shorter than CQRS_NAME_MAX; ttl_ms > 0; token > 0): CQRS_EINVAL. They
 * block when the implementation does. */
CQRS_EXPORT cqrs_code_t cqrs_lease_store_acquire(cqrs_lease_store_t *l, const char *name, const char *owner,
                                                 uint64_t ttl_ms, int64_t *token, cqrs_error_t *err);
CQRS_EXPORT cqrs_code_t cqrs_lease_store_renew(cqrs_lease_store_t *l, const char *name, const char *owner,
                                               int64_t token, uint64_t ttl_ms, cqrs_error_t *err);
CQRS_EXPORT cqrs_code_t cqrs_lease_store_release(cqrs_lease_store_t *l, const char *name, const char *owner,
                                                 int64_t token, cqrs_error_t *err);
/* In-memory leases, for tests and for dispatchers of one process; thread-safe. */
CQRS_EXPORT cqrs_code_t cqrs_memory_lease_store_new(cqrs_lease_store_t **out, cqrs_error_t *err);
/* The same, with terms that run out by `clock` (borrowed, must outlive them;
 * NULL: the real clock): give it the dispatchers' manual clock in a test. */
CQRS_EXPORT cqrs_code_t cqrs_memory_lease_store_new_with_clock(cqrs_clock_t *clock, cqrs_lease_store_t **out,
                                                               cqrs_error_t *err);

/* How a dispatcher takes part in leasing. */
typedef struct cqrs_lease_options {
  cqrs_lease_store_t *leases; /* borrowed; must outlive the dispatcher */
  const char *owner;     /* copied; unique per process (e.g. host:pid:random) */
  uint64_t ttl_ms;       /* default 3000; renewed every ttl/3; standbys try every ttl/6 */
  /* The owner stops delivering this long before its lease runs out, so that
   * it has stopped before another can take over; covers the clocks'
   * difference and one delivery. Default ttl/3; less than 2/3 of ttl. */
  uint64_t guard_ms;
  /* The clock its terms, renewals and ticks follow (borrowed; must outlive
   * the dispatcher); NULL: the dispatcher's (cqrs_dispatcher_options_t).
   * A lease store that decides expiry itself (the in-memory one, MongoDB)
   * should be given the same clock. */
  union {
    cqrs_clock_t *clock;
    uint64_t clock_room_; /* keeps the struct's size where pointers are smaller */
  };
  uint64_t reserved[3]; /* must be zero (cqrs_lease_options_init) */
} cqrs_lease_options_t;

/* Fills `o` with the defaults (no lease store, no owner). */
CQRS_EXPORT void cqrs_lease_options_init(cqrs_lease_options_t *o);

/* From now on each projection and process manager started on `d` runs only
 * while `d` holds the lease named after it: on acquiring it loads its
 * checkpoint and catches up from the store; on losing it (not renewed in
 * time, taken over, or a checkpoint write fenced off) it stops delivering,
 * dead-letters nothing, and tries again. Close releases what `d` holds.
 * Loop thread, before any projection or process manager starts:
 * CQRS_ESTATE after; CQRS_EINVAL for NULL or bad options (reserved fields
 * not zero among them). */
CQRS_EXPORT cqrs_code_t cqrs_dispatcher_set_leases(cqrs_dispatcher_t *d, const cqrs_lease_options_t *o,
                                                   cqrs_error_t *err);
/* Whether `d` holds the lease of projection or process `name` now. Loop thread. */
CQRS_EXPORT bool cqrs_projection_owned(const cqrs_dispatcher_t *d, const char *name);

#ifdef __cplusplus
}
#endif
#endif
