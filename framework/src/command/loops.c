/* A dispatcher with several loops ("Several loops" in docs/architecture.md):
 * the home starts nloops - 1 members, each a runtime with a command side of
 * its own on a loop and thread of its own; a command whose type names its
 * aggregate runs on the loop owning that aggregate and comes back to the
 * home, which publishes and completes it. The members are a component of
 * the home's runtime, which stops them once nothing is out on them. */
#include "command/command-private.h"

#define LOOPS_MAX 64
#define HANDOVER_BATCH 64 /* commands handed to another loop under one lock */
#define DRAIN_BATCH 4096

typedef struct loops {
  cqrs__component_t comp;
  cqrs__commands_t *home;
} loops_t;

/* Appends the requests first..last (linked) to the list head..tail. */
static void chain_append(request_t **head, request_t **tail, request_t *first, request_t *last) {
  if (*tail) {
    (*tail)->next = first;
  } else {
    *head = first;
  }
  *tail = last;
}

/* ---- the members' threads ---- */

static void drain_member(cqrs__commands_t *w, request_t *returned);

static void member_main(void *arg) {
  cqrs__member_t *m = arg;
  if (uv_loop_init(&m->loop)) {
    m->rc = cqrs_error_set(&m->err, CQRS_ESTATE, "cannot create the loop of member %u", m->index);
    uv_sem_post(&m->ready);
    return;
  }
  cqrs__runtime_t *rt = cqrs__calloc(1, sizeof *rt);
  if (!rt) {
    m->rc = cqrs_error_set(&m->err, CQRS_ENOMEM, "cannot allocate loop %u", m->index);
  } else if ((m->rc = cqrs__runtime_init(rt, &m->loop, m->home->rt->clock, m->home->rt->reg, m->home->rt->store, &m->err))) {
    cqrs__free(rt);
  } else if ((m->rc = cqrs__commands_new_member(rt, m->home, m->index, m->cache_size, drain_member, &m->c,
                                                &m->err))) {
    cqrs__runtime_abandon(rt); /* no handle of it is on the loop */
  }
  if (m->rc) {
    uv_loop_close(&m->loop);
    uv_sem_post(&m->ready);
    return;
  }
  uv_sem_post(&m->ready);
  uv_run(&m->loop, UV_RUN_DEFAULT); /* until the home stops it: it closes, and its runtime is freed */
  int rc = uv_loop_close(&m->loop);
  if (rc) cqrs_log(CQRS_LOG_ERROR, "dispatcher", "loop of member %u left handles open: %s", m->index, uv_strerror(rc));
}

/* Asks every started member to close and waits for its thread: the home
 * calls it once nothing of its is out on a member, so they close at once. */
static void members_stop(cqrs__commands_t *home, unsigned started) {
  for (unsigned i = 1; i < started; i++) {
    cqrs__member_t *m = &home->members[i];
    uv_mutex_lock(&m->c->rt->lock);
    atomic_store(&m->c->stop, true);
    uv_async_send(&m->c->async);
    uv_mutex_unlock(&m->c->rt->lock);
    uv_thread_join(&m->thread);
    uv_sem_destroy(&m->ready);
  }
  cqrs__free(home->members);
  home->members = NULL;
}

static cqrs_code_t members_start(cqrs__commands_t *home, size_t cache_size, cqrs_error_t *err) {
  if (!(home->members = cqrs__calloc(home->nloops, sizeof *home->members)))
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate %u loops", home->nloops);
  for (unsigned i = 1; i < home->nloops; i++) {
    cqrs__member_t *m = &home->members[i];
    m->home = home;
    m->index = i;
    m->cache_size = cache_size;
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
      members_stop(home, i);
      return rc;
    }
  }
  return CQRS_OK;
}

/* ---- routing ---- */

/* Home: hands the routed commands over to their member, under one lock. */
static void handover(cqrs__member_t *m) {
  if (!m->nout) return;
  cqrs__commands_t *w = m->c;
  uv_mutex_lock(&w->rt->lock);
  atomic_fetch_add(&w->pending, m->nout);
  chain_append(&w->inbox_head, &w->inbox_tail, m->out_head, m->out_tail);
  uv_async_send(&w->async);
  uv_mutex_unlock(&w->rt->lock);
  m->out_head = m->out_tail = NULL;
  m->nout = 0;
}

/* The route hook: a command naming its aggregate goes to the loop owning
 * it (a blocking store or handler runs on the pool, as with one loop). */
static bool route(cqrs__commands_t *c, request_t *r) {
  const cqrs_command_type_t *type = r->cmd->type;
  /* A call starts and comes back here, and its decide runs here too. */
  if (!type->aggregate_id || c->store_blocking || (r->handler->flags & CQRS_HANDLER_BLOCKING) || r->handler->start)
    return false;
  const char *id = type->aggregate_id(r->cmd->payload);
  unsigned i = id ? cqrs__owner_of(c, id) : 0;
  if (!i) return false;
  cqrs__member_t *m = &c->members[i];
  r->runner = m->c;
  r->next = NULL;
  chain_append(&m->out_head, &m->out_tail, r, r);
  if (c->away++ == 0 && !c->keep_alive) uv_ref((uv_handle_t *)&c->async); /* until it comes back */
  if (++m->nout == HANDOVER_BATCH) handover(m);
  return true;
}

