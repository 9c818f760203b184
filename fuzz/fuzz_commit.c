/* The stored-commit decoder of the MongoDB store (no server: the codec
 * alone, through mongo-private.h). A commit that decodes has valid strings
 * and positions, and the store's own encoding of its events decodes to the
 * same events. */
#include <string.h>

#include "fuzz_types.h"
#include "mongo-private.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_EVENTS 64

typedef struct seen {
  cqrs_event_t *items[MAX_EVENTS];
  size_t n;
} seen_t;

static bool keep(const cqrs_event_t *e, void *data) {
  seen_t *s = data;
  s->items[s->n++] = (cqrs_event_t *)cqrs_event_ref(e); /* only read, but cqrs_append_t wants them so */
  return s->n < MAX_EVENTS;
}

static void drop(seen_t *s) {
  for (size_t i = 0; i < s->n; i++) cqrs_event_unref(s->items[i]);
}

static void check_event(const cqrs_event_t *e) {
  fz_check_string("event id", e->id, sizeof e->id);
  fz_check_string("aggregate id", cqrs_event_aggregate_id(e), CQRS_ID_MAX);
  fz_check_string("causation id", cqrs_event_causation_id(e), CQRS_ID_MAX);
  fz_check_string("correlation id", cqrs_event_correlation_id(e), CQRS_ID_MAX);
  if (e->position < 1) FZ_FAIL("position %lld", (long long)e->position);
  if (e->type == &fz_done) fz_check_payload(e->payload);
}

/* An event of a type this process does not know keeps its type's name and
 * raw data (pointers into the event: compare what they point at). */
static bool same_payload(const cqrs_event_t *a, const cqrs_event_t *b) {
  if (a->type != &cqrs_unknown_event_type) return !memcmp(a->payload, b->payload, a->type->payload_size);
  const cqrs_unknown_event_t *x = a->payload, *y = b->payload;
  return !strcmp(x->type, y->type) && x->schema_version == y->schema_version && x->data_len == y->data_len &&
         !memcmp(x->data, y->data, x->data_len);
}

/* Re-encodes a decoded commit the way the store writes one; only a commit
 * whose events follow each other can be appended, so only those. */
static void round_trip(const seen_t *s) {
  for (size_t i = 1; i < s->n; i++)
    if (s->items[i]->version != s->items[0]->version + (int64_t)i ||
        s->items[i]->position != s->items[0]->position + (int64_t)i)
      return;
  const cqrs_event_t *first = s->items[0];
  if ((uint64_t)(INT64_MAX - first->position) < s->n) return; /* the store refuses to write it */
  cqrs_append_t req = {cqrs_event_aggregate_type(first), cqrs_event_aggregate_id(first), first->version - 1,
                       cqrs_event_causation_id(first), s->items, s->n};
  bson_t doc = BSON_INITIALIZER;
  cqrs__mongo_build_commit(&doc, &req, first->position, NULL);
  seen_t again = {{0}, 0};
  cqrs_error_t err;
  if (cqrs__mongo_decode_commit(fz_registry(), &doc, keep, &again, &err)) FZ_FAIL("re-decode: %s", err.message);
  if (again.n != s->n) FZ_FAIL("re-decode gave %zu events, not %zu", again.n, s->n);
  for (size_t i = 0; i < s->n; i++) {
    const cqrs_event_t *a = s->items[i], *b = again.items[i];
    if (strcmp(a->id, b->id) || a->type != b->type || a->version != b->version || a->position != b->position ||
        a->timestamp != b->timestamp || !same_payload(a, b))
      FZ_FAIL("round trip changed event %zu", i);
  }
  drop(&again);
  bson_destroy(&doc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  bson_t doc;
  if (!bson_init_static(&doc, data, size)) return 0;
  seen_t s = {{0}, 0};
  cqrs_error_t err;
  cqrs_code_t rc = cqrs__mongo_decode_commit(fz_registry(), &doc, keep, &s, &err);
  for (size_t i = 0; i < s.n; i++) check_event(s.items[i]);
  if (!rc && s.n > 0 && s.n < MAX_EVENTS) round_trip(&s);
  drop(&s);
  return 0;
}
