/* The event side of a dispatcher: one component of its runtime. One feed
 * reads committed events from the store in position order and fans them
 * out; each subscriber has its own queue, so a failing one (retried with
 * back-off, then dead-lettered) holds up nobody else. Projections first
 * catch up from their checkpoint by reading the store, then join the feed.
 *
 *   feed.c         the component; the feed; fan-out; checkpoints of idle subscribers
 *   projection.c   subscribing, projections, leases, what a subscriber shows
 *   control.c      an operator's controls, read from the checkpoints: pause, reset, skip, replay
 *   startup.c      a projection's checkpoint load, its life under a lease
 *   subscriber.c   one subscriber: its queue, delivery, retries, catch-up, checkpoints
 *   parked.c       poison events a projection set aside, retried off its path; back-off;
 *                  an operator's skip
 *   deadletters.c  events subscribers gave up on
 *   wait.c         waiting on the loop: until projections reach a position, or a
 *                  condition of a process manager holds (cqrs__wait_until)
 *
 * Calls go down that list. */
#ifndef CQRS_EVENTS_PRIVATE_H
#define CQRS_EVENTS_PRIVATE_H

#include "lease/lease-private.h"
#include "runtime/runtime-private.h"

typedef struct cqrs__events cqrs__events_t;

/* A subscriber's life: loading its checkpoint, catching up from it, live
 * on the feed, or standing by while another process holds its lease. */
typedef enum sub_state { SUB_LOADING, SUB_CATCHING_UP, SUB_LIVE, SUB_STANDBY } sub_state_t;

/* An event a projection set aside (parked.c): its handler failed on it
 * (a poison event), or it waits behind one of its own stream. Delivered
 * off the queue's path, retried with back-off, then dead-lettered, while
 * the events of other streams flow. */
typedef struct parked {
  const cqrs_event_t *event; /* a reference */
  unsigned attempts;         /* failed deliveries (0: not tried yet) */
  uint64_t due;              /* cqrs__runtime_now at which it is tried (again) */
  int64_t first_failed_at;   /* wall time (the runtime's clock) of its first failure (0: none yet) */
  int64_t request;           /* an operator's replay it answers (0: none): no hold on the checkpoint */
  cqrs_error_t error;        /* its last failure */
} parked_t;

/* What a projection does of its control record (control.c). Loop thread. */
typedef struct sub_ctl {
  bool paused;       /* the operator's pause, as last read: nothing is delivered */
  bool resetting;    /* a reset waits for what is in flight: nothing is delivered */
  int64_t reset_to;
  int64_t skip_at;   /* the event to dead-letter unhandled when it comes (0: none) */
  int64_t replay_at; /* the event to read and deliver again (0: none) */
  int64_t busy;      /* the request being carried out (0: none) */
  int64_t done;      /* the newest request carried out */
  char result[CQRS_PROJECTION_RESULT_MAX];
  bool report_due;   /* something to report before the next tick */
} sub_ctl_t;

/* At most this many events set aside per projection; past it a failing
 * event is retried in place again (its queue waits). */
#define CQRS__PARK_MAX 1024

/* A subscriber: an event handler, or a projection (one with checkpoints). */
typedef struct sub {
  cqrs__events_t *ev;
  char name[CQRS_NAME_MAX];
  const cqrs_event_type_t **types; /* NULL: all */
  cqrs_event_handler_cb fn;
  void *data;
  bool blocking;
  cqrs_checkpoints_t *cp; /* projections only */
  sub_state_t state;
  int64_t position; /* last event handled (or dead-lettered) */
  int64_t read_pos; /* catch-up: last event read into the queue */
  int64_t saved;    /* last checkpoint saved */
  /* Events waiting for the handler, oldest first. */
  const cqrs_event_t **q;
  size_t q_head, q_len, q_cap;
  unsigned attempts;     /* failed deliveries of the queue's head */
  int64_t first_failed_at; /* wall time (the runtime's clock) of the head's first failure */
  bool busy;             /* pool work in flight */
  bool waiting;          /* back-off timer running */
  bool running;          /* inside cqrs__sub_run */
  uint64_t retries;      /* failed deliveries, for metrics */
  uint64_t dead_letters; /* events it gave up on, for metrics */
  bool async;            /* the handler completes later (CQRS__PENDING) */
  int64_t (*checkpoint)(void *data, int64_t handled); /* NULL: the position handled */
  bool cp_blocking, cp_saving; /* a checkpoint save on the pool, for async subscribers */
  bool cp_due; /* a save waits for the loop's check phase (feed.c) */
  bool cp_hold; /* a blocking subscriber's save failed: none of its own until a back-off passed */
  /* Events set aside (parked.c), in position order; the one being
   * delivered (on the pool, or by an async handler), NULL when none. */
  parked_t *park;
  size_t npark, park_cap;
  const cqrs_event_t *park_inflight;
  bool park_orphan;     /* park_inflight was let go of: unreferenced when it comes back */
  int64_t park_ceiling; /* after events set aside were let go of: the checkpoint stays before them */
  sub_ctl_t ctl;
  cqrs__lease_t lease; /* `on` false without leases */
  cqrs__timer_t timer;
} sub_t;

