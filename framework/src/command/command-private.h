/* The command side of a dispatcher: one component of its runtime. Commands
 * come in from any thread (an inbox under the runtime's lock) or from the
 * loop thread (a local list), are admitted (middleware, the handler's look-
 * up, routing to the loop that owns their aggregate), run (on the loop, or
 * on the pool when the store or the handler blocks), committed, published
 * through the runtime's publish port and completed on the loop thread.
 *
 *   commands.c  the component: handlers, send, the inbox, the drain
 *   request.c   one request: admission, running, completion
 *   batch.c     requests of a batch handler queued per aggregate, run as
 *               batches: one context, one store call for their commits
 *   context.c   the handler's context: loads, locks, commit, conflicts
 *   owner.c     which loop owns an aggregate, and whose cache keeps it
 *   loops.c     a dispatcher with several loops: members, routing, returns
 *
 * Calls go down that list (loops.c uses the others; commands.c reaches it
 * through the drain and route hooks it sets). */
#ifndef CQRS_COMMAND_PRIVATE_H
#define CQRS_COMMAND_PRIVATE_H

#include "base/cqrs-uthash.h"
#include "runtime/middleware-private.h"
#include "runtime/runtime-private.h"
#include "store/cache-private.h"

typedef struct handler {
  const cqrs_command_type_t *type; /* key */
  cqrs_command_handler_cb fn;      /* NULL for a call */
  cqrs_call_start_cb start;        /* a call (calls.c): start, then decide */
  cqrs_call_decide_cb decide;
  void *data;
  unsigned flags;
  UT_hash_handle hh;
} handler_t;

typedef struct request request_t;
typedef struct cqrs__commands cqrs__commands_t;
typedef struct cqrs__batch cqrs__batch_t;

/* A member loop of a home with several (loops.c). */
typedef struct cqrs__member {
  cqrs__commands_t *c; /* the member's command side, on `loop` */
  cqrs__commands_t *home;
  unsigned index;
  size_t cache_size;
  uv_loop_t loop;
  uv_thread_t thread;
  uv_sem_t ready;
  cqrs_code_t rc;
  cqrs_error_t err;
  request_t *out_head, *out_tail; /* routed here, not handed over yet; home's loop thread */
  size_t nout;
} cqrs__member_t;

struct request {
  request_t *next;
  cqrs__commands_t *c;      /* where it was sent: finishes it */
  cqrs__commands_t *runner; /* where its handler runs: c, or the member owning its aggregate */
  cqrs_command_t *cmd;
  cqrs_done_cb done;
  void *data;
  handler_t *handler;
  cqrs__job_t job;
  cqrs_result_t result;
  bson_t *value;
  int64_t last_position;
  cqrs__event_vec_t committed; /* the events the command committed, referenced */
  uint64_t started_ns;         /* for the middleware; 0 when none was in use */
  bson_t *reply;               /* a call's, once completed (calls.c); owned */
  int call_state;              /* a call: CALL_NONE, CALL_OUT (started), CALL_BACK (completed or failed) */
  unsigned conflicts;
  bool foreign; /* sent from another thread: counted in `pending`, else in `pending_local` */
};

/* Handlers that run at once on the same aggregate take the same lock, so a
 * dispatcher does not make conflicts with itself. */
#define CQRS_STRIPES 256
#define HANDLER_MEMO 16

struct cqrs__commands {
  cqrs__component_t comp;
  cqrs__runtime_t *rt;
  unsigned conflict_retries;
  bool keep_alive;
  bool store_blocking;
  uint16_t batch_max; /* the most requests of one batch (batch.c); 1: none are batched */
  handler_t *handlers;
  handler_t *handler_memo[HANDLER_MEMO]; /* recent look-ups, by type address; loop thread */
  pthread_mutex_t stripes[CQRS_STRIPES]; /* plain mutexes: taken by every command */
  cqrs__mw_chain_t mw;                   /* middleware around commands */
  cqrs__cache_t *cache;                  /* NULL: off */
  cqrs__agg_pool_t free_aggs;            /* loop thread only */

