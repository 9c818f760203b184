/* Process managers: the runtime on a dispatcher. It sends inputs to
 * instances and the steps they decide, turns completions into inputs, fires
 * deadlines and retries on one timer, and routes the subscriber's events. */
#include <stdio.h>

#include "process/process-private.h"

#define RETRY_BASE_MS 100
#define RETRY_CAP_MS 30000

/* The internal command that carries an input to an instance. It is in no
 * registry, so no document from outside can name it, and its handler is
 * registered with the dispatcher directly (cqrs__dispatcher_register_internal). */
typedef struct pm_cmd {
  char instance[CQRS_ID_MAX];
  pm_request_t *req;
} pm_cmd_t;
static const cqrs_field_t cmd_fields[] = {CQRS_STRING(pm_cmd_t, instance, "instance", CQRS_F_REQUIRED),
                                          CQRS_FIELDS_END};
static const cqrs_command_type_t input_cmd = {
    .name = "cqrs.process.input", .payload_size = sizeof(pm_cmd_t), .fields = cmd_fields};

/* The internal command's handler: loads the instance, decides, reports. */
static cqrs_code_t handle_input(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  CQRS__UNUSED(data);
  const pm_cmd_t *c = cqrs_command_payload(cmd);
  pm_request_t *req = c->req;
  if (!cmd->internal || !req) return cqrs_error_set(err, CQRS_EINVALID_COMMAND, "%s is the framework's own", cmd->type->name);
  const pm_type_t *pm = req->rt->pm;
  cqrs_aggregate_t *agg;
  cqrs_code_t rc = cqrs_context_load(ctx, &pm->agg, c->instance, &agg, err);
  if (!rc) rc = cqrs__process_decide(pm, agg, &req->input, req->rt->data, err);
  if (!rc) cqrs__process_report_fill(&req->report, cqrs_aggregate_state_const(agg));
  return rc;
}

static void arm_timer(cqrs__process_t *rt);
/* Deadlines are wall times (UTC ms, recorded); retries and resumptions
 * share their timer, so they count on the same clock: the dispatcher's. */
static int64_t now_ms(const cqrs__process_t *rt) { return cqrs__clock_wall(rt->d->clock); }
static void send_steps(cqrs__process_t *rt, open_t *o);
static void on_input_done(const cqrs_result_t *r, void *data);

/* The lease went elsewhere: what this runtime knows of its instances is
 * the next holder's to rebuild (lease_changed forgets them; those with
 * work in flight go once it completes). */
static bool lease_gone(const cqrs__process_t *rt) { return rt->sub->lease.on && !rt->sub->lease.held; }

/* Puts the request on the wire; the instance's entry marks it busy. */
static cqrs_code_t dispatch(cqrs__process_t *rt, open_t *o, pm_request_t *req, cqrs_error_t *err) {
  pm_cmd_t c;
  memset(&c, 0, sizeof c);
  memcpy(c.instance, req->instance, sizeof c.instance);
  c.req = req;
  cqrs_command_t *cmd;
  cqrs_code_t rc = cqrs_command_new(&input_cmd, &c, &cmd, err);
  if (rc) return rc;
  if (req->what[0]) {
    cqrs__process_derive(cmd->id, rt->pm, req->instance, req->what);
  } else {
    cmd->id[0] = CQRS__RESERVED_ID_PREFIX; /* a fresh id: such an input records nothing */
  }
  const char *corr = o->correlation[0] ? o->correlation : NULL;
  if (!corr && req->input.event) corr = cqrs_event_correlation_id(req->input.event);
  if (corr) memcpy(cmd->correlation_id, corr, strlen(corr) + 1);
  if ((rc = rt->d->command.send(rt->d->command.self, cmd, on_input_done, req)))
    return cqrs_error_set(err, rc, "process %s cannot send an input: %s", rt->pm->def->name, cqrs_code_name(rc));
  o->busy = req;
  rt->inflight++;
  return CQRS_OK;
}

