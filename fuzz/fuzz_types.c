#include "fuzz_types.h"

#include <cqrs/backend.h>

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

/* Renames key `from` to `to`. */
static cqrs_code_t rename_key(const bson_t *in, bson_t *out, const char *from, const char *to, cqrs_error_t *err) {
  bson_iter_t it;
  if (!bson_iter_init(&it, in)) return cqrs_error_set(err, CQRS_ECODEC, "malformed v1");
  while (bson_iter_next(&it)) {
    const char *k = bson_iter_key(&it);
    if (!bson_append_iter(out, strcmp(k, from) ? k : to, -1, &it))
      return cqrs_error_set(err, CQRS_ETOO_LARGE, "v2 too large");
  }
  return CQRS_OK;
}

/* Schema 1 named the payload's name "title"; schema 2 had no note. */
static cqrs_code_t v1_to_v2(const bson_t *in, bson_t *out, cqrs_error_t *err) {
  return rename_key(in, out, "title", "name", err);
}

/* fz.personal: schema 1 called the e-mail "mail". */
static cqrs_code_t mail_to_email(const bson_t *in, bson_t *out, cqrs_error_t *err) {
  return rename_key(in, out, "mail", "email", err);
}

static cqrs_code_t v2_to_v3(const bson_t *in, bson_t *out, cqrs_error_t *err) {
  bson_copy_to_excluding_noinit(in, out, "note", NULL);
  if (!BSON_APPEND_UTF8(out, "note", "v2")) return cqrs_error_set(err, CQRS_ETOO_LARGE, "v3 too large");
  return CQRS_OK;
}

const cqrs_field_t fz_personal_fields[] = {
    CQRS_STRING(fz_personal_t, name, "name", CQRS_F_REQUIRED | CQRS_F_PERSONAL),
    CQRS_STRING(fz_personal_t, email, "email", CQRS_F_PERSONAL),
    CQRS_INT64(fz_personal_t, born, "born", CQRS_F_OPTIONAL | CQRS_F_PERSONAL),
    CQRS_DOC(fz_personal_t, home, "home", place_fields, CQRS_F_OPTIONAL | CQRS_F_PERSONAL),
    CQRS_STRING(fz_personal_t, city, "city", CQRS_F_OPTIONAL),
    CQRS_ARRAY(fz_personal_t, trips, ntrips, "trips", stop_item, CQRS_F_OPTIONAL | CQRS_F_PERSONAL),
    CQRS_SUBJECT_OWNER,
    CQRS_FIELDS_END,
};
const cqrs_event_type_t fz_personal = {.name = "fz.personal", .schema_version = 2, .payload_size = sizeof(fz_personal_t), .fields = fz_personal_fields};

static cqrs_registry_t *registry;

static void free_registry(void) { cqrs_registry_destroy(registry); }

const cqrs_registry_t *fz_registry(void) {
  if (registry) return registry;
  cqrs_error_t err;
  cqrs_registry_new(&registry, NULL);
  if (!registry || cqrs_registry_add_command(registry, &fz_command, &err) ||
      cqrs_registry_add_aggregate(registry, &fz_aggregate, &err) ||
      cqrs_registry_add_upcaster(registry, "fz.done", 1, v1_to_v2, &err) ||
      cqrs_registry_add_upcaster(registry, "fz.done", 2, v2_to_v3, &err) ||
      cqrs_registry_add_event(registry, &fz_personal, &err) ||
      cqrs_registry_add_upcaster(registry, "fz.personal", 1, mail_to_email, &err))
    FZ_FAIL("registry: %s", err.message);
  atexit(free_registry);
  return registry;
}

void fz_check_string(const char *what, const char *s, size_t cap) {
  size_t n = strnlen(s, cap);
  if (n == cap) FZ_FAIL("%s is not terminated", what);
  if (!bson_utf8_validate(s, n, false)) FZ_FAIL("%s is not valid UTF-8", what);
}

void fz_check_personal(const fz_personal_t *p) {
  fz_check_string("name", p->name, sizeof p->name);
  fz_check_string("email", p->email, sizeof p->email);
  fz_check_string("home.city", p->home.city, sizeof p->home.city);
  fz_check_string("city", p->city, sizeof p->city);
  if (p->ntrips < 0 || p->ntrips > 2) FZ_FAIL("%d trips", (int)p->ntrips);
  for (int32_t i = 0; i < p->ntrips; i++) fz_check_string("trips.city", p->trips[i].city, sizeof p->trips[i].city);
}

/* ---- the fixed key store ---- */

static cqrs_code_t keys_get(void *impl, const char *subject, cqrs_key_record_t *out, cqrs_error_t *err) {
  (void)impl, (void)err;
  memset(out, 0, sizeof *out);
  if (!strcmp(subject, "s1")) {
    out->state = CQRS_SUBJECT_KEYED;
    out->generation = 1;
    memset(out->key, 0x5a, 32);
    out->key_len = 32;
  } else if (!strcmp(subject, "s2")) {
    out->state = CQRS_SUBJECT_FORGOTTEN;
  }
  return CQRS_OK;
}

static cqrs_code_t keys_create(void *impl, const char *subject, const cqrs_key_record_t *rec, cqrs_key_record_t *out,
                               cqrs_error_t *err) {
  (void)impl, (void)subject, (void)err;
  *out = *rec;
  return CQRS_OK;
}

static cqrs_code_t keys_forget(void *impl, const char *subject, int64_t at, cqrs_error_t *err) {
  (void)impl, (void)subject, (void)at, (void)err;
  return CQRS_OK;
}

static cqrs_code_t keys_list(void *impl, cqrs_key_visit_cb cb, void *data, cqrs_error_t *err) {
  (void)impl, (void)cb, (void)data, (void)err;
  return CQRS_OK;
}

static const cqrs_keys_ops_t fixed_keys = {.get = keys_get, .create = keys_create, .forget = keys_forget,
                                           .list = keys_list};
static cqrs_keys_t *keys;

static void free_keys(void) { cqrs_keys_destroy(keys); }

cqrs_keys_t *fz_keys(void) {
  if (keys) return keys;
  cqrs_error_t err;
  if (cqrs_keys_new(&fixed_keys, NULL, NULL, &keys, &err)) FZ_FAIL("keys: %s", err.message);
  atexit(free_keys);
  return keys;
}

void fz_check_payload(const fz_payload_t *p) {
  fz_check_string("name", p->name, sizeof p->name);
  fz_check_string("where.city", p->where.city, sizeof p->where.city);
  fz_check_string("note", p->note, sizeof p->note);
  fz_check_string("currency", p->price.currency, sizeof p->price.currency);
}
