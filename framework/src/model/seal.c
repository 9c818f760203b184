/* Sealing and opening personal values in BSON documents: the format is in
 * personal-private.h, the cipher in base/crypto.c. */
#include <stdio.h>

#include "model/personal-private.h"

#define AD_MAX 512
#define PATH_MAX_LEN 160
#define DEPTH_MAX 100
#define SEAL_DOC_KEY "v"

static const char ad_label[] = "cqrs.personal.1";

/* The associated data of one value; 0 when it would not fit (never cut:
 * refused). */
static size_t ad_make(uint8_t buf[AD_MAX], const char *ctx, const char *path, const char *subject, uint32_t gen,
                      uint8_t type) {
  const char *parts[4] = {ad_label, ctx, path, subject};
  size_t n = 0;
  for (int i = 0; i < 4; i++) {
    size_t len = strlen(parts[i]) + 1;
    if (n + len + 5 > AD_MAX) return 0;
    memcpy(buf + n, parts[i], len);
    n += len;
  }
  for (int i = 0; i < 4; i++) buf[n++] = (uint8_t)(gen >> (8 * i));
  buf[n++] = type;
  return n;
}

static bool join(char *buf, const char *prefix, const char *key) {
  return (size_t)snprintf(buf, PATH_MAX_LEN, "%s%s%s", prefix, *prefix ? "." : "", key) < PATH_MAX_LEN;
}

/* A parsed sealed value. */
typedef struct sealed {
  uint8_t format, type;
  char subject[CQRS_ID_MAX];
  uint32_t gen;
  const uint8_t *box; /* nonce, ciphertext, tag */
  size_t box_len;
} sealed_t;

static bool is_seal(const bson_iter_t *it, const uint8_t **b, uint32_t *len) {
  if (!BSON_ITER_HOLDS_BINARY(it)) return false;
  bson_subtype_t sub;
  bson_iter_binary(it, &sub, len, b);
  return sub == CQRS__SEAL_SUBTYPE && *len >= 3 && (*b)[0] >= CQRS__SEAL_SEALED && (*b)[0] <= CQRS__SEAL_REDACTED;
}

static bool parse(const uint8_t *b, uint32_t len, sealed_t *s) {
  s->format = b[0];
  s->type = b[1];
  size_t n = b[2];
  if (n >= CQRS_ID_MAX || len < 3 + n) return false;
  memcpy(s->subject, b + 3, n);
  s->subject[n] = '\0';
  if (memchr(s->subject, '\0', n)) return false;
  s->gen = 0;
  s->box = NULL;
  s->box_len = 0;
  if (s->format != CQRS__SEAL_SEALED) return len == 3 + n;
  if (n == 0 || len < 3 + n + 4 + CQRS__NONCE_BYTES + CQRS__TAG_BYTES) return false;
  const uint8_t *g = b + 3 + n;
  s->gen = (uint32_t)g[0] | (uint32_t)g[1] << 8 | (uint32_t)g[2] << 16 | (uint32_t)g[3] << 24;
  s->box = g + 4;
  s->box_len = len - (3 + n + 4);
  return true;
}

bool cqrs__personal_sealed(const bson_t *doc) {
  struct {
    bson_iter_t it;
  } stack[DEPTH_MAX];
  int top = 0;
  if (!doc || !bson_iter_init(&stack[0].it, doc)) return false;
  while (top >= 0) {
    bson_iter_t *it = &stack[top].it;
    if (!bson_iter_next(it)) {
      top--;
      continue;
    }
    const uint8_t *b;
    uint32_t len;
    if (is_seal(it, &b, &len)) return true;
    if (BSON_ITER_HOLDS_DOCUMENT(it) && top + 1 < DEPTH_MAX && bson_iter_recurse(it, &stack[top + 1].it)) top++;
  }
  return false;
}

/* Appends the header of a sealed value; false when too large. */
static size_t header(uint8_t *buf, uint8_t format, uint8_t type, const char *subject) {
  size_t n = strlen(subject);
  buf[0] = format;
  buf[1] = type;
  buf[2] = (uint8_t)n;
  memcpy(buf + 3, subject, n);
  return 3 + n;
}

/* What a copy does with one value: copy it, recurse into it (a document),
 * or nothing more (the hook appended what it wanted, or failed). */
typedef enum { WALK_COPY, WALK_DESCEND, WALK_DONE } walk_t;
typedef walk_t (*walk_fn)(void *self, bson_t *out, const char *key, const char *path, const bson_iter_t *it,
                          cqrs_code_t *rc, cqrs_error_t *err);

/* Copies `in` into `out`, asking `fn` about each value (`path`: its dotted
 * key, "" when too long to say). */