typedef struct dead_letter {
  const cqrs_event_t *event;
  char subscriber[CQRS_NAME_MAX];
  cqrs_error_t error;
  unsigned attempts;
  int64_t first_failed_at;
} dead_letter_t;

struct cqrs__events {
  cqrs__component_t comp;
  cqrs__runtime_t *rt;
  unsigned retry_attempts;
  uint64_t retry_base_ms, retry_cap_ms;
  cqrs_dead_letter_cb dead_letter; /* NULL: kept in memory */
  cqrs_dead_letter_info_cb dead_letter_info; /* called instead of dead_letter when set */
  void *dead_letter_data;
  size_t dead_letters_kept;

  uint64_t poll_ms;
  bool attached; /* its handles are on the loop (cqrs__events_attach) */

  /* The feed: what has been fanned out to subscribers. A blocking store's
   * head is read on the pool (feed.c, read_head): until it is known nothing
   * is published, and this dispatcher's commits meanwhile are remembered
   * (from head_floor + 1 to committed_max), to be published once it is. */
  int64_t feed_pos;
  bool head_known;
  int64_t head_floor, committed_max;
  bool feed_busy, feed_again; /* feed_busy: a read of the feed or of the head in flight */
  cqrs__timer_t feed_timer; /* retries a read of the store that failed */
  unsigned feed_failures; /* reads failed in a row */
  sub_t **subs;
  size_t nsubs;
  cqrs__timer_t poll;
  bool poll_on;
  uv_check_t cp_check; /* saves the checkpoints of idle subscribers once per loop iteration */
  bool cp_check_on;
  cqrs__timer_t park_timer; /* the nearest retry of an event set aside (parked.c) */
  bool park_armed;           /* park_timer is started (on a manual clock its handle waits inactive) */

  /* Projection controls (control.c): their records read every control_ms. */
  uint64_t control_ms;
  cqrs__timer_t control_timer;
  bool control_on, control_busy, control_again;
  char owner[CQRS_NAME_MAX]; /* host:pid, for reports without leases */

  /* Dead letters kept in memory (no sink): a ring of dead_cap entries from
   * dead_head, grown up to dead_letters_kept while it has not wrapped; past
   * that the oldest is dropped. */
  dead_letter_t *dead;
  size_t ndead, dead_cap, dead_head, dead_total, dead_dropped;

  /* Read-your-writes waiters (wait.c): on the loop thread, and handed over
   * from other threads under the runtime's lock through wait_async. */
  struct cqrs__waiter *waiters, *wait_inbox;
  cqrs__timer_t wait_timer;
  uv_async_t wait_async;
};

/* feed.c: the event side of runtime `rt`, with the options that are its
 * own; it reads a non-blocking store's head (a blocking one's is read on the
 * pool once the loop runs, retried until it comes). Then attached to the loop (its handles),
 * the last step of making a dispatcher, as cqrs__commands_attach. */
cqrs_code_t cqrs__events_new(cqrs__runtime_t *rt, const cqrs_dispatcher_options_t *opts, cqrs_error_t *err);
cqrs_code_t cqrs__events_attach(cqrs__events_t *ev, cqrs_error_t *err);

/* The queue of `s`: its i-th event, and letting go of the oldest. */
static inline const cqrs_event_t *cqrs__q_peek(const sub_t *s, size_t i) { return s->q[(s->q_head + i) % s->q_cap]; }
static inline void cqrs__q_pop(sub_t *s) {
  cqrs_event_unref(s->q[s->q_head]);
  s->q_head = (s->q_head + 1) % s->q_cap;
  s->q_len--;
}

/* subscriber.c */
/* Reads up to `limit` events of the store from `from` into `out`; no room
 * for all of them is a failure (retried), not the end of what there is. Any thread. */
cqrs_code_t cqrs__events_read_batch(cqrs_store_t *store, int64_t from, size_t limit, cqrs__event_vec_t *out,
                                    cqrs_error_t *err);
