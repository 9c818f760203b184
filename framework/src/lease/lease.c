/* Leases: the store interface, the in-memory store, and the part of the
 * dispatcher that holds one lease per projection and process manager.
 *
 * A lease's holder keeps it by renewing every ttl/3. It stops delivering
 * at its deadline, guard_ms before the time the store will let another
 * take over (both counted from when it sent its last successful renewal,
 * so network time only shortens its hold), and a renewal that comes back
 * after the deadline does not count: by then another may have taken the
 * lease. Checkpoint writes carry the token, so a late one from a former
 * holder cannot move a newer holder's checkpoint back. */
#include <stdio.h>

#include "command/dispatcher-private.h"

#define LEASE_TTL_DEFAULT 3000

/* ---- the store interface ---- */

struct cqrs_leases {
  const cqrs_lease_ops_t *ops;
  void *impl;
};

cqrs_code_t cqrs_leases_new(const cqrs_lease_ops_t *ops, void *impl, cqrs_leases_t **out, cqrs_error_t *err) {
  cqrs_code_t rc = CQRS_OK;
  cqrs_leases_t *l = NULL;
  if (!out) {
    rc = cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  } else if (!ops || !ops->acquire || !ops->renew || !ops->release) {
    rc = cqrs_error_set(err, CQRS_EINVAL, "NULL ops or a missing acquire, renew or release");
  } else if (!(l = cqrs__calloc(1, sizeof *l))) {
    rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate leases");
  }
  if (out) *out = l;
  if (rc) {
    if (ops && ops->destroy) ops->destroy(impl);
    return rc;
  }
  l->ops = ops;
  l->impl = impl;
  return CQRS_OK;
}

void cqrs_leases_destroy(cqrs_leases_t *l) {
  if (!l) return;
  if (l->ops->destroy) l->ops->destroy(l->impl);
  cqrs__free(l);
}

bool cqrs__leases_blocking(const cqrs_leases_t *l) { return l->ops->blocking; }

static cqrs_code_t check_args(const cqrs_leases_t *l, const char *name, const char *owner, cqrs_error_t *err) {
  if (!l) return cqrs_error_set(err, CQRS_EINVAL, "NULL leases");
  cqrs_code_t rc = cqrs__check_str(name, CQRS_NAME_MAX, "lease name", err);
  return rc ? rc : cqrs__check_str(owner, CQRS_NAME_MAX, "lease owner", err);
}

cqrs_code_t cqrs_leases_acquire(cqrs_leases_t *l, const char *name, const char *owner, uint64_t ttl_ms,
                                int64_t *token, cqrs_error_t *err) {
  if (!token) return cqrs_error_set(err, CQRS_EINVAL, "token is NULL");
  *token = 0;
  cqrs_code_t rc = check_args(l, name, owner, err);
  if (!rc && (ttl_ms == 0 || ttl_ms > INT32_MAX)) rc = cqrs_error_set(err, CQRS_EINVAL, "lease ttl out of range");
  return rc ? rc : l->ops->acquire(l->impl, name, owner, ttl_ms, token, err);
}

cqrs_code_t cqrs_leases_renew(cqrs_leases_t *l, const char *name, const char *owner, int64_t token, uint64_t ttl_ms,
                              cqrs_error_t *err) {
  cqrs_code_t rc = check_args(l, name, owner, err);
  if (!rc && (token <= 0 || ttl_ms == 0 || ttl_ms > INT32_MAX))
    rc = cqrs_error_set(err, CQRS_EINVAL, "lease token or ttl out of range");
  return rc ? rc : l->ops->renew(l->impl, name, owner, token, ttl_ms, err);
}

cqrs_code_t cqrs_leases_release(cqrs_leases_t *l, const char *name, const char *owner, int64_t token,
                                cqrs_error_t *err) {
  cqrs_code_t rc = check_args(l, name, owner, err);
  if (!rc && token <= 0) rc = cqrs_error_set(err, CQRS_EINVAL, "lease token out of range");
  return rc ? rc : l->ops->release(l->impl, name, owner, token, err);
}

