/* See memproj.h. */
#include <stdlib.h>
#include <string.h>

#include "memproj.h"

struct memproj {
  admin_t *a;
  billing_collections_t cols;
  bool flush;
  cqrs_readmodel_t *mem;
  cqrs_readmodel_t *customers; /* written out already: kept, for the invoices still to come */
  billing_t *in_mem, *in_mongo;
  int64_t position, written;
};

memproj_t *memproj_new(admin_t *a, const billing_collections_t *cols, bool flush_to_mongo) {
  memproj_t *mp = calloc(1, sizeof *mp);
  if (!mp) return NULL;
  mp->a = a;
  mp->cols = cols ? *cols : billing_default_collections;
  mp->flush = flush_to_mongo;
  cqrs_memory_readmodel_new(&mp->mem, NULL);
  cqrs_memory_readmodel_new(&mp->customers, NULL);
  mp->in_mem = billing_projector_new(mp->mem, &mp->cols);
  mp->in_mongo = billing_projector_new(a->rm, &mp->cols);
  /* What goes to MongoDB seals the customers' data, under these names too. */
  if (!mp->mem || !mp->customers || !mp->in_mem || !mp->in_mongo ||
      billing_seal_read_model(a->rm, &mp->cols, a->keys, NULL)) {
    memproj_destroy(mp);
    return NULL;
  }
  return mp;
}

void memproj_destroy(memproj_t *mp) {
  if (!mp) return;
  billing_destroy(mp->in_mem);
  billing_destroy(mp->in_mongo);
  cqrs_readmodel_destroy(mp->mem);
  cqrs_readmodel_destroy(mp->customers);
  free(mp);
}

cqrs_readmodel_t *memproj_readmodel(memproj_t *mp) { return mp->mem; }
int64_t memproj_position(const memproj_t *mp) { return mp->position; }
int64_t memproj_written(const memproj_t *mp) { return mp->written; }

static bool in_mem(memproj_t *mp, const char *coll, const char *id) {
  bson_t doc;
  bool found = false;
  if (cqrs_readmodel_get(mp->mem, coll, id, &doc, &found, NULL) == CQRS_OK && found) bson_destroy(&doc);
  return found;
}

/* An invoice takes its customer's name and e-mail from the read model: a
 * customer flushed earlier comes back from MongoDB. */
static cqrs_code_t ensure_customer(memproj_t *mp, const char *id, cqrs_error_t *err) {
  if (!mp->flush || in_mem(mp, mp->cols.customers, id)) return CQRS_OK;
  bson_t doc;
  bool found;
  cqrs_code_t rc = cqrs_readmodel_get(mp->customers, mp->cols.customers, id, &doc, &found, err);
  if (!rc && !found) rc = cqrs_readmodel_get(mp->a->rm, mp->cols.customers, id, &doc, &found, err);
  if (rc || !found) return rc;
  bson_iter_t it;
  int64_t pos = bson_iter_init_find(&it, &doc, CQRS_RM_POSITION) ? bson_iter_as_int64(&it) : 1;
  rc = cqrs_readmodel_put(mp->mem, mp->cols.customers, id, &doc, pos > 0 ? pos : 1, NULL, err);
  bson_destroy(&doc);
  return rc;
}

cqrs_code_t memproj_apply(memproj_t *mp, const cqrs_event_t *e, cqrs_error_t *err) {
  for (const admin_projection_t *p = admin_projections; p->name; p++) {
    if (!admin_projection_wants(p, e->type)) continue;
    if (e->position > mp->position) mp->position = e->position;
    bool slow = false;
    const char *id = cqrs_event_aggregate_id(e);
    cqrs_code_t rc = CQRS_OK;
    if (e->type == &billing_invoice_issued) {
      rc = ensure_customer(mp, ((const billing_invoice_issued_t *)e->payload)->customer_id, err);
    } else if (e->type == &billing_customer_email_changed) {
      slow = mp->flush; /* it reaches invoices flushed before */
    } else if (e->type == &billing_invoice_paid || e->type == &billing_invoice_cancelled) {
      slow = mp->flush && !in_mem(mp, mp->cols.invoices, id);
    } else if (e->type != &billing_customer_registered && e->type != &billing_account_opened) {
      slow = mp->flush && !in_mem(mp, mp->cols.balances, id);
    }
    if (rc) return rc;
    if (slow) {
      if (memproj_flush(mp)) return cqrs_error_set(err, CQRS_ESTORE, "the bulk write failed");
      if (e->type == &billing_customer_email_changed) { /* the kept customers are stale now */
        cqrs_readmodel_destroy(mp->customers);
        if ((rc = cqrs_memory_readmodel_new(&mp->customers, err))) return rc;
      }
      rc = p->handler(e, mp->in_mongo, err);
    } else {
      rc = p->handler(e, mp->in_mem, err);
    }
    /* The live projection fails on such an event too (and dead-letters it):
     * the read side it implies has no such document either. */
    if (rc == CQRS_ENOT_FOUND) rc = CQRS_OK;
    if (rc) return rc;
  }
  return CQRS_OK;
}

