/* The MongoDB store's append path, as infra/mongo/src/mongo_store.c has it
 * on main (one document per commit, no transaction): writers in one or
 * several OS processes claim global positions against a unique index, may
 * crash at any step and retry, and a catch-up reader follows the store.
 * See docs/models.md for what this covers, what it leaves out, the bounds
 * and how to read a counterexample. This model must follow the code: when
 * the append path changes, change this file in the same commit.
 *
 * Configuration (spin -D...):
 *   MAXCRASH   OS-process crashes, at any step (default 1)
 *   MAXRESEND  commands re-sent by their client after an answer (default 0)
 *   WITNESS    one of the W_ conditions below: the run must then fail,
 *              showing that the case is reached (the model is not vacuous)
 *   CHECKS     which properties to check, a sum of the P_ bits below
 *              (default all; scripts/models.sh checks each broken variant
 *              against the one property it must break)
 * Deliberately broken variants, each of which must fail (scripts/models.sh):
 *   BUG_HEAD_PLUS_2    claim head + 2 instead of head + 1
 *   BUG_BLIND_NEXT     after a duplicate key, claim position + 1 without
 *                      reading the head (a commit spans several positions,
 *                      the index holds only its first)
 *   BUG_NO_WAIT        reserve positions from the process's counter before
 *                      the predecessor is visible (no lock, fetch-and-add)
 *   BUG_NO_CMD_INDEX   no unique index on commandId
 *   BUG_DUP_IS_SUCCESS after a duplicate key below the head, answer
 *                      "duplicate" without looking the command id up
 *   BUG_NO_VERSION_INDEX no unique index on (stream, version)
 */

#ifndef MAXCRASH
#define MAXCRASH 1
#endif
#ifndef MAXRESEND
#define MAXRESEND 0
#endif

/* The properties (each its own assertion, named as below in pan's output). */
#define P_POSITIONS_UNIQUE 1    /* no position is held by two commits */
#define P_POSITIONS_GAP_FREE 2  /* the visible positions are 1..head, always */
#define P_READER_NEVER_SKIPS 4  /* the reader reads next what follows what it read */
#define P_READER_READ_ALL 8     /* at the end the reader has read every commit once */
#define P_NO_COMMIT_LOST 16     /* an append answered ok or duplicate is in the store */
#define P_COMMAND_IDS_UNIQUE 32 /* a repeated command id appends nothing */
#define P_VERSIONS 64           /* each stream's versions are 1..v, each once */
#ifndef CHECKS
#define CHECKS 127
#endif

/* Witnesses: cases the search must reach (scripts/models.sh checks it does). */
#ifdef WITNESS
bool w_duplicate, w_conflict, w_reclaim, w_crash_after_insert;
bool witness_not_reached = true;
#define MARK(x) x = true
#define W_DUPLICATE w_duplicate                   /* an append answered 'duplicate' */
#define W_CONFLICT w_conflict                     /* an append answered 'conflict' */
#define W_RECLAIM w_reclaim                       /* a racer took the claimed position */
#define W_CRASH_AFTER_INSERT w_crash_after_insert /* a crash between insert and answer */
active proctype witness() {
end: atomic { WITNESS -> witness_not_reached = false; assert(witness_not_reached) }
}
#else
#define MARK(x) skip
#endif

#define NW 3       /* writers (threads calling cqrs_store_append) */
#define NPROC 2    /* OS processes, each with its own cqrs_mongo_t */
#define NSTREAM 2
#define MAXDOCS 8  /* room for the broken variants' extra commits */
#define MAXPOS 12  /* a claim past it gives up (CLAIM_ATTEMPTS), a store error */
#define NONE 255

/* Who writes what. Writers 0 and 1 share OS process 0 (and its lock and
 * caches); writer 2 is alone in process 1. Writer 0's commit holds two
 * events (positions p, p+1: the index holds only p) on stream 0; writers 1
 * and 2 race on stream 1 (optimistic concurrency) from two processes.
 * Each writer's command has its own id (w). */
