/* libcqrs: the clock the framework reads time through. Its wall time (UTC
 * ms since the epoch) stamps events and decides process deadlines and
 * projection lag; its monotonic time (ms from an arbitrary start) runs
 * lease terms and renewals, back-offs, retries and wait time-outs. The
 * real clock reads the system's; a manual clock moves only when told, so
 * that a test decides when a lease runs out or a back-off ends, however
 * fast the machine is. See docs/architecture.md, "Time". */
#ifndef CQRS_CLOCK_H
#define CQRS_CLOCK_H

#include "cqrs/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cqrs_clock cqrs_clock_t;

/* The system's clock: what a NULL clock stands for wherever one is taken.
 * Never freed (cqrs_clock_destroy ignores it). */
CQRS_EXPORT cqrs_clock_t *cqrs_clock_real(void);

/* A manual clock into *out: both its wall and its monotonic time read
 * `start_ms` (> 0, e.g. cqrs_now_ms()) until cqrs_clock_advance moves them.
 * CQRS_EINVAL for a NULL `out` or start_ms <= 0; CQRS_ENOMEM. It must
 * outlive everything given it (dispatchers, leases, lease stores, tests). */
CQRS_EXPORT cqrs_code_t cqrs_clock_manual_new(int64_t start_ms, cqrs_clock_t **out, cqrs_error_t *err);
/* NULL or the real clock: nothing. */
CQRS_EXPORT void cqrs_clock_destroy(cqrs_clock_t *c);
CQRS_EXPORT bool cqrs_clock_is_manual(const cqrs_clock_t *c);

/* Moves a manual clock `ms` forward (both times). The framework's timers on
 * it that are due by then (a back-off, a lease's tick, a deadline, a
 * time-out) fire at their loop's next turn: run the loop after. Call it on
 * the thread that runs those loops (inside or outside uv_run, from a
 * callback too), never from a pool thread. CQRS_EINVAL for NULL or the
 * real clock. */
CQRS_EXPORT cqrs_code_t cqrs_clock_advance(cqrs_clock_t *c, uint64_t ms);

/* Wall time, UTC ms since the epoch; NULL: the real clock's (cqrs_now_ms). Any thread. */
CQRS_EXPORT int64_t cqrs_clock_now_ms(const cqrs_clock_t *c);
/* Monotonic time in ms; NULL: the real clock's. Any thread. */
CQRS_EXPORT uint64_t cqrs_clock_monotonic_ms(const cqrs_clock_t *c);

/* A manual clock: how far ahead the nearest framework timer waiting on it
 * that keeps its loop running (a back-off, a retry; not a poll, a lease's
 * tick or a lone deadline, which do not) is due, into *in_ms; false when
 * none waits, or for the real clock. A test that runs "until nothing is
 * left" advances by it and runs the loop again. Loop thread. */
CQRS_EXPORT bool cqrs_clock_next_due(const cqrs_clock_t *c, uint64_t *in_ms);

#ifdef __cplusplus
}
#endif
#endif
