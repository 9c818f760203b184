/* The event side as a component of the runtime, and its feed: what the
 * command side committed, or what the store holds past what was published,
 * fanned out to the subscribers in position order. */
#include "events/events-private.h"

#define FEED_BATCH 256

static void fan_out(cqrs__events_t *ev, const cqrs_event_t *e) {
  for (size_t i = 0; i < ev->nsubs; i++) {
    sub_t *s = ev->subs[i];
    if (s->state != SUB_LIVE || e->position <= s->position || !cqrs__sub_wants(s, e)) continue;
    if (!s->q_len && !s->npark && !s->busy && !s->waiting && !s->blocking && !s->running && !s->async &&
        !s->lease.on && !cqrs__sub_held(s) && !s->ctl.skip_at) {
      cqrs_error_t err;
      if (cqrs__sub_deliver(s, e, &err) == CQRS_OK) {
        s->position = e->position;
        continue;
      }
      if (!cqrs__sub_push(s, e)) {
        /* No room to hold it for a retry: this subscriber gives up on it. */
        cqrs__dead_letter(s, e, &err, 1, cqrs__clock_wall(ev->rt->clock));
        s->position = e->position;
        continue;
      }
      cqrs__sub_failed(s, &err);
      continue;
    }
    if (!cqrs__sub_push(s, e)) {
      cqrs_error_t err;
      cqrs_error_set(&err, CQRS_ENOMEM, "subscriber queue full");
      cqrs__dead_letter(s, e, &err, 0, 0);
    }
  }
  ev->feed_pos = e->position;
}

/* A subscriber the feed found idle (live, nothing queued or in flight, no
 * lease to fence its writes) saves its checkpoint once the loop has run
 * what this iteration brought (the check phase), not after every event: a
 * batch of commands costs one save. Behind by at most that batch, the
 * checkpoint is never ahead of what was applied, and what a crash loses is
 * applied again (handlers are idempotent). */
static void cp_check_cb(uv_check_t *h) {
  cqrs__events_t *ev = h->data;
  uv_check_stop(h);
  ev->cp_check_on = false;
  for (size_t i = 0; i < ev->nsubs; i++) {
    sub_t *s = ev->subs[i];
    if (!s->cp_due) continue;
    s->cp_due = false;
    if (!s->running) cqrs__sub_save_checkpoint(s);
  }
}

static void feed_done(cqrs__events_t *ev) {
  bool defer = !cqrs__runtime_closing(ev->rt);
  for (size_t i = 0; i < ev->nsubs; i++) {
    sub_t *s = ev->subs[i];
    if (!defer || s->state != SUB_LIVE || s->q_len || s->npark || s->busy || s->waiting || s->running ||
        s->lease.on) {
      cqrs__sub_run(s);
    } else if (s->cp && !s->blocking && !s->cp_due) {
      s->cp_due = true;
      if (!ev->cp_check_on) {
        ev->cp_check_on = true;
        uv_check_start(&ev->cp_check, cp_check_cb);
      }
    }
  }
  cqrs__waiters_check(ev);
}

/* Events the feed reads from the store may be other writers' commits, which
 * make the cached states of their aggregates stale (the seen port). */
static void seen(cqrs__events_t *ev, const cqrs_event_t *e) {
  if (ev->rt->seen.seen) ev->rt->seen.seen(ev->rt->seen.self, e);
}

static bool feed_visit(const cqrs_event_t *e, void *data) {
  seen(data, e);
  fan_out(data, e);
  return true;
}

typedef struct feed_work {
  cqrs__job_t job; /* first: the job is the work */
  cqrs__events_t *ev;
  int64_t from;
  cqrs__event_vec_t read;
  cqrs_code_t rc;
  cqrs_error_t err;
} feed_work_t;

static void feed_work_cb(cqrs__job_t *job) {
  feed_work_t *fw = (feed_work_t *)job;
  fw->rc = cqrs__events_read_batch(fw->ev->rt->store, fw->from, FEED_BATCH, &fw->read, &fw->err);
}

