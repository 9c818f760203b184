/* Batches (CQRS_HANDLER_BATCH; docs/architecture.md, "Batches"). The
 * requests of a batch handler whose command names its aggregate queue per
 * aggregate on the loop that runs them. A batch takes what queued, up to
 * batch_max, and runs it in rounds. A round's first request runs in a
 * fresh context as a lone command does; when it changes one aggregate, the
 * requests after it run their handlers in turn on that same state, and the
 * commits of the round (one per command, each its own command id,
 * envelope and idempotency: consecutive versions of the one stream) go to
 * the store in one call. Decisions are tentative until the commits before
 * them land: the results are final in order up to the first commit that
 * did not (a duplicate, a conflict, a failure), and the requests after it
 * run again in the next round. While a batch of an aggregate runs on the
 * pool, newcomers queue for the next one: under load, batches grow by
 * themselves. */
#include "command/command-private.h"

#define ROUND_EVENTS 4096 /* events of a round's commits at most */

struct cqrs__batch {
  UT_hash_handle hh;       /* in c->batches, by key */
  cqrs__commands_t *c;
  request_t *head, *tail;  /* queued for the next batch */
  bool running;            /* a batch of it on the pool */
  cqrs__job_t job;
  struct run *run;         /* the batch on the pool */
  char key[];
};

/* What a round decided of one request, until its commit lands. */
enum { DECIDED, COMMIT, FINAL };
typedef struct slot {
  size_t from, count; /* COMMIT: its events, pending on the round's aggregate */
  cqrs_code_t rc;     /* DECIDED: what its handler came to (nothing raised) */
  int kind;
} slot_t;

/* One batch: reqs[0..nfinal) have their results, in the order they got
 * them (their commits in position order); reqs[nfinal..n) are still to
 * run, in the order they came. */
typedef struct run {
  cqrs__batch_t *b;
  size_t n, nfinal;
  bool blocking;
  request_t **reqs, **scratch;
  slot_t *slots;
  cqrs_append_t *appends;
  cqrs_append_result_t *results;
} run_t;

bool cqrs__batch_take(cqrs__commands_t *c, request_t *r) {
  const cqrs_command_type_t *type = r->cmd->type;
  if (!(r->handler->flags & CQRS_HANDLER_BATCH) || c->batch_max < 2 || !type->aggregate_id || r->handler->start)
    return false;
  const char *key = type->aggregate_id(r->cmd->payload);
  size_t len = key ? strnlen(key, CQRS_ID_MAX) : 0;
  if (!len || len == CQRS_ID_MAX) return false; /* no aggregate, or no id of one: alone */
  cqrs__batch_t *b;
  HASH_FIND(hh, c->batches, key, len, b);
  if (!b) {
    if (!(b = cqrs__calloc(1, sizeof *b + len + 1))) return false; /* no memory: alone */
    memcpy(b->key, key, len);
    b->c = c;
    CQRS_HASH_TRY(HASH_ADD_KEYPTR(hh, c->batches, b->key, len, b));
    if (CQRS_HASH_FAILED()) {
      cqrs__free(b);
      return false;
    }
  }
  r->next = NULL;
  if (b->tail) {
    b->tail->next = r;
  } else {
    b->head = r;
  }
  b->tail = r;
  return true;
}

static void reopen(request_t *r) {
  if (r->value) bson_destroy(r->value);
  r->value = NULL;
  cqrs__event_vec_clear(&r->committed);
  cqrs_error_clear(&r->result.error);
  r->result.version = 0;
  r->result.events = 0;
  r->result.duplicate = false;
  r->result.position = 0;
  r->last_position = 0;
}

static void take_value(cqrs_context_t *ctx, request_t *r) {
  if (r->value) bson_destroy(r->value);
  r->value = ctx->value;
  ctx->value = NULL;
}

static void drop_value(cqrs_context_t *ctx) {
  if (ctx->value) bson_destroy(ctx->value);
  ctx->value = NULL;
}

/* The aggregate the context's handler changed when it changed exactly one
 * (`but`, when not NULL, is left out); *others: whether another changed. */
static cqrs_aggregate_t *changed(const cqrs_context_t *ctx, const cqrs_aggregate_t *but, bool *others) {
  cqrs_aggregate_t *one = NULL;
  *others = false;
  for (size_t i = 0; i < ctx->naggs; i++) {
    if (ctx->aggs[i] == but || !ctx->aggs[i]->pending_count) continue;
    if (one) *others = true;
    one = ctx->aggs[i];
  }
  return *others ? NULL : one;
}

/* Runs the requests after the round's first on the state of `agg` until
 * one cannot share the round (it runs first in the next): it raises and
 * then rejects or fails, changes another aggregate, loads more than a
 * context holds, forgets a subject, or changes nothing (it then answers
 * as a lone command does). Returns how many share it; *clean is false when the one that
 * ended it left events of its own on the state. */