/* Sends an input to its instance, or queues it behind the one in flight.
 * Takes over `req` (freed on an error). The instance's entry stays, even on
 * an error: the caller, who may still hold it, decides whether it goes. */
static cqrs_code_t send_input(cqrs__process_t *rt, pm_request_t *req, cqrs_error_t *err) {
  open_t *o = cqrs__process_open_get(rt, req->instance);
  if (!o) {
    cqrs__process_request_free(req);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot track process instance %s", req->instance);
  }
  if (o->busy) {
    if (o->tail) {
      o->tail->next = req;
    } else {
      o->queue = req;
    }
    o->tail = req;
    return CQRS_OK;
  }
  cqrs_code_t rc = dispatch(rt, o, req, err);
  if (rc) cqrs__process_request_free(req);
  return rc;
}

static int64_t backoff(unsigned attempts) {
  int64_t ms = RETRY_BASE_MS;
  for (unsigned i = 1; i < attempts && ms < RETRY_CAP_MS; i++) ms *= 2;
  return ms < RETRY_CAP_MS ? ms : RETRY_CAP_MS;
}

static void on_input_done(const cqrs_result_t *r, void *data) {
  pm_request_t *req = data;
  cqrs__process_t *rt = req->rt;
  rt->inflight--;
  open_t *o;
  HASH_FIND_STR(rt->open, req->instance, o);
  o->busy = NULL;
  bool ended = false;
  if (cqrs_result_ok(r) && !r->duplicate) {
    ended = req->report.ended || !req->report.started;
    cqrs__process_apply_report(o, &req->report);
  } else if (!rt->closing) {
    /* A duplicate was recorded by an earlier run (this run's load was
     * stale: a write of a killed process landing late, another process),
     * and a failure may have recorded it too: either way, the instance
     * stays and is reloaded, and does what its stream says. Until then a
     * recorded event of an instance not known here holds the checkpoint,
     * or a crash before the reload would forget the instance for good. */
    o->resume_at = now_ms(rt) + (cqrs_result_ok(r) ? 0 : RETRY_BASE_MS * 10);
    if (req->from_sub && !o->started && cqrs_result_ok(r) && (!o->held_at || req->input.event->position < o->held_at))
      o->held_at = req->input.event->position;
    memset(o->deadline_due, 0, sizeof o->deadline_due);
    if (!req->from_sub && !cqrs_result_ok(r))
      cqrs_log(CQRS_LOG_WARNING, "process", "process %s/%s: input not recorded: %s", rt->pm->def->name, req->instance,
              r->error.message);
  }
  bool from_sub = req->from_sub, ok = cqrs_result_ok(r) && (!r->duplicate || !rt->closing);
  /* Closing, a duplicate is not followed up here: the event stays unhandled
   * (before the checkpoint), and the next start meets it again. */
  cqrs_error_t error = ok || !cqrs_result_ok(r) ? r->error : (cqrs_error_t){.code = CQRS_ECLOSED};
  cqrs__process_request_free(req);
  while (!rt->closing && o->queue && !o->busy) {
    pm_request_t *next = o->queue;
    if (!(o->queue = next->next)) o->tail = NULL;
    next->next = NULL;
    if (dispatch(rt, o, next, &error)) {
      if (next->from_sub) { /* the subscriber's event: it retries it */
        from_sub = true;
        ok = false;
      }
      cqrs__process_request_free(next);
    }
  }
  if (!rt->closing) send_steps(rt, o);
  cqrs__process_open_maybe_drop(rt, o, ended || lease_gone(rt));
  arm_timer(rt);
  cqrs__waiters_kick(rt->d->events); /* an instance may have ended (cqrs_process_wait) */
  /* Last: the subscriber may route its next event at once, to this
   * instance too, and the entry may go with it. */
  if (from_sub) cqrs__sub_complete(rt->sub, ok ? NULL : &error);
  if (rt->closing) cqrs__runtime_maybe_closed(rt->d);
}

