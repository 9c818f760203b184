/* The leases a dispatcher holds (lease-private.h): acquired, renewed and
 * released through a lease store, on the loop thread, or on a thread of
 * their own for a blocking store. */
#include "lease/lease-private.h"

#define LEASE_TTL_DEFAULT 3000

struct cqrs__leasing {
  cqrs__component_t comp;
  cqrs__runtime_t *rt;
  cqrs_leases_t *leases;
  char owner[CQRS_NAME_MAX];
  uint64_t ttl_ms, guard_ms;
  bool blocking;
  bool releasing; /* closing: nothing is acquired or renewed any more */
  cqrs__lease_t *list;
  cqrs_clock_t *clock; /* the options', else the runtime's */
  cqrs__timer_t timer;
  /* A blocking store's calls run on a thread of their own rather than the
   * pool, where a renewal could wait behind slow reads of the store until
   * its lease ran out. Calls go in `todo`, come back in `done`. */
  uv_thread_t thread;
  uv_mutex_t lock;
  uv_cond_t cond;
  uv_async_t async;
  struct lease_work *todo, *done;
  size_t inflight; /* loop thread: calls sent and not come back; they hold the loop */
  bool stop, threaded;
};

void cqrs_lease_options_init(cqrs_lease_options_t *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->ttl_ms = LEASE_TTL_DEFAULT;
  o->guard_ms = LEASE_TTL_DEFAULT / 3;
}

enum { OP_ACQUIRE, OP_RENEW, OP_RELEASE };

typedef struct lease_work {
  struct lease_work *next;
  cqrs__leasing_t *leasing;
  cqrs__lease_t *lease;
  int op;
  int64_t token;  /* in: renew and release; out: acquire */
  uint64_t sent;  /* monotonic ms of the leasing's clock when sent */
  cqrs_code_t rc;
  cqrs_error_t err;
} lease_work_t;

static void lease_call(lease_work_t *w) {
  cqrs__leasing_t *l = w->leasing;
  const char *name = w->lease->name;
  if (w->op == OP_ACQUIRE) {
    w->rc = cqrs_leases_acquire(l->leases, name, l->owner, l->ttl_ms, &w->token, &w->err);
  } else if (w->op == OP_RENEW) {
    w->rc = cqrs_leases_renew(l->leases, name, l->owner, w->token, l->ttl_ms, &w->err);
  } else {
    w->rc = cqrs_leases_release(l->leases, name, l->owner, w->token, &w->err);
  }
}

static void lost(cqrs__lease_t *s, const char *why) {
  if (!s->held) return;
  s->held = false;
  cqrs_log(CQRS_LOG_WARNING, "lease", "%s: lease lost (token %lld): %s", s->name, (long long)s->token, why);
  s->lost(s);
  if (s->changed) s->changed(s->changed_data, false);
}

static void lease_start(cqrs__leasing_t *l, cqrs__lease_t *s, int op);

/* What came back, on the loop thread. */
static void lease_done(lease_work_t *w) {
  cqrs__lease_t *s = w->lease;
  cqrs__leasing_t *l = w->leasing;
  s->busy = false;
  uint64_t now = cqrs__clock_mono(l->clock);
  if (w->op == OP_ACQUIRE) {
    if (w->rc) {
      if (!s->failing)
        cqrs_log(CQRS_LOG_WARNING, "lease", "%s: cannot acquire the lease: %s", s->name, w->err.message);
      s->failing = true;
      return;
    }
    s->failing = false;
    if (w->token > 0 && (l->releasing || cqrs__runtime_closing(l->rt))) {
      s->token = w->token;
      lease_start(l, s, OP_RELEASE);
    } else if (w->token > 0) {
      s->held = true;
      s->token = w->token;
      s->deadline = w->sent + l->ttl_ms - l->guard_ms;
      s->renew_at = w->sent + l->ttl_ms / 3;
      cqrs_log(CQRS_LOG_INFO, "lease", "%s: lease acquired by %s (token %lld)", s->name, l->owner,
               (long long)w->token);
      if (s->changed) s->changed(s->changed_data, true);
      s->acquired(s);
    }
  } else if (w->op == OP_RENEW && s->held && s->token == w->token) {
    if (w->rc == CQRS_OK && now < s->deadline) {
      s->deadline = w->sent + l->ttl_ms - l->guard_ms;
      s->renew_at = w->sent + l->ttl_ms / 3;
      s->failing = false;
    } else if (w->rc == CQRS_OK) {
      lost(s, "renewed too late");
    } else if (w->rc == CQRS_ECONFLICT) {
      lost(s, w->err.message);
    } else if (!s->failing) {
      cqrs_log(CQRS_LOG_WARNING, "lease", "%s: cannot renew the lease: %s", s->name, w->err.message);
      s->failing = true;
    }
  } else if (w->op == OP_RELEASE) {
    s->token = 0;
  }
}