/* Member: commands run here go back to their home, which finishes them. */
static void hand_back(cqrs__commands_t *w) {
  if (!w->batch_n) return;
  cqrs__commands_t *home = w->home;
  size_t n = w->batch_n;
  uv_mutex_lock(&home->rt->lock);
  chain_append(&home->returns_head, &home->returns_tail, w->batch_head, w->batch_tail);
  uv_async_send(&home->async);
  uv_mutex_unlock(&home->rt->lock);
  w->batch_head = w->batch_tail = NULL;
  w->batch_n = 0;
  atomic_fetch_sub(&w->pending, n);
  if (cqrs__runtime_closing(w->rt)) cqrs__runtime_maybe_closed(w->rt);
}

/* Member: the drain hook. */
static void drain_member(cqrs__commands_t *w, request_t *returned) {
  CQRS__UNUSED(returned); /* only the home hears of returns */
  for (int n = 0; w->local_head && n < DRAIN_BATCH; n++) {
    request_t *r = w->local_head;
    w->local_head = r->next;
    if (!w->local_head) w->local_tail = NULL;
    if ((r->handler->flags & CQRS_HANDLER_BATCH) && cqrs__batch_take(w, r)) continue;
    cqrs__request_execute(r, true);
    cqrs__member_ran(w, r);
    if (w->batch_n == HANDOVER_BATCH) hand_back(w);
  }
  if (w->batches) cqrs__batch_flush(w); /* its requests join the hand-back */
  hand_back(w);
}

/* Home: commands members ran. One read of the feed publishes them all
 * (they come back out of position order), then each completes. The read
 * drops the home's stale cached states; without subscribers it reads
 * nothing, so the commits drop them here. */
static void finish_returns(cqrs__commands_t *c, request_t *back) {
  int64_t first = INT64_MAX, last = 0;
  cqrs__runtime_t *rt = c->rt;
  for (request_t *r = back; r; r = r->next) {
    if (r->last_position > last) last = r->last_position;
    if (r->result.events && r->last_position - (int64_t)r->result.events + 1 < first)
      first = r->last_position - (int64_t)r->result.events + 1;
  }
  /* The feed reads them back through the seen port, or nobody does. */
  bool fed = last && rt->publish.kick && rt->publish.kick(rt->publish.self, first == INT64_MAX ? 0 : first, last);
  for (request_t *r = back; r; r = r->next) {
    cqrs__owner_seen_commit(c, r);
    for (size_t i = 0; !fed && i < r->committed.len; i++) cqrs__cache_seen(c->cache, r->committed.items[i]);
    cqrs__event_vec_clear(&r->committed);
  }
  while (back) {
    request_t *r = back;
    back = r->next;
    c->away--;
    cqrs__request_finish(r);
  }
}

/* Home: the drain hook. Routes first, so that the members start at once,
 * then runs its own share. */
static void drain_home(cqrs__commands_t *c, request_t *returned) {
  if (returned) finish_returns(c, returned);
  if (!c->members) return; /* the last one back let the close stop them: one loop now, and nothing to drain */
  request_t *mine = NULL, **tail = &mine;
  for (int n = 0; c->local_head && n < DRAIN_BATCH; n++) {
    request_t *r = c->local_head;
    c->local_head = r->next;
    if (!c->local_head) c->local_tail = NULL;
    if (cqrs__request_admit(c, r) && !(r->handler->start && cqrs__call_start(c, r))) {
      r->next = NULL;
      *tail = r;
      tail = &r->next;
    }
  }
  for (unsigned i = 1; i < c->nloops; i++) handover(&c->members[i]);
  while (mine) {
    request_t *r = mine;
    mine = r->next;
    if (!((r->handler->flags & CQRS_HANDLER_BATCH) && cqrs__batch_take(c, r))) cqrs__request_run_here(c, r);
  }
  if (c->batches) cqrs__batch_flush(c);
}

/* ---- the component ---- */

/* Nothing of the home is out on a member by now: they close at once. */
static bool loops_release(cqrs__component_t *comp) {
  loops_t *l = (loops_t *)comp;
  cqrs__commands_t *c = l->home;
  if (c->members) members_stop(c, c->nloops);
  c->drain = NULL; /* one loop from here, should anything come */
  c->route = NULL;
  return true;
}

static void loops_free(cqrs__component_t *comp) { cqrs__free(comp); }

static const cqrs__component_ops_t loops_ops = {.name = "loops", .release = loops_release, .free = loops_free};

cqrs_code_t cqrs__loops_start(cqrs__runtime_t *rt, cqrs__commands_t *c, const cqrs_dispatcher_options_t *opts,
                              cqrs_error_t *err) {
  unsigned n = opts->loops ? opts->loops : 1;
  unsigned pct = opts->home_percent ? opts->home_percent : 100 / n;
  if (n > LOOPS_MAX) return cqrs_error_set(err, CQRS_EINVAL, "%u loops asked, at most %d", n, LOOPS_MAX);
  if (pct > 100) return cqrs_error_set(err, CQRS_EINVAL, "home_percent %u is over 100", pct);
  c->nloops = n;
  c->home_share = pct * 1024u / 100u;
  if (n == 1) return CQRS_OK;
  loops_t *l = cqrs__calloc(1, sizeof *l);
  if (!l) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate %u loops", n);
  cqrs_code_t rc = members_start(c, opts->aggregate_cache, err);
  if (rc) {
    cqrs__free(l);
    return rc;
  }
  l->home = c;
  c->drain = drain_home;
  c->route = route;
  cqrs__runtime_add(rt, &l->comp, &loops_ops);
  return CQRS_OK;
}
