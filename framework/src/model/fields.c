#include <stdio.h>

#include "model/personal-private.h"

#define AT(obj, f) ((const unsigned char *)(obj) + (f)->offset)
#define AT_MUT(obj, f) ((unsigned char *)(obj) + (f)->offset)

static bool currency_ok(const char *c) {
  for (int i = 0; i < 3; i++) {
    if (c[i] < 'A' || c[i] > 'Z') return false;
  }
  return c[3] == '\0';
}

cqrs_code_t cqrs_money_set(cqrs_money_t *m, int64_t amount, const char *currency, cqrs_error_t *err) {
  if (!m || !currency) return cqrs_error_set(err, CQRS_EINVAL, "money or currency is NULL");
  if (strnlen(currency, 4) != 3 || !currency_ok(currency))
    return cqrs_error_set(err, CQRS_EINVAL, "currency must be three capital letters (ISO 4217)");
  m->amount = amount;
  memcpy(m->currency, currency, 4);
  return CQRS_OK;
}

cqrs_code_t cqrs_strlcpy(char *dst, size_t cap, const char *src, cqrs_error_t *err) {
  if (!dst || !src || cap == 0) return cqrs_error_set(err, CQRS_EINVAL, "NULL string or zero capacity");
  size_t n = strnlen(src, cap);
  if (n >= cap) return cqrs_error_set(err, CQRS_ETOO_LARGE, "string longer than %zu bytes", cap - 1);
  memcpy(dst, src, n + 1);
  return CQRS_OK;
}

static bool append_money(bson_t *out, const char *key, const cqrs_money_t *m) {
  bson_t child;
  if (!bson_append_document_begin(out, key, -1, &child)) return false;
  bool ok = bson_append_int64(&child, "amount", -1, m->amount) &&
            bson_append_utf8(&child, "currency", -1, m->currency, (int)strnlen(m->currency, sizeof m->currency));
  return bson_append_document_end(out, &child) && ok;
}

static int32_t array_count(const cqrs_field_t *f, const void *obj) {
  int32_t n;
  memcpy(&n, (const unsigned char *)obj + f->min, sizeof n);
  return n;
}

static size_t array_cap(const cqrs_field_t *f) { return f->size / f->fields[0].size; }

static cqrs_code_t encode_array(const cqrs_field_t *f, const void *obj, bson_t *out, cqrs_error_t *err);

/* Appends the value at `p`, described by `f`, under `key`. */
static cqrs_code_t encode_value(const cqrs_field_t *f, const void *p, const char *key, const void *obj, bson_t *out,
                                cqrs_error_t *err) {
    bool ok = true;
    switch (f->kind) {
    case CQRS_FIELD_STRING:
      ok = bson_append_utf8(out, key, -1, (const char *)p, (int)strnlen((const char *)p, f->size));
      break;
    case CQRS_FIELD_INT64: {
      int64_t v;
      memcpy(&v, p, sizeof v);
      ok = bson_append_int64(out, key, -1, v);
      break;
    }
    case CQRS_FIELD_INT32: {
      int32_t v;
      memcpy(&v, p, sizeof v);
      ok = bson_append_int32(out, key, -1, v);
      break;
    }
    case CQRS_FIELD_BOOL: {
      bool v;
      memcpy(&v, p, sizeof v);
      ok = bson_append_bool(out, key, -1, v);
      break;
    }
    case CQRS_FIELD_TIME: {
      int64_t v;
      memcpy(&v, p, sizeof v);
      ok = bson_append_date_time(out, key, -1, v);
      break;
    }
    case CQRS_FIELD_MONEY:
      ok = append_money(out, key, (const cqrs_money_t *)p);
      break;
    case CQRS_FIELD_DOC: {
      bson_t child;
      if (!bson_append_document_begin(out, key, -1, &child)) {
        ok = false;
        break;
      }
      cqrs_code_t rc = cqrs_fields_encode(f->fields, p, &child, err);
      ok = bson_append_document_end(out, &child);
      if (rc) return rc;
      break;
    }
    case CQRS_FIELD_ARRAY:
      return encode_array(f, obj, out, err);
    case CQRS_FIELD_SUBJECT:
    case CQRS_FIELD_END:
      break;
    }
    if (!ok) return cqrs_error_set(err, CQRS_ETOO_LARGE, "cannot append field '%s': document too large", key);
  return CQRS_OK;
}