/* ---- in memory ---- */

typedef struct mem_lease {
  UT_hash_handle hh;
  int64_t token;   /* the latest handed out */
  int64_t expires; /* cqrs_now_ms; 0: free */
  char owner[CQRS_NAME_MAX];
  char name[CQRS_NAME_MAX];
} mem_lease_t;

typedef struct mem_leases {
  uv_mutex_t lock;
  mem_lease_t *all;
} mem_leases_t;

static cqrs_code_t mem_acquire(void *impl, const char *name, const char *owner, uint64_t ttl_ms, int64_t *token,
                               cqrs_error_t *err) {
  mem_leases_t *m = impl;
  cqrs_code_t rc = CQRS_OK;
  int64_t now = cqrs_now_ms();
  uv_mutex_lock(&m->lock);
  mem_lease_t *e;
  HASH_FIND_STR(m->all, name, e);
  if (!e && (e = cqrs__calloc(1, sizeof *e))) {
    memcpy(e->name, name, strlen(name) + 1);
    CQRS_HASH_TRY(HASH_ADD_STR(m->all, name, e));
    if (CQRS_HASH_FAILED()) {
      cqrs__free(e);
      e = NULL;
    }
  }
  if (!e) {
    rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot record lease %s", name);
  } else if (e->expires <= now || !strcmp(e->owner, owner)) {
    e->token++;
    e->expires = now + (int64_t)ttl_ms;
    memcpy(e->owner, owner, strlen(owner) + 1);
    *token = e->token;
  }
  uv_mutex_unlock(&m->lock);
  return rc;
}

/* The entry of `name` while `owner` holds it under `token`; lock held. */
static mem_lease_t *mem_held(mem_leases_t *m, const char *name, const char *owner, int64_t token) {
  mem_lease_t *e;
  HASH_FIND_STR(m->all, name, e);
  return e && e->token == token && e->expires > cqrs_now_ms() && !strcmp(e->owner, owner) ? e : NULL;
}

static cqrs_code_t mem_renew(void *impl, const char *name, const char *owner, int64_t token, uint64_t ttl_ms,
                             cqrs_error_t *err) {
  mem_leases_t *m = impl;
  uv_mutex_lock(&m->lock);
  mem_lease_t *e = mem_held(m, name, owner, token);
  if (e) e->expires = cqrs_now_ms() + (int64_t)ttl_ms;
  uv_mutex_unlock(&m->lock);
  return e ? CQRS_OK : cqrs_error_set(err, CQRS_ECONFLICT, "lease %s is no longer %s's (token %lld)", name, owner,
                                      (long long)token);
}

static cqrs_code_t mem_release(void *impl, const char *name, const char *owner, int64_t token, cqrs_error_t *err) {
  CQRS__UNUSED(err);
  mem_leases_t *m = impl;
  uv_mutex_lock(&m->lock);
  mem_lease_t *e = mem_held(m, name, owner, token);
  if (e) e->expires = 0;
  uv_mutex_unlock(&m->lock);
  return CQRS_OK;
}

static void mem_destroy(void *impl) {
  mem_leases_t *m = impl;
  mem_lease_t *e, *tmp;
  HASH_ITER(hh, m->all, e, tmp) {
    HASH_DEL(m->all, e);
    cqrs__free(e);
  }
  uv_mutex_destroy(&m->lock);
  cqrs__free(m);
}

static const cqrs_lease_ops_t mem_ops = {false, mem_acquire, mem_renew, mem_release, mem_destroy};

cqrs_code_t cqrs_memory_leases_new(cqrs_leases_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  mem_leases_t *m = cqrs__calloc(1, sizeof *m);
  if (!m) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate memory leases");
  if (uv_mutex_init(&m->lock)) {
    cqrs__free(m);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot initialise the leases' lock");
  }
  return cqrs_leases_new(&mem_ops, m, out, err);
}

