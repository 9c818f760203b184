/* The in-memory read model: collections of BSON documents in uthash tables
 * under one lock, patched in place where a patch only overwrites
 * fixed-size values. readmodel.c wraps it (cqrs_memory_readmodel_new). */
#include <pthread.h>

#include "base/cqrs-uthash.h"
#include "store/bson-private.h"
#include "store/memory-readmodel-private.h"

#define MEMO_KEY 24

typedef struct mdoc {
  UT_hash_handle hh;
  bson_t *doc;
  int64_t position;
  /* Where the last single-key in-place patch wrote: the next patch of the
   * same key writes there without walking the document. Reset on rebuild. */
  uint32_t memo_off;
  uint8_t memo_klen; /* 0: none */
  uint8_t memo_type;
  char memo_key[MEMO_KEY];
  char id[CQRS_ID_MAX];
} mdoc_t;

typedef struct mcoll {
  UT_hash_handle hh;
  mdoc_t *docs;
  char name[CQRS_NAME_MAX];
} mcoll_t;

typedef cqrs__memrm_t memrm_t;

struct cqrs__memrm {
  /* Recursive, so that a find's callback may read again as it could under
   * the read-write lock this was; one writer or reader at a time otherwise
   * (a projection's write is the common call: a plain lock costs it least). */
  pthread_mutex_t lock;
  mcoll_t *colls;
  mcoll_t *last; /* the collection a writer used last; under the lock */
};

static mcoll_t *get_coll(memrm_t *m, const char *name, bool create) {
  mcoll_t *c;
  HASH_FIND_STR(m->colls, name, c);
  if (!c && create && (c = cqrs__calloc(1, sizeof *c))) {
    memcpy(c->name, name, strlen(name) + 1);
    CQRS_HASH_TRY(HASH_ADD_STR(m->colls, name, c));
    if (CQRS_HASH_FAILED()) {
      cqrs__free(c);
      c = NULL;
    }
  }
  return c;
}

/* get_coll for writers (the lock held): a projection writes one
 * collection after another, so the last one is checked first. */
static mcoll_t *get_coll_w(memrm_t *m, const char *name, bool create) {
  if (m->last && !strcmp(m->last->name, name)) return m->last;
  mcoll_t *c = get_coll(m, name, create);
  if (c) m->last = c;
  return c;
}

static bool skip_key(const char *k) { return !strcmp(k, "_id") || !strcmp(k, CQRS_RM_POSITION); }

static bson_t *build(const char *id, const bson_t *body, int64_t position) {
  bson_t *out = bson_new();
  BSON_APPEND_UTF8(out, "_id", id);
  bson_iter_t it;
  if (bson_iter_init(&it, body)) {
    while (bson_iter_next(&it)) {
      if (!skip_key(bson_iter_key(&it))) bson_append_iter(out, NULL, 0, &it);
    }
  }
  BSON_APPEND_INT64(out, CQRS_RM_POSITION, position);
  return out;
}

/* True when `set` holds a key that starts with `path` followed by a dot. */
static bool set_has_below(const bson_t *set, const char *path, size_t plen) {
  bson_iter_t it;
  if (!bson_iter_init(&it, set)) return false;
  while (bson_iter_next(&it)) {
    const char *k = bson_iter_key(&it);
    if (!strncmp(k, path, plen) && k[plen] == '.') return true;
  }
  return false;
}

static bool has_dotted_key(const bson_t *set) {
  bson_iter_t it;
  if (!bson_iter_init(&it, set)) return false;
  while (bson_iter_next(&it)) {
    if (strchr(bson_iter_key(&it), '.')) return true;
  }
  return false;
}

/* True when `key` is the first key of `set` below `path` (plen bytes, no
 * trailing dot): "a.b" is, of {"a.b", "a.c"}, below "a". */
static bool first_under(const bson_t *set, const char *path, size_t plen, const char *key) {
  bson_iter_t it;
  if (!bson_iter_init(&it, set)) return false;
  while (bson_iter_next(&it)) {
    const char *k = bson_iter_key(&it);
    if (!strncmp(k, path, plen) && k[plen] == '.') return k == key;
  }
  return false;
}

/* Copies `old` into `out`, replacing the values `set` names by (dotted) path
 * and adding its new keys (and the documents its dotted keys go under, where
 * `old` lacks them), as MongoDB's $set does. `path` holds the prefix of this
 * level (plen bytes, "" or "a.b."); it has room for 256. */
