/* libcqrs: event types and events. */
#ifndef CQRS_EVENT_H
#define CQRS_EVENT_H

#include <bson/bson.h>

#include "cqrs/fields.h"

#ifdef __cplusplus
extern "C" {
#endif

/* An event type, declared once as a static const and registered with a
 * registry. Payloads are plain structs described by `fields`. */
typedef struct cqrs_event_type {
  const char *name;        /* stable, e.g. "account.deposited" */
  uint32_t schema_version; /* current version of the payload shape, >= 1 */
  size_t payload_size;
  const cqrs_field_t *fields;
  /* Room for what later versions add without changing the size (docs/versioning.md): zero. */
  void *reserved[4];
} cqrs_event_type_t;

/* What the events of one commit share. Immutable, reference counted. */
typedef struct cqrs_envelope {
  const char *aggregate_type;
  const char *aggregate_id;
  const char *causation_id;   /* the command that caused the events */
  const char *correlation_id; /* the conversation the command belongs to */
} cqrs_envelope_t;

/* An event. Immutable once committed; every field is read-only to users.
 * Events handed to a callback are borrowed for the duration of the call:
 * take a reference with cqrs_event_ref to keep one. */
typedef struct cqrs_event {
  const cqrs_event_type_t *type;
  const cqrs_envelope_t *envelope;
  int64_t version;         /* 1-based, within the aggregate */
  int64_t position;        /* global, assigned at commit; 0 before */
  int64_t timestamp;       /* UTC ms */
  uint32_t schema_version; /* always the type's current version once decoded */
  char id[CQRS_EVENT_ID_LEN];
  const void *payload; /* a `type->payload_size` struct */
} cqrs_event_t;

/* Convenience accessors. */
#define cqrs_event_aggregate_id(e) ((e)->envelope->aggregate_id)
#define cqrs_event_aggregate_type(e) ((e)->envelope->aggregate_type)
#define cqrs_event_causation_id(e) ((e)->envelope->causation_id)
#define cqrs_event_correlation_id(e) ((e)->envelope->correlation_id)

/* Takes a reference; thread-safe. Returns `e`. */
CQRS_EXPORT const cqrs_event_t *cqrs_event_ref(const cqrs_event_t *e);

/* Drops a reference; the last one frees the event. NULL does nothing. */
CQRS_EXPORT void cqrs_event_unref(const cqrs_event_t *e);

/* Encodes a whole event, for a dead-letter sink or an export: its body as
 * stores write it (cqrs/backend.h, cqrs_event_body_to_bson: "id", "type",
 * "schemaVersion", "version", "timestamp", the payload under "data"), then
 * "aggregateType", "aggregateId", "position", "causationId" and
 * "correlationId". cqrs_event_from_bson reads it back. Personal fields
 * (CQRS_F_PERSONAL) are written redacted, never in clear: they read back as
 * placeholders (cqrs/personal.h). */
CQRS_EXPORT cqrs_code_t cqrs_event_to_bson(const cqrs_event_t *e, bson_t *out, cqrs_error_t *err);

typedef struct cqrs_registry cqrs_registry_t;
/* Decodes a whole event document as written by cqrs_event_to_bson (upcasting
 * its payload; the keys in any order; integers as cqrs_event_body_from_bson
 * reads them). The event has one reference. A document that is not sound
 * BSON with valid UTF-8, or lacks a key: CQRS_ECODEC; a type `reg` does not
 * know: CQRS_EUNKNOWN_TYPE. */
CQRS_EXPORT cqrs_code_t cqrs_event_from_bson(const cqrs_registry_t *reg, const bson_t *doc, cqrs_event_t **out,
                                             cqrs_error_t *err);

/* The placeholder for a stored event this process cannot decode, because no
 * type of that name is registered here (a newer version of the application
 * or another service wrote it). A store's read of the whole log yields it in
 * place of the event, so the feed goes on; its payload is a
 * cqrs_unknown_event_t. The event bus hands it to no handler: subscribers
 * with a type list pass it by (unless they list this type), those that take
 * every type dead-letter it with the error "unknown_type". */
CQRS_EXPORT extern const cqrs_event_type_t cqrs_unknown_event_type;

typedef struct cqrs_unknown_event {
  char type[CQRS_NAME_MAX]; /* the type name as stored */
  uint32_t schema_version;  /* as stored */
  const uint8_t *data;      /* the stored payload document, owned by the event */
  uint32_t data_len;
} cqrs_unknown_event_t;

/* Visitor used by stores and reads: return false to stop early. The event is
 * borrowed for the duration of the call. */
typedef bool (*cqrs_event_visit_cb)(const cqrs_event_t *e, void *data);

#ifdef __cplusplus
}
#endif
#endif
