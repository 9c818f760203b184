/* Personal data in the event store, snapshots and exports (cqrs/personal.h):
 * declared in field tables, sealed at rest with a key per subject,
 * forgotten by deleting the key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "person.h"

typedef struct fixture {
  cqrs_registry_t *reg;
  cqrs_store_t *store;
  cqrs_keys_t *keys;
} fixture_t;

static int setup(void **state) {
  fixture_t *fx = calloc(1, sizeof *fx);
  fx->reg = person_registry();
  assert_int_equal(cqrs_memory_store_new(&fx->store, NULL), CQRS_OK);
  assert_int_equal(cqrs_memory_keys_new(NULL, &fx->keys, NULL), CQRS_OK);
  cqrs_error_t err;
  assert_int_equal(cqrs_store_set_keys(fx->store, fx->keys, fx->reg, &err), CQRS_OK);
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  fixture_t *fx = *state;
  cqrs_store_destroy(fx->store);
  cqrs_keys_destroy(fx->keys);
  cqrs_registry_destroy(fx->reg);
  free(fx);
  return 0;
}

/* ---- declaration ---- */

typedef struct two {
  char a[16];
  char b[16];
  int64_t n;
} two_t;

static void test_table_needs_one_subject(void **state) {
  (void)state;
  static const cqrs_field_t no_subject[] = {CQRS_STRING(two_t, a, "a", CQRS_F_PERSONAL), CQRS_FIELDS_END};
  static const cqrs_field_t field_subject[] = {CQRS_STRING(two_t, a, "a", CQRS_F_SUBJECT),
                                               CQRS_STRING(two_t, b, "b", CQRS_F_PERSONAL), CQRS_FIELDS_END};
  static const cqrs_field_t two_subjects[] = {CQRS_STRING(two_t, a, "a", CQRS_F_SUBJECT),
                                              CQRS_STRING(two_t, b, "b", CQRS_F_PERSONAL), CQRS_SUBJECT_OWNER,
                                              CQRS_FIELDS_END};
  static const cqrs_field_t personal_subject[] = {CQRS_STRING(two_t, a, "a", CQRS_F_SUBJECT | CQRS_F_PERSONAL),
                                                  CQRS_FIELDS_END};
  static const cqrs_field_t number_subject[] = {CQRS_INT64(two_t, n, "n", CQRS_F_SUBJECT),
                                                CQRS_STRING(two_t, b, "b", CQRS_F_PERSONAL), CQRS_FIELDS_END};
  static const cqrs_field_t null_fn[] = {CQRS_STRING(two_t, b, "b", CQRS_F_PERSONAL), CQRS_SUBJECT_FN(NULL),
                                         CQRS_FIELDS_END};
  static const cqrs_field_t long_key[] = {
      CQRS_STRING(two_t, a, "a_personal_field_whose_key_is_far_too_long_to_be_sealed_because_the_associated_data_"
                           "and_the_mask_name_it_in_at_most_127_bytes_xx", CQRS_F_PERSONAL),
      CQRS_SUBJECT_OWNER, CQRS_FIELDS_END};
  cqrs_error_t err;
  assert_int_equal(cqrs_fields_check(long_key, &err), CQRS_EINVAL);
  assert_non_null(strstr(err.message, "dotted key"));
  assert_int_equal(cqrs_fields_check(no_subject, &err), CQRS_EINVAL);
  assert_non_null(strstr(err.message, "no subject"));
  assert_int_equal(cqrs_fields_check(field_subject, &err), CQRS_OK);
  assert_int_equal(cqrs_fields_check(two_subjects, &err), CQRS_EINVAL);
  assert_non_null(strstr(err.message, "2 subjects"));
  assert_int_equal(cqrs_fields_check(personal_subject, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_fields_check(number_subject, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_fields_check(null_fn, &err), CQRS_EINVAL);
  /* The registry checks every table it is given. */
  const cqrs_event_type_t bad = {.name = "two.bad", .schema_version = 1, .payload_size = sizeof(two_t), .fields = no_subject};
  cqrs_registry_t *reg = person_registry();
  assert_int_equal(cqrs_registry_add_event(reg, &bad, &err), CQRS_EINVAL);
  assert_non_null(strstr(err.message, "no subject"));
  assert_null(cqrs_registry_event(reg, "two.bad"));
  cqrs_registry_destroy(reg);
}

/* ---- no key store ---- */

static void test_no_key_store_stops_writes(void **state) {
  (void)state;
  cqrs_store_t *store;
  assert_int_equal(cqrs_memory_store_new(&store, NULL), CQRS_OK);
  cqrs_error_t err;
  assert_int_equal(person_register(store, "p1", "c1", "Ada Lovelace", "ada@example.org", 1815, &err), CQRS_ESTATE);
  assert_non_null(strstr(err.message, "no key store"));
  int64_t head = -1;
  assert_int_equal(cqrs_store_head(store, &head, NULL), CQRS_OK);
  assert_int_equal(head, 0); /* nothing written, in clear or otherwise */
  cqrs_store_destroy(store);
}

static void test_key_store_down_stops_writes(void **state) {
  (void)state;
  cqrs_registry_t *reg = person_registry();
  test_keys_t *tk = test_keys_new();
  cqrs_keys_t *keys = test_keys_view(tk, NULL);
  cqrs_store_t *store;
  assert_int_equal(cqrs_memory_store_new(&store, NULL), CQRS_OK);
  assert_int_equal(cqrs_store_set_keys(store, keys, reg, NULL), CQRS_OK);
  test_keys_down(tk, true);
  cqrs_error_t err;
  assert_int_equal(person_register(store, "p1", "c1", "Ada", "ada@example.org", 1815, &err), CQRS_ESTORE);
  int64_t head = -1;
  assert_int_equal(cqrs_store_head(store, &head, NULL), CQRS_OK);
  assert_int_equal(head, 0);
  test_keys_down(tk, false);
  assert_int_equal(person_register(store, "p1", "c1", "Ada", "ada@example.org", 1815, &err), CQRS_OK);
  cqrs_store_destroy(store);
  cqrs_keys_destroy(keys);
  test_keys_free(tk);
  cqrs_registry_destroy(reg);
}

/* ---- sealed at rest, opened on read ---- */

typedef struct seen {
  const cqrs_event_t *events[16];
  size_t n;
} seen_t;

static bool keep(const cqrs_event_t *e, void *data) {
  seen_t *s = data;
  if (s->n < 16) s->events[s->n++] = cqrs_event_ref(e);
  return true;
}

static void seen_free(seen_t *s) {
  for (size_t i = 0; i < s->n; i++) cqrs_event_unref(s->events[i]);
  s->n = 0;
}

/* Whether the events as stored hold `needle` in any byte of their data. */
static bool stored_has(cqrs_store_t *store, const char *needle) {
  seen_t s = {.n = 0};
  assert_int_equal(cqrs_store_read_sealed(store, 1, 1000, keep, &s, NULL), CQRS_OK);
  bool found = false;
  for (size_t i = 0; i < s.n; i++) {
    const cqrs_event_t *e = s.events[i];
    if (e->type == &cqrs_unknown_event_type) {
      const cqrs_unknown_event_t *u = e->payload;
      found |= person_has_bytes(u->data, u->data_len, needle);
    } else {
      found |= person_has_bytes(e->payload, e->type->payload_size, needle);
    }
  }
  seen_free(&s);
  return found;
}

static void test_sealed_at_rest(void **state) {
  fixture_t *fx = *state;
  assert_int_equal(person_register(fx->store, "p1", "c1", "Ada Lovelace", "ada@example.org", 1815, NULL), CQRS_OK);
  assert_false(stored_has(fx->store, "Ada Lovelace"));
  assert_false(stored_has(fx->store, "ada@example.org"));
  assert_true(stored_has(fx->store, "Lyon")); /* not personal: as it was */
  seen_t raw = {.n = 0};
  assert_int_equal(cqrs_store_read_sealed(fx->store, 1, 10, keep, &raw, NULL), CQRS_OK);
  assert_int_equal(raw.n, 1);
  assert_ptr_equal(raw.events[0]->type, &cqrs_unknown_event_type);
  const cqrs_unknown_event_t *u = raw.events[0]->payload;
  assert_string_equal(u->type, "person.registered");
  bson_t data;
  assert_true(bson_init_static(&data, u->data, u->data_len));
  assert_true(cqrs_payload_sealed(&data));
  seen_free(&raw);
  /* Read through the store: the plaintext, in the decoded struct only. */
  seen_t s = {.n = 0};
  assert_int_equal(cqrs_store_read_all(fx->store, 1, 10, keep, &s, NULL), CQRS_OK);
  assert_int_equal(s.n, 1);
  assert_ptr_equal(s.events[0]->type, &person_registered);
  const person_registered_t *p = s.events[0]->payload;
  assert_string_equal(p->name, "Ada Lovelace");
  assert_string_equal(p->email, "ada@example.org");
  assert_int_equal(p->born, 1815);
  assert_int_equal(s.events[0]->position, 1);
  assert_false(cqrs_field_forgotten(s.events[0], "name"));
  seen_free(&s);
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(fx->store, &person_type, "p1", &agg, NULL), CQRS_OK);
  assert_string_equal(((const person_state_t *)cqrs_aggregate_state_const(agg))->email, "ada@example.org");
  cqrs_aggregate_destroy(agg);
}

static void test_forgotten_reads_placeholder(void **state) {
  fixture_t *fx = *state;
  assert_int_equal(person_register(fx->store, "p1", "c1", "Ada Lovelace", "ada@example.org", 1815, NULL), CQRS_OK);
  assert_int_equal(person_register(fx->store, "p2", "c2", "Grace Hopper", "grace@example.org", 1906, NULL), CQRS_OK);
  cqrs_subject_state_t st;
  assert_int_equal(cqrs_keys_state(fx->keys, "p1", &st, NULL), CQRS_OK);
  assert_int_equal(st, CQRS_SUBJECT_KEYED);
  assert_int_equal(cqrs_keys_forget(fx->keys, "p1", NULL), CQRS_OK);
  assert_int_equal(cqrs_keys_state(fx->keys, "p1", &st, NULL), CQRS_OK);
  assert_int_equal(st, CQRS_SUBJECT_FORGOTTEN);
  assert_int_equal(cqrs_keys_forget(fx->keys, "p1", NULL), CQRS_OK); /* again: nothing more */
  seen_t s = {.n = 0};
  assert_int_equal(cqrs_store_read_all(fx->store, 1, 10, keep, &s, NULL), CQRS_OK);
  assert_int_equal(s.n, 2);
  const person_registered_t *p = s.events[0]->payload;
  assert_string_equal(p->name, CQRS_FORGOTTEN);
  assert_string_equal(p->email, CQRS_FORGOTTEN);
  assert_int_equal(p->born, 0);
  assert_string_equal(p->city, "Lyon");
  assert_true(cqrs_field_forgotten(s.events[0], "name"));
  assert_true(cqrs_field_forgotten(s.events[0], "born"));
  assert_false(cqrs_field_forgotten(s.events[0], "city"));
  assert_false(cqrs_field_forgotten(s.events[0], "nosuch"));
  const person_registered_t *q = s.events[1]->payload;
  assert_string_equal(q->name, "Grace Hopper");
  assert_false(cqrs_field_forgotten(s.events[1], "name"));
  seen_free(&s);
  /* The aggregate still loads (version 1, its facts kept). */
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(fx->store, &person_type, "p1", &agg, NULL), CQRS_OK);
  assert_int_equal(cqrs_aggregate_version(agg), 1);
  assert_true(((const person_state_t *)cqrs_aggregate_state_const(agg))->registered);
  cqrs_aggregate_destroy(agg);
  /* What is written for a forgotten subject is stored forgotten: no key is
   * made again, nothing of it is kept. */
  person_noted_t n = {"p1", "likes engines"};
  cqrs_aggregate_t *other;
  assert_int_equal(cqrs_repository_load(fx->store, &person_type, "p3", &other, NULL), CQRS_OK);
  assert_int_equal(cqrs_aggregate_raise(other, &person_noted, &n, NULL), CQRS_OK);
  cqrs_cause_t cause = {"c3", NULL};
  assert_int_equal(cqrs_repository_save(fx->store, other, &cause, NULL, NULL), CQRS_OK);
  cqrs_aggregate_destroy(other);
  assert_false(stored_has(fx->store, "likes engines"));
  assert_int_equal(cqrs_keys_state(fx->keys, "p1", &st, NULL), CQRS_OK);
  assert_int_equal(st, CQRS_SUBJECT_FORGOTTEN);
  assert_int_equal(cqrs_store_read_all(fx->store, 3, 10, keep, &s, NULL), CQRS_OK);
  assert_int_equal(s.n, 1);
  assert_string_equal(((const person_noted_t *)s.events[0]->payload)->note, CQRS_FORGOTTEN);
  assert_string_equal(((const person_noted_t *)s.events[0]->payload)->person_id, "p1");
  assert_true(cqrs_field_forgotten(s.events[0], "note"));
  seen_free(&s);
}

