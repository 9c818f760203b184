/* libcqrs: process managers (sagas): flows across aggregates, such as a
 * transfer that debits one account, credits another and refunds on failure.
 *
 * A process type is a static descriptor, like an aggregate type. Each
 * instance keeps its own event stream ("process:<name>"/<instance id>):
 * every input it handles (a routed event, the outcome of one of its steps,
 * a deadline) is recorded there in one idempotent commit, together with
 * the new state and what was decided (steps to send, deadlines, the end),
 * so a replay never runs a decision again: it reads what was decided.
 * See docs/architecture.md, "Process managers". */
#ifndef CQRS_PROCESS_H
#define CQRS_PROCESS_H

#include "cqrs/projection.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CQRS_PROCESS_STEPS_MAX 16    /* steps a process type declares */
#define CQRS_PROCESS_DEADLINES_MAX 8 /* deadlines an instance holds at once */
/* Longest names, in bytes: a process type's, a step's and a deadline's.
 * The types a process records are named "process:<name>.step.<step>", which
 * must fit a type name (CQRS_NAME_MAX); longer names are refused at
 * registration (deadlines: by cqrs_process_schedule), never cut. Ids derived
 * from them are never cut either: what does not fit an id is hashed. */
#define CQRS_PROCESS_NAME_MAX 20
#define CQRS_PROCESS_STEP_NAME_MAX 20
#define CQRS_PROCESS_DEADLINE_NAME_MAX 20

typedef enum cqrs_step_status {
  CQRS_STEP_ACCEPTED = 1, /* the command committed (or had committed: a duplicate) */
  CQRS_STEP_REJECTED,     /* a business rejection: nothing changed */
  CQRS_STEP_FAILED        /* a permanent error (no handler, invalid command, handler error) */
} cqrs_step_status_t;
/* Transient errors (store unavailable, conflicts retried out, out of
 * memory, closing) are not outcomes: the step is sent again later with the
 * same id, which the store makes idempotent. */

typedef struct cqrs_step_outcome {
  const char *step; /* the step's name */
  cqrs_step_status_t status;
  const char *reason; /* rejected: the business reason; failed: the error's name; else "" */
} cqrs_step_outcome_t;

/* An instance inside a handler: decide through cqrs_process_send,
 * _schedule, _cancel and _end. */
typedef struct cqrs_process cqrs_process_t;

/* Handlers change `state` (the type's state struct, a working copy) and
 * decide; they must have no other effect (they may run again after a
 * concurrency conflict). Return CQRS_OK, or an error: nothing is recorded
 * and the input is retried (a routed event then goes to the dead letters
 * after the dispatcher's retry attempts). They run where the store's calls
 * run: on the loop thread, or on a pool thread for a blocking store. */
typedef cqrs_code_t (*cqrs_process_event_cb)(cqrs_process_t *p, void *state, const cqrs_event_t *e, void *data,
                                             cqrs_error_t *err);
typedef cqrs_code_t (*cqrs_process_step_cb)(cqrs_process_t *p, void *state, const cqrs_step_outcome_t *o,
                                            void *data, cqrs_error_t *err);
typedef cqrs_code_t (*cqrs_process_deadline_cb)(cqrs_process_t *p, void *state, const char *deadline,
                                                void *data, cqrs_error_t *err);
/* Writes the id of the instance an event belongs to into buf[cap]
 * (CQRS_ID_MAX); returns false when the event belongs to no instance. */
typedef bool (*cqrs_process_route_cb)(const cqrs_event_t *e, char *buf, size_t cap);

/* Which events reach the process. Route by what only the event's own
 * aggregate decides (its id, its version), never by a payload field that
 * any command can set. */
typedef struct cqrs_process_route {
  const cqrs_event_type_t *type;
  bool starts;                 /* may start an instance; otherwise only an existing one hears it */
  cqrs_process_route_cb route; /* NULL: the event's aggregate id */
  cqrs_process_event_cb handle;
} cqrs_process_route_t;

/* A step: a command the process sends, at most once per occurrence. Its
 * command id is derived from (process, instance, step, occurrence). */
typedef struct cqrs_process_step {
  const char *name; /* unique in the type; 1 to CQRS_PROCESS_STEP_NAME_MAX letters, digits, '_' and '-'; not "in" */
  const cqrs_command_type_t *command;
} cqrs_process_step_t;