static cqrs_code_t encode_array(const cqrs_field_t *f, const void *obj, bson_t *out, cqrs_error_t *err) {
  int32_t n = array_count(f, obj);
  if (n < 0 || (size_t)n > array_cap(f))
    return cqrs_error_set(err, CQRS_EINVAL, "field '%s' counts %d items, room for %zu", f->key, (int)n, array_cap(f));
  bson_t child;
  if (!bson_append_array_begin(out, f->key, -1, &child))
    return cqrs_error_set(err, CQRS_ETOO_LARGE, "cannot append field '%s': document too large", f->key);
  const cqrs_field_t *item = &f->fields[0];
  cqrs_code_t rc = CQRS_OK;
  for (int32_t i = 0; !rc && i < n; i++) {
    char buf[16];
    const char *k;
    bson_uint32_to_string((uint32_t)i, &k, buf, sizeof buf);
    rc = encode_value(item, AT(obj, f) + (size_t)i * item->size, k, NULL, &child, err);
  }
  if (!bson_append_array_end(out, &child) && !rc)
    rc = cqrs_error_set(err, CQRS_ETOO_LARGE, "cannot append field '%s': document too large", f->key);
  return rc;
}

cqrs_code_t cqrs_fields_encode(const cqrs_field_t *fields, const void *obj, bson_t *out, cqrs_error_t *err) {
  if (!fields || !obj || !out) return cqrs_error_set(err, CQRS_EINVAL, "NULL argument to encode");
  for (const cqrs_field_t *f = fields; f->kind != CQRS_FIELD_END; f++) {
    cqrs_code_t rc = encode_value(f, AT(obj, f), f->key, obj, out, err);
    if (rc) return rc;
  }
  return CQRS_OK;
}

static cqrs_code_t wrong_type(cqrs_error_t *err, const cqrs_field_t *f, const char *want) {
  return cqrs_error_set(err, CQRS_ECODEC, "field '%s' must be %s", f->key, want);
}

static cqrs_code_t decode_int64(const bson_iter_t *it, const cqrs_field_t *f, int64_t *v, cqrs_error_t *err) {
  switch (bson_iter_type(it)) {
  case BSON_TYPE_INT64:
    *v = bson_iter_int64(it);
    return CQRS_OK;
  case BSON_TYPE_INT32:
    *v = bson_iter_int32(it);
    return CQRS_OK;
  default:
    return wrong_type(err, f, "an integer");
  }
}

static cqrs_code_t decode_string(const bson_iter_t *it, const cqrs_field_t *f, char *dst, cqrs_error_t *err) {
  if (!BSON_ITER_HOLDS_UTF8(it)) return wrong_type(err, f, "a string");
  uint32_t len;
  const char *s = bson_iter_utf8(it, &len);
  if (len >= f->size) return cqrs_error_set(err, CQRS_ECODEC, "field '%s' is longer than %zu bytes", f->key, f->size - 1);
  if (memchr(s, '\0', len)) return cqrs_error_set(err, CQRS_ECODEC, "field '%s' holds a NUL byte", f->key);
  if (!cqrs__utf8_valid(s, len)) return cqrs_error_set(err, CQRS_ECODEC, "field '%s' is not valid UTF-8", f->key);
  memcpy(dst, s, len);
  dst[len] = '\0';
  return CQRS_OK;
}

static cqrs_code_t decode_money(const bson_iter_t *it, const cqrs_field_t *f, cqrs_money_t *m, cqrs_error_t *err) {
  if (!BSON_ITER_HOLDS_DOCUMENT(it)) return wrong_type(err, f, "a document {amount, currency}");
  bson_iter_t child;
  if (!bson_iter_recurse(it, &child)) return wrong_type(err, f, "a document {amount, currency}");
  bool have_amount = false, have_currency = false;
  static const cqrs_field_t amount_f = {"amount", CQRS_FIELD_INT64, 0, 8, 0, 0, 0, NULL, NULL};
  static const cqrs_field_t currency_f = {"currency", CQRS_FIELD_STRING, 0, 4, 0, 0, 0, NULL, NULL};
  while (bson_iter_next(&child)) {
    const char *k = bson_iter_key(&child);
    cqrs_code_t rc = CQRS_OK;
    cqrs_error_t inner;
    if (!strcmp(k, "amount")) {
      rc = decode_int64(&child, &amount_f, &m->amount, &inner);
      have_amount = true;
    } else if (!strcmp(k, "currency")) {
      rc = decode_string(&child, &currency_f, m->currency, &inner);
      have_currency = true;
    }
    if (rc) return cqrs_error_set(err, CQRS_ECODEC, "field '%s': %s", f->key, inner.message);
  }
  if (!have_amount || !have_currency) return cqrs_error_set(err, CQRS_ECODEC, "field '%s' lacks amount or currency", f->key);
  return CQRS_OK;
}