static void merge(bson_t *out, const bson_t *old, const bson_t *set, char *path, size_t plen, bool top) {
  bson_iter_t it;
  if (bson_iter_init(&it, old)) {
    while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (top && skip_key(k)) continue;
      size_t klen = strlen(k);
      if (plen + klen + 2 > 256) {
        bson_append_iter(out, k, -1, &it);
        continue;
      }
      memcpy(path + plen, k, klen + 1);
      bson_iter_t s;
      if (bson_iter_init_find(&s, set, path)) {
        bson_append_iter(out, k, -1, &s);
      } else if (BSON_ITER_HOLDS_DOCUMENT(&it) && set_has_below(set, path, plen + klen)) {
        uint32_t len;
        const uint8_t *raw;
        bson_iter_document(&it, &len, &raw);
        bson_t child_old, child;
        if (bson_init_static(&child_old, raw, len)) {
          path[plen + klen] = '.';
          path[plen + klen + 1] = '\0';
          bson_append_document_begin(out, k, -1, &child);
          merge(&child, &child_old, set, path, plen + klen + 1, false);
          bson_append_document_end(out, &child);
        }
      } else {
        bson_append_iter(out, k, -1, &it);
      }
    }
  }
  path[plen] = '\0';
  bson_iter_t s;
  if (!bson_iter_init(&s, set)) return;
  while (bson_iter_next(&s)) {
    const char *k = bson_iter_key(&s);
    if (strncmp(k, path, plen) || (top && skip_key(k))) continue;
    const char *rest = k + plen, *dot = strchr(rest, '.');
    bson_iter_t exists;
    if (!dot) {
      if (!bson_iter_init_find(&exists, old, rest)) bson_append_iter(out, rest, -1, &s);
      continue;
    }
    /* A dotted key under a document this level lacks makes the document
     * (once, for the first key under it), as $set does. */
    size_t seglen = (size_t)(dot - rest);
    if (seglen == 0 || plen + seglen + 2 > 256) continue;
    memcpy(path + plen, rest, seglen);
    path[plen + seglen] = '\0';
    bool made = bson_iter_init_find(&exists, old, path + plen) || !first_under(set, path, plen + seglen, k);
    if (!made) {
      path[plen + seglen] = '.';
      path[plen + seglen + 1] = '\0';
      bson_t child, none = BSON_INITIALIZER;
      bson_append_document_begin(out, rest, (int)seglen, &child);
      merge(&child, &none, set, path, plen + seglen + 1, false);
      bson_append_document_end(out, &child);
    }
    path[plen] = '\0';
  }
}

/* The common case: top-level keys only. */
static void merge_flat(bson_t *out, const bson_t *old, const bson_t *set) {
  bson_iter_t it, s;
  if (bson_iter_init(&it, old)) {
    while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (skip_key(k)) continue;
      if (bson_iter_init_find(&s, set, k)) {
        bson_append_iter(out, k, -1, &s);
      } else {
        bson_append_iter(out, k, -1, &it);
      }
    }
  }
  if (!bson_iter_init(&s, set)) return;
  while (bson_iter_next(&s)) {
    const char *k = bson_iter_key(&s);
    bson_iter_t exists;
    if (!skip_key(k) && !bson_iter_init_find(&exists, old, k)) bson_append_iter(out, k, -1, &s);
  }
}

static bool fixed_size(bson_type_t t) {
  return t == BSON_TYPE_INT64 || t == BSON_TYPE_INT32 || t == BSON_TYPE_DOUBLE || t == BSON_TYPE_BOOL ||
         t == BSON_TYPE_DATE_TIME;
}

static void write_u64(bson_t *doc, uint32_t off, uint64_t v) {
  v = BSON_UINT64_TO_LE(v);
  memcpy((uint8_t *)(uintptr_t)bson_get_data(doc) + off, &v, sizeof v);
}

/* Writes the fixed-size value `s` holds at byte `off` of `doc`, in place. */
static void write_fixed(bson_t *doc, uint32_t off, const bson_iter_t *s) {
  uint8_t *p = (uint8_t *)(uintptr_t)bson_get_data(doc) + off;
  uint32_t v4;
  double dv;
  uint64_t v8;
  switch (bson_iter_type(s)) {
  case BSON_TYPE_INT32:
    v4 = BSON_UINT32_TO_LE((uint32_t)bson_iter_int32(s));
    memcpy(p, &v4, sizeof v4);
    break;
  case BSON_TYPE_BOOL:
    *p = bson_iter_bool(s) ? 1 : 0;
    break;
  case BSON_TYPE_DOUBLE:
    dv = bson_iter_double(s);
    memcpy(&v8, &dv, sizeof v8);
    write_u64(doc, off, v8);
    break;
  case BSON_TYPE_INT64:
    write_u64(doc, off, (uint64_t)bson_iter_int64(s));
    break;
  default:
    write_u64(doc, off, (uint64_t)bson_iter_date_time(s));
    break;
  }
}

