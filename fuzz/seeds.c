/* Writes the seed corpora of the harnesses under DIR/<harness>/: valid
 * documents of every shape the decoders read, and the corrupt inputs that
 * once got through (kept as regressions). Run: fuzz_seeds fuzz/corpus. */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include <cqrs/backend.h>

#include "fuzz_types.h"
#include "mongo-private.h"

static const char *root;

static bool keep_first_seed(const cqrs_event_t *e, void *data) {
  *(const cqrs_event_t **)data = cqrs_event_ref(e);
  return false;
}

static void put(const char *harness, const char *name, const uint8_t *data, size_t len) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", root, harness);
  if (mkdir(path, 0755) && errno != EEXIST) FZ_FAIL("mkdir %s", path);
  snprintf(path, sizeof path, "%s/%s/%s", root, harness, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, len, f) != len || fclose(f)) FZ_FAIL("write %s", path);
}

static void put_doc(const char *harness, const char *name, const bson_t *doc) {
  put(harness, name, bson_get_data(doc), doc->len);
}

/* `doc` with `key` replaced by the `len` bytes `bytes` (not UTF-8). */
static void put_with(const char *harness, const char *name, const bson_t *doc, const char *key, const char *bytes,
                     int len) {
  bson_t u = BSON_INITIALIZER;
  bson_copy_to_excluding_noinit(doc, &u, key, NULL);
  bson_append_utf8(&u, key, -1, bytes, len);
  put_doc(harness, name, &u);
  bson_destroy(&u);
}

static fz_payload_t sample(void) {
  fz_payload_t p;
  memset(&p, 0, sizeof p);
  strcpy(p.name, "Zo\xc3\xab");
  p.count = 42;
  p.small = -7;
  p.flag = true;
  p.when = 1700000000000;
  cqrs_money_set(&p.price, 1999, "EUR", NULL);
  strcpy(p.where.city, "Paris");
  p.where.zip = 75001;
  strcpy(p.note, "hi");
  strcpy(p.stops[0].city, "Lyon");
  p.stops[0].zip = 69001;
  p.nstops = 1;
  strcpy(p.tags[0], "a");
  strcpy(p.tags[1], "b");
  p.ntags = 2;
  return p;
}

static void payload_seeds(void) {
  fz_payload_t p = sample();
  bson_t b = BSON_INITIALIZER;
  cqrs_fields_encode(fz_payload_fields, &p, &b, NULL);
  put_doc("fields", "seed-full", &b);
  put_with("fields", "regress-utf8-name", &b, "name", "bad\xff", 4);
  bson_destroy(&b);
}

static void command_seeds(void) {
  fz_payload_t p = sample();
  cqrs_command_t *cmd;
  if (cqrs_command_new(&fz_command, &p, &cmd, NULL)) FZ_FAIL("command");
  cqrs_command_set_correlation_id(cmd, "conv-1", NULL);
  bson_t b = BSON_INITIALIZER;
  cqrs_command_to_bson(cmd, &b, NULL);
  put_doc("command", "seed-full", &b);
  put_with("command", "regress-utf8-id", &b, "id", "id-\xc3", 4);
  bson_destroy(&b);
  cqrs_command_destroy(cmd);
}

static cqrs_event_t *event(const cqrs_event_type_t *type, int64_t version, const fz_payload_t *p) {
  cqrs_envelope_t *env;
  cqrs_event_t *e;
  if (cqrs_envelope_new("fz", "a-1", "cmd-1", "conv-1", &env, NULL) ||
      cqrs_event_new(type, env, NULL, version, 1700000000000, p, &e, NULL))
    FZ_FAIL("event");
  cqrs_envelope_unref(env);
  return e;
}

