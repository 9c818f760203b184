/* Process managers: the pure decide-and-record of an instance, and the
 * decision API its handlers call (cqrs_process_send, _schedule, ...). */
#include <stdio.h>

#include "process/process-private.h"

struct cqrs_process {
  const pm_type_t *pm;
  const char *id;
  const pm_instance_t *in;
  void *user;
  int64_t now;
  int outcome_of; /* the step whose outcome is the input, else -1 */
  int sends[CQRS_PROCESS_STEPS_MAX];
  unsigned char *payloads[CQRS_PROCESS_STEPS_MAX];
  size_t nsends;
  pm_deadline_t sched[CQRS_PROCESS_DEADLINES_MAX];
  size_t nsched;
  bool end;
};

cqrs_code_t cqrs_process_send(cqrs_process_t *p, const char *step, const void *payload, cqrs_error_t *err) {
  if (!p || !step || !payload) return cqrs_error_set(err, CQRS_EINVAL, "NULL process, step or payload");
  int i = cqrs__process_step_index(p->pm, step);
  if (i < 0) return cqrs_error_set(err, CQRS_EINVAL, "process %s has no step %.64s", p->pm->def->name, step);
  if (p->in->steps[i].status == STEP_SENT && p->outcome_of != i)
    return cqrs_error_set(err, CQRS_ESTATE, "step %s of %s is still in flight", step, p->id);
  for (size_t k = 0; k < p->nsends; k++) {
    if (p->sends[k] == i) return cqrs_error_set(err, CQRS_ESTATE, "step %s decided twice", step);
  }
  const cqrs_command_type_t *type = p->pm->def->steps[i].command;
  cqrs_error_t e;
  cqrs_error_clear(&e);
  if (cqrs_fields_validate(type->fields, payload, &e) || (type->validate && type->validate(payload, &e)))
    return cqrs_error_set(err, CQRS_EINVALID_COMMAND, "step %s: %.200s", step, e.message);
  unsigned char *copy = cqrs__malloc(type->payload_size);
  if (!copy) return cqrs_error_set(err, CQRS_ENOMEM, "cannot copy a step's payload");
  memcpy(copy, payload, type->payload_size);
  p->sends[p->nsends] = i;
  p->payloads[p->nsends++] = copy;
  return CQRS_OK;
}

static cqrs_code_t schedule(cqrs_process_t *p, const char *name, int64_t at, cqrs_error_t *err) {
  if (!p || !cqrs__process_name_ok(name, ""))
    return cqrs_error_set(err, CQRS_EINVAL, "NULL process or bad deadline name");
  if (strlen(name) > CQRS_PROCESS_DEADLINE_NAME_MAX)
    return cqrs_error_set(err, CQRS_ETOO_LARGE, "deadline name %.64s is over %d bytes", name,
                          CQRS_PROCESS_DEADLINE_NAME_MAX);
  size_t live = 0;
  for (size_t i = 0; i < CQRS_PROCESS_DEADLINES_MAX; i++) live += p->in->deadlines[i].at != 0;
  for (size_t i = 0; i < p->nsched; i++) {
    if (!strcmp(p->sched[i].name, name)) {
      p->sched[i].at = at;
      return CQRS_OK;
    }
  }
  if (p->nsched == CQRS_PROCESS_DEADLINES_MAX || (at && live + p->nsched >= CQRS_PROCESS_DEADLINES_MAX))
    return cqrs_error_set(err, CQRS_ETOO_LARGE, "an instance holds at most %d deadlines", CQRS_PROCESS_DEADLINES_MAX);
  snprintf(p->sched[p->nsched].name, CQRS_NAME_MAX, "%s", name);
  p->sched[p->nsched++].at = at;
  return CQRS_OK;
}

cqrs_code_t cqrs_process_schedule(cqrs_process_t *p, const char *name, int64_t at_ms, cqrs_error_t *err) {
  if (at_ms <= 0) return cqrs_error_set(err, CQRS_EINVAL, "a deadline needs a time after the epoch");
  return schedule(p, name, at_ms, err);
}

cqrs_code_t cqrs_process_cancel(cqrs_process_t *p, const char *name, cqrs_error_t *err) {
  return schedule(p, name, 0, err);
}

void cqrs_process_end(cqrs_process_t *p) {
  if (p) p->end = true;
}
const char *cqrs_process_id(const cqrs_process_t *p) { return p ? p->id : NULL; }
int64_t cqrs_process_now(const cqrs_process_t *p) { return p ? p->now : 0; }

const cqrs_process_route_t *cqrs__process_find_route(const pm_type_t *pm, const cqrs_event_type_t *type) {
  for (const cqrs_process_route_t *r = pm->def->routes; r->type; r++) {
    if (r->type == type) return r;
  }
  return NULL;
}

static void decision_free(cqrs_process_t *p) {
  for (size_t i = 0; i < p->nsends; i++) cqrs__free(p->payloads[i]);
  cqrs__free(p->user);
}