/* ---- steps ---- */

typedef struct step_call {
  cqrs__process_t *rt;
  char instance[CQRS_ID_MAX];
  int step;
  int32_t occurrence;
} step_call_t;


static void on_step_done(const cqrs_result_t *r, void *data) {
  step_call_t *sc = data;
  cqrs__process_t *rt = sc->rt;
  rt->inflight--;
  open_t *o;
  HASH_FIND_STR(rt->open, sc->instance, o);
  open_step_t *st = &o->steps[sc->step];
  st->inflight = false;
  if (!rt->closing && st->sent && st->occurrence == sc->occurrence) {
    if (cqrs__code_transient(&r->error)) {
      st->retry_at = now_ms(rt) + backoff(++st->attempts);
    } else {
      char what[WHAT_MAX];
      snprintf(what, sizeof what, "in:s:%s:%d", rt->pm->def->steps[sc->step].name, (int)sc->occurrence);
      pm_request_t *req = cqrs__process_request_new(rt, sc->instance, IN_STEP, what);
      if (req) {
        req->input.step = sc->step;
        req->input.occurrence = sc->occurrence;
        req->input.now = now_ms(rt);
        req->input.status = cqrs_result_ok(r)         ? CQRS_STEP_ACCEPTED
                            : cqrs_result_rejected(r) ? CQRS_STEP_REJECTED
                                                      : CQRS_STEP_FAILED;
        if (!cqrs_result_ok(r)) snprintf(req->input.reason, sizeof req->input.reason, "%s", r->error.name);
        /* Not sent again while its outcome is on its way; if recording
         * fails, the instance is reloaded and the step sent again. */
        st->retry_at = INT64_MAX;
        if (send_input(rt, req, NULL)) o->resume_at = now_ms(rt) + RETRY_BASE_MS * 10;
      } else {
        o->resume_at = now_ms(rt) + RETRY_BASE_MS * 10;
      }
    }
  }
  cqrs__free(sc);
  cqrs__process_open_maybe_drop(rt, o, lease_gone(rt));
  arm_timer(rt);
  cqrs__waiters_kick(rt->d->events);
  if (rt->closing) cqrs__runtime_maybe_closed(rt->d);
}

static void send_step(cqrs__process_t *rt, open_t *o, int i) {
  open_step_t *st = &o->steps[i];
  const cqrs_command_type_t *type = rt->pm->def->steps[i].command;
  cqrs_command_t *cmd;
  step_call_t *sc = cqrs__calloc(1, sizeof *sc);
  if (!sc || cqrs_command_new(type, st->sent->payload, &cmd, NULL)) {
    cqrs__free(sc);
    st->retry_at = now_ms(rt) + backoff(++st->attempts);
    return;
  }
  sc->rt = rt;
  memcpy(sc->instance, o->id, sizeof sc->instance);
  sc->step = i;
  sc->occurrence = st->occurrence;
  cqrs__process_step_id(cmd->id, rt->pm, o->id, i, st->occurrence);
  cmd->settle = cqrs__step_settle;
  if (o->correlation[0]) memcpy(cmd->correlation_id, o->correlation, sizeof cmd->correlation_id);
  if (rt->d->command.send(rt->d->command.self, cmd, on_step_done, sc)) {
    cqrs__free(sc);
    st->retry_at = now_ms(rt) + backoff(++st->attempts);
    return;
  }
  st->inflight = true;
  st->retry_at = 0;
  rt->inflight++;
}

/* Under a lease, steps, deadlines and resumptions run only at its holder. */
/* Past the lease's deadline a holder acts no more, even before the lease
 * code has noticed (its tick) and told the process manager to let go. */