bool cqrs__sub_wants(const sub_t *s, const cqrs_event_t *e);
bool cqrs__sub_push(sub_t *s, const cqrs_event_t *e); /* queues a reference; false: no room */
/* Calls the handler of `s`, which wants `e`. */
cqrs_code_t cqrs__sub_deliver(sub_t *s, const cqrs_event_t *e, cqrs_error_t *err);
/* The head of the queue failed with `error`: retry later, or give up on it.
 * True when the caller may go on with the queue. */
bool cqrs__sub_failed(sub_t *s, const cqrs_error_t *error);
/* Moves a subscriber forward as far as it can without waiting. */
void cqrs__sub_run(sub_t *s);
void cqrs__sub_save_checkpoint(sub_t *s);
/* Nothing is delivered: paused or resetting by an operator's request. */
static inline bool cqrs__sub_held(const sub_t *s) { return s->ctl.paused || s->ctl.resetting; }
/* Loads the checkpoint of `s` (SUB_LOADING), then catches up: inline, or
 * on the pool for blocking checkpoints. Under a lease, a failure lets it go. */
void cqrs__sub_load_checkpoint(sub_t *s);
/* The load of a blocking checkpoint store, on the pool: an error when it
 * cannot be queued (nothing started). */
cqrs_code_t cqrs__sub_queue_checkpoint_load(sub_t *s, cqrs_error_t *err);
void cqrs__sub_start_catchup(sub_t *s, int64_t position);
/* Runs `s` under `leasing`: standing by until it holds its lease. */
void cqrs__sub_lease(sub_t *s, cqrs__leasing_t *leasing);
const cqrs_event_t *cqrs__sub_head(const sub_t *s); /* the oldest queued; NULL: none */
void cqrs__sub_free(sub_t *s);
/* Subscribers whose handler completes later: it returns CQRS__PENDING and
 * the process manager calls cqrs__sub_complete once, on the loop thread. */
#define CQRS__PENDING ((cqrs_code_t)(CQRS_CODE_COUNT + 1))
void cqrs__sub_complete(sub_t *s, const cqrs_error_t *err);

/* parked.c */
/* The back-off before try `attempts` + 1: retry_base_ms doubled each time, at most retry_cap_ms. */
uint64_t cqrs__events_backoff(const cqrs__events_t *ev, unsigned attempts);
/* Whether an event of the stream of `e` is set aside: `e` must wait behind it. */
bool cqrs__park_holds(const sub_t *s, const cqrs_event_t *e);
/* Sets `e` aside (a reference taken): after its handler failed with
 * `error` (due after a back-off), or, `error` NULL, behind an event of its
 * stream. False when there is no room (CQRS__PARK_MAX, memory). */
bool cqrs__park_add(sub_t *s, const cqrs_event_t *e, const cqrs_error_t *error);
/* The next event set aside to deliver now (the first of its stream, due,
 * or any first at close, when nothing waits); NULL: none. */
const cqrs_event_t *cqrs__park_next(sub_t *s);
/* A delivery of `e`, set aside, came to `err` (NULL or CQRS_OK: handled):
 * it goes (the next of its stream is due at once), or is due again after
 * a back-off, or is dead-lettered after its attempts. */
void cqrs__park_resolved(sub_t *s, const cqrs_event_t *e, const cqrs_error_t *err);
/* The highest position a checkpoint of `s` may take: before its oldest
 * event set aside (INT64_MAX: none). */
static inline int64_t cqrs__park_floor(const sub_t *s) {
  for (size_t i = 0; i < s->npark; i++) {
    int64_t floor = s->park[i].event->position - 1;
    if (!s->park[i].request) return floor < s->park_ceiling ? floor : s->park_ceiling;
  }
  return s->park_ceiling;
}
/* Request `request` (0: none) is carried out, with what came of it: the
 * projection reports it (control.c) at once. */
void cqrs__ctl_answer(sub_t *s, int64_t request, const char *fmt, ...) CQRS_PRINTF(3, 4);
/* Sets `e` aside for an operator's replay (request `request`), due at once. */
bool cqrs__park_replay(sub_t *s, const cqrs_event_t *e, int64_t request);
/* Dead-letters the event set aside at `position` now (`why`), unless it is
 * on its way; true when it did. */
bool cqrs__park_skip(sub_t *s, int64_t position, const cqrs_error_t *why);
/* Lets go of every event set aside and of the hold on the checkpoint (a reset). */
void cqrs__park_clear(sub_t *s);
/* Lets go of the queue; a live or catching-up subscriber catches up again
 * from its position. Nothing in flight. */
