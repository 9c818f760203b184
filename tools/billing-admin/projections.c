/* projections: each projection as the store shows it (checkpoint, head,
 * lag, state, who runs it), and the controls that act on the running
 * application through the control record beside its checkpoint
 * (projection.h): pause, resume, reset to a position, skip or replay one
 * event. The
 * application reads the record every second (control_ms), acts under its
 * lease and reports; the tool waits for that report. */
#include <stdlib.h>
#include <string.h>

#include "admin.h"

#define REPORT_STALE_MS 15000 /* a report older than this: no process runs the projection */
#define LEASES "cqrs_leases"
#define REBUILDS "billing_rebuilds"

static const char usage[] =
    "usage: billing-admin projections [list] [--json]\n"
    "       billing-admin projections pause|resume NAME [--wait S]\n"
    "       billing-admin projections reset --to POSITION NAME [--wait S]\n"
    "       billing-admin projections skip|replay POSITION NAME [--wait S]\n"
    "list: each projection (billing.invoices, billing.balances) with its checkpoint, the head, the\n"
    "events of its types still to handle and the age of the oldest, its state as the process running\n"
    "it reports (running, catching-up, paused, failing, resetting; rebuilding while `rebuild` runs;\n"
    "stopped when no process has reported for 15 s), the process reporting and the lease's owner.\n"
    "pause, resume, reset, skip and replay write a request into the projection's control record, which the\n"
    "running application reads every second and acts on (the holder of its lease, if any): pause holds\n"
    "deliveries; reset moves the checkpoint to POSITION and reprojects from there (documents already\n"
    "past an event keep their state: a rebuild writes afresh); skip sends the event at POSITION to the\n"
    "dead letters unhandled (now when the projection is stuck on it, else when it comes); replay reads\n"
    "the event at POSITION from the store and delivers it once more (a dead letter's event), retried\n"
    "with back-off and dead-lettered again if it keeps failing, the checkpoint not held. NAME may also\n"
    "be a process manager's (process:billing.transfer). The tool waits S seconds (default 10; 0: not at\n"
    "all) for the projection to report that it acted.\n"
    "Exit: 0 done (a skip: also taken, for when the event comes; or listed, nothing failing), 1 refused\n"
    "or failed, not acted on within S seconds, a projection failing,\n"
    "stopped or behind (list), 2 usage, 3 server error.\n";

typedef struct row {
  admin_store_lag_t lag;
  cqrs_projection_control_t ctl;
  bool found, fresh, rebuilding;
  char lease_owner[CQRS_NAME_MAX];
  const char *state;
} row_t;

/* The owner of the lease of `name` while it runs (else ""). */
static int lease_owner(admin_t *a, const char *name, char *out, size_t cap) {
  mongoc_collection_t *c = mongoc_database_get_collection(a->db, LEASES);
  bson_t filter = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "_id", name);
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, &filter, NULL, NULL);
  const bson_t *doc;
  out[0] = '\0';
  if (mongoc_cursor_next(cur, &doc) && admin_int64(doc, "expires", 0) > cqrs_now_ms()) {
    const char *owner = admin_str(doc, "owner");
    if (owner && strlen(owner) < cap) memcpy(out, owner, strlen(owner) + 1);
  }
  bson_error_t e;
  int rc = mongoc_cursor_error(cur, &e) ? admin_server_error("read the leases", &e) : ADMIN_OK;
  mongoc_cursor_destroy(cur);
  bson_destroy(&filter);
  mongoc_collection_destroy(c);
  return rc;
}

static int rebuilding(admin_t *a, const char *name, bool *out) {
  mongoc_collection_t *c = mongoc_database_get_collection(a->db, REBUILDS);
  bson_t filter = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "_id", name);
  BSON_APPEND_UTF8(&filter, "phase", "building");
  bson_error_t e;
  int64_t n = mongoc_collection_count_documents(c, &filter, NULL, NULL, NULL, &e);
  bson_destroy(&filter);
  mongoc_collection_destroy(c);
  if (n < 0) return admin_server_error("read the rebuilds", &e);
  *out = n > 0;
  return ADMIN_OK;
}

