#include <stdio.h>

#include "base/cqrs-uthash.h"


typedef struct entry {
  const char *name; /* borrowed from the descriptor */
  const void *type;
  UT_hash_handle hh;
} entry_t;

typedef struct upcaster {
  char key[CQRS_NAME_MAX + 12]; /* "name#from" */
  cqrs_upcast_cb fn;
  UT_hash_handle hh;
} upcaster_t;

typedef struct kept {
  char key[CQRS_NAME_MAX];
  void *obj;
  void (*free_fn)(void *);
  UT_hash_handle hh;
} kept_t;

struct cqrs_registry {
  entry_t *commands, *events, *aggregates;
  upcaster_t *upcasters;
  kept_t *kept; /* what modules built for their types (process/type.c) */
};

cqrs_code_t cqrs__registry_keep(cqrs_registry_t *reg, const char *key, void *obj, void (*free_fn)(void *),
                                cqrs_error_t *err) {
  kept_t *k = cqrs__calloc(1, sizeof *k);
  if (!k) return cqrs_error_set(err, CQRS_ENOMEM, "cannot keep %s", key);
  snprintf(k->key, sizeof k->key, "%s", key);
  k->obj = obj;
  k->free_fn = free_fn;
  CQRS_HASH_TRY(HASH_ADD_STR(reg->kept, key, k));
  if (CQRS_HASH_FAILED()) {
    cqrs__free(k);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot keep %s", key);
  }
  return CQRS_OK;
}

void *cqrs__registry_kept(const cqrs_registry_t *reg, const char *key) {
  kept_t *k;
  HASH_FIND_STR(reg->kept, key, k);
  return k ? k->obj : NULL;
}

static void forget_in(entry_t **head, const void *type) {
  entry_t *e, *tmp;
  HASH_ITER(hh, *head, e, tmp) {
    if (e->type != type) continue;
    HASH_DEL(*head, e);
    cqrs__free(e);
  }
}

void cqrs__registry_forget(cqrs_registry_t *reg, const void *type) {
  forget_in(&reg->commands, type);
  forget_in(&reg->events, type);
  forget_in(&reg->aggregates, type);
}

cqrs_code_t cqrs_registry_new(cqrs_registry_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  if (!(*out = cqrs__calloc(1, sizeof(cqrs_registry_t))))
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate a registry");
  /* The framework's own event (cqrs/personal.h): every store reads it back. */
  cqrs_code_t rc = cqrs_registry_add_event(*out, &cqrs_forgotten_event_type, err);
  if (rc) {
    cqrs_registry_destroy(*out);
    *out = NULL;
  }
  return rc;
}

static void free_entries(entry_t **head) {
  entry_t *e, *tmp;
  HASH_ITER(hh, *head, e, tmp) {
    HASH_DEL(*head, e);
    cqrs__free(e);
  }
}

void cqrs_registry_destroy(cqrs_registry_t *reg) {
  if (!reg) return;
  free_entries(&reg->commands);
  free_entries(&reg->events);
  free_entries(&reg->aggregates);
  upcaster_t *u, *tmp;
  HASH_ITER(hh, reg->upcasters, u, tmp) {
    HASH_DEL(reg->upcasters, u);
    cqrs__free(u);
  }
  kept_t *k, *ktmp;
  HASH_ITER(hh, reg->kept, k, ktmp) {
    HASH_DEL(reg->kept, k);
    if (k->free_fn) k->free_fn(k->obj);
    cqrs__free(k);
  }
  cqrs__free(reg);
}

static cqrs_code_t add(entry_t **head, const char *kind, const char *name, const void *type, cqrs_error_t *err) {
  cqrs_code_t rc = cqrs__check_str(name, CQRS_NAME_MAX, kind, err);
  if (rc) return rc;
  entry_t *e;
  HASH_FIND_STR(*head, name, e);
  if (e) {
    if (e->type == type) return CQRS_OK;
    return cqrs_error_set(err, CQRS_EDUPLICATE, "%s '%s' is already registered", kind, name);
  }
  e = cqrs__calloc(1, sizeof *e);
  if (!e) return cqrs_error_set(err, CQRS_ENOMEM, "cannot register %s", kind);
  e->name = name;
  e->type = type;
  CQRS_HASH_TRY(HASH_ADD_KEYPTR(hh, *head, e->name, strlen(e->name), e));
  if (CQRS_HASH_FAILED()) {
    cqrs__free(e);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot register %s", kind);
  }
  return CQRS_OK;
}