static size_t decide(run_t *run, cqrs_context_t *ctx, cqrs_aggregate_t *agg, request_t **open, size_t nopen,
                     bool *clean) {
  size_t m = 1;
  *clean = true;
  for (; m < nopen && agg->pending_count < ROUND_EVENTS; m++) {
    request_t *r = open[m];
    size_t before = agg->pending_count;
    cqrs__aggregate_set_envelope(agg, NULL); /* its events get an envelope of their own */
    cqrs__aggregate_set_cause(agg, r->cmd->id, r->cmd->correlation_id, ctx->c->rt->clock);
    ctx->limited = false;
    cqrs_code_t rc = cqrs__context_run(ctx, r);
    bool raised = agg->pending_count > before, others;
    changed(ctx, agg, &others);
    if (ctx->limited || others || raised != (rc == CQRS_OK) || ctx->forget[0]) {
      *clean = !raised;
      drop_value(ctx);
      ctx->forget[0] = '\0';
      reopen(r);
      break;
    }
    slot_t *s = &run->slots[run->nfinal + m];
    *s = (slot_t){before, agg->pending_count - before, rc, raised ? COMMIT : DECIDED};
    if (raised) {
      take_value(ctx, r);
    } else {
      drop_value(ctx);
    }
    cqrs__context_keep_only(ctx, agg);
  }
  return m;
}

/* The round's commits, in one call of the store; each request's outcome
 * in order. */
static void commit(run_t *run, cqrs_context_t *ctx, cqrs_aggregate_t *agg, request_t **open, size_t m, bool clean) {
  cqrs__commands_t *c = run->b->c;
  slot_t *slots = run->slots + run->nfinal;
  size_t na = 0;
  for (size_t i = 0; i < m; i++) {
    if (slots[i].kind != COMMIT) continue;
    request_t *r = open[i];
    cqrs_event_t **events = agg->pending + slots[i].from;
    run->appends[na++] = (cqrs_append_t){agg->type->name, agg->id, agg->version + (int64_t)slots[i].from,
                                         r->cmd->id, events, slots[i].count};
    /* Kept to publish once committed; without memory the feed reads them. */
    cqrs__event_vec_clear(&r->committed);
    for (size_t k = 0; k < slots[i].count; k++) {
      if (cqrs__event_vec_push_ref(&r->committed, events[k])) {
        cqrs__event_vec_clear(&r->committed);
        break;
      }
    }
  }
  size_t done = 0;
  cqrs_error_t err;
  cqrs_error_clear(&err);
  cqrs_code_t rc = cqrs__repository_save_many_cached(c->rt->store, cqrs__context_cache(ctx, agg->id), agg,
                                                     run->appends, na, clean, run->results, &done, &err);
  if (c->nloops > 1 && done == na && rc == CQRS_OK && !agg->pending_count) cqrs__owner_advance(c, agg);
  bool valid = true;
  for (size_t i = 0, j = 0; i < m; i++) {
    request_t *r = open[i];
    slot_t *s = &slots[i];
    if (!valid) {
      reopen(r);
      continue;
    }
    if (s->kind == DECIDED) {
      cqrs__request_conclude(r, s->rc);
      s->kind = FINAL;
      continue;
    }
    const cqrs_append_t *a = &run->appends[j];
    const cqrs_append_result_t *res = &run->results[j++];
    cqrs_code_t final = CQRS_OK;
    if (j <= done) {
      r->result.version = a->expected_version + (int64_t)a->count;
      r->result.events = a->count;
      r->result.position = r->last_position = res->last_position;
    } else {
      /* It stopped the call: what comes after was decided on its events. */
      valid = false;
      cqrs__event_vec_clear(&r->committed);
      if (rc == CQRS_OK) {
        r->result.version = a->expected_version;
        r->result.duplicate = true;
        r->result.position = r->last_position = res->last_position;
      } else if (rc == CQRS_ECONFLICT && ++r->conflicts <= c->conflict_retries) {
        reopen(r);
        continue;
      } else {
        r->result.error = err;
        final = rc;
      }
    }
    if (cqrs__request_conclude(r, final) != CQRS_OK && r->value) {
      bson_destroy(r->value);
      r->value = NULL;
    }
    s->kind = FINAL;
  }
}

/* One round of the requests still to run: at least the first gets its
 * result, or a conflict more. */
static void round_run(run_t *run, bool on_loop) {
  cqrs__commands_t *c = run->b->c;
  request_t **open = run->reqs + run->nfinal;
  size_t nopen = run->n - run->nfinal;
  cqrs_context_t ctx;
  cqrs__context_init(&ctx, c, on_loop);
  cqrs_code_t rc = cqrs__context_run(&ctx, open[0]);
  bool others;
  /* A subject to forget goes with the lone commit (context.c). */
  cqrs_aggregate_t *agg = rc == CQRS_OK && nopen > 1 && !ctx.forget[0] ? changed(&ctx, NULL, &others) : NULL;
  if (!agg) {
    /* Alone: as a lone command. */
    cqrs__context_finish(&ctx, open[0], rc);
    run->nfinal++;
    return;
  }
  cqrs__context_keep_only(&ctx, agg);
  take_value(&ctx, open[0]);
  run->slots[run->nfinal] = (slot_t){0, agg->pending_count, CQRS_OK, COMMIT};
  bool clean;
  size_t m = decide(run, &ctx, agg, open, nopen, &clean);
  commit(run, &ctx, agg, open, m, clean);
  cqrs__context_reset(&ctx);
  /* Those with a result first, in order; the rest run again, in order. */
  size_t k = 0, f = 0;
  for (size_t i = 0; i < m; i++) {
    if (run->slots[run->nfinal + i].kind == FINAL) {
      open[f++] = open[i];
    } else {
      run->scratch[k++] = open[i];
    }
  }
  memcpy(open + f, run->scratch, k * sizeof *open);
  run->nfinal += f;
}

