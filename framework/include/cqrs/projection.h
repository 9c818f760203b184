/* libcqrs: projections (named, checkpointed subscribers) and checkpoint
 * stores. Writing a checkpoint store of your own: cqrs/backend.h. */
#ifndef CQRS_PROJECTION_H
#define CQRS_PROJECTION_H

#include "cqrs/dispatcher.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Where projections remember how far they have got: a name's position. */
typedef struct cqrs_checkpoints cqrs_checkpoints_t;

CQRS_EXPORT void cqrs_checkpoints_destroy(cqrs_checkpoints_t *cp);
CQRS_EXPORT cqrs_code_t cqrs_checkpoints_load(cqrs_checkpoints_t *cp, const char *name, int64_t *position,
                                              cqrs_error_t *err);
CQRS_EXPORT cqrs_code_t cqrs_checkpoints_save(cqrs_checkpoints_t *cp, const char *name, int64_t position,
                                              cqrs_error_t *err);
/* A save fenced by a lease's token (lease.h): CQRS_ECONFLICT when a higher
 * token has written, CQRS_EINVAL for token <= 0 or checkpoints that cannot
 * fence. */
CQRS_EXPORT cqrs_code_t cqrs_checkpoints_save_fenced(cqrs_checkpoints_t *cp, const char *name, int64_t position,
                                                     int64_t token, cqrs_error_t *err);
/* In-memory checkpoints (fenced too); thread-safe. NULL `out`: CQRS_EINVAL; CQRS_ENOMEM;
 * on error *out is NULL. `err` may be NULL. */
CQRS_EXPORT cqrs_code_t cqrs_memory_checkpoints_new(cqrs_checkpoints_t **out, cqrs_error_t *err);

/* ---- controls: acting on a running projection through its checkpoints ----
 *
 * Each projection has a control record beside its checkpoint: what an
 * operator asks of it (pause; reset, skip or replay one event), and what
 * the projection reports (its state, how far it got, the newest request it
 * carried out and what came of it). A dispatcher reads the records of its
 * projections every cqrs_dispatcher_options_t.control_ms, acts on them
 * (under a lease, only the holder does) and writes its report, so that a
 * tool in another process can act on a running application through the
 * store. docs/operations.md, "Projection controls". */

typedef enum cqrs_projection_action {
  CQRS_PROJECTION_NO_ACTION = 0,
  /* Reproject after `position`: the queue and the events set aside are let
   * go of and the checkpoint is moved to `position` (back or forward), from
   * which the projection reads the store again. Read-model writes are
   * guarded by position: a document already past an event keeps its newer
   * state (a rebuild writes afresh). Not for process managers. */
  CQRS_PROJECTION_RESET = 1,
  /* The event at `position` goes to the dead letters unhandled (attempts as
   * far as they got, error "skipped"): now if it is set aside or retried
   * in place, else when the projection reaches it. */
  CQRS_PROJECTION_SKIP = 2,
  /* The event at `position` is read from the store and delivered once more
   * (a dead letter replayed), as an event set aside with no attempt yet:
   * retried with back-off, dead-lettered again after its attempts. */
  CQRS_PROJECTION_REPLAY = 3
} cqrs_projection_action_t;

#define CQRS_PROJECTION_STATE_MAX 16
#define CQRS_PROJECTION_RESULT_MAX 160

typedef struct cqrs_projection_control {
  /* The operator's part (CQRS_CONTROL_REQUEST). */
  bool paused;                     /* deliver nothing until unset */
  int64_t request;                 /* number of the newest request (0: none); each one higher */
  cqrs_projection_action_t action; /* what it asks */
  int64_t position;                /* of what */
  /* The projection's report (CQRS_CONTROL_REPORT). */
  int64_t done;                                /* the newest request carried out (answered) */
  char result[CQRS_PROJECTION_RESULT_MAX];     /* what came of it ("" while none) */
  char state[CQRS_PROJECTION_STATE_MAX];       /* "running", "catching-up", "paused", "failing", "resetting" */
  char owner[CQRS_NAME_MAX];                   /* who reports: the lease's owner, else host:pid */
  int64_t reported_at;                         /* UTC ms of the report (0: none yet) */
  int64_t reached;                             /* the position it had handled (or set aside) */
  int64_t parked;                              /* events it holds set aside */
  void *reserved[4];
} cqrs_projection_control_t;

#define CQRS_CONTROL_REQUEST 0x1u /* paused, request, action, position */
#define CQRS_CONTROL_REPORT 0x2u  /* done, result, state, owner, reported_at, reached, parked */

/* Reads the control record of projection `name` into `out` (all zero and
 * *found false when there is none). Checkpoints without control records
 * (ops control_load or control_save NULL): CQRS_EINVAL. Blocks as the
 * checkpoints' other calls do. */
CQRS_EXPORT cqrs_code_t cqrs_checkpoints_control_load(cqrs_checkpoints_t *cp, const char *name,
                                                      cqrs_projection_control_t *out, bool *found, cqrs_error_t *err);