/* ---- the dispatcher's leases ---- */

typedef struct cqrs__leasing {
  cqrs_dispatcher_t *d;
  cqrs_leases_t *leases;
  char owner[CQRS_NAME_MAX];
  uint64_t ttl_ms, guard_ms;
  bool blocking;
  bool releasing; /* closing: nothing is acquired or renewed any more */
  uv_timer_t timer;
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
} leasing_t;

void cqrs_lease_options_init(cqrs_lease_options_t *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->ttl_ms = LEASE_TTL_DEFAULT;
  o->guard_ms = LEASE_TTL_DEFAULT / 3;
}

static uint64_t now_ms(void) { return uv_hrtime() / 1000000u; }

enum { OP_ACQUIRE, OP_RENEW, OP_RELEASE };

typedef struct lease_work {
  struct lease_work *next;
  sub_t *s;
  int op;
  int64_t token;  /* in: renew and release; out: acquire */
  uint64_t sent;  /* now_ms when sent */
  cqrs_code_t rc;
  cqrs_error_t err;
} lease_work_t;

static void lease_call(lease_work_t *w) {
  leasing_t *l = w->s->d->leasing;
  const char *name = w->s->name;
  if (w->op == OP_ACQUIRE) {
    w->rc = cqrs_leases_acquire(l->leases, name, l->owner, l->ttl_ms, &w->token, &w->err);
  } else if (w->op == OP_RENEW) {
    w->rc = cqrs_leases_renew(l->leases, name, l->owner, w->token, l->ttl_ms, &w->err);
  } else {
    w->rc = cqrs_leases_release(l->leases, name, l->owner, w->token, &w->err);
  }
}

static void lost(sub_t *s, const char *why) {
  if (!s->lease.held) return;
  s->lease.held = false;
  cqrs_log(CQRS_LOG_WARNING, "lease", "%s: lease lost (token %lld): %s", s->name, (long long)s->lease.token, why);
  cqrs__sub_lease_lost(s);
  if (s->lease.changed) s->lease.changed(s->data, false);
}

static void lease_start(sub_t *s, int op);

/* What came back, on the loop thread. */
static void lease_done(lease_work_t *w) {
  sub_t *s = w->s;
  leasing_t *l = s->d->leasing;
  s->lease.busy = false;
  uint64_t now = now_ms();
  if (w->op == OP_ACQUIRE) {
    if (w->rc) {
      if (!s->lease.failing)
        cqrs_log(CQRS_LOG_WARNING, "lease", "%s: cannot acquire the lease: %s", s->name, w->err.message);
      s->lease.failing = true;
      return;
    }
    s->lease.failing = false;
    if (w->token > 0 && (l->releasing || atomic_load(&s->d->closing))) {
      s->lease.token = w->token;
      lease_start(s, OP_RELEASE);
    } else if (w->token > 0) {
      s->lease.held = true;
      s->lease.token = w->token;
      s->lease.deadline = w->sent + l->ttl_ms - l->guard_ms;
      s->lease.renew_at = w->sent + l->ttl_ms / 3;
      cqrs_log(CQRS_LOG_INFO, "lease", "%s: lease acquired by %s (token %lld)", s->name, l->owner,
               (long long)w->token);
      if (s->lease.changed) s->lease.changed(s->data, true);
      cqrs__sub_lease_acquired(s);
    }
  } else if (w->op == OP_RENEW && s->lease.held && s->lease.token == w->token) {
    if (w->rc == CQRS_OK && now < s->lease.deadline) {
      s->lease.deadline = w->sent + l->ttl_ms - l->guard_ms;
      s->lease.renew_at = w->sent + l->ttl_ms / 3;
      s->lease.failing = false;
    } else if (w->rc == CQRS_OK) {
      lost(s, "renewed too late");
    } else if (w->rc == CQRS_ECONFLICT) {
      lost(s, w->err.message);
    } else if (!s->lease.failing) {
      cqrs_log(CQRS_LOG_WARNING, "lease", "%s: cannot renew the lease: %s", s->name, w->err.message);
      s->lease.failing = true;
    }
  } else if (w->op == OP_RELEASE) {
    s->lease.token = 0;
  }
}

