/* Leases on MongoDB, without transactions and without relying on a
 * conditional update being atomic (FerretDB 1.24 reads, then writes):
 * what decides between two processes taking a lease at once is the insert
 * of the next term's document, {_id: "<name>#<token>"}, which the primary
 * key lets through once. The term documents are the truth; the document
 * {_id: <name>, owner, token, expires} is the current term's copy, for
 * operators and as the place the next taker starts looking from.
 *
 * A term is free once its `expires` (the holder's clock when it last
 * renewed, plus the ttl) is past by the taker's clock: the two clocks must
 * differ by less than the holder's guard (docs/scaling.md). */
#include <stdio.h>

#include "mongo-private.h"

#define TERM_ID_MAX (CQRS_NAME_MAX + 24)

static void term_id(char out[TERM_ID_MAX], const char *name, int64_t token) {
  snprintf(out, TERM_ID_MAX, "%s#%020lld", name, (long long)token);
}

typedef struct term {
  bool found;
  int64_t token, expires;
  char owner[CQRS_NAME_MAX];
} term_t;

static cqrs_code_t read_doc(mongoc_collection_t *coll, const char *id, term_t *t, cqrs_error_t *err) {
  memset(t, 0, sizeof *t);
  bson_t filter = BSON_INITIALIZER, doc;
  BSON_APPEND_UTF8(&filter, "_id", id);
  cqrs_code_t rc = cqrs__mongo_find_one(coll, &filter, NULL, &doc, &t->found, err, "read a lease");
  bson_destroy(&filter);
  if (rc || !t->found) return rc;
  bson_iter_t it;
  if (bson_iter_init_find(&it, &doc, "token") && BSON_ITER_HOLDS_NUMBER(&it)) t->token = bson_iter_as_int64(&it);
  if (bson_iter_init_find(&it, &doc, "expires") && BSON_ITER_HOLDS_DATE_TIME(&it))
    t->expires = bson_iter_date_time(&it);
  if (bson_iter_init_find(&it, &doc, "owner") && BSON_ITER_HOLDS_UTF8(&it))
    snprintf(t->owner, sizeof t->owner, "%s", bson_iter_utf8(&it, NULL));
  bson_destroy(&doc);
  return CQRS_OK;
}

/* The newest term of `name` (found false: none yet) and its token (or the
 * copy's when no term document is left). */
static cqrs_code_t latest_term(mongoc_collection_t *coll, const char *name, term_t *latest, int64_t *token,
                               cqrs_error_t *err) {
  term_t cur, t;
  char id[TERM_ID_MAX];
  cqrs_code_t rc = read_doc(coll, name, &cur, err);
  if (rc) return rc;
  *token = cur.found ? cur.token : 0;
  memset(latest, 0, sizeof *latest);
  if (*token > 0) {
    term_id(id, name, *token);
    if ((rc = read_doc(coll, id, latest, err))) return rc;
  }
  /* The copy lags when a taker stopped between its claim and the copy. */
  for (;;) {
    term_id(id, name, *token + 1);
    if ((rc = read_doc(coll, id, &t, err))) return rc;
    if (!t.found) return CQRS_OK;
    *latest = t;
    ++*token;
  }
}

/* Writes the copy of term `token` unless a newer term's copy is there;
 * *newer tells which (may be NULL). */
static cqrs_code_t write_copy(mongoc_collection_t *coll, const char *name, const char *owner, int64_t token,
                              int64_t expires, bool *newer, cqrs_error_t *err) {
  bson_t filter = BSON_INITIALIZER, u = BSON_INITIALIZER, s, t, not, opts = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "_id", name);
  BSON_APPEND_DOCUMENT_BEGIN(&filter, "token", &t);
  BSON_APPEND_DOCUMENT_BEGIN(&t, "$not", &not);
  BSON_APPEND_INT64(&not, "$gt", token);
  bson_append_document_end(&t, &not);
  bson_append_document_end(&filter, &t);
  BSON_APPEND_DOCUMENT_BEGIN(&u, "$set", &s);
  BSON_APPEND_UTF8(&s, "owner", owner);
  BSON_APPEND_INT64(&s, "token", token);
  BSON_APPEND_DATE_TIME(&s, "expires", expires);
  bson_append_document_end(&u, &s);
  BSON_APPEND_BOOL(&opts, "upsert", true);
  bson_error_t e;
  bool ok = mongoc_collection_update_one(coll, &filter, &u, &opts, NULL, &e);
  bson_destroy(&filter);
  bson_destroy(&u);
  bson_destroy(&opts);
  if (newer) *newer = !ok && cqrs__mongo_duplicate_key(&e);
  if (ok || cqrs__mongo_duplicate_key(&e)) return CQRS_OK;
  return cqrs__mongo_error(err, &e, "write a lease");
}

