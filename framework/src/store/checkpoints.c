#include <uv.h>

#include "base/cqrs-uthash.h"


struct cqrs_checkpoints {
  const cqrs_checkpoint_ops_t *ops;
  void *impl;
};

cqrs_code_t cqrs_checkpoints_new(const cqrs_checkpoint_ops_t *ops, void *impl, cqrs_checkpoints_t **out,
                                 cqrs_error_t *err) {
  cqrs_code_t rc = CQRS_OK;
  cqrs_checkpoints_t *cp = NULL;
  if (!out) {
    rc = cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  } else if (!ops || !ops->load || !ops->save) {
    rc = cqrs_error_set(err, CQRS_EINVAL, "NULL ops or a missing load or save");
  } else if (!ops->control_load != !ops->control_save) {
    rc = cqrs_error_set(err, CQRS_EINVAL, "ops: control_load and control_save go together");
  } else if (!CQRS__RESERVED_ZERO(ops)) {
    rc = cqrs_error_set(err, CQRS_EINVAL, "ops: reserved fields must be zero");
  } else if (!(cp = cqrs__calloc(1, sizeof *cp))) {
    rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate checkpoints");
  }
  if (out) *out = cp;
  if (rc) {
    if (ops && ops->destroy) ops->destroy(impl);
    return rc;
  }
  cp->ops = ops;
  cp->impl = impl;
  return CQRS_OK;
}

void cqrs_checkpoints_destroy(cqrs_checkpoints_t *cp) {
  if (!cp) return;
  if (cp->ops->destroy) cp->ops->destroy(cp->impl);
  cqrs__free(cp);
}

bool cqrs__checkpoints_blocking(const cqrs_checkpoints_t *cp) { return cp->ops->blocking; }

cqrs_code_t cqrs_checkpoints_load(cqrs_checkpoints_t *cp, const char *name, int64_t *position, cqrs_error_t *err) {
  if (!cp || !position) return cqrs_error_set(err, CQRS_EINVAL, "NULL checkpoints or position");
  *position = 0;
  cqrs_code_t rc = cqrs__check_str(name, CQRS_NAME_MAX, "checkpoint name", err);
  return rc ? rc : cp->ops->load(cp->impl, name, position, err);
}

cqrs_code_t cqrs_checkpoints_save(cqrs_checkpoints_t *cp, const char *name, int64_t position, cqrs_error_t *err) {
  if (!cp) return cqrs_error_set(err, CQRS_EINVAL, "NULL checkpoints");
  if (position < 0) return cqrs_error_set(err, CQRS_EINVAL, "negative checkpoint");
  cqrs_code_t rc = cqrs__check_str(name, CQRS_NAME_MAX, "checkpoint name", err);
  return rc ? rc : cp->ops->save(cp->impl, name, position, err);
}

cqrs_code_t cqrs_checkpoints_save_fenced(cqrs_checkpoints_t *cp, const char *name, int64_t position, int64_t token,
                                         cqrs_error_t *err) {
  if (!cp) return cqrs_error_set(err, CQRS_EINVAL, "NULL checkpoints");
  if (position < 0 || token <= 0) return cqrs_error_set(err, CQRS_EINVAL, "negative checkpoint or token");
  if (!cp->ops->save_fenced) return cqrs_error_set(err, CQRS_EINVAL, "these checkpoints cannot fence their writes");
  cqrs_code_t rc = cqrs__check_str(name, CQRS_NAME_MAX, "checkpoint name", err);
  return rc ? rc : cp->ops->save_fenced(cp->impl, name, position, token, err);
}

bool cqrs__checkpoints_fenced(const cqrs_checkpoints_t *cp) { return cp->ops->save_fenced != NULL; }

bool cqrs__checkpoints_controlled(const cqrs_checkpoints_t *cp) { return cp->ops->control_load != NULL; }

static cqrs_code_t control_args(cqrs_checkpoints_t *cp, const char *name, cqrs_error_t *err) {
  if (!cp) return cqrs_error_set(err, CQRS_EINVAL, "NULL checkpoints");
  if (!cp->ops->control_load) return cqrs_error_set(err, CQRS_EINVAL, "these checkpoints keep no control records");
  return cqrs__check_str(name, CQRS_NAME_MAX, "projection name", err);
}

/* A string field of a control record: NUL-terminated in its array, UTF-8
 * (empty allowed). */
static bool field_ok(const char *s, size_t cap) {
  size_t n = strnlen(s, cap);
  return n < cap && cqrs__utf8_valid(s, n);
}

