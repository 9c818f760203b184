/* The event document (cqrs_event_from_bson), upcasting included: fz.done
 * has schema versions 1 to 3. An event that decodes has valid strings, a
 * version of at least 1, and survives cqrs_event_to_bson unchanged (but
 * for the personal fields of fz.personal, which an export redacts). */
#include <string.h>

#include "fuzz_types.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_event(const cqrs_event_t *e) {
  fz_check_string("event id", e->id, sizeof e->id);
  fz_check_string("aggregate type", cqrs_event_aggregate_type(e), CQRS_NAME_MAX);
  fz_check_string("aggregate id", cqrs_event_aggregate_id(e), CQRS_ID_MAX);
  fz_check_string("causation id", cqrs_event_causation_id(e), CQRS_ID_MAX);
  fz_check_string("correlation id", cqrs_event_correlation_id(e), CQRS_ID_MAX);
  if (e->version < 1 || e->version == INT64_MAX) FZ_FAIL("event version %lld", (long long)e->version);
  if (e->schema_version != e->type->schema_version) FZ_FAIL("not upcast to the current schema");
  if (e->type == &fz_done) fz_check_payload(e->payload);
  if (e->type == &fz_personal) fz_check_personal(e->payload);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  bson_t doc;
  if (!bson_init_static(&doc, data, size)) return 0;
  const cqrs_registry_t *reg = fz_registry();
  cqrs_event_t *e = NULL, *again = NULL;
  cqrs_error_t err;
  if (cqrs_event_from_bson(reg, &doc, &e, &err) != CQRS_OK) {
    if (e) FZ_FAIL("a failed decode left an event");
    return 0;
  }
  check_event(e);
  bson_t out = BSON_INITIALIZER;
  if (cqrs_event_to_bson(e, &out, &err)) FZ_FAIL("encode: %s", err.message);
  if (cqrs_event_from_bson(reg, &out, &again, &err)) FZ_FAIL("decode of the encoding: %s", err.message);
  if (strcmp(e->id, again->id) || e->type != again->type || e->version != again->version ||
      e->position != again->position || e->timestamp != again->timestamp ||
      strcmp(cqrs_event_aggregate_id(e), cqrs_event_aggregate_id(again)) ||
      strcmp(cqrs_event_correlation_id(e), cqrs_event_correlation_id(again)) ||
      /* an export redacts personal fields: those read back as placeholders */
      (e->type != &fz_personal && memcmp(e->payload, again->payload, e->type->payload_size)))
    FZ_FAIL("round trip changed the event");
  bson_destroy(&out);
  cqrs_event_unref(again);
  cqrs_event_unref(e);
  return 0;
}