/* Sets `expires` of term `token` while `owner` holds it; *matched says whether it did. */
static cqrs_code_t set_expires(mongoc_collection_t *coll, const char *name, const char *owner, int64_t token,
                               int64_t expires, bool *matched, cqrs_error_t *err) {
  char id[TERM_ID_MAX];
  term_id(id, name, token);
  bson_t filter = BSON_INITIALIZER, u = BSON_INITIALIZER, s, reply;
  BSON_APPEND_UTF8(&filter, "_id", id);
  BSON_APPEND_UTF8(&filter, "owner", owner);
  BSON_APPEND_DOCUMENT_BEGIN(&u, "$set", &s);
  BSON_APPEND_DATE_TIME(&s, "expires", expires);
  bson_append_document_end(&u, &s);
  bson_error_t e;
  bool ok = mongoc_collection_update_one(coll, &filter, &u, NULL, &reply, &e);
  bson_iter_t it;
  *matched = ok && bson_iter_init_find(&it, &reply, "matchedCount") && bson_iter_as_int64(&it) > 0;
  bson_destroy(&reply);
  bson_destroy(&filter);
  bson_destroy(&u);
  return ok ? CQRS_OK : cqrs__mongo_error(err, &e, "renew a lease");
}

_Atomic(cqrs__mongo_claim_hook_fn) cqrs__mongo_lease_claim_hook;

static cqrs_code_t acquire(mongoc_collection_t *coll, const cqrs_clock_t *clock, const char *name, const char *owner,
                           uint64_t ttl_ms, int64_t *token, cqrs_error_t *err) {
  term_t latest;
  int64_t t;
  *token = 0;
  cqrs_code_t rc = latest_term(coll, name, &latest, &t, err);
  if (rc) return rc;
  int64_t now = cqrs_clock_now_ms(clock);
  if (latest.found && latest.expires > now && strcmp(latest.owner, owner)) return CQRS_OK; /* held */
  cqrs__mongo_claim_hook_fn hook = atomic_load_explicit(&cqrs__mongo_lease_claim_hook, memory_order_acquire);
  if (hook) hook(name, owner);
  char id[TERM_ID_MAX];
  term_id(id, name, t + 1);
  bson_t doc = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&doc, "_id", id);
  BSON_APPEND_UTF8(&doc, "name", name);
  BSON_APPEND_INT64(&doc, "token", t + 1);
  BSON_APPEND_UTF8(&doc, "owner", owner);
  BSON_APPEND_DATE_TIME(&doc, "expires", now + (int64_t)ttl_ms);
  BSON_APPEND_DATE_TIME(&doc, "at", now);
  bson_error_t e;
  bool ok = mongoc_collection_insert_one(coll, &doc, NULL, NULL, &e);
  bson_destroy(&doc);
  if (!ok) return cqrs__mongo_duplicate_key(&e) ? CQRS_OK : cqrs__mongo_error(err, &e, "take a lease");
  /* The copy, then old terms (the one before is kept: a taker that read the
   * copy before this write finds its way up from there). A copy that names a
   * newer term means this claim read a stale copy and re-used the id of a
   * term already deleted (takers stopped between two handovers): it holds
   * nothing, so it backs out; so does a claim whose copy cannot be written
   * (it cannot tell). Deleting old terms decides nothing. */
  bool newer = false;
  cqrs_code_t crc = write_copy(coll, name, owner, t + 1, now + (int64_t)ttl_ms, &newer, err);
  if (crc || newer) {
    bson_t mine = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&mine, "_id", id);
    BSON_APPEND_UTF8(&mine, "owner", owner);
    mongoc_collection_delete_one(coll, &mine, NULL, NULL, &e);
    bson_destroy(&mine);
    return crc;
  }
  *token = t + 1;
  bson_t old = BSON_INITIALIZER, lt;
  BSON_APPEND_UTF8(&old, "name", name);
  BSON_APPEND_DOCUMENT_BEGIN(&old, "token", &lt);
  BSON_APPEND_INT64(&lt, "$lt", t);
  bson_append_document_end(&old, &lt);
  mongoc_collection_delete_many(coll, &old, NULL, NULL, &e);
  bson_destroy(&old);
  return CQRS_OK;
}

