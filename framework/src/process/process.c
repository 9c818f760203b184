/* Process managers. An instance is an aggregate of a type the registry
 * builds for each process type ("process:<name>"): its events record each
 * input handled, the state after it, the steps and deadlines decided, and
 * the end. Inputs reach the instance as internal commands through the
 * dispatcher, so they get the command path's optimistic concurrency,
 * conflict retries, idempotent ids and publication. The runtime on the
 * loop thread routes events, sends the steps an instance has decided and
 * not heard back from, turns their completions into inputs, and fires
 * deadlines; it keeps only what it can rebuild from the instances'
 * streams, which is what a restart does.
 *
 *   routed event --input--> instance stream --steps--> commands
 *        ^                        ^                       |
 *        |                        +---- outcome input ----+
 *   subscriber (checkpoint held back to the oldest open instance)
 */
#include <stdio.h>

#include "command/dispatcher-private.h"

enum { IN_EVENT = 1, IN_STEP, IN_DEADLINE, IN_RESUME };
enum { KIND_RECEIVED, KIND_STATE, KIND_DEADLINE, KIND_ENDED, KIND_STEP };
enum { STEP_NONE = 0, STEP_SENT = 100 }; /* else a cqrs_step_status_t */

#define RETRY_BASE_MS 100
/* Room for what names an input: "in:d:", a deadline name as any recorded
 * one may be (CQRS_NAME_MAX), ':' and a time; or "in:e:" and an event id. */
#define WHAT_MAX (CQRS_ID_MAX + CQRS_NAME_MAX)
#define RETRY_CAP_MS 30000

typedef struct pm_type pm_type_t;

typedef struct pm_event_type {
  cqrs_event_type_t pub; /* first: the events' type pointer is this */
  const pm_type_t *pm;
  int kind;
  int step;
  char name[CQRS_NAME_MAX];
} pm_event_type_t;

struct pm_type {
  const cqrs_process_type_t *def;
  char stream[CQRS_NAME_MAX];
  cqrs_aggregate_type_t agg;
  cqrs_apply_entry_t apply[5 + CQRS_PROCESS_STEPS_MAX];
  pm_event_type_t kinds[4]; /* received, state, deadline, ended */
  pm_event_type_t steps[CQRS_PROCESS_STEPS_MAX];
  size_t nsteps;
  size_t user_offset;
};

/* ---- what the stream records ---- */

typedef struct pm_received {
  int32_t kind;
  char key[CQRS_NAME_MAX]; /* event type, step or deadline name */
  char event_id[CQRS_EVENT_ID_LEN];
  char aggregate[CQRS_ID_MAX];
  int64_t position;
  int32_t occurrence;
  int32_t status;
  char reason[CQRS_NAME_MAX];
  char correlation[CQRS_ID_MAX];
  int64_t at;
} pm_received_t;

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

typedef struct pm_deadline {
  char name[CQRS_NAME_MAX];
  int64_t at; /* 0: cancelled */
} pm_deadline_t;

static const cqrs_field_t deadline_fields[] = {CQRS_STRING(pm_deadline_t, name, "name", CQRS_F_REQUIRED),
                                               CQRS_TIME(pm_deadline_t, at, "at", CQRS_F_OPTIONAL),
                                               CQRS_FIELDS_END};

typedef struct pm_ended {
  int32_t ended;
} pm_ended_t;

static const cqrs_field_t ended_fields[] = {CQRS_INT32(pm_ended_t, ended, "ended", 0), CQRS_FIELDS_END};

/* ---- the instance's state (the aggregate's) ---- */

typedef struct pm_step_state {
  int32_t count;            /* occurrences decided */
  int32_t status;           /* of the latest: STEP_SENT or a cqrs_step_status_t */
  const cqrs_event_t *sent; /* its recorded event: the payload is the command's */
} pm_step_state_t;

typedef struct pm_instance {
  bool started, ended;
  int64_t first_position, last_position;
  char correlation[CQRS_ID_MAX];
  pm_step_state_t steps[CQRS_PROCESS_STEPS_MAX];
  pm_deadline_t deadlines[CQRS_PROCESS_DEADLINES_MAX];
  _Alignas(max_align_t) unsigned char user[];
} pm_instance_t;

static int step_index(const pm_type_t *pm, const char *name) {
  for (size_t i = 0; i < pm->nsteps; i++) {
    if (!strcmp(pm->def->steps[i].name, name)) return (int)i;
  }
  return -1;
}

