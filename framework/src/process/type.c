/* Process managers: ids, name checks, and the registration of a process
 * type with the event types of its instances' streams. */
#include <stdio.h>

#include "process/process-private.h"

/* ---- ids ---- */

/* The id of input or step `what` of an instance: "~<process>/<what>" then
 * ":<instance>" (cqrs_id_derive, which hashes an instance that does not
 * fit), or, when that prefix is too long for cqrs_id_derive, "~<process>/#"
 * and a hash of prefix and instance. Nothing is cut: two inputs meet under
 * one id only if the 128-bit hash collides. The reserved '~' keeps every
 * outside command off these ids. `what` is a step name (letters, digits,
 * '_', '-', never "in"), "<step>.<occurrence>", or "in:<kind>:..." for an
 * input: no two of these read the same. */
void cqrs__process_derive(char out[CQRS_ID_MAX], const pm_type_t *pm, const char *instance, const char *what) {
  char prefix[2 * WHAT_MAX]; /* room for '~', a process name, '/' and any `what` */
  snprintf(prefix, sizeof prefix, "%c%s/%s", CQRS__RESERVED_ID_PREFIX, pm->def->name, what);
  if (cqrs_id_derive(out, prefix, instance, NULL) == CQRS_OK) return;
  uint64_t h[2];
  cqrs__hash128(prefix, instance, h);
  snprintf(out, CQRS_ID_MAX, "%c%s/#%016llx%016llx", CQRS__RESERVED_ID_PREFIX, pm->def->name,
           (unsigned long long)h[0], (unsigned long long)h[1]);
}

void cqrs__process_step_id(char out[CQRS_ID_MAX], const pm_type_t *pm, const char *instance, int step, int32_t occ) {
  char what[CQRS_ID_MAX];
  if (occ <= 1) {
    snprintf(what, sizeof what, "%s", pm->def->steps[step].name);
  } else {
    snprintf(what, sizeof what, "%s.%d", pm->def->steps[step].name, (int)occ);
  }
  cqrs__process_derive(out, pm, instance, what);
}

bool cqrs__process_name_ok(const char *s, const char *extra) {
  if (!s || !*s) return false;
  for (const char *p = s; *p; p++) {
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' ||
          *p == '-' || strchr(extra, *p)))
      return false;
  }
  return true;
}

static void pm_type_free(void *p) { cqrs__free(p); }

/* False when the type's name would not fit (check_def's limits keep it in). */
static bool kind_init(pm_event_type_t *t, const pm_type_t *pm, int kind, const char *suffix, size_t size,
                      const cqrs_field_t *fields, uint32_t version) {
  t->pm = pm;
  t->kind = kind;
  int n = snprintf(t->name, sizeof t->name, "%s.%s", pm->stream, suffix);
  t->pub = (cqrs_event_type_t){.name = t->name, .schema_version = version, .payload_size = size, .fields = fields};
  return n > 0 && (size_t)n < sizeof t->name;
}

static const cqrs_field_t no_fields[] = {CQRS_FIELDS_END};

static cqrs_code_t check_def(const cqrs_process_type_t *def, cqrs_error_t *err) {
  if (!def || !cqrs__process_name_ok(def->name, ".") || strlen(def->name) > CQRS_PROCESS_NAME_MAX)
    return cqrs_error_set(err, CQRS_EINVAL, "a process type needs a name of 1 to %d letters, digits, '_', '-', '.'",
                          CQRS_PROCESS_NAME_MAX);
  if (!CQRS__RESERVED_ZERO(def))
    return cqrs_error_set(err, CQRS_EINVAL, "process %s: reserved fields must be zero", def->name);
  if (!def->routes || !def->routes[0].type)
    return cqrs_error_set(err, CQRS_EINVAL, "process %s routes no event", def->name);
  if (def->state_size && !def->state_fields)
    return cqrs_error_set(err, CQRS_EINVAL, "process %s: a state needs state_fields", def->name);
  size_t n = 0;
  for (const cqrs_process_step_t *s = def->steps; s && s->name; s++, n++) {
    if (n == CQRS_PROCESS_STEPS_MAX)
      return cqrs_error_set(err, CQRS_ETOO_LARGE, "process %s: more than %d steps", def->name,
                            CQRS_PROCESS_STEPS_MAX);
    if (!cqrs__process_name_ok(s->name, "") || strlen(s->name) > CQRS_PROCESS_STEP_NAME_MAX || !strcmp(s->name, "in"))
      return cqrs_error_set(err, CQRS_EINVAL,
                            "process %s: step '%.64s' needs a name of 1 to %d letters, digits, '_', '-' (not 'in')",
                            def->name, s->name, CQRS_PROCESS_STEP_NAME_MAX);
    if (!s->command || s->command->payload_free)
      return cqrs_error_set(err, CQRS_EINVAL, "process %s: step %s needs a command type without payload_free",
                            def->name, s->name);
    for (const cqrs_process_step_t *t = def->steps; t < s; t++) {
      if (!strcmp(t->name, s->name))
        return cqrs_error_set(err, CQRS_EDUPLICATE, "process %s: two steps named %s", def->name, s->name);
    }
  }
  if (n && !def->on_step) return cqrs_error_set(err, CQRS_EINVAL, "process %s has steps but no on_step", def->name);
  return CQRS_OK;
}