static cqrs_code_t walk(void *self, walk_fn fn, const bson_t *in, const char *prefix, int depth, bson_t *out,
                        cqrs_error_t *err) {
  bson_iter_t it;
  if (depth > DEPTH_MAX || !bson_iter_init(&it, in)) return cqrs_error_set(err, CQRS_ECODEC, "malformed document");
  while (bson_iter_next(&it)) {
    const char *key = bson_iter_key(&it);
    char path[PATH_MAX_LEN];
    if (!join(path, prefix, key)) path[0] = '\0';
    cqrs_code_t rc = CQRS_OK;
    walk_t what = fn(self, out, key, path, &it, &rc, err);
    if (what == WALK_DESCEND && BSON_ITER_HOLDS_DOCUMENT(&it) && path[0]) {
      uint32_t len;
      const uint8_t *raw;
      bson_iter_document(&it, &len, &raw);
      bson_t child_in, child;
      if (!bson_init_static(&child_in, raw, len)) return cqrs_error_set(err, CQRS_ECODEC, "malformed '%s'", path);
      if (!bson_append_document_begin(out, key, -1, &child))
        return cqrs_error_set(err, CQRS_ETOO_LARGE, "cannot append field '%s': document too large", path);
      rc = walk(self, fn, &child_in, path, depth + 1, &child, err);
      if (!bson_append_document_end(out, &child) && !rc)
        rc = cqrs_error_set(err, CQRS_ETOO_LARGE, "cannot append field '%s': document too large", path);
    } else if (what != WALK_DONE && !bson_append_iter(out, key, -1, &it)) {
      rc = cqrs_error_set(err, CQRS_ETOO_LARGE, "cannot append field '%s': document too large", path);
    }
    if (rc) return rc;
  }
  return CQRS_OK;
}

/* What one document's sealing needs, its key fetched at the first value. */
typedef struct sealer {
  const cqrs_field_t *fields;
  const char *subject, *ctx;
  const cqrs__keyring_t *ring;
  bool redact; /* exports: every personal value redacted, no key needed */
  bool have_key, forgotten;
  uint8_t key[CQRS__KEY_BYTES];
  uint32_t gen;
  size_t count;
} sealer_t;

static cqrs_code_t seal_value(sealer_t *s, bson_t *out, const char *key, const char *path, const bson_iter_t *it,
                              cqrs_error_t *err) {
  if (s->redact) {
    uint8_t head[3] = {CQRS__SEAL_REDACTED, (uint8_t)bson_iter_type(it), 0};
    if (!bson_append_binary(out, key, -1, CQRS__SEAL_SUBTYPE, head, sizeof head))
      return cqrs_error_set(err, CQRS_ETOO_LARGE, "cannot append field '%s': document too large", path);
    return CQRS_OK;
  }
  if (!s->subject || !*s->subject)
    return cqrs_error_set(err, CQRS_EINVAL, "personal field '%s' has no subject", path);
  if (strnlen(s->subject, CQRS_ID_MAX) >= CQRS_ID_MAX || !cqrs__utf8_valid(s->subject, strlen(s->subject)))
    return cqrs_error_set(err, CQRS_EINVAL, "the subject of personal field '%s' is not an id (valid UTF-8, under %d "
                          "bytes)", path, CQRS_ID_MAX);
  if (!s->ring)
    return cqrs_error_set(err, CQRS_ESTATE, "personal field '%s' and no key store: personal data is never written "
                          "in clear (cqrs_store_set_keys, cqrs_readmodel_add_type)", path);
  if (!s->have_key) {
    cqrs_code_t rc = s->ring->seal_key(s->ring->self, s->subject, s->key, &s->gen, &s->forgotten, err);
    if (rc) return rc;
    s->have_key = true;
  }
  uint8_t type = (uint8_t)bson_iter_type(it);
  uint8_t head[3 + CQRS_ID_MAX + 4];
  size_t h = header(head, s->forgotten ? CQRS__SEAL_FORGOTTEN : CQRS__SEAL_SEALED, type, s->subject);
  s->count++;
  if (s->forgotten) {
    if (!bson_append_binary(out, key, -1, CQRS__SEAL_SUBTYPE, head, (uint32_t)h))
      return cqrs_error_set(err, CQRS_ETOO_LARGE, "cannot append field '%s': document too large", path);
    return CQRS_OK;
  }
  for (int i = 0; i < 4; i++) head[h++] = (uint8_t)(s->gen >> (8 * i));
  uint8_t ad[AD_MAX];
  size_t ad_len = ad_make(ad, s->ctx, path, s->subject, s->gen, type);
  if (!ad_len) return cqrs_error_set(err, CQRS_ETOO_LARGE, "personal field '%s': context or key too long", path);
  bson_t v = BSON_INITIALIZER;
  if (!bson_append_iter(&v, SEAL_DOC_KEY, 1, it)) {
    bson_destroy(&v);
    return cqrs_error_set(err, CQRS_ETOO_LARGE, "personal field '%s' is too large", path);
  }
  size_t total = h + CQRS__NONCE_BYTES + v.len + CQRS__TAG_BYTES;
  uint8_t *buf = total <= UINT32_MAX ? cqrs__malloc(total) : NULL;
  cqrs_code_t rc = CQRS_OK;
  if (!buf) {
    rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot seal personal field '%s'", path);
  } else {
    memcpy(buf, head, h);
    if (!cqrs__crypto_seal(s->key, ad, ad_len, bson_get_data(&v), v.len, buf + h))
      rc = cqrs_error_set(err, CQRS_ESTATE, "cannot seal personal field '%s': libsodium did not start", path);
    else if (!bson_append_binary(out, key, -1, CQRS__SEAL_SUBTYPE, buf, (uint32_t)total))
      rc = cqrs_error_set(err, CQRS_ETOO_LARGE, "cannot append field '%s': document too large", path);
    cqrs__free(buf);
  }
  cqrs__crypto_wipe((uint8_t *)(uintptr_t)bson_get_data(&v), v.len);
  bson_destroy(&v);
  return rc;
}

