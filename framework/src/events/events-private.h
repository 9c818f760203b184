/* The event side of a dispatcher: one component of its runtime. One feed
 * reads committed events from the store in position order and fans them
 * out; each subscriber has its own queue, so a failing one (retried with
 * back-off, then dead-lettered) holds up nobody else. Projections first
 * catch up from their checkpoint by reading the store, then join the feed.
 *
 *   feed.c         the component; the feed; fan-out; checkpoints of idle subscribers
 *   projection.c   subscribing, projections, leases, what a subscriber shows
 *   subscriber.c   one subscriber: its queue, delivery, retries, catch-up, checkpoints
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
  bool busy;             /* pool work in flight */
  bool waiting;          /* back-off timer running */
  bool running;          /* inside cqrs__sub_run */
  uint64_t retries;      /* failed deliveries, for metrics */
  uint64_t dead_letters; /* events it gave up on, for metrics */
  bool async;            /* the handler completes later (CQRS__PENDING) */
  int64_t (*checkpoint)(void *data, int64_t handled); /* NULL: the position handled */
  bool cp_blocking, cp_saving; /* a checkpoint save on the pool, for async subscribers */
  bool cp_due; /* a save waits for the loop's check phase (feed.c) */
  cqrs__lease_t lease; /* `on` false without leases */
  cqrs__timer_t timer;
} sub_t;

typedef struct dead_letter {
  const cqrs_event_t *event;
  char subscriber[CQRS_NAME_MAX];
  cqrs_error_t error;
} dead_letter_t;

struct cqrs__events {
  cqrs__component_t comp;
  cqrs__runtime_t *rt;
  unsigned retry_attempts;
  uint64_t retry_base_ms, retry_cap_ms;
  cqrs_dead_letter_cb dead_letter; /* NULL: kept in memory */
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

/* subscriber.c */
/* The back-off before try `attempts` + 1: retry_base_ms doubled each time, at most retry_cap_ms. */
uint64_t cqrs__events_backoff(const cqrs__events_t *ev, unsigned attempts);
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

/* deadletters.c: `s` gave up on `e`: to the sink, or kept in memory. */
void cqrs__dead_letter(sub_t *s, const cqrs_event_t *e, const cqrs_error_t *error);
void cqrs__dead_letters_free(cqrs__events_t *ev);

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
} cqrs__sub_figures_t;
/* Fills the i-th subscriber's figures; false past the end. */
bool cqrs__events_sub_figures(const cqrs_dispatcher_t *d, size_t i, cqrs__sub_figures_t *out);
int64_t cqrs__events_feed_position(const cqrs_dispatcher_t *d);

#endif
