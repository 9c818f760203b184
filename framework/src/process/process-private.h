/* Process managers: what the files of process/ share. Not installed.
 *
 * An instance is an aggregate of a type the registry
 * builds for each process type ("process:<name>"): its events record each
 * input handled, the state after it, the steps and deadlines decided, and
 * the end. Inputs reach the instance as internal commands through the
 * dispatcher, so they get the command path's optimistic concurrency,
 * conflict retries, idempotent ids and publication. The runtime on the
 * loop thread routes events, sends the steps an instance has decided and
 * not heard back from, turns their completions into inputs, and fires
 * deadlines; it keeps only what it can rebuild from the instances'
 * streams, which is what a restart does.
 *
 *   routed event --input--> instance stream --steps--> commands
 *        ^                        ^                       |
 *        |                        +---- outcome input ----+
 *   subscriber (checkpoint held back to the oldest open instance)
 *
 * The files, each calling only those listed after it:
 *   wait.c     waiting until no instance of a type is open (cqrs_process_wait)
 *   runtime.c  the runtime on a dispatcher: inputs and steps sent, their
 *              completions, deadlines and retries (one timer), the subscriber
 *   open.c     what the runtime knows of each instance, its requests, reports
 *   testing.c  tests without a loop (cqrs_process_test_*)
 *   decide.c   the pure decide-and-record of an instance
 *   type.c     ids, names, registration
 *   steps.c    the refusals of steps, recorded under the step's id
 *   state.c    an instance's state as its stream rebuilds it
 */
#ifndef CQRS_PROCESS_PRIVATE_H
#define CQRS_PROCESS_PRIVATE_H

#include "base/cqrs-uthash.h"
#include "events/events-private.h"

/* The kinds of input an instance hears (pm_input_t.kind, pm_received_t.kind). */
enum { IN_EVENT = 1, IN_STEP, IN_DEADLINE, IN_RESUME };
/* What an event of an instance's stream records (pm_event_type_t.kind). */
enum { KIND_RECEIVED, KIND_STATE, KIND_DEADLINE, KIND_ENDED, KIND_STEP };
enum { STEP_NONE = 0, STEP_SENT = 100 }; /* else a cqrs_step_status_t */

/* Room for what names an input: "in:d:", a deadline name as any recorded
 * one may be (CQRS_NAME_MAX), ':' and a time; or "in:e:" and an event id. */
#define WHAT_MAX (CQRS_ID_MAX + CQRS_NAME_MAX)

typedef struct pm_type pm_type_t;

/* One of the event types a process type registers for its instances' streams. */
typedef struct pm_event_type {
  cqrs_event_type_t pub; /* first: the events' type pointer is this */
  const pm_type_t *pm;
  int kind;
  int step;
  char name[CQRS_NAME_MAX];
} pm_event_type_t;

/* A registered process type: its definition, its stream's aggregate type and
 * event types. The registry keeps it under "process:<name>" (type.c). */
struct pm_type {
  const cqrs_process_type_t *def;
  char stream[CQRS_NAME_MAX];
  cqrs_aggregate_type_t agg;
  cqrs_apply_entry_t apply[5 + CQRS_PROCESS_STEPS_MAX];
  pm_event_type_t kinds[4]; /* received, state, deadline, ended */
  pm_event_type_t steps[CQRS_PROCESS_STEPS_MAX];
  size_t nsteps;
  size_t user_offset;
};

/* What the stream records: a payload struct per event kind (their field
 * tables are in type.c, where the types are registered). */

/* An input handled (KIND_RECEIVED). */
typedef struct pm_received {
  int32_t kind;
  char key[CQRS_NAME_MAX]; /* event type, step or deadline name */
  char event_id[CQRS_EVENT_ID_LEN];
  char aggregate[CQRS_ID_MAX];
  int64_t position;
  int32_t occurrence;
  int32_t status;
  char reason[CQRS_NAME_MAX];
  char correlation[CQRS_ID_MAX];
  int64_t at;
} pm_received_t;