static cqrs_code_t decode_array(const bson_iter_t *it, const cqrs_field_t *f, void *obj, cqrs_error_t *err);

/* Decodes the value at `it` into `p`, described by `f` (`obj`: the struct,
 * for an array's count). */
static cqrs_code_t decode_value(const bson_iter_t *it, const cqrs_field_t *f, void *p, void *obj, cqrs_error_t *err) {
  if (BSON_ITER_HOLDS_BINARY(it) && f->kind != CQRS_FIELD_END) return cqrs__personal_decode_marker(it, f, p, obj, err);
  switch (f->kind) {
  case CQRS_FIELD_STRING:
    return decode_string(it, f, (char *)p, err);
  case CQRS_FIELD_INT64: {
    int64_t v = 0;
    cqrs_code_t rc = decode_int64(it, f, &v, err);
    if (!rc) memcpy(p, &v, sizeof v);
    return rc;
  }
  case CQRS_FIELD_INT32: {
    if (!BSON_ITER_HOLDS_INT32(it)) return wrong_type(err, f, "a 32-bit integer");
    int32_t v = bson_iter_int32(it);
    memcpy(p, &v, sizeof v);
    return CQRS_OK;
  }
  case CQRS_FIELD_BOOL: {
    if (!BSON_ITER_HOLDS_BOOL(it)) return wrong_type(err, f, "a boolean");
    bool v = bson_iter_bool(it);
    memcpy(p, &v, sizeof v);
    return CQRS_OK;
  }
  case CQRS_FIELD_TIME: {
    int64_t v;
    if (BSON_ITER_HOLDS_DATE_TIME(it)) {
      v = bson_iter_date_time(it);
    } else if (BSON_ITER_HOLDS_INT64(it)) {
      v = bson_iter_int64(it);
    } else {
      return wrong_type(err, f, "a date");
    }
    memcpy(p, &v, sizeof v);
    return CQRS_OK;
  }
  case CQRS_FIELD_MONEY: {
    cqrs_money_t m = {0};
    cqrs_code_t rc = decode_money(it, f, &m, err);
    if (!rc) memcpy(p, &m, sizeof m);
    return rc;
  }
  case CQRS_FIELD_DOC: {
    if (!BSON_ITER_HOLDS_DOCUMENT(it)) return wrong_type(err, f, "a document");
    uint32_t len;
    const uint8_t *data;
    bson_iter_document(it, &len, &data);
    bson_t child;
    if (!bson_init_static(&child, data, len)) return wrong_type(err, f, "a valid document");
    return cqrs_fields_decode(f->fields, &child, p, err);
  }
  case CQRS_FIELD_ARRAY:
    return decode_array(it, f, obj, err);
  case CQRS_FIELD_SUBJECT:
  case CQRS_FIELD_END:
    break;
  }
  return CQRS_OK;
}

static cqrs_code_t decode_array(const bson_iter_t *it, const cqrs_field_t *f, void *obj, cqrs_error_t *err) {
  if (!BSON_ITER_HOLDS_ARRAY(it)) return wrong_type(err, f, "an array");
  bson_iter_t child;
  if (!bson_iter_recurse(it, &child)) return wrong_type(err, f, "a valid array");
  const cqrs_field_t *item = &f->fields[0];
  size_t cap = array_cap(f);
  int32_t n = 0;
  while (bson_iter_next(&child)) {
    if ((size_t)n == cap) return cqrs_error_set(err, CQRS_ECODEC, "field '%s' holds more than %zu items", f->key, cap);
    cqrs_error_t inner;
    cqrs_code_t rc = decode_value(&child, item, AT_MUT(obj, f) + (size_t)n * item->size, NULL, &inner);
    if (rc) return cqrs_error_set(err, rc, "field '%s' item %d: %.180s", f->key, (int)n, inner.message);
    n++;
  }
  memcpy((unsigned char *)obj + f->min, &n, sizeof n);
  return CQRS_OK;
}

