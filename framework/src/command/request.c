/* One request: admitted (middleware, handler look-up, routing), run (inline
 * or on the pool) and finished (published, completed, kept for reuse). */
#include "command/command-private.h"

#define FREE_REQUESTS 1024 /* requests kept for reuse on the loop thread */

void cqrs__request_finish(request_t *r) {
  cqrs__commands_t *c = r->c;
  cqrs__runtime_t *rt = c->rt;
  bool foreign = r->foreign;
  if (c->members && r->result.events && r->runner == c) cqrs__owner_seen_commit(c, r);
  if (r->result.events && rt->publish.committed) {
    if (r->committed.len) {
      rt->publish.committed(rt->publish.self, &r->committed);
    } else if (r->runner == c) {
      /* No memory kept the events: the feed reads them (loops.c does for
       * those a member ran). */
      rt->publish.kick(rt->publish.self, r->last_position - (int64_t)r->result.events + 1, r->last_position);
    }
  }
  if (r->committed.len) cqrs__event_vec_clear(&r->committed);
  r->result.command_id = r->cmd->id;
  r->result.value = r->value;
  if (c->mw.n) cqrs__mw_command_after(&c->mw, r->cmd, &r->result, r->started_ns, r->conflicts);
  if (r->done) r->done(&r->result, r->data);
  if (r->value) bson_destroy(r->value);
  if (r->reply) bson_destroy(r->reply);
  cqrs_command_destroy(r->cmd);
  bool closing = cqrs__runtime_closing(rt);
  if (c->nfree < FREE_REQUESTS && !closing) {
    r->next = c->free_requests;
    c->free_requests = r;
    c->nfree++;
  } else {
    cqrs__event_vec_free(&r->committed);
    cqrs__free(r);
  }
  if (foreign) {
    atomic_fetch_sub_explicit(&c->pending, 1, memory_order_relaxed);
  } else {
    atomic_store_explicit(&c->pending_local, atomic_load_explicit(&c->pending_local, memory_order_relaxed) - 1,
                          memory_order_relaxed);
  }
  if (closing) cqrs__runtime_maybe_closed(rt);
}

bool cqrs__request_admit(cqrs__commands_t *c, request_t *r) {
  r->conflicts = 0;
  r->started_ns = 0;
  if (c->mw.n) {
    r->started_ns = uv_hrtime();
    if (cqrs__mw_command_before(&c->mw, r->cmd, &r->result.error)) {
      cqrs__request_finish(r);
      return false;
    }
  }
  const cqrs_command_type_t *type = r->cmd->type;
  handler_t **memo = &c->handler_memo[((uintptr_t)type >> 4) % HANDLER_MEMO];
  handler_t *h = *memo;
  if (!h || h->type != type) {
    HASH_FIND_PTR(c->handlers, &type, h);
    if (h) *memo = h; /* handlers live until the dispatcher is freed */
  }
  if (!h) {
    cqrs_error_set(&r->result.error, CQRS_ENO_HANDLER, "no handler for command '%s'", type->name);
    cqrs__request_finish(r);
    return false;
  }
  r->handler = h;
  return !c->route || !c->route(c, r);
}

static void work_cb(cqrs__job_t *job) {
  request_t *r = (request_t *)((char *)job - offsetof(request_t, job));
  cqrs__request_execute(r, false);
}

static void after_work_cb(cqrs__job_t *job, bool cancelled) {
  request_t *r = (request_t *)((char *)job - offsetof(request_t, job));
  if (cancelled) cqrs_error_set(&r->result.error, CQRS_ECLOSED, "the command was cancelled");
  cqrs__request_finish(r);
}

void cqrs__request_run_here(cqrs__commands_t *c, request_t *r) {
  if (c->store_blocking || (r->handler->flags & CQRS_HANDLER_BLOCKING)) {
    if (cqrs__job_submit(c->rt, &r->job, work_cb, after_work_cb, &r->result.error) == CQRS_OK) return;
  } else {
    cqrs__request_execute(r, true);
  }
  cqrs__request_finish(r);
}