/* ---- a ciphertext belongs where it was made ---- */

/* Appends to `store`, on a stream of its own, an event as stored whose data
 * is `data` under event id `id`. */
static void append_raw(cqrs_store_t *store, const char *stream, const char *id, const bson_t *data) {
  cqrs_envelope_t *env;
  assert_int_equal(cqrs_envelope_new("person", stream, "raw", NULL, &env, NULL), CQRS_OK);
  cqrs_event_t *e;
  assert_int_equal(cqrs_unknown_event_new("person.registered", 1, data, env, id, 1, 1, &e, NULL), CQRS_OK);
  cqrs_append_t req = {"person", stream, 0, stream, &e, 1};
  cqrs_append_result_t res;
  assert_int_equal(cqrs_store_append(store, &req, &res, NULL), CQRS_OK);
  cqrs_event_unref(e);
  cqrs_envelope_unref(env);
}

static void test_moved_ciphertext_refused(void **state) {
  fixture_t *fx = *state;
  assert_int_equal(person_register(fx->store, "p1", "c1", "Ada Lovelace", "ada@example.org", 1815, NULL), CQRS_OK);
  seen_t raw = {.n = 0};
  assert_int_equal(cqrs_store_read_sealed(fx->store, 1, 10, keep, &raw, NULL), CQRS_OK);
  const cqrs_unknown_event_t *u = raw.events[0]->payload;
  bson_t data;
  assert_true(bson_init_static(&data, u->data, u->data_len));
  /* The same bytes in another event. */
  append_raw(fx->store, "p9", "aaaaaaaaaaaaaaaaaaaaaaaa", &data);
  seen_t s = {.n = 0};
  cqrs_error_t err;
  assert_int_equal(cqrs_store_read_all(fx->store, 2, 10, keep, &s, &err), CQRS_ECODEC);
  assert_non_null(strstr(err.message, "does not open here"));
  assert_int_equal(s.n, 0);
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(fx->store, &person_type, "p9", &agg, &err), CQRS_ECODEC);
  /* In its own event, but the name's ciphertext under the e-mail's key. */
  bson_iter_t it;
  const uint8_t *name_bin = NULL;
  uint32_t name_len = 0;
  bson_subtype_t sub;
  assert_true(bson_iter_init_find(&it, &data, "name"));
  bson_iter_binary(&it, &sub, &name_len, &name_bin);
  bson_t swapped = BSON_INITIALIZER;
  assert_true(bson_iter_init(&it, &data));
  while (bson_iter_next(&it)) {
    if (!strcmp(bson_iter_key(&it), "email")) bson_append_binary(&swapped, "email", -1, sub, name_bin, name_len);
    else bson_append_iter(&swapped, bson_iter_key(&it), -1, &it);
  }
  append_raw(fx->store, "p8", raw.events[0]->id, &swapped);
  assert_int_equal(cqrs_store_read_all(fx->store, 3, 10, keep, &s, &err), CQRS_ECODEC);
  assert_non_null(strstr(err.message, "'email'"));
  bson_destroy(&swapped);
  seen_free(&raw);
}