#define PATCH_KEYS 8

/* build and patch_doc always write the position last, just before the
 * document's terminating byte. */
static void write_position(mdoc_t *d, int64_t position) {
  write_u64(d->doc, d->doc->len - 1 - (uint32_t)sizeof(int64_t), (uint64_t)position);
  d->position = position;
}

static void remember(mdoc_t *d, const char *key, uint32_t klen, bson_type_t type, uint32_t off) {
  if (klen >= MEMO_KEY) return;
  d->memo_off = off;
  d->memo_klen = (uint8_t)klen;
  d->memo_type = (uint8_t)type;
  memcpy(d->memo_key, key, klen);
}

/* The offset of the value of top-level `key` when it has type `type`: where
 * the last in-place write of that key went, else found by a walk that stops
 * at the key. */
static bool locate(mdoc_t *d, const char *key, uint32_t klen, bson_type_t type, uint32_t *off) {
  if (d->memo_klen == klen && d->memo_type == (uint8_t)type && !memcmp(d->memo_key, key, klen)) {
    *off = d->memo_off;
    return true;
  }
  bson_iter_t it;
  if (!bson_iter_init(&it, d->doc)) return false;
  const uint8_t *base = bson_get_data(d->doc);
  while (bson_iter_next(&it)) {
    const char *k = bson_iter_key(&it);
    if (bson_iter_key_len(&it) != klen || memcmp(k, key, klen)) continue;
    if (bson_iter_type(&it) != type) return false;
    *off = (uint32_t)((const uint8_t *)k - base) + klen + 1;
    remember(d, key, klen, type, *off);
    return true;
  }
  return false;
}

/* bson_iter_t is over-aligned: arrays of it need a wrapper. */
typedef struct slot {
  bson_iter_t it;
} slot_t;

/* When every key set is a top-level field already there with the same
 * fixed-size type, overwrites the values where they lie: no rebuild. One
 * pass over `set` (small); one key is located as above, several by one walk
 * of the document that stops at the last it needs; the position is written
 * at its known offset. */
static bool patch_in_place(mdoc_t *d, const bson_t *set, int64_t position) {
  slot_t s[PATCH_KEYS];
  uint32_t off[PATCH_KEYS], klen[PATCH_KEYS];
  const char *key[PATCH_KEYS];
  size_t n = 0, found = 0;
  bson_iter_t it;
  if (!bson_iter_init(&it, set)) return false;
  while (bson_iter_next(&it)) {
    if (n == PATCH_KEYS || !fixed_size(bson_iter_type(&it))) return false;
    s[n].it = it;
    key[n] = bson_iter_key(&it);
    klen[n] = bson_iter_key_len(&it);
    n++;
  }
  if (n == 1) {
    if (!locate(d, key[0], klen[0], bson_iter_type(&s[0].it), &off[0])) return false;
    found = 1;
  }
  if (n == 0 || !bson_iter_init(&it, d->doc)) return false;
  const uint8_t *base = bson_get_data(d->doc);
  while (found < n && bson_iter_next(&it)) {
    const char *k = bson_iter_key(&it);
    uint32_t kl = bson_iter_key_len(&it);
    for (size_t i = 0; i < n; i++) {
      if (klen[i] != kl || memcmp(key[i], k, kl)) continue;
      if (bson_iter_type(&s[i].it) != bson_iter_type(&it)) return false;
      off[i] = (uint32_t)((const uint8_t *)k - base) + kl + 1;
      found++;
      break;
    }
  }
  if (found != n) return false;
  for (size_t i = 0; i < n; i++) write_fixed(d->doc, off[i], &s[i].it);
  write_position(d, position);
  return true;
}

static void patch_doc(mdoc_t *d, const bson_t *set, int64_t position) {
  if (patch_in_place(d, set, position)) return;
  bson_t *out = bson_new();
  BSON_APPEND_UTF8(out, "_id", d->id);
  if (has_dotted_key(set)) {
    char path[256] = "";
    merge(out, d->doc, set, path, 0, true);
  } else {
    merge_flat(out, d->doc, set);
  }
  BSON_APPEND_INT64(out, CQRS_RM_POSITION, position);
  bson_destroy(d->doc);
  d->doc = out;
  d->position = position;
  d->memo_klen = 0;
}

