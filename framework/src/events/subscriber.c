/* One subscriber: its queue, delivery (inline, or in batches on the pool for
 * a blocking handler or store), retries with back-off, dead letters, the
 * catch-up from its checkpoint, and the saving of that checkpoint. */
#include "events/events-private.h"

#define FEED_BATCH 256
#define SUB_BATCH 64
#define CATCHUP_RETRY_MS 10

/* ---- subscriber queues ---- */

bool cqrs__sub_push(sub_t *s, const cqrs_event_t *e) {
  if (s->q_len == s->q_cap) {
    size_t cap = s->q_cap ? s->q_cap * 2 : 64;
    const cqrs_event_t **q = cqrs__malloc(cap * sizeof *q);
    if (!q) return false;
    for (size_t i = 0; i < s->q_len; i++) q[i] = s->q[(s->q_head + i) % s->q_cap];
    cqrs__free((void *)s->q);
    s->q = q;
    s->q_cap = cap;
    s->q_head = 0;
  }
  s->q[(s->q_head + s->q_len) % s->q_cap] = cqrs_event_ref(e);
  s->q_len++;
  return true;
}


bool cqrs__sub_wants(const sub_t *s, const cqrs_event_t *e) {
  if (!s->types) return true;
  for (const cqrs_event_type_t **t = s->types; *t; t++) {
    if (*t == e->type) return true;
  }
  return false;
}


/* ---- delivery ---- */

static void timer_cb(uv_timer_t *t) {
  sub_t *s = t->data;
  s->waiting = false;
  s->cp_hold = false;
  cqrs__sub_run(s);
}

/* Nothing more for `s` until `ms` have passed. At close, when nothing will
 * try again, it lets go of what it holds instead (`why` says why), which a
 * projection reads again from its checkpoint on the next start. */
static void retry_later(sub_t *s, uint64_t ms, const char *why) {
  if (cqrs__runtime_closing(s->ev->rt)) {
    if (!s->cp && s->q_len)
      cqrs_log(CQRS_LOG_ERROR, "bus", "subscriber %s drops %zu event(s) at close: %s", s->name, s->q_len, why);
    while (s->q_len) cqrs__q_pop(s);
    s->attempts = 0;
    return;
  }
  s->waiting = true;
  cqrs__timer_start(&s->timer, timer_cb, ms, 0);
}

/* The head of the queue failed: retry later, or give up on it. Returns true
 * when the caller may go on with the queue. A store that is unavailable
 * (a transient store error) is no fault of the event: that is retried
 * (back-off capped) until the store returns, never dead-lettered; on close
 * the subscriber lets go of what it holds, which a projection reads again
 * from its checkpoint. A permanent store error is dead-lettered like any. */
bool cqrs__sub_failed(sub_t *s, const cqrs_error_t *error) {
  if (s->state == SUB_STANDBY) return false; /* another process delivers it */
  if (!s->attempts) s->first_failed_at = cqrs__clock_wall(s->ev->rt->clock);
  s->attempts++;
  s->retries++;
  if (error->code == CQRS_ECLOSED && cqrs__runtime_closing(s->ev->rt)) {
    /* A process manager cannot send at close: what it holds is read again
     * from its checkpoint on the next start. */
    while (s->q_len) cqrs__q_pop(s);
    s->attempts = 0;
    return false;
  }
  if (cqrs_error_transient(error)) {
    retry_later(s, cqrs__events_backoff(s->ev, s->attempts), error->message);
    return false;
  }
  /* An event this process cannot decode fails the same way every time. */
  bool retry = s->attempts < s->ev->retry_attempts && error->code != CQRS_EUNKNOWN_TYPE;
  /* A projection sets a poison event aside and goes on with the rest. */
  if (retry && s->cp && !s->async && s->attempts == 1 && cqrs__park_add(s, cqrs__q_peek(s, 0), error)) {
    s->position = cqrs__q_peek(s, 0)->position;
    s->attempts = 0;
    cqrs__q_pop(s);
    return true;
  }
  if (retry) {
    if (cqrs__runtime_closing(s->ev->rt)) return true; /* closing: retry at once */
    s->waiting = true;
    cqrs__timer_start(&s->timer, timer_cb, cqrs__events_backoff(s->ev, s->attempts), 0);
    return false;
  }
  const cqrs_event_t *e = cqrs__q_peek(s, 0);
  cqrs__dead_letter(s, e, error, s->attempts, s->first_failed_at);
  s->position = e->position;
  s->attempts = 0;
  cqrs__q_pop(s);
  return true;
}

