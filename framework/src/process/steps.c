/* Process managers: the refusals of steps, recorded under the step's id
 * (cqrs__step_settle, which the dispatcher calls after a step's handler). */
#include <stdio.h>

#include "process/process-private.h"

typedef struct refusal {
  int32_t code;
  char name[CQRS_NAME_MAX];
  char message[CQRS_MESSAGE_MAX];
} refusal_t;

static const cqrs_field_t refusal_fields[] = {CQRS_INT32(refusal_t, code, "code", 0),
                                              CQRS_STRING(refusal_t, name, "name", 0),
                                              CQRS_STRING(refusal_t, message, "message", 0), CQRS_FIELDS_END};
static const cqrs_event_type_t refused_type = {.name = "cqrs.step.refused", .schema_version = 1,
                                               .payload_size = sizeof(refusal_t), .fields = refusal_fields};
static void no_apply(void *state, const cqrs_event_t *e) {
  CQRS__UNUSED(state);
  CQRS__UNUSED(e);
}
static const cqrs_apply_entry_t refusal_apply[] = {{&refused_type, no_apply}, {NULL, NULL}};
static const cqrs_aggregate_type_t refusal_stream = {.name = "cqrs.step", .state_size = 1, .apply = refusal_apply};

bool cqrs__code_transient(const cqrs_error_t *err) {
  cqrs_code_t code = err->code;
  if (code == CQRS_ESTORE) return cqrs_error_transient(err); /* the store said which */
  return code == CQRS_ECLOSED || code == CQRS_ENOMEM || code == CQRS_ECONFLICT || code == CQRS_ETIMEOUT;
}

static bool read_refusal(const cqrs_event_t *e, void *data) {
  if (e->type == &refused_type) *(refusal_t *)data = *(const refusal_t *)e->payload;
  return false;
}

/* Reads the refusal recorded under `id`: CQRS_OK with ->code set, or with
 * ->code 0 when none was. */
static cqrs_code_t find_refusal(cqrs_store_t *store, const char *id, refusal_t *out, cqrs_error_t *err) {
  memset(out, 0, sizeof *out);
  return cqrs_store_read_stream(store, refusal_stream.name, id, 1, read_refusal, out, err);
}

static void refusal_to_error(const refusal_t *f, cqrs_code_t *rc, cqrs_error_t *err) {
  *rc = (cqrs_code_t)f->code;
  if (f->code == CQRS_EREJECTED) {
    cqrs_reject(err, f->name, "%s", f->message);
  } else {
    cqrs_error_set(err, *rc, "%s", f->message);
  }
}

void cqrs__step_settle(cqrs_store_t *store, const cqrs_clock_t *clock, const cqrs_command_t *cmd, cqrs_code_t *rc,
                       cqrs_result_t *res, cqrs_error_t *err) {
  refusal_t f;
  cqrs_error_t e;
  if (*rc == CQRS_OK && !res->duplicate) return; /* the first answer under this id: accepted */
  if (*rc == CQRS_OK) {
    /* A duplicate: what committed under this id may be a refusal. */
    if (find_refusal(store, cmd->id, &f, &e)) {
      *rc = cqrs_error_set(err, CQRS_ESTORE, "cannot tell how step %s ended: %.180s", cmd->id, e.message);
    } else if (f.code) {
      res->duplicate = false;
      refusal_to_error(&f, rc, err);
    }
    return;
  }
  if (err->code != *rc || cqrs__code_transient(err) || (int)*rc < 0 || *rc >= CQRS_CODE_COUNT) return;
  memset(&f, 0, sizeof f);
  f.code = (int32_t)*rc;
  snprintf(f.name, sizeof f.name, "%s", err->name);
  snprintf(f.message, sizeof f.message, "%s", err->message);
  cqrs_envelope_t *env;
  cqrs_event_t *ev = NULL;
  cqrs_code_t w = cqrs_envelope_new(refusal_stream.name, cmd->id, cmd->id, cmd->correlation_id, &env, &e);
  if (!w) {
    w = cqrs_event_new(&refused_type, env, NULL, 1, cqrs_clock_now_ms(clock), &f, &ev, &e);
    cqrs_envelope_unref(env);
  }
  cqrs_append_result_t ar = {0};
  if (!w) {
    cqrs_append_t req = {refusal_stream.name, cmd->id, 0, cmd->id, &ev, 1};
    w = cqrs_store_append(store, &req, &ar, &e);
  }
  cqrs_event_unref(ev);
  if (w == CQRS_ECONFLICT) ar.duplicate = true; /* a refusal is there already */
  if (w && w != CQRS_ECONFLICT) {
    /* Not recorded: not an outcome yet; the step is sent again later. */
    *rc = cqrs_error_set(err, CQRS_ESTORE, "step %s refused, but the refusal was not recorded: %.160s", cmd->id,
                         e.message);
    return;
  }
  if (!ar.duplicate) return; /* recorded: this refusal is the outcome */
  /* Something else committed under this id first: that is the outcome. */
  if (find_refusal(store, cmd->id, &f, &e)) {
    *rc = cqrs_error_set(err, CQRS_ESTORE, "cannot tell how step %s ended: %.180s", cmd->id, e.message);
  } else if (f.code) {
    refusal_to_error(&f, rc, err);
  } else {
    *rc = CQRS_OK;
    cqrs_error_clear(err);
    res->duplicate = true;
  }
}

cqrs_code_t cqrs__step_refusals_add(cqrs_registry_t *reg, cqrs_error_t *err) {
  cqrs_code_t rc = cqrs_registry_add_aggregate(reg, &refusal_stream, err);
  if (!rc) rc = cqrs_registry_add_event(reg, &refused_type, err);
  return rc;
}