cqrs_code_t cqrs_checkpoints_control_load(cqrs_checkpoints_t *cp, const char *name, cqrs_projection_control_t *out,
                                          bool *found, cqrs_error_t *err) {
  if (!out || !found) return cqrs_error_set(err, CQRS_EINVAL, "NULL out or found");
  memset(out, 0, sizeof *out);
  *found = false;
  cqrs_code_t rc = control_args(cp, name, err);
  if (rc || (rc = cp->ops->control_load(cp->impl, name, out, found, err))) return rc;
  /* What the backend read is checked as what is written. */
  out->result[sizeof out->result - 1] = out->state[sizeof out->state - 1] = out->owner[sizeof out->owner - 1] = '\0';
  return CQRS_OK;
}

cqrs_code_t cqrs_checkpoints_control_save(cqrs_checkpoints_t *cp, const char *name, const cqrs_projection_control_t *c,
                                          unsigned parts, cqrs_error_t *err) {
  cqrs_code_t rc = control_args(cp, name, err);
  if (rc) return rc;
  if (!c) return cqrs_error_set(err, CQRS_EINVAL, "NULL control record");
  if (!parts || (parts & ~(CQRS_CONTROL_REQUEST | CQRS_CONTROL_REPORT)))
    return cqrs_error_set(err, CQRS_EINVAL, "parts: CQRS_CONTROL_REQUEST and/or CQRS_CONTROL_REPORT");
  if (c->request < 0 || c->position < 0 || c->done < 0 || c->reported_at < 0 || c->reached < 0 || c->parked < 0)
    return cqrs_error_set(err, CQRS_EINVAL, "a control record's numbers are not negative");
  if ((unsigned)c->action > CQRS_PROJECTION_REPLAY) return cqrs_error_set(err, CQRS_EINVAL, "unknown action");
  if (!field_ok(c->result, sizeof c->result) || !field_ok(c->state, sizeof c->state) ||
      !field_ok(c->owner, sizeof c->owner))
    return cqrs_error_set(err, CQRS_EINVAL, "a control record's text is not terminated UTF-8");
  if (!CQRS__RESERVED_ZERO(c)) return cqrs_error_set(err, CQRS_EINVAL, "control record: reserved fields must be zero");
  return cp->ops->control_save(cp->impl, name, c, parts, err);
}

cqrs_code_t cqrs_projection_request(cqrs_checkpoints_t *cp, const char *name, cqrs_projection_action_t action,
                                    int64_t position, int64_t *request, cqrs_error_t *err) {
  cqrs_projection_control_t c;
  bool found;
  if (action == CQRS_PROJECTION_NO_ACTION) return cqrs_error_set(err, CQRS_EINVAL, "no action asked");
  cqrs_code_t rc = cqrs_checkpoints_control_load(cp, name, &c, &found, err);
  if (rc) return rc;
  int64_t newest = c.request > c.done ? c.request : c.done;
  if (newest == INT64_MAX) return cqrs_error_set(err, CQRS_EINVAL, "no request number left");
  c.request = newest + 1;
  c.action = action;
  c.position = position;
  if ((rc = cqrs_checkpoints_control_save(cp, name, &c, CQRS_CONTROL_REQUEST, err))) return rc;
  if (request) *request = c.request;
  return CQRS_OK;
}

cqrs_code_t cqrs_projection_pause(cqrs_checkpoints_t *cp, const char *name, bool paused, cqrs_error_t *err) {
  cqrs_projection_control_t c;
  bool found;
  cqrs_code_t rc = cqrs_checkpoints_control_load(cp, name, &c, &found, err);
  if (rc) return rc;
  c.paused = paused;
  return cqrs_checkpoints_control_save(cp, name, &c, CQRS_CONTROL_REQUEST, err);
}

typedef struct mem_cp_entry {
  UT_hash_handle hh;
  int64_t position;
  int64_t token; /* highest that wrote; 0: plain saves only */
  bool controlled; /* a control record was written */
  cqrs_projection_control_t control;
  char name[CQRS_NAME_MAX];
} mem_cp_entry_t;

typedef struct mem_cp {
  uv_mutex_t lock;
  mem_cp_entry_t *entries;
} mem_cp_t;

static cqrs_code_t mem_cp_load(void *impl, const char *name, int64_t *position, cqrs_error_t *err) {
  CQRS__UNUSED(err);
  mem_cp_t *m = impl;
  uv_mutex_lock(&m->lock);
  mem_cp_entry_t *e;
  HASH_FIND_STR(m->entries, name, e);
  *position = e ? e->position : 0;
  uv_mutex_unlock(&m->lock);
  return CQRS_OK;
}

