/* libcqrs: read-model stores: BSON documents by id in named collections,
 * written by projections, read by queries. Writing a read model of your
 * own: cqrs/backend.h. */
#ifndef CQRS_READMODEL_H
#define CQRS_READMODEL_H

#include <bson/bson.h>

#include "cqrs/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Every document written through this interface remembers, under the key
 * CQRS_RM_POSITION, the global position of the last event applied to it; a
 * write with a position not above it changes nothing, so replaying events is
 * harmless. */
#define CQRS_RM_POSITION "_position"
#define CQRS_RM_MAX_FILTER 8

typedef struct cqrs_find {
  const bson_t *filter; /* equality on (dotted) keys, NULL: all */
  const char *sort;     /* a (dotted) key, NULL: by id */
  bool descending;
  size_t limit; /* 0: no limit */
} cqrs_find_t;

typedef bool (*cqrs_doc_visit_cb)(const bson_t *doc, void *data);

typedef struct cqrs_readmodel cqrs_readmodel_t;

CQRS_EXPORT void cqrs_readmodel_destroy(cqrs_readmodel_t *rm);
/* True when the read model's calls block (network I/O), as for a store. */
CQRS_EXPORT bool cqrs_readmodel_blocking(const cqrs_readmodel_t *rm);
/* In-memory read model; thread-safe. NULL `out`: CQRS_EINVAL; CQRS_ENOMEM;
 * on error *out is NULL. `err` may be NULL. */
CQRS_EXPORT cqrs_code_t cqrs_memory_readmodel_new(cqrs_readmodel_t **out, cqrs_error_t *err);

/* Writes (projections). `applied`/`count` may be NULL. Arguments are checked:
 * NULL or empty names, ids over CQRS_ID_MAX - 1 bytes, position < 1. */
CQRS_EXPORT cqrs_code_t cqrs_readmodel_put(cqrs_readmodel_t *rm, const char *coll, const char *id,
                                           const bson_t *doc, int64_t position, bool *applied, cqrs_error_t *err);
CQRS_EXPORT cqrs_code_t cqrs_readmodel_patch(cqrs_readmodel_t *rm, const char *coll, const char *id,
                                             const bson_t *set, int64_t position, bool *applied,
                                             cqrs_error_t *err);
/* cqrs_readmodel_patch of the one key {key: value}: the usual write of a
 * projection (a balance, a counter). The in-memory read model writes the
 * value where it lies, without building a document. */
CQRS_EXPORT cqrs_code_t cqrs_readmodel_set_int64(cqrs_readmodel_t *rm, const char *coll, const char *id,
                                                 const char *key, int64_t value, int64_t position, bool *applied,
                                                 cqrs_error_t *err);
CQRS_EXPORT cqrs_code_t cqrs_readmodel_patch_where(cqrs_readmodel_t *rm, const char *coll, const bson_t *filter,
                                                   const bson_t *set, int64_t position, size_t *count,
                                                   cqrs_error_t *err);

/* Reads (queries): take a const read model. */
CQRS_EXPORT cqrs_code_t cqrs_readmodel_get(const cqrs_readmodel_t *rm, const char *coll, const char *id,
                                           bson_t *out, bool *found, cqrs_error_t *err);
CQRS_EXPORT cqrs_code_t cqrs_readmodel_find(const cqrs_readmodel_t *rm, const char *coll, const cqrs_find_t *q,
                                            cqrs_doc_visit_cb cb, void *data, cqrs_error_t *err);

#ifdef __cplusplus
}
#endif
#endif
