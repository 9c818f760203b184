/* libcqrs: the dispatcher: command bus on a libuv loop, and the event bus
 * that publishes committed events to subscribers. */
#ifndef CQRS_DISPATCHER_H
#define CQRS_DISPATCHER_H

#include <uv.h>

#include "cqrs/clock.h"
#include "cqrs/repository.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cqrs_dispatcher cqrs_dispatcher_t;
typedef struct cqrs_context cqrs_context_t;

/* What a command came to. Borrowed by done callbacks. */
typedef struct cqrs_result {
  cqrs_error_t error;  /* code CQRS_OK on success; CQRS_EREJECTED for a business failure */
  const char *command_id;
  int64_t version;     /* version of the changed aggregate after the command */
  size_t events;       /* events committed */
  bool duplicate;      /* the command id had committed before: nothing appended */
  const bson_t *value; /* optional value the handler returned, or NULL */
  int64_t position;    /* global position of the last event committed (0: none); wait for
                        * projections to reach it with cqrs_projection_wait */
} cqrs_result_t;

#define cqrs_result_ok(r) ((r)->error.code == CQRS_OK)
#define cqrs_result_rejected(r) ((r)->error.code == CQRS_EREJECTED)

/* Completion of a command: runs once, on the loop thread. */
typedef void (*cqrs_done_cb)(const cqrs_result_t *result, void *data);

/* A command handler: load aggregates through the context, call the domain,
 * return CQRS_OK (the context's pending events are committed), a rejection
 * (cqrs_reject) or an error. It may run again after a concurrency conflict,
 * so it must have no effect but through the context. It runs on the loop
 * thread, on a pool thread when the store or the handler blocks, or on the
 * thread of the dispatcher's loop owning the aggregate (options.loops). */
typedef cqrs_code_t (*cqrs_command_handler_cb)(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data,
                                               cqrs_error_t *err);
/* The 0.1 name, removed in 0.3. */
typedef cqrs_command_handler_cb cqrs_command_handler_fn CQRS_DEPRECATED("use cqrs_command_handler_cb");

/* An event handler or projection: CQRS_OK, or an error (the event is retried
 * with back-off, then dead-lettered). */
typedef cqrs_code_t (*cqrs_event_handler_cb)(const cqrs_event_t *e, void *data, cqrs_error_t *err);
/* The 0.1 name, removed in 0.3. */
typedef cqrs_event_handler_cb cqrs_event_handler_fn CQRS_DEPRECATED("use cqrs_event_handler_cb");

/* Where events go once a subscriber has failed on them for good. Loop thread. */
typedef void (*cqrs_dead_letter_cb)(const char *subscriber, const cqrs_event_t *e, const cqrs_error_t *error,
                                    void *data);
/* The 0.1 name, removed in 0.3. */
typedef cqrs_dead_letter_cb cqrs_dead_letter_fn CQRS_DEPRECATED("use cqrs_dead_letter_cb");

/* A dead letter with what the dispatcher knows of it: how often delivery
 * failed, and since when. Borrowed for the duration of the call it is
 * handed to. */
typedef struct cqrs_dead_letter {
  const char *subscriber;
  const cqrs_event_t *event;
  const cqrs_error_t *error; /* the last failure */
  unsigned attempts;         /* deliveries that failed (0: none was made: an operator's skip) */
  int64_t first_failed_at;   /* UTC ms of the first failure (0: none) */
  void *reserved[4];
} cqrs_dead_letter_t;

/* The same sink with those figures. Loop thread. */
typedef void (*cqrs_dead_letter_info_cb)(const cqrs_dead_letter_t *dl, void *data);

typedef void (*cqrs_close_cb)(void *data);

/* Options that can grow (docs/versioning.md): `size` is the caller's
 * sizeof, set by cqrs_dispatcher_options_init; the dispatcher reads only
 * what it covers and takes the defaults for the rest (0: the size 0.2.0
 * had). Fill it with cqrs_dispatcher_options_init, then set what differs. */
