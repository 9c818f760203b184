/* The process-manager step protocol (the contract framework/src/process/
 * implements), on one transfer: the instance's own stream, the subscriber's
 * checkpoint, the step commands it sends and their outcomes (accepted,
 * rejected, transient error), crashes at any point between two store
 * operations, and events and commands from outside. See docs/models.md for
 * what this covers and leaves out, the bounds, and how to read a
 * counterexample. When framework/src/process/ changes the protocol, change this file in
 * the same commit.
 *
 * One OS process runs the dispatcher, the subscriber feeding the process
 * manager, and the process runtime. The node below interleaves all of them
 * as one loop: each alternative is one step of one of them, with at most one
 * store operation, so a crash (also an alternative) falls between any two.
 *
 * Configuration (spin -D...):
 *   MAXCRASH   crashes of the process (default 3)
 *   MAXERR     transient errors of step commands (store unavailable,
 *              closing): not outcomes, the step is re-sent (default 2)
 *   NODES      OS processes running the process manager at once (default 1;
 *              2 breaks the contract as it stands: see docs/models.md)
 *   REJECTION_RECORDED  on unless BUG_REJECTION_UNRECORDED: a step's
 *              refusal is recorded under its command id, and a later send of
 *              that id is answered with it (cqrs__step_settle in
 *              framework/src/process/steps.c, the step command's interceptor,
 *              called by cqrs__request_execute in command/context.c); with
 *              it, NODES=2 passes
 *   CHECKS     which properties to check, a sum of the P_ bits (default all)
 *   WITNESS    one of the W_ conditions below: the run must then fail,
 *              showing that the case is reached (the model is not vacuous)
 * Deliberately broken variants, each of which must fail (scripts/models.sh):
 *   BUG_RESEND_REJECTED     re-send every step without an *accepted*
 *                           outcome (the replay bug: a refused debit leaves
 *                           no trace of its id and is run again)
 *   BUG_ROUTE_BY_PAYLOAD    route account.withdrawn naming the transfer in
 *                           its payload to the instance, as the debit's
 *                           acceptance
 *   BUG_SEND_BEFORE_COMMIT  send the step decided before the commit that
 *                           records the decision
 *   BUG_FRESH_STEP_ID       a new command id for each send of a step
 *   BUG_RESERVED_OPEN       the dispatcher lets an outside command use a
 *                           step's reserved command id
 *   BUG_CHECKPOINT_PAST_OPEN the checkpoint passes the start event of an
 *                           instance still open
 *   BUG_FORGET_DUPLICATE    an input found recorded already (a duplicate)
 *                           makes the runtime forget the instance, as
 *                           process.c did before it kept the instance and
 *                           held the checkpoint for it (held_at)
 *   BUG_NO_HOLD             the same input keeps the instance and reloads
 *                           it, but does not hold the checkpoint for it
 */

#ifndef MAXCRASH
#define MAXCRASH 3
#endif
#ifndef MAXERR
#define MAXERR 2
#endif
#ifndef BUG_REJECTION_UNRECORDED
#define REJECTION_RECORDED /* as the code does: see cqrs__step_settle */
#endif
#ifndef NODES
#define NODES 1  /* OS processes running the process manager (at most 2) */
#endif

#define P_AT_MOST_ONCE 1        /* each step's command takes effect at most once */
#define P_REJECTED_NOT_RESENT 2 /* a step whose rejection is recorded is never sent again */
#define P_RECORD_AGREES 4       /* the recorded outcome matches the aggregates */
#define P_MONEY 8               /* money conserved */
#define P_SENT_AFTER_COMMIT 16  /* a step is executed only once its decision is committed */
#define P_PROGRESS 32           /* the instance ends (ltl, a separate run) */
#ifndef CHECKS
#define CHECKS 31
#endif

/* The transfer's steps (their command ids: derived from (process,
 * instance, step), under the reserved prefix). */
#define DEBIT 0     /* account.withdraw from the source */
#define CREDIT 1    /* account.deposit to the target */
#define COMPLETE 2  /* transfer.complete: records transfer.completed on T */
#define FAIL 3      /* transfer.fail: records transfer.failed */
#define REFUND 4    /* account.refund to the source (reaches closed accounts) */
#define REFUNDED 5  /* transfer.refund: records transfer.refunded */
#define NSTEP 6
#define START 6     /* the input transfer.requested (inputs 0..5: a step's outcome) */
#define NONE 255