cqrs_code_t cqrs_fields_decode(const cqrs_field_t *fields, const bson_t *in, void *obj, cqrs_error_t *err) {
  if (!fields || !in || !obj) return cqrs_error_set(err, CQRS_EINVAL, "NULL argument to decode");
  for (const cqrs_field_t *f = fields; f->kind != CQRS_FIELD_END; f++) {
    memset(AT_MUT(obj, f), 0, f->size);
    if (f->kind == CQRS_FIELD_ARRAY) memset((unsigned char *)obj + f->min, 0, sizeof(int32_t));
  }
  bson_iter_t it;
  if (!bson_iter_init(&it, in)) return cqrs_error_set(err, CQRS_ECODEC, "malformed BSON document");
  for (const cqrs_field_t *f = fields; f->kind != CQRS_FIELD_END; f++) {
    if (f->kind == CQRS_FIELD_SUBJECT) continue;
    bson_iter_t fit;
    /* Keys usually come in table order: try the cursor's next key first. */
    bool found = false;
    if (bson_iter_next(&it) && !strcmp(bson_iter_key(&it), f->key)) {
      fit = it;
      found = true;
    } else {
      found = bson_iter_init_find(&fit, in, f->key);
      if (found) it = fit;
    }
    if (!found) {
      if (f->flags & CQRS_F_OPTIONAL) continue;
      return cqrs_error_set(err, CQRS_ECODEC, "field '%s' is missing", f->key);
    }
    cqrs_code_t rc = decode_value(&fit, f, AT_MUT(obj, f), obj, err);
    if (rc) return rc;
  }
  return CQRS_OK;
}

/* "prefix.key" for the messages about a nested table; a long one is cut. */
static void nested_name(char *buf, size_t cap, const char *prefix, const char *key) {
  if (snprintf(buf, cap, "%s%s%s", prefix, *prefix && *key ? "." : "", key) >= (int)cap) buf[cap - 1] = '\0';
}

static cqrs_code_t invalid(cqrs_error_t *err, const char *prefix, const cqrs_field_t *f, const char *what) {
  return cqrs_error_set(err, CQRS_EINVALID_COMMAND, "%s%s%s %s", prefix, *prefix && *f->key ? "." : "", f->key, what);
}

/* A range whose bounds a _RANGE macro gave, in order. */
static bool bounded(const cqrs_field_t *f) { return (f->flags & CQRS_F_BOUNDS) && f->min <= f->max; }

static cqrs_code_t unbounded(cqrs_error_t *err, const char *prefix, const cqrs_field_t *f) {
  return cqrs_error_set(err, CQRS_EINVAL, "field %s%s%s: CQRS_F_RANGE %s", prefix, *prefix ? "." : "", f->key,
                        f->flags & CQRS_F_BOUNDS ? "with min > max" : "without bounds (use a _RANGE macro)");
}

static cqrs_code_t validate(const cqrs_field_t *fields, const void *obj, const char *prefix, cqrs_error_t *err);
static cqrs_code_t validate_nested(const cqrs_field_t *f, const void *p, const void *obj, const char *prefix,
                                   cqrs_error_t *err);

static cqrs_code_t too_long(cqrs_error_t *err, const char *prefix, const cqrs_field_t *f) {
  char what[64];
  snprintf(what, sizeof what, "is longer than %zu bytes", f->size - 1);
  return invalid(err, prefix, f, what);
}

/* Validates the value at `p` (`obj`: the struct, for an array's count).
 * Nested tables and the messages that need buffers are out of line, so that
 * this stays small enough to inline in the loop over a table. */