static cqrs_code_t mrm_put(void *impl, const char *coll, const char *id, const bson_t *doc, int64_t position,
                           bool *applied, cqrs_error_t *err) {
  memrm_t *m = impl;
  cqrs_code_t rc = CQRS_OK;
  pthread_mutex_lock(&m->lock);
  mcoll_t *c = get_coll_w(m, coll, true);
  mdoc_t *d = NULL;
  if (c) HASH_FIND_STR(c->docs, id, d);
  if (!c) {
    rc = cqrs_error_set(err, CQRS_ENOMEM, "out of memory");
  } else if (d && d->position >= position) {
    *applied = false;
  } else if (!d && !(d = cqrs__calloc(1, sizeof *d))) {
    rc = cqrs_error_set(err, CQRS_ENOMEM, "out of memory");
  } else {
    bool fresh = d->doc == NULL;
    if (fresh) {
      memcpy(d->id, id, strlen(id) + 1);
      CQRS_HASH_TRY(HASH_ADD_STR(c->docs, id, d));
    }
    if (fresh && CQRS_HASH_FAILED()) {
      cqrs__free(d);
      rc = cqrs_error_set(err, CQRS_ENOMEM, "out of memory");
    } else {
      if (d->doc) bson_destroy(d->doc);
      d->doc = build(id, doc, position);
      d->position = position;
      d->memo_klen = 0;
      *applied = true;
    }
  }
  pthread_mutex_unlock(&m->lock);
  return rc;
}

/* cqrs_readmodel_set_int64 in memory: no BSON built when the field is there. */
cqrs_code_t cqrs__memrm_set_int64(memrm_t *m, const char *coll, const char *id, const char *key, int64_t value,
                                  int64_t position, bool *applied, cqrs_error_t *err) {
  bool dummy;
  if (!applied) applied = &dummy;
  *applied = false;
  cqrs_code_t rc = CQRS_OK;
  pthread_mutex_lock(&m->lock);
  mcoll_t *c = get_coll_w(m, coll, false);
  mdoc_t *d = NULL;
  if (c) HASH_FIND_STR(c->docs, id, d);
  uint32_t off;
  if (!d) {
    rc = cqrs_error_set(err, CQRS_ENOT_FOUND, "%s/%s does not exist", coll, id);
  } else if (d->position < position) {
    if (locate(d, key, (uint32_t)strlen(key), BSON_TYPE_INT64, &off)) {
      write_u64(d->doc, off, (uint64_t)value);
      write_position(d, position);
    } else {
      bson_t set = BSON_INITIALIZER;
      BSON_APPEND_INT64(&set, key, value);
      patch_doc(d, &set, position);
      bson_destroy(&set);
    }
    *applied = true;
  }
  pthread_mutex_unlock(&m->lock);
  if (rc == CQRS_ENOT_FOUND) {
    /* A document found has a valid collection name and id (they were
     * checked when it was put): only a miss needs the check, for its error. */
    cqrs_code_t bad = cqrs__check_str(coll, CQRS_NAME_MAX, "collection name", err);
    if (!bad) bad = cqrs__check_str(id, CQRS_ID_MAX, "document id", err);
    if (bad) rc = bad;
  }
  return rc;
}

static cqrs_code_t mrm_patch(void *impl, const char *coll, const char *id, const bson_t *set, int64_t position,
                             bool *applied, cqrs_error_t *err) {
  memrm_t *m = impl;
  cqrs_code_t rc = CQRS_OK;
  pthread_mutex_lock(&m->lock);
  mcoll_t *c = get_coll_w(m, coll, false);
  mdoc_t *d = NULL;
  if (c) HASH_FIND_STR(c->docs, id, d);
  if (!d) {
    rc = cqrs_error_set(err, CQRS_ENOT_FOUND, "%s/%s does not exist", coll, id);
  } else if (d->position < position) {
    patch_doc(d, set, position);
    *applied = true;
  }
  pthread_mutex_unlock(&m->lock);
  return rc;
}

static cqrs_code_t mrm_patch_where(void *impl, const char *coll, const bson_t *filter, const bson_t *set,
                                   int64_t position, size_t *count, cqrs_error_t *err) {
  CQRS__UNUSED(err);
  memrm_t *m = impl;
  pthread_mutex_lock(&m->lock);
  mcoll_t *c = get_coll_w(m, coll, false);
  if (c) {
    for (mdoc_t *d = c->docs; d; d = d->hh.next) {
      if (d->position < position && cqrs__bson_matches(d->doc, filter)) {
        patch_doc(d, set, position);
        (*count)++;
      }
    }
  }
  pthread_mutex_unlock(&m->lock);
  return CQRS_OK;
}

