/* Process managers: tests without a loop (cqrs_process_test_*). */
#include <stdio.h>

#include "process/process-private.h"

struct cqrs_process_test {
  cqrs_registry_t *reg;
  const pm_type_t *pm;
  cqrs_aggregate_t *agg;
  void *data;
  int64_t position;
  cqrs_clock_t *own;   /* manual, the test's own: the default */
  cqrs_clock_t *clock; /* what the inputs' times come from: `own` or one set */
  size_t recorded, recorded_cap;
  const cqrs_event_t **recorded_events; /* what the last call recorded (several inputs: an advance) */
};

cqrs_code_t cqrs_process_test_new(const cqrs_process_type_t *type, const char *id, void *data,
                                  cqrs_process_test_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  cqrs_process_test_t *t = cqrs__calloc(1, sizeof *t);
  if (!t || cqrs_registry_new(&t->reg, NULL)) {
    cqrs__free(t);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot create a process test");
  }
  cqrs_code_t rc = cqrs_registry_add_process(t->reg, type, err);
  if (!rc) {
    char stream[CQRS_NAME_MAX];
    snprintf(stream, sizeof stream, "process:%s", type->name);
    t->pm = cqrs__registry_kept(t->reg, stream);
    rc = cqrs_aggregate_new(&t->pm->agg, id, &t->agg, err);
  }
  if (!rc) rc = cqrs_clock_manual_new(cqrs_now_ms(), &t->own, err);
  if (rc) {
    cqrs_process_test_destroy(t);
    return rc;
  }
  t->data = data;
  cqrs_process_test_set_clock(t, NULL);
  *out = t;
  return CQRS_OK;
}

static void test_forget(cqrs_process_test_t *t) {
  for (size_t i = 0; i < t->recorded; i++) cqrs_event_unref(t->recorded_events[i]);
  t->recorded = 0;
}

void cqrs_process_test_destroy(cqrs_process_test_t *t) {
  if (!t) return;
  test_forget(t);
  cqrs_aggregate_destroy(t->agg);
  cqrs__free(t->recorded_events);
  cqrs_registry_destroy(t->reg);
  cqrs_clock_destroy(t->own);
  cqrs__free(t);
}

void cqrs_process_test_set_clock(cqrs_process_test_t *t, cqrs_clock_t *clock) {
  if (!t) return;
  t->clock = clock ? clock : t->own;
  cqrs__aggregate_set_cause(t->agg, NULL, NULL, t->clock);
}

cqrs_clock_t *cqrs_process_test_clock(cqrs_process_test_t *t) { return t ? t->clock : NULL; }

/* Decides on one input and keeps what it recorded, after what the inputs
 * of the same call recorded before (`first`: none, forget the last call's). */
static cqrs_code_t test_input(cqrs_process_test_t *t, const pm_input_t *in, bool first, cqrs_error_t *err) {
  if (first) test_forget(t);
  cqrs_code_t rc = cqrs__process_decide(t->pm, t->agg, in, t->data, err);
  size_t n = cqrs_aggregate_pending_count(t->agg);
  if (!rc && t->recorded + n > t->recorded_cap) {
    size_t cap = 2 * (t->recorded + n);
    const cqrs_event_t **grown = cqrs__realloc(t->recorded_events, cap * sizeof *grown);
    if (grown) {
      t->recorded_events = grown;
      t->recorded_cap = cap;
    } else {
      rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot keep the events recorded");
    }
  }
  for (size_t i = 0; !rc && i < n; i++) {
    cqrs_event_t *e = cqrs__event_mut(cqrs_aggregate_pending(t->agg, i));
    e->position = ++t->position;
    t->recorded_events[t->recorded++] = cqrs_event_ref(e);
  }
  if (rc) {
    /* Nothing was recorded: start again from the events before. */
    cqrs__aggregate_clear_pending(t->agg);
    return rc;
  }
  cqrs__aggregate_committed(t->agg);
  return CQRS_OK;
}

