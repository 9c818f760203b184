/* Personal data around the event store interface: an append seals the
 * personal fields of its events, which the store then holds as they were
 * sealed (an unknown event's type name, schema version and data: every
 * backend stores those back as they came); a read opens what a store yields
 * sealed, before the caller sees it. Snapshots are sealed and opened here
 * for the repository. */
#include <stdio.h>

#include "store/keys-private.h"

cqrs_code_t cqrs_store_set_keys(cqrs_store_t *s, cqrs_keys_t *keys, const cqrs_registry_t *reg, cqrs_error_t *err) {
  if (!s || !keys || !reg) return cqrs_error_set(err, CQRS_EINVAL, "NULL store, key store or registry");
  s->keys = keys;
  s->reg = reg;
  return CQRS_OK;
}

cqrs_keys_t *cqrs_store_keys(const cqrs_store_t *s) { return s ? s->keys : NULL; }

cqrs_code_t cqrs_store_read_sealed(cqrs_store_t *s, int64_t from_position, size_t limit, cqrs_event_visit_cb cb,
                                   void *data, cqrs_error_t *err) {
  if (!s || !cb) return cqrs_error_set(err, CQRS_EINVAL, "NULL store or callback");
  if (limit == 0) return CQRS_OK;
  return s->ops->read_all(s->impl, from_position < 1 ? 1 : from_position, limit, cb, data, err);
}

/* The event as the store is to keep it: sealed, with one reference. */
static cqrs_code_t seal_event(cqrs_store_t *s, const cqrs__keyring_t *ring, const cqrs_append_t *req,
                              const cqrs_event_t *e, cqrs_event_t **out, cqrs_error_t *err) {
  if (!cqrs__personal_table(e->type->fields)) {
    *out = (cqrs_event_t *)(uintptr_t)cqrs_event_ref(e);
    return CQRS_OK;
  }
  if (!s->keys)
    return cqrs_error_set(err, CQRS_ESTATE, "event %s holds personal fields and store %s has no key store "
                          "(cqrs_store_set_keys): personal data is never written in clear", e->type->name,
                          s->ops->name ? s->ops->name : "");
  bson_t data = BSON_INITIALIZER;
  cqrs_code_t rc = cqrs__personal_encode(e->type->fields, e->payload, req->aggregate_id, e->id, ring, &data, err);
  if (!rc)
    rc = cqrs_unknown_event_new(e->type->name, e->schema_version, &data, e->envelope, e->id, e->version,
                                e->timestamp, out, err);
  bson_destroy(&data);
  return rc;
}

cqrs_code_t cqrs__sealed_append(cqrs_store_t *s, const cqrs_append_t *req, cqrs_append_result_t *res,
                                cqrs_error_t *err) {
  cqrs_event_t *few[4], **sealed = req->count > 4 ? cqrs__calloc(req->count, sizeof *sealed) : few;
  if (!sealed) return cqrs_error_set(err, CQRS_ENOMEM, "cannot seal a commit");
  cqrs__keyring_t ring;
  if (s->keys) cqrs__keys_ring(s->keys, &ring);
  cqrs_code_t rc = CQRS_OK;
  size_t n = 0;
  for (; n < req->count && !rc; n++) {
    rc = seal_event(s, s->keys ? &ring : NULL, req, req->events[n], &sealed[n], err);
    if (rc) break;
  }
  if (!rc) {
    cqrs_append_t sealed_req = *req;
    sealed_req.events = sealed;
    rc = s->ops->append(s->impl, &sealed_req, res, err);
    for (size_t i = 0; !rc && !res->duplicate && i < req->count; i++) req->events[i]->position = sealed[i]->position;
  }
  for (size_t i = 0; i < n; i++) cqrs_event_unref(sealed[i]);
  if (sealed != few) cqrs__free(sealed);
  return rc;
}