/* A deadline set or cancelled (KIND_DEADLINE); also a live one in a state. */
typedef struct pm_deadline {
  char name[CQRS_NAME_MAX];
  int64_t at; /* 0: cancelled */
} pm_deadline_t;

/* The end (KIND_ENDED). */
typedef struct pm_ended {
  int32_t ended;
} pm_ended_t;

/* The instance's state (the aggregate's), as its stream rebuilds it (state.c). */
typedef struct pm_step_state {
  int32_t count;            /* occurrences decided */
  int32_t status;           /* of the latest: STEP_SENT or a cqrs_step_status_t */
  const cqrs_event_t *sent; /* its recorded event: the payload is the command's */
} pm_step_state_t;

typedef struct pm_instance {
  bool started, ended;
  int64_t first_position, last_position;
  char correlation[CQRS_ID_MAX];
  pm_step_state_t steps[CQRS_PROCESS_STEPS_MAX];
  pm_deadline_t deadlines[CQRS_PROCESS_DEADLINES_MAX];
  _Alignas(max_align_t) unsigned char user[];
} pm_instance_t;

/* An input to decide on (decide.c): an event, a step's outcome, a deadline
 * due, or a resumption (which decides nothing). */
typedef struct pm_input {
  int kind;
  const cqrs_event_t *event; /* IN_EVENT */
  const cqrs_process_route_t *route;
  int step; /* IN_STEP */
  int32_t occurrence;
  int32_t status;
  char reason[CQRS_NAME_MAX];
  char deadline[CQRS_NAME_MAX]; /* IN_DEADLINE */
  int64_t at;
  int64_t now; /* IN_STEP: when the outcome came (cqrs_process_now) */
} pm_input_t;

/* state.c */
/* The index of step `name` in the type's steps, or -1. */
int cqrs__process_step_index(const pm_type_t *pm, const char *name);
/* The live deadline `name` in `list`, or NULL. */
const pm_deadline_t *cqrs__process_deadline_find(const pm_deadline_t *list, const char *name);
/* The apply function of every event type of an instance's stream. */
void cqrs__process_apply(void *state, const cqrs_event_t *e);
/* The state_cleanup of an instance: drops its steps' recorded events. */
void cqrs__process_state_cleanup(void *state);

/* steps.c */
/* Registers the stream and event type of step refusals (shared by every
 * process type; registering them again is harmless). */
cqrs_code_t cqrs__step_refusals_add(cqrs_registry_t *reg, cqrs_error_t *err);

/* type.c */
/* Letters, digits, '_', '-' and the characters of `extra`; not empty. */
bool cqrs__process_name_ok(const char *s, const char *extra);
/* The command id of input or step `what` of an instance (never cut). */
void cqrs__process_derive(char out[CQRS_ID_MAX], const pm_type_t *pm, const char *instance, const char *what);
/* The command id of occurrence `occ` of step `step` of an instance. */
void cqrs__process_step_id(char out[CQRS_ID_MAX], const pm_type_t *pm, const char *instance, int step, int32_t occ);

/* decide.c */
/* The route of events of `type`, or NULL. */
const cqrs_process_route_t *cqrs__process_find_route(const pm_type_t *pm, const cqrs_event_type_t *type);
/* Decides what `input` does to instance `agg` and raises the events that
 * record it; pure but for the handler it calls. */
cqrs_code_t cqrs__process_decide(const pm_type_t *pm, cqrs_aggregate_t *agg, const pm_input_t *input, void *data,
                                 cqrs_error_t *err);

/* The runtime on a dispatcher (open.c, runtime.c). A step an open instance
 * awaits. */
typedef struct open_step {
  int32_t occurrence;       /* of the step awaited */
  const cqrs_event_t *sent; /* its recorded event; NULL: nothing awaited */
  bool inflight;            /* the command is out */
  int64_t retry_at;         /* a transient failure: send again then */
  unsigned attempts;
} open_step_t;

typedef struct pm_request pm_request_t;

/* What the runtime knows of an instance: an open one, or one with an input
 * on its way. Inputs of one instance go one at a time, so each report is
 * newer than the one before. */