void cqrs__sub_let_go(sub_t *s);
/* Dead-letters the event ctl.skip_at now if it is held (set aside, or the
 * queue's head while nothing is in flight), answering ctl.busy; true when
 * it did. */
bool cqrs__sub_skip_now(sub_t *s);
/* Lets go of every event set aside (a lost lease, a store gone at close):
 * read again from the checkpoint, which never passed them. */
void cqrs__park_drop(sub_t *s);
/* When the next event set aside of a subscriber that is neither busy nor
 * in a back-off is due (cqrs__runtime_now; UINT64_MAX: none). */
uint64_t cqrs__park_next_due(const cqrs__events_t *ev);

/* deadletters.c: `s` gave up on `e` after `attempts` failed deliveries, the
 * first at `first_failed_at` (wall ms): to the sink, or kept in memory. */
void cqrs__dead_letter(sub_t *s, const cqrs_event_t *e, const cqrs_error_t *error, unsigned attempts,
                       int64_t first_failed_at);
void cqrs__dead_letters_free(cqrs__events_t *ev);

/* control.c: reads the records, on the pool when the checkpoints or the
 * store block; closing stops it. */
void cqrs__control_attach(cqrs__events_t *ev);
void cqrs__control_close_handles(cqrs__events_t *ev);
/* Reports now (a request was carried out), not at the next tick. */
void cqrs__control_kick(cqrs__events_t *ev);

/* wait.c */
cqrs_code_t cqrs__waiters_init(cqrs__events_t *ev, cqrs_error_t *err); /* its handles */
void cqrs__waiters_check(cqrs__events_t *ev); /* after subscribers moved; loop thread */
void cqrs__waiters_close(cqrs__events_t *ev); /* completes every waiter with CQRS_ECLOSED */
void cqrs__waiters_close_handles(cqrs__events_t *ev);
/* Something a waiter may be waiting for changed: its check runs at the
 * loop's next turn (never inside the call). Loop thread. */
void cqrs__waiters_kick(cqrs__events_t *ev);
/* Waiting for a condition of another part of the runtime: `check(d, name)`
 * runs on the loop thread and returns CQRS_OK (done), an error that ends
 * the wait with it (e.g. CQRS_ENOT_FOUND), or CQRS_CODE_COUNT (not yet);
 * who changes what it looks at calls cqrs__waiters_kick. The forms of
 * cqrs_projection_wait and _wait_sync: `name` is copied (at most
 * CQRS_NAME_MAX - 1 bytes: check longer ones before); the caller has checked
 * `d`, `cb`, and that `d` is not closing (the loop form). */
typedef cqrs_code_t (*cqrs__wait_check_fn)(const cqrs_dispatcher_t *d, const char *name);
cqrs_code_t cqrs__wait_until(cqrs_dispatcher_t *d, cqrs__wait_check_fn check, const char *name, uint64_t timeout_ms,
                             cqrs_wait_cb cb, void *data);
cqrs_code_t cqrs__wait_until_sync(cqrs_dispatcher_t *d, cqrs__wait_check_fn check, const char *name,
                                  uint64_t timeout_ms);

/* projection.c: process managers' subscribers. `checkpoint` (may be NULL)
 * gives the position to save, at most the one handled (a process manager
 * holds it back to the oldest open instance). */
typedef int64_t (*cqrs__checkpoint_fn)(void *data, int64_t handled);
cqrs_code_t cqrs__projection_start_async(cqrs_dispatcher_t *d, const cqrs_projection_def_t *def,
                                         cqrs_checkpoints_t *cp, cqrs__checkpoint_fn checkpoint, sub_t **out,
                                         cqrs_error_t *err);

/* What a subscriber shows of itself, for metrics. Loop thread. */
typedef struct cqrs__sub_figures {
  const char *name;
  int64_t position;          /* last event handled or dead-lettered */
  int64_t handled_up_to;     /* position, or the feed's when it waits for nothing */
  int64_t oldest_pending_ts; /* timestamp of the oldest event queued, 0 when none */
  uint64_t retries;          /* failed deliveries */
  uint64_t dead_letters;     /* events given up on */
  size_t parked;             /* events set aside (a poison event, those behind it in its stream) */
} cqrs__sub_figures_t;
/* Fills the i-th subscriber's figures; false past the end. */
bool cqrs__events_sub_figures(const cqrs_dispatcher_t *d, size_t i, cqrs__sub_figures_t *out);
int64_t cqrs__events_feed_position(const cqrs_dispatcher_t *d);

#endif