/* Calls the handler of `s`, which wants `e`. */
cqrs_code_t cqrs__sub_deliver(sub_t *s, const cqrs_event_t *e, cqrs_error_t *err) {
  cqrs_error_clear(err);
  if (e->type == &cqrs_unknown_event_type && !s->types) {
    const cqrs_unknown_event_t *u = e->payload;
    return cqrs_error_set(err, CQRS_EUNKNOWN_TYPE, "event #%lld is of type '%s', unknown to this process",
                          (long long)e->position, u->type);
  }
  cqrs_code_t rc = s->fn(e, s->data, err);
  if (rc == CQRS__PENDING && s->async) return rc;
  if (rc && err->code == CQRS_OK) cqrs_error_set(err, rc, "subscriber %s returned %s", s->name, cqrs_code_name(rc));
  return rc;
}

static cqrs_code_t call_handler(sub_t *s, const cqrs_event_t *e, cqrs_error_t *err) {
  /* Catch-up queues every event it reads: the types are filtered here. */
  if (!cqrs__sub_wants(s, e)) {
    cqrs_error_clear(err);
    return CQRS_OK;
  }
  return cqrs__sub_deliver(s, e, err);
}

typedef struct cp_save_work {
  cqrs__job_t job; /* first: the job is the work */
  sub_t *s;
  int64_t position, token;
  cqrs_code_t rc;
  cqrs_error_t err;
} cp_save_work_t;

/* Under a lease the save carries its token (0: none). Any thread. */
static cqrs_code_t cp_save(sub_t *s, int64_t position, int64_t token, cqrs_error_t *err) {
  if (token) return cqrs_checkpoints_save_fenced(s->cp, s->name, position, token, err);
  return cqrs_checkpoints_save(s->cp, s->name, position, err);
}

/* A save refused because a newer lease holder has written: the lease is gone. */
static void cp_save_failed(sub_t *s, const cqrs_error_t *err) {
  if (err->code == CQRS_ECONFLICT && s->lease.on) {
    cqrs__lease_give_up(&s->lease, err);
  } else {
    cqrs_log(CQRS_LOG_WARNING, "bus", "checkpoint of %s not saved: %s", s->name, err->message);
  }
}

static void cp_save_work_cb(cqrs__job_t *job) {
  cp_save_work_t *cw = (cp_save_work_t *)job;
  cw->rc = cp_save(cw->s, cw->position, cw->token, &cw->err);
}


/* A save on the pool failed or could not start: the subscriber's timer
 * runs it again (sub_run saves) after a back-off. At close it stays
 * behind: what it did not cover is applied again on the next start. */
static void cp_save_later(sub_t *s) {
  if (s->waiting || cqrs__runtime_closing(s->ev->rt) || (s->lease.on && !s->lease.held)) return;
  s->waiting = true;
  cqrs__timer_start(&s->timer, timer_cb, cqrs__events_backoff(s->ev, 1), 0);
}

static void cp_save_after(cqrs__job_t *job, bool cancelled) {
  cp_save_work_t *cw = (cp_save_work_t *)job;
  sub_t *s = cw->s;
  s->cp_saving = false;
  bool saved = !cancelled && cw->rc == CQRS_OK;
  if (saved) {
    s->saved = cw->position;
  } else if (!cancelled) {
    cp_save_failed(s, &cw->err);
  }
  cqrs__free(cw);
  if (saved) {
    cqrs__sub_save_checkpoint(s);
  } else {
    cp_save_later(s);
  }
}

/* Saves inline, or on the pool for an async subscriber whose checkpoints
 * block (one save in flight; the newest position wins). */