/* Outcomes, as recorded in the stream and as the dispatcher reports them. */
#define O_NONE 0
#define O_ACC 1      /* accepted (or a duplicate of a committed id) */
#define O_REJ 2      /* rejected with a reason, or failed: nothing committed */

/* A send of a step, in the running process (lost in a crash). */
#define F_IDLE 0
#define F_QUEUED 1     /* handed to the dispatcher */
#define F_ACC 2        /* completion back: accepted */
#define F_REJ 3        /* completion back: rejected */
#define F_TRANSIENT 4  /* completion back: store unavailable / closing */
#define F_HANDLING 5   /* its outcome is the input being handled */

/* ---- the store (survives crashes) ---- */
/* The instance's stream "process:transfer"/T: one commit per input handled,
 * its command id derived from (process, T, input), so an input commits at
 * most once. A commit records the input and its outcome, the steps decided
 * and (derived here) the state and 'ended'. */
bool started;          /* input START recorded */
byte outcome[NSTEP];   /* input "outcome of step s" recorded, and which */
bool decided[NSTEP];
#define ENDED (outcome[COMPLETE] == O_ACC || outcome[FAIL] == O_ACC || outcome[REFUNDED] == O_ACC)
bool step_committed[NSTEP]; /* the command-id index: step s's command committed */
#ifdef REJECTION_RECORDED
bool step_rejected[NSTEP];  /* REJECTION_RECORDED: step s's command was rejected */
#endif
/* The aggregates: the effects of the step commands, and of outside commands. */
byte debits, credits, refunds;           /* on the two accounts */
byte t_completed, t_failed, t_refunded;  /* events on the transfer T */
byte withdrawn_by_hand, taken_from_target;
/* The event feed: 1 = transfer.requested on T (already committed when the
 * run starts); 2 = account.withdrawn on the source account, sent by hand,
 * its payload naming T (once an outsider sends it). */
byte feed_len = 1;
byte checkpoint;       /* the subscriber's saved position */

/* ---- a running OS process (lost in a crash) ---- */
typedef node_t {
  bool known;          /* an input was routed to T in this life */
  bool loaded;         /* T's stream read */
  byte sub_pos;        /* the subscriber's position: events handled */
  byte cur;            /* the input being handled, or NONE */
  byte cur_value;      /* its outcome (for a step's outcome) */
  bool cur_from_feed;  /* it came from the feed (the subscriber waits on it) */
  byte flight[NSTEP];  /* F_ */
  bool cur_sent;       /* BUG_SEND_BEFORE_COMMIT: the decision went out already */
  bool open_here       /* the runtime holds the checkpoint for T (process/open.c: started,
                          or held_at): the stream's state at this node's last commit
                          of an input of T; a crash resets it */
}
node_t nd[NODES];
/* In node(me), the names below are that process's own. */
#define known nd[me].known
#define loaded nd[me].loaded
#define sub_pos nd[me].sub_pos
#define cur nd[me].cur
#define cur_value nd[me].cur_value
#define cur_from_feed nd[me].cur_from_feed
#define flight nd[me].flight
#define cur_sent nd[me].cur_sent
#define open_here nd[me].open_here

/* ---- bounds ---- */
byte crashes, errors;
bool outsider_withdrew, outsider_tried_reserved;

/* ---- properties ---- */
bool at_most_once = true, rejected_not_resent = true, record_agrees = true;
bool money_conserved = true, sent_after_commit = true;

#define HELD (debits - credits - refunds) /* what the transfer holds */

/* "Some step s has P(s)", as a guard (a search inside an atomic that then
 * blocked would not be atomic). */