typedef struct cqrs_dispatcher_options {
  size_t size;
  unsigned conflict_retries;      /* handler re-runs after a conflict; default 5 */
  unsigned retry_attempts;        /* deliveries to a failing subscriber; default 3 */
  uint64_t retry_base_ms;         /* first back-off; default 1000 */
  uint64_t retry_cap_ms;          /* back-off ceiling; default 30000 */
  uint64_t poll_ms;               /* read the store for other processes' events every poll_ms; 0: off */
  bool keep_alive;                /* keep the loop running until close, for commands from other threads */
  cqrs_dead_letter_cb dead_letter; /* NULL: kept in memory, see cqrs_dispatcher_dead_letter */
  void *dead_letter_data;
  /* Without a sink: the dead letters kept in memory, at most; past it the
   * oldest is dropped (and counted: cqrs_dispatcher_dead_letters_dropped).
   * Default 1024; 0: the default. */
  size_t dead_letters_kept;
  /* Aggregates whose state the dispatcher keeps between commands (least
   * recently used evicted); default 16384; 0: off. Types with a state_cleanup
   * are never kept. See docs/architecture.md, "The aggregate cache". */
  size_t aggregate_cache;
  /* Loops that run commands; default 1. N > 1: the dispatcher starts N - 1
   * more, each on a loop and thread of its own (closed with it), and runs a
   * command whose type names its aggregate (cqrs_command_type_t.aggregate_id)
   * on the loop owning that aggregate (a hash of its id); the rest, the
   * subscribers and the completions stay on this loop. A blocking store or
   * handler runs on the thread pool as before. See docs/architecture.md,
   * "Several loops". */
  unsigned loops;
  /* With several loops: the share of aggregates this loop keeps, in percent
   * (the members share the rest evenly); 0: an even share, 100 / loops.
   * Lower it when subscribers keep this loop busy. */
  unsigned home_percent;
  /* The clock it reads time through (borrowed; must outlive it): event
   * timestamps, back-offs, polls, wait time-outs, and the deadlines of its
   * process managers and the terms of its leases unless those name their
   * own. NULL: the real clock. A manual clock (cqrs/clock.h) makes time
   * move only when the application or a test advances it. */
  cqrs_clock_t *clock;
  /* Where dead letters go, with their attempts and the time of their first
   * failure (data: dead_letter_data); called instead of dead_letter when
   * set. NULL: dead_letter, or kept in memory. */
  cqrs_dead_letter_info_cb dead_letter_info;
  /* Projections whose checkpoints keep control records (projection.h) read
   * them every control_ms, act on what an operator asked and report;
   * default 1000; 0: never. */
  uint64_t control_ms;
  /* Batches (CQRS_HANDLER_BATCH): the most requests of one aggregate a
   * batch runs, at most CQRS_BATCH_MAX; 0: the default, CQRS_BATCH_MAX;
   * 1: no batches (every request runs alone, as without the flag). */
  unsigned batch_max;
} cqrs_dispatcher_options_t;

/* Fills the first `size` bytes of `opts` with the defaults and sets its
 * size: call it through cqrs_dispatcher_options_init(opts), which passes
 * the sizeof the caller was built with. */
CQRS_EXPORT void cqrs_dispatcher_options_init_size(cqrs_dispatcher_options_t *opts, size_t size);
#define cqrs_dispatcher_options_init(opts) cqrs_dispatcher_options_init_size((opts), sizeof *(opts))

/* Creates a dispatcher on `loop`; call from the loop's thread. `reg` and
 * `store` are borrowed and must outlive it. `opts` NULL: defaults. Reads the
 * store's head once: here for a non-blocking store (its failure is this
 * call's), on the thread pool once the loop runs for a blocking one
 * (retried with back-off); until it is known no event is published, and
 * what commands commit meanwhile is published once it is. Close it with
 * cqrs_dispatcher_close. */
CQRS_EXPORT cqrs_code_t cqrs_dispatcher_new(uv_loop_t *loop, const cqrs_registry_t *reg, cqrs_store_t *store,
                                            const cqrs_dispatcher_options_t *opts, cqrs_dispatcher_t **out,
                                            cqrs_error_t *err);

#define CQRS_HANDLER_BLOCKING 0x1u /* the handler blocks: run it on the thread pool */
/* Commands of a hot aggregate run as batches (docs/architecture.md,
 * "Batches"). A request whose command type names its aggregate
 * (cqrs_command_type_t.aggregate_id, non-NULL) queues on the loop running
 * it, per aggregate; while a batch of that aggregate runs, newcomers queue
 * for the next, up to options.batch_max. A batch loads the aggregates once
 * and runs each command's handler in turn on the same state (so the
 * handler sees the commands before it in the batch as committed); each
 * command commits as its own commit (its id, envelope, idempotency), all
 * of them in one call of the store (backend.h, append_many), and gets its
 * own result, in the order sent. Results are final in order up to the
 * first commit that does not land; the commands after it run again (a
 * conflict counts toward conflict_retries). A command that changes another
 * aggregate, raises then rejects, or changes nothing runs as the first of
 * the next batch, alone as without the flag. Not for calls. */
#define CQRS_HANDLER_BATCH 0x2u
#define CQRS_BATCH_MAX 256

/* Registers the one handler of a command type (loop thread, before or while
 * running). A second handler for the same type is CQRS_EDUPLICATE. */
