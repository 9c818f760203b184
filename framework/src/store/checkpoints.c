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

typedef struct mem_cp_entry {
  UT_hash_handle hh;
  int64_t position;
  int64_t token; /* highest that wrote; 0: plain saves only */
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

static cqrs_code_t mem_cp_save_fenced(void *impl, const char *name, int64_t position, int64_t token,
                                      cqrs_error_t *err) {
  mem_cp_t *m = impl;
  cqrs_code_t rc = CQRS_OK;
  uv_mutex_lock(&m->lock);
  mem_cp_entry_t *e;
  HASH_FIND_STR(m->entries, name, e);
  if (!e) {
    e = cqrs__calloc(1, sizeof *e);
    if (e) {
      memcpy(e->name, name, strlen(name) + 1);
      CQRS_HASH_TRY(HASH_ADD_STR(m->entries, name, e));
      if (CQRS_HASH_FAILED()) {
        cqrs__free(e);
        e = NULL;
        rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot save checkpoint");
      }
    } else {
      rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot save checkpoint");
    }
  }
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

static const cqrs_checkpoint_ops_t mem_cp_ops = {.blocking = false, .load = mem_cp_load, .save = mem_cp_save,
                                                 .destroy = mem_cp_destroy, .save_fenced = mem_cp_save_fenced};

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