typedef struct open {
  char id[CQRS_ID_MAX];
  char correlation[CQRS_ID_MAX];
  bool started;
  int64_t first_position;
  open_step_t steps[CQRS_PROCESS_STEPS_MAX];
  pm_deadline_t deadlines[CQRS_PROCESS_DEADLINES_MAX];
  bool deadline_due[CQRS_PROCESS_DEADLINES_MAX]; /* fired, not yet recorded */
  int64_t resume_at;          /* an input failed: reload the instance then */
  int64_t held_at;            /* not started here yet, but an event at this position was recorded by an
                                 earlier run: the checkpoint stays before it until the reload reports */
  pm_request_t *busy;         /* the input in flight */
  pm_request_t *queue, *tail; /* inputs waiting for it */
  UT_hash_handle hh;
} open_t;

/* A process type running on a dispatcher (cqrs__process_t): a component
 * of its runtime `d`, which it reaches through the command port (inputs
 * and steps) and the event side (its subscriber). */
typedef struct cqrs__process cqrs__process_t;
struct cqrs__process {
  cqrs__component_t comp;
  cqrs__process_t *next; /* the others on `d` (d->procs) */
  cqrs_dispatcher_t *d;
  const pm_type_t *pm;
  void *data;
  sub_t *sub;
  open_t *open;
  size_t inflight; /* commands this runtime sent and has not heard back from */
  cqrs__timer_t timer;
  bool closing;
};

/* What an instance looks like after an input: what the runtime must do. */
typedef struct pm_report {
  bool started, ended;
  int64_t first_position;
  char correlation[CQRS_ID_MAX];
  const cqrs_event_t *awaited[CQRS_PROCESS_STEPS_MAX]; /* referenced */
  int32_t occurrence[CQRS_PROCESS_STEPS_MAX];
  pm_deadline_t deadlines[CQRS_PROCESS_DEADLINES_MAX];
} pm_report_t;

/* An input on its way to an instance, as the internal command's request. */
struct pm_request {
  pm_request_t *next;
  cqrs__process_t *rt;
  char instance[CQRS_ID_MAX];
  char what[WHAT_MAX]; /* names the input in its command id; "" records nothing */
  pm_input_t input;
  bool from_sub;
  pm_report_t report; /* written by the handler's last run */
};

/* steps.c: the outcome of a step is the first one recorded under its id:
 * a refusal (rejection or permanent error) is recorded in stream
 * "cqrs.step"/<id>, so that a later send of the same id, after a crash or
 * from another process, is refused the same way even if it would now be
 * accepted; a duplicate that was a refusal is that refusal. May change
 * *rc, `res` and `err`. The interceptor of every step command
 * (cqrs_command.settle), on the thread that ran the handler. */
void cqrs__step_settle(cqrs_store_t *store, const cqrs_clock_t *clock, const cqrs_command_t *cmd, cqrs_code_t *rc,
                       cqrs_result_t *res, cqrs_error_t *err);
bool cqrs__code_transient(const cqrs_error_t *err); /* retried later, not an outcome */

/* open.c */
/* Sets `r` to what the runtime must do for instance state `in`. */
void cqrs__process_report_fill(pm_report_t *r, const pm_instance_t *in);
/* A request for input `kind` to `instance`, named `what` (NULL: records
 * nothing); NULL when out of memory. */
pm_request_t *cqrs__process_request_new(cqrs__process_t *rt, const char *instance, int kind, const char *what);
void cqrs__process_request_free(pm_request_t *req); /* NULL: nothing */
/* The runtime's entry for `instance`, made if missing; NULL when out of memory. */
open_t *cqrs__process_open_get(cqrs__process_t *rt, const char *instance);
void cqrs__process_open_free(open_t *o); /* an entry out of the table, its queue too */
/* Forgets an instance that is neither open nor waited on. */
void cqrs__process_open_maybe_drop(cqrs__process_t *rt, open_t *o, bool ended);
/* Brings the runtime's view of one instance in line with a report (takes
 * the report's awaited events it keeps). */
void cqrs__process_apply_report(open_t *o, pm_report_t *rep);

#endif
