/* The MongoDB store's append path, as infra/mongo/src/mongo_store.c has it
 * on main (one document per commit, keyed by a gap-free commit number, no
 * transaction): writers in one or two OS processes queue their commits in
 * their process; whoever finds nobody writing sends the queue as one
 * ordered insertMany of consecutive commit numbers and positions (group
 * commit); the primary key turns a racer away; processes crash at any step
 * and their clients send the commands again; a catch-up reader follows the
 * store by commit number. See docs/models.md for what this covers, what it
 * leaves out, the bounds and how to read a counterexample. This model must
 * follow the code: when the append path changes, change this file in the
 * same commit.
 *
 * Configuration (spin -D...):
 *   MAXCRASH   OS-process crashes, at any step (default 1)
 *   MAXRESEND  commands re-sent by their client after an answer (default 0)
 *   CRASH_PROCESS  only this OS process (0 or 1) crashes (default: either)
 *   NOTE_EARLY the head note raised before the insert (below)
 *   WITNESS    one of the W_ conditions below: the run must then fail,
 *              showing that the case is reached (the model is not vacuous)
 *   CHECKS     which properties to check, a sum of the P_ bits below
 *              (default all; scripts/models.sh checks each broken variant
 *              against the one property it must break)
 * Deliberately broken variants, each of which must fail (scripts/models.sh):
 *   BUG_HEAD_PLUS_2     claim head + 2 (number and position)
 *   BUG_BLIND_NEXT      after a racer took the number, claim the next number
 *                       and position without finding the head (a commit
 *                       spans several positions, the position index holds
 *                       only its first)
 *   BUG_UNORDERED       the group sent unordered (ordered: false): the
 *                       second commit may land before the first, and after
 *                       the first was refused: the 'predecessor visible'
 *                       rule skipped
 *   BUG_NOTE_LEADS      NOTE_EARLY and BUG_NOTE_UNPROBED together:
 *     NOTE_EARLY        the head note raised to the claimed number before
 *                       the insert, so it may lead (not a bug alone: the
 *                       probe of the noted commit saves it,
 *                       docs/models.md)
 *     BUG_NOTE_UNPROBED a restarted process trusts the note without
 *                       probing the commit it names
 *   BUG_FAIL_ALL        a refused member's outcome (duplicate, conflict) is
 *                       reported to every member of its group
 *   BUG_SWAP_OUTCOMES   the two members of a group get each other's outcome
 *   BUG_NO_CMD_INDEX    no unique index on commandId
 *   BUG_DUP_IS_SUCCESS  a refusal with the claimed number free is answered
 *                       "duplicate" without looking the command id up
 *   BUG_NO_VERSION_INDEX no unique index on the stream's version (the
 *                       code's streamVersion: stream and version in one key)
 */

#ifndef MAXCRASH
#define MAXCRASH 1
#endif
#ifdef BUG_NOTE_LEADS
#define NOTE_EARLY
#define BUG_NOTE_UNPROBED
#endif
#ifndef MAXRESEND
#define MAXRESEND 0
#endif

/* The properties (each its own assertion, named as below in pan's output). */
#define P_POSITIONS_UNIQUE 1    /* no position is held by two commits */
#define P_POSITIONS_GAP_FREE 2  /* visible commit numbers 1..k, positions 1..head, always */
#define P_READER_NEVER_SKIPS 4  /* the reader reads next what follows what it read */
#define P_READER_READ_ALL 8     /* at the end the reader has read every commit once */
#define P_NO_COMMIT_LOST 16     /* an append answered ok or duplicate is in the store */
#define P_COMMAND_IDS_UNIQUE 32 /* a repeated command id appends nothing */
#define P_VERSIONS 64           /* each stream's versions are 1..v, each once */
#define P_OUTCOMES 128          /* each answer is right for its own commit */
#ifndef CHECKS
#define CHECKS 255
#endif