/* ---- a lost key store ---- */

static void test_lost_key_store_is_an_error(void **state) {
  fixture_t *fx = *state;
  assert_int_equal(person_register(fx->store, "p1", "c1", "Ada", "ada@example.org", 1815, NULL), CQRS_OK);
  cqrs_keys_t *empty;
  assert_int_equal(cqrs_memory_keys_new(NULL, &empty, NULL), CQRS_OK);
  assert_int_equal(cqrs_store_set_keys(fx->store, empty, fx->reg, NULL), CQRS_OK);
  seen_t s = {.n = 0};
  cqrs_error_t err;
  assert_int_equal(cqrs_store_read_all(fx->store, 1, 10, keep, &s, &err), CQRS_ESTATE);
  assert_non_null(strstr(err.message, "never forgotten"));
  assert_int_equal(s.n, 0);
  assert_int_equal(cqrs_store_set_keys(fx->store, fx->keys, fx->reg, NULL), CQRS_OK);
  cqrs_keys_destroy(empty);
}

/* ---- snapshots ---- */

static bool snapshot_has(cqrs_store_t *store, const char *id, const char *needle, int64_t *version) {
  cqrs_snapshot_t snap;
  bool found = false;
  assert_int_equal(cqrs_store_snapshot_load(store, "person", id, &snap, &found, NULL), CQRS_OK);
  assert_true(found);
  bool has = person_has_bytes(bson_get_data(&snap.state), snap.state.len, needle);
  *version = snap.version;
  bson_destroy(&snap.state);
  return has;
}

