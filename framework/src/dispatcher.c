/* The command side of the dispatcher: send, handler look-up, execution on the
 * loop or the thread pool, commit with conflict retries, completion. */
#include <stdio.h>

#include "cache-private.h"
#include "dispatcher-private.h"


#define CTX_MAX_AGGREGATES 8
#define DRAIN_BATCH 4096
#define FREE_REQUESTS 1024 /* requests kept for reuse on the loop thread */
#define LOOPS_MAX 64
#define HANDOVER_BATCH 64 /* commands handed to another loop under one lock */

struct cqrs_context {
  cqrs_dispatcher_t *d;
  const cqrs_command_t *cmd;
  bool on_loop; /* never wait for a lock on the loop thread */
  cqrs_aggregate_t *aggs[CTX_MAX_AGGREGATES];
  size_t naggs;
  unsigned held[CTX_MAX_AGGREGATES];
  size_t nheld;
  bson_t *value;
};

struct request {
  request_t *next;
  cqrs_dispatcher_t *d;      /* where it was sent: finishes it */
  cqrs_dispatcher_t *runner; /* where its handler runs: d, or the member owning its aggregate */
  cqrs_command_t *cmd;
  cqrs_done_cb done;
  void *data;
  handler_t *handler;
  uv_work_t work;
  cqrs_result_t result;
  bson_t *value;
  int64_t last_position;
  cqrs__event_vec_t committed; /* the events the command committed, referenced */
  uint64_t started_ns;         /* for the middleware; 0 when none was in use */
  unsigned conflicts;
  bool foreign; /* sent from another thread: counted in `pending`, else in `pending_local` */
};

void cqrs_dispatcher_options_init(cqrs_dispatcher_options_t *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->conflict_retries = 5;
  o->retry_attempts = 3;
  o->retry_base_ms = 1000;
  o->retry_cap_ms = 30000;
  o->aggregate_cache = 16384;
  o->loops = 1;
  o->dead_letters_kept = 1024;
}

/* A member loop of a dispatcher with several (see dispatcher-private.h). */
typedef struct cqrs__member {
  cqrs_dispatcher_t *d; /* the member's dispatcher, on `loop` */
  cqrs_dispatcher_t *home;
  unsigned index;
  uv_loop_t loop;
  uv_thread_t thread;
  uv_sem_t ready;
  cqrs_code_t rc;
  cqrs_error_t err;
  request_t *out_head, *out_tail; /* routed here, not handed over yet; home's loop thread */
  size_t nout;
} member_t;

/* The loop owning aggregate `id` (every aggregate of that id, whatever its
 * type, so that a command's payload names it): the home for a share of
 * home_share / 1024 of the hashes, else one of the members evenly. */