static walk_t seal_one(void *self, bson_t *out, const char *key, const char *path, const bson_iter_t *it,
                       cqrs_code_t *rc, cqrs_error_t *err) {
  sealer_t *s = self;
  bool personal = false;
  const cqrs_field_t *f = path[0] ? cqrs__personal_lookup(s->fields, path, &personal) : NULL;
  if (personal) {
    *rc = seal_value(s, out, key, path, it, err);
    return WALK_DONE;
  }
  return f && f->kind == CQRS_FIELD_DOC && cqrs__personal_table(f->fields) ? WALK_DESCEND : WALK_COPY;
}

cqrs_code_t cqrs__personal_seal_doc(const cqrs_field_t *fields, const bson_t *in, const char *subject,
                                    const char *ctx, const cqrs__keyring_t *ring, bson_t *out, size_t *sealed,
                                    cqrs_error_t *err) {
  sealer_t s = {.fields = fields, .subject = subject, .ctx = ctx, .ring = ring};
  cqrs_code_t rc = walk(&s, seal_one, in, "", 0, out, err);
  cqrs__crypto_wipe(s.key, sizeof s.key);
  if (sealed) *sealed = s.count;
  return rc;
}

cqrs_code_t cqrs__personal_encode(const cqrs_field_t *fields, const void *obj, const char *owner, const char *ctx,
                                  const cqrs__keyring_t *ring, bson_t *out, cqrs_error_t *err) {
  if (!cqrs__personal_table(fields)) return cqrs_fields_encode(fields, obj, out, err);
  bson_t plain = BSON_INITIALIZER;
  cqrs_code_t rc = cqrs_fields_encode(fields, obj, &plain, err);
  if (!rc) rc = cqrs__personal_seal_doc(fields, &plain, cqrs__personal_subject(fields, obj, owner), ctx, ring, out,
                                        NULL, err);
  cqrs__crypto_wipe((uint8_t *)(uintptr_t)bson_get_data(&plain), plain.len);
  bson_destroy(&plain);
  return rc;
}

/* What a forgotten value reads as in a document, by the type it had. */
static bool append_placeholder(bson_t *out, const char *key, uint8_t type) {
  bson_t empty = BSON_INITIALIZER;
  bool ok;
  switch ((bson_type_t)type) {
  case BSON_TYPE_UTF8:
    ok = bson_append_utf8(out, key, -1, CQRS_FORGOTTEN, -1);
    break;
  case BSON_TYPE_INT32:
    ok = bson_append_int32(out, key, -1, 0);
    break;
  case BSON_TYPE_INT64:
    ok = bson_append_int64(out, key, -1, 0);
    break;
  case BSON_TYPE_DOUBLE:
    ok = bson_append_double(out, key, -1, 0);
    break;
  case BSON_TYPE_DATE_TIME:
    ok = bson_append_date_time(out, key, -1, 0);
    break;
  case BSON_TYPE_BOOL:
    ok = bson_append_bool(out, key, -1, false);
    break;
  case BSON_TYPE_DOCUMENT:
    ok = bson_append_document(out, key, -1, &empty);
    break;
  case BSON_TYPE_ARRAY:
    ok = bson_append_array(out, key, -1, &empty);
    break;
  default:
    ok = bson_append_null(out, key, -1);
    break;
  }
  bson_destroy(&empty);
  return ok;
}

typedef struct opener {
  const char *ctx;
  const cqrs__keyring_t *ring;
  bool markers;
} opener_t;

