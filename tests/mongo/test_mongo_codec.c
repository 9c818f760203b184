/* The MongoDB store writes and reads its events with the framework's codec
 * (cqrs_event_body_to_bson / _from_bson, the id as "eventId"): what it
 * stores is what the codec writes, byte for byte; what it reads back is the
 * event it was given, in every field, for known types, unknown types and
 * older schema versions; and a commit written the way the store wrote them
 * before the codec was shared, built here by hand, still reads back. */
#include <cqrs/backend.h>

#include "framework/ledger.h"
#include "framework/same_event.h"
#include "raw_commit.h"

typedef struct fx {
  cqrs_registry_t *wreg, *rreg; /* the writer's (schema 1) and the reader's (schema 2) */
  cqrs_mongo_t *wm, *rm;        /* two connections to one database */
  cqrs_store_t *w, *r;
  raw_events_t raw;
} fx_t;

static int setup(void **state) {
  if (!test_mongo_uri()) {
    *state = NULL;
    return 0;
  }
  fx_t *fx = calloc(1, sizeof *fx);
  fx->wreg = ledger_registry();
  fx->rreg = ledger_registry();
  assert_int_equal(cqrs_registry_add_event(fx->wreg, &ledger_renamed_v1, NULL), CQRS_OK);
  assert_int_equal(cqrs_registry_add_event(fx->rreg, &ledger_renamed, NULL), CQRS_OK);
  assert_int_equal(cqrs_registry_add_upcaster(fx->rreg, "ledger.renamed", 1, ledger_renamed_upcast, NULL), CQRS_OK);
  fx->wm = test_mongo_open(fx->wreg, NULL, NULL);
  cqrs_mongo_options_t o = {.database = cqrs_mongo_database(fx->wm)};
  cqrs_error_t err;
  if (cqrs_mongo_new(test_mongo_uri(), &o, fx->rreg, NULL, &fx->rm, &err)) fail_msg("%s", err.message);
  assert_int_equal(cqrs_mongo_store_new(fx->wm, &fx->w, NULL), CQRS_OK);
  assert_int_equal(cqrs_mongo_store_new(fx->rm, &fx->r, NULL), CQRS_OK);
  raw_events_open(&fx->raw, fx->wm);
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  fx_t *fx = *state;
  if (!fx) return 0;
  raw_events_close(&fx->raw);
  cqrs_store_destroy(fx->r);
  cqrs_store_destroy(fx->w);
  cqrs_mongo_destroy(fx->rm);
  test_mongo_close(fx->wm);
  cqrs_registry_destroy(fx->rreg);
  cqrs_registry_destroy(fx->wreg);
  free(fx);
  return 0;
}

/* The stored commit of stream `id`, straight from the collection. */
static bson_t *stored_commit(fx_t *fx, const char *id) {
  bson_t *filter = BCON_NEW("aggregateId", BCON_UTF8(id));
  mongoc_cursor_t *c = mongoc_collection_find_with_opts(fx->raw.coll, filter, NULL, NULL);
  const bson_t *doc;
  bson_t *out = NULL;
  if (mongoc_cursor_next(c, &doc)) out = bson_copy(doc);
  bson_error_t e;
  if (mongoc_cursor_error(c, &e)) fail_msg("find: %s", e.message);
  mongoc_cursor_destroy(c);
  bson_destroy(filter);
  assert_non_null(out);
  return out;
}

/* Event `i` of the commit's "events" (borrowed from `commit`). */
static void commit_event(const bson_t *commit, int i, bson_t *out) {
  char path[32];
  snprintf(path, sizeof path, "events.%d", i);
  bson_iter_t it, ev;
  assert_true(bson_iter_init(&it, commit));
  assert_true(bson_iter_find_descendant(&it, path, &ev));
  assert_true(BSON_ITER_HOLDS_DOCUMENT(&ev));
  uint32_t len;
  const uint8_t *raw;
  bson_iter_document(&ev, &len, &raw);
  assert_true(bson_init_static(out, raw, len));
}

typedef struct got {
  cqrs_event_t *e[8];
  size_t n;
} got_t;

static bool keep(const cqrs_event_t *e, void *data) {
  got_t *g = data;
  assert_true(g->n < 8);
  g->e[g->n++] = (cqrs_event_t *)cqrs_event_ref(e);
  return true;
}

static void got_clear(got_t *g) {
  for (size_t i = 0; i < g->n; i++) cqrs_event_unref(g->e[i]);
  g->n = 0;
}