/* Compares what the state records (its fields), not its bytes: padding and
 * bytes past a string's end are nobody's business. */
static bool state_changed(const pm_type_t *pm, const void *before, const void *after) {
  bson_t a = BSON_INITIALIZER, b = BSON_INITIALIZER;
  bool changed = cqrs_fields_encode(pm->def->state_fields, before, &a, NULL) ||
                 cqrs_fields_encode(pm->def->state_fields, after, &b, NULL) || !bson_equal(&a, &b);
  bson_destroy(&a);
  bson_destroy(&b);
  return changed;
}

/* Records `rec` and what the handler decided on `agg`. */
static cqrs_code_t record(cqrs_aggregate_t *agg, const pm_type_t *pm, cqrs_process_t *p, const pm_received_t *rec,
                          cqrs_error_t *err) {
  const pm_instance_t *in = cqrs_aggregate_state_const(agg);
  cqrs_code_t rc = cqrs_aggregate_raise(agg, &pm->kinds[0].pub, rec, err);
  if (!rc && pm->def->state_size && state_changed(pm, in->user, p->user))
    rc = cqrs_aggregate_raise(agg, &pm->kinds[1].pub, p->user, err);
  for (size_t i = 0; !rc && i < p->nsends; i++)
    rc = cqrs_aggregate_raise(agg, &pm->steps[p->sends[i]].pub, p->payloads[i], err);
  for (size_t i = 0; !rc && i < p->nsched; i++) {
    if (p->sched[i].at || cqrs__process_deadline_find(in->deadlines, p->sched[i].name))
      rc = cqrs_aggregate_raise(agg, &pm->kinds[2].pub, &p->sched[i], err);
  }
  if (!rc && p->end) rc = cqrs_aggregate_raise(agg, &pm->kinds[3].pub, &(pm_ended_t){1}, err);
  return rc;
}

/* Decides what `input` does to instance `agg` and raises the events that
 * record it; an input the instance has already handled, or may not hear,
 * raises nothing. Pure but for the handler it calls. */
cqrs_code_t cqrs__process_decide(const pm_type_t *pm, cqrs_aggregate_t *agg, const pm_input_t *input, void *data,
                          cqrs_error_t *err) {
  const pm_instance_t *in = cqrs_aggregate_state_const(agg);
  if (in->ended || input->kind == IN_RESUME) return CQRS_OK;
  pm_received_t rec;
  memset(&rec, 0, sizeof rec);
  rec.kind = input->kind;
  cqrs_process_t p = {.pm = pm, .id = cqrs_aggregate_id(agg), .in = in, .outcome_of = -1};
  if (input->kind == IN_EVENT) {
    const cqrs_event_t *e = input->event;
    if ((!in->started && !input->route->starts) || (in->started && e->position <= in->last_position))
      return CQRS_OK;
    snprintf(rec.key, sizeof rec.key, "%s", e->type->name);
    memcpy(rec.event_id, e->id, sizeof rec.event_id);
    snprintf(rec.aggregate, sizeof rec.aggregate, "%s", cqrs_event_aggregate_id(e));
    rec.position = e->position;
    snprintf(rec.correlation, sizeof rec.correlation, "%s",
             in->started ? in->correlation : cqrs_event_correlation_id(e));
    p.now = e->timestamp;
  } else if (input->kind == IN_STEP) {
    const pm_step_state_t *st = &in->steps[input->step];
    if (st->status != STEP_SENT || st->count != input->occurrence) return CQRS_OK;
    snprintf(rec.key, sizeof rec.key, "%s", pm->def->steps[input->step].name);
    rec.occurrence = input->occurrence;
    rec.status = input->status;
    p.outcome_of = input->step;
    memcpy(rec.reason, input->reason, sizeof rec.reason);
    p.now = input->now;
  } else {
    const pm_deadline_t *dl = cqrs__process_deadline_find(in->deadlines, input->deadline);
    if (!dl || dl->at != input->at) return CQRS_OK;
    memcpy(rec.key, input->deadline, sizeof rec.key);
    rec.at = input->at;
    p.now = input->at;
  }
  p.user = cqrs__calloc(1, pm->def->state_size ? pm->def->state_size : 1);
  if (!p.user) return cqrs_error_set(err, CQRS_ENOMEM, "cannot copy a process state");
  memcpy(p.user, in->user, pm->def->state_size);
  cqrs_code_t rc;
  if (input->kind == IN_EVENT) {
    rc = input->route->handle ? input->route->handle(&p, p.user, input->event, data, err) : CQRS_OK;
  } else if (input->kind == IN_STEP) {
    cqrs_step_outcome_t o = {rec.key, (cqrs_step_status_t)input->status, input->reason};
    rc = pm->def->on_step(&p, p.user, &o, data, err);
  } else {
    rc = pm->def->on_deadline ? pm->def->on_deadline(&p, p.user, input->deadline, data, err) : CQRS_OK;
  }
  if (!rc) rc = record(agg, pm, &p, &rec, err);
  decision_free(&p);
  return rc;
}