cqrs_code_t cqrs_process_test_event(cqrs_process_test_t *t, const cqrs_event_type_t *type, const char *aggregate_id,
                                    const void *payload, cqrs_error_t *err) {
  if (!t || !type || !aggregate_id || !payload) return cqrs_error_set(err, CQRS_EINVAL, "NULL argument");
  const cqrs_process_route_t *route = cqrs__process_find_route(t->pm, type);
  if (!route) return cqrs_error_set(err, CQRS_EINVAL, "process %s routes no %s", t->pm->def->name, type->name);
  cqrs_envelope_t *env;
  cqrs_code_t rc = cqrs_envelope_new("test", aggregate_id, "test", "test", &env, err);
  if (rc) return rc;
  cqrs_event_t *e;
  rc = cqrs_event_new(type, env, NULL, 1, cqrs_clock_now_ms(t->clock), payload, &e, err);
  cqrs_envelope_unref(env);
  if (rc) return rc;
  e->position = ++t->position;
  pm_input_t in = {.kind = IN_EVENT, .event = e, .route = route};
  rc = test_input(t, &in, true, err);
  cqrs_event_unref(e);
  return rc;
}

cqrs_code_t cqrs_process_test_step(cqrs_process_test_t *t, const char *step, cqrs_step_status_t status,
                                   const char *reason, cqrs_error_t *err) {
  if (!t || !step) return cqrs_error_set(err, CQRS_EINVAL, "NULL test or step");
  int i = cqrs__process_step_index(t->pm, step);
  if (i < 0) return cqrs_error_set(err, CQRS_EINVAL, "no step %.64s", step);
  const pm_instance_t *st = cqrs_aggregate_state_const(t->agg);
  pm_input_t in = {.kind = IN_STEP, .step = i, .occurrence = st->steps[i].count, .status = (int32_t)status,
                   .now = cqrs_clock_now_ms(t->clock)};
  snprintf(in.reason, sizeof in.reason, "%s", reason ? reason : "");
  return test_input(t, &in, true, err);
}

cqrs_code_t cqrs_process_test_deadline(cqrs_process_test_t *t, const char *name, cqrs_error_t *err) {
  if (!t || !name) return cqrs_error_set(err, CQRS_EINVAL, "NULL test or deadline");
  const pm_instance_t *st = cqrs_aggregate_state_const(t->agg);
  const pm_deadline_t *dl = cqrs__process_deadline_find(st->deadlines, name);
  pm_input_t in = {.kind = IN_DEADLINE, .at = dl ? dl->at : -1};
  snprintf(in.deadline, sizeof in.deadline, "%s", name);
  return test_input(t, &in, true, err);
}

/* Fired by one advance: at most CQRS_PROCESS_DEADLINES_MAX are still set
 * (one a handler set again for the time it fired at). */
typedef struct fired {
  pm_deadline_t list[CQRS_PROCESS_DEADLINES_MAX];
  size_t n;
} fired_t;

static bool fired_has(const fired_t *f, const pm_deadline_t *dl) {
  for (size_t k = 0; k < f->n; k++) {
    if (f->list[k].at == dl->at && !strcmp(f->list[k].name, dl->name)) return true;
  }
  return false;
}

/* Keeps those of `f` still set in `live`, then adds `dl`. */
static void fired_add(fired_t *f, const pm_deadline_t *live, const pm_deadline_t *dl) {
  fired_t kept = {.n = 0};
  for (size_t i = 0; i < CQRS_PROCESS_DEADLINES_MAX; i++) {
    if (live[i].at && fired_has(f, &live[i])) kept.list[kept.n++] = live[i];
  }
  if (kept.n < CQRS_PROCESS_DEADLINES_MAX) kept.list[kept.n++] = *dl;
  *f = kept;
}

