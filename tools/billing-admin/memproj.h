/* Projecting many events fast: the billing projections run into an
 * in-memory read model, and what they built is written to MongoDB in bulk
 * inserts. A document that already exists there is kept (it is at that
 * event or later: inserts never overwrite). Events that need a document the
 * memory does not hold (a payment of an invoice flushed earlier, an e-mail
 * change reaching every invoice of a customer) flush first, then go through
 * the MongoDB read model one by one, guarded by _position as usual. */
#ifndef BILLING_ADMIN_MEMPROJ_H
#define BILLING_ADMIN_MEMPROJ_H

#include "admin.h"

typedef struct memproj memproj_t;

/* `cols` names the target collections (NULL: the defaults); `a` borrowed.
 * With `flush_to_mongo` false nothing is ever written (check): the memory
 * read model is the result. NULL on allocation failure. */
memproj_t *memproj_new(admin_t *a, const billing_collections_t *cols, bool flush_to_mongo);
void memproj_destroy(memproj_t *mp);

/* Applies `e` if one of the billing projections wants it. */
cqrs_code_t memproj_apply(memproj_t *mp, const cqrs_event_t *e, cqrs_error_t *err);
/* Writes what memory holds and empties it. Returns ADMIN_OK or an exit code. */
int memproj_flush(memproj_t *mp);

/* The in-memory read model (check compares with it); the highest position
 * applied; documents inserted by flushes so far. */
cqrs_readmodel_t *memproj_readmodel(memproj_t *mp);
int64_t memproj_position(const memproj_t *mp);
int64_t memproj_written(const memproj_t *mp);

#endif