static const void *find(entry_t *head, const char *name) {
  if (!name) return NULL;
  entry_t *e;
  HASH_FIND_STR(head, name, e);
  return e ? e->type : NULL;
}

/* A type's field table, checked once here rather than on every message. */
static cqrs_code_t check_table(const char *kind, const char *name, const cqrs_field_t *fields, cqrs_error_t *err) {
  cqrs_error_t e;
  if (!cqrs_fields_check(fields, &e)) return CQRS_OK;
  return cqrs_error_set(err, CQRS_EINVAL, "%s %.64s: %.160s", kind, name ? name : "(unnamed)", e.message);
}

cqrs_code_t cqrs_registry_add_command(cqrs_registry_t *reg, const cqrs_command_type_t *type, cqrs_error_t *err) {
  if (!reg || !type) return cqrs_error_set(err, CQRS_EINVAL, "NULL registry or command type");
  if (!type->fields || !type->payload_size)
    return cqrs_error_set(err, CQRS_EINVAL, "command type lacks fields or payload size");
  if (!CQRS__RESERVED_ZERO(type)) return cqrs_error_set(err, CQRS_EINVAL, "command type: reserved fields must be zero");
  if (type->name && !strncmp(type->name, CQRS__RESERVED_TYPE_PREFIX, strlen(CQRS__RESERVED_TYPE_PREFIX)))
    return cqrs_error_set(err, CQRS_EINVAL, "command type %.64s: names starting '%s' are the framework's",
                          type->name, CQRS__RESERVED_TYPE_PREFIX);
  cqrs_code_t rc = check_table("command type", type->name, type->fields, err);
  return rc ? rc : add(&reg->commands, "command type", type->name, type, err);
}

cqrs_code_t cqrs_registry_add_event(cqrs_registry_t *reg, const cqrs_event_type_t *type, cqrs_error_t *err) {
  if (!reg || !type) return cqrs_error_set(err, CQRS_EINVAL, "NULL registry or event type");
  if (!type->fields || !type->payload_size || type->schema_version < 1)
    return cqrs_error_set(err, CQRS_EINVAL, "event type lacks fields, payload size or schema version");
  if (!CQRS__RESERVED_ZERO(type)) return cqrs_error_set(err, CQRS_EINVAL, "event type: reserved fields must be zero");
  cqrs_code_t rc = check_table("event type", type->name, type->fields, err);
  return rc ? rc : add(&reg->events, "event type", type->name, type, err);
}

cqrs_code_t cqrs_registry_add_aggregate(cqrs_registry_t *reg, const cqrs_aggregate_type_t *type,
                                        cqrs_error_t *err) {
  if (!reg || !type) return cqrs_error_set(err, CQRS_EINVAL, "NULL registry or aggregate type");
  if (!type->apply) return cqrs_error_set(err, CQRS_EINVAL, "aggregate type lacks an apply table");
  if (!CQRS__RESERVED_ZERO(type))
    return cqrs_error_set(err, CQRS_EINVAL, "aggregate type: reserved fields must be zero");
  if (type->snapshot_every && !type->snapshot_fields)
    return cqrs_error_set(err, CQRS_EINVAL, "aggregate type takes snapshots but has no snapshot fields");
  cqrs_code_t rc;
  if (type->snapshot_fields && (rc = check_table("aggregate type", type->name, type->snapshot_fields, err)))
    return rc;
  for (const cqrs_apply_entry_t *a = type->apply; a->type; a++) {
    if ((rc = cqrs_registry_add_event(reg, a->type, err))) return rc;
  }
  return add(&reg->aggregates, "aggregate type", type->name, type, err);
}

