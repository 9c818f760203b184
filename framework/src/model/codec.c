/* The one event codec. An event's body is its own part of a stored event:
 * its id, type name, schema version, version, timestamp and payload (a
 * placeholder's original type, schema version and raw data). A store writes
 * the body of each event and the envelope once per commit (the MongoDB
 * store); cqrs_event_to_bson writes a body and then the envelope and
 * position of one event (dead letters, exports, billing-admin). Both read
 * back through cqrs_event_body_from_bson, so a field added here is stored
 * and read everywhere. */
#include "base/cqrs-private.h"
#include "model/personal-private.h"

/* The body's keys, the id's first (its name is the caller's). */
enum { K_ID, K_TYPE, K_SCHEMA, K_VERSION, K_TIME, K_DATA, K_COUNT };
static const char *const body_keys[K_COUNT] = {NULL, "type", "schemaVersion", "version", "timestamp", "data"};
static const char *const body_wants[K_COUNT] = {"", "a string 'type'", "an integer 'schemaVersion'",
                                                 "an integer 'version'", "an integer 'timestamp'",
                                                 "a document 'data'"};

/* The key of the id: "id" for NULL; one of the other keys is refused. */
static cqrs_code_t id_key_of(const char **id_key, cqrs_error_t *err) {
  if (!*id_key) *id_key = "id";
  for (int k = K_TYPE; k < K_COUNT; k++) {
    if (**id_key == *body_keys[k] && !strcmp(*id_key, body_keys[k]))
      return cqrs_error_set(err, CQRS_EINVAL, "the event id's key cannot be '%s', a key of the body", body_keys[k]);
  }
  return CQRS_OK;
}

static cqrs_code_t too_large(cqrs_error_t *err) {
  return cqrs_error_set(err, CQRS_ETOO_LARGE, "event document too large");
}

/* `redacted`: personal fields written as placeholders (an export), never in
 * clear. */
static cqrs_code_t body_to_bson(const cqrs_event_t *e, const char *id_key, bool redacted, bson_t *out,
                                cqrs_error_t *err) {
  if (!e || !e->type || !out) return cqrs_error_set(err, CQRS_EINVAL, "NULL event or output");
  cqrs_code_t rc = id_key_of(&id_key, err);
  if (rc) return rc;
  const cqrs_unknown_event_t *u = e->type == &cqrs_unknown_event_type ? e->payload : NULL;
  bool ok = bson_append_utf8(out, id_key, -1, e->id, -1) &&
            BSON_APPEND_UTF8(out, "type", u ? u->type : e->type->name) &&
            BSON_APPEND_INT32(out, "schemaVersion", (int32_t)(u ? u->schema_version : e->schema_version)) &&
            BSON_APPEND_INT64(out, "version", e->version) && BSON_APPEND_DATE_TIME(out, "timestamp", e->timestamp);
  if (!ok) return too_large(err);
  if (u) {
    bson_t raw;
    return bson_init_static(&raw, u->data, u->data_len) && BSON_APPEND_DOCUMENT(out, "data", &raw) ? CQRS_OK
                                                                                                    : too_large(err);
  }
  bson_t data;
  if (!BSON_APPEND_DOCUMENT_BEGIN(out, "data", &data)) return too_large(err);
  rc = redacted ? cqrs__personal_encode_redacted(e->type->fields, e->payload, &data, err)
                : cqrs_fields_encode(e->type->fields, e->payload, &data, err);
  if (!bson_append_document_end(out, &data) && !rc) rc = too_large(err);
  return rc;
}

cqrs_code_t cqrs_event_body_to_bson(const cqrs_event_t *e, const char *id_key, bson_t *out, cqrs_error_t *err) {
  return body_to_bson(e, id_key, false, out, err);
}

/* Doubles are what a JavaScript shell stores. */
bool cqrs_bson_iter_int64(const bson_iter_t *it, int64_t *v) {
  if (!it || !v) return false;
  switch (bson_iter_type(it)) {
  case BSON_TYPE_INT64:
  case BSON_TYPE_INT32:
    *v = bson_iter_as_int64(it);
    return true;
  case BSON_TYPE_DOUBLE: {
    double d = bson_iter_double(it);
    if (!(d > -9.2e18 && d < 9.2e18)) return false; /* the cast would be undefined */
    *v = (int64_t)d;
    return true;
  }
  case BSON_TYPE_DATE_TIME:
    *v = bson_iter_date_time(it);
    return true;
  default:
    return false;
  }
}

typedef struct body {
  const char *id, *type;
  int64_t schema, version, timestamp;
  const uint8_t *data;
  uint32_t data_len;
} body_t;

/* One key of the body into `b`; false when it has the wrong type. */
static bool body_take(int k, const bson_iter_t *it, body_t *b) {
  switch (k) {
  case K_ID: /* not a string: the event gets a new id, as it always did */
    b->id = BSON_ITER_HOLDS_UTF8(it) ? bson_iter_utf8(it, NULL) : NULL;
    return true;
  case K_TYPE:
    return BSON_ITER_HOLDS_UTF8(it) && (b->type = bson_iter_utf8(it, NULL));
  case K_SCHEMA:
    return cqrs_bson_iter_int64(it, &b->schema);
  case K_VERSION:
    return cqrs_bson_iter_int64(it, &b->version);
  case K_TIME:
    return cqrs_bson_iter_int64(it, &b->timestamp);
  default:
    if (!BSON_ITER_HOLDS_DOCUMENT(it)) return false;
    bson_iter_document(it, &b->data_len, &b->data);
    return true;
  }
}

/* Reads the body's keys in one pass, each where it first occurs (as
 * bson_iter_find would find it). NULL, or what is missing or mistyped. */