/* The live deadline due first by `now` (the earliest; of two at once, the
 * first in the state) that has not fired, or NULL. */
static const pm_deadline_t *due_first(const pm_deadline_t *list, int64_t now, const fired_t *f) {
  const pm_deadline_t *due = NULL;
  for (size_t i = 0; i < CQRS_PROCESS_DEADLINES_MAX; i++) {
    const pm_deadline_t *dl = &list[i];
    if (dl->at && dl->at <= now && !fired_has(f, dl) && (!due || dl->at < due->at)) due = dl;
  }
  return due;
}

#define ADVANCE_FIRINGS_MAX 10000

/* As the runtime does: each deadline due fires, the earliest first; one a
 * handler sets again for the time it fired at does not fire again, one set
 * for another time already past fires in the same call. */
cqrs_code_t cqrs_process_test_advance(cqrs_process_test_t *t, uint64_t ms, cqrs_error_t *err) {
  if (!t) return cqrs_error_set(err, CQRS_EINVAL, "NULL test");
  if (cqrs_clock_advance(t->clock, ms)) return cqrs_error_set(err, CQRS_EINVAL, "the test's clock is not manual");
  test_forget(t);
  int64_t now = cqrs_clock_now_ms(t->clock);
  fired_t fired = {.n = 0};
  for (int i = 0; i < ADVANCE_FIRINGS_MAX; i++) {
    const pm_instance_t *st = cqrs_aggregate_state_const(t->agg);
    const pm_deadline_t *dl = due_first(st->deadlines, now, &fired);
    if (!dl) return CQRS_OK;
    pm_input_t in = {.kind = IN_DEADLINE, .at = dl->at};
    memcpy(in.deadline, dl->name, sizeof in.deadline);
    pm_deadline_t was = *dl;
    cqrs_code_t rc = test_input(t, &in, false, err);
    if (rc) return rc;
    fired_add(&fired, ((const pm_instance_t *)cqrs_aggregate_state_const(t->agg))->deadlines, &was);
  }
  return cqrs_error_set(err, CQRS_ETOO_LARGE, "deadlines still due after %d fired: advance less at a time",
                        ADVANCE_FIRINGS_MAX);
}

size_t cqrs_process_test_sent_count(const cqrs_process_test_t *t) {
  size_t n = 0;
  for (size_t i = 0; t && i < t->recorded; i++) n += ((const pm_event_type_t *)t->recorded_events[i]->type)->kind == KIND_STEP;
  return n;
}

const char *cqrs_process_test_sent(const cqrs_process_test_t *t, size_t i, const cqrs_command_type_t **type,
                                   const void **payload) {
  for (size_t k = 0; t && k < t->recorded; k++) {
    const pm_event_type_t *et = (const pm_event_type_t *)t->recorded_events[k]->type;
    if (et->kind != KIND_STEP || i--) continue;
    if (type) *type = t->pm->def->steps[et->step].command;
    if (payload) *payload = t->recorded_events[k]->payload;
    return t->pm->def->steps[et->step].name;
  }
  return NULL;
}

bool cqrs_process_test_ended(const cqrs_process_test_t *t) {
  return t && ((const pm_instance_t *)cqrs_aggregate_state_const(t->agg))->ended;
}

int64_t cqrs_process_test_deadline_at(const cqrs_process_test_t *t, const char *name) {
  if (!t || !name) return 0;
  const pm_instance_t *st = cqrs_aggregate_state_const(t->agg);
  const pm_deadline_t *dl = cqrs__process_deadline_find(st->deadlines, name);
  return dl ? dl->at : 0;
}

const void *cqrs_process_test_state(const cqrs_process_test_t *t) {
  return t ? ((const pm_instance_t *)cqrs_aggregate_state_const(t->agg))->user : NULL;
}

size_t cqrs_process_test_recorded(const cqrs_process_test_t *t) { return t ? t->recorded : 0; }