static inline cqrs_code_t validate_value(const cqrs_field_t *f, const void *p, const void *obj, const char *prefix,
                                         cqrs_error_t *err) {
    if ((f->flags & CQRS_F_RANGE) && !bounded(f)) return unbounded(err, prefix, f);
    switch (f->kind) {
    case CQRS_FIELD_STRING: {
      size_t n = *(const char *)p ? strnlen((const char *)p, f->size) : 0;
      if (n >= f->size) return too_long(err, prefix, f);
      if ((f->flags & CQRS_F_REQUIRED) && n == 0) return invalid(err, prefix, f, "is empty");
      if (!cqrs__utf8_valid((const char *)p, n)) return invalid(err, prefix, f, "is not valid UTF-8");
      break;
    }
    case CQRS_FIELD_INT64:
    case CQRS_FIELD_TIME: {
      int64_t v;
      memcpy(&v, p, sizeof v);
      if ((f->flags & CQRS_F_RANGE) && (v < f->min || v > f->max)) return invalid(err, prefix, f, "is out of range");
      if ((f->flags & CQRS_F_REQUIRED) && v == 0) return invalid(err, prefix, f, "is missing");
      break;
    }
    case CQRS_FIELD_INT32: {
      int32_t v;
      memcpy(&v, p, sizeof v);
      if ((f->flags & CQRS_F_RANGE) && (v < f->min || v > f->max)) return invalid(err, prefix, f, "is out of range");
      break;
    }
    case CQRS_FIELD_MONEY: {
      cqrs_money_t m;
      memcpy(&m, p, sizeof m);
      if (!currency_ok(m.currency)) return invalid(err, prefix, f, "has no valid currency (three capital letters)");
      if ((f->flags & CQRS_F_RANGE) && (m.amount < f->min || m.amount > f->max))
        return invalid(err, prefix, f, "amount is out of range");
      break;
    }
    case CQRS_FIELD_DOC:
    case CQRS_FIELD_ARRAY:
      return validate_nested(f, p, obj, prefix, err);
    case CQRS_FIELD_BOOL:
    case CQRS_FIELD_SUBJECT:
    case CQRS_FIELD_END:
      break;
    }
  return CQRS_OK;
}

static cqrs_code_t validate_nested(const cqrs_field_t *f, const void *p, const void *obj, const char *prefix,
                                   cqrs_error_t *err) {
  switch (f->kind) {
    case CQRS_FIELD_DOC: {
      char sub[128];
      nested_name(sub, sizeof sub, prefix, f->key);
      cqrs_code_t rc = validate(f->fields, p, sub, err);
      if (rc) return rc;
      break;
    }
    case CQRS_FIELD_ARRAY: {
      int32_t n = array_count(f, obj);
      if (n < 0 || (size_t)n > array_cap(f)) return invalid(err, prefix, f, "counts more items than it holds");
      if ((f->flags & CQRS_F_REQUIRED) && n == 0) return invalid(err, prefix, f, "is empty");
      const cqrs_field_t *item = &f->fields[0];
      for (int32_t i = 0; i < n; i++) {
        char sub[128];
        char key[CQRS_NAME_MAX + 16];
        snprintf(key, sizeof key, "%s[%d]", f->key, (int)i);
        nested_name(sub, sizeof sub, prefix, key);
        cqrs_code_t rc = validate_value(item, AT(obj, f) + (size_t)i * item->size, NULL, sub, err);
        if (rc) return rc;
      }
      break;
    }
    default:
      break;
  }
  return CQRS_OK;
}

static cqrs_code_t validate(const cqrs_field_t *fields, const void *obj, const char *prefix, cqrs_error_t *err) {
  for (const cqrs_field_t *f = fields; f->kind != CQRS_FIELD_END; f++) {
    cqrs_code_t rc = validate_value(f, AT(obj, f), obj, prefix, err);
    if (rc) return rc;
  }
  return CQRS_OK;
}

cqrs_code_t cqrs_fields_validate(const cqrs_field_t *fields, const void *obj, cqrs_error_t *err) {
  if (!fields || !obj) return cqrs_error_set(err, CQRS_EINVAL, "NULL argument to validate");
  return validate(fields, obj, "", err);
}

#define CHECK_DEPTH 16

static cqrs_code_t check(const cqrs_field_t *fields, const char *prefix, int depth, cqrs_error_t *err);

