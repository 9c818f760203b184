/* The in-memory key store: records by subject under one lock. */
#include <pthread.h>
#include <stdlib.h>

#include "base/cqrs-uthash.h"
#include "store/keys-private.h"

typedef struct record {
  char subject[CQRS_ID_MAX];
  cqrs_key_record_t rec;
  UT_hash_handle hh;
} record_t;

typedef struct memkeys {
  pthread_mutex_t lock;
  record_t *records;
} memkeys_t;

static cqrs_code_t mk_get(void *impl, const char *subject, cqrs_key_record_t *out, cqrs_error_t *err) {
  CQRS__UNUSED(err);
  memkeys_t *m = impl;
  pthread_mutex_lock(&m->lock);
  record_t *r;
  HASH_FIND_STR(m->records, subject, r);
  if (r) *out = r->rec;
  else out->state = CQRS_SUBJECT_UNKNOWN;
  pthread_mutex_unlock(&m->lock);
  return CQRS_OK;
}

/* The record of `subject`, a new empty one when absent (under the lock);
 * NULL: no memory. */
static record_t *record_of(memkeys_t *m, const char *subject, bool *made) {
  record_t *r;
  HASH_FIND_STR(m->records, subject, r);
  *made = false;
  if (r) return r;
  if (!(r = cqrs__calloc(1, sizeof *r))) return NULL;
  memcpy(r->subject, subject, strlen(subject) + 1);
  CQRS_HASH_TRY(HASH_ADD_STR(m->records, subject, r));
  if (CQRS_HASH_FAILED()) {
    cqrs__free(r);
    return NULL;
  }
  *made = true;
  return r;
}

static cqrs_code_t mk_create(void *impl, const char *subject, const cqrs_key_record_t *rec, cqrs_key_record_t *out,
                             cqrs_error_t *err) {
  memkeys_t *m = impl;
  pthread_mutex_lock(&m->lock);
  bool made;
  record_t *r = record_of(m, subject, &made);
  if (r && made) r->rec = *rec;
  if (r) *out = r->rec;
  pthread_mutex_unlock(&m->lock);
  return r ? CQRS_OK : cqrs_error_set(err, CQRS_ENOMEM, "cannot store a key");
}

static cqrs_code_t mk_forget(void *impl, const char *subject, int64_t at, cqrs_error_t *err) {
  memkeys_t *m = impl;
  pthread_mutex_lock(&m->lock);
  bool made;
  record_t *r = record_of(m, subject, &made);
  if (r && r->rec.state != CQRS_SUBJECT_FORGOTTEN) {
    int64_t created = r->rec.created_at;
    cqrs__crypto_wipe(&r->rec, sizeof r->rec);
    r->rec.state = CQRS_SUBJECT_FORGOTTEN;
    r->rec.created_at = created;
    r->rec.forgotten_at = at;
  }
  pthread_mutex_unlock(&m->lock);
  return r ? CQRS_OK : cqrs_error_set(err, CQRS_ENOMEM, "cannot record a forgotten subject");
}

static cqrs_code_t mk_rewrap(void *impl, const char *subject, const uint8_t old_wrap[8], const cqrs_key_record_t *rec,
                             cqrs_error_t *err) {
  memkeys_t *m = impl;
  cqrs_code_t rc = CQRS_OK;
  pthread_mutex_lock(&m->lock);
  record_t *r;
  HASH_FIND_STR(m->records, subject, r);
  if (!r || r->rec.state != CQRS_SUBJECT_KEYED || memcmp(r->rec.wrap, old_wrap, sizeof r->rec.wrap)) {
    rc = cqrs_error_set(err, CQRS_ECONFLICT, "the key of '%s' changed", subject);
  } else {
    memcpy(r->rec.key, rec->key, sizeof r->rec.key);
    r->rec.key_len = rec->key_len;
    memcpy(r->rec.wrap, rec->wrap, sizeof r->rec.wrap);
  }
  pthread_mutex_unlock(&m->lock);
  return rc;
}

static int by_subject(const void *a, const void *b) {
  return strcmp((*(const record_t *const *)a)->subject, (*(const record_t *const *)b)->subject);
}

/* Visits a copy, so that the visitor may call the key store again. */
static cqrs_code_t mk_list(void *impl, cqrs_key_visit_cb cb, void *data, cqrs_error_t *err) {
  memkeys_t *m = impl;
  pthread_mutex_lock(&m->lock);
  size_t n = HASH_COUNT(m->records), i = 0;
  record_t *copy = cqrs__calloc(n ? n : 1, sizeof *copy);
  const record_t **order = cqrs__calloc(n ? n : 1, sizeof *order);
  if (copy && order) {
    for (record_t *r = m->records; r; r = r->hh.next, i++) {
      memcpy(copy[i].subject, r->subject, sizeof r->subject);
      copy[i].rec = r->rec;
      cqrs__crypto_wipe(copy[i].rec.key, sizeof copy[i].rec.key);
      order[i] = &copy[i];
    }
  }
  pthread_mutex_unlock(&m->lock);
  cqrs_code_t rc = CQRS_OK;
  if (!copy || !order) {
    rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot list the keys");
  } else {
    qsort(order, n, sizeof *order, by_subject);
    for (i = 0; i < n && cb(order[i]->subject, &order[i]->rec, data); i++) {
    }
  }
  cqrs__free(order);
  cqrs__free(copy);
  return rc;
}

static void mk_destroy(void *impl) {
  memkeys_t *m = impl;
  record_t *r, *tmp;
  HASH_ITER(hh, m->records, r, tmp) {
    HASH_DEL(m->records, r);
    cqrs__crypto_wipe(r, sizeof *r);
    cqrs__free(r);
  }
  pthread_mutex_destroy(&m->lock);
  cqrs__free(m);
}

static const cqrs_keys_ops_t memory_keys_ops = {
    .blocking = false,
    .get = mk_get,
    .create = mk_create,
    .forget = mk_forget,
    .list = mk_list,
    .destroy = mk_destroy,
    .rewrap = mk_rewrap,
};

cqrs_code_t cqrs_memory_keys_new(const cqrs_keys_options_t *opts, cqrs_keys_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  memkeys_t *m = cqrs__calloc(1, sizeof *m);
  if (!m) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate a key store");
  if (pthread_mutex_init(&m->lock, NULL)) {
    cqrs__free(m);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot initialise the key store's lock");
  }
  return cqrs_keys_new(&memory_keys_ops, m, opts, out, err);
}
