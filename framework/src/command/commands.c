/* The command side as a component of the runtime: handlers, send from any
 * thread, the inbox, the drain on the loop thread. */
#include "command/command-private.h"

#define DRAIN_BATCH 4096
#define FREE_REQUESTS 1024 /* requests kept for reuse on the loop thread */

static void async_cb(uv_async_t *h);

static cqrs_code_t add_handler(cqrs__commands_t *c, const cqrs_command_type_t *type, cqrs_command_handler_cb fn,
                               void *data, unsigned flags, handler_t **out, cqrs_error_t *err) {
  if (cqrs__runtime_closing(c->rt)) return cqrs_error_set(err, CQRS_ECLOSED, "dispatcher is closing");
  handler_t *h;
  HASH_FIND_PTR(c->handlers, &type, h);
  if (h) return cqrs_error_set(err, CQRS_EDUPLICATE, "command '%s' already has a handler", type->name);
  h = cqrs__calloc(1, sizeof *h);
  if (!h) return cqrs_error_set(err, CQRS_ENOMEM, "cannot register a handler");
  h->type = type;
  h->fn = fn;
  h->data = data;
  h->flags = flags;
  CQRS_HASH_TRY(HASH_ADD_PTR(c->handlers, type, h));
  if (CQRS_HASH_FAILED()) {
    cqrs__free(h);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot register a handler");
  }
  if (out) *out = h;
  return CQRS_OK;
}

/* The checks of a public registration. */
static cqrs_code_t check_registration(cqrs_dispatcher_t *d, const cqrs_command_type_t *type, bool fn,
                                      cqrs_error_t *err) {
  if (!d || !type || !fn) return cqrs_error_set(err, CQRS_EINVAL, "NULL dispatcher, command type or handler");
  if (!type->name || !type->fields) return cqrs_error_set(err, CQRS_EINVAL, "command type lacks a name or fields");
  if (cqrs_registry_command(d->reg, type->name) != type)
    return cqrs_error_set(err, CQRS_EUNKNOWN_TYPE, "command type '%s' is not in the registry", type->name);
  return CQRS_OK;
}

cqrs_code_t cqrs_dispatcher_register(cqrs_dispatcher_t *d, const cqrs_command_type_t *type,
                                     cqrs_command_handler_cb fn, void *data, unsigned flags, cqrs_error_t *err) {
  cqrs_code_t rc = check_registration(d, type, fn != NULL, err);
  return rc ? rc : add_handler(d->commands, type, fn, data, flags, NULL, err);
}

cqrs_code_t cqrs_dispatcher_register_call(cqrs_dispatcher_t *d, const cqrs_command_type_t *type,
                                          cqrs_call_start_cb start, cqrs_call_decide_cb decide, void *data,
                                          unsigned flags, cqrs_error_t *err) {
  cqrs_code_t rc = check_registration(d, type, start && decide, err);
  if (!rc && (flags & CQRS_HANDLER_BATCH)) rc = cqrs_error_set(err, CQRS_EINVAL, "a call cannot run in batches");
  handler_t *h = NULL;
  if (!rc) rc = add_handler(d->commands, type, NULL, data, flags, &h, err);
  if (rc) return rc;
  h->start = start;
  h->decide = decide;
  return CQRS_OK;
}

cqrs_code_t cqrs_dispatcher_use(cqrs_dispatcher_t *d, const cqrs_middleware_t *mw, void *data, cqrs_error_t *err) {
  if (!d) return cqrs_error_set(err, CQRS_EINVAL, "NULL dispatcher");
  if (cqrs__runtime_closing(d)) return cqrs_error_set(err, CQRS_ECLOSED, "dispatcher is closing");
  return cqrs__mw_add(&d->commands->mw, mw, data, err);
}

/* Another thread may send while the loop thread closes: `closing` is set and
 * `pending` raised under the runtime's lock, so a close that saw no pending
 * command cannot miss one that was accepted; `senders` keeps the memory
 * alive until every thread inside this function has left it. */
