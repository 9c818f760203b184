/* Dispatcher internals shared by dispatcher.c (commands) and bus.c (events). */
#ifndef CQRS_DISPATCHER_PRIVATE_H
#define CQRS_DISPATCHER_PRIVATE_H


#include <pthread.h>

#include "cqrs-uthash.h"
#include "metrics-private.h"

typedef struct handler {
  const cqrs_command_type_t *type; /* key */
  cqrs_command_handler_cb fn;
  void *data;
  unsigned flags;
  UT_hash_handle hh;
} handler_t;

typedef struct request request_t;

/* Handlers that run at once on the same aggregate take the same lock, so a
 * dispatcher does not make conflicts with itself. */
#define CQRS_STRIPES 256

/* SUB_STANDBY: under a lease another process holds (lease.c). */
typedef enum sub_state { SUB_LOADING, SUB_CATCHING_UP, SUB_LIVE, SUB_STANDBY } sub_state_t;

/* A projection's lease (lease.c); `on` is false without leases. */
typedef struct sub_lease {
  bool on;
  bool held;
  bool busy;         /* an acquire, renew or release in flight */
  bool failing;      /* the last call failed (logged once) */
  int64_t token;     /* while held: fences its checkpoint writes */
  uint64_t deadline; /* uv_hrtime in ms: delivering stops then unless renewed */
  uint64_t renew_at; /* the same clock: the next renewal is due */
  void (*changed)(void *data, bool held); /* a process manager hears of it; may be NULL */
} sub_lease_t;

/* A subscriber: an event handler, or a projection (one with checkpoints). */
typedef struct sub {
  cqrs_dispatcher_t *d;
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
  unsigned attempts; /* failed deliveries of the queue's head */
  bool busy;    /* pool work in flight */
  bool waiting; /* back-off timer running */
  bool running; /* inside sub_run */
  uint64_t retries; /* failed deliveries, for metrics */
  uint64_t dead_letters; /* events it gave up on, for metrics */
  bool async;   /* the handler completes later (CQRS__PENDING) */
  int64_t (*checkpoint)(void *data, int64_t handled); /* NULL: the position handled */
  bool cp_blocking, cp_saving; /* a checkpoint save on the pool, for async subscribers */
  bool cp_due; /* a save waits for the loop's check phase (bus.c, feed_done) */
  sub_lease_t lease;
  uv_timer_t timer;
} sub_t;

typedef struct dead_letter {
  const cqrs_event_t *event;
  char subscriber[CQRS_NAME_MAX];
  cqrs_error_t error;
} dead_letter_t;

struct cqrs_dispatcher {
  uv_loop_t *loop;
  uv_thread_t loop_thread;
  const cqrs_registry_t *reg;
  cqrs_store_t *store;
  cqrs_dispatcher_options_t opts;
  handler_t *handlers;
#define HANDLER_MEMO 16
  handler_t *handler_memo[HANDLER_MEMO]; /* recent look-ups, by type address; loop thread */
  bool store_blocking;
  pthread_mutex_t stripes[CQRS_STRIPES]; /* plain mutexes: taken by every command */

  uv_async_t async;
  uv_mutex_t inbox_lock;
  request_t *inbox_head, *inbox_tail; /* from other threads */
  request_t *local_head, *local_tail; /* from the loop thread */
  request_t *free_requests;           /* loop thread only */
  size_t nfree;
  _Atomic size_t pending;       /* commands sent from other threads, not completed */
  _Atomic size_t pending_local; /* from the loop thread: only it writes, no locked add */
  _Atomic bool closing;
  _Atomic size_t senders; /* threads inside cqrs_dispatcher_send: freeing waits for them */
  int handles_open;
  cqrs_close_cb close_cb;
  void *close_data;
  bool closed_handles;

  /* Event feed: what has been fanned out to subscribers. A blocking
   * store's head is read on the pool (bus.c, read_head): until it is known
   * nothing is published, and this dispatcher's commits meanwhile are
   * remembered (from head_floor + 1 to committed_max), to be published once
   * it is. */
  int64_t feed_pos;
  bool head_known;
  int64_t head_floor, committed_max;
  bool feed_busy, feed_again; /* feed_busy: a read of the feed or of the head in flight */
  uv_timer_t feed_timer;  /* retries a read of the store that failed */
  unsigned feed_failures; /* reads failed in a row */
  size_t work_inflight; /* pool work of subscribers and the feed */
  sub_t **subs;
  size_t nsubs;
  uv_timer_t poll;
  bool poll_on;
  uv_check_t cp_check; /* saves the checkpoints of idle subscribers once per loop iteration */
  bool cp_check_on;

  /* Dead letters kept in memory (no sink): a ring of dead_cap entries
   * from dead_head, grown up to opts.dead_letters_kept while it has not
   * wrapped; past that the oldest is dropped. */
  dead_letter_t *dead;
  size_t ndead, dead_cap, dead_head, dead_total, dead_dropped;

  cqrs__mw_chain_t mw; /* middleware around commands (metrics.c) */
  struct cqrs__process **procs; /* process managers running here (process.c) */
  size_t nprocs;

  /* Read-your-writes waiters (wait.c): on the loop thread, and handed over
   * from other threads under the inbox lock. */
  struct cqrs__waiter *waiters, *wait_inbox;
  uv_timer_t wait_timer;

  struct cqrs__leasing *leasing; /* lease.c; NULL: every projection runs here */
  struct cqrs__cache *cache; /* NULL: off */
  cqrs__agg_pool_t free_aggs; /* loop thread only */