static unsigned partition_of(const cqrs_dispatcher_t *d, const char *id) {
  uint32_t h = 2166136261u;
  for (const char *p = id; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
  h ^= h >> 15;
  if ((h & 1023u) < d->home_share) return 0;
  return 1 + (h >> 10) % (d->nloops - 1);
}

static void member_main(void *arg) {
  member_t *m = arg;
  if (uv_loop_init(&m->loop)) {
    m->rc = cqrs_error_set(&m->err, CQRS_ESTATE, "cannot create the loop of member %u", m->index);
    uv_sem_post(&m->ready);
    return;
  }
  cqrs_dispatcher_options_t o = m->home->opts;
  o.loops = 1;
  o.keep_alive = true; /* until the home stops it */
  o.poll_ms = 0;       /* the home's feed sees every commit */
  if ((m->rc = cqrs_dispatcher_new(&m->loop, m->home->reg, m->home->store, &o, &m->d, &m->err))) {
    uv_loop_close(&m->loop);
    uv_sem_post(&m->ready);
    return;
  }
  m->d->home = m->home;
  m->d->index = m->index;
  m->d->nloops = m->home->nloops;
  m->d->home_share = m->home->home_share;
  uv_sem_post(&m->ready);
  uv_run(&m->loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(&m->loop);
  if (rc) cqrs_log(CQRS_LOG_ERROR, "dispatcher", "loop of member %u left handles open: %s", m->index, uv_strerror(rc));
}

/* Asks every started member to close and waits for its thread: the home
 * calls it once nothing of its is out on a member, so they close at once. */
static void members_stop(cqrs_dispatcher_t *d, unsigned started) {
  for (unsigned i = 1; i < started; i++) {
    member_t *m = &d->members[i];
    uv_mutex_lock(&m->d->inbox_lock);
    atomic_store(&m->d->stop, true);
    uv_async_send(&m->d->async);
    uv_mutex_unlock(&m->d->inbox_lock);
    uv_thread_join(&m->thread);
    uv_sem_destroy(&m->ready);
  }
  cqrs__free(d->members);
  d->members = NULL;
}

static cqrs_code_t members_start(cqrs_dispatcher_t *d, cqrs_error_t *err) {
  if (!(d->members = cqrs__calloc(d->nloops, sizeof *d->members)))
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate %u loops", d->nloops);
  for (unsigned i = 1; i < d->nloops; i++) {
    member_t *m = &d->members[i];
    m->home = d;
    m->index = i;
    cqrs_code_t rc = CQRS_OK;
    if (uv_sem_init(&m->ready, 0)) {
      rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot create a semaphore");
    } else if (uv_thread_create(&m->thread, member_main, m)) {
      uv_sem_destroy(&m->ready);
      rc = cqrs_error_set(err, CQRS_ESTATE, "cannot start the thread of loop %u", i);
    } else {
      uv_sem_wait(&m->ready);
      if ((rc = m->rc)) {
        uv_thread_join(&m->thread);
        uv_sem_destroy(&m->ready);
        cqrs__error_copy(err, &m->err);
      }
    }
    if (rc) {
      members_stop(d, i);
      return rc;
    }
  }
  return CQRS_OK;
}

static void async_cb(uv_async_t *h);
static void poll_cb(uv_timer_t *t) { cqrs__feed_kick(t->data, 0, 0); }

cqrs_code_t cqrs_dispatcher_new(uv_loop_t *loop, const cqrs_registry_t *reg, cqrs_store_t *store,
                                const cqrs_dispatcher_options_t *opts, cqrs_dispatcher_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  if (!loop || !reg || !store) return cqrs_error_set(err, CQRS_EINVAL, "NULL loop, registry or store");
  cqrs_dispatcher_t *d = cqrs__calloc(1, sizeof *d);
  if (!d) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate a dispatcher");
  d->loop = loop;
  d->loop_thread = uv_thread_self();
  d->reg = reg;
  d->store = store;
  d->store_blocking = cqrs_store_blocking(store);
  if (opts) {
    d->opts = *opts;
  } else {
    cqrs_dispatcher_options_init(&d->opts);
  }
  if (d->opts.retry_attempts == 0) d->opts.retry_attempts = 1;
  if (d->opts.dead_letters_kept == 0) d->opts.dead_letters_kept = 1024;
  d->nloops = d->opts.loops ? d->opts.loops : 1;
  unsigned pct = d->opts.home_percent ? d->opts.home_percent : 100 / d->nloops;
  d->home_share = pct * 1024u / 100u;
  if (d->nloops > LOOPS_MAX || pct > 100) {
    cqrs__free(d);
    if (pct > 100) return cqrs_error_set(err, CQRS_EINVAL, "home_percent %u is over 100", pct);
    return cqrs_error_set(err, CQRS_EINVAL, "%u loops asked, at most %d", opts->loops, LOOPS_MAX);
  }
  /* A blocking store's head is read on the pool, once the loop runs. */
  d->head_known = !d->store_blocking;
  d->head_floor = INT64_MAX;
  cqrs_code_t rc = d->head_known ? cqrs_store_head(store, &d->feed_pos, err) : CQRS_OK;
  bool nomem;
  if (!rc && !(d->cache = cqrs__cache_new(d->opts.aggregate_cache, &nomem)) && nomem)
    rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate the aggregate cache");
  if (rc) {
    cqrs__free(d);
    return rc;
  }
  size_t stripes = 0;
  while (stripes < CQRS_STRIPES && pthread_mutex_init(&d->stripes[stripes], NULL) == 0) stripes++;
  if (stripes < CQRS_STRIPES || uv_mutex_init(&d->inbox_lock)) {
    while (stripes) pthread_mutex_destroy(&d->stripes[--stripes]);
    cqrs__cache_destroy(d->cache);
    cqrs__free(d);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot create a mutex");
  }
  rc = d->nloops > 1 ? members_start(d, err) : CQRS_OK;
  if (rc || uv_async_init(loop, &d->async, async_cb)) {
    if (d->members) members_stop(d, d->nloops);
    uv_mutex_destroy(&d->inbox_lock);
    for (size_t i = 0; i < CQRS_STRIPES; i++) pthread_mutex_destroy(&d->stripes[i]);
    cqrs__cache_destroy(d->cache);
    cqrs__free(d);
    return rc ? rc : cqrs_error_set(err, CQRS_EINVAL, "cannot attach to the loop");
  }
  d->async.data = d;
  if (!d->opts.keep_alive) uv_unref((uv_handle_t *)&d->async);
  d->handles_open = 1;
  uv_timer_init(loop, &d->feed_timer);
  d->feed_timer.data = d;
  d->handles_open++;
  uv_timer_init(loop, &d->wait_timer);
  d->wait_timer.data = d;
  d->handles_open++;
  cqrs__bus_init(d);
  if (d->opts.poll_ms) {
    uv_timer_init(loop, &d->poll);
    d->poll.data = d;
    uv_timer_start(&d->poll, poll_cb, d->opts.poll_ms, d->opts.poll_ms);
    uv_unref((uv_handle_t *)&d->poll);
    d->poll_on = true;
    d->handles_open++;
  }
  if (!d->head_known) cqrs__feed_kick(d, 0, 0);
  *out = d;
  return CQRS_OK;
}

cqrs_code_t cqrs_dispatcher_register(cqrs_dispatcher_t *d, const cqrs_command_type_t *type,
                                     cqrs_command_handler_cb fn, void *data, unsigned flags, cqrs_error_t *err) {
  if (!d || !type || !fn) return cqrs_error_set(err, CQRS_EINVAL, "NULL dispatcher, command type or handler");
  if (atomic_load(&d->closing)) return cqrs_error_set(err, CQRS_ECLOSED, "dispatcher is closing");
  if (!type->name || !type->fields) return cqrs_error_set(err, CQRS_EINVAL, "command type lacks a name or fields");
  if (cqrs_registry_command(d->reg, type->name) != type)
    return cqrs_error_set(err, CQRS_EUNKNOWN_TYPE, "command type '%s' is not in the registry", type->name);
  handler_t *h;
  HASH_FIND_PTR(d->handlers, &type, h);
  if (h) return cqrs_error_set(err, CQRS_EDUPLICATE, "command '%s' already has a handler", type->name);
  h = cqrs__calloc(1, sizeof *h);
  if (!h) return cqrs_error_set(err, CQRS_ENOMEM, "cannot register a handler");
  h->type = type;
  h->fn = fn;
  h->data = data;
  h->flags = flags;
  CQRS_HASH_TRY(HASH_ADD_PTR(d->handlers, type, h));
  if (CQRS_HASH_FAILED()) {
    cqrs__free(h);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot register a handler");
  }
  return CQRS_OK;
}

/* pthread's own calls: uv_thread_t is a pthread_t, and every send asks. */
static bool on_loop_thread(const cqrs_dispatcher_t *d) { return pthread_equal(pthread_self(), d->loop_thread); }

static cqrs_code_t submit(cqrs_dispatcher_t *d, cqrs_command_t *cmd, cqrs_done_cb done, void *data);

cqrs_code_t cqrs_dispatcher_send(cqrs_dispatcher_t *d, cqrs_command_t *cmd, cqrs_done_cb done, void *data) {
  if (!d || !cmd) {
    cqrs_command_destroy(cmd);
    return CQRS_EINVAL;
  }
  if (cmd->id[0] == CQRS__RESERVED_ID_PREFIX && !cmd->internal) {
    cqrs_command_destroy(cmd);
    return CQRS_EINVALID_COMMAND;
  }
  return submit(d, cmd, done, data);
}

cqrs_code_t cqrs__dispatcher_send_internal(cqrs_dispatcher_t *d, cqrs_command_t *cmd, cqrs_done_cb done,
                                           void *data) {
  cmd->internal = true;
  return submit(d, cmd, done, data);
}

/* Another thread may send while the loop thread closes: `closing` is set and
 * `pending` raised under the inbox lock, so a close that saw no pending
 * command cannot miss one that was accepted; `senders` keeps the memory
 * alive until every thread inside this function has left it. */
static cqrs_code_t submit(cqrs_dispatcher_t *d, cqrs_command_t *cmd, cqrs_done_cb done, void *data) {
  bool local = on_loop_thread(d);
  if (local) {
    if (atomic_load_explicit(&d->closing, memory_order_relaxed)) {
      cqrs_command_destroy(cmd);
      return CQRS_ECLOSED;
    }
  } else {
    atomic_fetch_add(&d->senders, 1);
    if (atomic_load(&d->closing)) {
      atomic_fetch_sub(&d->senders, 1);
      cqrs_command_destroy(cmd);
      return CQRS_ECLOSED;
    }
  }
  request_t *r = NULL;
  if (local && d->free_requests) {
    r = d->free_requests; /* its `committed` vector is empty, its capacity kept */
    d->free_requests = r->next;
    d->nfree--;
  } else if ((r = cqrs__malloc(sizeof *r))) {
    r->committed = (cqrs__event_vec_t){0};
  } else {
    if (!local) atomic_fetch_sub(&d->senders, 1);
    cqrs_command_destroy(cmd);
    return CQRS_ENOMEM;
  }
  r->next = NULL;
  r->d = r->runner = d;
  r->cmd = cmd;
  r->done = done;
  r->data = data;
  r->handler = NULL;
  r->value = NULL;
  r->last_position = 0;
  r->result.error.code = CQRS_OK;
  r->result.error.domain = CQRS_DOMAIN_NONE;
  r->result.error.name[0] = r->result.error.message[0] = '\0';
  r->result.version = 0;
  r->result.events = 0;
  r->result.duplicate = false;
  r->result.position = 0;
  r->foreign = !local;
  if (local) {
    /* Only this thread writes it: no locked add. */
    atomic_store_explicit(&d->pending_local, atomic_load_explicit(&d->pending_local, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    if (d->local_tail) {
      d->local_tail->next = r;
    } else {
      d->local_head = r;
      if (!d->opts.keep_alive) uv_ref((uv_handle_t *)&d->async);
    }
    d->local_tail = r;
    uv_async_send(&d->async);
    return CQRS_OK;
  }
  uv_mutex_lock(&d->inbox_lock);
  if (atomic_load(&d->closing)) {
    uv_mutex_unlock(&d->inbox_lock);
    atomic_fetch_sub(&d->senders, 1);
    cqrs__event_vec_free(&r->committed);
    cqrs__free(r);
    cqrs_command_destroy(cmd);
    return CQRS_ECLOSED;
  }
  atomic_fetch_add(&d->pending, 1);
  if (d->inbox_tail) {
    d->inbox_tail->next = r;
  } else {
    d->inbox_head = r;
  }
  d->inbox_tail = r;
  uv_async_send(&d->async);
  uv_mutex_unlock(&d->inbox_lock);
  atomic_fetch_sub(&d->senders, 1);
  return CQRS_OK;
}

typedef struct waiter {
  uv_sem_t sem;
  cqrs_error_t error;
  bool duplicate;
} waiter_t;

static void wake(const cqrs_result_t *r, void *data) {
  waiter_t *w = data;
  w->error = r->error;
  w->duplicate = r->duplicate;
  uv_sem_post(&w->sem);
}

cqrs_code_t cqrs_dispatcher_execute(cqrs_dispatcher_t *d, cqrs_command_t *cmd, cqrs_error_t *err, bool *duplicate) {
  if (duplicate) *duplicate = false;
  if (!d || !cmd) {
    cqrs_command_destroy(cmd);
    return cqrs_error_set(err, CQRS_EINVAL, "NULL dispatcher or command");
  }
  if (on_loop_thread(d)) {
    cqrs_command_destroy(cmd);
    return cqrs_error_set(err, CQRS_ESTATE, "cqrs_dispatcher_execute would block the loop thread");
  }
  waiter_t w;
  if (uv_sem_init(&w.sem, 0)) {
    cqrs_command_destroy(cmd);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot create a semaphore");
  }
  cqrs_code_t rc = cqrs_dispatcher_send(d, cmd, wake, &w);
  if (rc) {
    uv_sem_destroy(&w.sem);
    return cqrs_error_set(err, rc, "the dispatcher refused the command");
  }
  uv_sem_wait(&w.sem);
  uv_sem_destroy(&w.sem);
  cqrs__error_copy(err, &w.error);
  if (duplicate) *duplicate = w.duplicate;
  return w.error.code;
}

/* ---- handler context ---- */

/* Takes the aggregate's lock when that cannot deadlock: a context waits for
 * a lock only while it holds none, and the loop thread never waits. Without
 * the lock, optimistic concurrency still guards the commit. The stripe is
 * bits 8-15 of the id's cache hash (the shards take the top ones): two
 * aggregate types under one id share a lock, which only orders them. */
static void lock_aggregate(cqrs_context_t *ctx, uint32_t key_hash) {
  unsigned s = (key_hash >> 8) % CQRS_STRIPES;
  for (size_t i = 0; i < ctx->nheld; i++) {
    if (ctx->held[i] == s) return;
  }
  pthread_mutex_t *m = &ctx->d->stripes[s];
  bool locked = (ctx->nheld || ctx->on_loop) ? pthread_mutex_trylock(m) == 0 : pthread_mutex_lock(m) == 0;
  if (locked) ctx->held[ctx->nheld++] = s;
}

/* A member keeps only the aggregates it owns: the others change on other
 * loops, unseen by it. The home sees every commit (they all come back to
 * its loop thread), so it keeps any, but on a pool thread only its own: a
 * state loaded there could be put after a member's commit was seen. */
static cqrs__cache_t *cache_of_loops(const cqrs_context_t *ctx, const char *id) {
  const cqrs_dispatcher_t *d = ctx->d;
  if (d->home) return partition_of(d, id) == d->index ? d->cache : NULL;
  if (d->members && !ctx->on_loop && partition_of(d, id)) return NULL;
  return d->cache;
}

/* One loop (the usual case) decides inline. */
static inline cqrs__cache_t *cache_for(const cqrs_context_t *ctx, const char *id) {
  return ctx->d->nloops > 1 ? cache_of_loops(ctx, id) : ctx->d->cache;
}

/* A commit of an aggregate another loop owns (a command naming no
 * aggregate, or another) advances the owner's cached state at once, so that
 * a state the owner loads meanwhile cannot be put over it. */
static void advance_owner(const cqrs_dispatcher_t *d, cqrs_aggregate_t *agg) {
  unsigned m = partition_of(d, agg->id);
  if (m == d->index) return;
  const cqrs_dispatcher_t *home = d->home ? d->home : d;
  cqrs__cache_put(m ? home->members[m].d->cache : home->cache, agg);
}

static void unlock_aggregates(cqrs_context_t *ctx) {
  while (ctx->nheld) pthread_mutex_unlock(&ctx->d->stripes[ctx->held[--ctx->nheld]]);
}

cqrs_code_t cqrs_context_load(cqrs_context_t *ctx, const cqrs_aggregate_type_t *type, const char *id,
                              cqrs_aggregate_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  if (!ctx || !type) return cqrs_error_set(err, CQRS_EINVAL, "NULL context or aggregate type");
  /* cqrs__check_str's checks, its length kept for the hash; it says why on a failure. */
  size_t n = id ? strnlen(id, CQRS_ID_MAX) : 0;
  cqrs_code_t rc = CQRS_OK;
  if (n == 0 || n == CQRS_ID_MAX || !cqrs__utf8_valid(id, n)) rc = cqrs__check_str(id, CQRS_ID_MAX, "aggregate id", err);
  if (rc) return rc;
  for (size_t i = 0; i < ctx->naggs; i++) {
    if (ctx->aggs[i]->type == type && !strcmp(ctx->aggs[i]->id, id)) {
      *out = ctx->aggs[i];
      return CQRS_OK;
    }
  }
  if (ctx->naggs == CTX_MAX_AGGREGATES)
    return cqrs_error_set(err, CQRS_ETOO_LARGE, "a command may load at most %d aggregates", CTX_MAX_AGGREGATES);
  uint32_t h = cqrs__cache_hash(id, n);
  lock_aggregate(ctx, h);
  cqrs_aggregate_t *agg;
  cqrs__agg_pool_t *pool = ctx->on_loop ? &ctx->d->free_aggs : NULL;
  if ((rc = cqrs__repository_load_cached(ctx->d->store, cache_for(ctx, id), pool, type, id, h, &agg, err)))
    return rc;
  cqrs__aggregate_set_cause(agg, ctx->cmd->id, ctx->cmd->correlation_id);
  ctx->aggs[ctx->naggs++] = agg;
  *out = agg;
  return CQRS_OK;
}

cqrs_code_t cqrs_context_set_value(cqrs_context_t *ctx, const bson_t *value, cqrs_error_t *err) {
  if (!ctx || !value) return cqrs_error_set(err, CQRS_EINVAL, "NULL context or value");
  bson_t *copy = bson_copy(value);
  if (!copy) return cqrs_error_set(err, CQRS_ENOMEM, "cannot copy the value");
  if (ctx->value) bson_destroy(ctx->value);
  ctx->value = copy;
  return CQRS_OK;
}

const cqrs_command_t *cqrs_context_command(const cqrs_context_t *ctx) { return ctx ? ctx->cmd : NULL; }

static void context_reset(cqrs_context_t *ctx) {
  cqrs__agg_pool_t *pool = ctx->on_loop ? &ctx->d->free_aggs : NULL;
  for (size_t i = 0; i < ctx->naggs; i++) cqrs__aggregate_release(pool, ctx->aggs[i]);
  ctx->naggs = 0;
  unlock_aggregates(ctx);
  if (ctx->value) bson_destroy(ctx->value);
  ctx->value = NULL;
}

static cqrs_code_t context_commit(cqrs_context_t *ctx, request_t *r, cqrs_error_t *err) {
  cqrs_aggregate_t *changed = NULL;
  for (size_t i = 0; i < ctx->naggs; i++) {
    if (!ctx->aggs[i]->pending_count) continue;
    if (changed)
      return cqrs_error_set(err, CQRS_ESTATE, "a command may change one aggregate; %s and %s both changed",
                            changed->id, ctx->aggs[i]->id);
    changed = ctx->aggs[i];
  }
  if (!changed) {
    if (ctx->naggs == 1) r->result.version = ctx->aggs[0]->version;
    return CQRS_OK;
  }
  cqrs_cause_t cause = {ctx->cmd->id, ctx->cmd->correlation_id};
  cqrs_save_result_t sr;
  /* Keep the events: once committed they are published from here. */
  cqrs__event_vec_clear(&r->committed);
  for (size_t i = 0; i < changed->pending_count; i++) {
    if (cqrs__event_vec_push_ref(&r->committed, changed->pending[i])) break;
  }
  cqrs_code_t rc =
      cqrs__repository_save_cached(ctx->d->store, cache_for(ctx, changed->id), changed, &cause, &sr, err);
  if (rc || sr.duplicate || r->committed.len != sr.committed) cqrs__event_vec_clear(&r->committed);
  if (rc) return rc;
  if (ctx->d->nloops > 1 && sr.committed) advance_owner(ctx->d, changed);
  r->result.version = changed->version;
  r->result.events = sr.committed;
  r->result.duplicate = sr.duplicate;
  r->result.position = sr.last_position;
  r->last_position = sr.last_position;
  return CQRS_OK;
}

/* Runs the handler and commits, again after a conflict. Any thread. */
static void run_request(request_t *r, bool on_loop) {
  cqrs_dispatcher_t *d = r->runner;
  cqrs_error_t *err = &r->result.error;
  cqrs_context_t ctx; /* its arrays are read only up to their counts: not zeroed */
  ctx.d = d;
  ctx.cmd = r->cmd;
  ctx.on_loop = on_loop;
  ctx.naggs = ctx.nheld = 0;
  ctx.value = NULL;
  cqrs_code_t rc = CQRS_OK;
  for (unsigned attempt = 0;; attempt++) {
    if (attempt) cqrs_error_clear(err); /* submit cleared it for the first */
    r->result.version = 0;
    rc = r->handler->fn(&ctx, r->cmd, r->handler->data, err);
    if (rc == CQRS_OK) rc = context_commit(&ctx, r, err);
    if (rc == CQRS_ECONFLICT) r->conflicts++;
    if (rc != CQRS_ECONFLICT || attempt >= d->opts.conflict_retries) break;
    context_reset(&ctx);
  }
  if (rc != CQRS_OK && err->code != rc) {
    /* The handler failed without saying why. */
    cqrs_error_set(err, rc, "handler of %s returned %s", r->cmd->type->name, cqrs_code_name(rc));
  }
  if (r->cmd->step) cqrs__step_settle(d->store, r->cmd, &rc, &r->result, err);
  if (rc == CQRS_OK) {
    r->value = ctx.value;
    ctx.value = NULL;
  }
  context_reset(&ctx);
}

/* Home: before the caller hears of a commit, no member keeps a state older
 * than it, should advance_owner have found no memory (the home's own copy:
 * finish_returns). */
static void loops_seen(cqrs_dispatcher_t *d, const request_t *r) {
  for (size_t i = 0; i < r->committed.len; i++) {
    const cqrs_event_t *e = r->committed.items[i];
    if (!e->envelope) continue;
    unsigned m = partition_of(d, cqrs_event_aggregate_id(e));
    if (m && m != r->runner->index) cqrs__cache_seen(d->members[m].d->cache, e);
  }
}

/* Home: a commit the feed read from the store (another writer's, or one
 * of ours read back) drops older states of its aggregate from the home's
 * cache and from its owner's, so a member answers no command from a state
 * another writer has moved past. */
void cqrs__dispatcher_seen(cqrs_dispatcher_t *d, const cqrs_event_t *e) {
  cqrs__cache_seen(d->cache, e);
  if (!d->members || !e->envelope) return;
  unsigned m = partition_of(d, e->envelope->aggregate_id);
  if (m) cqrs__cache_seen(d->members[m].d->cache, e);
}

static void finish_request(request_t *r) {
  cqrs_dispatcher_t *d = r->d;
  bool foreign = r->foreign;
  if (d->members && r->result.events && r->runner == d) loops_seen(d, r);
  if (r->result.events && r->committed.len) {
    cqrs__feed_committed(d, &r->committed);
  } else if (r->result.events && r->runner == d) {
    /* No memory kept the events: the feed reads them (finish_returns has
     * for those a member ran). */
    cqrs__feed_kick(d, r->last_position - (int64_t)r->result.events + 1, r->last_position);
  }
  if (r->committed.len) cqrs__event_vec_clear(&r->committed);
  r->result.command_id = r->cmd->id;
  r->result.value = r->value;
  if (d->mw.n) cqrs__mw_command_after(&d->mw, r->cmd, &r->result, r->started_ns, r->conflicts);
  if (r->done) r->done(&r->result, r->data);
  if (r->value) bson_destroy(r->value);
  cqrs_command_destroy(r->cmd);
  if (d->nfree < FREE_REQUESTS && !atomic_load_explicit(&d->closing, memory_order_relaxed)) {
    r->next = d->free_requests;
    d->free_requests = r;
    d->nfree++;
  } else {
    cqrs__event_vec_free(&r->committed);
    cqrs__free(r);
  }
  if (foreign) {
    atomic_fetch_sub_explicit(&d->pending, 1, memory_order_relaxed);
  } else {
    atomic_store_explicit(&d->pending_local, atomic_load_explicit(&d->pending_local, memory_order_relaxed) - 1,
                          memory_order_relaxed);
  }
  if (atomic_load_explicit(&d->closing, memory_order_relaxed)) cqrs__dispatcher_maybe_closed(d);
}

static void work_cb(uv_work_t *w) { run_request(w->data, false); }

static void after_work_cb(uv_work_t *w, int status) {
  request_t *r = w->data;
  r->d->work_inflight--;
  if (status == UV_ECANCELED) cqrs_error_set(&r->result.error, CQRS_ECLOSED, "the command was cancelled");
  finish_request(r);
}

/* Appends the requests first..last (linked) to the list head..tail. */
static void chain_append(request_t **head, request_t **tail, request_t *first, request_t *last) {
  if (*tail) {
    (*tail)->next = first;
  } else {
    *head = first;
  }
  *tail = last;
}

/* Home: hands the routed commands over to their member, under one lock. */
static void handover(member_t *m) {
  if (!m->nout) return;
  cqrs_dispatcher_t *w = m->d;
  uv_mutex_lock(&w->inbox_lock);
  atomic_fetch_add(&w->pending, m->nout);
  chain_append(&w->inbox_head, &w->inbox_tail, m->out_head, m->out_tail);
  uv_async_send(&w->async);
  uv_mutex_unlock(&w->inbox_lock);
  m->out_head = m->out_tail = NULL;
  m->nout = 0;
}

static void route(cqrs_dispatcher_t *d, member_t *m, request_t *r) {
  r->runner = m->d;
  r->next = NULL;
  chain_append(&m->out_head, &m->out_tail, r, r);
  if (d->away++ == 0 && !d->opts.keep_alive) uv_ref((uv_handle_t *)&d->async); /* until it comes back */
  if (++m->nout == HANDOVER_BATCH) handover(m);
}

/* Member: commands run here go back to their home, which finishes them. */
static void hand_back(cqrs_dispatcher_t *w) {
  if (!w->batch_n) return;
  cqrs_dispatcher_t *home = w->home;
  size_t n = w->batch_n;
  uv_mutex_lock(&home->inbox_lock);
  chain_append(&home->returns_head, &home->returns_tail, w->batch_head, w->batch_tail);
  uv_async_send(&home->async);
  uv_mutex_unlock(&home->inbox_lock);
  w->batch_head = w->batch_tail = NULL;
  w->batch_n = 0;
  atomic_fetch_sub(&w->pending, n);
  if (atomic_load_explicit(&w->closing, memory_order_relaxed)) cqrs__dispatcher_maybe_closed(w);
}

static void run_routed(cqrs_dispatcher_t *w, request_t *r) {
  r->runner = w;
  run_request(r, true);
  r->next = NULL;
  chain_append(&w->batch_head, &w->batch_tail, r, r);
  if (++w->batch_n == HANDOVER_BATCH) hand_back(w);
}

/* Middleware, handler look-up and routing: true when `r` is to run here,
 * false when it was finished (refused) or routed to another loop. */
static bool admit(cqrs_dispatcher_t *d, request_t *r) {
  r->conflicts = 0;
  r->started_ns = 0;
  if (d->mw.n) {
    r->started_ns = uv_hrtime();
    if (cqrs__mw_command_before(&d->mw, r->cmd, &r->result.error)) {
      finish_request(r);
      return false;
    }
  }
  const cqrs_command_type_t *type = r->cmd->type;
  handler_t **memo = &d->handler_memo[((uintptr_t)type >> 4) % HANDLER_MEMO];
  handler_t *h = *memo;
  if (!h || h->type != type) {
    HASH_FIND_PTR(d->handlers, &type, h);
    if (h) *memo = h; /* handlers live until the dispatcher is freed */
  }
  if (!h) {
    cqrs_error_set(&r->result.error, CQRS_ENO_HANDLER, "no handler for command '%s'", type->name);
    finish_request(r);
    return false;
  }
  r->handler = h;
  if (d->members && type->aggregate_id && !d->store_blocking && !(h->flags & CQRS_HANDLER_BLOCKING)) {
    const char *id = type->aggregate_id(r->cmd->payload);
    unsigned m = id ? partition_of(d, id) : 0;
    if (m) {
      route(d, &d->members[m], r);
      return false;
    }
  }
  return true;
}

static void run_here(cqrs_dispatcher_t *d, request_t *r) {
  if (d->store_blocking || (r->handler->flags & CQRS_HANDLER_BLOCKING)) {
    r->work.data = r;
    if (uv_queue_work(d->loop, &r->work, work_cb, after_work_cb) == 0) {
      d->work_inflight++;
      return;
    }
    cqrs_error_set(&r->result.error, CQRS_ESTATE, "cannot queue work on the thread pool");
  } else {
    run_request(r, true);
  }
  finish_request(r);
}

static void start_request(cqrs_dispatcher_t *d, request_t *r) {
  if (admit(d, r)) run_here(d, r);
}

/* Home: commands members ran. One read of the feed publishes them all
 * (they come back out of position order), then each completes. The read
 * drops the home's stale cached states; without subscribers it reads
 * nothing, so the commits drop them here. */
static void finish_returns(cqrs_dispatcher_t *d, request_t *back) {
  int64_t first = INT64_MAX, last = 0;
  bool fed = d->nsubs && !d->store_blocking;
  for (request_t *r = back; r; r = r->next) {
    loops_seen(d, r);
    for (size_t i = 0; !fed && i < r->committed.len; i++) cqrs__cache_seen(d->cache, r->committed.items[i]);
    cqrs__event_vec_clear(&r->committed);
    if (r->last_position > last) last = r->last_position;
    if (r->result.events && r->last_position - (int64_t)r->result.events + 1 < first)
      first = r->last_position - (int64_t)r->result.events + 1;
  }
  if (last > d->feed_pos || !d->head_known) cqrs__feed_kick(d, first == INT64_MAX ? 0 : first, last);
  while (back) {
    request_t *r = back;
    back = r->next;
    d->away--;
    finish_request(r);
  }
}

/* Home with members: routes first, so that they start at once, then runs
 * its own share. */
static void drain_home(cqrs_dispatcher_t *d) {
  request_t *mine = NULL, **tail = &mine;
  for (int n = 0; d->local_head && n < DRAIN_BATCH; n++) {
    request_t *r = d->local_head;
    d->local_head = r->next;
    if (!d->local_head) d->local_tail = NULL;
    if (admit(d, r)) {
      r->next = NULL;
      *tail = r;
      tail = &r->next;
    }
  }
  for (unsigned i = 1; i < d->nloops; i++) handover(&d->members[i]);
  while (mine) {
    request_t *r = mine;
    mine = r->next;
    run_here(d, r);
  }
}

static void async_cb(uv_async_t *h) {
  cqrs_dispatcher_t *d = h->data;
  uv_mutex_lock(&d->inbox_lock);
  request_t *in = d->inbox_head;
  request_t *in_tail = d->inbox_tail;
  d->inbox_head = d->inbox_tail = NULL;
  request_t *back = d->returns_head;
  d->returns_head = d->returns_tail = NULL;
  bool waits = d->wait_inbox != NULL;
  cqrs__waiters_adopt(d);
  uv_mutex_unlock(&d->inbox_lock);
  if (waits) cqrs__waiters_check(d);
  if (back) finish_returns(d, back);
  if (in) {
    if (d->local_tail) {
      d->local_tail->next = in;
    } else {
      d->local_head = in;
    }
    d->local_tail = in_tail;
  }
  if (d->members) {
    drain_home(d);
  } else {
    for (int n = 0; d->local_head && n < DRAIN_BATCH; n++) {
      request_t *r = d->local_head;
      d->local_head = r->next;
      if (!d->local_head) d->local_tail = NULL;
      if (r->d == d) {
        start_request(d, r);
      } else {
        run_routed(d, r);
      }
    }
    if (d->home) hand_back(d);
  }
  if (d->local_head) {
    uv_async_send(&d->async); /* yield to I/O, then go on */
  } else if (!d->opts.keep_alive && !d->away) {
    uv_unref((uv_handle_t *)&d->async);
  }
  if (d->home && atomic_load(&d->stop) && !atomic_load(&d->closing)) cqrs_dispatcher_close(d, NULL, NULL);
}

size_t cqrs_dispatcher_pending(const cqrs_dispatcher_t *d) {
  return d ? atomic_load(&d->pending) + atomic_load_explicit(&d->pending_local, memory_order_relaxed) : 0;
}
cqrs_store_t *cqrs_dispatcher_store(const cqrs_dispatcher_t *d) { return d ? d->store : NULL; }
uv_loop_t *cqrs_dispatcher_loop(const cqrs_dispatcher_t *d) { return d ? d->loop : NULL; }

/* ---- closing ---- */

static void handle_closed(uv_handle_t *h) {
  cqrs_dispatcher_t *d = h->data;
  if (--d->handles_open > 0) return;
  cqrs_close_cb cb = d->close_cb;
  void *data = d->close_data;
  /* A thread that saw the dispatcher open may still be leaving send(). */
  while (atomic_load(&d->senders)) uv_sleep(0);
  uv_mutex_lock(&d->inbox_lock);
  uv_mutex_unlock(&d->inbox_lock);
  for (size_t i = 0; i < d->nprocs; i++) cqrs__process_free(d->procs[i]);
  cqrs__free(d->procs);
  cqrs__bus_free(d);
  while (d->free_requests) {
    request_t *r = d->free_requests;
    d->free_requests = r->next;
    cqrs__event_vec_free(&r->committed);
    cqrs__free(r);
  }
  handler_t *hd, *tmp;
  HASH_ITER(hh, d->handlers, hd, tmp) {
    HASH_DEL(d->handlers, hd);
    cqrs__free(hd);
  }
  uv_mutex_destroy(&d->inbox_lock);
  for (size_t i = 0; i < CQRS_STRIPES; i++) pthread_mutex_destroy(&d->stripes[i]);
  cqrs__cache_destroy(d->cache);
  cqrs__agg_pool_free(&d->free_aggs);
  cqrs__free(d);
  if (cb) cb(data);
}

void cqrs__dispatcher_maybe_closed(cqrs_dispatcher_t *d) {
  if (d->closed_handles || cqrs_dispatcher_pending(d) || d->work_inflight || !cqrs__bus_idle(d)) return;
  for (size_t i = 0; i < d->nprocs; i++) {
    if (!cqrs__process_idle(d->procs[i])) return;
  }
  if (d->leasing && !cqrs__leases_closed(d)) return; /* releases what it holds first */
  /* Nothing of this dispatcher is out on a member any more. */
  if (d->members) members_stop(d, d->nloops);
  d->closed_handles = true;
  for (size_t i = 0; i < d->nprocs; i++) cqrs__process_close_handles(d->procs[i], handle_closed);
  uv_close((uv_handle_t *)&d->async, handle_closed);
  uv_close((uv_handle_t *)&d->feed_timer, handle_closed);
  uv_close((uv_handle_t *)&d->wait_timer, handle_closed);
  if (d->poll_on) uv_close((uv_handle_t *)&d->poll, handle_closed);
  cqrs__bus_close_handles(d, handle_closed);
}

cqrs_code_t cqrs_dispatcher_close(cqrs_dispatcher_t *d, cqrs_close_cb cb, void *data) {
  if (!d) return CQRS_EINVAL;
  uv_mutex_lock(&d->inbox_lock);
  bool was = atomic_exchange(&d->closing, true);
  uv_mutex_unlock(&d->inbox_lock);
  if (was) return CQRS_ECLOSED;
  for (size_t i = 0; i < d->nprocs; i++) cqrs__process_closing(d->procs[i]);
  d->close_cb = cb;
  d->close_data = data;
  if (d->poll_on) uv_timer_stop(&d->poll);
  uv_timer_stop(&d->feed_timer);
  cqrs__waiters_close(d);
  cqrs__bus_close(d);
  cqrs__dispatcher_maybe_closed(d);
  return CQRS_OK;
}
