/* The runtime core, in the manner of libuv's uv-common.h: what every part
 * of a dispatcher shares, and nothing of what any part does.
 *
 * A cqrs_dispatcher_t is a runtime: it owns the loop, the closing flag, the
 * lock that other threads take to hand work to the loop thread, the count
 * of pool jobs in flight, the count of open handles, and a list of
 * components (commands, events, leases, process managers), each with a
 * small lifecycle: closing, idle, release, close its handles, free. The
 * runtime closes them all and frees them once nothing is in flight and
 * every handle is closed. A component reaches another only through a port
 * the other has set here (a function and its object), never by calling
 * into it, so the files of framework/src call one another in one direction
 * (docs/architecture.md, "Layout"). */
#ifndef CQRS_RUNTIME_PRIVATE_H
#define CQRS_RUNTIME_PRIVATE_H

#include <pthread.h>

#include "base/cqrs-private.h"

typedef struct cqrs_dispatcher cqrs__runtime_t;
typedef struct cqrs__component cqrs__component_t;

typedef struct cqrs__component_ops {
  const char *name;
  /* The runtime closes: refuse new work, cut waits short. NULL: nothing. */
  void (*closing)(cqrs__component_t *c);
  /* Nothing of the component is in flight. NULL: always. */
  bool (*idle)(const cqrs__component_t *c);
  /* Every component is idle: let go of what is held elsewhere (a lease, a
   * thread); true once nothing is. NULL: nothing to let go of. */
  bool (*release)(cqrs__component_t *c);
  /* Close every handle with cqrs__runtime_close_handle. NULL: none. */
  void (*close_handles)(cqrs__component_t *c);
  /* Every handle of the runtime is closed: free the component. */
  void (*free)(cqrs__component_t *c);
} cqrs__component_ops_t;

struct cqrs__component {
  const cqrs__component_ops_t *ops;
  cqrs__runtime_t *rt;
  cqrs__component_t *next;
};

/* Ports: what one component offers the others, set by the component that
 * offers it. A NULL function means nobody offers it (yet). */

/* The command side (command/): sends a command the framework built, such
 * as a process manager's input or step (ids starting '~' allowed); and
 * registers the handler of a command type of the framework's own, which is
 * in no registry. */
typedef struct cqrs__command_port {
  void *self;
  cqrs_code_t (*send)(void *self, cqrs_command_t *cmd, cqrs_done_cb done, void *data);
  cqrs_code_t (*handle)(void *self, const cqrs_command_type_t *type, cqrs_command_handler_cb fn, void *data,
                        unsigned flags, cqrs_error_t *err);
} cqrs__command_port_t;

/* The event side (events/): the command side hands it the events its
 * commands committed (referenced; it takes what it keeps), and tells it when
 * the store holds commits it has not published: `from`..`up_to`, positions
 * the command side committed (0, 0: none known). `kick` returns true when
 * the feed reads them back from the store (then each comes through the seen
 * port). */
typedef struct cqrs__publish_port {
  void *self;
  void (*committed)(void *self, cqrs__event_vec_t *events);
  bool (*kick)(void *self, int64_t committed_from, int64_t committed_up_to);
} cqrs__publish_port_t;

/* The command side again: the event feed read `e` from the store (another
 * writer's commit, or one of ours read back): cached states of its
 * aggregate older than it go. Loop thread. */
typedef struct cqrs__seen_port {
  void *self;
  void (*seen)(void *self, const cqrs_event_t *e);
} cqrs__seen_port_t;

struct cqrs_dispatcher {
  uv_loop_t *loop;
  cqrs_clock_t *clock; /* never NULL: the options' or the real one */
  uv_thread_t loop_thread;
  const cqrs_registry_t *reg;
  cqrs_store_t *store;
  _Atomic bool closing;
  /* Taken by other threads to hand work to the loop thread, and by close
   * to set `closing`: what was handed over before is seen by the close. */
  uv_mutex_t lock;
  _Atomic size_t senders; /* threads inside a call from outside: freeing waits for them */
  size_t jobs;            /* pool jobs in flight; loop thread */
  int handles;            /* handles open; loop thread */
  bool closing_handles;
  cqrs_close_cb close_cb;
  void *close_data;
  cqrs__component_t *components; /* the last added first */

  cqrs__command_port_t command;
  cqrs__publish_port_t publish;
  cqrs__seen_port_t seen;

  /* The components the public calls of a module look for; NULL until made. */
  struct cqrs__commands *commands;
  struct cqrs__events *events;
  struct cqrs__leasing *leasing;
  struct cqrs__process *procs; /* a list: the process types running here */
};

/* Sets up a runtime on `loop` (called on the loop's thread); `clock` NULL:
 * the real one. */
cqrs_code_t cqrs__runtime_init(cqrs__runtime_t *rt, uv_loop_t *loop, cqrs_clock_t *clock, const cqrs_registry_t *reg,
                               cqrs_store_t *store, cqrs_error_t *err);
