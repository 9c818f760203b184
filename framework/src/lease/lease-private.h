/* Leases held by a dispatcher: one per projection or process manager that
 * runs under leases, so that across processes one runs it at a time.
 *
 * A lease's holder keeps it by renewing every ttl/3. It stops delivering
 * at its deadline, guard_ms before the time the store will let another
 * take over (both counted from when it sent its last successful renewal,
 * so network time only shortens its hold), and a renewal that comes back
 * after the deadline does not count: by then another may have taken the
 * lease. Checkpoint writes carry the token, so a late one from a former
 * holder cannot move a newer holder's checkpoint back.
 *
 * The leasing is a component of the runtime; the subscriber a lease is for
 * (events/) hears of it through the callbacks in cqrs__lease_t. */
#ifndef CQRS_LEASE_PRIVATE_H
#define CQRS_LEASE_PRIVATE_H

#include "runtime/runtime-private.h"

typedef struct cqrs__lease cqrs__lease_t;
typedef struct cqrs__leasing cqrs__leasing_t;

struct cqrs__lease {
  const char *name;  /* the lease's: its subscriber's name */
  bool on;           /* under leases (cqrs__lease_add) */
  bool held;
  bool busy;         /* an acquire, renew or release in flight */
  bool failing;      /* the last call failed (logged once) */
  int64_t token;     /* while held: fences its checkpoint writes */
  cqrs_clock_t *clock; /* its leasing's (cqrs__lease_add) */
  uint64_t deadline; /* monotonic ms of `clock`: delivering stops then unless renewed */
  uint64_t renew_at; /* the same clock: the next renewal is due */
  /* Its holder: the lease was acquired (load the checkpoint, catch up) or
   * lost (stop delivering, drop what it holds); whether it may try to
   * acquire (what it did under a former hold has settled). Loop thread. */
  void (*acquired)(cqrs__lease_t *l);
  void (*lost)(cqrs__lease_t *l);
  bool (*may_acquire)(const cqrs__lease_t *l);
  /* A process manager hears of it too; NULL: nobody. */
  void (*changed)(void *data, bool held);
  void *changed_data;
  cqrs__lease_t *next; /* in its leasing's list */
};

/* Leases for the projections started from now on (cqrs_dispatcher_set_leases). */
cqrs_code_t cqrs__leasing_new(cqrs__runtime_t *rt, const cqrs_lease_options_t *o, cqrs_error_t *err);
/* Puts `l` (its name and holder callbacks set) under the runtime's leases
 * and starts trying to acquire it. */
void cqrs__lease_add(cqrs__leasing_t *leasing, cqrs__lease_t *l);
/* Held and in time; else loses it. */
bool cqrs__lease_valid(cqrs__lease_t *l);
/* Held and in time, with no side effect: for code that must not see the
 * holder's state change under it (a process manager walking its open
 * instances). */
bool cqrs__lease_in_time(const cqrs__lease_t *l);
/* Monotonic ms of the lease's clock, for a deadline check on another
 * thread (a batch on the pool). */
static inline uint64_t cqrs__lease_now(const cqrs__lease_t *l) { return cqrs__clock_mono(l->clock); }
/* Lets it go: a checkpoint write was fenced off, or there is no checkpoint. */
void cqrs__lease_give_up(cqrs__lease_t *l, const cqrs_error_t *err);
size_t cqrs__leases_held(const cqrs__leasing_t *leasing);
const char *cqrs__leasing_owner(const cqrs__leasing_t *leasing); /* who takes the leases */

#endif