/* One field; an array's item (`item`) has no key of its own. */
static cqrs_code_t check_field(const cqrs_field_t *f, const char *prefix, int depth, bool item, cqrs_error_t *err) {
    if (!f->key || (!item && !*f->key && f->kind != CQRS_FIELD_SUBJECT))
      return cqrs_error_set(err, CQRS_EINVAL, "a field of table '%s' has no key", prefix);
    char name[128];
    nested_name(name, sizeof name, prefix, f->key);
    size_t want = 0;
    bool numeric = true;
    switch (f->kind) {
    case CQRS_FIELD_INT64:
    case CQRS_FIELD_TIME:
      want = sizeof(int64_t);
      break;
    case CQRS_FIELD_INT32:
      want = sizeof(int32_t);
      break;
    case CQRS_FIELD_MONEY:
      want = sizeof(cqrs_money_t);
      break;
    case CQRS_FIELD_BOOL:
      want = sizeof(bool);
      numeric = false;
      break;
    case CQRS_FIELD_STRING:
    case CQRS_FIELD_DOC:
    case CQRS_FIELD_ARRAY:
      numeric = false;
      break;
    case CQRS_FIELD_SUBJECT:
      return f->subject && !f->flags ? CQRS_OK
                                     : cqrs_error_set(err, CQRS_EINVAL, "table %s: a subject entry without its function "
                                                      "or with flags", *prefix ? prefix : "(top)");
    default:
      return cqrs_error_set(err, CQRS_EINVAL, "field %s: unknown kind %d", name, (int)f->kind);
    }
    const char *bad = NULL;
    if (f->flags & ~(CQRS_F_REQUIRED | CQRS_F_RANGE | CQRS_F_OPTIONAL | CQRS_F_BOUNDS | CQRS_F_PERSONAL | CQRS_F_SUBJECT))
      bad = "unknown flags";
    if ((f->flags & CQRS_F_SUBJECT) && (f->kind != CQRS_FIELD_STRING || (f->flags & CQRS_F_PERSONAL)))
      bad = "CQRS_F_SUBJECT on a field that is not a plain string (the subject's id is never personal)";
    if ((f->flags & (CQRS_F_PERSONAL | CQRS_F_SUBJECT)) && item) bad = "personal data or a subject inside an array item "
                                                                        "(flag the whole array)";
    if (want && f->size != want) bad = "a member whose size does not fit its kind";
    if (f->kind == CQRS_FIELD_STRING && f->size < 2) bad = "a string member with no room for a character";
    if (f->kind == CQRS_FIELD_DOC && !f->fields) bad = "no nested table";
    if (f->kind == CQRS_FIELD_ARRAY) {
      const cqrs_field_t *it = f->fields;
      if (item) bad = "an array of arrays (put the inner one in a document)";
      else if (!it || it[0].kind == CQRS_FIELD_END || it[1].kind != CQRS_FIELD_END) bad = "no item table of one entry";
      else if (!it[0].size || f->size % it[0].size || it[0].offset) bad = "items whose size does not divide the array";
      else if (f->min < 0) bad = "no count member";
    }
    if ((f->flags & CQRS_F_RANGE) && !numeric) bad = "CQRS_F_RANGE on a kind that is not a number";
    if (bad) return cqrs_error_set(err, CQRS_EINVAL, "field %s: %s", name, bad);
    if ((f->flags & CQRS_F_RANGE) && !bounded(f)) return unbounded(err, prefix, f);
    if (f->kind == CQRS_FIELD_DOC) return check(f->fields, name, depth + 1, err);
    if (f->kind == CQRS_FIELD_ARRAY) return check_field(&f->fields[0], name, depth + 1, true, err);
  return CQRS_OK;
}

static cqrs_code_t check(const cqrs_field_t *fields, const char *prefix, int depth, cqrs_error_t *err) {
  if (depth > CHECK_DEPTH)
    return cqrs_error_set(err, CQRS_EINVAL, "field table %s nests deeper than %d levels", prefix, CHECK_DEPTH);
  for (const cqrs_field_t *f = fields; f->kind != CQRS_FIELD_END; f++) {
    cqrs_code_t rc = check_field(f, prefix, depth, false, err);
    if (rc) return rc;
  }
  return CQRS_OK;
}

/* Counts the personal fields and the subjects of a checked table, and
 * those whose dotted key is too long to seal (`prefix`: the key so far). */
static void count_personal(const cqrs_field_t *fields, size_t prefix, int depth, unsigned *personal,
                           unsigned *subjects, unsigned *too_long) {
  for (const cqrs_field_t *f = fields; depth <= CHECK_DEPTH && f->kind != CQRS_FIELD_END; f++) {
    size_t key = prefix + (prefix ? 1 : 0) + strlen(f->key);
    if (f->flags & CQRS_F_PERSONAL) (*personal)++;
    if ((f->flags & CQRS_F_PERSONAL) && key >= CQRS__PERSONAL_KEY_MAX) (*too_long)++;
    if ((f->flags & CQRS_F_SUBJECT) || f->kind == CQRS_FIELD_SUBJECT) (*subjects)++;
    if (f->kind == CQRS_FIELD_DOC && !(f->flags & CQRS_F_PERSONAL))
      count_personal(f->fields, key, depth + 1, personal, subjects, too_long);
  }
}