typedef struct cqrs_process_type {
  const char *name; /* 1 to CQRS_PROCESS_NAME_MAX letters, digits, '_', '-', '.'; the stream type is "process:<name>" */
  size_t state_size;
  const cqrs_field_t *state_fields;    /* how the state is recorded; required when state_size > 0 */
  uint32_t state_version;              /* schema version of the recorded state; 0 means 1 */
  const cqrs_process_route_t *routes;  /* ends with {NULL} */
  const cqrs_process_step_t *steps;    /* ends with {NULL, NULL} */
  cqrs_process_step_cb on_step;        /* required when there are steps */
  cqrs_process_deadline_cb on_deadline; /* optional */
  /* Room for what later versions add without changing the size (docs/versioning.md): zero. */
  void *reserved[4];
} cqrs_process_type_t;

/* Registers a process type and the types it records (its stream, events
 * and internal command). Before the registry is shared. */
CQRS_EXPORT cqrs_code_t cqrs_registry_add_process(cqrs_registry_t *reg, const cqrs_process_type_t *type,
                                                  cqrs_error_t *err);

/* Runs process `type` on `d` (loop thread): a checkpointed subscriber of the
 * routed events, named after the type. On start it catches up from its
 * checkpoint, which never passes the first event of an instance still open,
 * so unfinished instances resume: each step decided without a recorded
 * outcome is sent again (same id). `data` goes to the handlers; `cp` is
 * borrowed and must outlive `d`. No thread ever waits for a step. */
CQRS_EXPORT cqrs_code_t cqrs_process_start(cqrs_dispatcher_t *d, const cqrs_process_type_t *type, void *data,
                                           cqrs_checkpoints_t *cp, cqrs_error_t *err);

/* Instances of the named process this dispatcher knows to be open. Loop thread. */
CQRS_EXPORT size_t cqrs_process_open_count(const cqrs_dispatcher_t *d, const char *name);
/* Waits until no instance of process `name` running on `d` is open: none
 * started and not ended, none with an input on its way (a routed event, a
 * step's outcome, a deadline), at most `timeout_ms` on the dispatcher's
 * clock. Events the process has not received yet do not count: to include
 * them, first wait for its subscriber, "process:<name>", to reach their
 * position (cqrs_projection_wait). Under a lease held elsewhere nothing is
 * open here. Loop thread. Calls `cb` once, later, on the loop thread:
 * CQRS_OK, CQRS_ETIMEOUT, or CQRS_ECLOSED when the dispatcher closes first
 * (from within cqrs_dispatcher_close); or returns an error (NULL arguments:
 * CQRS_EINVAL; CQRS_ENOT_FOUND when `name` does not run on `d`;
 * CQRS_ECLOSED) and never calls it. */
CQRS_EXPORT cqrs_code_t cqrs_process_wait(cqrs_dispatcher_t *d, const char *name, uint64_t timeout_ms,
                                          cqrs_wait_cb cb, void *data);
/* The same from any thread but the loop's (which must be running): blocks
 * and returns the status (CQRS_ENOT_FOUND when `name` does not run on `d`).
 * On the loop thread: CQRS_ESTATE at once. A graceful shutdown waits so,
 * then closes the dispatcher. */
CQRS_EXPORT cqrs_code_t cqrs_process_wait_sync(cqrs_dispatcher_t *d, const char *name, uint64_t timeout_ms);

/* Inside a handler: decides to send step `step` with `payload` (copied and
 * validated against the step's command type: CQRS_EINVALID_COMMAND). A
 * step whose previous occurrence has no outcome yet is CQRS_ESTATE, but
 * for the step whose outcome is being handled: its next occurrence may be
 * sent from there (each occurrence is a command of its own id). */
CQRS_EXPORT cqrs_code_t cqrs_process_send(cqrs_process_t *p, const char *step, const void *payload,
                                          cqrs_error_t *err);
/* Inside a handler: wakes the instance at `at_ms` (UTC ms) with deadline
 * `name` (replacing one of the same name), or cancels it. A name is 1 to
 * CQRS_PROCESS_DEADLINE_NAME_MAX letters, digits, '_' and '-' (else
 * CQRS_EINVAL, or CQRS_ETOO_LARGE when longer). */
