/* The key store of personal data on MongoDB: one document per subject in
 * the keys collection, found by _id. Creation is an insert that the
 * primary key decides between racers (the loser reads the winner's key);
 * forgetting is one update that marks the subject forgotten and removes
 * the key with it. Every call blocks: the store is `blocking`. */
#include <string.h>

#include "mongo-private.h"

#define WRAP_BYTES 8

/* Documents that held a key do not leave it behind in freed memory. */
static void destroy_wiped(bson_t *b) {
  explicit_bzero((uint8_t *)(uintptr_t)bson_get_data(b), b->len);
  bson_destroy(b);
}

static void doc_to_record(const bson_t *doc, cqrs_key_record_t *out) {
  memset(out, 0, sizeof *out);
  bson_iter_t it;
  out->state = CQRS_SUBJECT_KEYED;
  if (bson_iter_init_find(&it, doc, "state") && BSON_ITER_HOLDS_UTF8(&it) &&
      !strcmp(bson_iter_utf8(&it, NULL), "forgotten"))
    out->state = CQRS_SUBJECT_FORGOTTEN;
  if (bson_iter_init_find(&it, doc, "generation") && BSON_ITER_HOLDS_INT32(&it))
    out->generation = (uint32_t)bson_iter_int32(&it);
  if (bson_iter_init_find(&it, doc, "createdAt") && BSON_ITER_HOLDS_DATE_TIME(&it))
    out->created_at = bson_iter_date_time(&it);
  if (bson_iter_init_find(&it, doc, "forgottenAt") && BSON_ITER_HOLDS_DATE_TIME(&it))
    out->forgotten_at = bson_iter_date_time(&it);
  bson_subtype_t sub;
  uint32_t len;
  const uint8_t *b;
  if (out->state == CQRS_SUBJECT_KEYED && bson_iter_init_find(&it, doc, "key") && BSON_ITER_HOLDS_BINARY(&it)) {
    bson_iter_binary(&it, &sub, &len, &b);
    if (len <= sizeof out->key) {
      memcpy(out->key, b, len);
      out->key_len = len;
    }
  }
  if (bson_iter_init_find(&it, doc, "wrap") && BSON_ITER_HOLDS_BINARY(&it)) {
    bson_iter_binary(&it, &sub, &len, &b);
    if (len == WRAP_BYTES) memcpy(out->wrap, b, WRAP_BYTES);
  }
}

static bool wrapped(const cqrs_key_record_t *rec) {
  static const uint8_t zero[WRAP_BYTES];
  return memcmp(rec->wrap, zero, WRAP_BYTES) != 0;
}

static cqrs_code_t get_on(mongoc_collection_t *coll, const char *subject, cqrs_key_record_t *out, cqrs_error_t *err) {
  bson_t filter = BSON_INITIALIZER, doc;
  BSON_APPEND_UTF8(&filter, "_id", subject);
  bool found = false;
  cqrs_code_t rc = cqrs__mongo_find_one(coll, &filter, NULL, &doc, &found, err, "reading a key");
  if (!rc && found) {
    doc_to_record(&doc, out);
    destroy_wiped(&doc);
  } else if (!rc) {
    memset(out, 0, sizeof *out);
  }
  bson_destroy(&filter);
  return rc;
}

static cqrs_code_t mk_get(void *impl, const char *subject, cqrs_key_record_t *out, cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  mconn_t c;
  cqrs__mongo_open(m, m->keys, &c);
  cqrs_code_t rc = get_on(c.coll, subject, out, err);
  cqrs__mongo_done(m, &c);
  return rc;
}

static cqrs_code_t mk_create(void *impl, const char *subject, const cqrs_key_record_t *rec, cqrs_key_record_t *out,
                             cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  mconn_t c;
  cqrs__mongo_open(m, m->keys, &c);
  bson_t doc = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&doc, "_id", subject);
  BSON_APPEND_UTF8(&doc, "state", "keyed");
  BSON_APPEND_INT32(&doc, "generation", (int32_t)rec->generation);
  bson_append_binary(&doc, "key", -1, BSON_SUBTYPE_BINARY, rec->key, (uint32_t)rec->key_len);
  if (wrapped(rec)) bson_append_binary(&doc, "wrap", -1, BSON_SUBTYPE_BINARY, rec->wrap, WRAP_BYTES);
  BSON_APPEND_DATE_TIME(&doc, "createdAt", rec->created_at);
  bson_error_t e;
  cqrs_code_t rc = CQRS_OK;
  if (mongoc_collection_insert_one(c.coll, &doc, NULL, NULL, &e)) {
    *out = *rec;
  } else if (cqrs__mongo_duplicate_key(&e)) {
    rc = get_on(c.coll, subject, out, err); /* another writer made it first: theirs */
  } else {
    rc = cqrs__mongo_error(err, &e, "storing a key");
  }
  destroy_wiped(&doc);
  cqrs__mongo_done(m, &c);
  return rc;
}

