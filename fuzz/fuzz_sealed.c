/* Personal data as a store holds it (cqrs/personal.h): the stored payload
 * of an fz.personal event, sealed values and forgotten or redacted markers
 * among plain ones, opened by the store's wrapper with a fixed key store,
 * upcast (schema 1 when it has "mail"), decoded. What decodes has valid
 * strings, and sealing it again and opening it gives the same payload; the
 * same bytes as a read-model document open or fail cleanly. */
#include <string.h>

#include <cqrs/backend.h>

#include "fuzz_types.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct got {
  fz_personal_t payload;
  bool seen;
} got_t;

static bool take(const cqrs_event_t *e, void *data) {
  got_t *g = data;
  if (e->type == &cqrs_unknown_event_type) return true; /* nothing sealed: kept as it was stored */
  if (e->type != &fz_personal) FZ_FAIL("opened into %s", e->type->name);
  memcpy(&g->payload, e->payload, sizeof g->payload);
  g->seen = true;
  return true;
}

/* A fresh store holding `e` (one reference taken): read back opened. */
static cqrs_code_t round_trip(cqrs_event_t *e, got_t *g) {
  cqrs_store_t *store;
  if (cqrs_memory_store_new(&store, NULL) || cqrs_store_set_keys(store, fz_keys(), fz_registry(), NULL))
    FZ_FAIL("store");
  cqrs_event_t *events[1] = {e};
  cqrs_append_t req = {"fz", "s1", 0, "fuzz", events, 1};
  cqrs_append_result_t res;
  cqrs_error_t err;
  cqrs_code_t rc = cqrs_store_append(store, &req, &res, &err);
  if (!rc) rc = cqrs_store_read_stream(store, "fz", "s1", 1, take, g, &err);
  cqrs_store_destroy(store);
  return rc;
}

static void as_document(const bson_t *doc) {
  static const cqrs_doc_type_t people = {"people", fz_personal_fields};
  cqrs_readmodel_t *rm;
  if (cqrs_memory_readmodel_new(&rm, NULL) || cqrs_readmodel_add_type(rm, &people, fz_keys(), NULL)) FZ_FAIL("rm");
  bson_t out = BSON_INITIALIZER;
  cqrs_error_t err;
  if (cqrs_readmodel_open_doc(rm, "people", doc, &out, &err) == CQRS_OK && cqrs_bson_check_utf8(&out, &err))
    FZ_FAIL("an opened document is not sound: %s", err.message);
  bson_destroy(&out);
  cqrs_readmodel_destroy(rm);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  bson_t doc;
  if (!bson_init_static(&doc, data, size)) return 0;
  cqrs_error_t err;
  if (cqrs_bson_check_utf8(&doc, &err)) return 0; /* what a store's own check refuses first */
  bson_iter_t it;
  uint32_t schema = bson_iter_init_find(&it, &doc, "mail") ? 1 : 2;
  cqrs_envelope_t *env;
  if (cqrs_envelope_new("fz", "s1", "fuzz", NULL, &env, NULL)) FZ_FAIL("envelope");
  cqrs_event_t *raw;
  if (cqrs_unknown_event_new("fz.personal", schema, &doc, env, FZ_EVENT_ID, 1, 1, &raw, NULL)) FZ_FAIL("event");
  got_t first = {.seen = false};
  if (round_trip(raw, &first) == CQRS_OK && first.seen) {
    fz_check_personal(&first.payload);
    /* Sealed again (as a new event of s1) and opened: the same payload. */
    cqrs_event_t *again;
    if (cqrs_event_new(&fz_personal, env, FZ_EVENT_ID, 1, 1, &first.payload, &again, &err))
      FZ_FAIL("event: %s", err.message);
    got_t second = {.seen = false};
    if (round_trip(again, &second) || !second.seen) FZ_FAIL("a decoded payload does not seal and open again");
    if (memcmp(&first.payload, &second.payload, sizeof first.payload)) FZ_FAIL("sealing changed the payload");
    cqrs_event_unref(again);
  }
  cqrs_event_unref(raw);
  cqrs_envelope_unref(env);
  as_document(&doc);
  return 0;
}
