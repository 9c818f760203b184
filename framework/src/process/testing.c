/* Process managers: tests without a loop (cqrs_process_test_*). */
#include <stdio.h>

#include "process/process-private.h"

struct cqrs_process_test {
  cqrs_registry_t *reg;
  const pm_type_t *pm;
  cqrs_aggregate_t *agg;
  void *data;
  int64_t position;
  cqrs_clock_t *clock; /* NULL: the real one */
  size_t recorded;
  const cqrs_event_t *recorded_events[4 + CQRS_PROCESS_STEPS_MAX + CQRS_PROCESS_DEADLINES_MAX];
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
  if (rc) {
    cqrs_process_test_destroy(t);
    return rc;
  }
  t->data = data;
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
  cqrs_registry_destroy(t->reg);
  cqrs__free(t);
}

void cqrs_process_test_set_clock(cqrs_process_test_t *t, cqrs_clock_t *clock) {
  if (!t) return;
  t->clock = clock;
  cqrs__aggregate_set_cause(t->agg, NULL, NULL, clock);
}

static cqrs_code_t test_input(cqrs_process_test_t *t, const pm_input_t *in, cqrs_error_t *err) {
  test_forget(t);
  cqrs_code_t rc = cqrs__process_decide(t->pm, t->agg, in, t->data, err);
  size_t n = cqrs_aggregate_pending_count(t->agg);
  for (size_t i = 0; !rc && i < n; i++) {
    cqrs_event_t *e = cqrs__event_mut(cqrs_aggregate_pending(t->agg, i));
    e->position = ++t->position;
    if (t->recorded < sizeof t->recorded_events / sizeof t->recorded_events[0])
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
  rc = test_input(t, &in, err);
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
  return test_input(t, &in, err);
}

cqrs_code_t cqrs_process_test_deadline(cqrs_process_test_t *t, const char *name, cqrs_error_t *err) {
  if (!t || !name) return cqrs_error_set(err, CQRS_EINVAL, "NULL test or deadline");
  const pm_instance_t *st = cqrs_aggregate_state_const(t->agg);
  const pm_deadline_t *dl = cqrs__process_deadline_find(st->deadlines, name);
  pm_input_t in = {.kind = IN_DEADLINE, .at = dl ? dl->at : -1};
  snprintf(in.deadline, sizeof in.deadline, "%s", name);
  return test_input(t, &in, err);
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
