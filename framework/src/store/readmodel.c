/* The read-model interface: argument checks around a backend's ops, and
 * the in-memory read model's fast path for cqrs_readmodel_set_int64. The
 * in-memory read model itself is in memory_readmodel.c. */
#include "store/keys-private.h"
#include "store/memory-readmodel-private.h"

struct cqrs_readmodel {
  const cqrs_readmodel_ops_t *ops;
  void *impl;
  cqrs__rm_type_t *types; /* collections with personal fields (sealed_rm.c) */
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
  cqrs__rm_types_free(rm->types);
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

cqrs_code_t cqrs_readmodel_add_type(cqrs_readmodel_t *rm, const cqrs_doc_type_t *type, cqrs_keys_t *keys,
                                    cqrs_error_t *err) {
  if (!rm) return cqrs_error_set(err, CQRS_EINVAL, "read model is NULL");
  return cqrs__rm_type_add(&rm->types, type, keys, err);
}

cqrs_code_t cqrs_readmodel_seal_doc(const cqrs_readmodel_t *rm, const char *coll, const char *id, const bson_t *in,
                                    bson_t *out, cqrs_error_t *err) {
  if (!rm || !coll || !in || !out) return cqrs_error_set(err, CQRS_EINVAL, "NULL read model, collection or document");
  const cqrs__rm_type_t *t = cqrs__rm_type_of(rm->types, coll);
  bool any = false;
  cqrs_code_t rc = t ? cqrs__rm_seal(t, in, id, NULL, NULL, NULL, out, &any, err) : CQRS_OK;
  if (!rc && !any) bson_concat(out, in);
  return rc;
}

cqrs_code_t cqrs_readmodel_open_doc(const cqrs_readmodel_t *rm, const char *coll, const bson_t *in, bson_t *out,
                                    cqrs_error_t *err) {
  if (!rm || !coll || !in || !out) return cqrs_error_set(err, CQRS_EINVAL, "NULL read model, collection or document");
  const cqrs__rm_type_t *t = cqrs__rm_type_of(rm->types, coll);
  bool any = false;
  cqrs_code_t rc = t ? cqrs__rm_open(t, in, out, &any, err) : CQRS_OK;
  if (!rc && !any) bson_concat(out, in);
  return rc;
}

/* What a patch of one document needs to seal: the stored document's subject. */
typedef struct stored {
  const cqrs_readmodel_t *rm;
  const cqrs__rm_type_t *t;
  const char *coll, *id;
} stored_t;

static cqrs_code_t stored_subject(void *data, char subject[CQRS_ID_MAX], bool *found, cqrs_error_t *err) {
  stored_t *s = data;
  bson_t doc;
  cqrs_code_t rc = s->rm->ops->get(s->rm->impl, s->coll, s->id, &doc, found, err);
  if (rc || !*found) return rc;
  const char *subj = cqrs__rm_subject(s->t, &doc, s->id);
  *found = subj && strnlen(subj, CQRS_ID_MAX) < CQRS_ID_MAX;
  if (*found) memcpy(subject, subj, strlen(subj) + 1);
  bson_destroy(&doc);
  return CQRS_OK;
}

cqrs_code_t cqrs_readmodel_put(cqrs_readmodel_t *rm, const char *coll, const char *id, const bson_t *doc,
                               int64_t position, bool *applied, cqrs_error_t *err) {
  bool dummy;
  if (!applied) applied = &dummy;
  *applied = false;
  cqrs_code_t rc = check(rm, coll, id, true, position, err);
  if (rc) return rc;
  if (!doc) return cqrs_error_set(err, CQRS_EINVAL, "document is NULL");
  const cqrs__rm_type_t *t = cqrs__rm_type_of(rm->types, coll);
  if (!t) return rm->ops->put(rm->impl, coll, id, doc, position, applied, err);
  bson_t sealed = BSON_INITIALIZER;
  bool any;
  if (!(rc = cqrs__rm_seal(t, doc, id, NULL, NULL, NULL, &sealed, &any, err)))
    rc = rm->ops->put(rm->impl, coll, id, any ? &sealed : doc, position, applied, err);
  bson_destroy(&sealed);
  return rc;
}

/* A patch of one document, its personal keys sealed. */
static cqrs_code_t patch_sealed(cqrs_readmodel_t *rm, const char *coll, const char *id, const bson_t *set,
                                int64_t position, bool *applied, cqrs_error_t *err) {
  const cqrs__rm_type_t *t = cqrs__rm_type_of(rm->types, coll);
  if (!t) return rm->ops->patch(rm->impl, coll, id, set, position, applied, err);
  stored_t st = {rm, t, coll, id};
  bson_t sealed = BSON_INITIALIZER;
  bool any;
  cqrs_code_t rc = cqrs__rm_seal(t, set, id, NULL, stored_subject, &st, &sealed, &any, err);
  if (!rc) rc = rm->ops->patch(rm->impl, coll, id, any ? &sealed : set, position, applied, err);
  bson_destroy(&sealed);
  return rc;
}

cqrs_code_t cqrs_readmodel_patch(cqrs_readmodel_t *rm, const char *coll, const char *id, const bson_t *set,
                                 int64_t position, bool *applied, cqrs_error_t *err) {
  bool dummy;
  if (!applied) applied = &dummy;
  *applied = false;
  cqrs_code_t rc = check(rm, coll, id, true, position, err);
  if (rc) return rc;
  if (!set) return cqrs_error_set(err, CQRS_EINVAL, "patch is NULL");
  return patch_sealed(rm, coll, id, set, position, applied, err);
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
  if (!rc) rc = patch_sealed(rm, coll, id, &set, position, applied, err);
  bson_destroy(&set);
  return rc;
}

cqrs_code_t cqrs_readmodel_set_int64(cqrs_readmodel_t *rm, const char *coll, const char *id, const char *key,
                                     int64_t value, int64_t position, bool *applied, cqrs_error_t *err) {
  /* A projection's common write: a tail call into the in-memory read model,
   * which checks the collection name and id itself, and only on a miss. */
  if (rm && rm->ops == &cqrs__memrm_ops && !rm->types && coll && id && key && *key && position >= 1)
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
  const cqrs__rm_type_t *t = cqrs__rm_type_of(rm->types, coll);
  if (!t) return rm->ops->patch_where(rm->impl, coll, filter, set, position, count, err);
  bson_t sealed = BSON_INITIALIZER;
  bool any;
  if (!(rc = cqrs__rm_seal(t, set, NULL, filter, NULL, NULL, &sealed, &any, err)))
    rc = rm->ops->patch_where(rm->impl, coll, filter, any ? &sealed : set, position, count, err);
  bson_destroy(&sealed);
  return rc;
}

cqrs_code_t cqrs_readmodel_get(const cqrs_readmodel_t *rm, const char *coll, const char *id, bson_t *out,
                               bool *found, cqrs_error_t *err) {
  if (!out || !found) return cqrs_error_set(err, CQRS_EINVAL, "NULL output");
  *found = false;
  cqrs_code_t rc = check(rm, coll, id, true, 1, err);
  if (rc || (rc = rm->ops->get(rm->impl, coll, id, out, found, err)) || !*found) return rc;
  const cqrs__rm_type_t *t = cqrs__rm_type_of(rm->types, coll);
  if (!t) return CQRS_OK;
  bson_t opened = BSON_INITIALIZER;
  bool any;
  rc = cqrs__rm_open(t, out, &opened, &any, err);
  if (rc || any) {
    bson_destroy(out);
    *found = !rc;
    if (!rc) bson_copy_to(&opened, out);
  }
  bson_destroy(&opened);
  return rc;
}

/* Hands each document found to the caller's visitor, opened. */
typedef struct opening {
  const cqrs__rm_type_t *t;
  cqrs_doc_visit_cb cb;
  void *data;
  cqrs_code_t rc;
  cqrs_error_t *err;
} opening_t;

static bool open_visit(const bson_t *doc, void *data) {
  opening_t *o = data;
  bson_t opened = BSON_INITIALIZER;
  bool any, more = false;
  if (!(o->rc = cqrs__rm_open(o->t, doc, &opened, &any, o->err))) more = o->cb(any ? &opened : doc, o->data);
  bson_destroy(&opened);
  return more;
}

cqrs_code_t cqrs_readmodel_find(const cqrs_readmodel_t *rm, const char *coll, const cqrs_find_t *q,
                                cqrs_doc_visit_cb cb, void *data, cqrs_error_t *err) {
  if (!q || !cb) return cqrs_error_set(err, CQRS_EINVAL, "NULL query or callback");
  cqrs_code_t rc = check(rm, coll, NULL, false, 1, err);
  if (rc) return rc;
  const cqrs__rm_type_t *t = cqrs__rm_type_of(rm->types, coll);
  if (!t) return rm->ops->find(rm->impl, coll, q, cb, data, err);
  opening_t o = {t, cb, data, CQRS_OK, err};
  rc = rm->ops->find(rm->impl, coll, q, open_visit, &o, err);
  return rc ? rc : o.rc;
}

cqrs_code_t cqrs_memory_readmodel_new(cqrs_readmodel_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  cqrs__memrm_t *m;
  cqrs_code_t rc = cqrs__memrm_new(&m, err);
  return rc ? rc : cqrs_readmodel_new(&cqrs__memrm_ops, m, out, err);
}