CQRS_EXPORT cqrs_code_t cqrs_dispatcher_register(cqrs_dispatcher_t *d, const cqrs_command_type_t *type,
                                                 cqrs_command_handler_cb fn, void *data, unsigned flags,
                                                 cqrs_error_t *err);

/* A handler that calls out (a payment gateway, a mail service) without
 * holding a thread while it waits: `start` begins the work on the
 * application's own I/O and returns at once (loop thread; it must not
 * block); later, from any thread, the application calls
 * cqrs_call_complete with the reply, or cqrs_call_fail. Then `decide` runs
 * as a command handler runs (loads, raises; on the loop thread, or on the
 * pool with a blocking store or flag), and again after a conflict, with the
 * same reply: the call is never made twice. Use it where a blocking handler
 * would hold a pool thread for the length of a remote call; a plain handler
 * for work of the store alone. docs/architecture.md, "Handlers that call out". */
typedef struct cqrs_call cqrs_call_t;
typedef cqrs_code_t (*cqrs_call_start_cb)(cqrs_call_t *call, const cqrs_command_t *cmd, void *data,
                                          cqrs_error_t *err);
typedef cqrs_code_t (*cqrs_call_decide_cb)(cqrs_context_t *ctx, const cqrs_command_t *cmd, const bson_t *reply,
                                           void *data, cqrs_error_t *err);
/* Registers the one handler of `type` as a call (as cqrs_dispatcher_register
 * does a handler; the same refusals, and CQRS_EINVAL for CQRS_HANDLER_BATCH).
 * `start` returning an error completes the command with it, and the call is
 * not made. */
CQRS_EXPORT cqrs_code_t cqrs_dispatcher_register_call(cqrs_dispatcher_t *d, const cqrs_command_type_t *type,
                                                      cqrs_call_start_cb start, cqrs_call_decide_cb decide,
                                                      void *data, unsigned flags, cqrs_error_t *err);
/* Completes a call started by `start`, once, from any thread: `reply` (may
 * be NULL: an empty document) is copied and handed to `decide`. Afterwards
 * `call` is gone. CQRS_EINVAL for NULL, CQRS_ESTATE for a call completed
 * already, CQRS_ENOMEM (the call stays: complete or fail it again). */
CQRS_EXPORT cqrs_code_t cqrs_call_complete(cqrs_call_t *call, const bson_t *reply);
/* Ends a call in failure, once, from any thread: the command completes with
 * `error` (its code; CQRS_EHANDLER when NULL or CQRS_OK), `decide` is not
 * called. A dispatcher's close waits for every call started: complete or
 * fail them (e.g. CQRS_ECLOSED) when the application stops. */
CQRS_EXPORT cqrs_code_t cqrs_call_fail(cqrs_call_t *call, const cqrs_error_t *error);
/* The command a call is for (borrowed, until the call completes). */
CQRS_EXPORT const cqrs_command_t *cqrs_call_command(const cqrs_call_t *call);

/* Sends a command; callable from any thread. Takes over `cmd` in every case.
 * The dispatcher keeps its loop alive while it has work it knows of; a
 * command sent from another thread while uv_run has already returned waits
 * for the next uv_run, unless the options ask for keep_alive.
 * Returns CQRS_OK and later calls `done` exactly once on the loop thread, or
 * returns an error (NULL arguments, CQRS_ECLOSED, CQRS_EINVALID_COMMAND for
 * an id starting with '~', reserved for process-manager steps) and never
 * calls `done`. Safe against a concurrent cqrs_dispatcher_close; calling it
 * after the close callback has run is a use after free.
 * A command with no handler completes with CQRS_ENO_HANDLER. */
CQRS_EXPORT cqrs_code_t cqrs_dispatcher_send(cqrs_dispatcher_t *d, cqrs_command_t *cmd, cqrs_done_cb done,
                                             void *data);

/* Sends a command and waits for its result, from a thread other than the
 * loop's (a worker thread of the application): the loop must be running.
 * Takes over `cmd`. Returns the result's code and fills `err` (may be NULL)
 * and `duplicate` (may be NULL). On the loop thread: CQRS_ESTATE at once.
 * Not for subscribers or handlers (on the thread pool or on the
 * dispatcher's own loops): a thread that waits there can starve the pool
 * or the loop that would run the command; process managers (process.h)
 * send steps without waiting. */
CQRS_EXPORT cqrs_code_t cqrs_dispatcher_execute(cqrs_dispatcher_t *d, cqrs_command_t *cmd, cqrs_error_t *err,
                                                bool *duplicate);

/* What an executed command came to, beyond its code: a cqrs_result_t's
 * figures, copied (the result itself lives only during `done`). */