static bool kick(void *self, int64_t committed_from, int64_t committed_up_to);

static void feed_retry(uv_timer_t *t) { kick(t->data, 0, 0); }

/* A read of the store failed: try again later, so that subscribers hear of
 * what was committed even if nothing else is. */
static void feed_failed(cqrs__events_t *ev, const cqrs_error_t *err) {
  if (ev->feed_failures++ == 0) cqrs_log(CQRS_LOG_WARNING, "bus", "event feed cannot read the store: %s", err->message);
  if (!cqrs__runtime_closing(ev->rt))
    cqrs__timer_start(&ev->feed_timer, feed_retry, cqrs__events_backoff(ev, ev->feed_failures), 0);
}

static void feed_after_work(cqrs__job_t *job, bool cancelled) {
  feed_work_t *fw = (feed_work_t *)job;
  cqrs__events_t *ev = fw->ev;
  ev->feed_busy = false;
  if (!cancelled && fw->rc == CQRS_OK) {
    ev->feed_failures = 0;
    for (size_t i = 0; i < fw->read.len; i++) {
      seen(ev, fw->read.items[i]);
      if (fw->read.items[i]->position > ev->feed_pos) fan_out(ev, fw->read.items[i]);
    }
  } else if (!cancelled) {
    feed_failed(ev, &fw->err);
  }
  bool again = ev->feed_again || fw->read.len == FEED_BATCH;
  cqrs__event_vec_free(&fw->read);
  cqrs__free(fw);
  feed_done(ev);
  if (again && !cqrs__runtime_closing(ev->rt)) kick(ev, 0, 0);
}

/* The publish port: what the command side committed. Published from here
 * when it follows what the feed has published, else read back. */
static void committed(void *self, cqrs__event_vec_t *events) {
  cqrs__events_t *ev = self;
  if (!events->len) return;
  int64_t first = events->items[0]->position, last = events->items[events->len - 1]->position;
  if (!ev->head_known || ev->nsubs == 0 || ev->feed_busy || first != ev->feed_pos + 1) {
    kick(ev, first, last);
    return;
  }
  for (size_t i = 0; i < events->len; i++) fan_out(ev, events->items[i]);
  feed_done(ev);
}

typedef struct head_work {
  cqrs__job_t job; /* first: the job is the work */
  cqrs__events_t *ev;
  int64_t head;
  cqrs_code_t rc;
  cqrs_error_t err;
} head_work_t;

static void head_work_cb(cqrs__job_t *job) {
  head_work_t *hw = (head_work_t *)job;
  hw->rc = cqrs_store_head(hw->ev->rt->store, &hw->head, &hw->err);
}

/* The feed starts at the head, or before the first commit this dispatcher
 * made meanwhile (it is published, with what others committed after it);
 * subscribers that joined meanwhile start there too. Projections could not
 * go live before: they catch up to there. */
static void head_after_work(cqrs__job_t *job, bool cancelled) {
  head_work_t *hw = (head_work_t *)job;
  cqrs__events_t *ev = hw->ev;
  ev->feed_busy = false;
  if (!cancelled && hw->rc == CQRS_OK) {
    ev->feed_failures = 0;
    ev->head_known = true;
    ev->feed_pos = hw->head < ev->head_floor ? hw->head : ev->head_floor;
    for (size_t i = 0; i < ev->nsubs; i++) {
      if (ev->subs[i]->state == SUB_LIVE) ev->subs[i]->position = ev->feed_pos;
    }
  } else if (!cancelled) {
    feed_failed(ev, &hw->err);
  }
  cqrs__free(hw);
  if (!cqrs__runtime_closing(ev->rt) && ev->head_known) {
    kick(ev, 0, ev->committed_max);
    feed_done(ev);
  }
}

