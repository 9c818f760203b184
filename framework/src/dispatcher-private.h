/* Dispatcher internals shared by dispatcher.c (commands) and bus.c (events). */
#ifndef CQRS_DISPATCHER_PRIVATE_H
#define CQRS_DISPATCHER_PRIVATE_H


#include "cqrs-uthash.h"
#include "metrics-private.h"

typedef struct handler {
  const cqrs_command_type_t *type; /* key */
  cqrs_command_handler_fn fn;
  void *data;
  unsigned flags;
  UT_hash_handle hh;
} handler_t;

typedef struct request request_t;

/* Handlers that run at once on the same aggregate take the same lock, so a
 * dispatcher does not make conflicts with itself. */
#define CQRS_STRIPES 256

typedef enum sub_state { SUB_LOADING, SUB_CATCHING_UP, SUB_LIVE } sub_state_t;

/* A subscriber: an event handler, or a projection (one with checkpoints). */
typedef struct sub {
  cqrs_dispatcher_t *d;
  char name[CQRS_NAME_MAX];
  const cqrs_event_type_t **types; /* NULL: all */
  cqrs_event_handler_fn fn;
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
  uv_mutex_t stripes[CQRS_STRIPES];

  uv_async_t async;
  uv_mutex_t inbox_lock;
  request_t *inbox_head, *inbox_tail; /* from other threads */
  request_t *local_head, *local_tail; /* from the loop thread */
  request_t *free_requests;           /* loop thread only */
  size_t nfree;
  _Atomic size_t pending;
  _Atomic bool closing;
  int handles_open;
  cqrs_close_cb close_cb;
  void *close_data;
  bool closed_handles;

  /* Event feed: what has been fanned out to subscribers. */
  int64_t feed_pos;
  bool feed_busy, feed_again;
  uv_timer_t feed_timer;  /* retries a read of the store that failed */
  unsigned feed_failures; /* reads failed in a row */
  size_t work_inflight; /* pool work of subscribers and the feed */
  sub_t **subs;
  size_t nsubs;
  uv_timer_t poll;
  bool poll_on;

  dead_letter_t *dead;
  size_t ndead, dead_cap, dead_total;

  cqrs__mw_chain_t mw; /* middleware around commands (metrics.c) */
};

/* bus.c */
void cqrs__feed_kick(cqrs_dispatcher_t *d, int64_t committed_up_to);
/* Publishes events this dispatcher just committed, without reading them
 * back, when they follow what the feed has published; else kicks the feed. */
void cqrs__feed_committed(cqrs_dispatcher_t *d, cqrs__event_vec_t *events);
void cqrs__bus_close(cqrs_dispatcher_t *d);  /* cut back-offs short */
bool cqrs__bus_idle(const cqrs_dispatcher_t *d);
void cqrs__bus_close_handles(cqrs_dispatcher_t *d, uv_close_cb cb);
void cqrs__bus_free(cqrs_dispatcher_t *d);
/* dispatcher.c */
void cqrs__dispatcher_maybe_closed(cqrs_dispatcher_t *d);

#endif