static void test_snapshot_sealed_and_replaced(void **state) {
  fixture_t *fx = *state;
  assert_int_equal(person_register(fx->store, "p1", "c1", "Ada Lovelace", "ada@example.org", 1815, NULL), CQRS_OK);
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(fx->store, &person_type, "p1", &agg, NULL), CQRS_OK);
  person_noted_t n = {"p1", "a note"};
  cqrs_cause_t c2 = {"c2", NULL};
  assert_int_equal(cqrs_aggregate_raise(agg, &person_noted, &n, NULL), CQRS_OK);
  assert_int_equal(cqrs_repository_save(fx->store, agg, &c2, NULL, NULL), CQRS_OK);
  cqrs_aggregate_destroy(agg);
  int64_t version = 0;
  assert_false(snapshot_has(fx->store, "p1", "Ada Lovelace", &version));
  assert_int_equal(version, 2);
  /* Loaded from the sealed snapshot. */
  assert_int_equal(cqrs_repository_load(fx->store, &person_type, "p1", &agg, NULL), CQRS_OK);
  const person_state_t *st = cqrs_aggregate_state_const(agg);
  assert_string_equal(st->name, "Ada Lovelace");
  assert_int_equal(st->events, 2);
  /* The forget is recorded on the person: the snapshot is replaced at once
   * (version 3, not the next multiple of two). */
  cqrs_forgotten_t f = {"p1"};
  cqrs_cause_t c3 = {"c3", NULL};
  assert_int_equal(cqrs_keys_forget(fx->keys, "p1", NULL), CQRS_OK);
  assert_int_equal(cqrs_aggregate_raise(agg, &cqrs_forgotten_event_type, &f, NULL), CQRS_OK);
  assert_int_equal(cqrs_repository_save(fx->store, agg, &c3, NULL, NULL), CQRS_OK);
  cqrs_aggregate_destroy(agg);
  assert_false(snapshot_has(fx->store, "p1", "Ada", &version));
  assert_int_equal(version, 3);
  assert_int_equal(cqrs_repository_load(fx->store, &person_type, "p1", &agg, NULL), CQRS_OK);
  st = cqrs_aggregate_state_const(agg);
  assert_string_equal(st->name, CQRS_FORGOTTEN);
  assert_true(st->registered);
  assert_int_equal(cqrs_aggregate_version(agg), 3);
  cqrs_aggregate_destroy(agg);
}