static cqrs_code_t renew(mongoc_collection_t *coll, const cqrs_clock_t *clock, const char *name, const char *owner,
                         int64_t token, uint64_t ttl_ms, cqrs_error_t *err) {
  int64_t expires = cqrs_clock_now_ms(clock) + (int64_t)ttl_ms;
  bool matched, newer;
  cqrs_code_t rc = set_expires(coll, name, owner, token, expires, &matched, err);
  if (rc) return rc;
  term_t next;
  char id[TERM_ID_MAX];
  term_id(id, name, token + 1);
  if (matched && (rc = read_doc(coll, id, &next, err))) return rc;
  if (!matched || next.found)
    return cqrs_error_set(err, CQRS_ECONFLICT, "lease %s has passed from %s (token %lld) to another", name, owner,
                          (long long)token);
  if ((rc = write_copy(coll, name, owner, token, expires, &newer, err))) return rc;
  return newer ? cqrs_error_set(err, CQRS_ECONFLICT, "lease %s has a newer term than %lld", name, (long long)token)
               : CQRS_OK;
}

static cqrs_code_t release(mongoc_collection_t *coll, const char *name, const char *owner, int64_t token,
                           cqrs_error_t *err) {
  bool matched;
  cqrs_code_t rc = set_expires(coll, name, owner, token, 0, &matched, err);
  if (!rc && matched) rc = write_copy(coll, name, owner, token, 0, NULL, err);
  return rc;
}

typedef enum { L_ACQUIRE, L_RENEW, L_RELEASE } lease_op_t;

/* The lease store: a view on the connection, and the clock of its terms. */
typedef struct mongo_leases {
  cqrs_mongo_t *m;
  const cqrs_clock_t *clock; /* NULL: the real one */
} mongo_leases_t;

static cqrs_code_t run(void *impl, lease_op_t op, const char *name, const char *owner, uint64_t ttl_ms,
                       int64_t *token, cqrs_error_t *err) {
  mongo_leases_t *ml = impl;
  cqrs_mongo_t *m = ml->m;
  mconn_t c;
  cqrs__mongo_open(m, m->leases, &c);
  cqrs_code_t rc = op == L_ACQUIRE ? acquire(c.coll, ml->clock, name, owner, ttl_ms, token, err)
                   : op == L_RENEW ? renew(c.coll, ml->clock, name, owner, *token, ttl_ms, err)
                                   : release(c.coll, name, owner, *token, err);
  cqrs__mongo_done(m, &c);
  return rc;
}

static cqrs_code_t ml_acquire(void *impl, const char *name, const char *owner, uint64_t ttl_ms, int64_t *token,
                              cqrs_error_t *err) {
  return run(impl, L_ACQUIRE, name, owner, ttl_ms, token, err);
}

static cqrs_code_t ml_renew(void *impl, const char *name, const char *owner, int64_t token, uint64_t ttl_ms,
                            cqrs_error_t *err) {
  return run(impl, L_RENEW, name, owner, ttl_ms, &token, err);
}

static cqrs_code_t ml_release(void *impl, const char *name, const char *owner, int64_t token, cqrs_error_t *err) {
  return run(impl, L_RELEASE, name, owner, 0, &token, err);
}

static void ml_destroy(void *impl) { free(impl); }

static const cqrs_lease_ops_t mongo_lease_ops = {.blocking = true, .acquire = ml_acquire, .renew = ml_renew,
                                                 .release = ml_release, .destroy = ml_destroy};

cqrs_code_t cqrs_mongo_lease_store_new_with_clock(cqrs_mongo_t *m, cqrs_clock_t *clock, cqrs_lease_store_t **out,
                                                  cqrs_error_t *err) {
  if (out) *out = NULL;
  if (!m || !out) return cqrs_error_set(err, CQRS_EINVAL, "NULL connection or out");
  mongo_leases_t *ml = calloc(1, sizeof *ml);
  if (!ml) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate a lease store");
  ml->m = m;
  ml->clock = clock;
  return cqrs_lease_store_new(&mongo_lease_ops, ml, out, err);
}

cqrs_code_t cqrs_mongo_lease_store_new(cqrs_mongo_t *m, cqrs_lease_store_t **out, cqrs_error_t *err) {
  return cqrs_mongo_lease_store_new_with_clock(m, NULL, out, err);
}
