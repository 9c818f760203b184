/* Waiting on the loop: until projections have handled a position
 * (read-your-writes), or until a condition another part of the runtime
 * checks holds (cqrs__wait_until: a process manager without open
 * instances). A subscriber has handled position p when its own position
 * reached p, or when it is live and idle and the feed has gone past p (the
 * events in between were not of its types). */
#include <stdio.h>

#include "events/events-private.h"

typedef struct cqrs__waiter {
  struct cqrs__waiter *next;
  char name[CQRS_NAME_MAX]; /* "": every projection */
  int64_t position;
  cqrs__wait_check_fn check; /* NULL: projections reaching `position` */
  uint64_t deadline; /* cqrs__runtime_now */
  uint64_t timeout_ms;
  bool timed; /* deadline set (on the loop) */
  cqrs_wait_cb cb;
  void *data;
} waiter_t;

static bool sub_reached(const cqrs__events_t *ev, const sub_t *s, int64_t position) {
  if (cqrs__park_floor(s) < position) return false; /* an event up to it is set aside */
  if (s->position >= position) return true;
  return s->state == SUB_LIVE && !s->q_len && !s->busy && !s->waiting && ev->feed_pos >= position;
}

static bool reached(const cqrs__events_t *ev, const waiter_t *w) {
  for (size_t i = 0; i < ev->nsubs; i++) {
    const sub_t *s = ev->subs[i];
    /* All projections: those whose lease another process holds run there. */
    if (w->name[0] ? !strcmp(s->name, w->name) : s->cp != NULL && s->state != SUB_STANDBY) {
      if (!sub_reached(ev, s, w->position)) return false;
    }
  }
  return true;
}

static const sub_t *find(const cqrs__events_t *ev, const char *name) {
  for (size_t i = 0; i < ev->nsubs; i++) {
    if (!strcmp(ev->subs[i]->name, name)) return ev->subs[i];
  }
  return NULL;
}

static void wait_timer_cb(uv_timer_t *t) { cqrs__waiters_check(t->data); }

/* Completes what is due and arms the timer for the nearest deadline. */
void cqrs__waiters_check(cqrs__events_t *ev) {
  if (!ev->waiters) return;
  uint64_t now = cqrs__runtime_now(ev->rt), next = UINT64_MAX;
  waiter_t **pp = &ev->waiters;
  while (*pp) {
    waiter_t *w = *pp;
    if (!w->timed) {
      w->deadline = now + w->timeout_ms;
      w->timed = true;
    }
    /* A name no subscriber has: one waited for from another thread, which
     * could not look (cqrs_projection_wait refuses it at once). */
    cqrs_code_t status = w->check                         ? w->check(ev->rt, w->name)
                         : w->name[0] && !find(ev, w->name) ? CQRS_ENOT_FOUND
                         : reached(ev, w)                  ? CQRS_OK
                                                          : CQRS_CODE_COUNT;
    if (status == CQRS_CODE_COUNT && now >= w->deadline) status = CQRS_ETIMEOUT;
    if (status == CQRS_CODE_COUNT) {
      if (w->deadline < next) next = w->deadline;
      pp = &w->next;
      continue;
    }
    *pp = w->next;
    w->cb(status, w->data);
    cqrs__free(w);
  }
  if (next == UINT64_MAX) {
    cqrs__timer_stop(&ev->wait_timer);
  } else {
    cqrs__timer_start(&ev->wait_timer, wait_timer_cb, next - now, 0);
  }
}

void cqrs__waiters_kick(cqrs__events_t *ev) {
  if (ev->waiters) cqrs__timer_start(&ev->wait_timer, wait_timer_cb, 0, 0);
}

static void adopt(cqrs__events_t *ev) {
  while (ev->wait_inbox) {
    waiter_t *w = ev->wait_inbox;
    ev->wait_inbox = w->next;
    w->next = ev->waiters;
    ev->waiters = w;
  }
}

/* Waiters handed over from other threads. */
static void wait_async_cb(uv_async_t *h) {
  cqrs__events_t *ev = h->data;
  uv_mutex_lock(&ev->rt->lock);
  adopt(ev);
  uv_mutex_unlock(&ev->rt->lock);
  cqrs__waiters_check(ev);
}

cqrs_code_t cqrs__waiters_init(cqrs__events_t *ev, cqrs_error_t *err) {
  if (uv_async_init(ev->rt->loop, &ev->wait_async, wait_async_cb))
    return cqrs_error_set(err, CQRS_EINVAL, "cannot attach the waiters to the loop");
  ev->wait_async.data = ev;
  uv_unref((uv_handle_t *)&ev->wait_async); /* like the loop's other handles: it runs for the application */
  cqrs__runtime_handle_opened(ev->rt);
  cqrs__timer_init(ev->rt, &ev->wait_timer, NULL, ev);
  cqrs__runtime_handle_opened(ev->rt);
  return CQRS_OK;
}

