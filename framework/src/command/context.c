/* The handler's context: the aggregates it loads (and their locks), the
 * commit of what one of them raised, conflicts run again. */
#include "command/command-private.h"

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
  pthread_mutex_t *m = &ctx->c->stripes[s];
  bool locked = (ctx->nheld || ctx->on_loop) ? pthread_mutex_trylock(m) == 0 : pthread_mutex_lock(m) == 0;
  if (locked) ctx->held[ctx->nheld++] = s;
}

static void unlock_aggregates(cqrs_context_t *ctx) {
  while (ctx->nheld) pthread_mutex_unlock(&ctx->c->stripes[ctx->held[--ctx->nheld]]);
}

/* One loop (the usual case) decides inline. */
static inline cqrs__cache_t *cache_for(const cqrs_context_t *ctx, const char *id) {
  return ctx->c->nloops > 1 ? cqrs__owner_cache(ctx->c, ctx->on_loop, id) : ctx->c->cache;
}

cqrs__cache_t *cqrs__context_cache(const cqrs_context_t *ctx, const char *id) { return cache_for(ctx, id); }

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
  if (ctx->naggs == CTX_MAX_AGGREGATES) {
    ctx->limited = true;
    return cqrs_error_set(err, CQRS_ETOO_LARGE, "a command may load at most %d aggregates", CTX_MAX_AGGREGATES);
  }
  uint32_t h = cqrs__cache_hash(id, n);
  lock_aggregate(ctx, h);
  cqrs_aggregate_t *agg;
  cqrs__agg_pool_t *pool = ctx->on_loop ? &ctx->c->free_aggs : NULL;
  if ((rc = cqrs__repository_load_cached(ctx->c->rt->store, cache_for(ctx, id), pool, type, id, h, &agg, err)))
    return rc;
  cqrs__aggregate_set_cause(agg, ctx->cmd->id, ctx->cmd->correlation_id, ctx->c->rt->clock);
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

int64_t cqrs_context_now_ms(const cqrs_context_t *ctx) { return cqrs__clock_wall(ctx ? ctx->c->rt->clock : NULL); }

cqrs_code_t cqrs_context_forget(cqrs_context_t *ctx, const char *subject, cqrs_error_t *err) {
  if (!ctx) return cqrs_error_set(err, CQRS_EINVAL, "context is NULL");
  cqrs_code_t rc = cqrs__check_str(subject, CQRS_ID_MAX, "subject", err);
  if (rc) return rc;
  if (ctx->forget[0] && strcmp(ctx->forget, subject))
    return cqrs_error_set(err, CQRS_ESTATE, "a command forgets one subject");
  if (!cqrs_store_keys(ctx->c->rt->store))
    return cqrs_error_set(err, CQRS_ESTATE, "the store has no key store: nothing to forget with");
  memcpy(ctx->forget, subject, strlen(subject) + 1);
  return CQRS_OK;
}

static void context_reset(cqrs_context_t *ctx) {
  cqrs__agg_pool_t *pool = ctx->on_loop ? &ctx->c->free_aggs : NULL;
  for (size_t i = 0; i < ctx->naggs; i++) cqrs__aggregate_release(pool, ctx->aggs[i]);
  ctx->naggs = 0;
  ctx->forget[0] = '\0';
  unlock_aggregates(ctx);
  if (ctx->value) bson_destroy(ctx->value);
  ctx->value = NULL;
}

void cqrs__context_reset(cqrs_context_t *ctx) { context_reset(ctx); }

void cqrs__context_keep_only(cqrs_context_t *ctx, const cqrs_aggregate_t *keep) {
  cqrs__agg_pool_t *pool = ctx->on_loop ? &ctx->c->free_aggs : NULL;
  size_t n = 0;
  for (size_t i = 0; i < ctx->naggs; i++) {
    if (ctx->aggs[i] == keep) {
      ctx->aggs[n++] = ctx->aggs[i];
    } else {
      cqrs__aggregate_release(pool, ctx->aggs[i]);
    }
  }
  ctx->naggs = n;
  unsigned s = keep ? (keep->key_hash >> 8) % CQRS_STRIPES : CQRS_STRIPES;
  n = 0;
  for (size_t i = 0; i < ctx->nheld; i++) {
    if (ctx->held[i] == s) {
      ctx->held[n++] = s;
    } else {
      pthread_mutex_unlock(&ctx->c->stripes[ctx->held[i]]);
    }
  }
  ctx->nheld = n;
}