static const char *body_read(const bson_t *doc, const char *id_key, body_t *b) {
  unsigned seen = 0, good = 1u << K_ID, all = (1u << K_COUNT) - 1;
  bson_iter_t it;
  if (!bson_iter_init(&it, doc)) return "a sound document";
  while (seen != all && bson_iter_next(&it)) {
    const char *key = bson_iter_key(&it);
    for (int k = 0; k < K_COUNT; k++) {
      const char *want = k == K_ID ? id_key : body_keys[k];
      if (seen >> k & 1 || *key != *want || strcmp(key, want)) continue;
      seen |= 1u << k;
      if (body_take(k, &it, b)) good |= 1u << k;
      break;
    }
  }
  for (int k = K_TYPE; k < K_COUNT; k++) {
    if (!(good >> k & 1)) return body_wants[k];
  }
  return NULL;
}

/* `as_stored`: a store's commit, whose sealed personal data is yielded as
 * stored, for the store wrapper that holds the keys to open
 * (cqrs/personal.h); an export's redacted values are decoded. */
static cqrs_code_t body_from_bson(const cqrs_registry_t *reg, const bson_t *doc, const char *id_key,
                                  const cqrs_envelope_t *env, int64_t position, bool unknown_as_placeholder,
                                  bool as_stored, cqrs_event_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  if (!reg || !doc || !env) return cqrs_error_set(err, CQRS_EINVAL, "NULL registry, document or envelope");
  cqrs_code_t rc = id_key_of(&id_key, err);
  if (rc) return rc;
  body_t b = {0};
  const char *missing = body_read(doc, id_key, &b);
  if (missing)
    return cqrs_error_set(err, CQRS_ECODEC, "malformed event at position %lld: it lacks %s", (long long)position,
                          missing);
  if (b.schema < 1 || b.schema > UINT32_MAX)
    return cqrs_error_set(err, CQRS_ECODEC, "malformed event at position %lld: schema version %lld",
                          (long long)position, (long long)b.schema);
  bson_t data;
  if (!bson_init_static(&data, b.data, b.data_len))
    return cqrs_error_set(err, CQRS_ECODEC, "malformed event data at position %lld", (long long)position);
  if ((unknown_as_placeholder && !cqrs_registry_event(reg, b.type)) || (as_stored && cqrs__personal_sealed(&data))) {
    rc = cqrs_unknown_event_new(b.type, (uint32_t)b.schema, &data, env, b.id, b.version, b.timestamp, out, err);
  } else {
    const cqrs_event_type_t *type;
    void *payload;
    if ((rc = cqrs_registry_decode_payload(reg, b.type, (uint32_t)b.schema, &data, &type, &payload, err))) return rc;
    rc = cqrs_event_new(type, env, b.id, b.version, b.timestamp, payload, out, err);
    cqrs_payload_free(payload);
  }
  if (!rc) (*out)->position = position;
  return rc;
}

cqrs_code_t cqrs_event_body_from_bson(const cqrs_registry_t *reg, const bson_t *doc, const char *id_key,
                                      const cqrs_envelope_t *env, int64_t position, bool unknown_as_placeholder,
                                      cqrs_event_t **out, cqrs_error_t *err) {
  return body_from_bson(reg, doc, id_key, env, position, unknown_as_placeholder, true, out, err);
}

/* ---- a whole event: its body, then its envelope and position ---- */

cqrs_code_t cqrs_event_to_bson(const cqrs_event_t *e, bson_t *out, cqrs_error_t *err) {
  if (!e || !out || !e->envelope) return cqrs_error_set(err, CQRS_EINVAL, "NULL event, envelope or output");
  /* An export never carries personal data: those fields are redacted. */
  cqrs_code_t rc = body_to_bson(e, "id", true, out, err);
  if (rc) return rc;
  const cqrs_envelope_t *env = e->envelope;
  bool ok = BSON_APPEND_UTF8(out, "aggregateType", env->aggregate_type) &&
            BSON_APPEND_UTF8(out, "aggregateId", env->aggregate_id) &&
            BSON_APPEND_INT64(out, "position", e->position) &&
            BSON_APPEND_UTF8(out, "causationId", env->causation_id) &&
            BSON_APPEND_UTF8(out, "correlationId", env->correlation_id);
  return ok ? CQRS_OK : too_large(err);
}

static const char *get_str(const bson_t *doc, const char *key) {
  bson_iter_t it;
  if (bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_UTF8(&it)) return bson_iter_utf8(&it, NULL);
  return NULL;
}

cqrs_code_t cqrs_event_from_bson(const cqrs_registry_t *reg, const bson_t *doc, cqrs_event_t **out,
                                 cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  if (!reg || !doc) return cqrs_error_set(err, CQRS_EINVAL, "NULL registry or document");
  cqrs_error_t e;
  if (cqrs_bson_check_utf8(doc, &e))
    return cqrs_error_set(err, CQRS_ECODEC, "corrupt event document: %.200s", e.message);
  const char *atype = get_str(doc, "aggregateType"), *aid = get_str(doc, "aggregateId");
  if (!atype || !aid)
    return cqrs_error_set(err, CQRS_ECODEC, "event document lacks a string 'aggregateType' or 'aggregateId'");
  int64_t position = 0; /* none, or not an integer: not committed */
  bson_iter_t it;
  if (bson_iter_init_find(&it, doc, "position")) (void)cqrs_bson_iter_int64(&it, &position);
  cqrs_envelope_t *env;
  cqrs_code_t rc =
      cqrs_envelope_new(atype, aid, get_str(doc, "causationId"), get_str(doc, "correlationId"), &env, err);
  if (rc) return rc;
  rc = body_from_bson(reg, doc, "id", env, position, false, false, out, err);
  cqrs_envelope_unref(env);
  return rc;
}