#define ANY(P) (P(0) || P(1) || P(2) || P(3) || P(4) || P(5))
#define BACK(s) (flight[s] == F_ACC || flight[s] == F_REJ)
#define QUEUED(s) (flight[s] == F_QUEUED)
#ifdef BUG_RESEND_REJECTED
#define SENDABLE(s) (decided[s] && outcome[s] != O_ACC && (flight[s] == F_IDLE || flight[s] == F_TRANSIENT))
#else
#define SENDABLE(s) (decided[s] && outcome[s] == O_NONE && (flight[s] == F_IDLE || flight[s] == F_TRANSIENT))
#endif
#define AGREES \
  ((outcome[COMPLETE] != O_ACC || (debits == 1 && credits == 1 && refunds == 0 && \
                                   t_completed == 1 && t_failed == 0 && t_refunded == 0)) && \
   (outcome[REFUNDED] != O_ACC || (debits == 1 && refunds == 1 && credits == 0 && \
                                   t_refunded == 1 && t_failed == 0 && t_completed == 0)) && \
   (outcome[FAIL] != O_ACC || (debits == 0 && credits == 0 && refunds == 0 && \
                               t_failed == 1 && t_completed == 0 && t_refunded == 0)))

#if CHECKS & P_AT_MOST_ONCE
active proctype monitor_at_most_once() {
end: atomic {
    !(debits <= 1 && credits <= 1 && refunds <= 1 && t_completed <= 1 && t_failed <= 1 && t_refunded <= 1) ->
    at_most_once = false; assert(at_most_once)
  }
}
#endif
#if CHECKS & P_RECORD_AGREES
/* Checked whenever the instance has ended, including after it ended. */
active proctype monitor_record_agrees() {
end: atomic { ENDED && !(AGREES) -> record_agrees = false; assert(record_agrees) }
}
#endif
#if CHECKS & P_MONEY
/* Source + target + held by the transfer + withdrawn by hand is constant:
 * the transfer holds 0 or the amount, and nothing once it has ended. */
active proctype monitor_money() {
end: atomic {
    HELD < 0 || HELD > 1 || (ENDED && HELD != 0) ->
    money_conserved = false; assert(money_conserved)
  }
}
#endif

#ifdef WITNESS
#define W_COMPLETED (outcome[COMPLETE] == O_ACC)
#define W_REFUNDED (outcome[REFUNDED] == O_ACC)
#define W_FAILED (outcome[FAIL] == O_ACC)
#define W_DUPLICATE_STEP w_duplicate_step /* a re-sent step answered as a duplicate */
#define W_ENDS_AFTER_CRASHES (ENDED && crashes == MAXCRASH)
bool w_duplicate_step, witness_not_reached = true;
#define MARK(x) x = true
active proctype witness() {
end: atomic { WITNESS -> witness_not_reached = false; assert(witness_not_reached) }
}
#endif

#ifndef WITNESS
#define MARK(x) skip
#endif

/* The decision of the transfer process for an input (its handlers,
 * domain/billing/src/process.c: on_requested, on_transfer_step). */
inline decide(input, value, next) {
  if
  :: input == START -> next = DEBIT
  :: input == DEBIT && value == O_ACC -> next = CREDIT
  :: input == DEBIT && value == O_REJ -> next = FAIL
  :: input == CREDIT && value == O_ACC -> next = COMPLETE
  :: input == CREDIT && value == O_REJ -> next = REFUND
  :: input == REFUND -> next = REFUNDED
  :: else -> next = NONE  /* complete, fail, refunded accepted: ended */
  fi
}

/* The commit of an input: one atomic, idempotent append to T's stream. */
inline commit(input, value, next) {
  if
  :: input == START && !started -> started = true; decided[next] = true
  :: input != START && outcome[input] == O_NONE ->
     outcome[input] = value;
     if :: next != NONE -> decided[next] = true :: else fi
  :: else  /* already recorded: the store answers 'duplicate', nothing appended */
  fi
}

/* A step command taking effect: its events committed under its command id. */
inline take_effect(s) {
  if
  :: s == DEBIT -> debits++
  :: s == CREDIT -> credits++
  :: s == COMPLETE -> t_completed++
  :: s == FAIL -> t_failed++
  :: s == REFUND -> refunds++
  :: s == REFUNDED -> t_refunded++
  fi;
  step_committed[s] = true
}

/* The runtime's view after the commit of an input (process/runtime.c:
 * on_input_done): the instance stays open here until its stream says it
 * ended, a duplicate included (kept, reloaded, the checkpoint held). */