  uv_async_t async;
  bool attached;                      /* `async` is on the loop */
  request_t *inbox_head, *inbox_tail; /* from other threads; the runtime's lock */
  request_t *local_head, *local_tail; /* from the loop thread */
  request_t *free_requests;           /* loop thread only */
  /* Batches (batch.c): the aggregates with requests queued or a batch
   * running. Loop thread. */
  cqrs__batch_t *batches;
  _Atomic size_t pending;       /* commands sent from other threads, not completed */
  _Atomic size_t pending_local; /* from the loop thread: only it writes, no locked add */

  /* Several loops (loops.c, "Several loops" in docs/architecture.md). The
   * home (the dispatcher the application made) owns nloops - 1 members,
   * each a runtime with a command side of its own on a loop and thread of
   * its own; it hands a command to the member owning its aggregate and
   * finishes it when it comes back. */
  unsigned nloops, index;      /* index: 0 on the home */
  unsigned home_share;         /* of 1024 hashes, those the home owns */
  unsigned nfree;              /* requests in free_requests */
  cqrs__commands_t *home;      /* on a member: its home; NULL on the home */
  cqrs__member_t *members;     /* home only: nloops entries, [0] unused */
  request_t *returns_head, *returns_tail; /* finished by members; the runtime's lock */
  size_t away;                 /* home: commands out on members; loop thread */
  size_t calls_out;            /* calls started and not back; loop thread */
  request_t *batch_head, *batch_tail;     /* member: run, not handed back yet */
  size_t batch_n;
  _Atomic bool stop;           /* member: the home asks it to close */
  request_t *called_head, *called_tail; /* calls completed from any thread; the runtime's lock */
  /* Set by loops.c when there are several: runs what the inbox brought
   * (and what members returned); and routes an admitted request to its
   * loop (true: routed, not to run here). NULL: one loop. */
  void (*drain)(cqrs__commands_t *c, request_t *returned);
  bool (*route)(cqrs__commands_t *c, request_t *r);
};

/* Member: request `r` ran here; the end of the drain hands it back to the
 * home (loops.c). */
static inline void cqrs__member_ran(cqrs__commands_t *w, request_t *r) {
  r->next = NULL;
  if (w->batch_tail) {
    w->batch_tail->next = r;
  } else {
    w->batch_head = r;
  }
  w->batch_tail = r;
  w->batch_n++;
}

/* commands.c: the command side of runtime `rt`, with the options that are
 * its own. On failure nothing is left. */
cqrs_code_t cqrs__commands_new(cqrs__runtime_t *rt, const cqrs_dispatcher_options_t *opts, cqrs__commands_t **out,
                               cqrs_error_t *err);
/* Attaches it to the loop: the last step of making a dispatcher (before
 * it, a failure is undone by cqrs__runtime_abandon; after, by closing). */
cqrs_code_t cqrs__commands_attach(cqrs__commands_t *c, cqrs_error_t *err);
/* A member's, attached (on a failure its component may be added: abandon
 * the runtime): it runs what the home admitted (handlers and middleware are
 * the home's); its loop runs until the home stops it. */
cqrs_code_t cqrs__commands_new_member(cqrs__runtime_t *rt, const cqrs__commands_t *home, unsigned index,
                                      size_t cache_size, void (*drain_fn)(cqrs__commands_t *, request_t *),
                                      cqrs__commands_t **out, cqrs_error_t *err);

/* request.c */
/* Middleware and the handler's look-up: true when `r` is to run; false
 * when it was finished (refused) or routed to another loop. */
bool cqrs__request_admit(cqrs__commands_t *c, request_t *r);
/* Runs `r` here: inline, or on the pool when the store or handler blocks. */
void cqrs__request_run_here(cqrs__commands_t *c, request_t *r);
/* Publishes what `r` committed, completes it, keeps or frees it. */
void cqrs__request_finish(request_t *r);

/* calls.c: a call to start (true: started, or finished refused: nothing
 * more to do with it now); what the inbox brought back. */
enum { CALL_NONE, CALL_OUT, CALL_BACK };
bool cqrs__call_start(cqrs__commands_t *c, request_t *r);
void cqrs__calls_drain(cqrs__commands_t *c, request_t *back);

