#include "fuzz_types.h"

#include <string.h>

static const cqrs_field_t place_fields[] = {CQRS_STRING(fz_place_t, city, "city", CQRS_F_REQUIRED),
                                            CQRS_INT32_RANGE(fz_place_t, zip, "zip", 0, 99999), CQRS_FIELDS_END};

static const cqrs_field_t stop_item[] = {CQRS_ITEM_DOC(fz_place_t, place_fields), CQRS_FIELDS_END};
static const cqrs_field_t tag_item[] = {CQRS_ITEM_STRING(6, CQRS_F_REQUIRED), CQRS_FIELDS_END};

const cqrs_field_t fz_payload_fields[] = {
    CQRS_STRING(fz_payload_t, name, "name", CQRS_F_REQUIRED),
    CQRS_INT64_RANGE(fz_payload_t, count, "count", -1000000, 1000000),
    CQRS_INT32(fz_payload_t, small, "small", CQRS_F_OPTIONAL),
    CQRS_BOOL(fz_payload_t, flag, "flag", 0),
    CQRS_TIME_RANGE(fz_payload_t, when, "when", 0, INT64_MAX),
    CQRS_MONEY_RANGE(fz_payload_t, price, "price", 1, INT64_MAX),
    CQRS_DOC(fz_payload_t, where, "where", place_fields, 0),
    CQRS_STRING(fz_payload_t, note, "note", CQRS_F_OPTIONAL),
    CQRS_ARRAY(fz_payload_t, stops, nstops, "stops", stop_item, CQRS_F_OPTIONAL),
    CQRS_ARRAY(fz_payload_t, tags, ntags, "tags", tag_item, CQRS_F_OPTIONAL),
    CQRS_FIELDS_END,
};

static const cqrs_field_t counted_fields[] = {CQRS_INT64(fz_payload_t, count, "count", 0), CQRS_FIELDS_END};

const cqrs_command_type_t fz_command = {
    .name = "fz.do", .payload_size = sizeof(fz_payload_t), .fields = fz_payload_fields};
const cqrs_event_type_t fz_done = {.name = "fz.done", .schema_version = 3, .payload_size = sizeof(fz_payload_t),
                                   .fields = fz_payload_fields};
const cqrs_event_type_t fz_counted = {.name = "fz.counted", .schema_version = 1, .payload_size = sizeof(fz_payload_t),
                                      .fields = counted_fields};

static void apply_done(void *state, const cqrs_event_t *e) {
  fz_state_t *s = state;
  const fz_payload_t *p = e->payload;
  memcpy(s->name, p->name, sizeof s->name);
  s->open = true;
  s->seen++;
}

static void apply_counted(void *state, const cqrs_event_t *e) {
  fz_state_t *s = state;
  const fz_payload_t *p = e->payload;
  /* Wrapping arithmetic: the state is the domain's, not under test. */
  s->total = (int64_t)((uint64_t)s->total + (uint64_t)p->count);
  s->seen = (int32_t)((uint32_t)s->seen + 1u); /* wraps too, like total */
}

static const cqrs_apply_entry_t fz_apply[] = {{&fz_done, apply_done}, {&fz_counted, apply_counted}, {NULL, NULL}};
static const cqrs_field_t state_fields[] = {CQRS_STRING(fz_state_t, name, "name", 0),
                                            CQRS_INT64(fz_state_t, total, "total", 0),
                                            CQRS_INT32(fz_state_t, seen, "seen", 0),
                                            CQRS_BOOL(fz_state_t, open, "open", 0), CQRS_FIELDS_END};
const cqrs_aggregate_type_t fz_aggregate = {.name = "fz", .state_size = sizeof(fz_state_t), .state_init = NULL,
                                            .state_cleanup = NULL, .apply = fz_apply, .snapshot_fields = state_fields,
                                            .snapshot_version = 2, .snapshot_every = 4};

/* Schema 1 named the payload's name "title"; schema 2 had no note. */
static cqrs_code_t v1_to_v2(const bson_t *in, bson_t *out, cqrs_error_t *err) {
  bson_iter_t it;
  if (!bson_iter_init(&it, in)) return cqrs_error_set(err, CQRS_ECODEC, "malformed v1");
  while (bson_iter_next(&it)) {
    const char *k = bson_iter_key(&it);
    if (!bson_append_iter(out, strcmp(k, "title") ? k : "name", -1, &it))
      return cqrs_error_set(err, CQRS_ETOO_LARGE, "v2 too large");
  }
  return CQRS_OK;
}

static cqrs_code_t v2_to_v3(const bson_t *in, bson_t *out, cqrs_error_t *err) {
  bson_copy_to_excluding_noinit(in, out, "note", NULL);
  if (!BSON_APPEND_UTF8(out, "note", "v2")) return cqrs_error_set(err, CQRS_ETOO_LARGE, "v3 too large");
  return CQRS_OK;
}

static cqrs_registry_t *registry;

static void free_registry(void) { cqrs_registry_destroy(registry); }

const cqrs_registry_t *fz_registry(void) {
  if (registry) return registry;
  cqrs_error_t err;
  cqrs_registry_new(&registry, NULL);
  if (!registry || cqrs_registry_add_command(registry, &fz_command, &err) ||
      cqrs_registry_add_aggregate(registry, &fz_aggregate, &err) ||
      cqrs_registry_add_upcaster(registry, "fz.done", 1, v1_to_v2, &err) ||
      cqrs_registry_add_upcaster(registry, "fz.done", 2, v2_to_v3, &err))
    FZ_FAIL("registry: %s", err.message);
  atexit(free_registry);
  return registry;
}

void fz_check_string(const char *what, const char *s, size_t cap) {
  size_t n = strnlen(s, cap);
  if (n == cap) FZ_FAIL("%s is not terminated", what);
  if (!bson_utf8_validate(s, n, false)) FZ_FAIL("%s is not valid UTF-8", what);
}

void fz_check_payload(const fz_payload_t *p) {
  fz_check_string("name", p->name, sizeof p->name);
  fz_check_string("where.city", p->where.city, sizeof p->where.city);
  fz_check_string("note", p->note, sizeof p->note);
  fz_check_string("currency", p->price.currency, sizeof p->price.currency);
}
