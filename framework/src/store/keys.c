/* Key stores as the framework uses them: an implementation's ops, wrapped
 * with the application's master key, a bounded cache of unwrapped keys
 * (least recently used evicted, trusted for cache_ms), keys made the first
 * time a subject is written, and forgetting. Thread-safe: the cache under
 * one lock, never held across a call to the implementation. */
#include <pthread.h>
#include <stdio.h>

#include "base/cqrs-uthash.h"
#include "store/keys-private.h"

typedef struct entry {
  char subject[CQRS_ID_MAX];
  uint8_t key[CQRS__KEY_BYTES];
  uint32_t generation;
  bool forgotten;
  int64_t loaded_at;
  struct entry *prev, *next; /* most recently used first */
  UT_hash_handle hh;
} entry_t;

struct cqrs_keys {
  const cqrs_keys_ops_t *ops;
  void *impl;
  bool has_master, has_previous;
  uint8_t master[CQRS__KEY_BYTES], previous[CQRS__KEY_BYTES];
  uint8_t master_id[CQRS__KEY_ID_BYTES], previous_id[CQRS__KEY_ID_BYTES];
  size_t cap;
  int64_t ttl_ms;
  pthread_mutex_t lock;
  entry_t *table, *head, *tail;
  size_t len;
};

void cqrs_keys_options_init(cqrs_keys_options_t *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->cache = 4096;
  o->cache_ms = 60000;
}

cqrs_code_t cqrs_keys_new(const cqrs_keys_ops_t *ops, void *impl, const cqrs_keys_options_t *opts, cqrs_keys_t **out,
                          cqrs_error_t *err) {
  cqrs_code_t rc = CQRS_OK;
  cqrs_keys_t *k = NULL;
  if (!out) {
    rc = cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  } else if (!ops || !ops->get || !ops->create || !ops->forget || !ops->list) {
    rc = cqrs_error_set(err, CQRS_EINVAL, "NULL ops or a missing get, create, forget or list");
  } else if (!cqrs__crypto_ready()) {
    rc = cqrs_error_set(err, CQRS_ESTATE, "libsodium did not start (no source of randomness?)");
  } else if (!(k = cqrs__calloc(1, sizeof *k))) {
    rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate a key store");
  } else if (pthread_mutex_init(&k->lock, NULL)) {
    cqrs__free(k);
    k = NULL;
    rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot initialise the key store's lock");
  }
  if (out) *out = k;
  if (rc) {
    if (ops && ops->destroy) ops->destroy(impl);
    return rc;
  }
  k->ops = ops;
  k->impl = impl;
  k->cap = opts && opts->cache ? opts->cache : 4096;
  k->ttl_ms = opts && opts->cache_ms ? (int64_t)(opts->cache_ms > INT64_MAX / 2 ? INT64_MAX / 2 : opts->cache_ms) : 60000;
  if (opts && opts->master_key) {
    k->has_master = true;
    memcpy(k->master, opts->master_key, CQRS__KEY_BYTES);
    cqrs__crypto_key_id(k->master, k->master_id);
  }
  if (opts && opts->previous_master_key) {
    k->has_previous = true;
    memcpy(k->previous, opts->previous_master_key, CQRS__KEY_BYTES);
    cqrs__crypto_key_id(k->previous, k->previous_id);
  }
  return CQRS_OK;
}

void cqrs_keys_destroy(cqrs_keys_t *k) {
  if (!k) return;
  entry_t *e, *tmp;
  HASH_ITER(hh, k->table, e, tmp) {
    HASH_DEL(k->table, e);
    cqrs__crypto_wipe(e->key, sizeof e->key);
    cqrs__free(e);
  }
  if (k->ops->destroy) k->ops->destroy(k->impl);
  pthread_mutex_destroy(&k->lock);
  cqrs__crypto_wipe(k, sizeof *k);
  cqrs__free(k);
}

bool cqrs_keys_blocking(const cqrs_keys_t *k) { return k && k->ops->blocking; }

/* ---- the cache (under the lock) ---- */