const cqrs_command_type_t *cqrs_registry_command(const cqrs_registry_t *reg, const char *name) {
  return reg ? find(reg->commands, name) : NULL;
}
const cqrs_event_type_t *cqrs_registry_event(const cqrs_registry_t *reg, const char *name) {
  return reg ? find(reg->events, name) : NULL;
}
const cqrs_aggregate_type_t *cqrs_registry_aggregate(const cqrs_registry_t *reg, const char *name) {
  return reg ? find(reg->aggregates, name) : NULL;
}

static void upcaster_key(char *buf, size_t cap, const char *name, uint32_t from) {
  snprintf(buf, cap, "%.63s#%u", name, from);
}

cqrs_code_t cqrs_registry_add_upcaster(cqrs_registry_t *reg, const char *name, uint32_t from, cqrs_upcast_cb fn,
                                       cqrs_error_t *err) {
  if (!reg || !fn) return cqrs_error_set(err, CQRS_EINVAL, "NULL registry or upcaster");
  cqrs_code_t rc = cqrs__check_str(name, CQRS_NAME_MAX, "event type name", err);
  if (rc) return rc;
  if (from < 1) return cqrs_error_set(err, CQRS_EINVAL, "upcasters start from schema version 1");
  upcaster_t *u;
  char key[CQRS_NAME_MAX + 12];
  upcaster_key(key, sizeof key, name, from);
  HASH_FIND_STR(reg->upcasters, key, u);
  if (u) return cqrs_error_set(err, CQRS_EDUPLICATE, "upcaster %s is already registered", key);
  u = cqrs__calloc(1, sizeof *u);
  if (!u) return cqrs_error_set(err, CQRS_ENOMEM, "cannot register an upcaster");
  memcpy(u->key, key, sizeof key);
  u->fn = fn;
  CQRS_HASH_TRY(HASH_ADD_STR(reg->upcasters, key, u));
  if (CQRS_HASH_FAILED()) {
    cqrs__free(u);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot register an upcaster");
  }
  return CQRS_OK;
}

cqrs_code_t cqrs_registry_decode_payload(const cqrs_registry_t *reg, const char *name, uint32_t schema_version,
                                         const bson_t *data, const cqrs_event_type_t **type_out, void **payload,
                                         cqrs_error_t *err) {
  if (!reg || !name || !data || !type_out || !payload)
    return cqrs_error_set(err, CQRS_EINVAL, "NULL argument to decode a payload");
  *payload = NULL;
  const cqrs_event_type_t *type = cqrs_registry_event(reg, name);
  if (!type) return cqrs_error_set(err, CQRS_EUNKNOWN_TYPE, "unknown event type '%.64s'", name);
  if (schema_version < 1 || schema_version > type->schema_version)
    return cqrs_error_set(err, CQRS_ECODEC, "%s: schema version %u is not between 1 and %u", type->name,
                          schema_version, type->schema_version);
  cqrs_error_t e;
  /* Upcasters get sound documents: libbson aborts on some corrupt ones. */
  if (schema_version < type->schema_version && cqrs_bson_check_utf8(data, &e))
    return cqrs_error_set(err, CQRS_ECODEC, "%s: corrupt payload: %.180s", type->name, e.message);
  /* bson_t must not be copied by value: walk the versions with pointers. */
  bson_t *cur = bson_copy(data);
  cqrs_code_t rc = CQRS_OK;
  for (uint32_t v = schema_version; v < type->schema_version; v++) {
    char key[CQRS_NAME_MAX + 12];
    upcaster_key(key, sizeof key, name, v);
    upcaster_t *u;
    HASH_FIND_STR(reg->upcasters, key, u);
    if (!u) {
      rc = cqrs_error_set(err, CQRS_ECODEC, "%s: no upcaster from schema version %u", type->name, v);
      break;
    }
    bson_t *next = bson_new();
    rc = u->fn(cur, next, err);
    bson_destroy(cur);
    cur = next;
    if (rc) break;
  }
  if (!rc) {
    void *p = cqrs__calloc(1, type->payload_size);
    if (!p) {
      rc = cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate a payload");
    } else if ((rc = cqrs_fields_decode(type->fields, cur, p, err))) {
      cqrs__free(p);
    } else {
      *payload = p;
      *type_out = type;
    }
  }
  bson_destroy(cur);
  return rc;
}

void cqrs_payload_free(void *payload) { cqrs__free(payload); }