static void lease_thread(void *arg) {
  cqrs__leasing_t *l = arg;
  uv_mutex_lock(&l->lock);
  for (;;) {
    while (!l->todo && !l->stop) uv_cond_wait(&l->cond, &l->lock);
    if (!l->todo) break;
    lease_work_t *w = l->todo;
    l->todo = w->next;
    uv_mutex_unlock(&l->lock);
    lease_call(w);
    uv_mutex_lock(&l->lock);
    w->next = l->done;
    l->done = w;
    uv_async_send(&l->async);
  }
  uv_mutex_unlock(&l->lock);
}

static void lease_async(uv_async_t *h) {
  cqrs__leasing_t *l = h->data;
  uv_mutex_lock(&l->lock);
  lease_work_t *w = l->done;
  l->done = NULL;
  uv_mutex_unlock(&l->lock);
  while (w) {
    lease_work_t *next = w->next;
    if (--l->inflight == 0) uv_unref((uv_handle_t *)&l->async);
    lease_done(w);
    cqrs__free(w);
    w = next;
  }
  if (cqrs__runtime_closing(l->rt)) cqrs__runtime_maybe_closed(l->rt);
}

static void lease_start(cqrs__leasing_t *l, cqrs__lease_t *s, int op) {
  lease_work_t *w = cqrs__calloc(1, sizeof *w);
  if (!w) return; /* the next tick tries again */
  w->leasing = l;
  w->lease = s;
  w->op = op;
  w->token = op == OP_ACQUIRE ? 0 : s->token;
  w->sent = cqrs__clock_mono(l->clock);
  s->busy = true;
  if (!l->blocking) {
    lease_call(w);
    lease_done(w);
    cqrs__free(w);
    return;
  }
  uv_mutex_lock(&l->lock);
  lease_work_t **tail = &l->todo;
  while (*tail) tail = &(*tail)->next;
  *tail = w;
  uv_cond_signal(&l->cond);
  uv_mutex_unlock(&l->lock);
  if (l->inflight++ == 0) uv_ref((uv_handle_t *)&l->async);
}

static void tick(uv_timer_t *t) {
  cqrs__leasing_t *l = t->data;
  for (cqrs__lease_t *s = l->list; s; s = s->next) {
    if (s->busy) continue;
    if (s->held) {
      if (cqrs__lease_valid(s) && cqrs__clock_mono(l->clock) >= s->renew_at) lease_start(l, s, OP_RENEW);
    } else if (!l->releasing && !cqrs__runtime_closing(l->rt) && s->may_acquire(s)) {
      lease_start(l, s, OP_ACQUIRE);
    }
  }
}

/* ---- the component ---- */

static bool leasing_idle(const cqrs__component_t *c) { return ((const cqrs__leasing_t *)c)->inflight == 0; }

/* Once everything else is idle: releases what is held; true when nothing
 * is left to release or in flight. */
static bool leasing_release(cqrs__component_t *c) {
  cqrs__leasing_t *l = (cqrs__leasing_t *)c;
  if (!l->releasing) {
    l->releasing = true;
    cqrs__timer_stop(&l->timer);
  }
  bool done = true;
  for (cqrs__lease_t *s = l->list; s; s = s->next) {
    if (s->busy) {
      done = false;
      continue;
    }
    if (s->held) {
      s->held = false;
      cqrs_log(CQRS_LOG_INFO, "lease", "%s: lease released by %s (token %lld)", s->name, l->owner,
               (long long)s->token);
      lease_start(l, s, OP_RELEASE);
      done = done && !s->busy;
    }
  }
  return done;
}

/* Nothing is in flight by now (the runtime waited for it): the thread is
 * idle and stops at once. */
static void leasing_close_handles(cqrs__component_t *c) {
  cqrs__leasing_t *l = (cqrs__leasing_t *)c;
  cqrs__timer_close(l->rt, &l->timer);
  if (!l->threaded) return;
  uv_mutex_lock(&l->lock);
  l->stop = true;
  uv_cond_signal(&l->cond);
  uv_mutex_unlock(&l->lock);
  uv_thread_join(&l->thread);
  cqrs__runtime_close_handle(l->rt, (uv_handle_t *)&l->async);
}

static void leasing_free(cqrs__component_t *c) {
  cqrs__leasing_t *l = (cqrs__leasing_t *)c;
  if (l->threaded) {
    uv_cond_destroy(&l->cond);
    uv_mutex_destroy(&l->lock);
  }
  cqrs__free(l);
}

static const cqrs__component_ops_t leasing_ops = {.name = "leases",
                                                  .idle = leasing_idle,
                                                  .release = leasing_release,
                                                  .close_handles = leasing_close_handles,
                                                  .free = leasing_free};

