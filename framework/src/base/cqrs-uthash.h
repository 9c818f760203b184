/* uthash configured for libcqrs: our allocator, and no exit() when memory
 * runs out: an insertion that could not allocate leaves the table unchanged
 * and CQRS_HASH_FAILED() reports it. */
#ifndef CQRS_UTHASH_H
#define CQRS_UTHASH_H

#include <stdbool.h>

#include "base/cqrs-private.h"

extern _Thread_local bool cqrs__hash_oom;

#define HASH_NONFATAL_OOM 1
#define uthash_malloc(sz) cqrs__malloc(sz)
#define uthash_free(ptr, sz) cqrs__free(ptr)
#define uthash_nonfatal_oom(obj) (cqrs__hash_oom = true)
/* Our word-at-a-time hash instead of Jenkins' (a third of the instructions
 * for the short ids and names these tables hold). */
#define HASH_FUNCTION(keyptr, keylen, hashv) ((hashv) = (unsigned)cqrs__hash_bytes((keyptr), (size_t)(keylen), 0))

#include <uthash.h>

/* Wrap an insertion: CQRS_HASH_TRY(HASH_ADD_STR(...)); if (CQRS_HASH_FAILED()) ... */
#define CQRS_HASH_TRY(stmt) \
  do {                      \
    cqrs__hash_oom = false; \
    stmt;                   \
  } while (0)
#define CQRS_HASH_FAILED() (cqrs__hash_oom)

#endif