#define PROC(w) (w == 2 -> 1 : 0)
#define STREAM(w) (w == 0 -> 0 : 1)
#define COUNT(w) (w == 0 -> 2 : 1)

/* The position a writer claims after reading the head. */
#ifdef BUG_HEAD_PLUS_2
#define CLAIM(h) (h + 2)
#else
#define CLAIM(h) (h + 1)
#endif

/* Results of an append (cqrs_code_t / cqrs_append_result_t.duplicate). */
#define R_NONE 0
#define R_OK 1
#define R_DUP 2
#define R_CONFLICT 3
#define R_ERROR 4

/* ---- the collection: one document per commit (build_commit) ---- */
byte ndocs;
byte dpos[MAXDOCS];     /* position: unique index */
byte dlast[MAXDOCS];    /* lastPosition */
byte dcmd[MAXDOCS];     /* commandId: unique index */
byte dstream[MAXDOCS];  /* aggregateType/aggregateId */
byte dver[MAXDOCS];     /* version of the first event: unique with the stream */
byte dlastver[MAXDOCS]; /* lastVersion */

/* ---- per OS process (struct cqrs_mongo in mongo-private.h) ---- */
byte npos[NPROC];             /* next_position; 0: unknown */
byte vcache[NPROC * NSTREAM]; /* versions[]: the last version seen; 0: none */
byte lock[NPROC] = NONE;      /* append_lock: the writer holding it */
byte epoch[NPROC];            /* bumped by a crash: the process restarts */
byte crashes, resends, done;

/* ---- ghosts: what the properties look at (derived from the documents) ---- */
int pmask;                 /* bit p set: position p is held by a visible commit */
byte maxlast;              /* the highest lastPosition visible */
byte ncommit[NW];          /* visible commits of each command id */
int vmask[NSTREAM];        /* bit v set: version v of the stream is visible */
bool positions_unique = true, positions_gap_free = true;
bool stream_versions_ok = true; /* unique and gap-free */
bool command_ids_unique = true;
bool no_commit_lost = true, reader_never_skips = true, reader_read_all = true;
byte dlv[MAXDOCS];         /* how many times the reader delivered each commit */

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

/* head_on: the lastPosition of the commit with the highest position. */
inline head_on(h) {
  h = 0; best = 0; k = 0;
  do
  :: k < ndocs -> if :: dpos[k] > best -> best = dpos[k]; h = dlast[k] :: else fi; k++
  :: else -> break
  od;
  k = 0; best = 0
}

/* command_exists: a commit with this command id. */
inline command_exists(found) {
  found = false; k = 0;
  do
  :: k < ndocs -> found = found || dcmd[k] == w; k++
  :: else -> break
  od;
  k = 0
}

/* version_exists with key "lastVersion" (append_on) or "version"
 * (claim_and_insert). */
inline last_version_exists(v, found) {
  found = false; k = 0;
  do
  :: k < ndocs -> found = found || (dstream[k] == s && dlastver[k] == v); k++
  :: else -> break
  od;
  k = 0
}
inline first_version_exists(v, found) {
  found = false; k = 0;
  do
  :: k < ndocs -> found = found || (dstream[k] == s && dver[k] == v); k++
  :: else -> break
  od;
  k = 0
}

/* cqrs__mongo_version_seen (mongo.c): keeps the highest. */
inline version_seen(v) {
  if :: vcache[p * NSTREAM + s] < v -> vcache[p * NSTREAM + s] = v :: else fi
}

/* mongoc_collection_insert_one of build_commit's document: atomic; refused
 * (duplicate key, the index not named) when any unique index collides. */