static void lru_unlink(cqrs_keys_t *k, entry_t *e) {
  if (e->prev) e->prev->next = e->next;
  else k->head = e->next;
  if (e->next) e->next->prev = e->prev;
  else k->tail = e->prev;
  e->prev = e->next = NULL;
}

static void lru_front(cqrs_keys_t *k, entry_t *e) {
  e->next = k->head;
  e->prev = NULL;
  if (k->head) k->head->prev = e;
  k->head = e;
  if (!k->tail) k->tail = e;
}

static void drop(cqrs_keys_t *k, entry_t *e) {
  lru_unlink(k, e);
  HASH_DEL(k->table, e);
  k->len--;
  cqrs__crypto_wipe(e->key, sizeof e->key);
  cqrs__free(e);
}

/* A fresh entry of `subject` into key/generation/forgotten. */
static bool cache_get(cqrs_keys_t *k, const char *subject, uint8_t key[CQRS__KEY_BYTES], uint32_t *gen,
                      bool *forgotten) {
  bool hit = false;
  pthread_mutex_lock(&k->lock);
  entry_t *e;
  HASH_FIND_STR(k->table, subject, e);
  if (e && cqrs_now_ms() - e->loaded_at > k->ttl_ms) {
    drop(k, e);
    e = NULL;
  }
  if (e) {
    memcpy(key, e->key, CQRS__KEY_BYTES);
    *gen = e->generation;
    *forgotten = e->forgotten;
    lru_unlink(k, e);
    lru_front(k, e);
    hit = true;
  }
  pthread_mutex_unlock(&k->lock);
  return hit;
}

/* Keeps what the store said; without memory it is simply not kept. */
static void cache_put(cqrs_keys_t *k, const char *subject, const uint8_t *key, uint32_t gen, bool forgotten) {
  pthread_mutex_lock(&k->lock);
  entry_t *e;
  HASH_FIND_STR(k->table, subject, e);
  if (!e && (e = cqrs__calloc(1, sizeof *e))) {
    memcpy(e->subject, subject, strlen(subject) + 1);
    CQRS_HASH_TRY(HASH_ADD_STR(k->table, subject, e));
    if (CQRS_HASH_FAILED()) {
      cqrs__free(e);
      e = NULL;
    } else {
      k->len++;
      lru_front(k, e);
    }
  }
  if (e) {
    if (key) memcpy(e->key, key, CQRS__KEY_BYTES);
    else cqrs__crypto_wipe(e->key, sizeof e->key);
    e->generation = gen;
    e->forgotten = forgotten;
    e->loaded_at = cqrs_now_ms();
  }
  while (k->len > k->cap && k->tail) drop(k, k->tail);
  pthread_mutex_unlock(&k->lock);
}

/* ---- wrapping with the master key ---- */