static cqrs_code_t submit(cqrs__commands_t *c, cqrs_command_t *cmd, cqrs_done_cb done, void *data) {
  cqrs__runtime_t *rt = c->rt;
  bool local = cqrs__runtime_on_loop(rt);
  if (local) {
    if (cqrs__runtime_closing(rt)) {
      cqrs_command_destroy(cmd);
      return CQRS_ECLOSED;
    }
  } else {
    atomic_fetch_add(&rt->senders, 1);
    if (atomic_load(&rt->closing)) {
      atomic_fetch_sub(&rt->senders, 1);
      cqrs_command_destroy(cmd);
      return CQRS_ECLOSED;
    }
  }
  request_t *r = NULL;
  if (local && c->free_requests) {
    r = c->free_requests; /* its `committed` vector is empty, its capacity kept */
    c->free_requests = r->next;
    c->nfree--;
  } else if ((r = cqrs__malloc(sizeof *r))) {
    r->committed = (cqrs__event_vec_t){0};
  } else {
    if (!local) atomic_fetch_sub(&rt->senders, 1);
    cqrs_command_destroy(cmd);
    return CQRS_ENOMEM;
  }
  r->next = NULL;
  r->c = r->runner = c;
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
  r->reply = NULL;
  r->call_state = CALL_NONE;
  r->foreign = !local;
  if (local) {
    /* Only this thread writes it: no locked add. */
    atomic_store_explicit(&c->pending_local, atomic_load_explicit(&c->pending_local, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    if (c->local_tail) {
      c->local_tail->next = r;
    } else {
      c->local_head = r;
      if (!c->keep_alive) uv_ref((uv_handle_t *)&c->async);
    }
    c->local_tail = r;
    uv_async_send(&c->async);
    return CQRS_OK;
  }
  uv_mutex_lock(&rt->lock);
  if (atomic_load(&rt->closing)) {
    uv_mutex_unlock(&rt->lock);
    atomic_fetch_sub(&rt->senders, 1);
    cqrs__event_vec_free(&r->committed);
    cqrs__free(r);
    cqrs_command_destroy(cmd);
    return CQRS_ECLOSED;
  }
  atomic_fetch_add(&c->pending, 1);
  if (c->inbox_tail) {
    c->inbox_tail->next = r;
  } else {
    c->inbox_head = r;
  }
  c->inbox_tail = r;
  uv_async_send(&c->async);
  uv_mutex_unlock(&rt->lock);
  atomic_fetch_sub(&rt->senders, 1);
  return CQRS_OK;
}

cqrs_code_t cqrs_dispatcher_send(cqrs_dispatcher_t *d, cqrs_command_t *cmd, cqrs_done_cb done, void *data) {
  if (!d || !cmd) {
    cqrs_command_destroy(cmd);
    return CQRS_EINVAL;
  }
  if (cmd->id[0] == CQRS__RESERVED_ID_PREFIX && !cmd->internal) {
    cqrs_command_destroy(cmd);
    return CQRS_EINVALID_COMMAND;
  }
  return submit(d->commands, cmd, done, data);
}

/* The command port: what other components send and handle. */
static cqrs_code_t port_send(void *self, cqrs_command_t *cmd, cqrs_done_cb done, void *data) {
  cmd->internal = true;
  return submit(self, cmd, done, data);
}

static cqrs_code_t port_handle(void *self, const cqrs_command_type_t *type, cqrs_command_handler_cb fn, void *data,
                               unsigned flags, cqrs_error_t *err) {
  return add_handler(self, type, fn, data, flags, NULL, err);
}

typedef struct waiter {
  uv_sem_t sem;
  cqrs_error_t error;
  cqrs_execution_t figures;
} waiter_t;

static void wake(const cqrs_result_t *r, void *data) {
  waiter_t *w = data;
  w->error = r->error;
  w->figures.duplicate = r->duplicate;
  w->figures.version = r->version;
  w->figures.events = r->events;
  w->figures.position = r->position;
  uv_sem_post(&w->sem);
}

cqrs_code_t cqrs_dispatcher_execute(cqrs_dispatcher_t *d, cqrs_command_t *cmd, cqrs_error_t *err, bool *duplicate) {
  cqrs_execution_t x;
  cqrs_code_t rc = cqrs_dispatcher_execute_ex(d, cmd, &x, err);
  if (duplicate) *duplicate = x.duplicate;
  return rc;
}

cqrs_code_t cqrs_dispatcher_execute_ex(cqrs_dispatcher_t *d, cqrs_command_t *cmd, cqrs_execution_t *out,
                                       cqrs_error_t *err) {
  if (out) memset(out, 0, sizeof *out);
  if (!d || !cmd) {
    cqrs_command_destroy(cmd);
    return cqrs_error_set(err, CQRS_EINVAL, "NULL dispatcher or command");
  }
  if (cqrs__runtime_on_loop(d)) {
    cqrs_command_destroy(cmd);
    return cqrs_error_set(err, CQRS_ESTATE, "cqrs_dispatcher_execute would block the loop thread");
  }
  waiter_t w;
  memset(&w.figures, 0, sizeof w.figures);
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
  if (out) *out = w.figures;
  return w.error.code;
}

/* One loop: each request the inbox brought runs here. */
static void drain(cqrs__commands_t *c) {
  for (int n = 0; c->local_head && n < DRAIN_BATCH; n++) {
    request_t *r = c->local_head;
    c->local_head = r->next;
    if (!c->local_head) c->local_tail = NULL;
    if (cqrs__request_admit(c, r) && !(r->handler->start && cqrs__call_start(c, r)) &&
        !((r->handler->flags & CQRS_HANDLER_BATCH) && cqrs__batch_take(c, r)))
      cqrs__request_run_here(c, r);
  }
  if (c->batches) cqrs__batch_flush(c);
}

static void async_cb(uv_async_t *h) {
  cqrs__commands_t *c = h->data;
  cqrs__runtime_t *rt = c->rt;
  uv_mutex_lock(&rt->lock);
  request_t *in = c->inbox_head;
  request_t *in_tail = c->inbox_tail;
  c->inbox_head = c->inbox_tail = NULL;
  request_t *back = c->returns_head;
  c->returns_head = c->returns_tail = NULL;
  request_t *called = c->called_head;
  c->called_head = c->called_tail = NULL;
  uv_mutex_unlock(&rt->lock);
  if (called) cqrs__calls_drain(c, called);
  if (in) {
    if (c->local_tail) {
      c->local_tail->next = in;
    } else {
      c->local_head = in;
    }
    c->local_tail = in_tail;
  }
  if (c->drain) {
    c->drain(c, back);
  } else {
    drain(c);
  }
  if (c->local_head) {
    uv_async_send(&c->async); /* yield to I/O, then go on */
  } else if (!c->keep_alive && !c->away && !c->calls_out) {
    uv_unref((uv_handle_t *)&c->async);
  }
  if (c->home && atomic_load(&c->stop) && !atomic_load(&rt->closing)) cqrs__runtime_close(rt, NULL, NULL);
}

size_t cqrs_dispatcher_pending(const cqrs_dispatcher_t *d) {
  if (!d) return 0;
  const cqrs__commands_t *c = d->commands;
  return atomic_load(&c->pending) + atomic_load_explicit(&c->pending_local, memory_order_relaxed);
}
cqrs_store_t *cqrs_dispatcher_store(const cqrs_dispatcher_t *d) { return d ? d->store : NULL; }
uv_loop_t *cqrs_dispatcher_loop(const cqrs_dispatcher_t *d) { return d ? d->loop : NULL; }

/* ---- the component ---- */

static bool commands_idle(const cqrs__component_t *comp) {
  const cqrs__commands_t *c = (const cqrs__commands_t *)comp;
  return atomic_load(&c->pending) + atomic_load_explicit(&c->pending_local, memory_order_relaxed) == 0;
}

static void commands_close_handles(cqrs__component_t *comp) {
  cqrs__commands_t *c = (cqrs__commands_t *)comp;
  if (c->attached) cqrs__runtime_close_handle(c->rt, (uv_handle_t *)&c->async);
}

static void commands_free(cqrs__component_t *comp) {
  cqrs__commands_t *c = (cqrs__commands_t *)comp;
  while (c->free_requests) {
    request_t *r = c->free_requests;
    c->free_requests = r->next;
    cqrs__event_vec_free(&r->committed);
    cqrs__free(r);
  }
  handler_t *h, *tmp;
  HASH_ITER(hh, c->handlers, h, tmp) {
    HASH_DEL(c->handlers, h);
    cqrs__free(h);
  }
  cqrs__batch_free_all(c);
  for (size_t i = 0; i < CQRS_STRIPES; i++) pthread_mutex_destroy(&c->stripes[i]);
  cqrs__cache_destroy(c->cache);
  cqrs__agg_pool_free(&c->free_aggs);
  cqrs__free(c);
}

static const cqrs__component_ops_t commands_ops = {
    .name = "commands", .idle = commands_idle, .close_handles = commands_close_handles, .free = commands_free};

static cqrs_code_t commands_make(cqrs__runtime_t *rt, size_t cache_size, bool keep_alive, cqrs__commands_t **out,
                                 cqrs_error_t *err) {
  *out = NULL;
  cqrs__commands_t *c = cqrs__calloc(1, sizeof *c);
  if (!c) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate a dispatcher");
  c->rt = rt;
  c->keep_alive = keep_alive;
  c->store_blocking = cqrs_store_blocking(rt->store);
  c->nloops = 1;
  bool nomem;
  if (!(c->cache = cqrs__cache_new(cache_size, &nomem)) && nomem) {
    cqrs__free(c);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate the aggregate cache");
  }
  size_t stripes = 0;
  while (stripes < CQRS_STRIPES && pthread_mutex_init(&c->stripes[stripes], NULL) == 0) stripes++;
  if (stripes < CQRS_STRIPES) {
    while (stripes) pthread_mutex_destroy(&c->stripes[--stripes]);
    cqrs__cache_destroy(c->cache);
    cqrs__free(c);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot create a mutex");
  }
  cqrs__runtime_add(rt, &c->comp, &commands_ops);
  rt->commands = c;
  *out = c;
  return CQRS_OK;
}

cqrs_code_t cqrs__commands_attach(cqrs__commands_t *c, cqrs_error_t *err) {
  if (uv_async_init(c->rt->loop, &c->async, async_cb))
    return cqrs_error_set(err, CQRS_EINVAL, "cannot attach the dispatcher to the loop");
  c->async.data = c;
  if (!c->keep_alive) uv_unref((uv_handle_t *)&c->async);
  cqrs__runtime_handle_opened(c->rt);
  c->attached = true;
  return CQRS_OK;
}

cqrs_code_t cqrs__commands_new(cqrs__runtime_t *rt, const cqrs_dispatcher_options_t *opts, cqrs__commands_t **out,
                               cqrs_error_t *err) {
  cqrs_code_t rc = commands_make(rt, opts->aggregate_cache, opts->keep_alive, out, err);
  if (rc) return rc;
  (*out)->conflict_retries = opts->conflict_retries;
  (*out)->batch_max = (uint16_t)opts->batch_max;
  rt->command = (cqrs__command_port_t){*out, port_send, port_handle};
  return CQRS_OK;
}

cqrs_code_t cqrs__commands_new_member(cqrs__runtime_t *rt, const cqrs__commands_t *home, unsigned index,
                                      size_t cache_size, void (*drain_fn)(cqrs__commands_t *, request_t *),
                                      cqrs__commands_t **out, cqrs_error_t *err) {
  /* Kept alive until the home stops it. */
  cqrs_code_t rc = commands_make(rt, cache_size, true, out, err);
  if (rc) return rc;
  cqrs__commands_t *c = *out;
  c->conflict_retries = home->conflict_retries;
  c->batch_max = home->batch_max;
  c->home = (cqrs__commands_t *)home;
  c->index = index;
  c->nloops = home->nloops;
  c->home_share = home->home_share;
  c->drain = drain_fn;
  return cqrs__commands_attach(c, err);
}

