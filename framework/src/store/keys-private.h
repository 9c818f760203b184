/* Key stores and the store layer's use of them: the cqrs_keys_t wrapper
 * (keys.c: master key, cache, lazy creation, forgetting), the in-memory key
 * store (memory_keys.c), and sealing around the store and read-model
 * interfaces (sealed.c, sealed_rm.c). Not installed. */
#ifndef CQRS_KEYS_PRIVATE_H
#define CQRS_KEYS_PRIVATE_H

#include "model/personal-private.h"

/* A keyring (model/personal-private.h) over `keys`. */
void cqrs__keys_ring(cqrs_keys_t *keys, cqrs__keyring_t *ring);

/* sealed.c: the event store's side. Whether `req` has an event with
 * personal fields (inline: every append asks). */
static inline bool cqrs__sealed_needed(const cqrs_append_t *req) {
  for (size_t i = 0; i < req->count; i++) {
    if (cqrs__personal_table(req->events[i]->type->fields)) return true;
  }
  return false;
}
cqrs_code_t cqrs__sealed_append(cqrs_store_t *s, const cqrs_append_t *req, cqrs_append_result_t *res,
                                cqrs_error_t *err);
/* A visitor that opens the sealed events a store yields before `cb` sees
 * them. */
typedef struct cqrs__opener {
  cqrs_store_t *store;
  cqrs_event_visit_cb cb;
  void *data;
  cqrs_code_t rc;
  cqrs_error_t *err;
} cqrs__opener_t;
bool cqrs__sealed_visit(const cqrs_event_t *e, void *data);

/* Snapshots (repository.c): the state encoded with its personal fields
 * sealed; a snapshot's state opened for the decoder (forgotten values as
 * markers). */
cqrs_code_t cqrs__sealed_snapshot_encode(cqrs_store_t *s, const cqrs_aggregate_type_t *type, const char *id,
                                         const void *state, bson_t *out, cqrs_error_t *err);
cqrs_code_t cqrs__sealed_snapshot_decode(cqrs_store_t *s, const cqrs_aggregate_type_t *type, const char *id,
                                         const bson_t *in, void *state, cqrs_error_t *err);

/* sealed_rm.c: the read-model side. The document types a read model was
 * given, by collection. */
typedef struct cqrs__rm_type {
  cqrs_doc_type_t type; /* a copy; `collection` points at `name` */
  cqrs_keys_t *keys;
  struct cqrs__rm_type *next;
  char name[CQRS_NAME_MAX];
} cqrs__rm_type_t;

/* The type of `coll` among `list`, NULL when none. */
const cqrs__rm_type_t *cqrs__rm_type_of(const cqrs__rm_type_t *list, const char *coll);
/* Adds a copy of `type` at the head of *list (the same again: nothing;
 * another for a collection it has: CQRS_EDUPLICATE; a table
 * cqrs_fields_check refuses: CQRS_EINVAL). */
cqrs_code_t cqrs__rm_type_add(cqrs__rm_type_t **list, const cqrs_doc_type_t *type, cqrs_keys_t *keys,
                              cqrs_error_t *err);
void cqrs__rm_types_free(cqrs__rm_type_t *list);

/* `doc` (a document, a patch, `owner` the document's id or NULL) with its
 * personal keys sealed into `out` (initialised by the caller), for the
 * subject the document or `filter` (a patch_where's, may be NULL) names,
 * or that `lookup` finds (a patch of one document: the stored document's
 * subject; may be NULL). *sealed: any were. */
typedef cqrs_code_t (*cqrs__rm_lookup_fn)(void *data, char subject[CQRS_ID_MAX], bool *found, cqrs_error_t *err);
cqrs_code_t cqrs__rm_seal(const cqrs__rm_type_t *t, const bson_t *doc, const char *owner, const bson_t *filter,
                          cqrs__rm_lookup_fn lookup, void *lookup_data, bson_t *out, bool *sealed, cqrs_error_t *err);
/* The subject a stored document of the type names (NULL: none). */
const char *cqrs__rm_subject(const cqrs__rm_type_t *t, const bson_t *doc, const char *owner);
/* `doc` opened into `out` (initialised by the caller): forgotten values
 * read CQRS_FORGOTTEN. *opened false: nothing was sealed (out untouched). */
cqrs_code_t cqrs__rm_open(const cqrs__rm_type_t *t, const bson_t *doc, bson_t *out, bool *opened, cqrs_error_t *err);

#endif