inline insert(pos, ok) {
  ok = true; k = 0;
  do
  :: k < ndocs ->
     if
     :: dpos[k] == pos -> ok = false
#ifndef BUG_NO_CMD_INDEX
     :: dcmd[k] == w -> ok = false
#endif
#ifndef BUG_NO_VERSION_INDEX
     :: dstream[k] == s && dver[k] == exp + 1 -> ok = false
#endif
     :: else
     fi;
     k++
  :: else -> break
  od;
  k = 0;
  if
  :: ok ->
     assert(ndocs < MAXDOCS);
     dpos[ndocs] = pos; dlast[ndocs] = pos + n - 1; dcmd[ndocs] = w;
     dstream[ndocs] = s; dver[ndocs] = exp + 1; dlastver[ndocs] = exp + n;
     ndocs++;
     /* ghosts */
     best = (n == 2 -> 3 : 1) << pos;  /* the positions this commit holds */
     positions_unique = positions_unique && (pmask & best) == 0;
     pmask = pmask | best;
     positions_gap_free = (pmask & (pmask + 2)) == 0; /* bits 1..max, no hole */
     if :: maxlast < pos + n - 1 -> maxlast = pos + n - 1 :: else fi;
     best = (n == 2 -> 3 : 1) << (exp + 1);
     stream_versions_ok = stream_versions_ok && (vmask[s] & best) == 0;
     vmask[s] = vmask[s] | best;
     stream_versions_ok = stream_versions_ok && (vmask[s] & (vmask[s] + 2)) == 0;
     ncommit[w]++;
     command_ids_unique = command_ids_unique && ncommit[w] <= 1;
     best = 0
  :: else
  fi
}

/* One writer: a thread of OS process PROC(w) running a command handler that
 * saves through cqrs_store_append -> ms_append -> append_on. Each statement
 * below is one store operation or one step on process memory; a crash may
 * come between any two. */