/* The entry of `name`, created when absent (NULL: out of memory). Under the lock. */
static mem_cp_entry_t *mem_cp_entry(mem_cp_t *m, const char *name) {
  mem_cp_entry_t *e;
  HASH_FIND_STR(m->entries, name, e);
  if (e) return e;
  e = cqrs__calloc(1, sizeof *e);
  if (!e) return NULL;
  memcpy(e->name, name, strlen(name) + 1);
  CQRS_HASH_TRY(HASH_ADD_STR(m->entries, name, e));
  if (CQRS_HASH_FAILED()) {
    cqrs__free(e);
    return NULL;
  }
  return e;
}

static cqrs_code_t mem_cp_save_fenced(void *impl, const char *name, int64_t position, int64_t token,
                                      cqrs_error_t *err) {
  mem_cp_t *m = impl;
  cqrs_code_t rc = CQRS_OK;
  uv_mutex_lock(&m->lock);
  mem_cp_entry_t *e = mem_cp_entry(m, name);
  if (!e) rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot save checkpoint");
  if (e && token && e->token > token) {
    rc = cqrs_error_set(err, CQRS_ECONFLICT, "checkpoint %s: token %lld has written, %lld is fenced off", name,
                        (long long)e->token, (long long)token);
  } else if (e) {
    e->position = position;
    if (token) e->token = token;
  }
  uv_mutex_unlock(&m->lock);
  return rc;
}

/* Unfenced: an operator's reset (a rebuild) moves it whoever holds the lease. */
static cqrs_code_t mem_cp_save(void *impl, const char *name, int64_t position, cqrs_error_t *err) {
  return mem_cp_save_fenced(impl, name, position, 0, err);
}

static cqrs_code_t mem_cp_control_load(void *impl, const char *name, cqrs_projection_control_t *out, bool *found,
                                       cqrs_error_t *err) {
  CQRS__UNUSED(err);
  mem_cp_t *m = impl;
  uv_mutex_lock(&m->lock);
  mem_cp_entry_t *e;
  HASH_FIND_STR(m->entries, name, e);
  *found = e && e->controlled;
  if (*found) *out = e->control;
  uv_mutex_unlock(&m->lock);
  return CQRS_OK;
}

static cqrs_code_t mem_cp_control_save(void *impl, const char *name, const cqrs_projection_control_t *c,
                                       unsigned parts, cqrs_error_t *err) {
  mem_cp_t *m = impl;
  uv_mutex_lock(&m->lock);
  mem_cp_entry_t *e = mem_cp_entry(m, name);
  if (e) {
    cqrs_projection_control_t *t = &e->control;
    if (parts & CQRS_CONTROL_REQUEST) {
      t->paused = c->paused;
      t->request = c->request;
      t->action = c->action;
      t->position = c->position;
    }
    if (parts & CQRS_CONTROL_REPORT) {
      t->done = c->done;
      memcpy(t->result, c->result, sizeof t->result);
      memcpy(t->state, c->state, sizeof t->state);
      memcpy(t->owner, c->owner, sizeof t->owner);
      t->reported_at = c->reported_at;
      t->reached = c->reached;
      t->parked = c->parked;
    }
    e->controlled = true;
  }
  uv_mutex_unlock(&m->lock);
  return e ? CQRS_OK : cqrs_error_set(err, CQRS_ENOMEM, "cannot save a control record");
}

static void mem_cp_destroy(void *impl) {
  mem_cp_t *m = impl;
  mem_cp_entry_t *e, *tmp;
  HASH_ITER(hh, m->entries, e, tmp) {
    HASH_DEL(m->entries, e);
    cqrs__free(e);
  }
  uv_mutex_destroy(&m->lock);
  cqrs__free(m);
}

static const cqrs_checkpoint_ops_t mem_cp_ops = {.blocking = false,
                                                 .load = mem_cp_load,
                                                 .save = mem_cp_save,
                                                 .destroy = mem_cp_destroy,
                                                 .save_fenced = mem_cp_save_fenced,
                                                 .control_load = mem_cp_control_load,
                                                 .control_save = mem_cp_control_save};

cqrs_code_t cqrs_memory_checkpoints_new(cqrs_checkpoints_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  mem_cp_t *m = cqrs__calloc(1, sizeof *m);
  if (!m) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate memory checkpoints");
  if (uv_mutex_init(&m->lock)) {
    cqrs__free(m);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot initialise the checkpoints' lock");
  }
  return cqrs_checkpoints_new(&mem_cp_ops, m, out, err);
}