static int read_row(admin_t *a, row_t *r) {
  cqrs_error_t err;
  if (cqrs_checkpoints_control_load(a->cp, r->lag.name, &r->ctl, &r->found, &err))
    return admin_cqrs_error("read a control record", &err);
  int rc = lease_owner(a, r->lag.name, r->lease_owner, sizeof r->lease_owner);
  if (!rc) rc = rebuilding(a, r->lag.name, &r->rebuilding);
  r->fresh = r->found && r->ctl.reported_at > cqrs_now_ms() - REPORT_STALE_MS;
  r->state = r->rebuilding ? "rebuilding" : r->fresh ? r->ctl.state : "stopped";
  return rc;
}

static void row_json(bson_t *arr, size_t i, const row_t *r) {
  char key[16];
  const char *k;
  bson_t d;
  bson_uint32_to_string((uint32_t)i, &k, key, sizeof key);
  bson_append_document_begin(arr, k, -1, &d);
  BSON_APPEND_UTF8(&d, "name", r->lag.name);
  BSON_APPEND_UTF8(&d, "state", r->state);
  BSON_APPEND_INT64(&d, "checkpoint", r->lag.checkpoint);
  BSON_APPEND_INT64(&d, "head", r->lag.head);
  BSON_APPEND_INT64(&d, "behindEvents", r->lag.behind);
  BSON_APPEND_BOOL(&d, "behindAtLeast", r->lag.at_least);
  BSON_APPEND_DOUBLE(&d, "lagSeconds", r->lag.lag_s);
  BSON_APPEND_BOOL(&d, "paused", r->ctl.paused);
  if (r->fresh) {
    BSON_APPEND_UTF8(&d, "reportedBy", r->ctl.owner);
    BSON_APPEND_DATE_TIME(&d, "reportedAt", r->ctl.reported_at);
    BSON_APPEND_INT64(&d, "reached", r->ctl.reached);
    BSON_APPEND_INT64(&d, "parked", r->ctl.parked);
  } else {
    BSON_APPEND_NULL(&d, "reportedBy");
  }
  if (r->lease_owner[0]) BSON_APPEND_UTF8(&d, "leaseOwner", r->lease_owner);
  else BSON_APPEND_NULL(&d, "leaseOwner");
  BSON_APPEND_INT64(&d, "request", r->ctl.request);
  BSON_APPEND_INT64(&d, "done", r->ctl.done);
  BSON_APPEND_UTF8(&d, "result", r->ctl.result);
  bson_append_document_end(arr, &d);
}

static void row_text(const row_t *r) {
  char lag[64] = "caught up";
  if (r->lag.behind)
    snprintf(lag, sizeof lag, "%s%lld, %.1f s", r->lag.at_least ? ">=" : "", (long long)r->lag.behind, r->lag.lag_s);
  printf("%-20s %-12s %10lld %10lld  %-20s %-28s %s\n", r->lag.name, r->state, (long long)r->lag.checkpoint,
         (long long)r->lag.head, lag, r->fresh ? r->ctl.owner : "-", r->lease_owner[0] ? r->lease_owner : "-");
  if (r->fresh && r->ctl.parked) printf("%20s %lld event(s) set aside, retried\n", "", (long long)r->ctl.parked);
  if (r->ctl.paused && !r->fresh) printf("%20s paused (takes effect when a process runs it)\n", "");
  if (r->ctl.request > r->ctl.done) printf("%20s request %lld waits to be carried out\n", "", (long long)r->ctl.request);
  else if (r->ctl.result[0]) printf("%20s request %lld: %s\n", "", (long long)r->ctl.done, r->ctl.result);
}

