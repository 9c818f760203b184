/* Lease stores: the interface, and the one in memory. What a dispatcher
 * does with them is in lease/. */
#include "base/cqrs-uthash.h"

/* ---- the store interface ---- */

struct cqrs_lease_store {
  const cqrs_lease_ops_t *ops;
  void *impl;
};

cqrs_code_t cqrs_lease_store_new(const cqrs_lease_ops_t *ops, void *impl, cqrs_lease_store_t **out, cqrs_error_t *err) {
  cqrs_code_t rc = CQRS_OK;
  cqrs_lease_store_t *l = NULL;
  if (!out) {
    rc = cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  } else if (!ops || !ops->acquire || !ops->renew || !ops->release) {
    rc = cqrs_error_set(err, CQRS_EINVAL, "NULL ops or a missing acquire, renew or release");
  } else if (!CQRS__RESERVED_ZERO(ops)) {
    rc = cqrs_error_set(err, CQRS_EINVAL, "ops: reserved fields must be zero");
  } else if (!(l = cqrs__calloc(1, sizeof *l))) {
    rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate leases");
  }
  if (out) *out = l;
  if (rc) {
    if (ops && ops->destroy) ops->destroy(impl);
    return rc;
  }
  l->ops = ops;
  l->impl = impl;
  return CQRS_OK;
}

void cqrs_lease_store_destroy(cqrs_lease_store_t *l) {
  if (!l) return;
  if (l->ops->destroy) l->ops->destroy(l->impl);
  cqrs__free(l);
}

bool cqrs__leases_blocking(const cqrs_lease_store_t *l) { return l->ops->blocking; }

static cqrs_code_t check_args(const cqrs_lease_store_t *l, const char *name, const char *owner, cqrs_error_t *err) {
  if (!l) return cqrs_error_set(err, CQRS_EINVAL, "NULL leases");
  cqrs_code_t rc = cqrs__check_str(name, CQRS_NAME_MAX, "lease name", err);
  return rc ? rc : cqrs__check_str(owner, CQRS_NAME_MAX, "lease owner", err);
}

cqrs_code_t cqrs_lease_store_acquire(cqrs_lease_store_t *l, const char *name, const char *owner, uint64_t ttl_ms,
                                     int64_t *token, cqrs_error_t *err) {
  if (!token) return cqrs_error_set(err, CQRS_EINVAL, "token is NULL");
  *token = 0;
  cqrs_code_t rc = check_args(l, name, owner, err);
  if (!rc && (ttl_ms == 0 || ttl_ms > INT32_MAX)) rc = cqrs_error_set(err, CQRS_EINVAL, "lease ttl out of range");
  return rc ? rc : l->ops->acquire(l->impl, name, owner, ttl_ms, token, err);
}

cqrs_code_t cqrs_lease_store_renew(cqrs_lease_store_t *l, const char *name, const char *owner, int64_t token,
                                   uint64_t ttl_ms, cqrs_error_t *err) {
  cqrs_code_t rc = check_args(l, name, owner, err);
  if (!rc && (token <= 0 || ttl_ms == 0 || ttl_ms > INT32_MAX))
    rc = cqrs_error_set(err, CQRS_EINVAL, "lease token or ttl out of range");
  return rc ? rc : l->ops->renew(l->impl, name, owner, token, ttl_ms, err);
}

cqrs_code_t cqrs_lease_store_release(cqrs_lease_store_t *l, const char *name, const char *owner, int64_t token,
                                     cqrs_error_t *err) {
  cqrs_code_t rc = check_args(l, name, owner, err);
  if (!rc && token <= 0) rc = cqrs_error_set(err, CQRS_EINVAL, "lease token out of range");
  return rc ? rc : l->ops->release(l->impl, name, owner, token, err);
}

/* ---- in memory ---- */

typedef struct mem_lease {
  UT_hash_handle hh;
  int64_t token;   /* the latest handed out */
  int64_t expires; /* wall ms of the store's clock; 0: free */
  char owner[CQRS_NAME_MAX];
  char name[CQRS_NAME_MAX];
} mem_lease_t;