/* Witnesses: cases the search must reach (scripts/models.sh checks it does). */
#ifdef WITNESS
bool w_duplicate, w_conflict, w_reclaim, w_crash_after_insert, w_group, w_group_split, w_note;
bool witness_not_reached = true;
#define MARK(x) x = true
#define W_DUPLICATE w_duplicate                   /* an append answered 'duplicate' */
#define W_CONFLICT w_conflict                     /* an append answered 'conflict' */
#define W_RECLAIM w_reclaim                       /* a racer took the claimed number */
#define W_CRASH_AFTER_INSERT w_crash_after_insert /* a crash between insert and answer */
#define W_GROUP w_group                           /* two commits in one insertMany, both in */
#define W_GROUP_SPLIT w_group_split               /* a group of two: one in, one refused and answered alone */
#define W_NOTE w_note                             /* a restarted process found the head from the note */
active proctype witness() {
end: atomic { WITNESS -> witness_not_reached = false; assert(witness_not_reached) }
}
#else
#define MARK(x) skip
#endif

#define NW 3       /* writers (threads calling cqrs_store_append) */
#define NPROC 2    /* OS processes, each with its own cqrs_mongo_t */
#define NSTREAM 2
#define MAXSEQ 7   /* commit numbers 1..MAXSEQ; a claim past it gives up (CLAIM_ATTEMPTS) */
#define NONE 255

/* Who writes what. Writers 0 and 1 share OS process 0 (its group queue and
 * caches: their commits may go as one group); writer 2 is alone in process
 * 1. Writer 0's commit holds two events (positions p, p+1: the position
 * index holds only p) on stream 0; writers 1 and 2 race on stream 1
 * (optimistic concurrency) from two processes. Each writer's command has
 * its own id (w). */
#define PROC(w) (w == 2 -> 1 : 0)
#define STREAM(w) (w == 0 -> 0 : 1)
#define COUNT(w) (w == 0 -> 2 : 1)

#ifdef BUG_HEAD_PLUS_2
#define STEP 2
#else
#define STEP 1
#endif

/* Results of an append (cqrs_code_t / cqrs_append_result_t.duplicate). */
#define R_NONE 0
#define R_OK 1
#define R_DUP 2
#define R_CONFLICT 3
#define R_ERROR 4

/* ---- the collection: one document per commit, _id = its number ---- */
byte dcmd[MAXSEQ + 2] = NONE; /* commandId (unique index); NONE: no such _id */
byte dpos[MAXSEQ + 2];        /* position (unique index) */
byte dlast[MAXSEQ + 2];       /* lastPosition */
byte dstream[MAXSEQ + 2];     /* aggregateType/aggregateId */
byte dver[MAXSEQ + 2];        /* version of the first event: with the stream, streamVersion (unique index) */
byte dlastver[MAXSEQ + 2];    /* lastVersion */
/* <events>_head: {_id: "head", seq} raised with $max (head_note_write);
 * note_last only for BUG_NOTE_UNPROBED, which trusts the note unprobed. */
byte note_seq, note_last;

/* ---- per OS process (struct cqrs_mongo in mongo-private.h) ---- */
byte hseq[NPROC], hlast[NPROC]; /* head_seq, head_last: the newest commit seen (hint_get / hint_seen) */
byte q0[NPROC] = NONE, q1[NPROC] = NONE; /* group_head..group_tail: the queue (2 writers a process at most) */
bool writing[NPROC];            /* group_writing */
byte epoch[NPROC];              /* bumped by a crash: the process restarts */
byte crashes, resends, done;

/* ---- per writer: its pending_t ---- */
byte rexp[NW];  /* req->expected_version */
byte res[NW];   /* p->rc / res->duplicate, set by whoever writes the group */
bool fin[NW];   /* p->done, set under group_lock */

/* ---- ghosts: what the properties look at (derived from the documents) ---- */
int pmask;                 /* bit p set: position p is held by a visible commit */
int smask;                 /* bit k set: commit number k is visible */
byte nseq;                 /* the highest commit number visible */
byte ncommit[NW];          /* visible commits of each command id */
int vmask[NSTREAM];        /* bit v set: version v of the stream is visible */
bool positions_unique = true, positions_gap_free = true;
bool stream_versions_ok = true; /* unique and gap-free */
bool command_ids_unique = true, outcomes_right = true;
bool no_commit_lost = true, reader_never_skips = true, reader_read_all = true;
byte dlv[MAXSEQ + 2];      /* how many times the reader delivered each commit */

