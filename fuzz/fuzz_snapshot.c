/* Snapshot decoding in the repository: a store serves a snapshot made of the
 * input (an 8-byte little-endian version, a byte of schema version, then the
 * state as BSON) in front of a stream of a few events; loading must succeed
 * or fail cleanly, never overflow a version. */
#include <string.h>

#include <cqrs/backend.h>

#include "fuzz_types.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define STREAM_EVENTS 6

static cqrs_store_t *events; /* the memory store with the stream "a" */

static struct {
  int64_t version;
  uint32_t schema;
  const bson_t *state;
} served;

static cqrs_code_t s_append(void *impl, const cqrs_append_t *r, cqrs_append_result_t *res, cqrs_error_t *err) {
  (void)impl;
  return cqrs_store_append(events, r, res, err);
}
static cqrs_code_t s_read_stream(void *impl, const char *t, const char *id, int64_t from, cqrs_event_visit_cb cb,
                                 void *data, cqrs_error_t *err) {
  (void)impl;
  return cqrs_store_read_stream(events, t, id, from, cb, data, err);
}
static cqrs_code_t s_read_all(void *impl, int64_t from, size_t limit, cqrs_event_visit_cb cb, void *data,
                              cqrs_error_t *err) {
  (void)impl;
  return cqrs_store_read_all(events, from, limit, cb, data, err);
}
static cqrs_code_t s_head(void *impl, int64_t *p, cqrs_error_t *err) {
  (void)impl;
  return cqrs_store_head(events, p, err);
}
static cqrs_code_t s_snap_load(void *impl, const char *t, const char *id, cqrs_snapshot_t *out, bool *found,
                               cqrs_error_t *err) {
  (void)impl;
  (void)t;
  (void)id;
  (void)err;
  out->version = served.version;
  out->schema_version = served.schema;
  bson_copy_to(served.state, &out->state);
  *found = true;
  return CQRS_OK;
}
static cqrs_code_t s_snap_save(void *impl, const cqrs_snapshot_t *snap, cqrs_error_t *err) {
  (void)impl;
  (void)snap;
  (void)err;
  return CQRS_OK;
}

static const cqrs_store_ops_t ops = {.name = "fuzz-snapshot", .blocking = false, .append = s_append,
                                     .read_stream = s_read_stream, .read_all = s_read_all, .head = s_head,
                                     .snapshot_load = s_snap_load, .snapshot_save = s_snap_save, .destroy = NULL};
static cqrs_store_t *store;

static void free_stores(void) {
  cqrs_store_destroy(store);
  cqrs_store_destroy(events);
}

static void fill(void) {
  cqrs_memory_store_new(&events, NULL);
  cqrs_store_new(&ops, NULL, &store, NULL);
  if (!events || !store) FZ_FAIL("stores");
  atexit(free_stores);
  cqrs_aggregate_t *agg;
  cqrs_error_t err;
  if (cqrs_aggregate_new(&fz_aggregate, "a", &agg, &err)) FZ_FAIL("aggregate: %s", err.message);
  for (int i = 0; i < STREAM_EVENTS; i++) {
    fz_payload_t p;
    memset(&p, 0, sizeof p);
    p.count = i + 1;
    if (cqrs_aggregate_raise(agg, &fz_counted, &p, &err)) FZ_FAIL("raise: %s", err.message);
  }
  cqrs_append_t req = {"fz", "a", 0, "fill", NULL, 0};
  cqrs_event_t *list[STREAM_EVENTS];
  for (size_t i = 0; i < STREAM_EVENTS; i++) list[i] = (cqrs_event_t *)cqrs_aggregate_pending(agg, i);
  req.events = list;
  req.count = STREAM_EVENTS;
  cqrs_append_result_t res;
  if (cqrs_store_append(events, &req, &res, &err)) FZ_FAIL("append: %s", err.message);
  cqrs_aggregate_destroy(agg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 9) return 0;
  if (!store) fill();
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | data[i];
  bson_t state;
  if (!bson_init_static(&state, data + 9, size - 9)) return 0;
  served.version = (int64_t)v;
  served.schema = data[8] % 4;
  served.state = &state;
  cqrs_aggregate_t *agg = NULL;
  cqrs_error_t err;
  if (cqrs_repository_load(store, &fz_aggregate, "a", &agg, &err) != CQRS_OK) {
    if (agg) FZ_FAIL("a failed load left an aggregate");
    return 0;
  }
  int64_t version = cqrs_aggregate_version(agg);
  if (version < 0 || version == INT64_MAX) FZ_FAIL("aggregate at version %lld", (long long)version);
  const fz_state_t *s = cqrs_aggregate_state_const(agg);
  fz_check_string("state name", s->name, sizeof s->name);
  cqrs_aggregate_destroy(agg);
  return 0;
}