/* ---- exports ---- */

static void test_export_redacts(void **state) {
  fixture_t *fx = *state;
  assert_int_equal(person_register(fx->store, "p1", "c1", "Ada Lovelace", "ada@example.org", 1815, NULL), CQRS_OK);
  seen_t s = {.n = 0};
  assert_int_equal(cqrs_store_read_all(fx->store, 1, 10, keep, &s, NULL), CQRS_OK);
  bson_t doc = BSON_INITIALIZER;
  assert_int_equal(cqrs_event_to_bson(s.events[0], &doc, NULL), CQRS_OK);
  assert_false(person_has_bytes(bson_get_data(&doc), doc.len, "Ada Lovelace"));
  assert_false(person_has_bytes(bson_get_data(&doc), doc.len, "ada@example.org"));
  assert_true(person_has_bytes(bson_get_data(&doc), doc.len, "Lyon"));
  cqrs_event_t *back;
  assert_int_equal(cqrs_event_from_bson(fx->reg, &doc, &back, NULL), CQRS_OK);
  assert_string_equal(((const person_registered_t *)back->payload)->name, CQRS_FORGOTTEN);
  assert_string_equal(((const person_registered_t *)back->payload)->city, "Lyon");
  cqrs_event_unref(back);
  bson_destroy(&doc);
  seen_free(&s);
}