/* Reads a blocking store's head on the pool (the feed is busy meanwhile). */
static void read_head(cqrs__events_t *ev) {
  head_work_t *hw = cqrs__calloc(1, sizeof *hw);
  cqrs_error_t err;
  if (hw) hw->ev = ev;
  if (!hw || cqrs__job_submit(ev->rt, &hw->job, head_work_cb, head_after_work, &err)) {
    cqrs__free(hw);
    cqrs_error_set(&err, CQRS_ENOMEM, "cannot queue a read of its head on the thread pool");
    feed_failed(ev, &err);
    return;
  }
  ev->feed_busy = true;
}

/* The publish port: the store holds commits the feed has not published
 * (`committed_from`..`committed_up_to`: this dispatcher's; 0, 0: maybe
 * others'): reads them, inline or on the pool. Before the head is known it
 * reads the head instead (a blocking store). */
static bool kick(void *self, int64_t committed_from, int64_t committed_up_to) {
  cqrs__events_t *ev = self;
  cqrs_store_t *store = ev->rt->store;
  if (!ev->head_known) {
    if (committed_from > 0 && committed_from - 1 < ev->head_floor) ev->head_floor = committed_from - 1;
    if (committed_up_to > ev->committed_max) ev->committed_max = committed_up_to;
    if (!ev->feed_busy && !cqrs__runtime_closing(ev->rt)) read_head(ev);
    return false;
  }
  if (committed_up_to && committed_up_to <= ev->feed_pos) return ev->nsubs && !cqrs_store_blocking(store);
  if (ev->nsubs == 0) {
    if (committed_up_to > ev->feed_pos) ev->feed_pos = committed_up_to;
    return false;
  }
  if (!cqrs_store_blocking(store)) {
    cqrs_error_t err;
    int64_t before;
    do {
      before = ev->feed_pos;
      if (cqrs_store_read_all(store, ev->feed_pos + 1, FEED_BATCH, feed_visit, ev, &err)) {
        feed_failed(ev, &err);
        break;
      }
    } while (ev->feed_pos - before == FEED_BATCH);
    feed_done(ev);
    return true;
  }
  if (ev->feed_busy) {
    ev->feed_again = true;
    return false;
  }
  feed_work_t *fw = cqrs__calloc(1, sizeof *fw);
  cqrs_error_t err;
  if (fw) {
    fw->ev = ev;
    fw->from = ev->feed_pos + 1;
  }
  if (!fw || cqrs__job_submit(ev->rt, &fw->job, feed_work_cb, feed_after_work, &err)) {
    cqrs__free(fw);
    cqrs_error_set(&err, CQRS_ENOMEM, "cannot queue a read on the thread pool");
    feed_failed(ev, &err);
    return false;
  }
  ev->feed_busy = true;
  ev->feed_again = false;
  return false;
}

static void poll_cb(uv_timer_t *t) { kick(t->data, 0, 0); }

/* ---- the component ---- */

/* Closing: no more polls or feed retries; waiters hear of it; back-offs
 * are cut short, so that subscribers deliver what they hold. */
static void events_closing(cqrs__component_t *c) {
  cqrs__events_t *ev = (cqrs__events_t *)c;
  if (ev->poll_on) cqrs__timer_stop(&ev->poll);
  if (ev->control_on) cqrs__timer_stop(&ev->control_timer);
  cqrs__timer_stop(&ev->feed_timer);
  cqrs__waiters_close(ev);
  for (size_t i = 0; i < ev->nsubs; i++) {
    sub_t *s = ev->subs[i];
    if (s->waiting) {
      cqrs__timer_stop(&s->timer);
      s->waiting = false;
    }
    cqrs__sub_run(s);
  }
}

static bool events_idle(const cqrs__component_t *c) {
  const cqrs__events_t *ev = (const cqrs__events_t *)c;
  if (ev->feed_busy) return false;
  for (size_t i = 0; i < ev->nsubs; i++) {
    const sub_t *s = ev->subs[i];
    if (s->busy || s->q_len || s->npark || s->cp_saving) return false;
  }
  return true;
}

