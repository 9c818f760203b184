/* What a field table says of personal data: which fields are personal,
 * whose they are, and which of an event's were forgotten. The sealing
 * itself is in seal.c. */
#include <stdio.h>

#include "model/personal-private.h"

const char *cqrs_subject_owner(const void *obj, const char *owner) {
  CQRS__UNUSED(obj);
  return owner;
}

static bool scan(const cqrs_field_t *fields, int depth) {
  for (const cqrs_field_t *f = fields; depth < 16 && f->kind != CQRS_FIELD_END; f++) {
    if (f->flags & CQRS_F_PERSONAL) return true;
    if (f->kind == CQRS_FIELD_DOC && f->fields && scan(f->fields, depth + 1)) return true;
  }
  return false;
}

/* What the tables said, direct-mapped by address, shared by every thread:
 * one word per entry, the table's address with the answer in its low bit
 * (tables are aligned), so a racing write leaves a whole entry, never a
 * torn one. Tables are static: their addresses are stable keys; a miss
 * scans the table again, which is right whatever was evicted. */
_Atomic uintptr_t cqrs__personal_tables[CQRS__PERSONAL_TABLES];

bool cqrs__personal_scan(const cqrs_field_t *fields) {
  bool personal = scan(fields, 0);
  atomic_store_explicit(&cqrs__personal_tables[cqrs__personal_slot(fields)], (uintptr_t)fields | personal,
                        memory_order_relaxed);
  return personal;
}

/* The subject's field or entry, with the offset of the struct holding it
 * (a nested document's) and its dotted key. */
typedef struct subject_at {
  const cqrs_field_t *f;
  size_t base;
  char key[128];
} subject_at_t;

static bool find_subject(const cqrs_field_t *fields, size_t base, const char *prefix, int depth, subject_at_t *at) {
  for (const cqrs_field_t *f = fields; depth < 16 && f->kind != CQRS_FIELD_END; f++) {
    if (f->kind == CQRS_FIELD_SUBJECT || (f->flags & CQRS_F_SUBJECT)) {
      at->f = f;
      at->base = base;
      if (snprintf(at->key, sizeof at->key, "%s%s%s", prefix, *prefix ? "." : "", f->key) >= (int)sizeof at->key)
        at->key[0] = '\0';
      return true;
    }
    if (f->kind == CQRS_FIELD_DOC && f->fields && !(f->flags & CQRS_F_PERSONAL)) {
      char sub[128];
      if (snprintf(sub, sizeof sub, "%s%s%s", prefix, *prefix ? "." : "", f->key) >= (int)sizeof sub) continue;
      if (find_subject(f->fields, base + f->offset, sub, depth + 1, at)) return true;
    }
  }
  return false;
}

const char *cqrs__personal_subject(const cqrs_field_t *fields, const void *obj, const char *owner) {
  subject_at_t at;
  if (!fields || !find_subject(fields, 0, "", 0, &at)) return NULL;
  if (at.f->kind == CQRS_FIELD_SUBJECT) return at.f->subject(obj, owner);
  if (!obj) return NULL;
  const char *s = (const char *)obj + at.base + at.f->offset;
  return strnlen(s, at.f->size) < at.f->size ? s : NULL;
}

const char *cqrs__personal_doc_subject(const cqrs_field_t *fields, const bson_t *doc, const char *owner) {
  subject_at_t at;
  if (!fields || !find_subject(fields, 0, "", 0, &at)) return NULL;
  if (at.f->kind == CQRS_FIELD_SUBJECT) return at.f->subject(NULL, owner);
  bson_iter_t it, found;
  if (!at.key[0] || !bson_iter_init(&it, doc) || !bson_iter_find_descendant(&it, at.key, &found) ||
      !BSON_ITER_HOLDS_UTF8(&found))
    return NULL;
  return bson_iter_utf8(&found, NULL);
}

bool cqrs__personal_subject_key(const cqrs_field_t *fields, char *buf, size_t cap) {
  subject_at_t at;
  if (!fields || !find_subject(fields, 0, "", 0, &at) || at.f->kind == CQRS_FIELD_SUBJECT || !at.key[0]) return false;
  return (size_t)snprintf(buf, cap, "%s", at.key) < cap;
}

const cqrs_field_t *cqrs__personal_lookup(const cqrs_field_t *fields, const char *path, bool *personal) {
  *personal = false;
  const cqrs_field_t *table = fields;
  for (int depth = 0; table && depth < 16; depth++) {
    const char *dot = strchr(path, '.');
    size_t n = dot ? (size_t)(dot - path) : strlen(path);
    const cqrs_field_t *hit = NULL;
    for (const cqrs_field_t *f = table; f->kind != CQRS_FIELD_END; f++) {
      if (f->kind != CQRS_FIELD_SUBJECT && strlen(f->key) == n && !memcmp(f->key, path, n)) {
        hit = f;
        break;
      }
    }
    if (!hit) return NULL;
    if (hit->flags & CQRS_F_PERSONAL) *personal = true;
    if (!dot) return hit;
    if (hit->kind != CQRS_FIELD_DOC) return NULL;
    table = hit->fields;
    path = dot + 1;
  }
  return NULL;
}

/* Visits the personal fields of a table in order, with their dotted keys. */
typedef bool (*personal_visit_fn)(const char *key, int index, void *data);

static bool each_personal(const cqrs_field_t *fields, const char *prefix, int depth, int *index,
                          personal_visit_fn fn, void *data) {
  for (const cqrs_field_t *f = fields; depth < 16 && f->kind != CQRS_FIELD_END; f++) {
    if (f->kind == CQRS_FIELD_SUBJECT) continue;
    char key[128];
    if (snprintf(key, sizeof key, "%s%s%s", prefix, *prefix ? "." : "", f->key) >= (int)sizeof key) continue;
    if (f->flags & CQRS_F_PERSONAL) {
      if (*index >= CQRS__PERSONAL_MAX) return true;
      if (!fn(key, (*index)++, data)) return false;
    } else if (f->kind == CQRS_FIELD_DOC && f->fields) {
      if (!each_personal(f->fields, key, depth + 1, index, fn, data)) return false;
    }
  }
  return true;
}