static cqrs_code_t mrm_get(void *impl, const char *coll, const char *id, bson_t *out, bool *found,
                           cqrs_error_t *err) {
  CQRS__UNUSED(err);
  memrm_t *m = impl;
  pthread_mutex_lock(&m->lock);
  mcoll_t *c = get_coll(m, coll, false);
  mdoc_t *d = NULL;
  if (c) HASH_FIND_STR(c->docs, id, d);
  if (d) {
    bson_copy_to(d->doc, out);
    *found = true;
  }
  pthread_mutex_unlock(&m->lock);
  return CQRS_OK;
}

typedef struct sort_ctx {
  const char *key;
  bool desc;
} sort_ctx_t;

static _Thread_local const sort_ctx_t *current_sort;

static int cmp_docs(const void *pa, const void *pb) {
  const mdoc_t *a = *(const mdoc_t *const *)pa, *b = *(const mdoc_t *const *)pb;
  const sort_ctx_t *s = current_sort;
  int r;
  if (!s->key) {
    r = strcmp(a->id, b->id);
  } else {
    bson_iter_t ra, rb, va, vb;
    bool ha = bson_iter_init(&ra, a->doc) && bson_iter_find_descendant(&ra, s->key, &va);
    bool hb = bson_iter_init(&rb, b->doc) && bson_iter_find_descendant(&rb, s->key, &vb);
    bool comparable;
    if (!ha || !hb) {
      r = (int)ha - (int)hb; /* missing sorts first */
    } else {
      r = cqrs__bson_compare(&va, &vb, &comparable);
    }
    if (r == 0) r = strcmp(a->id, b->id);
  }
  return s->desc ? -r : r;
}

static cqrs_code_t mrm_find(void *impl, const char *coll, const cqrs_find_t *q, cqrs_doc_visit_cb cb, void *data,
                            cqrs_error_t *err) {
  memrm_t *m = impl;
  cqrs_code_t rc = CQRS_OK;
  pthread_mutex_lock(&m->lock);
  mcoll_t *c = get_coll(m, coll, false);
  size_t n = c ? HASH_COUNT(c->docs) : 0, k = 0;
  mdoc_t **hits = n ? cqrs__malloc(n * sizeof *hits) : NULL;
  if (n && !hits) {
    rc = cqrs_error_set(err, CQRS_ENOMEM, "out of memory");
  } else if (n) {
    for (mdoc_t *d = c->docs; d; d = d->hh.next) {
      if (cqrs__bson_matches(d->doc, q->filter)) hits[k++] = d;
    }
    sort_ctx_t sc = {q->sort, q->descending};
    current_sort = &sc;
    qsort(hits, k, sizeof *hits, cmp_docs);
    current_sort = NULL;
    size_t limit = q->limit && q->limit < k ? q->limit : k;
    for (size_t i = 0; i < limit; i++) {
      if (!cb(hits[i]->doc, data)) break;
    }
  }
  pthread_mutex_unlock(&m->lock);
  cqrs__free(hits);
  return rc;
}

static void mrm_destroy(void *impl) {
  memrm_t *m = impl;
  mcoll_t *c, *tc;
  HASH_ITER(hh, m->colls, c, tc) {
    mdoc_t *d, *td;
    HASH_ITER(hh, c->docs, d, td) {
      HASH_DEL(c->docs, d);
      bson_destroy(d->doc);
      cqrs__free(d);
    }
    HASH_DEL(m->colls, c);
    cqrs__free(c);
  }
  pthread_mutex_destroy(&m->lock);
  cqrs__free(m);
}

const cqrs_readmodel_ops_t cqrs__memrm_ops = {.blocking = false, .put = mrm_put, .patch = mrm_patch,
                                              .patch_where = mrm_patch_where, .get = mrm_get, .find = mrm_find,
                                              .destroy = mrm_destroy};

cqrs_code_t cqrs__memrm_new(memrm_t **out, cqrs_error_t *err) {
  *out = NULL;
  memrm_t *m = cqrs__calloc(1, sizeof *m);
  if (!m) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate a memory read model");
  pthread_mutexattr_t attr;
  bool made = pthread_mutexattr_init(&attr) == 0;
  if (made) {
    made = pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE) == 0 && pthread_mutex_init(&m->lock, &attr) == 0;
    pthread_mutexattr_destroy(&attr);
  }
  if (!made) {
    cqrs__free(m);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot initialise the read model's lock");
  }
  *out = m;
  return CQRS_OK;
}