static const cqrs_unknown_event_t *placeholder(const cqrs_event_t *e) {
  assert_ptr_equal(e->type, &cqrs_unknown_event_type);
  return e->payload;
}

/* The reader's view of the writer's schema-1 event: upcast, all else the same. */
static void assert_upcast(const cqrs_event_t *v1, const cqrs_event_t *v2) {
  assert_ptr_equal(v2->type, &ledger_renamed);
  assert_int_equal(v2->schema_version, 2);
  const ledger_renamed_t *p = v2->payload;
  assert_string_equal(p->name, ((const ledger_renamed_v1_t *)v1->payload)->title);
  assert_string_equal(p->reason, "unknown");
  assert_string_equal(v2->id, v1->id);
  assert_int_equal(v2->version, v1->version);
  assert_int_equal(v2->timestamp, v1->timestamp);
  assert_int_equal(v2->position, v1->position);
  assert_string_equal(cqrs_event_aggregate_id(v2), cqrs_event_aggregate_id(v1));
  assert_string_equal(cqrs_event_causation_id(v2), cqrs_event_causation_id(v1));
  assert_string_equal(cqrs_event_correlation_id(v2), cqrs_event_correlation_id(v1));
}

/* One commit of four events: two known to both sides, one the reader
 * upcasts, one neither knows (a placeholder, as a feed would pass it on). */
static void test_stored_as_the_codec_writes_and_read_back_whole(void **state) {
  fx_t *fx = *state;
  if (!fx) skip();
  cqrs_envelope_t *env;
  assert_int_equal(cqrs_envelope_new("ledger", "acc-1", "cmd-1", "conv-1", &env, NULL), CQRS_OK);
  ledger_opened_t opened = {"Ada"};
  ledger_amount_t credit = {42};
  ledger_renamed_v1_t title = {"Savings"};
  bson_t *raw = BCON_NEW("by", BCON_UTF8("auditor"), "score", BCON_DOUBLE(0.5), "n", BCON_INT32(3));
  cqrs_event_t *e[4];
  assert_int_equal(cqrs_event_new(&ledger_opened, env, NULL, 1, 1700000000001, &opened, &e[0], NULL), CQRS_OK);
  assert_int_equal(cqrs_event_new(&ledger_credited, env, NULL, 2, 1700000000002, &credit, &e[1], NULL), CQRS_OK);
  assert_int_equal(cqrs_event_new(&ledger_renamed_v1, env, NULL, 3, 1700000000003, &title, &e[2], NULL), CQRS_OK);
  assert_int_equal(cqrs_unknown_event_new("ledger.audited", 7, raw, env, NULL, 4, 1700000000004, &e[3], NULL),
                   CQRS_OK);
  cqrs_envelope_unref(env);
  cqrs_append_t req = {"ledger", "acc-1", 0, "cmd-1", e, 4};
  cqrs_append_result_t res;
  cqrs_error_t err;
  if (cqrs_store_append(fx->w, &req, &res, &err)) fail_msg("append: %s", err.message);

  /* Stored: each event is the codec's body, byte for byte. */
  bson_t *commit = stored_commit(fx, "acc-1");
  for (int i = 0; i < 4; i++) {
    bson_t stored, body = BSON_INITIALIZER;
    commit_event(commit, i, &stored);
    assert_int_equal(cqrs_event_body_to_bson(e[i], "eventId", &body, NULL), CQRS_OK);
    if (!bson_equal(&stored, &body)) fail_msg("event %d is not stored as the codec writes it", i);
    bson_destroy(&body);
  }
  bson_destroy(commit);

  /* Read back by the writer: every field of every event. */
  got_t g = {{0}, 0};
  if (cqrs_store_read_all(fx->w, 1, 100, keep, &g, &err)) fail_msg("read_all: %s", err.message);
  assert_int_equal(g.n, 4);
  for (int i = 0; i < 4; i++) assert_same_event(g.e[i], e[i]);
  assert_int_equal(placeholder(g.e[3])->schema_version, 7);
  got_clear(&g);
  /* A stream's load cannot pass an event by: the unknown type is an error. */
  assert_int_equal(cqrs_store_read_stream(fx->w, "ledger", "acc-1", 1, keep, &g, &err), CQRS_EUNKNOWN_TYPE);
  assert_non_null(strstr(err.message, "ledger.audited"));
  assert_int_equal(g.n, 3);
  for (int i = 0; i < 3; i++) assert_same_event(g.e[i], e[i]);
  got_clear(&g);

  /* Read back by the reader: schema 1 upcast, the rest the same. */
  if (cqrs_store_read_all(fx->r, 1, 100, keep, &g, &err)) fail_msg("read_all: %s", err.message);
  assert_int_equal(g.n, 4);
  assert_same_event(g.e[0], e[0]);
  assert_same_event(g.e[1], e[1]);
  assert_upcast(e[2], g.e[2]);
  assert_same_event(g.e[3], e[3]);
  /* Appended again by the reader, the upcast event is stored at its
   * current schema, and reads back the same. */
  cqrs_envelope_t *env2;
  assert_int_equal(cqrs_envelope_new("ledger", "acc-2", "cmd-2", NULL, &env2, NULL), CQRS_OK);
  cqrs_event_t *moved;
  assert_int_equal(
      cqrs_event_new(&ledger_renamed, env2, g.e[2]->id, 1, g.e[2]->timestamp, g.e[2]->payload, &moved, NULL), CQRS_OK);
  cqrs_envelope_unref(env2);
  cqrs_append_t again = {"ledger", "acc-2", 0, "cmd-2", &moved, 1};
  if (cqrs_store_append(fx->r, &again, &res, &err)) fail_msg("append: %s", err.message);
  bson_t *commit2 = stored_commit(fx, "acc-2"), stored;
  commit_event(commit2, 0, &stored);
  bson_iter_t it;
  assert_true(bson_iter_init_find(&it, &stored, "schemaVersion"));
  assert_int_equal(bson_iter_int32(&it), 2);
  got_t up = {{0}, 0};
  if (cqrs_store_read_stream(fx->r, "ledger", "acc-2", 1, keep, &up, &err)) fail_msg("read: %s", err.message);
  assert_int_equal(up.n, 1);
  assert_same_event(up.e[0], moved);
  got_clear(&up);
  bson_destroy(commit2);
  cqrs_event_unref(moved);
  got_clear(&g);
  for (int i = 0; i < 4; i++) cqrs_event_unref(e[i]);
  bson_destroy(raw);
}