static void event_seeds(void) {
  fz_payload_t p = sample();
  cqrs_event_t *e = event(&fz_done, 3, &p);
  e->position = 17;
  bson_t b = BSON_INITIALIZER;
  cqrs_event_to_bson(e, &b, NULL);
  put_doc("event", "seed-v3", &b);
  /* The same at schema 1: "title" for "name", and no note. */
  bson_t data, old = BSON_INITIALIZER, payload = BSON_INITIALIZER;
  cqrs_fields_encode(fz_payload_fields, &p, &payload, NULL);
  bson_copy_to_excluding_noinit(&b, &old, "schemaVersion", "data", NULL);
  BSON_APPEND_INT32(&old, "schemaVersion", 1);
  BSON_APPEND_DOCUMENT_BEGIN(&old, "data", &data);
  bson_iter_t it;
  bson_iter_init(&it, &payload);
  while (bson_iter_next(&it)) {
    const char *k = bson_iter_key(&it);
    if (strcmp(k, "note")) bson_append_iter(&data, strcmp(k, "name") ? k : "title", -1, &it);
  }
  bson_append_document_end(&old, &data);
  put_doc("event", "seed-v1", &old);
  bson_iter_init_find(&it, &old, "data");
  uint32_t len;
  const uint8_t *raw;
  bson_iter_document(&it, &len, &raw);
  uint8_t buf[1024];
  buf[0] = 1;
  memcpy(buf + 1, raw, len);
  put("upcast", "seed-v1", buf, len + 1);
  buf[0] = 3;
  memcpy(buf + 1, bson_get_data(&payload), payload.len);
  put("upcast", "seed-v3", buf, payload.len + 1);
  put_with("event", "regress-utf8-aggregate-id", &b, "aggregateId", "a-\xed\xa0\x80", 5);
  bson_destroy(&old);
  bson_destroy(&payload);
  bson_destroy(&b);
  cqrs_event_unref(e);
}

static void commit_seeds(void) {
  fz_payload_t p = sample();
  cqrs_event_t *list[3];
  list[0] = event(&fz_done, 1, &p);
  p.count = 5;
  list[1] = event(&fz_counted, 2, &p);
  list[2] = event(&fz_counted, 3, &p);
  cqrs_append_t req = {"fz", "a-1", 0, "cmd-1", list, 1};
  bson_t b = BSON_INITIALIZER;
  cqrs__mongo_build_commit(&b, &req, 1, NULL);
  put_doc("commit", "seed-one", &b);
  bson_reinit(&b);
  req.count = 3;
  cqrs__mongo_build_commit(&b, &req, 10, NULL);
  put_doc("commit", "seed-three", &b);
  /* Three events from INT64_MAX - 1, as a corrupt store could hold them (the
   * store itself never writes past INT64_MAX). */
  bson_t edge = BSON_INITIALIZER;
  bson_copy_to_excluding_noinit(&b, &edge, "position", "lastPosition", NULL);
  BSON_APPEND_INT64(&edge, "position", INT64_MAX - 1);
  BSON_APPEND_INT64(&edge, "lastPosition", INT64_MAX);
  put_doc("commit", "regress-position-overflow", &edge);
  bson_destroy(&edge);
  bson_reinit(&b);
  req.count = 1;
  req.aggregate_id = "a-\xff";
  cqrs__mongo_build_commit(&b, &req, 1, NULL);
  put_doc("commit", "regress-utf8-aggregate-id", &b);
  bson_destroy(&b);
  for (int i = 0; i < 3; i++) cqrs_event_unref(list[i]);
}

static void snapshot_seed(const char *name, int64_t version, uint8_t schema, const bson_t *state) {
  uint8_t buf[1024];
  uint64_t v = (uint64_t)version;
  for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(v >> (8 * i));
  buf[8] = schema;
  memcpy(buf + 9, bson_get_data(state), state->len);
  put("snapshot", name, buf, 9 + state->len);
}

static void snapshot_seeds(void) {
  bson_t s = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&s, "name", "snap");
  BSON_APPEND_INT64(&s, "total", 3);
  BSON_APPEND_INT32(&s, "seen", 2);
  BSON_APPEND_BOOL(&s, "open", true);
  snapshot_seed("seed-v2", 2, 2, &s);
  snapshot_seed("seed-stale-schema", 4, 1, &s);
  snapshot_seed("seed-ahead", 100, 2, &s);
  snapshot_seed("regress-version-int64-max", INT64_MAX, 2, &s);
  bson_destroy(&s);
}