static bool owned(const cqrs__process_t *rt) { return !rt->sub->lease.on || cqrs__lease_in_time(&rt->sub->lease); }

/* Sends what the instance awaits and is not out already. */
static void send_steps(cqrs__process_t *rt, open_t *o) {
  if (rt->closing || !owned(rt) || o->busy || o->queue || o->resume_at) return;
  int64_t now = now_ms(rt);
  for (size_t i = 0; i < rt->pm->nsteps; i++) {
    open_step_t *st = &o->steps[i];
    if (st->sent && !st->inflight && st->retry_at <= now) send_step(rt, o, (int)i);
  }
}

/* ---- deadlines, retries and resumptions: one timer ---- */

static void resume(cqrs__process_t *rt, open_t *o) {
  o->resume_at = 0;
  for (size_t i = 0; i < CQRS_PROCESS_STEPS_MAX; i++) {
    if (!o->steps[i].inflight) o->steps[i].retry_at = 0;
  }
  pm_request_t *req = cqrs__process_request_new(rt, o->id, IN_RESUME, NULL);
  if (!req || send_input(rt, req, NULL)) o->resume_at = now_ms(rt) + RETRY_BASE_MS * 10;
}

static void fire_deadline(cqrs__process_t *rt, open_t *o, size_t i) {
  char what[WHAT_MAX];
  snprintf(what, sizeof what, "in:d:%s:%lld", o->deadlines[i].name, (long long)o->deadlines[i].at);
  pm_request_t *req = cqrs__process_request_new(rt, o->id, IN_DEADLINE, what);
  if (!req) return;
  memcpy(req->input.deadline, o->deadlines[i].name, sizeof req->input.deadline);
  req->input.at = o->deadlines[i].at;
  o->deadline_due[i] = true;
  if (send_input(rt, req, NULL)) o->deadline_due[i] = false;
}

static void timer_cb(uv_timer_t *t) {
  cqrs__process_t *rt = t->data;
  if (rt->closing || !owned(rt)) return;
  int64_t now = now_ms(rt);
  open_t *o, *tmp;
  HASH_ITER(hh, rt->open, o, tmp) {
    if (o->resume_at && o->resume_at <= now && !o->busy) {
      resume(rt, o);
      continue;
    }
    send_steps(rt, o);
    for (size_t i = 0; i < CQRS_PROCESS_DEADLINES_MAX; i++) {
      if (o->deadlines[i].at && o->deadlines[i].at <= now && !o->deadline_due[i]) fire_deadline(rt, o, i);
    }
  }
  arm_timer(rt);
}

/* Retries and resumptions hold the loop; deadlines alone do not, so that
 * uv_run returns when a far deadline is all that is left. */
static void arm_timer(cqrs__process_t *rt) {
  if (rt->closing) return;
  if (!owned(rt)) {
    cqrs__timer_stop(&rt->timer);
    return;
  }
  int64_t next = INT64_MAX, urgent = INT64_MAX;
  open_t *o, *tmp;
  HASH_ITER(hh, rt->open, o, tmp) {
    if (o->resume_at && !o->busy && o->resume_at < urgent) urgent = o->resume_at;
    for (size_t i = 0; i < CQRS_PROCESS_STEPS_MAX; i++) {
      const open_step_t *st = &o->steps[i];
      if (st->sent && !st->inflight && st->retry_at && st->retry_at < urgent) urgent = st->retry_at;
    }
    for (size_t i = 0; i < CQRS_PROCESS_DEADLINES_MAX; i++) {
      if (o->deadlines[i].at && !o->deadline_due[i] && o->deadlines[i].at < next) next = o->deadlines[i].at;
    }
  }
  if (urgent < next) next = urgent;
  if (next == INT64_MAX) {
    cqrs__timer_stop(&rt->timer);
    return;
  }
  if (urgent != INT64_MAX) {
    uv_ref((uv_handle_t *)&rt->timer.handle);
  } else {
    uv_unref((uv_handle_t *)&rt->timer.handle);
  }
  int64_t now = now_ms(rt);
  cqrs__timer_start(&rt->timer, timer_cb, next > now ? (uint64_t)(next - now) : 0, 0);
}