/* batch.c: a request of a batch handler (callers test the flag first: the
 * lone path pays no call) naming its aggregate is queued
 * for a batch of that aggregate on `c`, its runner (true: taken); the
 * batches queued start at the end of the drain (cqrs__batch_flush): inline,
 * one after the other until nothing is queued, or one per aggregate at a
 * time on the pool when the store or the handler blocks. */
bool cqrs__batch_take(cqrs__commands_t *c, request_t *r);
void cqrs__batch_flush(cqrs__commands_t *c);
/* The dispatcher frees: what is left (nothing is queued by then). */
void cqrs__batch_free_all(cqrs__commands_t *c);

/* context.c */
#define CTX_MAX_AGGREGATES 8

struct cqrs_context {
  cqrs__commands_t *c;
  const cqrs_command_t *cmd;
  bool on_loop; /* never wait for a lock on the loop thread */
  bool limited; /* a load was refused: the command had CTX_MAX_AGGREGATES */
  cqrs_aggregate_t *aggs[CTX_MAX_AGGREGATES];
  size_t naggs;
  unsigned held[CTX_MAX_AGGREGATES];
  size_t nheld;
  bson_t *value;
  char forget[CQRS_ID_MAX]; /* cqrs_context_forget's subject, forgotten at the commit; "": none */
};

/* Runs the handler and commits, again after a conflict; then the command's
 * interceptor, if it has one. Any thread. */
void cqrs__request_execute(request_t *r, bool on_loop);
/* The parts of it a batch runs. A context to run handlers of `c` in (its
 * arrays read only up to their counts: not zeroed). */
static inline void cqrs__context_init(cqrs_context_t *ctx, cqrs__commands_t *c, bool on_loop) {
  ctx->c = c;
  ctx->cmd = NULL;
  ctx->on_loop = on_loop;
  ctx->limited = false;
  ctx->naggs = ctx->nheld = 0;
  ctx->value = NULL;
  ctx->forget[0] = '\0';
}
/* Runs `r`'s handler once in `ctx`. */
cqrs_code_t cqrs__context_run(cqrs_context_t *ctx, request_t *r);
/* What cqrs__request_execute does once the handler ran in `ctx` and came
 * to `rc`: the commit, the conflicts run again, the conclusion; resets
 * `ctx`. */
void cqrs__context_finish(cqrs_context_t *ctx, request_t *r, cqrs_code_t rc);
/* Concludes a decision `rc` whose commit, if any, is known: the error's
 * text when the handler gave none, a natural id's duplicate for a
 * rejection, the command's interceptor. Returns the final code. */
cqrs_code_t cqrs__request_conclude(request_t *r, cqrs_code_t rc);
/* Lets go of every aggregate but `keep` (and of their locks). */
void cqrs__context_keep_only(cqrs_context_t *ctx, const cqrs_aggregate_t *keep);
/* Lets go of everything (the value too). */
void cqrs__context_reset(cqrs_context_t *ctx);
/* The cache the context keeps aggregate `id` in (NULL: none). */
cqrs__cache_t *cqrs__context_cache(const cqrs_context_t *ctx, const char *id);

/* owner.c */
unsigned cqrs__owner_of(const cqrs__commands_t *c, const char *id);
/* The cache a handler on `c` keeps `id`'s state in (NULL: none). */
cqrs__cache_t *cqrs__owner_cache(const cqrs__commands_t *c, bool on_loop, const char *id);
/* A commit of an aggregate another loop owns: the owner's cached state
 * advances at once. */
void cqrs__owner_advance(const cqrs__commands_t *c, cqrs_aggregate_t *agg);
/* Home: before the caller hears of `r`'s commit, no member keeps a state
 * older than it. */
void cqrs__owner_seen_commit(const cqrs__commands_t *c, const request_t *r);
/* Home: a commit the feed read drops older states of its aggregate from the
 * home's cache and its owner's (the runtime's seen port). */
void cqrs__owner_seen(void *self, const cqrs_event_t *e);

/* loops.c: starts nloops - 1 members (a component of `rt` that stops them
 * when the dispatcher closes) and sets the hooks above. */
cqrs_code_t cqrs__loops_start(cqrs__runtime_t *rt, cqrs__commands_t *c, const cqrs_dispatcher_options_t *opts,
                              cqrs_error_t *err);

#endif