/* The thread first: it touches the async handle only once calls come in. */
static cqrs_code_t start_thread(cqrs__leasing_t *l, cqrs_error_t *err) {
  if (uv_mutex_init(&l->lock)) return cqrs_error_set(err, CQRS_ENOMEM, "cannot create the leases' lock");
  if (uv_cond_init(&l->cond)) {
    uv_mutex_destroy(&l->lock);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot create the leases' condition");
  }
  if (uv_thread_create(&l->thread, lease_thread, l)) {
    uv_cond_destroy(&l->cond);
    uv_mutex_destroy(&l->lock);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot start the leases' thread");
  }
  if (uv_async_init(l->rt->loop, &l->async, lease_async)) {
    uv_mutex_lock(&l->lock);
    l->stop = true;
    uv_cond_signal(&l->cond);
    uv_mutex_unlock(&l->lock);
    uv_thread_join(&l->thread);
    uv_cond_destroy(&l->cond);
    uv_mutex_destroy(&l->lock);
    return cqrs_error_set(err, CQRS_EINVAL, "cannot attach the leases to the loop");
  }
  l->threaded = true;
  l->async.data = l;
  uv_unref((uv_handle_t *)&l->async);
  cqrs__runtime_handle_opened(l->rt);
  return CQRS_OK;
}

cqrs_code_t cqrs__leasing_new(cqrs__runtime_t *rt, const cqrs_lease_options_t *o, cqrs_error_t *err) {
  if (!o || !o->leases) return cqrs_error_set(err, CQRS_EINVAL, "NULL options or lease store");
  cqrs_code_t rc = cqrs__check_str(o->owner, CQRS_NAME_MAX, "lease owner", err);
  if (rc) return rc;
  /* The deadline (ttl - guard after a renewal) must come after the next
   * renewal is due (ttl/3). */
  if (o->ttl_ms < 6 || o->ttl_ms > INT32_MAX || o->guard_ms * 3 >= o->ttl_ms * 2)
    return cqrs_error_set(err, CQRS_EINVAL, "lease ttl out of range, or a guard of 2/3 of it or more");
  for (size_t i = 0; i < sizeof o->reserved / sizeof o->reserved[0]; i++) {
    if (o->reserved[i]) return cqrs_error_set(err, CQRS_EINVAL, "lease options: reserved fields must be zero");
  }
  if (cqrs__runtime_closing(rt)) return cqrs_error_set(err, CQRS_ECLOSED, "dispatcher is closing");
  if (rt->leasing) return cqrs_error_set(err, CQRS_ESTATE, "the dispatcher has leases already");
  cqrs__leasing_t *l = cqrs__calloc(1, sizeof *l);
  if (!l) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate leasing");
  l->rt = rt;
  l->leases = o->leases;
  memcpy(l->owner, o->owner, strlen(o->owner) + 1);
  l->ttl_ms = o->ttl_ms;
  l->guard_ms = o->guard_ms;
  l->clock = o->clock ? o->clock : rt->clock;
  l->blocking = cqrs__leases_blocking(o->leases);
  if (l->blocking && (rc = start_thread(l, err))) {
    cqrs__free(l);
    return rc;
  }
  cqrs__timer_init(rt, &l->timer, l->clock, l);
  /* Renewals are due every ttl/3; ticking twice as often lets one that
   * failed or came back late be tried again in time. */
  uint64_t every = o->ttl_ms / 6 ? o->ttl_ms / 6 : 1;
  cqrs__timer_start(&l->timer, tick, every, every);
  /* Like the poll timer: the loop runs for the application's reasons. */
  uv_unref((uv_handle_t *)&l->timer.handle);
  cqrs__runtime_handle_opened(rt);
  cqrs__runtime_add(rt, &l->comp, &leasing_ops);
  rt->leasing = l;
  return CQRS_OK;
}

void cqrs__lease_add(cqrs__leasing_t *l, cqrs__lease_t *s) {
  s->on = true;
  s->clock = l->clock;
  s->next = NULL;
  cqrs__lease_t **tail = &l->list; /* in the order they came: the ticks try them so */
  while (*tail) tail = &(*tail)->next;
  *tail = s;
  lease_start(l, s, OP_ACQUIRE);
}

bool cqrs__lease_in_time(const cqrs__lease_t *s) { return s->held && cqrs__clock_mono(s->clock) < s->deadline; }

bool cqrs__lease_valid(cqrs__lease_t *s) {
  if (!s->held) return false;
  if (cqrs__clock_mono(s->clock) < s->deadline) return true;
  lost(s, "not renewed in time");
  return false;
}

void cqrs__lease_give_up(cqrs__lease_t *s, const cqrs_error_t *err) { lost(s, err->message); }

const char *cqrs__leasing_owner(const cqrs__leasing_t *leasing) { return leasing->owner; }

size_t cqrs__leases_held(const cqrs__leasing_t *l) {
  size_t n = 0;
  for (const cqrs__lease_t *s = l ? l->list : NULL; s; s = s->next) n += s->held;
  return n;
}