static cqrs_code_t mk_forget(void *impl, const char *subject, int64_t at, cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  mconn_t c;
  cqrs__mongo_open(m, m->keys, &c);
  cqrs_key_record_t had;
  cqrs_code_t rc = get_on(c.coll, subject, &had, err);
  if (!rc && had.state != CQRS_SUBJECT_FORGOTTEN) {
    bson_t *filter = BCON_NEW("_id", BCON_UTF8(subject));
    bson_t *update = BCON_NEW("$set", "{", "state", BCON_UTF8("forgotten"), "forgottenAt", BCON_DATE_TIME(at), "}",
                              "$unset", "{", "key", BCON_UTF8(""), "wrap", BCON_UTF8(""), "}");
    bson_t *opts = BCON_NEW("upsert", BCON_BOOL(true));
    bson_error_t e;
    if (!mongoc_collection_update_one(c.coll, filter, update, opts, NULL, &e) && !cqrs__mongo_duplicate_key(&e))
      rc = cqrs__mongo_error(err, &e, "forgetting a key");
    bson_destroy(opts);
    bson_destroy(update);
    bson_destroy(filter);
  }
  explicit_bzero(&had, sizeof had);
  cqrs__mongo_done(m, &c);
  return rc;
}

static cqrs_code_t mk_rewrap(void *impl, const char *subject, const uint8_t old_wrap[8], const cqrs_key_record_t *rec,
                             cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  mconn_t c;
  cqrs__mongo_open(m, m->keys, &c);
  bson_t filter = BSON_INITIALIZER, update = BSON_INITIALIZER, set;
  BSON_APPEND_UTF8(&filter, "_id", subject);
  BSON_APPEND_UTF8(&filter, "state", "keyed");
  static const uint8_t zero[WRAP_BYTES];
  /* Not wrapped before: the document has no `wrap`. */
  if (memcmp(old_wrap, zero, WRAP_BYTES)) {
    bson_append_binary(&filter, "wrap", -1, BSON_SUBTYPE_BINARY, old_wrap, WRAP_BYTES);
  } else {
    bson_t exists;
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "wrap", &exists);
    BSON_APPEND_BOOL(&exists, "$exists", false);
    bson_append_document_end(&filter, &exists);
  }
  BSON_APPEND_DOCUMENT_BEGIN(&update, "$set", &set);
  bson_append_binary(&set, "key", -1, BSON_SUBTYPE_BINARY, rec->key, (uint32_t)rec->key_len);
  bson_append_binary(&set, "wrap", -1, BSON_SUBTYPE_BINARY, rec->wrap, WRAP_BYTES);
  bson_append_document_end(&update, &set);
  bson_t reply;
  bson_error_t e;
  cqrs_code_t rc = CQRS_OK;
  if (!mongoc_collection_update_one(c.coll, &filter, &update, NULL, &reply, &e)) {
    rc = cqrs__mongo_error(err, &e, "wrapping a key again");
  } else {
    bson_iter_t it;
    if (!bson_iter_init_find(&it, &reply, "modifiedCount") || bson_iter_as_int64(&it) != 1)
      rc = cqrs_error_set(err, CQRS_ECONFLICT, "the key of '%s' changed meanwhile", subject);
  }
  bson_destroy(&reply);
  destroy_wiped(&update);
  bson_destroy(&filter);
  cqrs__mongo_done(m, &c);
  return rc;
}

static cqrs_code_t mk_list(void *impl, cqrs_key_visit_cb cb, void *data, cqrs_error_t *err) {
  cqrs_mongo_t *m = impl;
  mconn_t c;
  cqrs__mongo_open(m, m->keys, &c);
  bson_t filter = BSON_INITIALIZER;
  bson_t *opts = BCON_NEW("sort", "{", "_id", BCON_INT32(1), "}", "projection", "{", "key", BCON_INT32(0), "}");
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c.coll, &filter, opts, NULL);
  const bson_t *doc;
  bool more = true;
  while (more && mongoc_cursor_next(cur, &doc)) {
    bson_iter_t it;
    if (!bson_iter_init_find(&it, doc, "_id") || !BSON_ITER_HOLDS_UTF8(&it)) continue;
    cqrs_key_record_t rec;
    doc_to_record(doc, &rec);
    more = cb(bson_iter_utf8(&it, NULL), &rec, data);
  }
  bson_error_t e;
  cqrs_code_t rc = mongoc_cursor_error(cur, &e) ? cqrs__mongo_error(err, &e, "listing the keys") : CQRS_OK;
  mongoc_cursor_destroy(cur);
  bson_destroy(opts);
  bson_destroy(&filter);
  cqrs__mongo_done(m, &c);
  return rc;
}

static const cqrs_keys_ops_t mongo_keys_ops = {
    .blocking = true,
    .get = mk_get,
    .create = mk_create,
    .forget = mk_forget,
    .list = mk_list,
    .destroy = NULL, /* the cqrs_mongo_t is the caller's */
    .rewrap = mk_rewrap,
};

cqrs_code_t cqrs_mongo_keys_new(cqrs_mongo_t *m, const cqrs_keys_options_t *opts, cqrs_keys_t **out,
                                cqrs_error_t *err) {
  if (out) *out = NULL;
  if (!m || !out) return cqrs_error_set(err, CQRS_EINVAL, "NULL MongoDB or out");
  return cqrs_keys_new(&mongo_keys_ops, m, opts, out, err);
}

const char *cqrs_mongo_keys_collection(const cqrs_mongo_t *m) { return m ? m->keys : NULL; }