static cqrs_code_t open_value(const opener_t *o, bson_t *out, const char *key, const char *path, const uint8_t *b,
                              uint32_t len, cqrs_error_t *err) {
  sealed_t s;
  if (!parse(b, len, &s)) return cqrs_error_set(err, CQRS_ECODEC, "field '%s': malformed sealed value", path);
  bool forgotten = s.format != CQRS__SEAL_SEALED;
  uint8_t key_bytes[CQRS__KEY_BYTES];
  if (!forgotten) {
    if (!o->ring)
      return cqrs_error_set(err, CQRS_ESTATE, "field '%s' is sealed personal data and there is no key store to open "
                            "it (cqrs_store_set_keys, cqrs_readmodel_add_type)", path);
    cqrs_code_t rc = o->ring->open_key(o->ring->self, s.subject, s.gen, key_bytes, &forgotten, err);
    if (rc) return rc;
  }
  if (forgotten) {
    bool ok;
    if (o->markers) {
      uint8_t head[3 + CQRS_ID_MAX];
      size_t h = header(head, s.format == CQRS__SEAL_REDACTED ? CQRS__SEAL_REDACTED : CQRS__SEAL_FORGOTTEN, s.type,
                        s.subject);
      ok = bson_append_binary(out, key, -1, CQRS__SEAL_SUBTYPE, head, (uint32_t)h);
    } else {
      ok = append_placeholder(out, key, s.type);
    }
    return ok ? CQRS_OK : cqrs_error_set(err, CQRS_ETOO_LARGE, "cannot append field '%s'", path);
  }
  uint8_t ad[AD_MAX];
  size_t ad_len = ad_make(ad, o->ctx, path, s.subject, s.gen, s.type);
  size_t plain_len = s.box_len - CQRS__NONCE_BYTES - CQRS__TAG_BYTES;
  uint8_t *plain = cqrs__malloc(plain_len);
  cqrs_code_t rc = CQRS_OK;
  if (!plain) {
    rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot open field '%s'", path);
  } else if (!ad_len || !cqrs__crypto_open(key_bytes, ad, ad_len, s.box, s.box_len, plain)) {
    rc = cqrs_error_set(err, CQRS_ECODEC, "field '%s' does not open here: its ciphertext was made for another "
                        "event, field or key, or was altered", path);
  } else {
    bson_t v;
    bson_iter_t vit;
    if (!bson_init_static(&v, plain, plain_len) || !bson_iter_init_find(&vit, &v, SEAL_DOC_KEY) ||
        (uint8_t)bson_iter_type(&vit) != s.type) {
      rc = cqrs_error_set(err, CQRS_ECODEC, "field '%s': its sealed value is malformed", path);
    } else if (!bson_append_iter(out, key, -1, &vit)) {
      rc = cqrs_error_set(err, CQRS_ETOO_LARGE, "cannot append field '%s'", path);
    }
    cqrs__crypto_wipe(plain, plain_len);
  }
  cqrs__free(plain);
  cqrs__crypto_wipe(key_bytes, sizeof key_bytes);
  return rc;
}

static walk_t open_one(void *self, bson_t *out, const char *key, const char *path, const bson_iter_t *it,
                       cqrs_code_t *rc, cqrs_error_t *err) {
  const uint8_t *b;
  uint32_t len;
  if (!is_seal(it, &b, &len)) return WALK_DESCEND;
  *rc = path[0] ? open_value(self, out, key, path, b, len, err)
                : cqrs_error_set(err, CQRS_ECODEC, "a sealed value's key is too long");
  return WALK_DONE;
}

cqrs_code_t cqrs__personal_open(const bson_t *in, const char *ctx, const cqrs__keyring_t *ring, bool markers,
                                bson_t *out, cqrs_error_t *err) {
  opener_t o = {ctx, ring, markers};
  return walk(&o, open_one, in, "", 0, out, err);
}

cqrs_code_t cqrs__personal_encode_redacted(const cqrs_field_t *fields, const void *obj, bson_t *out,
                                           cqrs_error_t *err) {
  if (!cqrs__personal_table(fields)) return cqrs_fields_encode(fields, obj, out, err);
  bson_t plain = BSON_INITIALIZER;
  cqrs_code_t rc = cqrs_fields_encode(fields, obj, &plain, err);
  sealer_t sr = {.fields = fields, .redact = true};
  if (!rc) rc = walk(&sr, seal_one, &plain, "", 0, out, err);
  cqrs__crypto_wipe((uint8_t *)(uintptr_t)bson_get_data(&plain), plain.len);
  bson_destroy(&plain);
  return rc;
}

bool cqrs_payload_sealed(const bson_t *data) { return data && cqrs__personal_sealed(data); }
