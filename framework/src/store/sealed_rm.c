/* Personal data around the read-model interface: the document types a read
 * model was given, and the sealing of what is written to their collections
 * and the opening of what is read from them (readmodel.c calls these). */
#include <stdio.h>

#include "store/keys-private.h"

const cqrs__rm_type_t *cqrs__rm_type_of(const cqrs__rm_type_t *list, const char *coll) {
  for (const cqrs__rm_type_t *t = list; t && coll; t = t->next) {
    if (!strcmp(t->name, coll)) return t;
  }
  return NULL;
}

cqrs_code_t cqrs__rm_type_add(cqrs__rm_type_t **list, const cqrs_doc_type_t *type, cqrs_keys_t *keys,
                              cqrs_error_t *err) {
  if (!type || !keys || !type->fields) return cqrs_error_set(err, CQRS_EINVAL, "NULL document type, fields or keys");
  cqrs_code_t rc = cqrs__check_str(type->collection, CQRS_NAME_MAX, "collection name", err);
  if (rc) return rc;
  cqrs_error_t e;
  if (cqrs_fields_check(type->fields, &e))
    return cqrs_error_set(err, CQRS_EINVAL, "document type of %s: %.180s", type->collection, e.message);
  const cqrs__rm_type_t *had = cqrs__rm_type_of(*list, type->collection);
  if (had && had->type.fields == type->fields && had->keys == keys) return CQRS_OK;
  if (had) return cqrs_error_set(err, CQRS_EDUPLICATE, "collection %s already has a document type", type->collection);
  cqrs__rm_type_t *t = cqrs__calloc(1, sizeof *t);
  if (!t) return cqrs_error_set(err, CQRS_ENOMEM, "cannot add a document type");
  memcpy(t->name, type->collection, strlen(type->collection) + 1);
  t->type.collection = t->name;
  t->type.fields = type->fields;
  t->keys = keys;
  t->next = *list;
  *list = t;
  return CQRS_OK;
}

void cqrs__rm_types_free(cqrs__rm_type_t *list) {
  while (list) {
    cqrs__rm_type_t *next = list->next;
    cqrs__free(list);
    list = next;
  }
}

/* The associated data of read-model values names no collection: a rebuild
 * writes a fresh collection and renames it (billing-admin rebuild). The
 * field's key and the subject bind them. */
static bool ctx_of(char *buf, size_t cap, const char *coll) {
  CQRS__UNUSED(coll);
  return (size_t)snprintf(buf, cap, "rm") < cap;
}

/* The subject's id under its (dotted) key in `doc`, written as one key
 * ({"customer.id": x}, a filter or a patch) or nested ({customer: {id: x}}). */
static const char *subject_in(const cqrs_field_t *fields, const bson_t *doc, const char *owner) {
  char key[160];
  if (!cqrs__personal_subject_key(fields, key, sizeof key)) return cqrs__personal_doc_subject(fields, doc, owner);
  bson_iter_t it;
  if (doc && bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_UTF8(&it)) return bson_iter_utf8(&it, NULL);
  return doc ? cqrs__personal_doc_subject(fields, doc, owner) : NULL;
}

const char *cqrs__rm_subject(const cqrs__rm_type_t *t, const bson_t *doc, const char *owner) {
  return subject_in(t->type.fields, doc, owner);
}

/* Whether `doc` sets a personal key (or a document holding one). */
static bool touches(const cqrs_field_t *fields, const bson_t *doc, const char *prefix, int depth) {
  bson_iter_t it;
  if (depth > 16 || !bson_iter_init(&it, doc)) return false;
  while (bson_iter_next(&it)) {
    char path[160];
    if ((size_t)snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", bson_iter_key(&it)) >= sizeof path)
      continue;
    bool personal;
    const cqrs_field_t *f = cqrs__personal_lookup(fields, path, &personal);
    if (personal) return true;
    if (f && f->kind == CQRS_FIELD_DOC && BSON_ITER_HOLDS_DOCUMENT(&it)) {
      uint32_t len;
      const uint8_t *raw;
      bson_iter_document(&it, &len, &raw);
      bson_t child;
      if (bson_init_static(&child, raw, len) && touches(fields, &child, path, depth + 1)) return true;
    }
  }
  return false;
}

cqrs_code_t cqrs__rm_seal(const cqrs__rm_type_t *t, const bson_t *doc, const char *owner, const bson_t *filter,
                          cqrs__rm_lookup_fn lookup, void *lookup_data, bson_t *out, bool *sealed, cqrs_error_t *err) {
  const cqrs_field_t *fields = t->type.fields;
  *sealed = false;
  if (!touches(fields, doc, "", 0)) return CQRS_OK;
  char found_subject[CQRS_ID_MAX];
  const char *subject = subject_in(fields, doc, owner);
  if ((!subject || !*subject) && filter) subject = subject_in(fields, filter, owner);
  if ((!subject || !*subject) && lookup) {
    bool found = false;
    cqrs_code_t rc = lookup(lookup_data, found_subject, &found, err);
    if (rc) return rc;
    if (found) subject = found_subject;
  }
  if (!subject || !*subject)
    return cqrs_error_set(err, CQRS_EINVAL, "a write to %s sets personal data and names no subject",
                          t->type.collection);
  char ctx[CQRS_NAME_MAX + 8];
  if (!ctx_of(ctx, sizeof ctx, t->type.collection)) return cqrs_error_set(err, CQRS_ETOO_LARGE, "collection name");
  cqrs__keyring_t ring;
  cqrs__keys_ring(t->keys, &ring);
  *sealed = true;
  return cqrs__personal_seal_doc(fields, doc, subject, ctx, &ring, out, NULL, err);
}

cqrs_code_t cqrs__rm_open(const cqrs__rm_type_t *t, const bson_t *doc, bson_t *out, bool *opened, cqrs_error_t *err) {
  *opened = false;
  if (!cqrs__personal_sealed(doc)) return CQRS_OK;
  char ctx[CQRS_NAME_MAX + 8];
  if (!ctx_of(ctx, sizeof ctx, t->type.collection)) return cqrs_error_set(err, CQRS_ETOO_LARGE, "collection name");
  cqrs__keyring_t ring;
  cqrs__keys_ring(t->keys, &ring);
  *opened = true;
  return cqrs__personal_open(doc, ctx, &ring, false, out, err);
}