/* Writes the parts of `c` that `parts` names (CQRS_CONTROL_REQUEST and/or
 * CQRS_CONTROL_REPORT), keeping the rest of the record; creates it when
 * absent. A string of `c` not NUL-terminated or not valid UTF-8, negative
 * numbers, an unknown action or part: CQRS_EINVAL. */
CQRS_EXPORT cqrs_code_t cqrs_checkpoints_control_save(cqrs_checkpoints_t *cp, const char *name,
                                                      const cqrs_projection_control_t *c, unsigned parts,
                                                      cqrs_error_t *err);
/* An operator's request: numbers it one past the newest request and the
 * newest carried out, and writes it (*request, may be NULL: its number).
 * One operator at a time: two racing may both take one number, and the
 * later write wins. */
CQRS_EXPORT cqrs_code_t cqrs_projection_request(cqrs_checkpoints_t *cp, const char *name,
                                                cqrs_projection_action_t action, int64_t position, int64_t *request,
                                                cqrs_error_t *err);
/* Pauses or resumes projection `name`: the operator's `paused`. */
CQRS_EXPORT cqrs_code_t cqrs_projection_pause(cqrs_checkpoints_t *cp, const char *name, bool paused,
                                              cqrs_error_t *err);

typedef struct cqrs_projection_def {
  const char *name;                      /* unique; the checkpoint's key */
  const cqrs_event_type_t *const *types; /* NULL-terminated; NULL: all */
  cqrs_event_handler_cb handler;         /* must be idempotent: it may see an event again after a crash */
  void *data;
  unsigned flags; /* CQRS_SUBSCRIBE_BLOCKING */
} cqrs_projection_def_t;

/* Starts a projection on `d` (loop thread): loads its checkpoint, catches up
 * from it by reading the store, then follows live events, with no gap and
 * no duplicate. The checkpoint advances after each batch applied. `cp` is
 * borrowed and must outlive `d`. The dispatcher owns the projection.
 * Errors: NULL arguments, a bad or taken name, the checkpoint's load
 * failing (non-blocking checkpoints) or not queued (CQRS_ENOMEM): then no
 * projection of that name is left behind. */
CQRS_EXPORT cqrs_code_t cqrs_projection_start(cqrs_dispatcher_t *d, const cqrs_projection_def_t *def,
                                              cqrs_checkpoints_t *cp, cqrs_error_t *err);

/* True once the named projection has caught up and follows live events.
 * Loop thread. */
CQRS_EXPORT bool cqrs_projection_live(const cqrs_dispatcher_t *d, const char *name);
/* Position of the last event the named projection has handled (0: none). */
CQRS_EXPORT int64_t cqrs_projection_position(const cqrs_dispatcher_t *d, const char *name);

/* Read-your-writes: waits until projection `name` (NULL: every projection
 * and process manager on `d`) has handled everything up to global
 * `position` (a cqrs_result_t's position), at most `timeout_ms`. */
typedef void (*cqrs_wait_cb)(cqrs_code_t status, void *data);
/* Loop thread. Calls `cb` once, later, on the loop thread: CQRS_OK,
 * CQRS_ETIMEOUT, or CQRS_ECLOSED when the dispatcher closes first (from
 * within cqrs_dispatcher_close); or
 * returns an error (NULL arguments, CQRS_ENOT_FOUND for an unknown name,
 * CQRS_ECLOSED) and never calls it. */
CQRS_EXPORT cqrs_code_t cqrs_projection_wait(cqrs_dispatcher_t *d, const char *name, int64_t position,
                                             uint64_t timeout_ms, cqrs_wait_cb cb, void *data);
/* The same from any thread but the loop's (which must be running): blocks
 * and returns the status (CQRS_ENOT_FOUND for an unknown name). On the
 * loop thread: CQRS_ESTATE at once. */
CQRS_EXPORT cqrs_code_t cqrs_projection_wait_sync(cqrs_dispatcher_t *d, const char *name, int64_t position,
                                                  uint64_t timeout_ms);

/* Read-your-writes in one call, from a thread other than the loop's:
 * executes `cmd` (taken over; cqrs_dispatcher_execute_ex) and, when it
 * committed events, waits until `projection` (NULL: every projection and
 * process manager on `d`) has handled them, at most `timeout_ms`. Returns
 * the command's code; or, when the command succeeded and only the wait did
 * not (CQRS_ETIMEOUT, CQRS_ECLOSED, CQRS_ENOT_FOUND), that code, with `out`
 * (may be NULL) saying what the command committed all the same. */
CQRS_EXPORT cqrs_code_t cqrs_dispatcher_execute_sync(cqrs_dispatcher_t *d, cqrs_command_t *cmd,
                                                     const char *projection, uint64_t timeout_ms,
                                                     cqrs_execution_t *out, cqrs_error_t *err);

#ifdef __cplusplus
}
#endif
#endif