cqrs_code_t cqrs_fields_check(const cqrs_field_t *fields, cqrs_error_t *err) {
  if (!fields) return cqrs_error_set(err, CQRS_EINVAL, "field table is NULL");
  cqrs_code_t rc = check(fields, "", 0, err);
  if (rc) return rc;
  unsigned personal = 0, subjects = 0, too_long = 0;
  count_personal(fields, 0, 0, &personal, &subjects, &too_long);
  if (too_long)
    return cqrs_error_set(err, CQRS_EINVAL, "field table has a personal field whose dotted key is %d bytes or more",
                          CQRS__PERSONAL_KEY_MAX);
  if (subjects > 1)
    return cqrs_error_set(err, CQRS_EINVAL, "field table names %u subjects: personal data has exactly one", subjects);
  if (personal && !subjects)
    return cqrs_error_set(err, CQRS_EINVAL, "field table has %u personal field%s and no subject (a CQRS_F_SUBJECT "
                          "string, CQRS_SUBJECT_OWNER or CQRS_SUBJECT_FN)", personal, personal > 1 ? "s" : "");
  if (personal > CQRS__PERSONAL_MAX)
    return cqrs_error_set(err, CQRS_EINVAL, "field table has %u personal fields, at most %d", personal,
                          CQRS__PERSONAL_MAX);
  return CQRS_OK;
}

#define UTF8_DEPTH 100

/* Iterative, with a stack of iterators: a document nested a million deep
 * (16 MB of empty documents) must not blow the C stack. It checks the
 * structure too, since an iteration that meets corruption just stops. */
cqrs_code_t cqrs_bson_check_utf8(const bson_t *doc, cqrs_error_t *err) {
  if (!doc) return cqrs_error_set(err, CQRS_EINVAL, "document is NULL");
  struct {
    bson_iter_t it; /* libbson over-aligns it: a bare array of them is refused */
  } stack[UTF8_DEPTH];
  int top = 0;
  if (!bson_iter_init(&stack[0].it, doc)) return cqrs_error_set(err, CQRS_ECODEC, "malformed BSON document");
  while (top >= 0) {
    bson_iter_t *it = &stack[top].it;
    if (!bson_iter_next(it)) {
      /* Corruption also ends an iteration: libbson tells it by err_off (and
       * its bson_validate misses some, such as a bad nested document). */
      if (it->err_off) return cqrs_error_set(err, CQRS_ECODEC, "malformed BSON at offset %u", (unsigned)it->err_off);
      top--;
      continue;
    }
    const char *key = bson_iter_key(it);
    if (!cqrs__utf8_valid(key, bson_iter_key_len(it)))
      return cqrs_error_set(err, CQRS_ECODEC, "a key is not valid UTF-8");
    if (BSON_ITER_HOLDS_UTF8(it)) {
      uint32_t len;
      const char *s = bson_iter_utf8(it, &len);
      if (!cqrs__utf8_valid(s, len))
        return cqrs_error_set(err, CQRS_ECODEC, "'%.64s' is not valid UTF-8 without NUL bytes", key);
    } else if (BSON_ITER_HOLDS_DOCUMENT(it) || BSON_ITER_HOLDS_ARRAY(it)) {
      if (top + 1 == UTF8_DEPTH)
        return cqrs_error_set(err, CQRS_ECODEC, "'%.64s' nests deeper than %d levels", key, UTF8_DEPTH);
      uint32_t len;
      const uint8_t *raw;
      if (BSON_ITER_HOLDS_DOCUMENT(it)) {
        bson_iter_document(it, &len, &raw);
      } else {
        bson_iter_array(it, &len, &raw);
      }
      /* bson_init_static checks the terminator that bson_iter_recurse does
       * not, and that bson_append_iter and the copies assert on. */
      bson_t child;
      if (!bson_init_static(&child, raw, len) || !bson_iter_init(&stack[top + 1].it, &child))
        return cqrs_error_set(err, CQRS_ECODEC, "'%.64s' is a malformed document", key);
      top++;
    }
  }
  return CQRS_OK;
}