typedef struct cqrs_execution {
  bool duplicate;   /* the command id had committed before: nothing appended */
  int64_t version;  /* of the changed aggregate after the command */
  size_t events;    /* events committed */
  int64_t position; /* global position of the last event committed (0: none): wait for projections to reach it */
  void *reserved[4];
} cqrs_execution_t;
/* cqrs_dispatcher_execute, filling `out` (may be NULL) with the figures.
 * For read-your-writes from a worker thread, see cqrs_dispatcher_execute_sync
 * (projection.h). */
CQRS_EXPORT cqrs_code_t cqrs_dispatcher_execute_ex(cqrs_dispatcher_t *d, cqrs_command_t *cmd, cqrs_execution_t *out,
                                                   cqrs_error_t *err);

/* Inside a handler: loads an aggregate (from the repository, once per id)
 * and tracks it; the framework commits its pending events when the handler
 * returns CQRS_OK. Only one aggregate may change per command. */
CQRS_EXPORT cqrs_code_t cqrs_context_load(cqrs_context_t *ctx, const cqrs_aggregate_type_t *type, const char *id,
                                          cqrs_aggregate_t **out, cqrs_error_t *err);
/* Inside a handler: sets the value of the result (copied). */
CQRS_EXPORT cqrs_code_t cqrs_context_set_value(cqrs_context_t *ctx, const bson_t *value, cqrs_error_t *err);
/* Inside a handler: the command being handled. */
CQRS_EXPORT const cqrs_command_t *cqrs_context_command(const cqrs_context_t *ctx);
/* Inside a handler: the time by the dispatcher's clock (UTC ms), what the
 * events it raises are stamped with; use it rather than cqrs_now_ms for a
 * time the domain records, so that a test's manual clock decides it. NULL:
 * the real clock's. */
CQRS_EXPORT int64_t cqrs_context_now_ms(const cqrs_context_t *ctx);

#define CQRS_SUBSCRIBE_BLOCKING 0x1u /* the handler blocks: deliver on the thread pool */

/* Subscribes a named event handler to `types` (NULL-terminated; NULL: all
 * types) from now on. Loop thread. Events come in position order, hence in
 * version order per aggregate. A duplicate name is CQRS_EDUPLICATE. */
CQRS_EXPORT cqrs_code_t cqrs_dispatcher_subscribe(cqrs_dispatcher_t *d, const char *name,
                                                  const cqrs_event_type_t *const *types, cqrs_event_handler_cb fn,
                                                  void *data, unsigned flags, cqrs_error_t *err);

/* Number of events dead-lettered so far, and the i-th of those kept in
 * memory, oldest first (borrowed; NULL past the end or when a sink was
 * given). Memory keeps the newest options.dead_letters_kept; the number
 * dropped to keep to that is cqrs_dispatcher_dead_letters_dropped. Loop
 * thread. */
CQRS_EXPORT size_t cqrs_dispatcher_dead_letter_count(const cqrs_dispatcher_t *d);
CQRS_EXPORT const cqrs_event_t *cqrs_dispatcher_dead_letter(const cqrs_dispatcher_t *d, size_t i,
                                                            const char **subscriber, const cqrs_error_t **error);
CQRS_EXPORT size_t cqrs_dispatcher_dead_letters_dropped(const cqrs_dispatcher_t *d);
/* The i-th dead letter kept in memory with its figures into `out` (its
 * pointers borrowed, as cqrs_dispatcher_dead_letter's); false past the end
 * or for NULL arguments. Loop thread. */
CQRS_EXPORT bool cqrs_dispatcher_dead_letter_info(const cqrs_dispatcher_t *d, size_t i, cqrs_dead_letter_t *out);

/* Number of commands sent and not yet completed. Any thread. */
CQRS_EXPORT size_t cqrs_dispatcher_pending(const cqrs_dispatcher_t *d);

/* The dispatcher's store. */
CQRS_EXPORT cqrs_store_t *cqrs_dispatcher_store(const cqrs_dispatcher_t *d);
CQRS_EXPORT uv_loop_t *cqrs_dispatcher_loop(const cqrs_dispatcher_t *d);

/* Closes: refuses new commands, completes those in flight, delivers what
 * subscribers still hold (back-offs cut short), closes its handles, frees
 * everything, then calls `cb` (may be NULL) on the loop thread. Loop thread;
 * a second call is CQRS_ECLOSED. */
CQRS_EXPORT cqrs_code_t cqrs_dispatcher_close(cqrs_dispatcher_t *d, cqrs_close_cb cb, void *data);

#ifdef __cplusplus
}
#endif
#endif
