/* The event side of the dispatcher. One feed reads committed events from the
 * store in position order and fans them out; each subscriber has its own
 * queue, so a failing one (retried with back-off, then dead-lettered) holds
 * up nobody else. Projections first catch up from their checkpoint by
 * reading the store, then join the feed. */
#include <stdio.h>

#include "cache-private.h"
#include "dispatcher-private.h"

#define FEED_BATCH 256
#define SUB_BATCH 64
#define CATCHUP_RETRY_MS 10

static void sub_run(sub_t *s);

/* ---- subscriber queues ---- */

static bool q_push(sub_t *s, const cqrs_event_t *e) {
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

static const cqrs_event_t *q_peek(const sub_t *s, size_t i) { return s->q[(s->q_head + i) % s->q_cap]; }

static void q_pop(sub_t *s) {
  cqrs_event_unref(s->q[s->q_head]);
  s->q_head = (s->q_head + 1) % s->q_cap;
  s->q_len--;
}

static bool sub_wants(const sub_t *s, const cqrs_event_t *e) {
  if (!s->types) return true;
  for (const cqrs_event_type_t **t = s->types; *t; t++) {
    if (*t == e->type) return true;
  }
  return false;
}

/* ---- dead letters ---- */

/* Room for one more dead letter in memory: the ring grows (up to the
 * bound, and only before it has wrapped, so that it stays in order), or
 * its oldest entry goes. NULL: no room at all (out of memory, empty). */
static dead_letter_t *dead_slot(cqrs_dispatcher_t *d) {
  size_t bound = d->opts.dead_letters_kept;
  if (d->ndead == d->dead_cap && d->dead_head == 0 && d->dead_cap < bound) {
    size_t cap = d->dead_cap ? d->dead_cap * 2 : 16;
    if (cap > bound) cap = bound;
    dead_letter_t *p = cqrs__realloc(d->dead, cap * sizeof *p);
    if (p) {
      d->dead = p;
      d->dead_cap = cap;
    }
  }
  if (d->ndead < d->dead_cap) return &d->dead[(d->dead_head + d->ndead++) % d->dead_cap];
  if (!d->ndead) return NULL;
  if (d->dead_dropped++ == 0)
    cqrs_log(CQRS_LOG_WARNING, "bus", "%zu dead letters kept in memory: the oldest are dropped from now on",
             d->dead_cap);
  dead_letter_t *oldest = &d->dead[d->dead_head];
  cqrs_event_unref(oldest->event);
  d->dead_head = (d->dead_head + 1) % d->dead_cap;
  return oldest;
}

static void dead_letter(sub_t *s, const cqrs_event_t *e, const cqrs_error_t *error) {
  cqrs_dispatcher_t *d = s->d;
  d->dead_total++;
  s->dead_letters++;
  if (d->opts.dead_letter) {
    d->opts.dead_letter(s->name, e, error, d->opts.dead_letter_data);
    return;
  }
  dead_letter_t *dl = dead_slot(d);
  if (!dl) {
    d->dead_dropped++;
    cqrs_log(CQRS_LOG_ERROR, "bus", "dead letter of %s/%s #%lld lost: out of memory", s->name, e->type->name,
             (long long)e->position);
    return;
  }
  dl->event = cqrs_event_ref(e);
  snprintf(dl->subscriber, sizeof dl->subscriber, "%s", s->name);
  dl->error = *error;
}

size_t cqrs_dispatcher_dead_letter_count(const cqrs_dispatcher_t *d) { return d ? d->dead_total : 0; }

size_t cqrs_dispatcher_dead_letters_dropped(const cqrs_dispatcher_t *d) { return d ? d->dead_dropped : 0; }

const cqrs_event_t *cqrs_dispatcher_dead_letter(const cqrs_dispatcher_t *d, size_t i, const char **subscriber,
                                                const cqrs_error_t **error) {
  if (!d || i >= d->ndead) return NULL;
  const dead_letter_t *dl = &d->dead[(d->dead_head + i) % d->dead_cap];
  if (subscriber) *subscriber = dl->subscriber;
  if (error) *error = &dl->error;
  return dl->event;
}

/* ---- delivery ---- */

static uint64_t backoff_ms(const cqrs_dispatcher_t *d, unsigned attempts) {
  uint64_t ms = d->opts.retry_base_ms;
  for (unsigned i = 1; i < attempts && ms < d->opts.retry_cap_ms; i++) ms *= 2;
  return ms > d->opts.retry_cap_ms ? d->opts.retry_cap_ms : ms;
}

static void timer_cb(uv_timer_t *t) {
  sub_t *s = t->data;
  s->waiting = false;
  sub_run(s);
}

/* Nothing more for `s` until `ms` have passed. At close, when nothing will
 * try again, it lets go of what it holds instead (`why` says why), which a
 * projection reads again from its checkpoint on the next start. */
static void retry_later(sub_t *s, uint64_t ms, const char *why) {
  if (atomic_load(&s->d->closing)) {
    if (!s->cp && s->q_len)
      cqrs_log(CQRS_LOG_ERROR, "bus", "subscriber %s drops %zu event(s) at close: %s", s->name, s->q_len, why);
    while (s->q_len) q_pop(s);
    s->attempts = 0;
    return;
  }
  s->waiting = true;
  uv_timer_start(&s->timer, timer_cb, ms, 0);
}

/* The head of the queue failed: retry later, or give up on it. Returns true
 * when the caller may go on with the queue. A store that is unavailable
 * (a transient store error) is no fault of the event: that is retried
 * (back-off capped) until the store returns, never dead-lettered; on close
 * the subscriber lets go of what it holds, which a projection reads again
 * from its checkpoint. A permanent store error is dead-lettered like any. */
static bool head_failed(sub_t *s, const cqrs_error_t *error) {
  if (s->state == SUB_STANDBY) return false; /* another process delivers it */
  s->attempts++;
  s->retries++;
  if (error->code == CQRS_ECLOSED && atomic_load(&s->d->closing)) {
    /* A process manager cannot send at close: what it holds is read again
     * from its checkpoint on the next start. */
    while (s->q_len) q_pop(s);
    s->attempts = 0;
    return false;
  }
  if (cqrs_error_transient(error)) {
    retry_later(s, backoff_ms(s->d, s->attempts), error->message);
    return false;
  }
  /* An event this process cannot decode fails the same way every time. */
  if (s->attempts < s->d->opts.retry_attempts && error->code != CQRS_EUNKNOWN_TYPE) {
    if (atomic_load(&s->d->closing)) return true; /* closing: retry at once */
    s->waiting = true;
    uv_timer_start(&s->timer, timer_cb, backoff_ms(s->d, s->attempts), 0);
    return false;
  }
  const cqrs_event_t *e = q_peek(s, 0);
  dead_letter(s, e, error);
  s->position = e->position;
  s->attempts = 0;
  q_pop(s);
  return true;
}

/* Calls the handler of `s`, which wants `e`. */
static cqrs_code_t deliver(sub_t *s, const cqrs_event_t *e, cqrs_error_t *err) {
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
  if (!sub_wants(s, e)) {
    cqrs_error_clear(err);
    return CQRS_OK;
  }
  return deliver(s, e, err);
}

typedef struct cp_save_work {
  uv_work_t req;
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
    cqrs__lease_give_up(s, err);
  } else {
    cqrs_log(CQRS_LOG_WARNING, "bus", "checkpoint of %s not saved: %s", s->name, err->message);
  }
}