void cqrs__sub_save_checkpoint(sub_t *s) {
  /* Once its lease is lost the checkpoint is the next holder's to move (a
   * process manager has forgotten its open instances, so what it would
   * save could pass one). */
  if (!s->cp || (s->lease.on && !s->lease.held)) return;
  int64_t at = s->checkpoint ? s->checkpoint(s->data, s->position) : s->position;
  int64_t floor = cqrs__park_floor(s);
  if (at > floor) at = floor;
  if (at == s->saved || at < 0) return;
  if (s->cp_blocking) {
    if (s->cp_saving) return;
    cp_save_work_t *cw = cqrs__calloc(1, sizeof *cw);
    cqrs_error_t err;
    if (cw) {
      cw->s = s;
      cw->position = at;
      cw->token = s->lease.token;
    }
    if (!cw || cqrs__job_submit(s->ev->rt, &cw->job, cp_save_work_cb, cp_save_after, &err)) {
      cqrs__free(cw);
      cqrs_log(CQRS_LOG_WARNING, "bus", "checkpoint of %s not saved: cannot queue work on the thread pool", s->name);
      cp_save_later(s);
      return;
    }
    s->cp_saving = true;
    return;
  }
  cqrs_error_t err;
  if (cp_save(s, at, s->lease.token, &err) == CQRS_OK) {
    s->saved = at;
  } else {
    cp_save_failed(s, &err);
  }
}

void cqrs__sub_complete(sub_t *s, const cqrs_error_t *err) {
  s->busy = false;
  if (s->park_inflight) {
    const cqrs_event_t *e = s->park_inflight;
    s->park_inflight = NULL;
    cqrs__park_resolved(s, e, err);
  } else if (!err || err->code == CQRS_OK) {
    s->position = cqrs__q_peek(s, 0)->position;
    s->attempts = 0;
    cqrs__q_pop(s);
  } else {
    cqrs__sub_failed(s, err);
  }
  cqrs__sub_run(s);
  if (cqrs__runtime_closing(s->ev->rt)) cqrs__runtime_maybe_closed(s->ev->rt);
}

/* ---- pool work: blocking subscribers and blocking stores ---- */

typedef struct sub_work {
  cqrs__job_t job; /* first: the job is the work */
  sub_t *s;
  const cqrs_event_t *batch[SUB_BATCH];
  size_t n, done;
  bool catchup; /* a read of the store rather than deliveries */
  cqrs__event_vec_t read;
  cqrs_code_t rc;
  cqrs_error_t err;
  int64_t position;   /* the last event handled: at the start, the subscriber's */
  int64_t floor;      /* the checkpoint goes no further (events set aside) */
  int64_t saved;      /* the checkpoint saved before the batch */
  bool parked;        /* batch[0] is an event set aside: no checkpoint */
  int64_t token;      /* the lease's, for the checkpoint write */
  uint64_t deadline;  /* the lease's when the batch started (0: no lease): no delivery after it */
  bool cp_failed;     /* that write failed (refused: a newer lease holder wrote) */
  cqrs_error_t cp_err;
} sub_work_t;

typedef struct collector {
  cqrs__event_vec_t *out;
  bool full; /* no room for an event read */
} collector_t;

static bool collect(const cqrs_event_t *e, void *data) {
  collector_t *c = data;
  c->full = cqrs__event_vec_push_ref(c->out, e) != CQRS_OK;
  return !c->full;
}

/* Reads a batch of the store from `from` into `out`; no room for all of
 * it is a failure (retried), not the end of what there is. Any thread. */
cqrs_code_t cqrs__events_read_batch(cqrs_store_t *store, int64_t from, size_t limit, cqrs__event_vec_t *out,
                                    cqrs_error_t *err) {
  collector_t c = {out, false};
  cqrs_code_t rc = cqrs_store_read_all(store, from, limit, collect, &c, err);
  if (rc == CQRS_OK && c.full) rc = cqrs_error_set(err, CQRS_ENOMEM, "no room for the events read");
  return rc;
}

