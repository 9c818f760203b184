/* Read-your-writes: waiting until projections have handled a position. A
 * subscriber has handled position p when its own position reached p, or
 * when it is live and idle and the feed has gone past p (the events in
 * between were not of its types). */
#include "command/dispatcher-private.h"

typedef struct cqrs__waiter {
  struct cqrs__waiter *next;
  char name[CQRS_NAME_MAX]; /* "": every projection */
  int64_t position;
  uint64_t deadline; /* uv_now */
  uint64_t timeout_ms;
  bool timed; /* deadline set (on the loop) */
  cqrs_wait_cb cb;
  void *data;
} waiter_t;

static bool sub_reached(const cqrs_dispatcher_t *d, const sub_t *s, int64_t position) {
  if (s->position >= position) return true;
  return s->state == SUB_LIVE && !s->q_len && !s->busy && !s->waiting && d->feed_pos >= position;
}

static bool reached(const cqrs_dispatcher_t *d, const waiter_t *w) {
  for (size_t i = 0; i < d->nsubs; i++) {
    const sub_t *s = d->subs[i];
    /* All projections: those whose lease another process holds run there. */
    if (w->name[0] ? !strcmp(s->name, w->name) : s->cp != NULL && s->state != SUB_STANDBY) {
      if (!sub_reached(d, s, w->position)) return false;
    }
  }
  return true;
}

static const sub_t *find(const cqrs_dispatcher_t *d, const char *name) {
  for (size_t i = 0; i < d->nsubs; i++) {
    if (!strcmp(d->subs[i]->name, name)) return d->subs[i];
  }
  return NULL;
}

static void wait_timer_cb(uv_timer_t *t) { cqrs__waiters_check(t->data); }

/* Completes what is due and arms the timer for the nearest deadline. */
void cqrs__waiters_check(cqrs_dispatcher_t *d) {
  if (!d->waiters) return;
  uint64_t now = uv_now(d->loop), next = UINT64_MAX;
  waiter_t **pp = &d->waiters;
  while (*pp) {
    waiter_t *w = *pp;
    if (!w->timed) {
      w->deadline = now + w->timeout_ms;
      w->timed = true;
    }
    /* A name no subscriber has: one waited for from another thread, which
     * could not look (cqrs_projection_wait refuses it at once). */
    cqrs_code_t status = w->name[0] && !find(d, w->name) ? CQRS_ENOT_FOUND
                         : reached(d, w)                  ? CQRS_OK
                         : now >= w->deadline             ? CQRS_ETIMEOUT
                                                          : CQRS_CODE_COUNT;
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
    uv_timer_stop(&d->wait_timer);
  } else {
    uv_timer_start(&d->wait_timer, wait_timer_cb, next - now, 0);
  }
}

void cqrs__waiters_adopt(cqrs_dispatcher_t *d) {
  while (d->wait_inbox) {
    waiter_t *w = d->wait_inbox;
    d->wait_inbox = w->next;
    w->next = d->waiters;
    d->waiters = w;
  }
}

void cqrs__waiters_close(cqrs_dispatcher_t *d) {
  uv_timer_stop(&d->wait_timer);
  uv_mutex_lock(&d->inbox_lock);
  cqrs__waiters_adopt(d);
  uv_mutex_unlock(&d->inbox_lock);
  while (d->waiters) {
    waiter_t *w = d->waiters;
    d->waiters = w->next;
    w->cb(CQRS_ECLOSED, w->data);
    cqrs__free(w);
  }
}

static waiter_t *waiter_new(const char *name, int64_t position, uint64_t timeout_ms, cqrs_wait_cb cb, void *data) {
  waiter_t *w = cqrs__calloc(1, sizeof *w);
  if (!w) return NULL;
  if (name) snprintf(w->name, sizeof w->name, "%s", name);
  w->position = position;
  w->timeout_ms = timeout_ms;
  w->cb = cb;
  w->data = data;
  return w;
}

cqrs_code_t cqrs_projection_wait(cqrs_dispatcher_t *d, const char *name, int64_t position, uint64_t timeout_ms,
                                 cqrs_wait_cb cb, void *data) {
  if (!d || !cb) return CQRS_EINVAL;
  if (atomic_load(&d->closing)) return CQRS_ECLOSED;
  if (name && !find(d, name)) return CQRS_ENOT_FOUND;
  waiter_t *w = waiter_new(name, position, timeout_ms, cb, data);
  if (!w) return CQRS_ENOMEM;
  w->next = d->waiters;
  d->waiters = w;
  /* Never inside the call: at the next turn of the loop at the earliest. */
  uv_timer_start(&d->wait_timer, wait_timer_cb, 0, 0);
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

cqrs_code_t cqrs_projection_wait_sync(cqrs_dispatcher_t *d, const char *name, int64_t position,
                                      uint64_t timeout_ms) {
  if (!d) return CQRS_EINVAL;
  uv_thread_t self = uv_thread_self();
  if (uv_thread_equal(&self, &d->loop_thread)) return CQRS_ESTATE;
  sync_wait_t s = {.status = CQRS_OK};
  if (uv_sem_init(&s.sem, 0)) return CQRS_ENOMEM;
  waiter_t *w = waiter_new(name, position, timeout_ms, wake, &s);
  if (!w) {
    uv_sem_destroy(&s.sem);
    return CQRS_ENOMEM;
  }
  atomic_fetch_add(&d->senders, 1);
  uv_mutex_lock(&d->inbox_lock);
  bool closing = atomic_load(&d->closing);
  if (!closing) {
    w->next = d->wait_inbox;
    d->wait_inbox = w;
    uv_async_send(&d->async);
  }
  uv_mutex_unlock(&d->inbox_lock);
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