static int list(admin_t *a) {
  admin_store_lag_t lags[8];
  int rc = admin_store_lags(a, lags);
  if (rc) return rc;
  row_t rows[8];
  size_t n = 0;
  for (; admin_projections[n].name && !rc; n++) {
    memset(&rows[n], 0, sizeof rows[n]);
    rows[n].lag = lags[n];
    rc = read_row(a, &rows[n]);
  }
  if (rc) return rc;
  bool problems = false;
  for (size_t i = 0; i < n; i++)
    problems |= rows[i].lag.behind > 0 || !strcmp(rows[i].state, "failing") || !strcmp(rows[i].state, "stopped");
  if (a->json) {
    bson_t out = BSON_INITIALIZER, arr;
    BSON_APPEND_ARRAY_BEGIN(&out, "projections", &arr);
    for (size_t i = 0; i < n; i++) row_json(&arr, i, &rows[i]);
    bson_append_array_end(&out, &arr);
    admin_print_json(stdout, &out);
    bson_destroy(&out);
  } else {
    printf("%-20s %-12s %10s %10s  %-20s %-28s %s\n", "projection", "state", "checkpoint", "head",
           "behind (events, age)", "reported by", "lease owner");
    for (size_t i = 0; i < n; i++) row_text(&rows[i]);
  }
  return problems ? ADMIN_PROBLEMS : ADMIN_OK;
}

/* Waits until the projection's report says `done`: a request carried out
 * (request > 0), or its pause as asked (request 0) in a report written
 * after `since`. */
static bool wait_for(admin_t *a, const char *name, int64_t request, bool paused, int64_t since, long long secs,
                     cqrs_projection_control_t *c) {
  int64_t deadline = cqrs_now_ms() + secs * 1000;
  for (;;) {
    bool found;
    cqrs_error_t err;
    if (cqrs_checkpoints_control_load(a->cp, name, c, &found, &err)) return false;
    bool ok = request ? c->done >= request : c->reported_at > since && !strcmp(c->state, "paused") == paused;
    if (ok) return true;
    if (cqrs_now_ms() >= deadline) return false;
    uv_sleep(100);
  }
}

/* A projection of the tool's, or a process manager's checkpoint name
 * ("process:" and a name that fits a checkpoint's). */
/* Whether a request's answer says it was done: the framework answers
 * "reset to #N", "skipped #N: dead-lettered" or "replayed #N: handled"
 * (events/control.c, parked.c); anything else (refused, not skipped,
 * failed again, superseded, let go of) is not done. */
static bool succeeded(const char *result) {
  long long n;
  char rest[32];
  return sscanf(result, "reset to #%lld%1s", &n, rest) == 1 ||
         sscanf(result, "skipped #%lld: dead-letter%1s", &n, rest) == 2 ||
         (sscanf(result, "replayed #%lld: %31s", &n, rest) == 2 && !strcmp(rest, "handled"));
}

static bool known(const char *name) {
  size_t len = strlen(name);
  return admin_projection_find(name) || (!strncmp(name, "process:", 8) && len > 8 && len < CQRS_NAME_MAX);
}