static void sub_work_cb(cqrs__job_t *job) {
  sub_work_t *sw = (sub_work_t *)job;
  sub_t *s = sw->s;
  if (sw->catchup) {
    sw->rc = cqrs__events_read_batch(s->ev->rt->store, s->read_pos + 1, FEED_BATCH, &sw->read, &sw->err);
    return;
  }
  sw->rc = CQRS_OK;
  for (sw->done = 0; sw->done < sw->n; sw->done++) {
    /* A batch of slow handlers may outlast the lease: the rest waits for the
     * loop, which renews or lets go (the deadline is the one at the start,
     * so a renewal meanwhile only costs a second batch). */
    if (sw->deadline && cqrs__lease_now(&s->lease) >= sw->deadline) break;
    if ((sw->rc = call_handler(s, sw->batch[sw->done], &sw->err))) break;
    sw->position = sw->batch[sw->done]->position;
  }
  int64_t at = sw->position < sw->floor ? sw->position : sw->floor;
  if (s->cp && !sw->parked && at != sw->saved && at >= 0) {
    /* Blocking projections save their checkpoint here, off the loop. */
    if (cp_save(s, at, sw->token, &sw->cp_err) == CQRS_OK) {
      s->saved = at;
    } else {
      sw->cp_failed = true;
    }
  }
}

static void sub_after_work(cqrs__job_t *job, bool cancelled) {
  sub_work_t *sw = (sub_work_t *)job;
  sub_t *s = sw->s;
  s->busy = false;
  if (sw->catchup) {
    if (!cancelled && sw->rc == CQRS_OK) {
      size_t queued = 0;
      while (queued < sw->read.len && cqrs__sub_push(s, sw->read.items[queued])) s->read_pos = sw->read.items[queued++]->position;
      if (queued < sw->read.len && !cqrs__runtime_closing(s->ev->rt)) {
        /* Out of memory: read the rest again later. */
        s->waiting = true;
        cqrs__timer_start(&s->timer, timer_cb, cqrs__events_backoff(s->ev, 1), 0);
      } else if (sw->read.len == 0 && s->ev->head_known) { /* else the head's arrival runs it again */
        if (s->read_pos >= s->ev->feed_pos) {
          if (s->state == SUB_CATCHING_UP) s->state = SUB_LIVE;
        } else if (!cqrs__runtime_closing(s->ev->rt)) {
          s->waiting = true;
          cqrs__timer_start(&s->timer, timer_cb, CATCHUP_RETRY_MS, 0);
        }
      }
    } else if (!cqrs__runtime_closing(s->ev->rt)) {
      cqrs_log(CQRS_LOG_WARNING, "bus", "projection %s cannot read the store: %s", s->name, sw->err.message);
      s->waiting = true;
      cqrs__timer_start(&s->timer, timer_cb, cqrs__events_backoff(s->ev, 1), 0);
    }
    cqrs__event_vec_free(&sw->read);
  } else if (sw->parked) {
    s->park_inflight = NULL;
    if (!cancelled && (sw->done || sw->rc != CQRS_OK)) cqrs__park_resolved(s, sw->batch[0], sw->done ? NULL : &sw->err);
    cqrs_event_unref(sw->batch[0]);
  } else {
    for (size_t i = 0; i < sw->done; i++) {
      s->position = cqrs__q_peek(s, 0)->position;
      s->attempts = 0;
      cqrs__q_pop(s);
    }
    if (!cancelled && sw->rc != CQRS_OK) cqrs__sub_failed(s, &sw->err);
  }
  if (sw->cp_failed) cp_save_failed(s, &sw->cp_err);
  /* A save that failed is tried by the next batch of events, not by one
   * of its own (at close, with the store gone, that would never end). */
  if (!cancelled && !sw->catchup) s->cp_hold = sw->cp_failed;
  cqrs__free(sw);
  cqrs__sub_run(s);
}

/* Queues a batch of deliveries (`parked`: that one event set aside; else
 * the queue's head, up to an event of a stream set aside; none: only the
 * checkpoint's save) or a catch-up read on the pool. Returns false when it
 * cannot: it is tried again after a back-off. */