static void deadline_put(pm_deadline_t *list, const char *name, int64_t at) {
  pm_deadline_t *slot = NULL;
  for (size_t i = 0; i < CQRS_PROCESS_DEADLINES_MAX; i++) {
    if (list[i].at && !strcmp(list[i].name, name)) {
      slot = &list[i];
      break;
    }
    if (!list[i].at && !slot) slot = &list[i];
  }
  if (!slot) return; /* full: refused when decided */
  if (!at) {
    if (!strcmp(slot->name, name)) memset(slot, 0, sizeof *slot);
    return;
  }
  snprintf(slot->name, sizeof slot->name, "%s", name);
  slot->at = at;
}

static const pm_deadline_t *deadline_find(const pm_deadline_t *list, const char *name) {
  for (size_t i = 0; i < CQRS_PROCESS_DEADLINES_MAX; i++) {
    if (list[i].at && !strcmp(list[i].name, name)) return &list[i];
  }
  return NULL;
}

static void pm_apply(void *state, const cqrs_event_t *e) {
  const pm_event_type_t *t = (const pm_event_type_t *)e->type;
  pm_instance_t *in = state;
  switch (t->kind) {
    case KIND_RECEIVED: {
      const pm_received_t *r = e->payload;
      if (r->kind == IN_EVENT) {
        if (!in->started) {
          in->started = true;
          in->first_position = r->position;
          memcpy(in->correlation, r->correlation, sizeof in->correlation);
        }
        if (r->position > in->last_position) in->last_position = r->position;
      } else if (r->kind == IN_STEP) {
        int i = step_index(t->pm, r->key);
        if (i >= 0 && in->steps[i].count == r->occurrence) in->steps[i].status = r->status;
      } else if (r->kind == IN_DEADLINE) {
        deadline_put(in->deadlines, r->key, 0);
      }
      break;
    }
    case KIND_STATE:
      memcpy(in->user, e->payload, t->pm->def->state_size);
      break;
    case KIND_DEADLINE: {
      const pm_deadline_t *dl = e->payload;
      deadline_put(in->deadlines, dl->name, dl->at);
      break;
    }
    case KIND_ENDED:
      in->ended = true;
      break;
    default: {
      pm_step_state_t *st = &in->steps[t->step];
      st->count++;
      st->status = STEP_SENT;
      cqrs_event_unref(st->sent);
      st->sent = cqrs_event_ref(e);
    }
  }
}

static void pm_state_cleanup(void *state) {
  pm_instance_t *in = state;
  for (size_t i = 0; i < CQRS_PROCESS_STEPS_MAX; i++) cqrs_event_unref(in->steps[i].sent);
}

/* ---- ids ---- */

static void hash128(const char *a, const char *b, uint64_t h[2]) {
  h[0] = 1469598103934665603ull;
  h[1] = 0x9e3779b97f4a7c15ull;
  const char *parts[2] = {a, b};
  for (int k = 0; k < 2; k++) {
    for (const unsigned char *p = (const unsigned char *)parts[k];; p++) {
      unsigned c = *p ? *p : 0x100u + (unsigned)k; /* the separator cannot be a byte of the input */
      h[0] = (h[0] ^ c) * 1099511628211ull;
      h[1] = (h[1] ^ c) * 0xff51afd7ed558ccdull;
      h[1] ^= h[1] >> 29;
      if (!*p) break;
    }
  }
  h[0] ^= h[1] >> 31;
  h[1] ^= h[0] >> 33;
  h[1] *= 0xc4ceb9fe1a85ec53ull;
}

cqrs_code_t cqrs_id_derive(char buf[CQRS_ID_MAX], const char *prefix, const char *id, cqrs_error_t *err) {
  if (!buf || !prefix || !id) return cqrs_error_set(err, CQRS_EINVAL, "NULL buffer, prefix or id");
  size_t np = strlen(prefix);
  if (np + 34 >= CQRS_ID_MAX) return cqrs_error_set(err, CQRS_EINVAL, "id prefix '%.64s' is too long", prefix);
  size_t ni = strlen(id);
  if (np + 1 + ni < CQRS_ID_MAX) {
    memcpy(buf, prefix, np);
    buf[np] = ':';
    memcpy(buf + np + 1, id, ni + 1);
    return CQRS_OK;
  }
  uint64_t h[2];
  hash128(prefix, id, h);
  snprintf(buf, CQRS_ID_MAX, "%s#%016llx%016llx", prefix, (unsigned long long)h[0], (unsigned long long)h[1]);
  return CQRS_OK;
}

/* The id of input or step `what` of an instance: "~<process>/<what>" then
 * ":<instance>" (cqrs_id_derive, which hashes an instance that does not
 * fit), or, when that prefix is too long for cqrs_id_derive, "~<process>/#"
 * and a hash of prefix and instance. Nothing is cut: two inputs meet under
 * one id only if the 128-bit hash collides. The reserved '~' keeps every
 * outside command off these ids. `what` is a step name (letters, digits,
 * '_', '-', never "in"), "<step>.<occurrence>", or "in:<kind>:..." for an
 * input: no two of these read the same. */