static void events_close_handles(cqrs__component_t *c) {
  cqrs__events_t *ev = (cqrs__events_t *)c;
  cqrs__runtime_t *rt = ev->rt;
  if (!ev->attached) return;
  cqrs__timer_close(rt, &ev->feed_timer);
  cqrs__runtime_close_handle(rt, (uv_handle_t *)&ev->cp_check);
  cqrs__timer_close(rt, &ev->park_timer);
  cqrs__control_close_handles(ev);
  if (ev->poll_on) cqrs__timer_close(rt, &ev->poll);
  for (size_t i = 0; i < ev->nsubs; i++) cqrs__timer_close(rt, &ev->subs[i]->timer);
  cqrs__waiters_close_handles(ev);
}

static void events_free(cqrs__component_t *c) {
  cqrs__events_t *ev = (cqrs__events_t *)c;
  for (size_t i = 0; i < ev->nsubs; i++) cqrs__sub_free(ev->subs[i]);
  cqrs__free(ev->subs);
  cqrs__dead_letters_free(ev);
  cqrs__free(ev);
}

static const cqrs__component_ops_t events_ops = {.name = "events",
                                                 .closing = events_closing,
                                                 .idle = events_idle,
                                                 .close_handles = events_close_handles,
                                                 .free = events_free};

cqrs_code_t cqrs__events_new(cqrs__runtime_t *rt, const cqrs_dispatcher_options_t *opts, cqrs_error_t *err) {
  cqrs__events_t *ev = cqrs__calloc(1, sizeof *ev);
  if (!ev) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate the event side of a dispatcher");
  ev->rt = rt;
  ev->retry_attempts = opts->retry_attempts ? opts->retry_attempts : 1;
  ev->retry_base_ms = opts->retry_base_ms;
  ev->retry_cap_ms = opts->retry_cap_ms;
  ev->dead_letter = opts->dead_letter;
  ev->dead_letter_info = opts->dead_letter_info;
  ev->dead_letter_data = opts->dead_letter_data;
  ev->dead_letters_kept = opts->dead_letters_kept ? opts->dead_letters_kept : 1024;
  /* A blocking store's head is read on the pool, once the loop runs. */
  ev->head_known = !cqrs_store_blocking(rt->store);
  ev->head_floor = INT64_MAX;
  cqrs_code_t rc = ev->head_known ? cqrs_store_head(rt->store, &ev->feed_pos, err) : CQRS_OK;
  if (rc) {
    cqrs__free(ev);
    return rc;
  }
  ev->poll_ms = opts->poll_ms;
  ev->control_ms = opts->control_ms;
  cqrs__runtime_add(rt, &ev->comp, &events_ops);
  rt->events = ev;
  rt->publish = (cqrs__publish_port_t){ev, committed, kick};
  return CQRS_OK;
}

cqrs_code_t cqrs__events_attach(cqrs__events_t *ev, cqrs_error_t *err) {
  cqrs__runtime_t *rt = ev->rt;
  cqrs_code_t rc = cqrs__waiters_init(ev, err);
  if (rc) return rc;
  ev->attached = true;
  cqrs__timer_init(rt, &ev->feed_timer, NULL, ev);
  cqrs__runtime_handle_opened(rt);
  cqrs__timer_init(rt, &ev->park_timer, NULL, ev);
  cqrs__runtime_handle_opened(rt);
  uv_check_init(rt->loop, &ev->cp_check);
  uv_unref((uv_handle_t *)&ev->cp_check); /* the loop need not stay for it: it runs in the iteration that started it */
  ev->cp_check.data = ev;
  cqrs__runtime_handle_opened(rt);
  if (ev->poll_ms) {
    cqrs__timer_init(rt, &ev->poll, NULL, ev);
    cqrs__timer_start(&ev->poll, poll_cb, ev->poll_ms, ev->poll_ms);
    uv_unref((uv_handle_t *)&ev->poll.handle);
    ev->poll_on = true;
    cqrs__runtime_handle_opened(rt);
  }
  cqrs__control_attach(ev);
  if (!ev->head_known) kick(ev, 0, 0);
  return CQRS_OK;
}
