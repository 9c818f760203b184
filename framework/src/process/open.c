/* Process managers: what the runtime knows of each instance, the requests
 * that carry inputs to it, and the reports that bring it up to date. */
#include <stdio.h>

#include "process/process-private.h"

static void report_clear(pm_report_t *r) {
  for (size_t i = 0; i < CQRS_PROCESS_STEPS_MAX; i++) cqrs_event_unref(r->awaited[i]);
  memset(r, 0, sizeof *r);
}

void cqrs__process_report_fill(pm_report_t *r, const pm_instance_t *in) {
  report_clear(r);
  r->started = in->started;
  r->ended = in->ended;
  r->first_position = in->first_position;
  memcpy(r->correlation, in->correlation, sizeof r->correlation);
  for (size_t i = 0; i < CQRS_PROCESS_STEPS_MAX; i++) {
    if (in->steps[i].status != STEP_SENT || !in->steps[i].sent) continue;
    r->awaited[i] = cqrs_event_ref(in->steps[i].sent);
    r->occurrence[i] = in->steps[i].count;
  }
  memcpy(r->deadlines, in->deadlines, sizeof r->deadlines);
}

void cqrs__process_request_free(pm_request_t *req) {
  if (!req) return;
  cqrs_event_unref(req->input.event);
  report_clear(&req->report);
  cqrs__free(req);
}

open_t *cqrs__process_open_get(cqrs__process_t *rt, const char *instance) {
  open_t *o;
  HASH_FIND_STR(rt->open, instance, o);
  if (o) return o;
  if (!(o = cqrs__calloc(1, sizeof *o))) return NULL;
  snprintf(o->id, sizeof o->id, "%s", instance);
  CQRS_HASH_TRY(HASH_ADD_STR(rt->open, id, o));
  if (CQRS_HASH_FAILED()) {
    cqrs__free(o);
    return NULL;
  }
  return o;
}

void cqrs__process_open_free(open_t *o) {
  for (size_t i = 0; i < CQRS_PROCESS_STEPS_MAX; i++) cqrs_event_unref(o->steps[i].sent);
  while (o->queue) {
    pm_request_t *q = o->queue;
    o->queue = q->next;
    cqrs__process_request_free(q);
  }
  cqrs__free(o);
}

/* Forgets an instance that is neither open nor waited on (a reload due is
 * a wait, unless the instance `ended`). */
void cqrs__process_open_maybe_drop(cqrs__process_t *rt, open_t *o, bool ended) {
  if (o->busy || o->queue || (!ended && (o->started || o->resume_at))) return;
  for (size_t i = 0; i < CQRS_PROCESS_STEPS_MAX; i++) {
    if (o->steps[i].inflight) return;
  }
  HASH_DEL(rt->open, o);
  cqrs__process_open_free(o);
}

pm_request_t *cqrs__process_request_new(cqrs__process_t *rt, const char *instance, int kind, const char *what) {
  pm_request_t *req = cqrs__calloc(1, sizeof *req);
  if (!req) return NULL;
  req->rt = rt;
  snprintf(req->instance, sizeof req->instance, "%s", instance);
  snprintf(req->what, sizeof req->what, "%s", what ? what : "");
  req->input.kind = kind;
  return req;
}

/* Brings the runtime's view of one instance in line with a report. */
void cqrs__process_apply_report(open_t *o, pm_report_t *rep) {
  o->held_at = 0;
  o->started = rep->started && !rep->ended;
  o->first_position = rep->first_position;
  memcpy(o->correlation, rep->correlation, sizeof o->correlation);
  for (size_t i = 0; i < CQRS_PROCESS_STEPS_MAX; i++) {
    open_step_t *st = &o->steps[i];
    if (st->inflight) continue; /* its completion decides */
    if (!rep->awaited[i]) {
      cqrs_event_unref(st->sent);
      st->sent = NULL;
      continue;
    }
    if (st->sent && st->occurrence == rep->occurrence[i]) continue; /* known, maybe waiting to retry */
    cqrs_event_unref(st->sent);
    st->sent = rep->awaited[i];
    rep->awaited[i] = NULL;
    st->occurrence = rep->occurrence[i];
    st->attempts = 0;
    st->retry_at = 0;
  }
  for (size_t i = 0; i < CQRS_PROCESS_DEADLINES_MAX; i++) {
    if (strcmp(o->deadlines[i].name, rep->deadlines[i].name) || o->deadlines[i].at != rep->deadlines[i].at)
      o->deadline_due[i] = false;
  }
  memcpy(o->deadlines, rep->deadlines, sizeof o->deadlines);
  if (rep->ended) memset(o->deadlines, 0, sizeof o->deadlines);
}