/* A monitor waits until its property is false, then fails: the property
 * is checked in every reachable state. */
#if CHECKS & P_POSITIONS_UNIQUE
active proctype monitor_positions_unique() {
end: atomic { !positions_unique -> assert(positions_unique) }
}
#endif
#if CHECKS & P_POSITIONS_GAP_FREE
active proctype monitor_positions_gap_free() {
end: atomic { !positions_gap_free -> assert(positions_gap_free) }
}
#endif
#if CHECKS & P_VERSIONS
active proctype monitor_versions() {
end: atomic { !stream_versions_ok -> assert(stream_versions_ok) }
}
#endif
#if CHECKS & P_COMMAND_IDS_UNIQUE
active proctype monitor_command_ids() {
end: atomic { !command_ids_unique -> assert(command_ids_unique) }
}
#endif

/* The store's reads, each one atomic query (callers wrap them in d_step). */

/* command_exists: a commit with command id x. */
inline command_exists(x, found) {
  found = false; k = 1;
  do
  :: k <= MAXSEQ -> found = found || dcmd[k] == x; k++
  :: else -> break
  od;
  k = 0
}

/* version_taken(coll, req, v) ({streamVersion}: a commit begins at v) when
 * `first`, else version_reached ({..., lastVersion}: one ends at v), on
 * stream st. */
inline version_exists(st, first, v, found) {
  found = false; k = 1;
  do
  :: k <= MAXSEQ -> found = found || (dcmd[k] != NONE && dstream[k] == st && (first -> dver[k] : dlastver[k]) == v); k++
  :: else -> break
  od;
  k = 0
}

/* hint_seen: the head is at least commit sq. */
inline hint_seen(pp, sq, l) {
  if :: sq > hseq[pp] -> hseq[pp] = sq; hlast[pp] = l :: else fi
}

/* find_head: from the hint (hint_get), or in a process that knows none from
 * the note (head_note_read) once probe_commit has found the commit it
 * names, probe forward while the next number is there. The code gallops
 * (n+1, n+2, n+4...) and halves the gap: while the visible numbers are a
 * prefix 1..k, it returns a k that the store held at some instant while
 * it ran, which is what this one atomic step returns (with a gap, which
 * only a broken variant makes, the code may jump it; this stops at it). */
inline find_head(hs, hl) {
  hs = hseq[p]; hl = hlast[p];
  if
  :: hs == 0 && note_seq > 0 ->
#ifdef BUG_NOTE_UNPROBED
     hs = note_seq; hl = note_last; MARK(w_note)  /* BROKEN: trusted, not probed */
#else
     if :: dcmd[note_seq] != NONE -> hs = note_seq; hl = dlast[hs]; MARK(w_note) :: else fi
#endif
  :: else
  fi;
  do
  :: hs < MAXSEQ && dcmd[hs + 1] != NONE -> hs++; hl = dlast[hs]
  :: else -> break
  od;
  if :: hs > 0 -> hint_seen(p, hs, hl) :: else fi
}

/* One document of the insert, as the server applies it: atomic; refused
 * (duplicate key, the index not named) when any unique index collides. */