/* ---- key stores ---- */

static const uint8_t master_a[32] = "master key A, thirty-two bytes!";
static const uint8_t master_b[32] = "master key B, thirty-two bytes!";

static void test_master_key_wraps_and_rotates(void **state) {
  (void)state;
  cqrs_registry_t *reg = person_registry();
  test_keys_t *tk = test_keys_new();
  cqrs_keys_options_t o;
  cqrs_keys_options_init(&o);
  o.master_key = master_a;
  cqrs_keys_t *a = test_keys_view(tk, &o);
  cqrs_store_t *store;
  assert_int_equal(cqrs_memory_store_new(&store, NULL), CQRS_OK);
  assert_int_equal(cqrs_store_set_keys(store, a, reg, NULL), CQRS_OK);
  assert_int_equal(person_register(store, "p1", "c1", "Ada", "ada@example.org", 1815, NULL), CQRS_OK);
  cqrs_key_record_t rec;
  assert_true(test_keys_record(tk, "p1", &rec));
  assert_int_equal(rec.state, CQRS_SUBJECT_KEYED);
  assert_int_equal(rec.key_len, 24 + 32 + 16); /* wrapped: nonce, key, tag */
  uint8_t first_wrap[8];
  memcpy(first_wrap, rec.wrap, 8);
  /* Another master key alone does not open it. */
  o.master_key = master_b;
  cqrs_keys_t *b = test_keys_view(tk, &o);
  assert_int_equal(cqrs_store_set_keys(store, b, reg, NULL), CQRS_OK);
  seen_t s = {.n = 0};
  cqrs_error_t err;
  assert_int_equal(cqrs_store_read_all(store, 1, 10, keep, &s, &err), CQRS_ESTATE);
  assert_non_null(strstr(err.message, "master key"));
  /* Given the one before, it opens, and the key is wrapped again with B. */
  o.previous_master_key = master_a;
  cqrs_keys_t *rotated = test_keys_view(tk, &o);
  assert_int_equal(cqrs_store_set_keys(store, rotated, reg, NULL), CQRS_OK);
  assert_int_equal(cqrs_store_read_all(store, 1, 10, keep, &s, &err), CQRS_OK);
  assert_string_equal(((const person_registered_t *)s.events[0]->payload)->name, "Ada");
  seen_free(&s);
  assert_true(test_keys_record(tk, "p1", &rec));
  assert_memory_not_equal(rec.wrap, first_wrap, 8);
  /* From then on B alone opens it. */
  assert_int_equal(cqrs_store_set_keys(store, b, reg, NULL), CQRS_OK);
  assert_int_equal(cqrs_store_read_all(store, 1, 10, keep, &s, &err), CQRS_OK);
  seen_free(&s);
  cqrs_store_destroy(store);
  cqrs_keys_destroy(a);
  cqrs_keys_destroy(b);
  cqrs_keys_destroy(rotated);
  test_keys_free(tk);
  cqrs_registry_destroy(reg);
}