/* fz.personal as a store holds it, sealed with fz_keys under FZ_EVENT_ID
 * for `owner` ("s1": sealed, "s2": forgotten): its data into `out`. */
static void sealed_payload(const char *owner, bson_t *out) {
  fz_personal_t p;
  memset(&p, 0, sizeof p);
  strcpy(p.name, "Ada");
  strcpy(p.email, "ada@example.org");
  p.born = 1815;
  strcpy(p.home.city, "London");
  p.home.zip = 1;
  strcpy(p.city, "Paris");
  strcpy(p.trips[0].city, "Turin");
  p.ntrips = 1;
  cqrs_store_t *store;
  if (cqrs_memory_store_new(&store, NULL) || cqrs_store_set_keys(store, fz_keys(), fz_registry(), NULL))
    FZ_FAIL("store");
  cqrs_envelope_t *env;
  cqrs_event_t *e;
  if (cqrs_envelope_new("fz", owner, "seed", NULL, &env, NULL) ||
      cqrs_event_new(&fz_personal, env, FZ_EVENT_ID, 1, 1, &p, &e, NULL))
    FZ_FAIL("event");
  cqrs_append_t req = {"fz", owner, 0, "seed", &e, 1};
  cqrs_append_result_t res;
  cqrs_error_t err;
  if (cqrs_store_append(store, &req, &res, &err)) FZ_FAIL("append: %s", err.message);
  const cqrs_event_t *raw = NULL;
  if (cqrs_store_read_sealed(store, 1, 1, keep_first_seed, &raw, NULL) || !raw ||
      raw->type != &cqrs_unknown_event_type)
    FZ_FAIL("not sealed");
  const cqrs_unknown_event_t *u = raw->payload;
  bson_t view;
  bson_init_static(&view, u->data, u->data_len);
  bson_copy_to(&view, out);
  cqrs_event_unref(raw);
  cqrs_event_unref(e);
  cqrs_envelope_unref(env);
  cqrs_store_destroy(store);
}

static void sealed_seeds(void) {
  bson_t sealed, forgotten;
  sealed_payload("s1", &sealed);
  put_doc("sealed", "seed-sealed", &sealed);
  sealed_payload("s2", &forgotten);
  put_doc("sealed", "seed-forgotten", &forgotten);
  /* The name's ciphertext moved under the e-mail's key: refused. */
  bson_iter_t it;
  bson_subtype_t sub;
  uint32_t len;
  const uint8_t *bin;
  if (!bson_iter_init_find(&it, &sealed, "name")) FZ_FAIL("no name");
  bson_iter_binary(&it, &sub, &len, &bin);
  bson_t moved = BSON_INITIALIZER;
  bson_copy_to_excluding_noinit(&sealed, &moved, "email", NULL);
  bson_append_binary(&moved, "email", -1, sub, bin, len);
  put_doc("sealed", "seed-moved", &moved);
  /* An export's redacted fields; an old event in clear, before the fields
   * were personal, in schema 1. */
  const uint8_t marker[3] = {3, BSON_TYPE_UTF8, 0};
  bson_t *redacted = BCON_NEW("name", BCON_BIN(BSON_SUBTYPE_USER, marker, 3), "email",
                              BCON_BIN(BSON_SUBTYPE_USER, marker, 3), "city", "Paris");
  put_doc("sealed", "seed-redacted", redacted);
  bson_t old = BSON_INITIALIZER;
  bson_copy_to_excluding_noinit(&sealed, &old, "email", NULL);
  BSON_APPEND_UTF8(&old, "mail", "ada@old.example");
  put_doc("sealed", "seed-plain-v1", &old);
  bson_destroy(&old);
  bson_destroy(redacted);
  bson_destroy(&moved);
  bson_destroy(&forgotten);
  bson_destroy(&sealed);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: fuzz_seeds DIR\n");
    return 2;
  }
  root = argv[1];
  payload_seeds();
  command_seeds();
  event_seeds();
  commit_seeds();
  snapshot_seeds();
  sealed_seeds();
  return 0;
}