static void lease_thread(void *arg) {
  leasing_t *l = arg;
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
  leasing_t *l = h->data;
  cqrs_dispatcher_t *d = l->d;
  uv_mutex_lock(&l->lock);
  lease_work_t *w = l->done;
  l->done = NULL;
  uv_mutex_unlock(&l->lock);
  while (w) {
    lease_work_t *next = w->next;
    d->work_inflight--;
    if (--l->inflight == 0) uv_unref((uv_handle_t *)&l->async);
    lease_done(w);
    cqrs__free(w);
    w = next;
  }
  if (atomic_load(&d->closing)) cqrs__dispatcher_maybe_closed(d);
}

static void lease_start(sub_t *s, int op) {
  leasing_t *l = s->d->leasing;
  lease_work_t *w = cqrs__calloc(1, sizeof *w);
  if (!w) return; /* the next tick tries again */
  w->s = s;
  w->op = op;
  w->token = op == OP_ACQUIRE ? 0 : s->lease.token;
  w->sent = now_ms();
  s->lease.busy = true;
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
  s->d->work_inflight++;
}

/* Standbys may start only once what they did before has settled. */
static bool may_acquire(const sub_t *s) {
  return s->state == SUB_STANDBY && !s->lease.held && !s->lease.busy && !s->busy && !s->q_len && !s->cp_saving;
}

static void tick(uv_timer_t *t) {
  leasing_t *l = t->data;
  cqrs_dispatcher_t *d = l->d;
  for (size_t i = 0; i < d->nsubs; i++) {
    sub_t *s = d->subs[i];
    if (!s->lease.on || s->lease.busy) continue;
    if (s->lease.held) {
      if (cqrs__lease_valid(s) && now_ms() >= s->lease.renew_at) lease_start(s, OP_RENEW);
    } else if (!l->releasing && !atomic_load(&d->closing) && may_acquire(s)) {
      lease_start(s, OP_ACQUIRE);
    }
  }
}