static size_t wrap_ad(uint8_t *buf, size_t cap, const char *subject, uint32_t gen) {
  int n = snprintf((char *)buf, cap, "cqrs.key.1:%s#%u", subject, (unsigned)gen);
  return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

static cqrs_code_t wrap_with(const uint8_t master[CQRS__KEY_BYTES], const uint8_t id[CQRS__KEY_ID_BYTES],
                             const char *subject, const uint8_t key[CQRS__KEY_BYTES], cqrs_key_record_t *rec,
                             cqrs_error_t *err) {
  uint8_t ad[CQRS_ID_MAX + 32];
  size_t ad_len = wrap_ad(ad, sizeof ad, subject, rec->generation);
  if (!ad_len || !cqrs__crypto_seal(master, ad, ad_len, key, CQRS__KEY_BYTES, rec->key))
    return cqrs_error_set(err, CQRS_ESTATE, "cannot wrap the key of '%s'", subject);
  rec->key_len = CQRS__NONCE_BYTES + CQRS__KEY_BYTES + CQRS__TAG_BYTES;
  memcpy(rec->wrap, id, sizeof rec->wrap);
  return CQRS_OK;
}

static bool zero_wrap(const uint8_t wrap[8]) {
  static const uint8_t zero[8];
  return !memcmp(wrap, zero, 8);
}

/* The record's data key into `key`, re-wrapped with the current master
 * when another (or none) wrapped it. */
static cqrs_code_t unwrap(cqrs_keys_t *k, const char *subject, const cqrs_key_record_t *rec,
                          uint8_t key[CQRS__KEY_BYTES], cqrs_error_t *err) {
  const uint8_t *master = NULL;
  if (zero_wrap(rec->wrap)) {
    if (rec->key_len != CQRS__KEY_BYTES)
      return cqrs_error_set(err, CQRS_ECODEC, "the key of '%s' is %zu bytes, not %u", subject, rec->key_len,
                            CQRS__KEY_BYTES);
    memcpy(key, rec->key, CQRS__KEY_BYTES);
  } else {
    if (k->has_master && !memcmp(rec->wrap, k->master_id, sizeof rec->wrap)) master = k->master;
    else if (k->has_previous && !memcmp(rec->wrap, k->previous_id, sizeof rec->wrap)) master = k->previous;
    else return cqrs_error_set(err, CQRS_ESTATE, "the key of '%s' is wrapped by a master key this process was not "
                               "given", subject);
    uint8_t ad[CQRS_ID_MAX + 32];
    size_t ad_len = wrap_ad(ad, sizeof ad, subject, rec->generation);
    if (rec->key_len != CQRS__NONCE_BYTES + CQRS__KEY_BYTES + CQRS__TAG_BYTES || !ad_len ||
        !cqrs__crypto_open(master, ad, ad_len, rec->key, rec->key_len, key))
      return cqrs_error_set(err, CQRS_ECODEC, "the key of '%s' does not unwrap with its master key", subject);
  }
  if (k->has_master && master != k->master && k->ops->rewrap) {
    cqrs_key_record_t next = *rec;
    cqrs_error_t ignored;
    /* Another process may do it first (CQRS_ECONFLICT); a failure leaves
     * the old wrapping, which still opens: retried on the next load. */
    if (!wrap_with(k->master, k->master_id, subject, key, &next, &ignored))
      k->ops->rewrap(k->impl, subject, rec->wrap, &next, &ignored);
    cqrs__crypto_wipe(&next, sizeof next);
  }
  return CQRS_OK;
}

/* ---- what the codec asks (the keyring) ---- */

static cqrs_code_t check_subject(const char *subject, cqrs_error_t *err) {
  return cqrs__check_str(subject, CQRS_ID_MAX, "subject", err);
}

/* The record of `subject`, made when `create` and it has none. */
static cqrs_code_t load(cqrs_keys_t *k, const char *subject, bool create, cqrs_key_record_t *rec, cqrs_error_t *err) {
  memset(rec, 0, sizeof *rec);
  cqrs_code_t rc = k->ops->get(k->impl, subject, rec, err);
  if (rc || rec->state != CQRS_SUBJECT_UNKNOWN || !create) return rc;
  uint8_t key[CQRS__KEY_BYTES];
  cqrs_key_record_t fresh = {.state = CQRS_SUBJECT_KEYED, .generation = 1, .created_at = cqrs_now_ms()};
  if (!cqrs__crypto_random(key, sizeof key)) return cqrs_error_set(err, CQRS_ESTATE, "no randomness for a key");
  if (k->has_master) {
    rc = wrap_with(k->master, k->master_id, subject, key, &fresh, err);
  } else {
    memcpy(fresh.key, key, sizeof key);
    fresh.key_len = sizeof key;
  }
  cqrs__crypto_wipe(key, sizeof key);
  if (!rc) rc = k->ops->create(k->impl, subject, &fresh, rec, err);
  cqrs__crypto_wipe(&fresh, sizeof fresh);
  return rc;
}

static cqrs_code_t key_for(cqrs_keys_t *k, const char *subject, bool create, uint8_t key[CQRS__KEY_BYTES],
                           uint32_t *gen, bool *forgotten, cqrs_error_t *err) {
  cqrs_code_t rc = check_subject(subject, err);
  if (rc) return rc;
  if (cache_get(k, subject, key, gen, forgotten)) return CQRS_OK;
  cqrs_key_record_t rec;
  if ((rc = load(k, subject, create, &rec, err))) return rc;
  *forgotten = rec.state == CQRS_SUBJECT_FORGOTTEN;
  *gen = rec.generation;
  if (rec.state == CQRS_SUBJECT_UNKNOWN) {
    rc = cqrs_error_set(err, CQRS_ESTATE, "subject '%s' has no key and was never forgotten: its key store was lost, "
                        "or is not the one its data was written with", subject);
  } else if (rec.state == CQRS_SUBJECT_KEYED && !(rc = unwrap(k, subject, &rec, key, err))) {
    cache_put(k, subject, key, rec.generation, false);
  } else if (rec.state == CQRS_SUBJECT_FORGOTTEN) {
    memset(key, 0, CQRS__KEY_BYTES);
    cache_put(k, subject, NULL, rec.generation, true);
  }
  cqrs__crypto_wipe(&rec, sizeof rec);
  return rc;
}

static cqrs_code_t ring_seal(void *self, const char *subject, uint8_t key[CQRS__KEY_BYTES], uint32_t *generation,
                             bool *forgotten, cqrs_error_t *err) {
  return key_for(self, subject, true, key, generation, forgotten, err);
}

static cqrs_code_t ring_open(void *self, const char *subject, uint32_t generation, uint8_t key[CQRS__KEY_BYTES],
                             bool *forgotten, cqrs_error_t *err) {
  uint32_t have = 0;
  cqrs_code_t rc = key_for(self, subject, false, key, &have, forgotten, err);
  if (!rc && !*forgotten && have != generation)
    rc = cqrs_error_set(err, CQRS_ECODEC, "a value of '%s' was sealed with key generation %u; the key store has %u",
                        subject, (unsigned)generation, (unsigned)have);
  return rc;
}

void cqrs__keys_ring(cqrs_keys_t *k, cqrs__keyring_t *ring) {
  ring->self = k;
  ring->seal_key = ring_seal;
  ring->open_key = ring_open;
}

/* ---- the public calls ---- */

cqrs_code_t cqrs_keys_forget(cqrs_keys_t *k, const char *subject, cqrs_error_t *err) {
  if (!k) return cqrs_error_set(err, CQRS_EINVAL, "key store is NULL");
  cqrs_code_t rc = check_subject(subject, err);
  if (rc) return rc;
  /* Out of the cache first: from here on this process seals nothing more
   * with the key, whatever the store answers. */
  pthread_mutex_lock(&k->lock);
  entry_t *e;
  HASH_FIND_STR(k->table, subject, e);
  if (e) drop(k, e);
  pthread_mutex_unlock(&k->lock);
  if ((rc = k->ops->forget(k->impl, subject, cqrs_now_ms(), err))) return rc;
  cache_put(k, subject, NULL, 0, true);
  return CQRS_OK;
}

cqrs_code_t cqrs_keys_state(cqrs_keys_t *k, const char *subject, cqrs_subject_state_t *state, cqrs_error_t *err) {
  if (!k || !state) return cqrs_error_set(err, CQRS_EINVAL, "NULL key store or state");
  *state = CQRS_SUBJECT_UNKNOWN;
  cqrs_code_t rc = check_subject(subject, err);
  if (rc) return rc;
  cqrs_key_record_t rec;
  memset(&rec, 0, sizeof rec);
  if (!(rc = k->ops->get(k->impl, subject, &rec, err))) *state = rec.state;
  cqrs__crypto_wipe(&rec, sizeof rec);
  return rc;
}

typedef struct lister {
  cqrs_subject_visit_cb cb;
  void *data;
} lister_t;

static bool list_one(const char *subject, const cqrs_key_record_t *rec, void *data) {
  lister_t *l = data;
  cqrs_subject_info_t info = {subject, rec->state, rec->created_at, rec->forgotten_at};
  return l->cb(&info, l->data);
}

cqrs_code_t cqrs_keys_list(cqrs_keys_t *k, cqrs_subject_visit_cb cb, void *data, cqrs_error_t *err) {
  if (!k || !cb) return cqrs_error_set(err, CQRS_EINVAL, "NULL key store or callback");
  lister_t l = {cb, data};
  return k->ops->list(k->impl, list_one, &l, err);
}