#ifdef BUG_FORGET_DUPLICATE
inline AFTER_COMMIT(dup) {
  if
  :: dup -> known = false; loaded = false; open_here = false;  /* BROKEN: forgotten */
     printf("node %d: runtime: the start input is a duplicate: T forgotten (BROKEN)\n", me)
  :: else -> open_here = started && !ENDED
  fi;
  dup = false
}
#elif defined(BUG_NO_HOLD)
inline AFTER_COMMIT(dup) {
  if
  :: dup -> open_here = false;  /* BROKEN: kept and reloaded, but the checkpoint not held */
     printf("node %d: runtime: the start input is a duplicate: T kept, checkpoint not held (BROKEN)\n", me)
  :: else -> open_here = started && !ENDED
  fi;
  dup = false
}
#else
inline AFTER_COMMIT(dup) { open_here = started && !ENDED; dup = false }
#endif

proctype node(byte me) {
  byte s, next;
  bool dup;
  cur = NONE;
end:
  do
  /* -- subscriber: the next event of the feed, routed by the event's own
   *    aggregate (transfer.requested on T -> instance T). process/runtime.c: on_event */
  :: atomic {
       cur == NONE && sub_pos < feed_len ->
       if
       :: sub_pos == 0 -> cur = START; cur_from_feed = true; known = true;
          printf("node %d: subscriber: transfer.requested on T, routed to instance T\n", me)
       :: sub_pos == 1 ->
#ifdef BUG_ROUTE_BY_PAYLOAD
          /* BROKEN: routed by the payload's transfer id, as the debit's acceptance */
          cur = DEBIT; cur_value = O_ACC; cur_from_feed = true; known = true;
          printf("node %d: subscriber: account.withdrawn naming T routed to T (BROKEN)\n", me)
#else
          sub_pos++  /* account.withdrawn on an account: not this process's event */
#endif
       fi
     }
  /* -- subscriber: save the checkpoint; never past the start of an
   *    instance this runtime holds open (what it knows, not the stream).
   *    process/runtime.c: checkpoint_at; bus.c saves it */
  :: atomic {
#ifdef BUG_CHECKPOINT_PAST_OPEN
       checkpoint < sub_pos -> checkpoint = sub_pos
#else
       checkpoint < sub_pos && !open_here -> checkpoint = sub_pos
#endif
       ; printf("node %d: subscriber: checkpoint saved at %d\n", me, checkpoint)
     }
  /* -- runtime: load the instance from its stream (the first input routed
   *    to it). process/runtime.c: handle_input -> cqrs_context_load; after a
   *    restart, the duplicate start input, then resume */
  :: atomic { known && !loaded -> loaded = true; printf("node %d: runtime: loads T from its stream\n", me) }
  /* -- runtime: a step's completion becomes the input. process/runtime.c: on_step_done */
  :: atomic {
       cur == NONE && loaded && ANY(BACK) ->
       s = 0;
       do :: !BACK(s) -> s++ :: else -> break od;
       cur = s; cur_value = (flight[s] == F_ACC -> O_ACC : O_REJ); cur_from_feed = false;
       flight[s] = F_HANDLING;
       printf("node %d: runtime: step %d completed: %d (1 accepted, 2 rejected)\n", me, s, cur_value); s = 0
     }
  /* -- runtime: handle the input: decide, and commit (one store operation).
   *    process/: handle_input -> decide -> record, committed by the
   *    dispatcher under the input's derived id; then on_input_done */
  :: atomic {
       cur != NONE && loaded ->
       decide(cur, cur_value, next);
#ifdef BUG_SEND_BEFORE_COMMIT
       if
       :: !cur_sent && next != NONE && flight[next] == F_IDLE && !decided[next] &&
          (cur == START -> !started : outcome[cur] == O_NONE) ->
          /* BROKEN: the step goes out before its decision is committed */
          flight[next] = F_QUEUED; cur_sent = true;
          printf("node %d: runtime: sends step %d before committing input %d (BROKEN)\n", me, next, cur); next = 0
       :: else ->
          printf("node %d: runtime: commits input %d (6 start, else a step's outcome %d), deciding step %d (255 none)\n", me, cur, cur_value, next);
          dup = cur == START && started;
          commit(cur, cur_value, next);
          AFTER_COMMIT(dup);
          cur_sent = false;
          if :: cur != START -> flight[cur] = F_IDLE :: else fi;
          if :: cur_from_feed -> sub_pos++ :: else fi;
          cur = NONE; cur_value = 0; cur_from_feed = false; next = 0
       fi
#else
       printf("node %d: runtime: commits input %d (6 start, else a step's outcome %d), deciding step %d (255 none)\n", me, cur, cur_value, next);
       dup = cur == START && started;
       commit(cur, cur_value, next);
       AFTER_COMMIT(dup);
       if :: cur != START -> flight[cur] = F_IDLE :: else fi;
       if :: cur_from_feed -> sub_pos++ :: else fi;
       cur = NONE; cur_value = 0; cur_from_feed = false; next = 0
#endif
     }
  /* -- runtime: send each step decided and without a recorded outcome (the
   *    new decision, a re-send after a transient error, a re-send after a
   *    restart), at most one send of a step at a time.
   *    process/runtime.c: send_steps -> send_step (step_id), open_step_t.inflight */
  :: atomic {
       loaded && ANY(SENDABLE) ->
       s = 0;
       do :: !SENDABLE(s) -> s++ :: else -> break od;
       rejected_not_resent = outcome[s] != O_REJ;
#if CHECKS & P_REJECTED_NOT_RESENT
       assert(rejected_not_resent);
#endif
       flight[s] = F_QUEUED;
       printf("node %d: runtime: sends step %d\n", me, s); s = 0
     }
  /* -- dispatcher: execute a queued step command (one store operation).
   *    dispatcher.c: the command path; the store's unique command id */
  :: atomic {
       ANY(QUEUED) ->
       s = 0;
       do :: !QUEUED(s) -> s++ :: else -> break od;
       sent_after_commit = decided[s];
#if CHECKS & P_SENT_AFTER_COMMIT
       assert(sent_after_commit);
#endif
       if
#ifndef BUG_FRESH_STEP_ID
       :: step_committed[s] -> flight[s] = F_ACC; MARK(w_duplicate_step)  /* a duplicate id: no-op, reported accepted */
#ifdef REJECTION_RECORDED
       :: step_rejected[s] -> flight[s] = F_REJ  /* the recorded rejection, again */
       :: !step_committed[s] && !step_rejected[s] ->
#else
       :: !step_committed[s] ->
#endif
#else
       :: true ->  /* BROKEN: a new id at each send, so never a duplicate */
#endif
          if
          :: take_effect(s); flight[s] = F_ACC
          :: (s == DEBIT || s == CREDIT) -> flight[s] = F_REJ  /* balance moved, account closed */
#ifdef REJECTION_RECORDED
             ; step_rejected[s] = true
#endif
          :: errors < MAXERR -> errors++; flight[s] = F_TRANSIENT
          fi
       fi;
       printf("node %d: dispatcher: step %d: %d (2 accepted, 3 rejected, 4 transient error)\n", me, s, flight[s]);
       s = 0
     }
  /* -- outside: an account.withdraw sent by hand, its payload naming T */
  :: atomic {
       !outsider_withdrew -> outsider_withdrew = true; withdrawn_by_hand++; feed_len = 2;
       printf("outside: account.withdraw by hand, naming T\n")
     }
  /* -- outside: a command using the debit step's id (derivable), withdrawing
   *    from the target: the dispatcher refuses the reserved prefix
   *    (dispatcher.c, CQRS__RESERVED_ID_PREFIX). */
  :: atomic {
       !outsider_tried_reserved -> outsider_tried_reserved = true;
       printf("outside: a command with the debit step's id\n");
#ifdef BUG_RESERVED_OPEN
       if :: !step_committed[DEBIT] -> step_committed[DEBIT] = true; taken_from_target++ :: else fi
#else
       skip
#endif
     }
  /* -- a crash: everything in memory is gone, the store stays; the process
   *    restarts, its subscriber from the checkpoint. */
  :: atomic {
       crashes < MAXCRASH -> crashes++; printf("node %d: crash; restart\n", me);
       known = false; loaded = false; open_here = false; sub_pos = checkpoint;
       cur = NONE; cur_value = 0; cur_from_feed = false;
       cur_sent = false;
       s = 0;
       do :: s < NSTEP -> flight[s] = F_IDLE; s++ :: else -> break od;
       s = 0
     }
  od
}

init {
  atomic {
    run node(0);
#if NODES > 1
    run node(1)
#endif
  }
}

/* Progress: with crashes and transient errors bounded, every run ends with
 * the instance ended (a run that stops stutters at its last state). */
ltl progress { <> (outcome[COMPLETE] == O_ACC || outcome[FAIL] == O_ACC || outcome[REFUNDED] == O_ACC) }
