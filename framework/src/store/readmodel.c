/* The read-model interface: argument checks around a backend's ops, and
 * the in-memory read model's fast path for cqrs_readmodel_set_int64. The
 * in-memory read model itself is in memory_readmodel.c. */
#include "store/memory-readmodel-private.h"

struct cqrs_readmodel {
  const cqrs_readmodel_ops_t *ops;
  void *impl;
};

cqrs_code_t cqrs_readmodel_new(const cqrs_readmodel_ops_t *ops, void *impl, cqrs_readmodel_t **out,
                               cqrs_error_t *err) {
  cqrs_code_t rc = CQRS_OK;
  cqrs_readmodel_t *rm = NULL;
  if (!out) {
    rc = cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  } else if (!ops || !ops->put || !ops->patch || !ops->patch_where || !ops->get || !ops->find) {
    rc = cqrs_error_set(err, CQRS_EINVAL, "NULL ops or a missing put, patch, patch_where, get or find");
  } else if (!CQRS__RESERVED_ZERO(ops)) {
    rc = cqrs_error_set(err, CQRS_EINVAL, "ops: reserved fields must be zero");
  } else if (!(rm = cqrs__calloc(1, sizeof *rm))) {
    rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate a read model");
  }
  if (out) *out = rm;
  if (rc) {
    if (ops && ops->destroy) ops->destroy(impl);
    return rc;
  }
  rm->ops = ops;
  rm->impl = impl;
  return CQRS_OK;
}

void cqrs_readmodel_destroy(cqrs_readmodel_t *rm) {
  if (!rm) return;
  if (rm->ops->destroy) rm->ops->destroy(rm->impl);
  cqrs__free(rm);
}

bool cqrs_readmodel_blocking(const cqrs_readmodel_t *rm) { return rm && rm->ops->blocking; }

static cqrs_code_t check(const void *rm, const char *coll, const char *id, bool need_id, int64_t position,
                         cqrs_error_t *err) {
  if (!rm) return cqrs_error_set(err, CQRS_EINVAL, "read model is NULL");
  cqrs_code_t rc = cqrs__check_str(coll, CQRS_NAME_MAX, "collection name", err);
  if (!rc && need_id) rc = cqrs__check_str(id, CQRS_ID_MAX, "document id", err);
  if (!rc && position < 1) rc = cqrs_error_set(err, CQRS_EINVAL, "position must be >= 1");
  return rc;
}

cqrs_code_t cqrs_readmodel_put(cqrs_readmodel_t *rm, const char *coll, const char *id, const bson_t *doc,
                               int64_t position, bool *applied, cqrs_error_t *err) {
  bool dummy;
  if (!applied) applied = &dummy;
  *applied = false;
  cqrs_code_t rc = check(rm, coll, id, true, position, err);
  if (rc) return rc;
  if (!doc) return cqrs_error_set(err, CQRS_EINVAL, "document is NULL");
  return rm->ops->put(rm->impl, coll, id, doc, position, applied, err);
}

cqrs_code_t cqrs_readmodel_patch(cqrs_readmodel_t *rm, const char *coll, const char *id, const bson_t *set,
                                 int64_t position, bool *applied, cqrs_error_t *err) {
  bool dummy;
  if (!applied) applied = &dummy;
  *applied = false;
  cqrs_code_t rc = check(rm, coll, id, true, position, err);
  if (rc) return rc;
  if (!set) return cqrs_error_set(err, CQRS_EINVAL, "patch is NULL");
  return rm->ops->patch(rm->impl, coll, id, set, position, applied, err);
}

/* cqrs_readmodel_set_int64 as a patch of one key, for other read models.
 * Not inlined: its over-aligned bson_t would make every call realign the
 * stack and spill, the in-memory fast path too. */
__attribute__((noinline)) static cqrs_code_t set_int64_by_patch(cqrs_readmodel_t *rm, const char *coll, const char *id, const char *key,
                                      int64_t value, int64_t position, bool *applied, cqrs_error_t *err) {
  bool dummy;
  if (!applied) applied = &dummy;
  *applied = false;
  cqrs_code_t rc;
  if ((rc = check(rm, coll, id, true, position, err))) return rc;
  if (!key || !*key) return cqrs_error_set(err, CQRS_EINVAL, "key is NULL or empty");
  bson_t set = BSON_INITIALIZER;
  if (!BSON_APPEND_INT64(&set, key, value)) rc = cqrs_error_set(err, CQRS_ETOO_LARGE, "key too long");
  if (!rc) rc = rm->ops->patch(rm->impl, coll, id, &set, position, applied, err);
  bson_destroy(&set);
  return rc;
}

cqrs_code_t cqrs_readmodel_set_int64(cqrs_readmodel_t *rm, const char *coll, const char *id, const char *key,
                                     int64_t value, int64_t position, bool *applied, cqrs_error_t *err) {
  /* A projection's common write: a tail call into the in-memory read model,
   * which checks the collection name and id itself, and only on a miss. */
  if (rm && rm->ops == &cqrs__memrm_ops && coll && id && key && *key && position >= 1)
    return cqrs__memrm_set_int64(rm->impl, coll, id, key, value, position, applied, err);
  return set_int64_by_patch(rm, coll, id, key, value, position, applied, err);
}

cqrs_code_t cqrs_readmodel_patch_where(cqrs_readmodel_t *rm, const char *coll, const bson_t *filter,
                                       const bson_t *set, int64_t position, size_t *count, cqrs_error_t *err) {
  size_t dummy;
  if (!count) count = &dummy;
  *count = 0;
  cqrs_code_t rc = check(rm, coll, NULL, false, position, err);
  if (rc) return rc;
  if (!filter || !set) return cqrs_error_set(err, CQRS_EINVAL, "filter or patch is NULL");
  return rm->ops->patch_where(rm->impl, coll, filter, set, position, count, err);
}

cqrs_code_t cqrs_readmodel_get(const cqrs_readmodel_t *rm, const char *coll, const char *id, bson_t *out,
                               bool *found, cqrs_error_t *err) {
  if (!out || !found) return cqrs_error_set(err, CQRS_EINVAL, "NULL output");
  *found = false;
  cqrs_code_t rc = check(rm, coll, id, true, 1, err);
  return rc ? rc : rm->ops->get(rm->impl, coll, id, out, found, err);
}

cqrs_code_t cqrs_readmodel_find(const cqrs_readmodel_t *rm, const char *coll, const cqrs_find_t *q,
                                cqrs_doc_visit_cb cb, void *data, cqrs_error_t *err) {
  if (!q || !cb) return cqrs_error_set(err, CQRS_EINVAL, "NULL query or callback");
  cqrs_code_t rc = check(rm, coll, NULL, false, 1, err);
  return rc ? rc : rm->ops->find(rm->impl, coll, q, cb, data, err);
}

cqrs_code_t cqrs_memory_readmodel_new(cqrs_readmodel_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  cqrs__memrm_t *m;
  cqrs_code_t rc = cqrs__memrm_new(&m, err);
  return rc ? rc : cqrs_readmodel_new(&cqrs__memrm_ops, m, out, err);
}