/* An event the store yielded sealed, opened (one reference). */
static cqrs_code_t open_event(cqrs_store_t *s, const cqrs_event_t *e, const bson_t *data, cqrs_event_t **out,
                              cqrs_error_t *err) {
  const cqrs_unknown_event_t *u = e->payload;
  cqrs__keyring_t ring;
  cqrs__keys_ring(s->keys, &ring);
  bson_t plain = BSON_INITIALIZER;
  const cqrs_event_type_t *type = NULL;
  void *payload = NULL;
  cqrs_code_t rc = cqrs__personal_open(data, e->id, &ring, true, &plain, err);
  if (!rc) rc = cqrs_registry_decode_payload(s->reg, u->type, u->schema_version, &plain, &type, &payload, err);
  if (!rc) rc = cqrs_event_new(type, e->envelope, e->id, e->version, e->timestamp, payload, out, err);
  if (!rc) {
    (*out)->position = e->position;
    /* Exact while the stored keys are the type's own (an upcaster that
     * renames a personal field loses only its bit: docs/privacy.md). */
    cqrs__event_set_forgotten(*out, cqrs__personal_mask(type->fields, &plain));
  }
  if (payload) {
    cqrs__crypto_wipe(payload, type->payload_size);
    cqrs_payload_free(payload);
  }
  cqrs__crypto_wipe((uint8_t *)(uintptr_t)bson_get_data(&plain), plain.len);
  bson_destroy(&plain);
  return rc;
}

bool cqrs__sealed_visit(const cqrs_event_t *e, void *data) {
  cqrs__opener_t *o = data;
  if (e->type != &cqrs_unknown_event_type) return o->cb(e, o->data);
  const cqrs_unknown_event_t *u = e->payload;
  bson_t doc;
  if (!bson_init_static(&doc, u->data, u->data_len) || !cqrs__personal_sealed(&doc)) return o->cb(e, o->data);
  if (!o->store->keys) {
    o->rc = cqrs_error_set(o->err, CQRS_ESTATE, "event %s (%s) holds sealed personal data and store %s has no key "
                           "store (cqrs_store_set_keys)", e->id, u->type, o->store->ops->name ? o->store->ops->name : "");
    return false;
  }
  /* A type this process does not know stays a placeholder, sealed. */
  if (!cqrs_registry_event(o->store->reg, u->type)) return o->cb(e, o->data);
  cqrs_event_t *opened;
  if ((o->rc = open_event(o->store, e, &doc, &opened, o->err))) return false;
  bool more = o->cb(opened, o->data);
  cqrs_event_unref(opened);
  return more;
}

/* ---- snapshots ---- */

static bool snapshot_ctx(char *buf, size_t cap, const cqrs_aggregate_type_t *type, const char *id) {
  return (size_t)snprintf(buf, cap, "snapshot:%s/%s", type->name, id) < cap;
}

cqrs_code_t cqrs__sealed_snapshot_encode(cqrs_store_t *s, const cqrs_aggregate_type_t *type, const char *id,
                                         const void *state, bson_t *out, cqrs_error_t *err) {
  const cqrs_field_t *fields = type->snapshot_fields;
  if (!cqrs__personal_table(fields)) return cqrs_fields_encode(fields, state, out, err);
  if (!s->keys) return cqrs_error_set(err, CQRS_ESTATE, "snapshot of %s holds personal fields and the store has no "
                                      "key store", type->name);
  char ctx[CQRS_NAME_MAX + CQRS_ID_MAX + 16];
  if (!snapshot_ctx(ctx, sizeof ctx, type, id)) return cqrs_error_set(err, CQRS_ETOO_LARGE, "snapshot name too long");
  cqrs__keyring_t ring;
  cqrs__keys_ring(s->keys, &ring);
  return cqrs__personal_encode(fields, state, id, ctx, &ring, out, err);
}

cqrs_code_t cqrs__sealed_snapshot_decode(cqrs_store_t *s, const cqrs_aggregate_type_t *type, const char *id,
                                         const bson_t *in, void *state, cqrs_error_t *err) {
  const cqrs_field_t *fields = type->snapshot_fields;
  if (!cqrs__personal_sealed(in)) return cqrs_fields_decode(fields, in, state, err);
  char ctx[CQRS_NAME_MAX + CQRS_ID_MAX + 16];
  if (!snapshot_ctx(ctx, sizeof ctx, type, id)) return cqrs_error_set(err, CQRS_ETOO_LARGE, "snapshot name too long");
  cqrs__keyring_t ring;
  if (s->keys) cqrs__keys_ring(s->keys, &ring);
  bson_t plain = BSON_INITIALIZER;
  cqrs_code_t rc = cqrs__personal_open(in, ctx, s->keys ? &ring : NULL, true, &plain, err);
  if (!rc) rc = cqrs_fields_decode(fields, &plain, state, err);
  cqrs__crypto_wipe((uint8_t *)(uintptr_t)bson_get_data(&plain), plain.len);
  bson_destroy(&plain);
  return rc;
}