inline insert_doc(x, sq, ps, ok) {
  ok = dcmd[sq] == NONE; k = 1;  /* the primary key: the commit number */
  do
  :: k <= MAXSEQ ->
     if
     :: dcmd[k] != NONE && (dpos[k] == ps
#ifndef BUG_NO_CMD_INDEX
        || dcmd[k] == x
#endif
#ifndef BUG_NO_VERSION_INDEX
        || (dstream[k] == STREAM(x) && dver[k] == rexp[x] + 1)
#endif
        ) -> ok = false
     :: else
     fi;
     k++
  :: else -> break
  od;
  k = 0;
  if
  :: ok ->
     dcmd[sq] = x; dpos[sq] = ps; dlast[sq] = ps + COUNT(x) - 1;
     dstream[sq] = STREAM(x); dver[sq] = rexp[x] + 1; dlastver[sq] = rexp[x] + COUNT(x);
     printf("w%d: commit #%d at position %d, version %d inserted\n", x, sq, ps, rexp[x] + 1);
     /* ghosts */
     if :: nseq < sq -> nseq = sq :: else fi;
     smask = smask | (1 << sq);
     bits = (COUNT(x) == 2 -> 3 : 1) << ps;  /* the positions this commit holds */
     positions_unique = positions_unique && (pmask & bits) == 0;
     pmask = pmask | bits;
     /* bits 1..max set, no hole (bit 0 is never set) */
     positions_gap_free = (pmask & (pmask + 2)) == 0 && (smask & (smask + 2)) == 0;
     bits = (COUNT(x) == 2 -> 3 : 1) << (rexp[x] + 1);
     stream_versions_ok = stream_versions_ok && (vmask[STREAM(x)] & bits) == 0;
     vmask[STREAM(x)] = vmask[STREAM(x)] | bits;
     stream_versions_ok = stream_versions_ok && (vmask[STREAM(x)] & (vmask[STREAM(x)] + 2)) == 0;
     ncommit[x]++;
     command_ids_unique = command_ids_unique && ncommit[x] <= 1;
     bits = 0
  :: else -> printf("w%d: commit #%d at position %d refused (duplicate key)\n", x, sq, ps)
  fi
}

/* The members of the group still without an outcome: m0, then m1. */
#define M0 (from == 0 -> g0 : g1)
#define M1 (from == 0 && g1 != NONE -> g1 : NONE)

/* committed() for the inserted commits (hint_seen; its cqrs__mongo_version_seen
 * is left out, see append_on), and the number the head note is to be
 * raised to (write_group's *note), which group_commit writes once the group
 * is released (NOTE_AFTER, below). */
#ifndef NOTE_EARLY
#define NOTE_WRITE if :: ins >= 1 -> nt = (ins == 2 -> c1s : c0s) :: else fi
#else
#define NOTE_WRITE skip
#endif
#define COMMITTED \
  if \
  :: ins >= 1 -> res[m0] = R_OK; hint_seen(p, c0s, c0p + COUNT(m0) - 1) \
  :: else \
  fi; \
  if \
  :: ins == 2 -> res[m1] = R_OK; hint_seen(p, c1s, c1p + COUNT(m1) - 1); MARK(w_group) \
  :: else \
  fi; \
  NOTE_WRITE

/* write_group: the writer who found nobody writing writes the group g0, g1
 * (in queue order) until each member has an outcome. Each step is one
 * store operation or one step on process memory. */