static void derive(char out[CQRS_ID_MAX], const pm_type_t *pm, const char *instance, const char *what) {
  char prefix[2 * WHAT_MAX]; /* room for '~', a process name, '/' and any `what` */
  snprintf(prefix, sizeof prefix, "%c%s/%s", CQRS__RESERVED_ID_PREFIX, pm->def->name, what);
  if (cqrs_id_derive(out, prefix, instance, NULL) == CQRS_OK) return;
  uint64_t h[2];
  hash128(prefix, instance, h);
  snprintf(out, CQRS_ID_MAX, "%c%s/#%016llx%016llx", CQRS__RESERVED_ID_PREFIX, pm->def->name,
           (unsigned long long)h[0], (unsigned long long)h[1]);
}

static void step_id(char out[CQRS_ID_MAX], const pm_type_t *pm, const char *instance, int step, int32_t occ) {
  char what[CQRS_ID_MAX];
  if (occ <= 1) {
    snprintf(what, sizeof what, "%s", pm->def->steps[step].name);
  } else {
    snprintf(what, sizeof what, "%s.%d", pm->def->steps[step].name, (int)occ);
  }
  derive(out, pm, instance, what);
}

/* ---- the registry side ---- */

static bool name_ok(const char *s, const char *extra) {
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
  t->pub = (cqrs_event_type_t){t->name, version, size, fields};
  return n > 0 && (size_t)n < sizeof t->name;
}

static const cqrs_field_t no_fields[] = {CQRS_FIELDS_END};