static void test_cache_is_bounded(void **state) {
  (void)state;
  cqrs_registry_t *reg = person_registry();
  test_keys_t *tk = test_keys_new();
  cqrs_keys_options_t o;
  cqrs_keys_options_init(&o);
  o.cache = 2;
  cqrs_keys_t *keys = test_keys_view(tk, &o);
  cqrs_store_t *store;
  assert_int_equal(cqrs_memory_store_new(&store, NULL), CQRS_OK);
  assert_int_equal(cqrs_store_set_keys(store, keys, reg, NULL), CQRS_OK);
  assert_int_equal(person_register(store, "p1", "c1", "A", "a@example.org", 1, NULL), CQRS_OK);
  assert_int_equal(person_register(store, "p2", "c2", "B", "b@example.org", 2, NULL), CQRS_OK);
  seen_t s = {.n = 0};
  int before = test_keys_gets(tk);
  assert_int_equal(cqrs_store_read_all(store, 1, 10, keep, &s, NULL), CQRS_OK);
  seen_free(&s);
  assert_int_equal(test_keys_gets(tk), before); /* both cached */
  assert_int_equal(person_register(store, "p3", "c3", "C", "c@example.org", 3, NULL), CQRS_OK);
  before = test_keys_gets(tk);
  assert_int_equal(cqrs_store_read_all(store, 1, 1, keep, &s, NULL), CQRS_OK); /* p1: evicted */
  seen_free(&s);
  assert_int_equal(test_keys_gets(tk), before + 1);
  cqrs_store_destroy(store);
  cqrs_keys_destroy(keys);
  test_keys_free(tk);
  cqrs_registry_destroy(reg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_table_needs_one_subject),
      cmocka_unit_test(test_no_key_store_stops_writes),
      cmocka_unit_test(test_key_store_down_stops_writes),
      cmocka_unit_test_setup_teardown(test_sealed_at_rest, setup, teardown),
      cmocka_unit_test_setup_teardown(test_forgotten_reads_placeholder, setup, teardown),
      cmocka_unit_test_setup_teardown(test_moved_ciphertext_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lost_key_store_is_an_error, setup, teardown),
      cmocka_unit_test_setup_teardown(test_snapshot_sealed_and_replaced, setup, teardown),
      cmocka_unit_test_setup_teardown(test_export_redacts, setup, teardown),
      cmocka_unit_test(test_master_key_wraps_and_rotates),
      cmocka_unit_test(test_cache_is_bounded),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