static void cp_save_work_cb(uv_work_t *w) {
  cp_save_work_t *cw = w->data;
  cw->rc = cp_save(cw->s, cw->position, cw->token, &cw->err);
}

static void save_checkpoint(sub_t *s);

/* A save on the pool failed or could not start: the subscriber's timer
 * runs it again (sub_run saves) after a back-off. At close it stays
 * behind: what it did not cover is applied again on the next start. */
static void cp_save_later(sub_t *s) {
  if (s->waiting || atomic_load(&s->d->closing) || (s->lease.on && !s->lease.held)) return;
  s->waiting = true;
  uv_timer_start(&s->timer, timer_cb, backoff_ms(s->d, 1), 0);
}

static void cp_save_after(uv_work_t *w, int status) {
  cp_save_work_t *cw = w->data;
  sub_t *s = cw->s;
  s->cp_saving = false;
  s->d->work_inflight--;
  bool saved = status == 0 && cw->rc == CQRS_OK;
  if (saved) {
    s->saved = cw->position;
  } else if (status == 0) {
    cp_save_failed(s, &cw->err);
  }
  cqrs__free(cw);
  if (saved) {
    save_checkpoint(s);
  } else {
    cp_save_later(s);
  }
  if (atomic_load(&s->d->closing)) cqrs__dispatcher_maybe_closed(s->d);
}

/* Saves inline, or on the pool for an async subscriber whose checkpoints
 * block (one save in flight; the newest position wins). */
