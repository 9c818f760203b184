/* The command side of a dispatcher: one component of its runtime. Commands
 * come in from any thread (an inbox under the runtime's lock) or from the
 * loop thread (a local list), are admitted (middleware, the handler's look-
 * up, routing to the loop that owns their aggregate), run (on the loop, or
 * on the pool when the store or the handler blocks), committed, published
 * through the runtime's publish port and completed on the loop thread.
 *
 *   commands.c  the component: handlers, send, the inbox, the drain
 *   request.c   one request: admission, running, completion
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
  size_t nfree;
  _Atomic size_t pending;       /* commands sent from other threads, not completed */
  _Atomic size_t pending_local; /* from the loop thread: only it writes, no locked add */

  /* Several loops (loops.c, "Several loops" in docs/architecture.md). The
   * home (the dispatcher the application made) owns nloops - 1 members,
   * each a runtime with a command side of its own on a loop and thread of
   * its own; it hands a command to the member owning its aggregate and
   * finishes it when it comes back. */
  unsigned nloops, index;      /* index: 0 on the home */
  unsigned home_share;         /* of 1024 hashes, those the home owns */
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

/* context.c: runs the handler and commits, again after a conflict; then
 * the command's interceptor, if it has one. Any thread. */
void cqrs__request_execute(request_t *r, bool on_loop);

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