  /* Loops (dispatcher.c, "Several loops" in docs/architecture.md). The
   * home dispatcher (the one the application made) owns nloops - 1 members,
   * each a dispatcher on a loop and thread of its own; it hands a command to
   * the member owning its aggregate and finishes it when it comes back. */
  unsigned nloops, index;     /* index: 0 on the home dispatcher */
  unsigned home_share;        /* of 1024 hashes, those the home owns */
  cqrs_dispatcher_t *home;    /* on a member: its home; NULL on the home */
  struct cqrs__member *members; /* home only: nloops entries, [0] unused */
  request_t *returns_head, *returns_tail; /* finished by members; inbox lock */
  size_t away;                /* home: commands out on members; loop thread */
  request_t *batch_head, *batch_tail; /* member: run, not handed back yet */
  size_t batch_n;
  _Atomic bool stop;          /* member: the home asks it to close */
};

/* bus.c */
/* Reads the store for what the feed has not published. `from`..`up_to`:
 * positions this dispatcher just committed (0, 0: none). Before the head
 * is known it reads the head instead (with a blocking store). */
void cqrs__feed_kick(cqrs_dispatcher_t *d, int64_t committed_from, int64_t committed_up_to);
/* Publishes events this dispatcher just committed, without reading them
 * back, when they follow what the feed has published; else kicks the feed. */
void cqrs__feed_committed(cqrs_dispatcher_t *d, cqrs__event_vec_t *events);
void cqrs__bus_init(cqrs_dispatcher_t *d);   /* its handles, on the dispatcher's loop */
void cqrs__bus_close(cqrs_dispatcher_t *d);  /* cut back-offs short */
bool cqrs__bus_idle(const cqrs_dispatcher_t *d);
void cqrs__bus_close_handles(cqrs_dispatcher_t *d, uv_close_cb cb);
void cqrs__bus_free(cqrs_dispatcher_t *d);
/* Subscribers whose handler completes later: it returns CQRS__PENDING and
 * the dispatcher calls cqrs__sub_complete once, on the loop thread.
 * `checkpoint` (may be NULL) gives the position to save, at most the one
 * handled (a process manager holds it back to the oldest open instance). */
#define CQRS__PENDING ((cqrs_code_t)(CQRS_CODE_COUNT + 1))
typedef int64_t (*cqrs__checkpoint_fn)(void *data, int64_t handled);
cqrs_code_t cqrs__projection_start_async(cqrs_dispatcher_t *d, const cqrs_projection_def_t *def,
                                         cqrs_checkpoints_t *cp, cqrs__checkpoint_fn checkpoint, sub_t **out,
                                         cqrs_error_t *err);
void cqrs__sub_complete(sub_t *s, const cqrs_error_t *err);
/* bus.c: the lease of `s` was acquired (load its checkpoint, catch up) or
 * lost (stop delivering, drop what it holds). Loop thread. */
void cqrs__sub_lease_acquired(sub_t *s);
void cqrs__sub_lease_lost(sub_t *s);

/* lease.c */
void cqrs__lease_sub_added(sub_t *s);  /* starts trying to acquire */
bool cqrs__lease_valid(sub_t *s);      /* held and in time; else loses it */
/* Held and in time, with no side effect: for code that must not see the
 * subscriber's state change under it (a process manager walking its open
 * instances). */
bool cqrs__lease_in_time(const sub_t *s);

/* dispatcher.c: a commit the feed read from the store; its aggregate's
 * older cached states go (the owner loop's too). Home's loop thread. */
void cqrs__dispatcher_seen(cqrs_dispatcher_t *d, const cqrs_event_t *e);
void cqrs__lease_give_up(sub_t *s, const cqrs_error_t *err); /* a checkpoint write fenced off, or no checkpoint */
/* At close, once everything else is idle: releases what is held; true when
 * nothing is left to release or in flight. */
bool cqrs__leases_closed(cqrs_dispatcher_t *d);
void cqrs__leases_close_handles(cqrs_dispatcher_t *d, uv_close_cb cb);
void cqrs__leases_free(cqrs_dispatcher_t *d);
size_t cqrs__leases_held(const cqrs_dispatcher_t *d);

/* process.c: the outcome of a step is the first one recorded under its id:
 * a refusal (rejection or permanent error) is recorded in stream
 * "cqrs.step"/<id>, so that a later send of the same id, after a crash or
 * from another process, is refused the same way even if it would now be
 * accepted; a duplicate that was a refusal is that refusal. May change
 * *rc, `res` and `err`. On the thread that ran the handler. */
void cqrs__step_settle(cqrs_store_t *store, const cqrs_command_t *cmd, cqrs_code_t *rc, cqrs_result_t *res,
                       cqrs_error_t *err);
bool cqrs__code_transient(const cqrs_error_t *err); /* retried later, not an outcome */

/* process.c: process managers attached to the dispatcher. */
typedef struct cqrs__process cqrs__process_t;
bool cqrs__process_idle(const cqrs__process_t *p);
void cqrs__process_closing(cqrs__process_t *p);
void cqrs__process_close_handles(cqrs__process_t *p, uv_close_cb cb);
void cqrs__process_free(cqrs__process_t *p);

/* wait.c */
void cqrs__waiters_check(cqrs_dispatcher_t *d);  /* after subscribers moved; loop thread */
void cqrs__waiters_adopt(cqrs_dispatcher_t *d);  /* takes the inbox's waiters; inbox lock held */
void cqrs__waiters_close(cqrs_dispatcher_t *d);  /* completes every waiter with CQRS_ECLOSED */

/* dispatcher.c */
void cqrs__dispatcher_maybe_closed(cqrs_dispatcher_t *d);
/* Sends a command the framework built (a process step or input): reserved
 * ids allowed. */
cqrs_code_t cqrs__dispatcher_send_internal(cqrs_dispatcher_t *d, cqrs_command_t *cmd, cqrs_done_cb done,
                                           void *data);

#endif