/* ---- the subscriber ---- */

static cqrs_code_t on_event(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  cqrs__process_t *rt = data;
  if (rt->closing) return cqrs_error_set(err, CQRS_ECLOSED, "process %s is closing", rt->pm->def->name);
  const cqrs_process_route_t *route = cqrs__process_find_route(rt->pm, e->type);
  if (!route) return CQRS_OK;
  char instance[CQRS_ID_MAX];
  if (route->route) {
    memset(instance, 0, sizeof instance);
    if (!route->route(e, instance, sizeof instance) || !instance[0] || instance[CQRS_ID_MAX - 1]) return CQRS_OK;
  } else {
    snprintf(instance, sizeof instance, "%s", cqrs_event_aggregate_id(e));
  }
  char what[WHAT_MAX];
  snprintf(what, sizeof what, "in:e:%s", e->id);
  pm_request_t *req = cqrs__process_request_new(rt, instance, IN_EVENT, what);
  if (!req) return cqrs_error_set(err, CQRS_ENOMEM, "cannot route an event");
  req->input.event = cqrs_event_ref(e);
  req->input.route = route;
  req->from_sub = true;
  cqrs_code_t rc = send_input(rt, req, err);
  if (rc) { /* the subscriber retries the event; an entry made for it alone goes */
    open_t *o;
    HASH_FIND_STR(rt->open, instance, o);
    if (o) cqrs__process_open_maybe_drop(rt, o, false);
  }
  return rc ? rc : CQRS__PENDING;
}

/* The lease went elsewhere: its holder reads the open instances again from
 * the checkpoint; what this runtime knows of them is forgotten (those with
 * work in flight once it completes), and rebuilt the same way if the lease
 * comes back. */
static void lease_changed(void *data, bool held) {
  cqrs__process_t *rt = data;
  if (held) return; /* the catch-up resumes the instances */
  cqrs__timer_stop(&rt->timer);
  open_t *o, *tmp;
  HASH_ITER(hh, rt->open, o, tmp) cqrs__process_open_maybe_drop(rt, o, true);
  cqrs__waiters_kick(rt->d->events);
}

/* The checkpoint never passes the first event of an open instance, so a
 * restart meets it again and resumes the instance. */
static int64_t checkpoint_at(void *data, int64_t handled) {
  cqrs__process_t *rt = data;
  int64_t at = handled;
  open_t *o, *tmp;
  HASH_ITER(hh, rt->open, o, tmp) {
    if (o->started && o->first_position - 1 < at) at = o->first_position - 1;
    if (o->held_at && o->held_at - 1 < at) at = o->held_at - 1;
  }
  return at;
}

/* ---- the component ---- */

static bool process_idle(const cqrs__component_t *c) { return ((const cqrs__process_t *)c)->inflight == 0; }

/* Closing: nothing new goes out; what is out completes; the rest waits in
 * the instances' streams for the next start. */
static void process_closing(cqrs__component_t *c) {
  cqrs__process_t *rt = (cqrs__process_t *)c;
  rt->closing = true;
  cqrs__timer_stop(&rt->timer);
  open_t *o, *tmp;
  HASH_ITER(hh, rt->open, o, tmp) {
    while (o->queue) {
      pm_request_t *q = o->queue;
      if (!(o->queue = q->next)) o->tail = NULL;
      if (q->from_sub) cqrs__sub_complete(rt->sub, &(cqrs_error_t){.code = CQRS_ECLOSED});
      cqrs__process_request_free(q);
    }
  }
}

static void process_close_handles(cqrs__component_t *c) {
  cqrs__process_t *rt = (cqrs__process_t *)c;
  cqrs__timer_close(rt->d, &rt->timer);
}

