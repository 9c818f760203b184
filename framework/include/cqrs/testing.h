/* libcqrs-testing: given / when / then helpers for aggregate tests. Each
 * fixture owns a real libuv loop, an in-memory store, a dispatcher and a
 * manual clock (cqrs/clock.h) that reads the time the fixture was made
 * until the test advances it; the test never sees the others. Link
 * cqrs::testing. */
#ifndef CQRS_TESTING_H
#define CQRS_TESTING_H

#include "cqrs/cqrs.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cqrs_test cqrs_test_t;

/* Registers the handlers (and subscribers) under test on the fixture's
 * dispatcher. */
typedef cqrs_code_t (*cqrs_test_setup_cb)(cqrs_dispatcher_t *d, void *data, cqrs_error_t *err);
/* The 0.1 name, removed in 0.3. */
typedef cqrs_test_setup_cb cqrs_test_setup_fn CQRS_DEPRECATED("use cqrs_test_setup_cb");

/* Creates a fixture for aggregate `id` of `type` into *out. `reg` is
 * borrowed. NULL `out`, registry or type, or a bad id: CQRS_EINVAL; a failing
 * `setup` or dispatcher: its code and error. On error *out is NULL. `err` may
 * be NULL. */
CQRS_EXPORT cqrs_code_t cqrs_test_new(const cqrs_registry_t *reg, const cqrs_aggregate_type_t *type, const char *id,
                                      cqrs_test_setup_cb setup, void *data, cqrs_test_t **out, cqrs_error_t *err);

/* Closes the dispatcher and the loop. Returns false (and prints why) when
 * the loop did not close cleanly. NULL: true. */
CQRS_EXPORT bool cqrs_test_destroy(cqrs_test_t *t);

/* Given: appends one past event to the aggregate under test, or to another
 * aggregate with _for. */
CQRS_EXPORT cqrs_code_t cqrs_test_given(cqrs_test_t *t, const cqrs_event_type_t *type, const void *payload);
CQRS_EXPORT cqrs_code_t cqrs_test_given_for(cqrs_test_t *t, const cqrs_aggregate_type_t *atype, const char *id,
                                            const cqrs_event_type_t *type, const void *payload);

/* When: builds the command and runs it to completion on the fixture's loop.
 * A payload that fails validation yields CQRS_EINVALID_COMMAND as result. */
CQRS_EXPORT cqrs_code_t cqrs_test_when(cqrs_test_t *t, const cqrs_command_type_t *type, const void *payload);

/* The last when's result (borrowed) and the events its command committed
 * (not those that subscribers or process managers committed in the same
 * run of the loop). */
CQRS_EXPORT const cqrs_error_t *cqrs_test_error(const cqrs_test_t *t);
CQRS_EXPORT size_t cqrs_test_event_count(const cqrs_test_t *t);
CQRS_EXPORT const cqrs_event_t *cqrs_test_event(const cqrs_test_t *t, size_t i);
/* State of the aggregate under test, loaded afresh from the store: free
 * with cqrs_aggregate_destroy. */
CQRS_EXPORT cqrs_aggregate_t *cqrs_test_load(cqrs_test_t *t);
CQRS_EXPORT cqrs_dispatcher_t *cqrs_test_dispatcher(cqrs_test_t *t);
/* Runs the fixture's loop until nothing is pending. A timer that keeps the
 * loop running (a subscriber's back-off, a process manager's retry) is
 * waited for by advancing the clock to it, so nothing waits for real time;
 * a lone deadline is not: advance to it with cqrs_test_advance.
 * cqrs_test_when runs the loop the same way. */
CQRS_EXPORT void cqrs_test_run(cqrs_test_t *t);
/* The fixture's clock: its events' timestamps, what the dispatcher's
 * timers follow. Borrowed; freed with the fixture. */
CQRS_EXPORT cqrs_clock_t *cqrs_test_clock(cqrs_test_t *t);
/* Moves the fixture's clock `ms` forward, then runs as cqrs_test_run. */
CQRS_EXPORT void cqrs_test_advance(cqrs_test_t *t, uint64_t ms);

typedef struct cqrs_expected_event {
  const cqrs_event_type_t *type; /* NULL ends a list */
  const void *payload;
} cqrs_expected_event_t;

/* Then: each returns true, or false with a readable explanation in msg.
 * _rejected and _error also check that the command committed nothing. */
CQRS_EXPORT bool cqrs_test_check_events(const cqrs_test_t *t, const cqrs_expected_event_t *expected, char *msg,
                                        size_t cap);
CQRS_EXPORT bool cqrs_test_check_rejected(const cqrs_test_t *t, const char *reason, char *msg, size_t cap);
CQRS_EXPORT bool cqrs_test_check_error(const cqrs_test_t *t, cqrs_code_t code, char *msg, size_t cap);

/* cmocka assertions (include <cmocka.h> first). */
#define CQRS__THEN(check)        \
  do {                           \
    char cqrs__msg[2048];        \
    if (!(check)) fail_msg("%s", cqrs__msg); \
  } while (0)
#define CQRS_THEN_EVENTS(t, ...) \
  CQRS__THEN(cqrs_test_check_events((t), (const cqrs_expected_event_t[]){__VA_ARGS__, {NULL, NULL}}, cqrs__msg, sizeof cqrs__msg))
#define CQRS_THEN_NO_EVENTS(t) \
  CQRS__THEN(cqrs_test_check_events((t), (const cqrs_expected_event_t[]){{NULL, NULL}}, cqrs__msg, sizeof cqrs__msg))