CQRS_EXPORT cqrs_code_t cqrs_process_schedule(cqrs_process_t *p, const char *name, int64_t at_ms, cqrs_error_t *err);
CQRS_EXPORT cqrs_code_t cqrs_process_cancel(cqrs_process_t *p, const char *name, cqrs_error_t *err);
/* Inside a handler: the instance ends once this input is recorded; nothing reaches it afterwards. */
CQRS_EXPORT void cqrs_process_end(cqrs_process_t *p);
CQRS_EXPORT const char *cqrs_process_id(const cqrs_process_t *p);
/* The time of the input, UTC ms: use it rather than a clock, so that the
 * decision depends only on its input. In a route's handler (on_event): the
 * event's timestamp, when it was recorded. In on_step: the dispatcher's
 * clock when the step's outcome came back (the same if the handler runs
 * again after a conflict). In on_deadline: the time the deadline was set
 * for (its at_ms), not the later moment it may have fired at. In the test
 * helpers below the test's clock stamps the events given and the outcomes. */
CQRS_EXPORT int64_t cqrs_process_now(const cqrs_process_t *p);

/* ---- testing a process type without a loop (see testing.h) ---- */

typedef struct cqrs_process_test cqrs_process_test_t;
/* A lone instance `id` of `type` with no store, no loop and no dispatcher. */
CQRS_EXPORT cqrs_code_t cqrs_process_test_new(const cqrs_process_type_t *type, const char *id, void *data,
                                              cqrs_process_test_t **out, cqrs_error_t *err);
CQRS_EXPORT void cqrs_process_test_destroy(cqrs_process_test_t *t);
/* The test's clock: it stamps the events given and the outcomes of steps
 * (what cqrs_process_now says in on_event and on_step), and the events
 * recorded. A manual clock of its own (cqrs/clock.h) reading the time the
 * test was made until cqrs_process_test_advance moves it, so a deadline
 * set at cqrs_process_now(p) + N is at an exact time. Borrowed; freed with
 * the test. */
CQRS_EXPORT cqrs_clock_t *cqrs_process_test_clock(cqrs_process_test_t *t);
/* Uses `clock` instead (borrowed, must outlive the test; e.g. one shared
 * with a dispatcher, or cqrs_clock_real()); NULL: the test's own again. */
CQRS_EXPORT void cqrs_process_test_set_clock(cqrs_process_test_t *t, cqrs_clock_t *clock);
/* Moves the test's clock `ms` forward, then fires every deadline of the
 * instance due by then, the earliest first, as the runtime would (one a
 * handler sets for a time already past fires too; one it sets again for
 * the time it fired at does not): the "last input" is then all of them.
 * CQRS_EINVAL for NULL or a clock that is not manual; a handler's error
 * stops there, with what fired before it kept. */
CQRS_EXPORT cqrs_code_t cqrs_process_test_advance(cqrs_process_test_t *t, uint64_t ms, cqrs_error_t *err);
/* Inputs: the instance handles them as it would live; its decisions are
 * kept as if recorded. An input it ignores records nothing. */
CQRS_EXPORT cqrs_code_t cqrs_process_test_event(cqrs_process_test_t *t, const cqrs_event_type_t *type,
                                                const char *aggregate_id, const void *payload, cqrs_error_t *err);
CQRS_EXPORT cqrs_code_t cqrs_process_test_step(cqrs_process_test_t *t, const char *step, cqrs_step_status_t status,
                                               const char *reason, cqrs_error_t *err);
CQRS_EXPORT cqrs_code_t cqrs_process_test_deadline(cqrs_process_test_t *t, const char *name, cqrs_error_t *err);
/* What the last input (or advance) decided: steps sent (i-th: its name,
 * command type and payload, borrowed), whether the instance ended, a
 * deadline's time (0: none). And the instance's state now. */
CQRS_EXPORT size_t cqrs_process_test_sent_count(const cqrs_process_test_t *t);
CQRS_EXPORT const char *cqrs_process_test_sent(const cqrs_process_test_t *t, size_t i,
                                               const cqrs_command_type_t **type, const void **payload);
CQRS_EXPORT bool cqrs_process_test_ended(const cqrs_process_test_t *t);
CQRS_EXPORT int64_t cqrs_process_test_deadline_at(const cqrs_process_test_t *t, const char *name);
CQRS_EXPORT const void *cqrs_process_test_state(const cqrs_process_test_t *t);
/* Events the last input (or advance) recorded in the instance's stream. */
CQRS_EXPORT size_t cqrs_process_test_recorded(const cqrs_process_test_t *t);

#ifdef __cplusplus
}
#endif
#endif