typedef struct bulk {
  mongoc_bulk_operation_t *op;
  size_t n;
  const cqrs_readmodel_t *rm; /* seals what is written */
  const char *coll;
} bulk_t;

static bool keep_customer(const bson_t *doc, void *data) {
  memproj_t *mp = data;
  bson_iter_t it;
  const char *id = bson_iter_init_find(&it, doc, "_id") && BSON_ITER_HOLDS_UTF8(&it) ? bson_iter_utf8(&it, NULL) : NULL;
  int64_t pos = bson_iter_init_find(&it, doc, CQRS_RM_POSITION) ? bson_iter_as_int64(&it) : 1;
  if (id) cqrs_readmodel_put(mp->customers, mp->cols.customers, id, doc, pos > 0 ? pos : 1, NULL, NULL);
  return true;
}

static bool add_doc(const bson_t *doc, void *data) {
  bulk_t *b = data;
  char id[CQRS_ID_MAX + 32];
  bson_t sealed = BSON_INITIALIZER;
  if (admin_doc_id(doc, id, sizeof id) && !cqrs_readmodel_seal_doc(b->rm, b->coll, id, doc, &sealed, NULL)) {
    mongoc_bulk_operation_insert_with_opts(b->op, &sealed, NULL, NULL);
    b->n++;
  }
  bson_destroy(&sealed);
  return true;
}

/* True when every write error of the reply is a duplicate key. */
static bool only_duplicates(const bson_t *reply, int64_t *dups) {
  bson_iter_t it, arr;
  *dups = 0;
  if (!bson_iter_init_find(&it, reply, "writeErrors") || !bson_iter_recurse(&it, &arr)) return false;
  while (bson_iter_next(&arr)) {
    bson_iter_t e;
    if (!bson_iter_recurse(&arr, &e) || !bson_iter_find(&e, "code") || bson_iter_as_int64(&e) != 11000)
      return false;
    (*dups)++;
  }
  bson_iter_t wc;
  return !(bson_iter_init_find(&wc, reply, "writeConcernErrors") && bson_iter_recurse(&wc, &arr) &&
           bson_iter_next(&arr));
}

int memproj_flush(memproj_t *mp) {
  if (!mp->flush) return ADMIN_OK;
  const char *colls[] = {mp->cols.customers, mp->cols.invoices, mp->cols.balances};
  for (size_t i = 0; i < 3; i++) {
    mongoc_collection_t *c = mongoc_database_get_collection(mp->a->db, colls[i]);
    bson_t opts = BSON_INITIALIZER;
    BSON_APPEND_BOOL(&opts, "ordered", false);
    bulk_t b = {mongoc_collection_create_bulk_operation_with_opts(c, &opts), 0, mp->a->rm, colls[i]};
    cqrs_find_t all = {NULL, NULL, false, 0};
    cqrs_error_t err;
    cqrs_code_t rc = cqrs_readmodel_find(mp->mem, colls[i], &all, add_doc, &b, &err);
    int out = ADMIN_OK;
    if (!rc && b.n) {
      bson_t reply;
      bson_error_t e;
      int64_t dups = 0;
      if (!mongoc_bulk_operation_execute(b.op, &reply, &e) && !only_duplicates(&reply, &dups))
        out = admin_server_error("write read-model documents", &e);
      mp->written += (int64_t)b.n - dups;
      bson_destroy(&reply);
    }
    mongoc_bulk_operation_destroy(b.op);
    bson_destroy(&opts);
    mongoc_collection_destroy(c);
    if (rc && rc != CQRS_ENOT_FOUND) return admin_cqrs_error("read the memory read model", &err);
    if (out) return out;
  }
  cqrs_find_t all = {NULL, NULL, false, 0};
  cqrs_readmodel_find(mp->mem, mp->cols.customers, &all, keep_customer, mp, NULL);
  cqrs_readmodel_destroy(mp->mem);
  billing_destroy(mp->in_mem);
  cqrs_memory_readmodel_new(&mp->mem, NULL);
  mp->in_mem = billing_projector_new(mp->mem, &mp->cols);
  return mp->mem && mp->in_mem ? ADMIN_OK : ADMIN_SERVER;
}