static void assert_event(const cqrs_event_t *e, const char *id, int64_t version, int64_t at, int64_t position,
                         const char *stream, const char *cmd) {
  assert_string_equal(e->id, id);
  assert_int_equal(e->version, version);
  assert_int_equal(e->timestamp, at);
  assert_int_equal(e->position, position);
  assert_string_equal(cqrs_event_aggregate_type(e), "ledger");
  assert_string_equal(cqrs_event_aggregate_id(e), stream);
  assert_string_equal(cqrs_event_causation_id(e), cmd);
  assert_string_equal(cqrs_event_correlation_id(e), "conv-old");
}

/* raw_commit.h writes, by hand, what build_commit wrote before the store
 * used the framework's codec. */
static void test_a_commit_in_the_old_format_still_reads(void **state) {
  fx_t *fx = *state;
  if (!fx) skip();
  bson_t *credit = BCON_NEW("amount", BCON_INT64(42)), *title = BCON_NEW("title", BCON_UTF8("Savings"));
  bson_t *audit = BCON_NEW("by", BCON_UTF8("auditor"));
  /* Commit 1: a credit and a schema-1 rename of acc-1, positions 1 and 2. */
  raw_commit_t one = {1, "ledger.credited", 1000, 1, "acc-1", 2, 1, 2, "cmd-old-1", "conv-old"};
  bson_t c1 = BSON_INITIALIZER, events;
  raw_commit_begin(&c1, &events, &one);
  raw_commit_event(&events, 0, "0123456789abcdef01234567", "ledger.credited", 1, 1, 1000, credit);
  raw_commit_event(&events, 1, "0123456789abcdef01234568", "ledger.renamed", 1, 2, 1001, title);
  raw_commit_insert(&fx->raw, &c1, &events);
  /* Commit 2: a type nobody here knows, acc-2 at position 3. */
  raw_commit_t two = {2, "ledger.audited", 2000, 1, "acc-2", 1, 3, 3, "cmd-old-2", "conv-old"};
  bson_t c2 = BSON_INITIALIZER;
  raw_commit_begin(&c2, &events, &two);
  raw_commit_event(&events, 0, "0123456789abcdef01234569", "ledger.audited", 4, 1, 2000, audit);
  raw_commit_insert(&fx->raw, &c2, &events);

  got_t g = {{0}, 0};
  cqrs_error_t err;
  if (cqrs_store_read_stream(fx->r, "ledger", "acc-1", 1, keep, &g, &err)) fail_msg("read: %s", err.message);
  assert_int_equal(g.n, 2);
  got_clear(&g);
  if (cqrs_store_read_all(fx->r, 1, 100, keep, &g, &err)) fail_msg("read_all: %s", err.message);
  assert_int_equal(g.n, 3);
  assert_ptr_equal(g.e[0]->type, &ledger_credited);
  assert_int_equal(((const ledger_amount_t *)g.e[0]->payload)->amount, 42);
  assert_event(g.e[0], "0123456789abcdef01234567", 1, 1000, 1, "acc-1", "cmd-old-1");
  assert_ptr_equal(g.e[1]->type, &ledger_renamed);
  assert_string_equal(((const ledger_renamed_t *)g.e[1]->payload)->name, "Savings");
  assert_string_equal(((const ledger_renamed_t *)g.e[1]->payload)->reason, "unknown");
  assert_event(g.e[1], "0123456789abcdef01234568", 2, 1001, 2, "acc-1", "cmd-old-1");
  const cqrs_unknown_event_t *u = placeholder(g.e[2]);
  assert_string_equal(u->type, "ledger.audited");
  assert_int_equal(u->schema_version, 4);
  assert_int_equal(u->data_len, audit->len);
  assert_memory_equal(u->data, bson_get_data(audit), audit->len);
  assert_event(g.e[2], "0123456789abcdef01234569", 1, 2000, 3, "acc-2", "cmd-old-2");
  int64_t head;
  assert_int_equal(cqrs_store_head(fx->r, &head, NULL), CQRS_OK);
  assert_int_equal(head, 3);

  /* The writer stores the same events today in the same bytes: acc-1's two
   * events again, as acc-3 (commit 3, positions 4 and 5). */
  cqrs_envelope_t *env;
  assert_int_equal(cqrs_envelope_new("ledger", "acc-3", "cmd-new", "conv-old", &env, NULL), CQRS_OK);
  ledger_amount_t a = {42};
  ledger_renamed_v1_t t = {"Savings"};
  cqrs_event_t *e[2];
  assert_int_equal(cqrs_event_new(&ledger_credited, env, "0123456789abcdef01234567", 1, 1000, &a, &e[0], NULL),
                   CQRS_OK);
  assert_int_equal(cqrs_event_new(&ledger_renamed_v1, env, "0123456789abcdef01234568", 2, 1001, &t, &e[1], NULL), CQRS_OK);
  cqrs_append_t req = {"ledger", "acc-3", 0, "cmd-new", e, 2};
  cqrs_append_result_t res;
  if (cqrs_store_append(fx->w, &req, &res, &err)) fail_msg("append: %s", err.message);
  bson_t *c3 = stored_commit(fx, "acc-3");
  bson_iter_t old_it, new_it;
  assert_true(bson_iter_init_find(&old_it, &c1, "events") && bson_iter_init_find(&new_it, c3, "events"));
  uint32_t old_len, new_len;
  const uint8_t *old_raw, *new_raw;
  bson_iter_array(&old_it, &old_len, &old_raw);
  bson_iter_array(&new_it, &new_len, &new_raw);
  assert_int_equal(new_len, old_len);
  assert_memory_equal(new_raw, old_raw, old_len);
  /* And the commit's own keys, in the same order. */
  bson_iter_t ki, kj;
  assert_true(bson_iter_init(&ki, &c1) && bson_iter_init(&kj, c3));
  while (bson_iter_next(&ki)) {
    assert_true(bson_iter_next(&kj));
    assert_string_equal(bson_iter_key(&kj), bson_iter_key(&ki));
    assert_int_equal(bson_iter_type(&kj), bson_iter_type(&ki));
  }
  assert_false(bson_iter_next(&kj));
  bson_destroy(c3);
  for (int i = 0; i < 2; i++) cqrs_event_unref(e[i]);
  cqrs_envelope_unref(env);
  got_clear(&g);
  bson_destroy(&c2);
  bson_destroy(&c1);
  bson_destroy(audit);
  bson_destroy(title);
  bson_destroy(credit);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_stored_as_the_codec_writes_and_read_back_whole, setup, teardown),
      cmocka_unit_test_setup_teardown(test_a_commit_in_the_old_format_still_reads, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
