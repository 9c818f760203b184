/* A small domain for the framework's own tests: a ledger that can be opened,
 * credited and debited. */
#ifndef TEST_LEDGER_H
#define TEST_LEDGER_H

#include <cqrs/cqrs.h>

typedef struct ledger_state {
  bool opened;
  char owner[32];
  int64_t balance;
  int64_t applied; /* events applied, to tell a replay from a snapshot */
} ledger_state_t;

typedef struct ledger_opened { char owner[32]; } ledger_opened_t;
typedef struct ledger_amount { int64_t amount; } ledger_amount_t;

typedef struct ledger_open_cmd { char id[CQRS_ID_MAX]; char owner[32]; } ledger_open_cmd_t;
typedef struct ledger_move_cmd { char id[CQRS_ID_MAX]; int64_t amount; } ledger_move_cmd_t;

extern const cqrs_event_type_t ledger_opened;
extern const cqrs_event_type_t ledger_credited;
extern const cqrs_event_type_t ledger_debited;
extern const cqrs_command_type_t ledger_open;
extern const cqrs_command_type_t ledger_credit;
extern const cqrs_command_type_t ledger_debit;
extern const cqrs_aggregate_type_t ledger_type;      /* no snapshots */
extern const cqrs_aggregate_type_t ledger_snap_type; /* a snapshot every 10 events */

/* "ledger.renamed", to test upcasting: schema 1 was {title}, schema 2 is
 * {name, reason}; ledger_renamed_upcast takes 1 to 2 (reason "unknown").
 * Not in ledger_registry(): a test registers the version it plays. */
typedef struct ledger_renamed_v1 { char title[32]; } ledger_renamed_v1_t;
typedef struct ledger_renamed { char name[32]; char reason[32]; } ledger_renamed_t;
extern const cqrs_event_type_t ledger_renamed_v1;
extern const cqrs_event_type_t ledger_renamed;
cqrs_code_t ledger_renamed_upcast(const bson_t *in, bson_t *out, cqrs_error_t *err);

/* Registers every type above but "ledger.renamed". */
cqrs_registry_t *ledger_registry(void);
/* Registers the three handlers for `type` (ledger_type by default). */
cqrs_code_t ledger_handlers(cqrs_dispatcher_t *d, const cqrs_aggregate_type_t *type, unsigned flags,
                            cqrs_error_t *err);
cqrs_code_t ledger_setup(cqrs_dispatcher_t *d, void *data, cqrs_error_t *err);

/* Builds commands; abort the test on failure. */
cqrs_command_t *ledger_open_new(const char *id, const char *owner);
cqrs_command_t *ledger_credit_new(const char *id, int64_t amount);
cqrs_command_t *ledger_debit_new(const char *id, int64_t amount);

/* Appends `n` credits of 1 to stream `id` of `type` directly in `store`. */
void ledger_fill(cqrs_store_t *store, const cqrs_aggregate_type_t *type, const char *id, int64_t n);


/* A store that forwards to `inner` (borrowed) but declares itself blocking,
 * so the framework calls it from the thread pool only; each read_all first
 * sleeps `delay_ms`, to widen races. Destroy with cqrs_store_destroy. */
cqrs_store_t *ledger_blocking_store(cqrs_store_t *inner, unsigned delay_ms);
/* Makes the next `n` read_all calls of a ledger_blocking_store fail with
 * CQRS_ESTORE, as a server that went away would. */
void ledger_blocking_store_fail_reads(cqrs_store_t *store, int n);
/* Makes head calls of a ledger_blocking_store wait until released with
 * `hold` false (but those on the watched thread, which would never be). */
void ledger_blocking_store_hold_head(cqrs_store_t *store, bool hold);
/* Counts the calls a ledger_blocking_store gets on the calling thread (the
 * loop's, which a blocking store must never be called on) from now on. */
void ledger_blocking_store_watch(cqrs_store_t *store);
int ledger_blocking_store_calls_on_watched(cqrs_store_t *store);
/* The same for a ledger_blocking_store or ledger_flaky_store; `permanent`:
 * a permanent store error (cqrs_error_transient false). */
void ledger_store_fail_reads(cqrs_store_t *store, int n, bool permanent);
/* Like ledger_blocking_store, but non-blocking (called on the loop thread)
 * and without delay: its reads fail on demand (ledger_store_fail_reads). */
cqrs_store_t *ledger_flaky_store(cqrs_store_t *inner);
/* A non-blocking store that forwards to `inner` (borrowed) for `budget`
 * calls (< 0: forever), then fails every call with CQRS_ESTORE: a process
 * stopped after its budget-th store call. */
cqrs_store_t *ledger_faulty_store(cqrs_store_t *inner, long budget);
long ledger_faulty_store_calls(cqrs_store_t *store);
/* Checkpoints that forward to `inner` (borrowed) but are blocking. */
cqrs_checkpoint_store_t *ledger_blocking_checkpoints(cqrs_checkpoint_store_t *inner);

/* Runs `loop` until nothing is left, advancing the manual `clock` to each
 * framework timer that keeps the loop running (a back-off, a retry) as it
 * comes: uv_run's "until done" in the clock's time, with no waiting. */
void ledger_run_idle(uv_loop_t *loop, cqrs_clock_t *clock);
#endif