/* The thread first: it touches the async handle only once calls come in. */
static cqrs_code_t start_thread(leasing_t *l, cqrs_error_t *err) {
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
  if (uv_async_init(l->d->loop, &l->async, lease_async)) {
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
  l->d->handles_open++;
  return CQRS_OK;
}

cqrs_code_t cqrs_dispatcher_set_leases(cqrs_dispatcher_t *d, const cqrs_lease_options_t *o, cqrs_error_t *err) {
  if (!d || !o || !o->leases) return cqrs_error_set(err, CQRS_EINVAL, "NULL dispatcher, options or lease store");
  cqrs_code_t rc = cqrs__check_str(o->owner, CQRS_NAME_MAX, "lease owner", err);
  if (rc) return rc;
  /* The deadline (ttl - guard after a renewal) must come after the next
   * renewal is due (ttl/3). */
  if (o->ttl_ms < 6 || o->ttl_ms > INT32_MAX || o->guard_ms * 3 >= o->ttl_ms * 2)
    return cqrs_error_set(err, CQRS_EINVAL, "lease ttl out of range, or a guard of 2/3 of it or more");
  if (atomic_load(&d->closing)) return cqrs_error_set(err, CQRS_ECLOSED, "dispatcher is closing");
  if (d->leasing) return cqrs_error_set(err, CQRS_ESTATE, "the dispatcher has leases already");
  for (size_t i = 0; i < d->nsubs; i++) {
    if (d->subs[i]->cp) return cqrs_error_set(err, CQRS_ESTATE, "leases come before projections start");
  }
  leasing_t *l = cqrs__calloc(1, sizeof *l);
  if (!l) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate leasing");
  l->d = d;
  l->leases = o->leases;
  memcpy(l->owner, o->owner, strlen(o->owner) + 1);
  l->ttl_ms = o->ttl_ms;
  l->guard_ms = o->guard_ms;
  l->blocking = cqrs__leases_blocking(o->leases);
  if (l->blocking && (rc = start_thread(l, err))) {
    cqrs__free(l);
    return rc;
  }
  uv_timer_init(d->loop, &l->timer);
  l->timer.data = l;
  /* Renewals are due every ttl/3; ticking twice as often lets one that
   * failed or came back late be tried again in time. */
  uint64_t every = o->ttl_ms / 6 ? o->ttl_ms / 6 : 1;
  uv_timer_start(&l->timer, tick, every, every);
  /* Like the poll timer: the loop runs for the application's reasons. */
  uv_unref((uv_handle_t *)&l->timer);
  d->handles_open++;
  d->leasing = l;
  return CQRS_OK;
}

void cqrs__lease_sub_added(sub_t *s) {
  s->lease.on = true;
  s->state = SUB_STANDBY;
  lease_start(s, OP_ACQUIRE);
}

bool cqrs__lease_in_time(const sub_t *s) { return s->lease.held && now_ms() < s->lease.deadline; }

bool cqrs__lease_valid(sub_t *s) {
  if (!s->lease.held) return false;
  if (now_ms() < s->lease.deadline) return true;
  lost(s, "not renewed in time");
  return false;
}

void cqrs__lease_give_up(sub_t *s, const cqrs_error_t *err) { lost(s, err->message); }

bool cqrs__leases_closed(cqrs_dispatcher_t *d) {
  leasing_t *l = d->leasing;
  if (!l->releasing) {
    l->releasing = true;
    uv_timer_stop(&l->timer);
  }
  bool done = true;
  for (size_t i = 0; i < d->nsubs; i++) {
    sub_t *s = d->subs[i];
    if (!s->lease.on) continue;
    if (s->lease.busy) {
      done = false;
      continue;
    }
    if (s->lease.held) {
      s->lease.held = false;
      cqrs_log(CQRS_LOG_INFO, "lease", "%s: lease released by %s (token %lld)", s->name, l->owner,
               (long long)s->lease.token);
      lease_start(s, OP_RELEASE);
      done = done && !s->lease.busy;
    }
  }
  return done;
}

/* Nothing is in flight by now (the dispatcher waited for it): the thread
 * is idle and stops at once. */
void cqrs__leases_close_handles(cqrs_dispatcher_t *d, uv_close_cb cb) {
  leasing_t *l = d->leasing;
  l->timer.data = d;
  uv_close((uv_handle_t *)&l->timer, cb);
  if (!l->threaded) return;
  uv_mutex_lock(&l->lock);
  l->stop = true;
  uv_cond_signal(&l->cond);
  uv_mutex_unlock(&l->lock);
  uv_thread_join(&l->thread);
  l->async.data = d;
  uv_close((uv_handle_t *)&l->async, cb);
}

void cqrs__leases_free(cqrs_dispatcher_t *d) {
  leasing_t *l = d->leasing;
  if (l && l->threaded) {
    uv_cond_destroy(&l->cond);
    uv_mutex_destroy(&l->lock);
  }
  cqrs__free(l);
  d->leasing = NULL;
}

size_t cqrs__leases_held(const cqrs_dispatcher_t *d) {
  size_t n = 0;
  for (size_t i = 0; d && i < d->nsubs; i++) n += d->subs[i]->lease.held;
  return n;
}

bool cqrs_projection_owned(const cqrs_dispatcher_t *d, const char *name) {
  for (size_t i = 0; d && name && i < d->nsubs; i++) {
    if (!strcmp(d->subs[i]->name, name)) return d->subs[i]->lease.held;
  }
  return false;
}