inline write_group() {
  do
  :: from >= gn -> break
  :: from < gn ->
     /* Claim numbers and positions one after the other (process memory:
      * it commutes with the other process, so it shares the insert's step). */
#define CLAIM d_step { m0 = M0; m1 = M1; c0s = hs + STEP; c0p = hl + STEP; c1s = c0s + STEP; c1p = c0p + COUNT(m0) - 1 + STEP }
#define OVER ((m1 == NONE && c0s > MAXSEQ) || (m1 != NONE && c1s > MAXSEQ))
#ifdef NOTE_EARLY
     atomic {
       CLAIM;
       /* the note raised to the claim before the insert: it may lead */
       if
       :: OVER
       :: !OVER && m1 != NONE && note_seq < c1s -> note_seq = c1s; note_last = c1p + COUNT(m1) - 1
       :: !OVER && m1 == NONE && note_seq < c0s -> note_seq = c0s; note_last = c0p + COUNT(m0) - 1
       :: else
       fi
     }
#else
     CLAIM;
#endif
     if
     :: OVER ->
        /* CLAIM_ATTEMPTS run out: a store error for every member left */
        d_step { res[m0] = R_ERROR; if :: m1 != NONE -> res[m1] = R_ERROR :: else fi; from = gn }
     :: else ->
        /* insert_group: insert_one, or an ordered insert_many that stops at
         * the first refused document; each document lands on its own. The
         * step that ends the insert also does committed() for each inserted
         * commit (the hint, the version seen) and head_note_write ($max of
         * the last number inserted, when it crosses a multiple of
         * HEAD_EVERY: here any time, or never, so the note may lag): process
         * memory, and a write that may be lost; a crash after the insert is
         * a crash before them. */
#ifdef BUG_UNORDERED
        if :: m1 != NONE -> d_step { insert_doc(m1, c1s, c1p, ok1) } :: else -> ok1 = false fi;
        atomic { insert_doc(m0, c0s, c0p, ok); ins = (ok -> (ok1 -> 2 : 1) : 0); COMMITTED }
#else
        if
        :: m1 == NONE -> atomic { insert_doc(m0, c0s, c0p, ok); ins = (ok -> 1 : 0); COMMITTED }
        :: m1 != NONE ->
           atomic { insert_doc(m0, c0s, c0p, ok); if :: !ok -> ins = 0 :: else fi }
           if :: ok -> atomic { insert_doc(m1, c1s, c1p, ok); ins = (ok -> 2 : 1); COMMITTED } :: else fi
        fi;
#endif
        if
        :: ins == 2 || (ins == 1 && m1 == NONE) -> from = gn  /* all in */
        :: else ->
           /* the commit at `from` was refused: disambiguate */
           if :: ins == 1 -> hs = c0s; hl = c0p + COUNT(m0) - 1; from++; m0 = m1; c0s = c1s; c0p = c1p; MARK(w_group_split) :: else fi;
           d_step { r1 = NONE; if :: dcmd[c0s] != NONE && dcmd[c0s] != m0 -> r1 = R_NONE; MARK(w_reclaim) :: else fi }
           if
           :: r1 == NONE ->
#ifdef BUG_DUP_IS_SUCCESS
              r1 = R_DUP;
#else
              d_step { command_exists(m0, found); if :: found -> r1 = R_DUP :: else fi; found = false }
#endif
              if
              :: r1 == NONE ->
                 d_step { version_exists(STREAM(m0), true, rexp[m0] + 1, found); r1 = (found -> R_CONFLICT : R_NONE); found = false }
              :: else
              fi
           :: else
           fi;
           if
           :: r1 != R_NONE ->
              /* answered alone; the rest go on from the same head */
#ifdef BUG_FAIL_ALL
              d_step { res[g0] = r1; if :: g1 != NONE -> res[g1] = r1 :: else fi; from = gn; MARK(w_group_split) }
#else
              d_step { res[m0] = r1; from++; if :: g1 != NONE -> MARK(w_group_split) :: else fi }
#endif
           :: else ->
              /* another process took the number: find the head again */
#ifdef BUG_BLIND_NEXT
              hs = c0s; hl = c0p + COUNT(m0) - 1
#else
              d_step { find_head(hs, hl) }
#endif
           fi
        fi
     fi;
     d_step { m0 = 0; m1 = 0; c0s = 0; c0p = 0; c1s = 0; c1p = 0; ins = 0; r1 = 0; ok = false; ok1 = false }
  od
}

/* Is outcome r of writer w right for its own commit (expected version e)? */
inline outcome_right(e) {
  found = false; k = 1;
  do
  :: k <= MAXSEQ ->
     found = found ||
             (r == R_OK && dcmd[k] == w && dstream[k] == s && dver[k] == e + 1) ||
             (r == R_DUP && dcmd[k] == w) ||
             (r == R_CONFLICT && dcmd[k] != NONE && dcmd[k] != w && dstream[k] == s && dver[k] == e + 1);
     k++
  :: else -> break
  od;
  k = 0;
  outcomes_right = found || r == R_ERROR;
  found = false
}

/* One writer: a thread of OS process PROC(w) running a command handler that
 * saves through cqrs_store_append -> ms_append -> append_on ->
 * group_commit -> write_group. A crash may come between any two steps. */