static cqrs_code_t context_commit(cqrs_context_t *ctx, request_t *r, cqrs_error_t *err) {
  /* The key goes before the fact is recorded: a failure in between leaves
   * a subject forgotten and not yet said to be, which running the command
   * again records; never the reverse. */
  if (ctx->forget[0]) {
    cqrs_code_t rc = cqrs_keys_forget(cqrs_store_keys(ctx->c->rt->store), ctx->forget, err);
    if (rc) return rc;
  }
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
      cqrs__repository_save_cached(ctx->c->rt->store, cache_for(ctx, changed->id), changed, &cause, &sr, err);
  if (rc || sr.duplicate || r->committed.len != sr.committed) cqrs__event_vec_clear(&r->committed);
  if (rc) return rc;
  if (ctx->c->nloops > 1 && sr.committed) cqrs__owner_advance(ctx->c, changed);
  r->result.version = changed->version;
  r->result.events = sr.committed;
  r->result.duplicate = sr.duplicate;
  r->result.position = sr.last_position;
  r->last_position = sr.last_position;
  return CQRS_OK;
}

/* A command whose id comes from its payload (make_id) and that its handler
 * rejects may be that command sent again, committed the first time: the
 * handler now finds what it did (e.g. "order.exists"). When the store holds
 * a commit of its id, the answer is the duplicate, not the rejection, so a
 * caller tells a retry from a conflict (docs/architecture.md, "Idempotency").
 * A store that cannot tell leaves the rejection. */
static cqrs_code_t natural_duplicate(cqrs__commands_t *c, request_t *r, cqrs_code_t rc) {
  bool found = false;
  cqrs_error_t e;
  if (cqrs_store_has_command(c->rt->store, r->cmd->id, &found, &e) || !found) return rc;
  cqrs_error_clear(&r->result.error);
  r->result.duplicate = true;
  return CQRS_OK;
}

/* The lone path's parts are inlined in it; batch.c calls them through the
 * cqrs__ names. */
static inline cqrs_code_t run(cqrs_context_t *ctx, request_t *r) {
  ctx->cmd = r->cmd;
  r->result.version = 0;
  return r->handler->fn ? r->handler->fn(ctx, r->cmd, r->handler->data, &r->result.error)
                        : r->handler->decide(ctx, r->cmd, r->reply, r->handler->data, &r->result.error);
}

cqrs_code_t cqrs__context_run(cqrs_context_t *ctx, request_t *r) { return run(ctx, r); }

static inline cqrs_code_t conclude(request_t *r, cqrs_code_t rc) {
  cqrs_error_t *err = &r->result.error;
  if (rc != CQRS_OK && err->code != rc) {
    /* The handler failed without saying why. */
    cqrs_error_set(err, rc, "handler of %s returned %s", r->cmd->type->name, cqrs_code_name(rc));
  }
  if (rc == CQRS_EREJECTED && r->cmd->type->make_id) rc = natural_duplicate(r->runner, r, rc);
  /* The command's own interceptor (a process manager's step records its
   * refusal), after the handler and on its thread. */
  if (r->cmd->settle) r->cmd->settle(r->runner->rt->store, r->runner->rt->clock, r->cmd, &rc, &r->result, err);
  return rc;
}

cqrs_code_t cqrs__request_conclude(request_t *r, cqrs_code_t rc) { return conclude(r, rc); }

static inline void finish(cqrs_context_t *ctx, request_t *r, cqrs_code_t rc) {
  cqrs_error_t *err = &r->result.error;
  for (;;) {
    if (rc == CQRS_OK) rc = context_commit(ctx, r, err);
    if (rc == CQRS_ECONFLICT) r->conflicts++;
    if (rc != CQRS_ECONFLICT || r->conflicts > ctx->c->conflict_retries) break;
    context_reset(ctx);
    cqrs_error_clear(err); /* submit cleared it for the first */
    rc = run(ctx, r);
  }
  if (conclude(r, rc) == CQRS_OK) {
    r->value = ctx->value;
    ctx->value = NULL;
  }
  context_reset(ctx);
}

void cqrs__context_finish(cqrs_context_t *ctx, request_t *r, cqrs_code_t rc) { finish(ctx, r, rc); }

void cqrs__request_execute(request_t *r, bool on_loop) {
  cqrs_context_t ctx;
  cqrs__context_init(&ctx, r->runner, on_loop);
  finish(&ctx, r, run(&ctx, r));
}