static void run_all(run_t *run, bool on_loop) {
  while (run->nfinal < run->n) round_run(run, on_loop);
}

/* Takes up to batch_max requests queued on `b` into a run; NULL without
 * memory (nothing taken). */
static run_t *run_new(cqrs__batch_t *b) {
  cqrs__commands_t *c = b->c;
  size_t n = 0;
  for (request_t *r = b->head; r && n < c->batch_max; r = r->next) n++;
  run_t *run = cqrs__malloc(sizeof *run + n * (2 * sizeof(request_t *) + sizeof(slot_t) + sizeof(cqrs_append_t) +
                                               sizeof(cqrs_append_result_t)));
  if (!run) return NULL;
  run->b = b;
  run->n = n;
  run->nfinal = 0;
  run->blocking = c->store_blocking;
  run->slots = (slot_t *)(run + 1);
  run->appends = (cqrs_append_t *)(run->slots + n);
  run->results = (cqrs_append_result_t *)(run->appends + n);
  run->reqs = (request_t **)(run->results + n);
  run->scratch = run->reqs + n;
  for (size_t i = 0; i < n; i++) {
    request_t *r = b->head;
    b->head = r->next;
    run->reqs[i] = r;
    if (r->handler->flags & CQRS_HANDLER_BLOCKING) run->blocking = true;
  }
  if (!b->head) b->tail = NULL;
  return run;
}

/* A member's requests go back to the home, which finishes them. */
static void ran(cqrs__commands_t *c, request_t *r) {
  if (c->home) {
    cqrs__member_ran(c, r);
  } else {
    cqrs__request_finish(r);
  }
}

static void run_done(run_t *run) {
  cqrs__commands_t *c = run->b->c;
  for (size_t i = 0; i < run->n; i++) ran(c, run->reqs[i]);
  cqrs__free(run);
}

static void start(cqrs__batch_t *b);

static void work_cb(cqrs__job_t *job) {
  cqrs__batch_t *b = (cqrs__batch_t *)((char *)job - offsetof(cqrs__batch_t, job));
  run_all(b->run, false);
}

static void after_work_cb(cqrs__job_t *job, bool cancelled) {
  cqrs__batch_t *b = (cqrs__batch_t *)((char *)job - offsetof(cqrs__batch_t, job));
  run_t *run = b->run;
  b->run = NULL;
  b->running = false;
  for (size_t i = run->nfinal; cancelled && i < run->n; i++)
    cqrs_error_set(&run->reqs[i]->result.error, CQRS_ECLOSED, "the command was cancelled");
  run_done(run);
  start(b);
}

/* Runs what is queued on `b`: inline until nothing is, or one batch on the
 * pool; forgets `b` once it has nothing. Loop thread. */
static void start(cqrs__batch_t *b) {
  cqrs__commands_t *c = b->c;
  while (b->head && !b->running) {
    run_t *run = run_new(b);
    if (!run) {
      /* No memory for a batch: the first runs alone (a member's run inline). */
      request_t *r = b->head;
      b->head = r->next;
      if (!b->head) b->tail = NULL;
      if (c->home) {
        cqrs__request_execute(r, true);
        cqrs__member_ran(c, r);
      } else {
        cqrs__request_run_here(c, r);
      }
      continue;
    }
    if (!run->blocking) {
      run_all(run, true);
      run_done(run);
      continue;
    }
    b->run = run;
    b->running = true;
    cqrs_error_t err;
    if (cqrs__job_submit(c->rt, &b->job, work_cb, after_work_cb, &err)) {
      b->run = NULL;
      b->running = false;
      for (size_t i = 0; i < run->n; i++) run->reqs[i]->result.error = err;
      run_done(run);
    }
  }
  if (!b->head && !b->running) {
    HASH_DEL(c->batches, b);
    cqrs__free(b);
  }
}

void cqrs__batch_flush(cqrs__commands_t *c) {
  cqrs__batch_t *b, *tmp;
  HASH_ITER(hh, c->batches, b, tmp) {
    if (!b->running) start(b); /* a running one starts the next itself */
  }
}

void cqrs__batch_free_all(cqrs__commands_t *c) {
  cqrs__batch_t *b, *tmp;
  HASH_ITER(hh, c->batches, b, tmp) {
    HASH_DEL(c->batches, b);
    cqrs__free(b);
  }
}