static bool start_work(sub_t *s, bool catchup, const cqrs_event_t *parked) {
  sub_work_t *sw = cqrs__calloc(1, sizeof *sw);
  if (sw) {
    sw->s = s;
    sw->catchup = catchup;
    sw->token = s->lease.token;
    sw->deadline = s->lease.on ? s->lease.deadline : 0;
    sw->position = s->position;
    sw->floor = cqrs__park_floor(s);
    sw->saved = s->saved;
    if (parked) {
      sw->parked = true;
      sw->n = 1;
      sw->batch[0] = cqrs_event_ref(parked);
    } else if (!catchup) {
      size_t n = s->q_len < SUB_BATCH ? s->q_len : SUB_BATCH;
      while (sw->n < n && !(s->npark && cqrs__park_holds(s, cqrs__q_peek(s, sw->n))) &&
             cqrs__q_peek(s, sw->n)->position != s->ctl.skip_at) {
        sw->batch[sw->n] = cqrs__q_peek(s, sw->n);
        sw->n++;
      }
    }
  }
  cqrs_error_t err;
  if (!sw || cqrs__job_submit(s->ev->rt, &sw->job, sub_work_cb, sub_after_work, &err)) {
    if (sw && sw->parked) cqrs_event_unref(sw->batch[0]);
    cqrs__free(sw);
    static const char why[] = "cannot queue work on the thread pool";
    if (!cqrs__runtime_closing(s->ev->rt)) cqrs_log(CQRS_LOG_WARNING, "bus", "subscriber %s %s; retried", s->name, why);
    retry_later(s, cqrs__events_backoff(s->ev, 1), why);
    return false;
  }
  s->busy = true;
  if (parked) s->park_inflight = parked;
  return true;
}

/* A blocking projection's checkpoint is saved by its batches; one behind
 * where it may be (the events set aside it waited for are gone, a reset)
 * is saved by a batch of no event. */
static bool cp_behind(const sub_t *s) {
  if (!s->cp || !s->blocking || s->cp_hold || (s->lease.on && !s->lease.held)) return false;
  if (s->state != SUB_LIVE && s->state != SUB_CATCHING_UP) return false;
  int64_t at = s->position < cqrs__park_floor(s) ? s->position : cqrs__park_floor(s);
  return at != s->saved && at >= 0;
}

/* Reads the next catch-up batch inline (non-blocking store). Returns the
 * number of events queued. A read that fails, or finds no room for what it
 * read, is tried again after a back-off (s->waiting). */
static size_t catchup_inline(sub_t *s) {
  cqrs__event_vec_t v = {0};
  cqrs_error_t err;
  if (cqrs__events_read_batch(s->ev->rt->store, s->read_pos + 1, FEED_BATCH, &v, &err)) {
    cqrs_log(CQRS_LOG_WARNING, "bus", "projection %s cannot read the store: %s", s->name, err.message);
    cqrs__event_vec_free(&v);
    retry_later(s, cqrs__events_backoff(s->ev, 1), err.message);
    return 0;
  }
  size_t n = 0;
  while (n < v.len && cqrs__sub_push(s, v.items[n])) s->read_pos = v.items[n++]->position;
  if (n < v.len) retry_later(s, cqrs__events_backoff(s->ev, 1), "out of memory"); /* read the rest again later */
  cqrs__event_vec_free(&v);
  return n;
}

/* ---- events set aside (parked.c) ---- */

static void park_timer_cb(uv_timer_t *t);

/* Arms the events' retry timer for the nearest event set aside that is due. */
static void park_arm(cqrs__events_t *ev) {
  if (!ev->attached || cqrs__runtime_closing(ev->rt)) return;
  uint64_t next = cqrs__park_next_due(ev);
  if (next == UINT64_MAX) {
    cqrs__timer_stop(&ev->park_timer);
    ev->park_armed = false;
    return;
  }
  /* At least a millisecond: a timer due at once would run again within
   * the same pass of the loop's timers, before any work came back. */
  uint64_t now = cqrs__runtime_now(ev->rt);
  cqrs__timer_start(&ev->park_timer, park_timer_cb, next > now + 1 ? next - now : 1, 0);
  ev->park_armed = true;
}

static void park_timer_cb(uv_timer_t *t) {
  cqrs__events_t *ev = t->data;
  ev->park_armed = false;
  for (size_t i = 0; i < ev->nsubs; i++) {
    if (ev->subs[i]->npark) cqrs__sub_run(ev->subs[i]);
  }
  park_arm(ev);
}

/* Delivers the next event set aside that is due: inline (true: go on), or
 * on the pool or to an async handler (false, busy), or none (false). */
