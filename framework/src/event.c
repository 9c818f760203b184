#include "cqrs-private.h"

static cqrs__event_t *block_of(const cqrs_event_t *e) {
  return (cqrs__event_t *)((char *)(uintptr_t)e - offsetof(cqrs__event_t, pub));
}

static cqrs__envelope_t *env_block_of(const cqrs_envelope_t *env) {
  return (cqrs__envelope_t *)((char *)(uintptr_t)env - offsetof(cqrs__envelope_t, pub));
}

cqrs_event_t *cqrs__event_mut(const cqrs_event_t *e) { return &block_of(e)->pub; }

const cqrs_event_t *cqrs_event_ref(const cqrs_event_t *e) {
  if (e) atomic_fetch_add_explicit(&block_of(e)->refs, 1, memory_order_relaxed);
  return e;
}

void cqrs_event_unref(const cqrs_event_t *e) {
  if (!e) return;
  cqrs__event_t *b = block_of(e);
  if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) != 1) return;
  cqrs_envelope_unref(b->pub.envelope);
  cqrs__free(b);
}

cqrs_code_t cqrs_envelope_new(const char *aggregate_type, const char *aggregate_id, const char *causation_id,
                              const char *correlation_id, cqrs_envelope_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  cqrs_code_t rc;
  if ((rc = cqrs__check_str(aggregate_type, CQRS_NAME_MAX, "aggregate type", err)) ||
      (rc = cqrs__check_str(aggregate_id, CQRS_ID_MAX, "aggregate id", err)))
    return rc;
  if (!causation_id) causation_id = "";
  if (!correlation_id || !*correlation_id) correlation_id = causation_id;
  if (strnlen(causation_id, CQRS_ID_MAX) >= CQRS_ID_MAX || strnlen(correlation_id, CQRS_ID_MAX) >= CQRS_ID_MAX)
    return cqrs_error_set(err, CQRS_ETOO_LARGE, "causation or correlation id too long");
  size_t lt = strlen(aggregate_type) + 1, li = strlen(aggregate_id) + 1, lc = strlen(causation_id) + 1,
         lr = strlen(correlation_id) + 1;
  if (!cqrs__utf8_valid(causation_id, lc - 1) || !cqrs__utf8_valid(correlation_id, lr - 1))
    return cqrs_error_set(err, CQRS_EINVAL, "causation or correlation id is not valid UTF-8");
  cqrs__envelope_t *b = cqrs__malloc(sizeof *b + lt + li + lc + lr);
  if (!b) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate an envelope");
  atomic_init(&b->refs, 1);
  char *p = b->strings;
  b->pub.aggregate_type = memcpy(p, aggregate_type, lt);
  p += lt;
  b->pub.aggregate_id = memcpy(p, aggregate_id, li);
  p += li;
  b->pub.causation_id = memcpy(p, causation_id, lc);
  p += lc;
  b->pub.correlation_id = memcpy(p, correlation_id, lr);
  *out = &b->pub;
  return CQRS_OK;
}

void cqrs_envelope_unref(const cqrs_envelope_t *env) {
  if (!env) return;
  cqrs__envelope_t *b = env_block_of(env);
  if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1) cqrs__free(b);
}

const cqrs_envelope_t *cqrs__envelope_ref(const cqrs_envelope_t *env) {
  if (env) atomic_fetch_add_explicit(&env_block_of(env)->refs, 1, memory_order_relaxed);
  return env;
}

cqrs_code_t cqrs_event_new(const cqrs_event_type_t *type, const cqrs_envelope_t *env, const char *id,
                           int64_t version, int64_t timestamp, const void *payload, cqrs_event_t **out,
                           cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  if (!type || !payload || !type->name) return cqrs_error_set(err, CQRS_EINVAL, "NULL event type or payload");
  /* INT64_MAX would leave no version for the next event: only corrupt data
   * gets there, and refusing it keeps every "version + 1" defined. */
  if (version < 1 || version == INT64_MAX)
    return cqrs_error_set(err, CQRS_EINVAL, "event version %lld is not between 1 and INT64_MAX - 1", (long long)version);
  if (id && strnlen(id, CQRS_EVENT_ID_LEN) >= CQRS_EVENT_ID_LEN)
    return cqrs_error_set(err, CQRS_ETOO_LARGE, "event id longer than %d bytes", CQRS_EVENT_ID_LEN - 1);
  if (id && !cqrs__utf8_valid(id, strlen(id)))
    return cqrs_error_set(err, CQRS_EINVAL, "event id is not valid UTF-8");
  cqrs__event_t *b = cqrs__malloc(sizeof *b + type->payload_size);
  if (!b) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate an event");
  atomic_init(&b->refs, 1);
  memcpy(b->payload, payload, type->payload_size);
  cqrs_event_t *e = &b->pub;
  e->type = type;
  e->envelope = cqrs__envelope_ref(env);
  e->version = version;
  e->position = 0;
  e->timestamp = timestamp;
  e->schema_version = type->schema_version;
  if (id && *id) {
    memcpy(e->id, id, strlen(id) + 1);
  } else {
    cqrs_new_id(e->id);
  }
  e->payload = b->payload;
  *out = e;
  return CQRS_OK;
}

cqrs_code_t cqrs_event_to_bson(const cqrs_event_t *e, bson_t *out, cqrs_error_t *err) {
  if (!e || !out || !e->envelope) return cqrs_error_set(err, CQRS_EINVAL, "NULL event, envelope or output");
  const cqrs_envelope_t *env = e->envelope;
  bool ok = BSON_APPEND_UTF8(out, "id", e->id) && BSON_APPEND_UTF8(out, "type", e->type->name) &&
            BSON_APPEND_INT32(out, "schemaVersion", (int32_t)e->schema_version) &&
            BSON_APPEND_UTF8(out, "aggregateType", env->aggregate_type) &&
            BSON_APPEND_UTF8(out, "aggregateId", env->aggregate_id) && BSON_APPEND_INT64(out, "version", e->version) &&
            BSON_APPEND_DATE_TIME(out, "timestamp", e->timestamp) && BSON_APPEND_INT64(out, "position", e->position) &&
            BSON_APPEND_UTF8(out, "causationId", env->causation_id) &&
            BSON_APPEND_UTF8(out, "correlationId", env->correlation_id);
  if (!ok) return cqrs_error_set(err, CQRS_ETOO_LARGE, "event document too large");
  bson_t data;
  if (!BSON_APPEND_DOCUMENT_BEGIN(out, "data", &data)) return cqrs_error_set(err, CQRS_ETOO_LARGE, "event too large");
  cqrs_code_t rc = cqrs_fields_encode(e->type->fields, e->payload, &data, err);
  if (!bson_append_document_end(out, &data) && !rc) rc = cqrs_error_set(err, CQRS_ETOO_LARGE, "event too large");
  return rc;
}