proctype writer(byte w) {
  byte p = PROC(w), s = STREAM(w), n = COUNT(w);
  byte ep, exp, pos, head, k, best, r;
  bool found, ok;

  do
  :: /* The handler loads the aggregate (cqrs_repository_load ->
      * ms_read_stream): it reads the stream to its end and saves with that
      * expected version. The read records the version seen, unless the
      * load came from a snapshot with nothing after it or the cache slot
      * was taken by another stream (both: nothing recorded). */
     d_step {
       ep = epoch[p]; r = R_NONE;
       exp = 0; k = 0;
       do
       :: k < ndocs -> if :: dstream[k] == s && dlastver[k] > exp -> exp = dlastver[k] :: else fi; k++
       :: else -> break
       od;
       k = 0;
       printf("w%d (process %d): loads stream %d, version %d\n", w, p, s, exp)
     }
     {
       if :: exp > 0 -> version_seen(exp) :: skip fi;
       /* append_on: an expected version this process has not seen is
        * looked up; one that is ahead of the stream is a conflict. */
       if
       :: d_step { exp > 0 && vcache[p * NSTREAM + s] != exp -> last_version_exists(exp, found) }
          if
          :: d_step { !found -> command_exists(found); r = (found -> R_DUP : R_CONFLICT); found = false }
          :: found -> found = false
          fi
       :: !(exp > 0 && vcache[p * NSTREAM + s] != exp)
       fi;
       if
       :: r == R_NONE ->
#ifndef BUG_NO_WAIT
          /* uv_mutex_lock(&m->append_lock), then claim_and_insert: the
           * position remembered, or the head read. */
          atomic { lock[p] == NONE -> lock[p] = w; pos = npos[p] }
          if :: pos == 0 -> d_step { head_on(head); pos = CLAIM(head); head = 0 } :: else fi;
#else
          /* BROKEN: the position is reserved from the process's counter
           * at once, before the commit in front of it is visible. */
          d_step {
            if :: npos[p] == 0 -> head_on(head); npos[p] = CLAIM(head); head = 0 :: else fi;
            pos = npos[p]; npos[p] = npos[p] + n
          }
#endif
          do
          :: pos > MAXPOS -> r = R_ERROR; break
          :: pos <= MAXPOS ->
             /* insert; on success next_position and the version seen */
             d_step {
               insert(pos, ok);
               printf("w%d: insert at position %d, version %d: %d (1 committed, 0 duplicate key)\n", w, pos, exp + 1, ok);
               if
               :: ok -> if :: npos[p] < pos + n -> npos[p] = pos + n :: else fi;
                        version_seen(exp + n); r = R_OK; ok = false
               :: else
               fi
             }
             if
             :: r == R_OK -> break
             :: else
             fi;
#ifdef BUG_BLIND_NEXT
             pos = pos + 1
#else
             /* a duplicate key: read the head; another writer took it? */
             d_step { head_on(head); if :: head >= pos -> pos = CLAIM(head); head = 0; ok = true; MARK(w_reclaim) :: else fi }
             if
             :: ok -> ok = false
             :: else ->
#ifdef BUG_DUP_IS_SUCCESS
                r = R_DUP;
#else
                d_step { command_exists(found); if :: found -> r = R_DUP :: else fi; found = false }
#endif
                if
                :: r == R_DUP -> break
                :: else
                fi;
                d_step {
                  first_version_exists(exp + 1, found);
                  if :: found -> r = R_CONFLICT :: else -> pos = CLAIM(head) fi;
                  found = false; head = 0
                }
                if
                :: r == R_CONFLICT -> break
                :: else
                fi
             fi
#endif
          od
       :: else
       fi;
       /* uv_mutex_unlock, and the answer. A conflict: the dispatcher runs
        * the handler again (reload, save), here without a bound. */
       atomic {
         if :: lock[p] == w -> lock[p] = NONE :: else fi;
         pos = 0;
         printf("w%d: answered %d (1 ok, 2 duplicate, 3 conflict, 4 error)\n", w, r);
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
       if :: r == R_OK -> MARK(w_crash_after_insert) :: else fi
     };
     if :: r == NONE -> break :: else fi
  od;
  done++
}

/* A crash of an OS process, between any two steps of its writers: its
 * caches and its lock are gone; its writers retry their commands (the
 * client sends them again with the same command id). */
active proctype crasher() {
  byte q, i;
end:
  do
  :: crashes < MAXCRASH ->
     if :: q = 0 :: q = 1 fi;
     d_step {
       crashes++; epoch[q]++; npos[q] = 0; lock[q] = NONE;
       printf("crash of process %d\n", q);
       i = 0;
       do :: i < NSTREAM -> vcache[q * NSTREAM + i] = 0; i++ :: else -> break od;
       i = 0; q = 0
     }
  :: crashes >= MAXCRASH -> break
  od
}

/* A catch-up reader (bus.c: cqrs_store_read_all from its position + 1, i.e.
 * ms_read_all: lastPosition >= from, sorted by position). A cursor is not a
 * snapshot: each step sees the smallest commit visible at that moment, and
 * writers go on between steps. */
active proctype reader() {
  byte rp, k, best, i;
  do
  :: d_step {
       maxlast > rp ->
       best = NONE; i = 0;
       do
       :: i < ndocs -> if :: dlast[i] > rp && (best == NONE || dpos[i] < dpos[best]) -> best = i :: else fi; i++
       :: else -> break
       od;
       /* It never skips: what it reads next starts right after what it
        * has read (else a commit with a smaller position lands later). */
       reader_never_skips = dpos[best] == rp + 1;
#if CHECKS & P_READER_NEVER_SKIPS
       assert(reader_never_skips);
#endif
       printf("reader: reads the commit at positions %d..%d\n", dpos[best], dlast[best]);
       dlv[best]++;
       rp = dlast[best];
       best = 0; i = 0
     }
  :: atomic { maxlast <= rp && done == NW -> break }
  od;
  skip;
  /* When every writer is done, the reader has read every commit once. */
  d_step {
    i = 0;
    do
    :: i < ndocs -> reader_read_all = reader_read_all && dlv[i] == 1; i++
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