proctype writer(byte w) {
  byte p = PROC(w), s = STREAM(w);
  byte ep, k, r;
  int bits;
  bool found, ok, ok1;
  /* the leader's (write_group's locals; nt: the note to write after) */
  byte g0, g1, gn, from, hs, hl, m0, m1, c0s, c0p, c1s, c1p, ins, r1, nt;

  do
  :: /* The handler loads the aggregate (cqrs_repository_load ->
      * ms_read_stream): it reads the stream to its end and saves with that
      * expected version. */
     atomic {
       ep = epoch[p]; r = R_NONE;
       rexp[w] = 0; k = 1;
       do
       :: k <= MAXSEQ -> if :: dcmd[k] != NONE && dstream[k] == s && dlastver[k] > rexp[w] -> rexp[w] = dlastver[k] :: else fi; k++
       :: else -> break
       od;
       k = 0;
       printf("w%d (process %d): loads stream %d, version %d\n", w, p, s, rexp[w]);
       /* append_on: an expected version this process has not seen
        * (cqrs__mongo_version_known) is looked up, version_reached
        * (lastVersion), and one ahead of the stream is a conflict. Here every
        * expected version comes from a full load, which the look-up finds
        * (commits are never deleted): the look-up, the versions[] cache
        * and an expected version ahead of the stream are left out. Then
        * group_commit queues the commit. */
       if
       :: r == R_NONE -> fin[w] = false; res[w] = R_NONE; if :: q0[p] == NONE -> q0[p] = w :: else -> q1[p] = w fi
       :: else
       fi
     }
     {
       if
       :: r == R_NONE ->
          /* group_commit: wait, or write the group: whoever finds nobody
           * writing takes the queue, and (write_group) hint_get, or
           * find_head when the process knows no head (a find_head reads
           * the store; the take is process memory and commutes with the
           * other process, so they share a step). The code's leader may
           * first wait a little for writers coming back (gather): a later
           * take, which the interleavings here cover. */
          do
          :: atomic { fin[w] -> r = res[w]; break }
          :: atomic {
               !fin[w] && !writing[p] ->
               writing[p] = true; g0 = q0[p]; g1 = q1[p]; q0[p] = NONE; q1[p] = NONE;
               gn = (g1 == NONE -> 1 : 2); from = 0; hs = hseq[p]; hl = hlast[p];
               if :: hs == 0 -> find_head(hs, hl) :: else fi
             }
             write_group();
             /* outcomes published under group_lock */
             atomic {
#ifdef BUG_SWAP_OUTCOMES
               if :: g1 != NONE -> bits = res[g0]; res[g0] = res[g1]; res[g1] = bits; bits = 0 :: else fi;
#endif
               fin[g0] = true; if :: g1 != NONE -> fin[g1] = true :: else fi;
               writing[p] = false; g0 = 0; g1 = 0; gn = 0; from = 0; hs = 0; hl = 0
             }
             /* NOTE_AFTER: head_note_write, after the group is released (the
              * next group may be in flight) and only when the group crossed
              * a multiple of HEAD_EVERY with no other note in flight: here
              * written or skipped; a $max of a number that is in, so it may
              * lag but never leads. */
             if
             :: nt > 0 -> atomic { if :: note_seq < nt -> note_seq = nt :: else fi; nt = 0 }
             :: nt > 0 -> nt = 0
             :: else
             fi
          od
       :: else
       fi;
       /* The answer. A conflict: the dispatcher runs the handler again
        * (reload, save), here without a bound. */
       atomic {
         printf("w%d: answered %d (1 ok, 2 duplicate, 3 conflict, 4 error)\n", w, r);
         outcome_right(rexp[w]);
#if CHECKS & P_OUTCOMES
         assert(outcomes_right);
#endif
         if
         :: r == R_CONFLICT -> MARK(w_conflict)
         :: else ->
            if :: r == R_DUP -> MARK(w_duplicate) :: else fi;
            /* No commit lost: an append answered ok or duplicate is in the store. */
            no_commit_lost = r == R_ERROR || ncommit[w] >= 1;
#if CHECKS & P_NO_COMMIT_LOST
            assert(no_commit_lost);
#endif
            if
            :: r != R_ERROR && resends < MAXRESEND -> resends++  /* its client sends it again */
            :: r = NONE  /* done */
            fi
         fi
       }
     } unless {
       epoch[p] != ep;  /* the process crashed: its writers start again */
       if :: ncommit[w] > 0 && r != NONE -> MARK(w_crash_after_insert) :: else fi;
       g0 = 0; g1 = 0; gn = 0; from = 0; hs = 0; hl = 0; m0 = 0; m1 = 0; nt = 0;
       c0s = 0; c0p = 0; c1s = 0; c1p = 0; ins = 0; r1 = 0; ok = false; ok1 = false; found = false; bits = 0; k = 0
     };
     if :: r == NONE -> break :: else fi
  od;
  done++
}