static void process_free(cqrs__component_t *c) {
  cqrs__process_t *rt = (cqrs__process_t *)c;
  open_t *o, *tmp;
  HASH_ITER(hh, rt->open, o, tmp) {
    HASH_DEL(rt->open, o);
    cqrs__process_open_free(o);
  }
  cqrs__free(rt);
}

static const cqrs__component_ops_t process_ops = {.name = "process",
                                                  .closing = process_closing,
                                                  .idle = process_idle,
                                                  .close_handles = process_close_handles,
                                                  .free = process_free};

cqrs_code_t cqrs_process_start(cqrs_dispatcher_t *d, const cqrs_process_type_t *def, void *data,
                               cqrs_checkpoints_t *cp, cqrs_error_t *err) {
  if (!d || !def || !cp) return cqrs_error_set(err, CQRS_EINVAL, "NULL dispatcher, process type or checkpoints");
  if (cqrs__runtime_closing(d)) return cqrs_error_set(err, CQRS_ECLOSED, "dispatcher is closing");
  char stream[CQRS_NAME_MAX];
  if (!def->name || strlen(def->name) > CQRS_PROCESS_NAME_MAX)
    return cqrs_error_set(err, CQRS_EUNKNOWN_TYPE, "process %.64s is not in the registry", def->name ? def->name : "");
  snprintf(stream, sizeof stream, "process:%s", def->name);
  const pm_type_t *pm = cqrs__registry_kept(d->reg, stream);
  if (!pm || pm->def != def)
    return cqrs_error_set(err, CQRS_EUNKNOWN_TYPE, "process %s is not in the registry", def->name);
  for (cqrs__process_t *p = d->procs; p; p = p->next) {
    if (p->pm == pm) return cqrs_error_set(err, CQRS_EDUPLICATE, "process %s runs already", def->name);
  }
  size_t ntypes = 0;
  while (def->routes[ntypes].type) ntypes++;
  const cqrs_event_type_t **types = cqrs__calloc(ntypes + 1, sizeof *types);
  cqrs__process_t *rt = cqrs__calloc(1, sizeof *rt);
  if (!types || !rt) {
    cqrs__free(types);
    cqrs__free(rt);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot start process %s", def->name);
  }
  for (size_t i = 0; i < ntypes; i++) types[i] = def->routes[i].type;
  rt->d = d;
  rt->pm = pm;
  rt->data = data;
  cqrs_code_t rc = d->command.handle(d->command.self, &input_cmd, handle_input, NULL, 0, err);
  if (rc == CQRS_EDUPLICATE) rc = CQRS_OK; /* a second process type on this dispatcher */
  const cqrs_projection_def_t proj = {pm->stream, types, on_event, rt, 0};
  if (!rc) rc = cqrs__projection_start_async(d, &proj, cp, checkpoint_at, &rt->sub, err);
  cqrs__free(types);
  if (rc) {
    cqrs__free(rt);
    return rc;
  }
  rt->sub->lease.changed = lease_changed;
  rt->sub->lease.changed_data = rt;
  cqrs__timer_init(d, &rt->timer, NULL, rt);
  uv_unref((uv_handle_t *)&rt->timer.handle);
  cqrs__runtime_handle_opened(d);
  cqrs__runtime_add(d, &rt->comp, &process_ops);
  rt->next = d->procs;
  d->procs = rt;
  return CQRS_OK;
}

size_t cqrs_process_open_count(const cqrs_dispatcher_t *d, const char *name) {
  if (!d || !name) return 0;
  for (const cqrs__process_t *p = d->procs; p; p = p->next) {
    if (strcmp(p->pm->def->name, name)) continue;
    size_t n = 0;
    open_t *o, *tmp;
    HASH_ITER(hh, p->open, o, tmp) n += o->started;
    return n;
  }
  return 0;
}
