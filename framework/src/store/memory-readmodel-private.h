/* The in-memory read model (memory_readmodel.c), as the read-model
 * interface (readmodel.c) sees it: readmodel.c makes the read model around
 * it and takes the fast path of cqrs_readmodel_set_int64; memory_readmodel.c
 * calls nothing back. Not installed. */
#ifndef CQRS_MEMORY_READMODEL_PRIVATE_H
#define CQRS_MEMORY_READMODEL_PRIVATE_H

#include "base/cqrs-private.h"

typedef struct cqrs__memrm cqrs__memrm_t;

/* The in-memory read model's operations: what readmodel.c wraps, and how it
 * knows a read model is the in-memory one. */
extern const cqrs_readmodel_ops_t cqrs__memrm_ops;

/* A new, empty in-memory read model in *out for cqrs__memrm_ops (freed by
 * its destroy); CQRS_ENOMEM and *out NULL when memory or its lock fails. */
cqrs_code_t cqrs__memrm_new(cqrs__memrm_t **out, cqrs_error_t *err);

/* cqrs_readmodel_set_int64 in memory, without BSON when the key is there
 * (`applied` may be NULL). The caller checks `m`, `key` and `position`; the
 * collection name and id are checked only on a miss, for its error. */
cqrs_code_t cqrs__memrm_set_int64(cqrs__memrm_t *m, const char *coll, const char *id, const char *key,
                                  int64_t value, int64_t position, bool *applied, cqrs_error_t *err);

#endif