static cqrs_code_t check_def(const cqrs_process_type_t *def, cqrs_error_t *err) {
  if (!def || !name_ok(def->name, ".") || strlen(def->name) > CQRS_PROCESS_NAME_MAX)
    return cqrs_error_set(err, CQRS_EINVAL, "a process type needs a name of 1 to %d letters, digits, '_', '-', '.'",
                          CQRS_PROCESS_NAME_MAX);
  if (!def->routes || !def->routes[0].type)
    return cqrs_error_set(err, CQRS_EINVAL, "process %s routes no event", def->name);
  if (def->state_size && !def->state_fields)
    return cqrs_error_set(err, CQRS_EINVAL, "process %s: a state needs state_fields", def->name);
  size_t n = 0;
  for (const cqrs_process_step_t *s = def->steps; s && s->name; s++, n++) {
    if (n == CQRS_PROCESS_STEPS_MAX)
      return cqrs_error_set(err, CQRS_ETOO_LARGE, "process %s: more than %d steps", def->name,
                            CQRS_PROCESS_STEPS_MAX);
    if (!name_ok(s->name, "") || strlen(s->name) > CQRS_PROCESS_STEP_NAME_MAX || !strcmp(s->name, "in"))
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

/* The internal command that carries an input to an instance. It is in no
 * registry, so no document from outside can name it, and its handler is
 * registered with the dispatcher directly (cqrs__dispatcher_register_internal). */
typedef struct pm_request pm_request_t;
typedef struct pm_cmd {
  char instance[CQRS_ID_MAX];
  pm_request_t *req;
} pm_cmd_t;
static const cqrs_field_t cmd_fields[] = {CQRS_STRING(pm_cmd_t, instance, "instance", CQRS_F_REQUIRED),
                                          CQRS_FIELDS_END};
static const cqrs_command_type_t input_cmd = {
    .name = "cqrs.process.input", .payload_size = sizeof(pm_cmd_t), .fields = cmd_fields};

/* ---- refusals of steps, recorded under the step's id ---- */

typedef struct refusal {
  int32_t code;
  char name[CQRS_NAME_MAX];
  char message[CQRS_MESSAGE_MAX];
} refusal_t;

static const cqrs_field_t refusal_fields[] = {CQRS_INT32(refusal_t, code, "code", 0),
                                              CQRS_STRING(refusal_t, name, "name", 0),
                                              CQRS_STRING(refusal_t, message, "message", 0), CQRS_FIELDS_END};
static const cqrs_event_type_t refused_type = {"cqrs.step.refused", 1, sizeof(refusal_t), refusal_fields};
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

void cqrs__step_settle(cqrs_store_t *store, const cqrs_command_t *cmd, cqrs_code_t *rc, cqrs_result_t *res,
                       cqrs_error_t *err) {
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
    w = cqrs_event_new(&refused_type, env, NULL, 1, cqrs_now_ms(), &f, &ev, &e);
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
  for (int k = 0; k < 4; k++) pm->apply[a++] = (cqrs_apply_entry_t){&pm->kinds[k].pub, pm_apply};
  for (const cqrs_process_step_t *s = def->steps; s && s->name; s++) {
    pm_event_type_t *t = &pm->steps[pm->nsteps];
    char suffix[CQRS_NAME_MAX];
    int n = snprintf(suffix, sizeof suffix, "step.%s", s->name);
    named &= n > 0 && (size_t)n < sizeof suffix &&
             kind_init(t, pm, KIND_STEP, suffix, s->command->payload_size, s->command->fields, 1);
    t->step = (int)pm->nsteps++;
    pm->apply[a++] = (cqrs_apply_entry_t){&t->pub, pm_apply};
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
                                    .state_cleanup = pm_state_cleanup,
                                    .apply = pm->apply};
  rc = cqrs_registry_add_aggregate(reg, &pm->agg, err);
  for (size_t i = 0; !rc && pm->apply[i].type; i++) rc = cqrs_registry_add_event(reg, pm->apply[i].type, err);
  if (!rc) rc = cqrs_registry_add_aggregate(reg, &refusal_stream, err);
  if (!rc) rc = cqrs_registry_add_event(reg, &refused_type, err);
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

/* ---- deciding ---- */

typedef struct pm_input {
  int kind;
  const cqrs_event_t *event; /* IN_EVENT */
  const cqrs_process_route_t *route;
  int step; /* IN_STEP */
  int32_t occurrence;
  int32_t status;
  char reason[CQRS_NAME_MAX];
  char deadline[CQRS_NAME_MAX]; /* IN_DEADLINE */
  int64_t at;
} pm_input_t;

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
  int i = step_index(p->pm, step);
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
  if (!p || !name_ok(name, "")) return cqrs_error_set(err, CQRS_EINVAL, "NULL process or bad deadline name");
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

static const cqrs_process_route_t *find_route(const pm_type_t *pm, const cqrs_event_type_t *type) {
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
    if (p->sched[i].at || deadline_find(in->deadlines, p->sched[i].name))
      rc = cqrs_aggregate_raise(agg, &pm->kinds[2].pub, &p->sched[i], err);
  }
  if (!rc && p->end) rc = cqrs_aggregate_raise(agg, &pm->kinds[3].pub, &(pm_ended_t){1}, err);
  return rc;
}

/* Decides what `input` does to instance `agg` and raises the events that
 * record it; an input the instance has already handled, or may not hear,
 * raises nothing. Pure but for the handler it calls. */
static cqrs_code_t decide(const pm_type_t *pm, cqrs_aggregate_t *agg, const pm_input_t *input, void *data,
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
    p.now = cqrs_now_ms();
  } else {
    const pm_deadline_t *dl = deadline_find(in->deadlines, input->deadline);
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

/* ---- the runtime on a dispatcher ---- */

typedef struct open_step {
  int32_t occurrence;       /* of the step awaited */
  const cqrs_event_t *sent; /* its recorded event; NULL: nothing awaited */
  bool inflight;            /* the command is out */
  int64_t retry_at;         /* a transient failure: send again then */
  unsigned attempts;
} open_step_t;

typedef struct pm_request pm_request_t;

/* What the runtime knows of an instance: an open one, or one with an input
 * on its way. Inputs of one instance go one at a time, so each report is
 * newer than the one before. */
typedef struct open {
  char id[CQRS_ID_MAX];
  char correlation[CQRS_ID_MAX];
  bool started;
  int64_t first_position;
  open_step_t steps[CQRS_PROCESS_STEPS_MAX];
  pm_deadline_t deadlines[CQRS_PROCESS_DEADLINES_MAX];
  bool deadline_due[CQRS_PROCESS_DEADLINES_MAX]; /* fired, not yet recorded */
  int64_t resume_at;          /* an input failed: reload the instance then */
  int64_t held_at;            /* not started here yet, but an event at this position was recorded by an
                                 earlier run: the checkpoint stays before it until the reload reports */
  pm_request_t *busy;         /* the input in flight */
  pm_request_t *queue, *tail; /* inputs waiting for it */
  UT_hash_handle hh;
} open_t;

struct cqrs__process {
  cqrs_dispatcher_t *d;
  const pm_type_t *pm;
  void *data;
  sub_t *sub;
  open_t *open;
  size_t inflight; /* commands this runtime sent and has not heard back from */
  uv_timer_t timer;
  bool closing;
};

/* What an instance looks like after an input: what the runtime must do. */
typedef struct pm_report {
  bool started, ended;
  int64_t first_position;
  char correlation[CQRS_ID_MAX];
  const cqrs_event_t *awaited[CQRS_PROCESS_STEPS_MAX]; /* referenced */
  int32_t occurrence[CQRS_PROCESS_STEPS_MAX];
  pm_deadline_t deadlines[CQRS_PROCESS_DEADLINES_MAX];
} pm_report_t;

struct pm_request {
  pm_request_t *next;
  cqrs__process_t *rt;
  char instance[CQRS_ID_MAX];
  char what[WHAT_MAX]; /* names the input in its command id; "" records nothing */
  pm_input_t input;
  bool from_sub;
  pm_report_t report; /* written by the handler's last run */
};

static void report_clear(pm_report_t *r) {
  for (size_t i = 0; i < CQRS_PROCESS_STEPS_MAX; i++) cqrs_event_unref(r->awaited[i]);
  memset(r, 0, sizeof *r);
}

static void report_fill(pm_report_t *r, const pm_instance_t *in) {
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

static void request_free(pm_request_t *req) {
  if (!req) return;
  cqrs_event_unref(req->input.event);
  report_clear(&req->report);
  cqrs__free(req);
}

/* The internal command's handler: loads the instance, decides, reports. */
static cqrs_code_t handle_input(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  CQRS__UNUSED(data);
  const pm_cmd_t *c = cqrs_command_payload(cmd);
  pm_request_t *req = c->req;
  if (!cmd->internal || !req) return cqrs_error_set(err, CQRS_EINVALID_COMMAND, "%s is the framework's own", cmd->type->name);
  const pm_type_t *pm = req->rt->pm;
  cqrs_aggregate_t *agg;
  cqrs_code_t rc = cqrs_context_load(ctx, &pm->agg, c->instance, &agg, err);
  if (!rc) rc = decide(pm, agg, &req->input, req->rt->data, err);
  if (!rc) report_fill(&req->report, cqrs_aggregate_state_const(agg));
  return rc;
}

static void arm_timer(cqrs__process_t *rt);
static void send_steps(cqrs__process_t *rt, open_t *o);
static void on_input_done(const cqrs_result_t *r, void *data);

static open_t *open_get(cqrs__process_t *rt, const char *instance) {
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

static void open_free(open_t *o) {
  for (size_t i = 0; i < CQRS_PROCESS_STEPS_MAX; i++) cqrs_event_unref(o->steps[i].sent);
  while (o->queue) {
    pm_request_t *q = o->queue;
    o->queue = q->next;
    request_free(q);
  }
  cqrs__free(o);
}

/* The lease went elsewhere: what this runtime knows of its instances is
 * the next holder's to rebuild (lease_changed forgets them; those with
 * work in flight go once it completes). */
static bool lease_gone(const cqrs__process_t *rt) { return rt->sub->lease.on && !rt->sub->lease.held; }

/* Forgets an instance that is neither open nor waited on (a reload due is
 * a wait, unless the instance `ended`). */
static void open_maybe_drop(cqrs__process_t *rt, open_t *o, bool ended) {
  if (o->busy || o->queue || (!ended && (o->started || o->resume_at))) return;
  for (size_t i = 0; i < CQRS_PROCESS_STEPS_MAX; i++) {
    if (o->steps[i].inflight) return;
  }
  HASH_DEL(rt->open, o);
  open_free(o);
}

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
    derive(cmd->id, rt->pm, req->instance, req->what);
  } else {
    cmd->id[0] = CQRS__RESERVED_ID_PREFIX; /* a fresh id: such an input records nothing */
  }
  const char *corr = o->correlation[0] ? o->correlation : NULL;
  if (!corr && req->input.event) corr = cqrs_event_correlation_id(req->input.event);
  if (corr) memcpy(cmd->correlation_id, corr, strlen(corr) + 1);
  if ((rc = cqrs__dispatcher_send_internal(rt->d, cmd, on_input_done, req)))
    return cqrs_error_set(err, rc, "process %s cannot send an input: %s", rt->pm->def->name, cqrs_code_name(rc));
  o->busy = req;
  rt->inflight++;
  return CQRS_OK;
}

/* Sends an input to its instance, or queues it behind the one in flight.
 * Takes over `req` (freed on an error). The instance's entry stays, even on
 * an error: the caller, who may still hold it, decides whether it goes. */
static cqrs_code_t send_input(cqrs__process_t *rt, pm_request_t *req, cqrs_error_t *err) {
  open_t *o = open_get(rt, req->instance);
  if (!o) {
    request_free(req);
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
  if (rc) request_free(req);
  return rc;
}

static pm_request_t *request_new(cqrs__process_t *rt, const char *instance, int kind, const char *what) {
  pm_request_t *req = cqrs__calloc(1, sizeof *req);
  if (!req) return NULL;
  req->rt = rt;
  snprintf(req->instance, sizeof req->instance, "%s", instance);
  snprintf(req->what, sizeof req->what, "%s", what ? what : "");
  req->input.kind = kind;
  return req;
}

static int64_t backoff(unsigned attempts) {
  int64_t ms = RETRY_BASE_MS;
  for (unsigned i = 1; i < attempts && ms < RETRY_CAP_MS; i++) ms *= 2;
  return ms < RETRY_CAP_MS ? ms : RETRY_CAP_MS;
}

/* Brings the runtime's view of one instance in line with a report. */
static void apply_report(open_t *o, pm_report_t *rep) {
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
    apply_report(o, &req->report);
  } else if (!rt->closing) {
    /* A duplicate was recorded by an earlier run (this run's load was
     * stale: a write of a killed process landing late, another process),
     * and a failure may have recorded it too: either way, the instance
     * stays and is reloaded, and does what its stream says. Until then a
     * recorded event of an instance not known here holds the checkpoint,
     * or a crash before the reload would forget the instance for good. */
    o->resume_at = cqrs_now_ms() + (cqrs_result_ok(r) ? 0 : RETRY_BASE_MS * 10);
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
  request_free(req);
  while (!rt->closing && o->queue && !o->busy) {
    pm_request_t *next = o->queue;
    if (!(o->queue = next->next)) o->tail = NULL;
    next->next = NULL;
    if (dispatch(rt, o, next, &error)) {
      if (next->from_sub) { /* the subscriber's event: it retries it */
        from_sub = true;
        ok = false;
      }
      request_free(next);
    }
  }
  if (!rt->closing) send_steps(rt, o);
  open_maybe_drop(rt, o, ended || lease_gone(rt));
  arm_timer(rt);
  /* Last: the subscriber may route its next event at once, to this
   * instance too, and the entry may go with it. */
  if (from_sub) cqrs__sub_complete(rt->sub, ok ? NULL : &error);
  if (rt->closing) cqrs__dispatcher_maybe_closed(rt->d);
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
      st->retry_at = cqrs_now_ms() + backoff(++st->attempts);
    } else {
      char what[WHAT_MAX];
      snprintf(what, sizeof what, "in:s:%s:%d", rt->pm->def->steps[sc->step].name, (int)sc->occurrence);
      pm_request_t *req = request_new(rt, sc->instance, IN_STEP, what);
      if (req) {
        req->input.step = sc->step;
        req->input.occurrence = sc->occurrence;
        req->input.status = cqrs_result_ok(r)         ? CQRS_STEP_ACCEPTED
                            : cqrs_result_rejected(r) ? CQRS_STEP_REJECTED
                                                      : CQRS_STEP_FAILED;
        if (!cqrs_result_ok(r)) snprintf(req->input.reason, sizeof req->input.reason, "%s", r->error.name);
        /* Not sent again while its outcome is on its way; if recording
         * fails, the instance is reloaded and the step sent again. */
        st->retry_at = INT64_MAX;
        if (send_input(rt, req, NULL)) o->resume_at = cqrs_now_ms() + RETRY_BASE_MS * 10;
      } else {
        o->resume_at = cqrs_now_ms() + RETRY_BASE_MS * 10;
      }
    }
  }
  cqrs__free(sc);
  open_maybe_drop(rt, o, lease_gone(rt));
  arm_timer(rt);
  if (rt->closing) cqrs__dispatcher_maybe_closed(rt->d);
}

static void send_step(cqrs__process_t *rt, open_t *o, int i) {
  open_step_t *st = &o->steps[i];
  const cqrs_command_type_t *type = rt->pm->def->steps[i].command;
  cqrs_command_t *cmd;
  step_call_t *sc = cqrs__calloc(1, sizeof *sc);
  if (!sc || cqrs_command_new(type, st->sent->payload, &cmd, NULL)) {
    cqrs__free(sc);
    st->retry_at = cqrs_now_ms() + backoff(++st->attempts);
    return;
  }
  sc->rt = rt;
  memcpy(sc->instance, o->id, sizeof sc->instance);
  sc->step = i;
  sc->occurrence = st->occurrence;
  step_id(cmd->id, rt->pm, o->id, i, st->occurrence);
  cmd->step = true;
  if (o->correlation[0]) memcpy(cmd->correlation_id, o->correlation, sizeof cmd->correlation_id);
  if (cqrs__dispatcher_send_internal(rt->d, cmd, on_step_done, sc)) {
    cqrs__free(sc);
    st->retry_at = cqrs_now_ms() + backoff(++st->attempts);
    return;
  }
  st->inflight = true;
  st->retry_at = 0;
  rt->inflight++;
}

/* Under a lease, steps, deadlines and resumptions run only at its holder. */
/* Past the lease's deadline a holder acts no more, even before the lease
 * code has noticed (its tick) and told the process manager to let go. */
static bool owned(const cqrs__process_t *rt) { return !rt->sub->lease.on || cqrs__lease_in_time(rt->sub); }

/* Sends what the instance awaits and is not out already. */
static void send_steps(cqrs__process_t *rt, open_t *o) {
  if (rt->closing || !owned(rt) || o->busy || o->queue || o->resume_at) return;
  int64_t now = cqrs_now_ms();
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
  pm_request_t *req = request_new(rt, o->id, IN_RESUME, NULL);
  if (!req || send_input(rt, req, NULL)) o->resume_at = cqrs_now_ms() + RETRY_BASE_MS * 10;
}

static void fire_deadline(cqrs__process_t *rt, open_t *o, size_t i) {
  char what[WHAT_MAX];
  snprintf(what, sizeof what, "in:d:%s:%lld", o->deadlines[i].name, (long long)o->deadlines[i].at);
  pm_request_t *req = request_new(rt, o->id, IN_DEADLINE, what);
  if (!req) return;
  memcpy(req->input.deadline, o->deadlines[i].name, sizeof req->input.deadline);
  req->input.at = o->deadlines[i].at;
  o->deadline_due[i] = true;
  if (send_input(rt, req, NULL)) o->deadline_due[i] = false;
}

static void timer_cb(uv_timer_t *t) {
  cqrs__process_t *rt = t->data;
  if (rt->closing || !owned(rt)) return;
  int64_t now = cqrs_now_ms();
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
    uv_timer_stop(&rt->timer);
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
    uv_timer_stop(&rt->timer);
    return;
  }
  if (urgent != INT64_MAX) {
    uv_ref((uv_handle_t *)&rt->timer);
  } else {
    uv_unref((uv_handle_t *)&rt->timer);
  }
  int64_t now = cqrs_now_ms();
  uv_timer_start(&rt->timer, timer_cb, next > now ? (uint64_t)(next - now) : 0, 0);
}

/* ---- the subscriber ---- */

static cqrs_code_t on_event(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  cqrs__process_t *rt = data;
  if (rt->closing) return cqrs_error_set(err, CQRS_ECLOSED, "process %s is closing", rt->pm->def->name);
  const cqrs_process_route_t *route = find_route(rt->pm, e->type);
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
  pm_request_t *req = request_new(rt, instance, IN_EVENT, what);
  if (!req) return cqrs_error_set(err, CQRS_ENOMEM, "cannot route an event");
  req->input.event = cqrs_event_ref(e);
  req->input.route = route;
  req->from_sub = true;
  cqrs_code_t rc = send_input(rt, req, err);
  if (rc) { /* the subscriber retries the event; an entry made for it alone goes */
    open_t *o;
    HASH_FIND_STR(rt->open, instance, o);
    if (o) open_maybe_drop(rt, o, false);
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
  uv_timer_stop(&rt->timer);
  open_t *o, *tmp;
  HASH_ITER(hh, rt->open, o, tmp) open_maybe_drop(rt, o, true);
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

cqrs_code_t cqrs_process_start(cqrs_dispatcher_t *d, const cqrs_process_type_t *def, void *data,
                               cqrs_checkpoints_t *cp, cqrs_error_t *err) {
  if (!d || !def || !cp) return cqrs_error_set(err, CQRS_EINVAL, "NULL dispatcher, process type or checkpoints");
  if (atomic_load(&d->closing)) return cqrs_error_set(err, CQRS_ECLOSED, "dispatcher is closing");
  char stream[CQRS_NAME_MAX];
  if (!def->name || strlen(def->name) > CQRS_PROCESS_NAME_MAX)
    return cqrs_error_set(err, CQRS_EUNKNOWN_TYPE, "process %.64s is not in the registry", def->name ? def->name : "");
  snprintf(stream, sizeof stream, "process:%s", def->name);
  const pm_type_t *pm = cqrs__registry_kept(d->reg, stream);
  if (!pm || pm->def != def)
    return cqrs_error_set(err, CQRS_EUNKNOWN_TYPE, "process %s is not in the registry", def->name);
  for (size_t i = 0; i < d->nprocs; i++) {
    if (d->procs[i]->pm == pm) return cqrs_error_set(err, CQRS_EDUPLICATE, "process %s runs already", def->name);
  }
  size_t ntypes = 0;
  while (def->routes[ntypes].type) ntypes++;
  const cqrs_event_type_t **types = cqrs__calloc(ntypes + 1, sizeof *types);
  cqrs__process_t *rt = cqrs__calloc(1, sizeof *rt);
  cqrs__process_t **procs = cqrs__realloc(d->procs, (d->nprocs + 1) * sizeof *procs);
  if (procs) d->procs = procs;
  if (!types || !rt || !procs) {
    cqrs__free(types);
    cqrs__free(rt);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot start process %s", def->name);
  }
  for (size_t i = 0; i < ntypes; i++) types[i] = def->routes[i].type;
  rt->d = d;
  rt->pm = pm;
  rt->data = data;
  cqrs_code_t rc = cqrs__dispatcher_register_internal(d, &input_cmd, handle_input, NULL, 0, err);
  if (rc == CQRS_EDUPLICATE) rc = CQRS_OK; /* a second process type on this dispatcher */
  const cqrs_projection_def_t proj = {pm->stream, types, on_event, rt, 0};
  if (!rc) rc = cqrs__projection_start_async(d, &proj, cp, checkpoint_at, &rt->sub, err);
  cqrs__free(types);
  if (rc) {
    cqrs__free(rt);
    return rc;
  }
  rt->sub->lease.changed = lease_changed;
  uv_timer_init(d->loop, &rt->timer);
  rt->timer.data = rt;
  uv_unref((uv_handle_t *)&rt->timer);
  d->handles_open++;
  d->procs[d->nprocs++] = rt;
  return CQRS_OK;
}

size_t cqrs_process_open_count(const cqrs_dispatcher_t *d, const char *name) {
  if (!d || !name) return 0;
  for (size_t i = 0; i < d->nprocs; i++) {
    if (strcmp(d->procs[i]->pm->def->name, name)) continue;
    size_t n = 0;
    open_t *o, *tmp;
    HASH_ITER(hh, d->procs[i]->open, o, tmp) n += o->started;
    return n;
  }
  return 0;
}

bool cqrs__process_idle(const cqrs__process_t *rt) { return rt->inflight == 0; }

/* Closing: nothing new goes out; what is out completes; the rest waits in
 * the instances' streams for the next start. */
void cqrs__process_closing(cqrs__process_t *rt) {
  rt->closing = true;
  uv_timer_stop(&rt->timer);
  open_t *o, *tmp;
  HASH_ITER(hh, rt->open, o, tmp) {
    while (o->queue) {
      pm_request_t *q = o->queue;
      if (!(o->queue = q->next)) o->tail = NULL;
      if (q->from_sub) cqrs__sub_complete(rt->sub, &(cqrs_error_t){.code = CQRS_ECLOSED});
      request_free(q);
    }
  }
}

void cqrs__process_close_handles(cqrs__process_t *rt, uv_close_cb cb) {
  rt->timer.data = rt->d;
  uv_close((uv_handle_t *)&rt->timer, cb);
}

void cqrs__process_free(cqrs__process_t *rt) {
  open_t *o, *tmp;
  HASH_ITER(hh, rt->open, o, tmp) {
    HASH_DEL(rt->open, o);
    open_free(o);
  }
  cqrs__free(rt);
}

/* ---- tests without a loop ---- */

struct cqrs_process_test {
  cqrs_registry_t *reg;
  const pm_type_t *pm;
  cqrs_aggregate_t *agg;
  void *data;
  int64_t position;
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

static cqrs_code_t test_input(cqrs_process_test_t *t, const pm_input_t *in, cqrs_error_t *err) {
  test_forget(t);
  cqrs_code_t rc = decide(t->pm, t->agg, in, t->data, err);
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
  const cqrs_process_route_t *route = find_route(t->pm, type);
  if (!route) return cqrs_error_set(err, CQRS_EINVAL, "process %s routes no %s", t->pm->def->name, type->name);
  cqrs_envelope_t *env;
  cqrs_code_t rc = cqrs_envelope_new("test", aggregate_id, "test", "test", &env, err);
  if (rc) return rc;
  cqrs_event_t *e;
  rc = cqrs_event_new(type, env, NULL, 1, cqrs_now_ms(), payload, &e, err);
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
  int i = step_index(t->pm, step);
  if (i < 0) return cqrs_error_set(err, CQRS_EINVAL, "no step %.64s", step);
  const pm_instance_t *st = cqrs_aggregate_state_const(t->agg);
  pm_input_t in = {.kind = IN_STEP, .step = i, .occurrence = st->steps[i].count, .status = (int32_t)status};
  snprintf(in.reason, sizeof in.reason, "%s", reason ? reason : "");
  return test_input(t, &in, err);
}

cqrs_code_t cqrs_process_test_deadline(cqrs_process_test_t *t, const char *name, cqrs_error_t *err) {
  if (!t || !name) return cqrs_error_set(err, CQRS_EINVAL, "NULL test or deadline");
  const pm_deadline_t *dl = deadline_find(((const pm_instance_t *)cqrs_aggregate_state_const(t->agg))->deadlines, name);
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
  const pm_deadline_t *dl = deadline_find(((const pm_instance_t *)cqrs_aggregate_state_const(t->agg))->deadlines, name);
  return dl ? dl->at : 0;
}

const void *cqrs_process_test_state(const cqrs_process_test_t *t) {
  return t ? ((const pm_instance_t *)cqrs_aggregate_state_const(t->agg))->user : NULL;
}

size_t cqrs_process_test_recorded(const cqrs_process_test_t *t) { return t ? t->recorded : 0; }