typedef struct mem_leases {
  const cqrs_clock_t *clock; /* NULL: the real one */
  uv_mutex_t lock;
  mem_lease_t *all;
} mem_leases_t;

static cqrs_code_t mem_acquire(void *impl, const char *name, const char *owner, uint64_t ttl_ms, int64_t *token,
                               cqrs_error_t *err) {
  mem_leases_t *m = impl;
  cqrs_code_t rc = CQRS_OK;
  int64_t now = cqrs__clock_wall(m->clock);
  uv_mutex_lock(&m->lock);
  mem_lease_t *e;
  HASH_FIND_STR(m->all, name, e);
  if (!e && (e = cqrs__calloc(1, sizeof *e))) {
    memcpy(e->name, name, strlen(name) + 1);
    CQRS_HASH_TRY(HASH_ADD_STR(m->all, name, e));
    if (CQRS_HASH_FAILED()) {
      cqrs__free(e);
      e = NULL;
    }
  }
  if (!e) {
    rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot record lease %s", name);
  } else if (e->expires <= now || !strcmp(e->owner, owner)) {
    e->token++;
    e->expires = now + (int64_t)ttl_ms;
    memcpy(e->owner, owner, strlen(owner) + 1);
    *token = e->token;
  }
  uv_mutex_unlock(&m->lock);
  return rc;
}

/* The entry of `name` while `owner` holds it under `token`; lock held. */
static mem_lease_t *mem_held(mem_leases_t *m, const char *name, const char *owner, int64_t token) {
  mem_lease_t *e;
  HASH_FIND_STR(m->all, name, e);
  return e && e->token == token && e->expires > cqrs__clock_wall(m->clock) && !strcmp(e->owner, owner) ? e : NULL;
}

static cqrs_code_t mem_renew(void *impl, const char *name, const char *owner, int64_t token, uint64_t ttl_ms,
                             cqrs_error_t *err) {
  mem_leases_t *m = impl;
  uv_mutex_lock(&m->lock);
  mem_lease_t *e = mem_held(m, name, owner, token);
  if (e) e->expires = cqrs__clock_wall(m->clock) + (int64_t)ttl_ms;
  uv_mutex_unlock(&m->lock);
  return e ? CQRS_OK : cqrs_error_set(err, CQRS_ECONFLICT, "lease %s is no longer %s's (token %lld)", name, owner,
                                      (long long)token);
}

static cqrs_code_t mem_release(void *impl, const char *name, const char *owner, int64_t token, cqrs_error_t *err) {
  CQRS__UNUSED(err);
  mem_leases_t *m = impl;
  uv_mutex_lock(&m->lock);
  mem_lease_t *e = mem_held(m, name, owner, token);
  if (e) e->expires = 0;
  uv_mutex_unlock(&m->lock);
  return CQRS_OK;
}

static void mem_destroy(void *impl) {
  mem_leases_t *m = impl;
  mem_lease_t *e, *tmp;
  HASH_ITER(hh, m->all, e, tmp) {
    HASH_DEL(m->all, e);
    cqrs__free(e);
  }
  uv_mutex_destroy(&m->lock);
  cqrs__free(m);
}

static const cqrs_lease_ops_t mem_ops = {.blocking = false, .acquire = mem_acquire, .renew = mem_renew,
                                         .release = mem_release, .destroy = mem_destroy};

cqrs_code_t cqrs_memory_lease_store_new(cqrs_lease_store_t **out, cqrs_error_t *err) {
  return cqrs_memory_lease_store_new_with_clock(NULL, out, err);
}

cqrs_code_t cqrs_memory_lease_store_new_with_clock(cqrs_clock_t *clock, cqrs_lease_store_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  mem_leases_t *m = cqrs__calloc(1, sizeof *m);
  if (!m) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate memory leases");
  if (uv_mutex_init(&m->lock)) {
    cqrs__free(m);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot initialise the leases' lock");
  }
  m->clock = clock;
  return cqrs_lease_store_new(&mem_ops, m, out, err);
}