static bool park_run(sub_t *s) {
  const cqrs_event_t *e = cqrs__park_next(s);
  if (!e) return false;
  if (s->blocking) {
    start_work(s, false, e);
    return false; /* on its way, or a back-off: nothing more now */
  }
  cqrs_error_t err;
  cqrs_code_t rc = cqrs__sub_deliver(s, e, &err);
  if (rc == CQRS__PENDING) {
    s->park_inflight = e;
    s->busy = true;
    return false;
  }
  cqrs__park_resolved(s, e, rc ? &err : NULL);
  return true;
}

/* Moves a subscriber forward as far as it can without waiting. */
void cqrs__sub_run(sub_t *s) {
  if (s->running) return;
  s->running = true;
  cqrs__events_t *ev = s->ev;
  bool closing = cqrs__runtime_closing(ev->rt);
  if (closing && cqrs__sub_held(s) && !s->busy) {
    /* Held by an operator at close: what it holds is read again from its
     * checkpoint on the next start. */
    while (s->q_len) cqrs__q_pop(s);
    cqrs__park_drop(s);
  }
  while (!s->busy && !s->waiting && !cqrs__sub_held(s) && s->state != SUB_LOADING && s->state != SUB_STANDBY) {
    if (s->lease.on && !cqrs__lease_valid(&s->lease)) break;
    if (s->ctl.skip_at && cqrs__sub_skip_now(s)) continue;
    if (s->npark && park_run(s)) continue;
    if (s->busy) break;
    if (s->q_len && s->npark && cqrs__park_holds(s, cqrs__q_peek(s, 0))) {
      /* Behind an event of its stream set aside; no room: the queue waits. */
      if (!cqrs__park_add(s, cqrs__q_peek(s, 0), NULL)) break;
      s->position = cqrs__q_peek(s, 0)->position;
      cqrs__q_pop(s);
      continue;
    }
    if (s->q_len) {
      if (s->blocking) {
        if (!start_work(s, false, NULL)) break;
        continue;
      }
      cqrs_error_t err;
      const cqrs_event_t *e = cqrs__q_peek(s, 0);
      cqrs_code_t rc = call_handler(s, e, &err);
      if (rc == CQRS__PENDING) {
        s->busy = true;
        break;
      }
      if (rc == CQRS_OK) {
        s->position = e->position;
        s->attempts = 0;
        cqrs__q_pop(s);
      } else if (!cqrs__sub_failed(s, &err)) {
        break;
      }
      continue;
    }
    if (s->state != SUB_CATCHING_UP || closing) break;
    if (cqrs_store_blocking(ev->rt->store)) {
      start_work(s, true, NULL);
      break;
    }
    if (catchup_inline(s) == 0) {
      if (s->waiting) break;
      if (s->read_pos >= ev->feed_pos) {
        s->state = SUB_LIVE;
      } else {
        retry_later(s, CATCHUP_RETRY_MS, "catching up"); /* what the feed has is not readable yet */
      }
      break;
    }
  }
  /* A standby lets go of what it held once nothing is in flight. */
  if (s->state == SUB_STANDBY && !s->busy) {
    while (s->q_len) cqrs__q_pop(s);
  }
  if (!s->blocking) {
    cqrs__sub_save_checkpoint(s);
  } else if (!s->busy && !s->waiting && cp_behind(s)) {
    start_work(s, false, NULL);
  }
  if (s->npark || ev->park_armed) park_arm(ev);
  s->running = false;
  cqrs__waiters_check(ev);
}

/* ---- catching up ---- */

void cqrs__sub_start_catchup(sub_t *s, int64_t position) {
  s->position = s->read_pos = s->saved = position;
  s->park_ceiling = INT64_MAX;
  s->state = SUB_CATCHING_UP;
  cqrs__sub_run(s);
}

const cqrs_event_t *cqrs__sub_head(const sub_t *s) { return s->q_len ? cqrs__q_peek(s, 0) : NULL; }

void cqrs__sub_free(sub_t *s) {
  while (s->q_len) cqrs__q_pop(s);
  for (size_t i = 0; i < s->npark; i++) cqrs_event_unref(s->park[i].event);
  cqrs__free(s->park);
  cqrs__free((void *)s->q);
  cqrs__free((void *)s->types);
  cqrs__free(s);
}