typedef struct mask_walk {
  const bson_t *doc;
  uint32_t mask;
} mask_walk_t;

static bool forgotten_at(const char *key, int index, void *data) {
  mask_walk_t *w = data;
  bson_iter_t it, v;
  if (!bson_iter_init(&it, w->doc) || !bson_iter_find_descendant(&it, key, &v) || !BSON_ITER_HOLDS_BINARY(&v))
    return true;
  bson_subtype_t sub;
  uint32_t len;
  const uint8_t *b;
  bson_iter_binary(&v, &sub, &len, &b);
  if (sub == CQRS__SEAL_SUBTYPE && len >= 3 && (b[0] == CQRS__SEAL_FORGOTTEN || b[0] == CQRS__SEAL_REDACTED))
    w->mask |= UINT32_C(1) << index;
  return true;
}

uint32_t cqrs__personal_mask(const cqrs_field_t *fields, const bson_t *doc) {
  mask_walk_t w = {doc, 0};
  int index = 0;
  if (fields && doc) each_personal(fields, "", 0, &index, forgotten_at, &w);
  return w.mask;
}

typedef struct index_walk {
  const char *path;
  int found;
} index_walk_t;

static bool index_of(const char *key, int index, void *data) {
  index_walk_t *w = data;
  if (strcmp(key, w->path)) return true;
  w->found = index;
  return false;
}

int cqrs__personal_index(const cqrs_field_t *fields, const char *path) {
  index_walk_t w = {path, -1};
  int index = 0;
  if (fields && path) each_personal(fields, "", 0, &index, index_of, &w);
  return w.found;
}

/* What a forgotten personal value decodes to (docs/privacy.md): strings
 * CQRS_FORGOTTEN (empty when the member has no room for it), numbers, times
 * and booleans zero, money 0 "XXX" (ISO 4217's "no currency"), documents
 * each of their fields so, arrays empty. */
static void placeholder(const cqrs_field_t *f, unsigned char *p, unsigned char *obj) {
  switch (f->kind) {
  case CQRS_FIELD_STRING:
    memset(p, 0, f->size);
    if (f->size > sizeof CQRS_FORGOTTEN - 1) memcpy(p, CQRS_FORGOTTEN, sizeof CQRS_FORGOTTEN);
    break;
  case CQRS_FIELD_MONEY: {
    cqrs_money_t m = {0, "XXX"};
    memcpy(p, &m, sizeof m);
    break;
  }
  case CQRS_FIELD_DOC:
    for (const cqrs_field_t *g = f->fields; g->kind != CQRS_FIELD_END; g++) placeholder(g, p + g->offset, p);
    break;
  case CQRS_FIELD_ARRAY:
    memset(p, 0, f->size);
    if (obj) memset(obj + f->min, 0, sizeof(int32_t));
    break;
  default:
    memset(p, 0, f->size);
    break;
  }
}

/* A value the store could not open: forgotten (or redacted in an export)
 * is a placeholder; still sealed means nobody opened it (no key store). */
cqrs_code_t cqrs__personal_decode_marker(const bson_iter_t *it, const cqrs_field_t *f, void *p, void *obj,
                                         cqrs_error_t *err) {
  bson_subtype_t sub;
  uint32_t len;
  const uint8_t *b;
  bson_iter_binary(it, &sub, &len, &b);
  if (sub != CQRS__SEAL_SUBTYPE || len < 3)
    return cqrs_error_set(err, CQRS_ECODEC, "field '%s' must be a value of its kind, not binary data", f->key);
  if (b[0] == CQRS__SEAL_SEALED)
    return cqrs_error_set(err, CQRS_ECODEC, "field '%s' is sealed personal data: open it with the store's key store "
                          "(cqrs_store_set_keys)", f->key);
  placeholder(f, p, obj);
  return CQRS_OK;
}

static cqrs__event_t *block_of(const cqrs_event_t *e) {
  return (cqrs__event_t *)((char *)(uintptr_t)e - offsetof(cqrs__event_t, pub));
}

void cqrs__event_set_forgotten(cqrs_event_t *e, uint32_t mask) { block_of(e)->forgotten = mask; }

bool cqrs_field_forgotten(const cqrs_event_t *e, const char *key) {
  if (!e || !key || !e->type) return false;
  uint32_t mask = block_of(e)->forgotten;
  if (!mask) return false;
  int i = cqrs__personal_index(e->type->fields, key);
  return i >= 0 && (mask >> i) & 1u;
}

static const cqrs_field_t forgotten_fields[] = {CQRS_STRING(cqrs_forgotten_t, subject, "subject", CQRS_F_REQUIRED),
                                                CQRS_FIELDS_END};

const cqrs_event_type_t cqrs_forgotten_event_type = {.name = "cqrs.forgotten", .schema_version = 1, .payload_size = sizeof(cqrs_forgotten_t), .fields = forgotten_fields};

static void on_forgotten(void *state, const cqrs_event_t *e) {
  memcpy(state, e->payload, sizeof(cqrs_forgotten_t));
}

static const cqrs_apply_entry_t subject_apply[] = {{&cqrs_forgotten_event_type, on_forgotten}, {NULL, NULL}};

const cqrs_aggregate_type_t cqrs_subject_type = {
    .name = "cqrs.subject", .state_size = sizeof(cqrs_forgotten_t), .apply = subject_apply};