#define CQRS_THEN_REJECTED(t, reason) CQRS__THEN(cqrs_test_check_rejected((t), (reason), cqrs__msg, sizeof cqrs__msg))
#define CQRS_THEN_ERROR(t, code) CQRS__THEN(cqrs_test_check_error((t), (code), cqrs__msg, sizeof cqrs__msg))
/* The payload is any expression of the payload's type: a compound literal,
 * a variable, or what a function returns (copied first; with GCC or Clang). */
#if defined(__GNUC__)
#define CQRS__PAYLOAD(call, ...)                              \
  do {                                                        \
    __typeof__(__VA_ARGS__) cqrs__payload = (__VA_ARGS__);    \
    assert_int_equal(call(&cqrs__payload), CQRS_OK);          \
  } while (0)
#else
#define CQRS__PAYLOAD(call, ...) assert_int_equal(call(&(__VA_ARGS__)), CQRS_OK)
#endif
#define CQRS__GIVEN_CALL(p) cqrs_test_given(cqrs__t, cqrs__type, (p))
#define CQRS__WHEN_CALL(p) cqrs_test_when(cqrs__t, cqrs__type, (p))
#define CQRS_GIVEN(t, type, ...)                                      \
  do {                                                                \
    cqrs_test_t *cqrs__t = (t);                                       \
    const cqrs_event_type_t *cqrs__type = (type);                     \
    CQRS__PAYLOAD(CQRS__GIVEN_CALL, __VA_ARGS__);                     \
  } while (0)
#define CQRS_WHEN(t, type, ...)                                       \
  do {                                                                \
    cqrs_test_t *cqrs__t = (t);                                       \
    const cqrs_command_type_t *cqrs__type = (type);                   \
    CQRS__PAYLOAD(CQRS__WHEN_CALL, __VA_ARGS__);                      \
  } while (0)

/* Process types (cqrs_process_test_t from process.h): given / when these
 * inputs, then these steps are sent, this deadline set, or the instance
 * ended; no loop, no store. Given and when are the same call; the then
 * macros look at what the last input decided. Times come from the test's
 * manual clock, which only CQRS_PROCESS_WHEN_ADVANCE moves. */
#define CQRS__PROCESS_EVENT_CALL(p) cqrs_process_test_event(cqrs__pt, cqrs__ptype, cqrs__pid, (p), NULL)
#define CQRS_PROCESS_GIVEN_EVENT(t, type, aggregate_id, ...)      \
  do {                                                            \
    cqrs_process_test_t *cqrs__pt = (t);                          \
    const cqrs_event_type_t *cqrs__ptype = (type);                \
    const char *cqrs__pid = (aggregate_id);                       \
    CQRS__PAYLOAD(CQRS__PROCESS_EVENT_CALL, __VA_ARGS__);         \
  } while (0)
#define CQRS_PROCESS_WHEN_EVENT CQRS_PROCESS_GIVEN_EVENT
#define CQRS_PROCESS_GIVEN_STEP(t, step, status, reason) \
  assert_int_equal(cqrs_process_test_step((t), (step), (status), (reason), NULL), CQRS_OK)
#define CQRS_PROCESS_WHEN_STEP CQRS_PROCESS_GIVEN_STEP
#define CQRS_PROCESS_WHEN_DEADLINE(t, name) assert_int_equal(cqrs_process_test_deadline((t), (name), NULL), CQRS_OK)
/* Moves the test's clock (cqrs_process_test_clock) `ms` forward: the deadlines due by then fire. */
#define CQRS_PROCESS_WHEN_ADVANCE(t, ms) assert_int_equal(cqrs_process_test_advance((t), (ms), NULL), CQRS_OK)
/* Exactly one step was sent: `step`, a command of `type`. */
#define CQRS_PROCESS_THEN_SENDS(t, step, type)                                              \
  do {                                                                                      \
    const cqrs_command_type_t *cqrs__type = NULL;                                           \
    assert_int_equal(cqrs_process_test_sent_count(t), 1);                                   \
    assert_string_equal(cqrs_process_test_sent((t), 0, &cqrs__type, NULL), (step));         \
    assert_ptr_equal(cqrs__type, (type));                                                   \
  } while (0)
/* These steps were sent, in this order, and no other:
 * CQRS_PROCESS_THEN_SENDS_STEPS(t, {"debit", &debit_cmd}, {"notify", &notify_cmd}). */
typedef struct cqrs_expected_step {
  const char *step; /* NULL ends a list */
  const cqrs_command_type_t *type;
} cqrs_expected_step_t;
CQRS_EXPORT bool cqrs_process_test_check_sent(const cqrs_process_test_t *t, const cqrs_expected_step_t *expected,
                                              char *msg, size_t cap);
#define CQRS_PROCESS_THEN_SENDS_STEPS(t, ...)                                                                      \
  CQRS__THEN(cqrs_process_test_check_sent((t), (const cqrs_expected_step_t[]){__VA_ARGS__, {NULL, NULL}}, cqrs__msg, \
                                          sizeof cqrs__msg))
#define CQRS_PROCESS_THEN_NOTHING(t) assert_int_equal(cqrs_process_test_recorded(t), 0)
#define CQRS_PROCESS_THEN_ENDED(t) assert_true(cqrs_process_test_ended(t))
/* Deadline `name` is set for `at` (UTC ms; 0: none is set), e.g.
 * cqrs_clock_now_ms(cqrs_process_test_clock(t)) + 1000. */
#define CQRS_PROCESS_THEN_DEADLINE(t, name, at) assert_int_equal(cqrs_process_test_deadline_at((t), (name)), (at))

#ifdef __cplusplus
}
#endif
#endif