/* Undoes cqrs__runtime_init for a runtime that never ran (a constructor's
 * failure): no component, no handle. */
void cqrs__runtime_destroy(cqrs__runtime_t *rt);
/* Frees a runtime whose components are made but none has a handle on the
 * loop yet (a constructor's failure): each lets go of what it holds, is
 * freed, then the runtime. */
void cqrs__runtime_abandon(cqrs__runtime_t *rt);
void cqrs__runtime_add(cqrs__runtime_t *rt, cqrs__component_t *c, const cqrs__component_ops_t *ops);

static inline bool cqrs__runtime_closing(const cqrs__runtime_t *rt) {
  return atomic_load_explicit(&rt->closing, memory_order_relaxed);
}
bool cqrs__runtime_on_loop(const cqrs__runtime_t *rt);

/* A handle of a component: counted while open, closed through the runtime,
 * which finishes the close once the last one is. */
void cqrs__runtime_handle_opened(cqrs__runtime_t *rt);
void cqrs__runtime_close_handle(cqrs__runtime_t *rt, uv_handle_t *h);

/* A timer of the framework (a back-off, a retry, a poll, a lease's tick, a
 * deadline, a time-out): a libuv timer that follows a clock. On the real
 * clock it is the libuv timer and nothing more. On a manual clock a start
 * sets an alarm on the clock instead, and the libuv timer starts (with 0
 * ms, so it fires at the loop's next turn) once cqrs_clock_advance passes
 * the due time; a repeating one sets its alarm again when it fires. While
 * it waits for the clock its handle is not active, so it does not keep
 * uv_run going: a test advances the clock and runs the loop again. Once
 * due it keeps the loop running until it has fired, even if its handle is
 * unreferenced (a poll, a lease's tick): an advance followed by uv_run
 * fires whatever came due. (An owner that restarts an unreferenced timer
 * sets its reference before the start, as the process runtime does.)
 * `handle` is first, and its `data` is the owner's: callbacks get
 * &timer->handle, as from a plain libuv timer. Loop thread. */
typedef struct cqrs__timer {
  uv_timer_t handle;
  cqrs_clock_t *clock; /* never NULL */
  cqrs__alarm_t alarm;
  uv_timer_cb cb;
  uint64_t repeat;
  bool held; /* referenced by its alarm's ring until it fires */
} cqrs__timer_t;
/* uv_timer_init on the runtime's loop, following `clock` (NULL: the
 * runtime's), with `data` in its handle. The caller counts the handle
 * (cqrs__runtime_handle_opened) as for any other. */
void cqrs__timer_init(cqrs__runtime_t *rt, cqrs__timer_t *t, cqrs_clock_t *clock, void *data);
/* uv_timer_start and uv_timer_stop, on the timer's clock. */
void cqrs__timer_start(cqrs__timer_t *t, uv_timer_cb cb, uint64_t ms, uint64_t repeat);
void cqrs__timer_stop(cqrs__timer_t *t);
/* Stops it and closes its handle through the runtime. */
void cqrs__timer_close(cqrs__runtime_t *rt, cqrs__timer_t *t);
/* The loop's monotonic time in ms on the runtime's clock: uv_now (cached
 * at the loop's turn, as libuv's timers count) on the real clock. */
static inline uint64_t cqrs__runtime_now(const cqrs__runtime_t *rt) {
  return rt->clock->manual ? cqrs__clock_mono(rt->clock) : uv_now(rt->loop);
}

/* Starts closing (loop thread): `closing` set under the lock, components
 * told (the last added first), then cqrs__runtime_maybe_closed. `cb` runs
 * once everything is freed. CQRS_ECLOSED when already closing. */
cqrs_code_t cqrs__runtime_close(cqrs__runtime_t *rt, cqrs_close_cb cb, void *data);
/* While closing, a component that may have become idle calls this: once
 * no job is in flight and every component is idle and has released what
 * it holds, the handles close, then everything is freed. */
void cqrs__runtime_maybe_closed(cqrs__runtime_t *rt);

/* A job on libuv's thread pool: `work` runs on a pool thread, `done` on the
 * loop thread (`cancelled`: it never ran), counted in rt->jobs meanwhile.
 * A submission that fails is an error the caller sees, and neither
 * function runs. `done` may free the job. */
typedef struct cqrs__job cqrs__job_t;
struct cqrs__job {
  uv_work_t req;
  cqrs__runtime_t *rt;
  void (*work)(cqrs__job_t *job);
  void (*done)(cqrs__job_t *job, bool cancelled);
};
cqrs_code_t cqrs__job_submit(cqrs__runtime_t *rt, cqrs__job_t *job, void (*work)(cqrs__job_t *),
                             void (*done)(cqrs__job_t *, bool), cqrs_error_t *err);

#endif