/* A crash of an OS process, between any two steps of its writers: its
 * hint, caches, queue and group are gone; its writers' clients send their
 * commands again with the same command ids. */
inline crash(q) {
  crashes++; epoch[q]++; hseq[q] = 0; hlast[q] = 0;
  q0[q] = NONE; q1[q] = NONE; writing[q] = false;
  printf("crash of process %d\n", q)
}
/* CRASH_PROCESS: only that process crashes (the default run's bound). */
#ifdef CRASH_PROCESS
#define CAN_CRASH(q) (q == CRASH_PROCESS)
#else
#define CAN_CRASH(q) true
#endif
active proctype crasher() {
end:
  do
  :: d_step { crashes < MAXCRASH && CAN_CRASH(0) -> crash(0) }
  :: d_step { crashes < MAXCRASH && CAN_CRASH(1) -> crash(1) }
  :: crashes >= MAXCRASH -> break
  od
}

/* A catch-up reader (bus.c: cqrs_store_read_all from its position + 1, i.e.
 * ms_read_all: locate the commit, probe_commit / fetch_commit the next
 * ones by _id, then read_commits over {_id >= k} sorted on _id, and
 * visit_commit). The range read is the weaker: it does not stop at a
 * missing number. A cursor is not a snapshot: each step sees the smallest
 * commit number visible past the last read at that moment. */
active proctype reader() {
  byte rs, rp, k, i;
  do
  :: d_step {
       nseq > rs ->
       k = rs + 1;
       do :: dcmd[k] == NONE -> k++ :: else -> break od;
       /* It never skips: what it reads next is the next commit and starts
        * right after what it has read (else a commit with a smaller
        * position lands later). */
       reader_never_skips = k == rs + 1 && dpos[k] == rp + 1;
#if CHECKS & P_READER_NEVER_SKIPS
       assert(reader_never_skips);
#endif
       printf("reader: reads commit #%d, positions %d..%d\n", k, dpos[k], dlast[k]);
       dlv[k]++;
       rs = k; rp = dlast[k];
       k = 0
     }
  :: atomic { nseq <= rs && done == NW -> break }
  od;
  skip;
  /* When every writer is done, the reader has read every commit once. */
  d_step {
    i = 1;
    do
    :: i <= MAXSEQ -> reader_read_all = reader_read_all && (dcmd[i] == NONE || dlv[i] == 1); i++
    :: else -> break
    od;
#if CHECKS & P_READER_READ_ALL
    assert(reader_read_all);
#endif
    /* and every command is in the store exactly once (no claim ran out of
     * attempts, nothing lost, nothing twice) */
    no_commit_lost = ncommit[0] >= 1 && ncommit[1] >= 1 && ncommit[2] >= 1;
#if CHECKS & P_NO_COMMIT_LOST
    assert(no_commit_lost);
#endif
    command_ids_unique = ncommit[0] <= 1 && ncommit[1] <= 1 && ncommit[2] <= 1;
#if CHECKS & P_COMMAND_IDS_UNIQUE
    assert(command_ids_unique)
#endif
  }
}

init {
  atomic { run writer(0); run writer(1); run writer(2) }
}