/* The field tables of what an instance's stream records. */
static const cqrs_field_t received_fields[] = {
    CQRS_INT32(pm_received_t, kind, "kind", 0),
    CQRS_STRING(pm_received_t, key, "key", 0),
    CQRS_STRING(pm_received_t, event_id, "eventId", CQRS_F_OPTIONAL),
    CQRS_STRING(pm_received_t, aggregate, "aggregateId", CQRS_F_OPTIONAL),
    CQRS_INT64(pm_received_t, position, "position", CQRS_F_OPTIONAL),
    CQRS_INT32(pm_received_t, occurrence, "occurrence", CQRS_F_OPTIONAL),
    CQRS_INT32(pm_received_t, status, "status", CQRS_F_OPTIONAL),
    CQRS_STRING(pm_received_t, reason, "reason", CQRS_F_OPTIONAL),
    CQRS_STRING(pm_received_t, correlation, "correlationId", CQRS_F_OPTIONAL),
    CQRS_TIME(pm_received_t, at, "at", CQRS_F_OPTIONAL),
    CQRS_FIELDS_END};

static const cqrs_field_t deadline_fields[] = {CQRS_STRING(pm_deadline_t, name, "name", CQRS_F_REQUIRED),
                                               CQRS_TIME(pm_deadline_t, at, "at", CQRS_F_OPTIONAL),
                                               CQRS_FIELDS_END};

static const cqrs_field_t ended_fields[] = {CQRS_INT32(pm_ended_t, ended, "ended", 0), CQRS_FIELDS_END};

cqrs_code_t cqrs_registry_add_process(cqrs_registry_t *reg, const cqrs_process_type_t *def, cqrs_error_t *err) {
  if (!reg) return cqrs_error_set(err, CQRS_EINVAL, "NULL registry");
  cqrs_code_t rc = check_def(def, err);
  if (rc) return rc;
  char stream[CQRS_NAME_MAX];
  snprintf(stream, sizeof stream, "process:%s", def->name);
  if (cqrs__registry_kept(reg, stream))
    return cqrs_error_set(err, CQRS_EDUPLICATE, "process %s is already registered", def->name);
  pm_type_t *pm = cqrs__calloc(1, sizeof *pm);
  if (!pm) return cqrs_error_set(err, CQRS_ENOMEM, "cannot register process %s", def->name);
  pm->def = def;
  memcpy(pm->stream, stream, sizeof stream);
  uint32_t sv = def->state_version ? def->state_version : 1;
  bool named = kind_init(&pm->kinds[0], pm, KIND_RECEIVED, "received", sizeof(pm_received_t), received_fields, 1);
  named &= kind_init(&pm->kinds[1], pm, KIND_STATE, "state", def->state_size ? def->state_size : 1,
                     def->state_size ? def->state_fields : no_fields, sv);
  named &= kind_init(&pm->kinds[2], pm, KIND_DEADLINE, "deadline", sizeof(pm_deadline_t), deadline_fields, 1);
  named &= kind_init(&pm->kinds[3], pm, KIND_ENDED, "ended", sizeof(pm_ended_t), ended_fields, 1);
  size_t a = 0;
  for (int k = 0; k < 4; k++) pm->apply[a++] = (cqrs_apply_entry_t){&pm->kinds[k].pub, cqrs__process_apply};
  for (const cqrs_process_step_t *s = def->steps; s && s->name; s++) {
    pm_event_type_t *t = &pm->steps[pm->nsteps];
    char suffix[CQRS_NAME_MAX];
    int n = snprintf(suffix, sizeof suffix, "step.%s", s->name);
    named &= n > 0 && (size_t)n < sizeof suffix &&
             kind_init(t, pm, KIND_STEP, suffix, s->command->payload_size, s->command->fields, 1);
    t->step = (int)pm->nsteps++;
    pm->apply[a++] = (cqrs_apply_entry_t){&t->pub, cqrs__process_apply};
  }
  if (!named) {
    cqrs__free(pm);
    return cqrs_error_set(err, CQRS_EINVAL, "process %s: the names of its types do not fit %d bytes", def->name,
                          CQRS_NAME_MAX - 1);
  }
  pm->apply[a] = (cqrs_apply_entry_t){NULL, NULL};
  pm->user_offset = offsetof(pm_instance_t, user);
  pm->agg = (cqrs_aggregate_type_t){.name = pm->stream,
                                    .state_size = pm->user_offset + def->state_size,
                                    .state_cleanup = cqrs__process_state_cleanup,
                                    .apply = pm->apply};
  rc = cqrs_registry_add_aggregate(reg, &pm->agg, err);
  for (size_t i = 0; !rc && pm->apply[i].type; i++) rc = cqrs_registry_add_event(reg, pm->apply[i].type, err);
  if (!rc) rc = cqrs__step_refusals_add(reg, err);
  if (!rc) rc = cqrs__registry_keep(reg, pm->stream, pm, pm_type_free, err);
  if (rc) {
    /* Nothing of it stays: no name may point into what is freed. The
     * refusal types are static and shared by every process type. */
    cqrs__registry_forget(reg, &pm->agg);
    for (size_t i = 0; pm->apply[i].type; i++) cqrs__registry_forget(reg, pm->apply[i].type);
    cqrs__free(pm);
  }
  return rc;
}