static void save_checkpoint(sub_t *s) {
  /* Once its lease is lost the checkpoint is the next holder's to move (a
   * process manager has forgotten its open instances, so what it would
   * save could pass one). */
  if (!s->cp || (s->lease.on && !s->lease.held)) return;
  int64_t at = s->checkpoint ? s->checkpoint(s->data, s->position) : s->position;
  if (at == s->saved || at < 0) return;
  if (s->cp_blocking) {
    if (s->cp_saving) return;
    cp_save_work_t *cw = cqrs__calloc(1, sizeof *cw);
    if (cw) {
      cw->s = s;
      cw->position = at;
      cw->token = s->lease.token;
      cw->req.data = cw;
    }
    if (!cw || uv_queue_work(s->d->loop, &cw->req, cp_save_work_cb, cp_save_after)) {
      cqrs__free(cw);
      cqrs_log(CQRS_LOG_WARNING, "bus", "checkpoint of %s not saved: cannot queue work on the thread pool", s->name);
      cp_save_later(s);
      return;
    }
    s->cp_saving = true;
    s->d->work_inflight++;
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
  if (!err || err->code == CQRS_OK) {
    s->position = q_peek(s, 0)->position;
    s->attempts = 0;
    q_pop(s);
  } else {
    head_failed(s, err);
  }
  sub_run(s);
  if (atomic_load(&s->d->closing)) cqrs__dispatcher_maybe_closed(s->d);
}

/* ---- pool work: blocking subscribers and blocking stores ---- */

typedef struct sub_work {
  uv_work_t req;
  sub_t *s;
  const cqrs_event_t *batch[SUB_BATCH];
  size_t n, done;
  bool catchup; /* a read of the store rather than deliveries */
  cqrs__event_vec_t read;
  cqrs_code_t rc;
  cqrs_error_t err;
  int64_t position;
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
static cqrs_code_t read_batch(cqrs_store_t *store, int64_t from, cqrs__event_vec_t *out, cqrs_error_t *err) {
  collector_t c = {out, false};
  cqrs_code_t rc = cqrs_store_read_all(store, from, FEED_BATCH, collect, &c, err);
  if (rc == CQRS_OK && c.full) rc = cqrs_error_set(err, CQRS_ENOMEM, "no room for the events read");
  return rc;
}

static void sub_work_cb(uv_work_t *w) {
  sub_work_t *sw = w->data;
  sub_t *s = sw->s;
  if (sw->catchup) {
    sw->rc = read_batch(s->d->store, s->read_pos + 1, &sw->read, &sw->err);
    return;
  }
  sw->rc = CQRS_OK;
  for (sw->done = 0; sw->done < sw->n; sw->done++) {
    /* A batch of slow handlers may outlast the lease: the rest waits for the
     * loop, which renews or lets go (the deadline is the one at the start,
     * so a renewal meanwhile only costs a second batch). */
    if (sw->deadline && uv_hrtime() / 1000000u >= sw->deadline) break;
    if ((sw->rc = call_handler(s, sw->batch[sw->done], &sw->err))) break;
    sw->position = sw->batch[sw->done]->position;
  }
  if (s->cp && sw->done) {
    /* Blocking projections save their checkpoint here, off the loop. */
    if (cp_save(s, sw->position, sw->token, &sw->cp_err) == CQRS_OK) {
      s->saved = sw->position;
    } else {
      sw->cp_failed = true;
    }
  }
}

static void sub_after_work(uv_work_t *w, int status) {
  sub_work_t *sw = w->data;
  sub_t *s = sw->s;
  s->busy = false;
  s->d->work_inflight--;
  if (sw->catchup) {
    if (status == 0 && sw->rc == CQRS_OK) {
      size_t queued = 0;
      while (queued < sw->read.len && q_push(s, sw->read.items[queued])) s->read_pos = sw->read.items[queued++]->position;
      if (queued < sw->read.len && !atomic_load(&s->d->closing)) {
        /* Out of memory: read the rest again later. */
        s->waiting = true;
        uv_timer_start(&s->timer, timer_cb, backoff_ms(s->d, 1), 0);
      } else if (sw->read.len == 0 && s->d->head_known) { /* else the head's arrival runs it again */
        if (s->read_pos >= s->d->feed_pos) {
          if (s->state == SUB_CATCHING_UP) s->state = SUB_LIVE;
        } else if (!atomic_load(&s->d->closing)) {
          s->waiting = true;
          uv_timer_start(&s->timer, timer_cb, CATCHUP_RETRY_MS, 0);
        }
      }
    } else if (!atomic_load(&s->d->closing)) {
      cqrs_log(CQRS_LOG_WARNING, "bus", "projection %s cannot read the store: %s", s->name, sw->err.message);
      s->waiting = true;
      uv_timer_start(&s->timer, timer_cb, backoff_ms(s->d, 1), 0);
    }
    cqrs__event_vec_free(&sw->read);
  } else {
    for (size_t i = 0; i < sw->done; i++) {
      s->position = q_peek(s, 0)->position;
      s->attempts = 0;
      q_pop(s);
    }
    if (status == 0 && sw->rc != CQRS_OK) head_failed(s, &sw->err);
    if (sw->cp_failed) cp_save_failed(s, &sw->cp_err);
  }
  cqrs__free(sw);
  sub_run(s);
  if (atomic_load(&s->d->closing)) cqrs__dispatcher_maybe_closed(s->d);
}

/* Queues a batch of deliveries or a catch-up read on the pool. Returns
 * false when it cannot: it is tried again after a back-off. */
static bool start_work(sub_t *s, bool catchup) {
  sub_work_t *sw = cqrs__calloc(1, sizeof *sw);
  if (sw) {
    sw->s = s;
    sw->catchup = catchup;
    sw->token = s->lease.token;
    sw->deadline = s->lease.on ? s->lease.deadline : 0;
    if (!catchup) {
      sw->n = s->q_len < SUB_BATCH ? s->q_len : SUB_BATCH;
      for (size_t i = 0; i < sw->n; i++) sw->batch[i] = q_peek(s, i);
    }
    sw->req.data = sw;
  }
  if (!sw || uv_queue_work(s->d->loop, &sw->req, sub_work_cb, sub_after_work)) {
    cqrs__free(sw);
    static const char why[] = "cannot queue work on the thread pool";
    if (!atomic_load(&s->d->closing)) cqrs_log(CQRS_LOG_WARNING, "bus", "subscriber %s %s; retried", s->name, why);
    retry_later(s, backoff_ms(s->d, 1), why);
    return false;
  }
  s->busy = true;
  s->d->work_inflight++;
  return true;
}

/* Reads the next catch-up batch inline (non-blocking store). Returns the
 * number of events queued. A read that fails, or finds no room for what it
 * read, is tried again after a back-off (s->waiting). */
static size_t catchup_inline(sub_t *s) {
  cqrs__event_vec_t v = {0};
  cqrs_error_t err;
  if (read_batch(s->d->store, s->read_pos + 1, &v, &err)) {
    cqrs_log(CQRS_LOG_WARNING, "bus", "projection %s cannot read the store: %s", s->name, err.message);
    cqrs__event_vec_free(&v);
    retry_later(s, backoff_ms(s->d, 1), err.message);
    return 0;
  }
  size_t n = 0;
  while (n < v.len && q_push(s, v.items[n])) s->read_pos = v.items[n++]->position;
  if (n < v.len) retry_later(s, backoff_ms(s->d, 1), "out of memory"); /* read the rest again later */
  cqrs__event_vec_free(&v);
  return n;
}

/* Moves a subscriber forward as far as it can without waiting. */
static void sub_run(sub_t *s) {
  if (s->running) return;
  s->running = true;
  cqrs_dispatcher_t *d = s->d;
  bool closing = atomic_load(&d->closing);
  while (!s->busy && !s->waiting && s->state != SUB_LOADING && s->state != SUB_STANDBY) {
    if (s->lease.on && !cqrs__lease_valid(s)) break;
    if (s->q_len) {
      if (s->blocking) {
        if (!start_work(s, false)) break;
        continue;
      }
      cqrs_error_t err;
      const cqrs_event_t *e = q_peek(s, 0);
      cqrs_code_t rc = call_handler(s, e, &err);
      if (rc == CQRS__PENDING) {
        s->busy = true;
        break;
      }
      if (rc == CQRS_OK) {
        s->position = e->position;
        s->attempts = 0;
        q_pop(s);
      } else if (!head_failed(s, &err)) {
        break;
      }
      continue;
    }
    if (s->state != SUB_CATCHING_UP || closing) break;
    if (cqrs_store_blocking(d->store)) {
      start_work(s, true);
      break;
    }
    if (catchup_inline(s) == 0) {
      if (s->waiting) break;
      if (s->read_pos >= d->feed_pos) {
        s->state = SUB_LIVE;
      } else {
        retry_later(s, CATCHUP_RETRY_MS, "catching up"); /* what the feed has is not readable yet */
      }
      break;
    }
  }
  /* A standby lets go of what it held once nothing is in flight. */
  if (s->state == SUB_STANDBY && !s->busy) {
    while (s->q_len) q_pop(s);
  }
  if (!s->blocking) save_checkpoint(s);
  s->running = false;
  cqrs__waiters_check(d);
}

static void fan_out(cqrs_dispatcher_t *d, const cqrs_event_t *e) {
  for (size_t i = 0; i < d->nsubs; i++) {
    sub_t *s = d->subs[i];
    if (s->state != SUB_LIVE || e->position <= s->position || !sub_wants(s, e)) continue;
    if (!s->q_len && !s->busy && !s->waiting && !s->blocking && !s->running && !s->async && !s->lease.on) {
      cqrs_error_t err;
      if (deliver(s, e, &err) == CQRS_OK) {
        s->position = e->position;
        continue;
      }
      if (!q_push(s, e)) {
        /* No room to hold it for a retry: this subscriber gives up on it. */
        dead_letter(s, e, &err);
        s->position = e->position;
        continue;
      }
      head_failed(s, &err);
      continue;
    }
    if (!q_push(s, e)) {
      cqrs_error_t err;
      cqrs_error_set(&err, CQRS_ENOMEM, "subscriber queue full");
      dead_letter(s, e, &err);
    }
  }
  d->feed_pos = e->position;
}

/* A subscriber the feed found idle (live, nothing queued or in flight, no
 * lease to fence its writes) saves its checkpoint once the loop has run
 * what this iteration brought (the check phase), not after every event: a
 * batch of commands costs one save. Behind by at most that batch, the
 * checkpoint is never ahead of what was applied, and what a crash loses is
 * applied again (handlers are idempotent). */
static void cp_check_cb(uv_check_t *h) {
  cqrs_dispatcher_t *d = h->data;
  uv_check_stop(h);
  d->cp_check_on = false;
  for (size_t i = 0; i < d->nsubs; i++) {
    sub_t *s = d->subs[i];
    if (!s->cp_due) continue;
    s->cp_due = false;
    if (!s->running) save_checkpoint(s);
  }
}

static void feed_done(cqrs_dispatcher_t *d) {
  bool defer = !atomic_load_explicit(&d->closing, memory_order_relaxed);
  for (size_t i = 0; i < d->nsubs; i++) {
    sub_t *s = d->subs[i];
    if (!defer || s->state != SUB_LIVE || s->q_len || s->busy || s->waiting || s->running || s->lease.on) {
      sub_run(s);
    } else if (s->cp && !s->blocking && !s->cp_due) {
      s->cp_due = true;
      if (!d->cp_check_on) {
        d->cp_check_on = true;
        uv_check_start(&d->cp_check, cp_check_cb);
      }
    }
  }
  cqrs__waiters_check(d);
}

/* Events the feed reads from the store may be other writers' commits, which
 * make the cached states of their aggregates stale. */
static bool feed_visit(const cqrs_event_t *e, void *data) {
  cqrs__dispatcher_seen(data, e);
  fan_out(data, e);
  return true;
}

typedef struct feed_work {
  uv_work_t req;
  cqrs_dispatcher_t *d;
  int64_t from;
  cqrs__event_vec_t read;
  cqrs_code_t rc;
  cqrs_error_t err;
} feed_work_t;

static void feed_work_cb(uv_work_t *w) {
  feed_work_t *fw = w->data;
  fw->rc = read_batch(fw->d->store, fw->from, &fw->read, &fw->err);
}

static void feed_retry(uv_timer_t *t) { cqrs__feed_kick(t->data, 0, 0); }

/* A read of the store failed: try again later, so that subscribers hear of
 * what was committed even if nothing else is. */
static void feed_failed(cqrs_dispatcher_t *d, const cqrs_error_t *err) {
  if (d->feed_failures++ == 0) cqrs_log(CQRS_LOG_WARNING, "bus", "event feed cannot read the store: %s", err->message);
  if (!atomic_load(&d->closing)) uv_timer_start(&d->feed_timer, feed_retry, backoff_ms(d, d->feed_failures), 0);
}

static void feed_after_work(uv_work_t *w, int status) {
  feed_work_t *fw = w->data;
  cqrs_dispatcher_t *d = fw->d;
  d->feed_busy = false;
  d->work_inflight--;
  if (status == 0 && fw->rc == CQRS_OK) {
    d->feed_failures = 0;
    for (size_t i = 0; i < fw->read.len; i++) {
      cqrs__dispatcher_seen(d, fw->read.items[i]);
      if (fw->read.items[i]->position > d->feed_pos) fan_out(d, fw->read.items[i]);
    }
  } else if (status == 0) {
    feed_failed(d, &fw->err);
  }
  bool again = d->feed_again || fw->read.len == FEED_BATCH;
  cqrs__event_vec_free(&fw->read);
  cqrs__free(fw);
  feed_done(d);
  if (again && !atomic_load(&d->closing)) cqrs__feed_kick(d, 0, 0);
  if (atomic_load(&d->closing)) cqrs__dispatcher_maybe_closed(d);
}

void cqrs__feed_committed(cqrs_dispatcher_t *d, cqrs__event_vec_t *events) {
  if (!events->len) return;
  int64_t first = events->items[0]->position, last = events->items[events->len - 1]->position;
  if (!d->head_known || d->nsubs == 0 || d->feed_busy || first != d->feed_pos + 1) {
    cqrs__feed_kick(d, first, last);
    return;
  }
  for (size_t i = 0; i < events->len; i++) fan_out(d, events->items[i]);
  feed_done(d);
}

typedef struct head_work {
  uv_work_t req;
  cqrs_dispatcher_t *d;
  int64_t head;
  cqrs_code_t rc;
  cqrs_error_t err;
} head_work_t;

static void head_work_cb(uv_work_t *w) {
  head_work_t *hw = w->data;
  hw->rc = cqrs_store_head(hw->d->store, &hw->head, &hw->err);
}

/* The feed starts at the head, or before the first commit this dispatcher
 * made meanwhile (it is published, with what others committed after it);
 * subscribers that joined meanwhile start there too. Projections could not
 * go live before: they catch up to there. */
static void head_after_work(uv_work_t *w, int status) {
  head_work_t *hw = w->data;
  cqrs_dispatcher_t *d = hw->d;
  d->feed_busy = false;
  d->work_inflight--;
  if (status == 0 && hw->rc == CQRS_OK) {
    d->feed_failures = 0;
    d->head_known = true;
    d->feed_pos = hw->head < d->head_floor ? hw->head : d->head_floor;
    for (size_t i = 0; i < d->nsubs; i++) {
      if (d->subs[i]->state == SUB_LIVE) d->subs[i]->position = d->feed_pos;
    }
  } else if (status == 0) {
    feed_failed(d, &hw->err);
  }
  cqrs__free(hw);
  if (atomic_load(&d->closing)) {
    cqrs__dispatcher_maybe_closed(d);
  } else if (d->head_known) {
    cqrs__feed_kick(d, 0, d->committed_max);
    feed_done(d);
  }
}

/* Reads a blocking store's head on the pool (the feed is busy meanwhile). */
static void read_head(cqrs_dispatcher_t *d) {
  head_work_t *hw = cqrs__calloc(1, sizeof *hw);
  if (hw) {
    hw->d = d;
    hw->req.data = hw;
  }
  if (!hw || uv_queue_work(d->loop, &hw->req, head_work_cb, head_after_work)) {
    cqrs__free(hw);
    cqrs_error_t err;
    cqrs_error_set(&err, CQRS_ENOMEM, "cannot queue a read of its head on the thread pool");
    feed_failed(d, &err);
    return;
  }
  d->feed_busy = true;
  d->work_inflight++;
}

void cqrs__feed_kick(cqrs_dispatcher_t *d, int64_t committed_from, int64_t committed_up_to) {
  if (!d->head_known) {
    if (committed_from > 0 && committed_from - 1 < d->head_floor) d->head_floor = committed_from - 1;
    if (committed_up_to > d->committed_max) d->committed_max = committed_up_to;
    if (!d->feed_busy && !atomic_load(&d->closing)) read_head(d);
    return;
  }
  if (d->nsubs == 0) {
    if (committed_up_to > d->feed_pos) d->feed_pos = committed_up_to;
    return;
  }
  if (!cqrs_store_blocking(d->store)) {
    cqrs_error_t err;
    int64_t before;
    do {
      before = d->feed_pos;
      if (cqrs_store_read_all(d->store, d->feed_pos + 1, FEED_BATCH, feed_visit, d, &err)) {
        feed_failed(d, &err);
        break;
      }
    } while (d->feed_pos - before == FEED_BATCH);
    feed_done(d);
    return;
  }
  if (d->feed_busy) {
    d->feed_again = true;
    return;
  }
  feed_work_t *fw = cqrs__calloc(1, sizeof *fw);
  if (fw) {
    fw->d = d;
    fw->from = d->feed_pos + 1;
    fw->req.data = fw;
  }
  if (!fw || uv_queue_work(d->loop, &fw->req, feed_work_cb, feed_after_work)) {
    cqrs__free(fw);
    cqrs_error_t err;
    cqrs_error_set(&err, CQRS_ENOMEM, "cannot queue a read on the thread pool");
    feed_failed(d, &err);
    return;
  }
  d->feed_busy = true;
  d->feed_again = false;
  d->work_inflight++;
}

/* ---- subscribing ---- */

static cqrs_code_t add_sub(cqrs_dispatcher_t *d, const char *name, const cqrs_event_type_t *const *types,
                           cqrs_event_handler_cb fn, void *data, bool blocking, sub_t **out, cqrs_error_t *err) {
  if (!d || !fn) return cqrs_error_set(err, CQRS_EINVAL, "NULL dispatcher or handler");
  if (atomic_load(&d->closing)) return cqrs_error_set(err, CQRS_ECLOSED, "dispatcher is closing");
  cqrs_code_t rc = cqrs__check_str(name, CQRS_NAME_MAX, "subscriber name", err);
  if (rc) return rc;
  for (size_t i = 0; i < d->nsubs; i++) {
    if (!strcmp(d->subs[i]->name, name))
      return cqrs_error_set(err, CQRS_EDUPLICATE, "subscriber '%s' already exists", name);
  }
  size_t ntypes = 0;
  if (types) {
    while (types[ntypes]) ntypes++;
  }
  sub_t *s = cqrs__calloc(1, sizeof *s);
  sub_t **subs = cqrs__realloc(d->subs, (d->nsubs + 1) * sizeof *subs);
  const cqrs_event_type_t **tcopy = types ? cqrs__calloc(ntypes + 1, sizeof *tcopy) : NULL;
  if (subs) d->subs = subs;
  if (!s || !subs || (types && !tcopy)) {
    cqrs__free(s);
    cqrs__free((void *)tcopy);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot add a subscriber");
  }
  if (tcopy) memcpy((void *)tcopy, types, ntypes * sizeof *tcopy);
  s->d = d;
  memcpy(s->name, name, strlen(name) + 1);
  s->types = tcopy;
  s->fn = fn;
  s->data = data;
  s->blocking = blocking;
  s->position = d->feed_pos;
  s->state = SUB_LIVE;
  uv_timer_init(d->loop, &s->timer);
  s->timer.data = s;
  d->handles_open++;
  d->subs[d->nsubs++] = s;
  *out = s;
  return CQRS_OK;
}

/* Undoes add_sub for a subscriber nothing has seen yet (the last one
 * added). Its timer closes first, counted as work in flight so that the
 * dispatcher waits for it. */
static void sub_discarded(uv_handle_t *h) {
  sub_t *s = h->data;
  cqrs_dispatcher_t *d = s->d;
  cqrs__free((void *)s->types);
  cqrs__free(s);
  d->work_inflight--;
  if (atomic_load(&d->closing)) cqrs__dispatcher_maybe_closed(d);
}

static void discard_sub(sub_t *s) {
  cqrs_dispatcher_t *d = s->d;
  d->subs[--d->nsubs] = NULL;
  d->handles_open--;
  d->work_inflight++;
  uv_close((uv_handle_t *)&s->timer, sub_discarded);
}

cqrs_code_t cqrs_dispatcher_subscribe(cqrs_dispatcher_t *d, const char *name, const cqrs_event_type_t *const *types,
                                      cqrs_event_handler_cb fn, void *data, unsigned flags, cqrs_error_t *err) {
  sub_t *s = NULL;
  return add_sub(d, name, types, fn, data, flags & CQRS_SUBSCRIBE_BLOCKING, &s, err);
}

/* Checkpoint loads of blocking checkpoint stores run on the pool. */
typedef struct cp_work {
  uv_work_t req;
  sub_t *s;
  int64_t position;
  cqrs_code_t rc;
  cqrs_error_t err;
} cp_work_t;

static void cp_work_cb(uv_work_t *w) {
  cp_work_t *cw = w->data;
  cw->rc = cqrs_checkpoints_load(cw->s->cp, cw->s->name, &cw->position, &cw->err);
}

static void start_catchup(sub_t *s, int64_t position) {
  s->position = s->read_pos = s->saved = position;
  s->state = SUB_CATCHING_UP;
  sub_run(s);
}

/* Keep the projection stopped rather than replaying from an unknown point;
 * under a lease, let it go: another process (or a later try) starts it. */
static void cp_load_failed(sub_t *s, const cqrs_error_t *err) {
  if (s->lease.on) {
    cqrs__lease_give_up(s, err);
    return;
  }
  cqrs_log(CQRS_LOG_ERROR, "bus", "projection %s cannot load its checkpoint: %s", s->name, err->message);
}

static void cp_after_work(uv_work_t *w, int status) {
  cp_work_t *cw = w->data;
  sub_t *s = cw->s;
  s->busy = false;
  s->d->work_inflight--;
  if (s->state != SUB_LOADING) {
    sub_run(s); /* the lease went while it loaded */
  } else if (status == 0 && cw->rc == CQRS_OK) {
    start_catchup(s, cw->position);
  } else if (!atomic_load(&s->d->closing)) {
    cp_load_failed(s, &cw->err);
  }
  cqrs__free(cw);
  if (atomic_load(&s->d->closing)) cqrs__dispatcher_maybe_closed(s->d);
}

/* Loads the checkpoint of `s` (SUB_LOADING), then catches up: inline, or
 * on the pool for blocking checkpoints. */
static void load_checkpoint(sub_t *s) {
  s->state = SUB_LOADING;
  if (!cqrs__checkpoints_blocking(s->cp)) {
    int64_t pos = 0;
    cqrs_error_t err;
    if (cqrs_checkpoints_load(s->cp, s->name, &pos, &err)) {
      cp_load_failed(s, &err);
    } else {
      start_catchup(s, pos);
    }
    return;
  }
  cp_work_t *cw = cqrs__calloc(1, sizeof *cw);
  if (cw) {
    cw->s = s;
    cw->req.data = cw;
    if (uv_queue_work(s->d->loop, &cw->req, cp_work_cb, cp_after_work) == 0) {
      s->busy = true;
      s->d->work_inflight++;
      return;
    }
    cqrs__free(cw);
  }
  cqrs_error_t err;
  cqrs_error_set(&err, CQRS_ENOMEM, "cannot queue a checkpoint load");
  cp_load_failed(s, &err);
}

void cqrs__sub_lease_acquired(sub_t *s) { load_checkpoint(s); }

void cqrs__sub_lease_lost(sub_t *s) {
  s->state = SUB_STANDBY;
  if (s->waiting) {
    uv_timer_stop(&s->timer);
    s->waiting = false;
  }
  s->attempts = 0;
  sub_run(s);
}

static cqrs_code_t projection_start(cqrs_dispatcher_t *d, const cqrs_projection_def_t *def, cqrs_checkpoints_t *cp,
                                    cqrs__checkpoint_fn checkpoint, bool async, sub_t **out, cqrs_error_t *err);

cqrs_code_t cqrs_projection_start(cqrs_dispatcher_t *d, const cqrs_projection_def_t *def, cqrs_checkpoints_t *cp,
                                  cqrs_error_t *err) {
  sub_t *s;
  return projection_start(d, def, cp, NULL, false, &s, err);
}

cqrs_code_t cqrs__projection_start_async(cqrs_dispatcher_t *d, const cqrs_projection_def_t *def,
                                         cqrs_checkpoints_t *cp, cqrs__checkpoint_fn checkpoint, sub_t **out,
                                         cqrs_error_t *err) {
  return projection_start(d, def, cp, checkpoint, true, out, err);
}

static cqrs_code_t projection_start(cqrs_dispatcher_t *d, const cqrs_projection_def_t *def, cqrs_checkpoints_t *cp,
                                    cqrs__checkpoint_fn checkpoint, bool async, sub_t **out, cqrs_error_t *err) {
  *out = NULL;
  if (!d || !def || !cp) return cqrs_error_set(err, CQRS_EINVAL, "NULL dispatcher, definition or checkpoints");
  if (d->leasing && !cqrs__checkpoints_fenced(cp))
    return cqrs_error_set(err, CQRS_EINVAL, "under leases a projection needs checkpoints that fence their writes");
  bool cp_blocking = cqrs__checkpoints_blocking(cp);
  int64_t pos = 0;
  cqrs_code_t rc;
  if (!cp_blocking && !d->leasing) {
    if ((rc = cqrs__check_str(def->name, CQRS_NAME_MAX, "projection name", err))) return rc;
    if ((rc = cqrs_checkpoints_load(cp, def->name, &pos, err))) return rc;
  }
  cp_work_t *cw = NULL;
  if (cp_blocking && !d->leasing && !(cw = cqrs__calloc(1, sizeof *cw)))
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot start a projection");
  sub_t *s = NULL;
  rc = add_sub(d, def->name, def->types, def->handler, def->data,
               !async && ((def->flags & CQRS_SUBSCRIBE_BLOCKING) || cp_blocking), &s, err);
  if (rc) {
    cqrs__free(cw);
    return rc;
  }
  *out = s;
  s->cp = cp;
  s->async = async;
  s->checkpoint = checkpoint;
  s->cp_blocking = async && cp_blocking;
  s->state = SUB_LOADING;
  if (d->leasing) {
    cqrs__lease_sub_added(s); /* loads its checkpoint once it holds the lease */
    return CQRS_OK;
  }
  if (!cp_blocking) {
    start_catchup(s, pos);
    return CQRS_OK;
  }
  cw->s = s;
  cw->req.data = cw;
  if (uv_queue_work(d->loop, &cw->req, cp_work_cb, cp_after_work)) {
    cqrs__free(cw);
    *out = NULL;
    discard_sub(s);
    return cqrs_error_set(err, CQRS_ENOMEM, "projection %s cannot queue its checkpoint load on the thread pool",
                          def->name);
  }
  s->busy = true;
  d->work_inflight++;
  return CQRS_OK;
}

static const sub_t *find_sub(const cqrs_dispatcher_t *d, const char *name) {
  if (!d || !name) return NULL;
  for (size_t i = 0; i < d->nsubs; i++) {
    if (!strcmp(d->subs[i]->name, name)) return d->subs[i];
  }
  return NULL;
}

bool cqrs_projection_live(const cqrs_dispatcher_t *d, const char *name) {
  const sub_t *s = find_sub(d, name);
  return s && s->state == SUB_LIVE;
}

int64_t cqrs_projection_position(const cqrs_dispatcher_t *d, const char *name) {
  const sub_t *s = find_sub(d, name);
  return s ? s->position : 0;
}

/* ---- closing ---- */

void cqrs__bus_init(cqrs_dispatcher_t *d) {
  uv_check_init(d->loop, &d->cp_check);
  uv_unref((uv_handle_t *)&d->cp_check); /* the loop need not stay for it: it runs in the iteration that started it */
  d->cp_check.data = d;
  d->handles_open++;
}

void cqrs__bus_close(cqrs_dispatcher_t *d) {
  for (size_t i = 0; i < d->nsubs; i++) {
    sub_t *s = d->subs[i];
    if (s->waiting) {
      uv_timer_stop(&s->timer);
      s->waiting = false;
    }
    sub_run(s);
  }
}

bool cqrs__bus_idle(const cqrs_dispatcher_t *d) {
  if (d->feed_busy) return false;
  for (size_t i = 0; i < d->nsubs; i++) {
    const sub_t *s = d->subs[i];
    if (s->busy || s->q_len || s->cp_saving) return false;
  }
  return true;
}

void cqrs__bus_close_handles(cqrs_dispatcher_t *d, uv_close_cb cb) {
  if (d->leasing) cqrs__leases_close_handles(d, cb);
  uv_close((uv_handle_t *)&d->cp_check, cb);
  for (size_t i = 0; i < d->nsubs; i++) {
    d->subs[i]->timer.data = d;
    uv_close((uv_handle_t *)&d->subs[i]->timer, cb);
  }
}

void cqrs__bus_free(cqrs_dispatcher_t *d) {
  for (size_t i = 0; i < d->nsubs; i++) {
    sub_t *s = d->subs[i];
    while (s->q_len) q_pop(s);
    cqrs__free((void *)s->q);
    cqrs__free((void *)s->types);
    cqrs__free(s);
  }
  cqrs__free(d->subs);
  cqrs__leases_free(d);
  for (size_t i = 0; i < d->ndead; i++) cqrs_event_unref(d->dead[(d->dead_head + i) % d->dead_cap].event);
  cqrs__free(d->dead);
}

/* ---- figures for metrics ---- */

bool cqrs__bus_sub_figures(const cqrs_dispatcher_t *d, size_t i, cqrs__sub_figures_t *out) {
  if (!d || i >= d->nsubs) return false;
  const sub_t *s = d->subs[i];
  out->name = s->name;
  out->position = s->position;
  /* A live subscriber with nothing queued has seen everything the feed has,
   * including the events its types filter out. */
  bool idle = s->state == SUB_LIVE && !s->q_len && !s->busy && !s->waiting;
  out->handled_up_to = idle && d->feed_pos > s->position ? d->feed_pos : s->position;
  out->oldest_pending_ts = s->q_len ? q_peek(s, 0)->timestamp : 0;
  if (s->state == SUB_STANDBY) { /* another process runs it: its lag is that one's to show */
    out->handled_up_to = d->feed_pos;
    out->oldest_pending_ts = 0;
  }
  out->retries = s->retries;
  out->dead_letters = s->dead_letters;
  return true;
}

int64_t cqrs__bus_feed_position(const cqrs_dispatcher_t *d) { return d ? d->feed_pos : 0; }