void cqrs__waiters_close_handles(cqrs__events_t *ev) {
  cqrs__timer_close(ev->rt, &ev->wait_timer);
  cqrs__runtime_close_handle(ev->rt, (uv_handle_t *)&ev->wait_async);
}

void cqrs__waiters_close(cqrs__events_t *ev) {
  cqrs__timer_stop(&ev->wait_timer);
  uv_mutex_lock(&ev->rt->lock);
  adopt(ev);
  uv_mutex_unlock(&ev->rt->lock);
  while (ev->waiters) {
    waiter_t *w = ev->waiters;
    ev->waiters = w->next;
    w->cb(CQRS_ECLOSED, w->data);
    cqrs__free(w);
  }
}

static waiter_t *waiter_new(const char *name, int64_t position, cqrs__wait_check_fn check, uint64_t timeout_ms,
                            cqrs_wait_cb cb, void *data) {
  waiter_t *w = cqrs__calloc(1, sizeof *w);
  if (!w) return NULL;
  if (name) snprintf(w->name, sizeof w->name, "%s", name);
  w->position = position;
  w->check = check;
  w->timeout_ms = timeout_ms;
  w->cb = cb;
  w->data = data;
  return w;
}

/* Loop thread: `w` (taken over) waits, completed at the next turn of the
 * loop at the earliest, never inside the call. */
static void wait_add(cqrs__events_t *ev, waiter_t *w) {
  w->next = ev->waiters;
  ev->waiters = w;
  cqrs__timer_start(&ev->wait_timer, wait_timer_cb, 0, 0);
}

cqrs_code_t cqrs_projection_wait(cqrs_dispatcher_t *d, const char *name, int64_t position, uint64_t timeout_ms,
                                 cqrs_wait_cb cb, void *data) {
  if (!d || !cb) return CQRS_EINVAL;
  cqrs__events_t *ev = d->events;
  if (cqrs__runtime_closing(d)) return CQRS_ECLOSED;
  if (name && !find(ev, name)) return CQRS_ENOT_FOUND;
  waiter_t *w = waiter_new(name, position, NULL, timeout_ms, cb, data);
  if (!w) return CQRS_ENOMEM;
  wait_add(ev, w);
  return CQRS_OK;
}

cqrs_code_t cqrs__wait_until(cqrs_dispatcher_t *d, cqrs__wait_check_fn check, const char *name, uint64_t timeout_ms,
                             cqrs_wait_cb cb, void *data) {
  waiter_t *w = waiter_new(name, 0, check, timeout_ms, cb, data);
  if (!w) return CQRS_ENOMEM;
  wait_add(d->events, w);
  return CQRS_OK;
}

typedef struct sync_wait {
  uv_sem_t sem;
  cqrs_code_t status;
} sync_wait_t;

static void wake(cqrs_code_t status, void *data) {
  sync_wait_t *s = data;
  s->status = status;
  uv_sem_post(&s->sem);
}

/* From a thread other than the loop's: hands `w` (taken over) to the loop
 * and blocks until it completes. */
static cqrs_code_t wait_sync(cqrs_dispatcher_t *d, const char *name, int64_t position, cqrs__wait_check_fn check,
                             uint64_t timeout_ms) {
  if (cqrs__runtime_on_loop(d)) return CQRS_ESTATE;
  /* No subscriber has a longer name; the waiter's copy would cut it to one that may. */
  if (name && strlen(name) >= CQRS_NAME_MAX) return CQRS_ENOT_FOUND;
  cqrs__events_t *ev = d->events;
  sync_wait_t s = {.status = CQRS_OK};
  if (uv_sem_init(&s.sem, 0)) return CQRS_ENOMEM;
  waiter_t *w = waiter_new(name, position, check, timeout_ms, wake, &s);
  if (!w) {
    uv_sem_destroy(&s.sem);
    return CQRS_ENOMEM;
  }
  atomic_fetch_add(&d->senders, 1);
  uv_mutex_lock(&d->lock);
  bool closing = atomic_load(&d->closing);
  if (!closing) {
    w->next = ev->wait_inbox;
    ev->wait_inbox = w;
    uv_async_send(&ev->wait_async);
  }
  uv_mutex_unlock(&d->lock);
  atomic_fetch_sub(&d->senders, 1);
  if (closing) {
    cqrs__free(w);
    uv_sem_destroy(&s.sem);
    return CQRS_ECLOSED;
  }
  uv_sem_wait(&s.sem);
  uv_sem_destroy(&s.sem);
  return s.status;
}

cqrs_code_t cqrs_projection_wait_sync(cqrs_dispatcher_t *d, const char *name, int64_t position,
                                      uint64_t timeout_ms) {
  if (!d) return CQRS_EINVAL;
  return wait_sync(d, name, position, NULL, timeout_ms);
}

cqrs_code_t cqrs__wait_until_sync(cqrs_dispatcher_t *d, cqrs__wait_check_fn check, const char *name,
                                  uint64_t timeout_ms) {
  return wait_sync(d, name, 0, check, timeout_ms);
}