int admin_projections_cmd(admin_t *a, int argc, char **argv) {
  static const char *const specs[] = {"to=", "wait=", NULL};
  admin_args_t args;
  int rc = admin_parse(a, argc, argv, specs, usage, 0, 3, &args);
  if (rc) return rc < 0 ? ADMIN_OK : rc;
  const char *verb = args.npos ? args.pos[0] : "list";
  long long secs = 10, position = 0;
  if (args.vals[1] && admin_int("--wait", args.vals[1], 0, 3600, &secs)) return ADMIN_USAGE;
  if (!strcmp(verb, "list")) {
    if (args.npos > 1 || args.vals[0]) {
      admin_err("projections list takes no argument (see projections --help)");
      return ADMIN_USAGE;
    }
    if ((rc = admin_connect(a, NULL))) return rc;
    return list(a);
  }
  bool pause = !strcmp(verb, "pause"), resume = !strcmp(verb, "resume"), reset = !strcmp(verb, "reset"),
       skip = !strcmp(verb, "skip"), replay = !strcmp(verb, "replay");
  int want = skip || replay ? 3 : 2;
  if (!pause && !resume && !reset && !skip && !replay) {
    admin_err("projections: expected list, pause, resume, reset, skip or replay (see projections --help)");
    return ADMIN_USAGE;
  }
  if (args.npos != want || (reset != (args.vals[0] != NULL))) {
    admin_err("projections %s: %s (see projections --help)", verb,
              reset ? "give --to POSITION and NAME" : want == 3 ? "give POSITION and NAME" : "give NAME");
    return ADMIN_USAGE;
  }
  if ((reset && admin_int("--to", args.vals[0], 0, INT64_MAX, &position)) ||
      (want == 3 && admin_int("POSITION", args.pos[1], 1, INT64_MAX, &position)))
    return ADMIN_USAGE;
  const char *name = args.pos[want - 1];
  if (!known(name)) {
    admin_err("projections: unknown projection '%s' (billing.invoices, billing.balances, process:NAME)", name);
    return ADMIN_USAGE;
  }
  if ((rc = admin_connect(a, NULL))) return rc;
  cqrs_error_t err;
  int64_t request = 0, since = cqrs_now_ms();
  cqrs_projection_action_t action = reset ? CQRS_PROJECTION_RESET
                                    : skip  ? CQRS_PROJECTION_SKIP
                                            : CQRS_PROJECTION_REPLAY;
  cqrs_code_t crc = pause || resume ? cqrs_projection_pause(a->cp, name, pause, &err)
                                    : cqrs_projection_request(a->cp, name, action, position, &request, &err);
  if (crc) return admin_cqrs_error("write the control record", &err);
  char what[96];
  if (reset) snprintf(what, sizeof what, "reset to #%lld", position);
  else if (want == 3) snprintf(what, sizeof what, "%s of #%lld", verb, position);
  else snprintf(what, sizeof what, "%s", verb);
  char audited[32];
  snprintf(audited, sizeof audited, "projection.%s", verb);
  admin_audit(a, audited, name, what);
  cqrs_projection_control_t c;
  memset(&c, 0, sizeof c);
  bool acted = secs > 0 && wait_for(a, name, request, pause, since, secs, &c);
  /* A skip of an event not yet reached is taken, not yet carried out. */
  char later[CQRS_PROJECTION_RESULT_MAX];
  snprintf(later, sizeof later, "#%lld to be skipped when it comes", position);
  bool taken = !acted && skip && c.reported_at > since && c.done < request && !strcmp(c.result, later);
  bool ok = acted ? !request || succeeded(c.result) : taken || secs == 0;
  if (a->json) {
    bson_t out = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&out, "projection", name);
    BSON_APPEND_UTF8(&out, "action", verb);
    if (request) BSON_APPEND_INT64(&out, "position", position);
    BSON_APPEND_INT64(&out, "request", request);
    BSON_APPEND_BOOL(&out, "actedOn", acted);
    BSON_APPEND_BOOL(&out, "pending", taken);
    BSON_APPEND_BOOL(&out, "ok", ok);
    if (acted || taken) {
      BSON_APPEND_UTF8(&out, "state", c.state);
      BSON_APPEND_UTF8(&out, "by", c.owner);
      if (request) BSON_APPEND_UTF8(&out, "result", c.result);
    }
    admin_print_json(stdout, &out);
    bson_destroy(&out);
  } else if (acted && !request) {
    printf("%s: %s (%s, by %s)\n", name, pause ? "paused" : "resumed", c.state, c.owner);
  } else if (acted || taken) {
    printf("%s: request %lld (%s) %s: %s (%s, by %s)\n", name, (long long)request, what,
           taken ? "taken" : ok ? "carried out" : "not carried out", c.result, c.state, c.owner);
  } else if (secs > 0) {
    printf("%s: %s recorded%s; no running process acted on it within %lld s (one will when it runs %s)\n", name, what,
           request ? " as a request" : "", secs, name);
  } else {
    printf("%s: %s recorded\n", name, what);
  }
  return ok ? ADMIN_OK : ADMIN_PROBLEMS;
}
