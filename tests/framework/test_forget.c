/* Forgetting through a dispatcher (cqrs_forget, cqrs_context_forget) and
 * personal fields of read-model documents (cqrs_readmodel_add_type). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "person.h"

typedef struct fixture {
  uv_loop_t loop;
  cqrs_registry_t *reg;
  cqrs_store_t *store;
  test_keys_t *tk;
  cqrs_keys_t *keys;
  cqrs_dispatcher_t *d;
  int forgotten_seen;
  char last_subject[CQRS_ID_MAX];
  cqrs_result_t last;
  bool done;
} fixture_t;

typedef struct forget_cmd {
  char id[CQRS_ID_MAX];
} forget_cmd_t;
static const cqrs_field_t forget_fields[] = {CQRS_STRING(forget_cmd_t, id, "id", CQRS_F_REQUIRED), CQRS_FIELDS_END};
static const cqrs_command_type_t person_forget = {.name = "person.forget", .payload_size = sizeof(forget_cmd_t),
                                                  .fields = forget_fields};

/* The domain's own forget: the person records the fact on its stream. */
static cqrs_code_t handle_forget(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)data;
  const forget_cmd_t *c = cqrs_command_payload(cmd);
  cqrs_aggregate_t *agg;
  cqrs_code_t rc = cqrs_context_load(ctx, &person_type, c->id, &agg, err);
  if (rc) return rc;
  if (!((const person_state_t *)cqrs_aggregate_state_const(agg))->registered)
    return cqrs_reject(err, "person.unknown", "no person %s", c->id);
  cqrs_forgotten_t f;
  memset(&f, 0, sizeof f);
  snprintf(f.subject, sizeof f.subject, "%s", c->id);
  if ((rc = cqrs_context_forget(ctx, c->id, err))) return rc;
  return cqrs_aggregate_raise(agg, &cqrs_forgotten_event_type, &f, err);
}

static cqrs_code_t on_forgotten(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)err;
  fixture_t *fx = data;
  fx->forgotten_seen++;
  snprintf(fx->last_subject, sizeof fx->last_subject, "%s", ((const cqrs_forgotten_t *)e->payload)->subject);
  return CQRS_OK;
}

static int setup(void **state) {
  fixture_t *fx = calloc(1, sizeof *fx);
  assert_int_equal(uv_loop_init(&fx->loop), 0);
  fx->reg = person_registry();
  assert_int_equal(cqrs_registry_add_command(fx->reg, &person_forget, NULL), CQRS_OK);
  assert_int_equal(cqrs_memory_store_new(&fx->store, NULL), CQRS_OK);
  fx->tk = test_keys_new();
  fx->keys = test_keys_view(fx->tk, NULL);
  assert_int_equal(cqrs_store_set_keys(fx->store, fx->keys, fx->reg, NULL), CQRS_OK);
  assert_int_equal(person_register(fx->store, "p1", "c1", "Ada Lovelace", "ada@example.org", 1815, NULL), CQRS_OK);
  assert_int_equal(person_register(fx->store, "p2", "c2", "Grace Hopper", "grace@example.org", 1906, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, NULL, &fx->d, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_register(fx->d, &person_forget, handle_forget, NULL, 0, NULL), CQRS_OK);
  static const cqrs_event_type_t *const types[] = {&cqrs_forgotten_event_type, NULL};
  assert_int_equal(cqrs_dispatcher_subscribe(fx->d, "watch", types, on_forgotten, fx, 0, NULL), CQRS_OK);
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  fixture_t *fx = *state;
  if (fx->d) {
    assert_int_equal(cqrs_dispatcher_close(fx->d, NULL, NULL), CQRS_OK);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
  }
  assert_int_equal(uv_loop_close(&fx->loop), 0);
  cqrs_store_destroy(fx->store);
  cqrs_keys_destroy(fx->keys);
  test_keys_free(fx->tk);
  cqrs_registry_destroy(fx->reg);
  free(fx);
  return 0;
}

static void done(const cqrs_result_t *r, void *data) {
  fixture_t *fx = data;
  fx->last = *r;
  fx->last.value = NULL;
  fx->done = true;
}

static void run_forget(fixture_t *fx, const char *subject) {
  fx->done = false;
  assert_int_equal(cqrs_forget(fx->d, subject, done, fx), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_true(fx->done);
}

static bool first(const cqrs_event_t *e, void *data) {
  *(const cqrs_event_t **)data = cqrs_event_ref(e);
  return false;
}

static const person_registered_t *registration(cqrs_store_t *store, const char *id, const cqrs_event_t **e) {
  *e = NULL;
  assert_int_equal(cqrs_store_read_stream(store, "person", id, 1, first, (void *)e, NULL), CQRS_OK);
  assert_non_null(*e);
  return (*e)->payload;
}

static void test_cqrs_forget(void **state) {
  fixture_t *fx = *state;
  run_forget(fx, "p1");
  assert_int_equal(fx->last.error.code, CQRS_OK);
  assert_int_equal(fx->last.events, 1);
  assert_int_equal(fx->forgotten_seen, 1);
  assert_string_equal(fx->last_subject, "p1");
  cqrs_subject_state_t st;
  assert_int_equal(cqrs_keys_state(fx->keys, "p1", &st, NULL), CQRS_OK);
  assert_int_equal(st, CQRS_SUBJECT_FORGOTTEN);
  const cqrs_event_t *e;
  assert_string_equal(registration(fx->store, "p1", &e)->name, CQRS_FORGOTTEN);
  assert_true(cqrs_field_forgotten(e, "email"));
  cqrs_event_unref(e);
  assert_string_equal(registration(fx->store, "p2", &e)->name, "Grace Hopper");
  cqrs_event_unref(e);
  /* Twice: recorded once. */
  run_forget(fx, "p1");
  assert_int_equal(fx->last.error.code, CQRS_OK);
  assert_int_equal(fx->last.events, 0);
  assert_int_equal(fx->forgotten_seen, 1);
  /* Its stream says it. */
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(fx->store, &cqrs_subject_type, "p1", &agg, NULL), CQRS_OK);
  assert_string_equal(((const cqrs_forgotten_t *)cqrs_aggregate_state_const(agg))->subject, "p1");
  cqrs_aggregate_destroy(agg);
  assert_int_equal(cqrs_forget(fx->d, "", done, fx), CQRS_EINVAL);
  assert_int_equal(cqrs_forget(NULL, "p1", done, fx), CQRS_EINVAL);
}

static void send_forget(fixture_t *fx, const char *id) {
  forget_cmd_t c;
  memset(&c, 0, sizeof c);
  snprintf(c.id, sizeof c.id, "%s", id);
  cqrs_command_t *cmd;
  assert_int_equal(cqrs_command_new(&person_forget, &c, &cmd, NULL), CQRS_OK);
  fx->done = false;
  assert_int_equal(cqrs_dispatcher_send(fx->d, cmd, done, fx), CQRS_OK);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_true(fx->done);
}

static void test_context_forget(void **state) {
  fixture_t *fx = *state;
  int64_t head = 0, after = 0;
  assert_int_equal(cqrs_store_head(fx->store, &head, NULL), CQRS_OK);
  /* The key store is down: the command fails and records nothing. */
  test_keys_down(fx->tk, true);
  send_forget(fx, "p2");
  assert_int_equal(fx->last.error.code, CQRS_ESTORE);
  test_keys_down(fx->tk, false);
  assert_int_equal(cqrs_store_head(fx->store, &after, NULL), CQRS_OK);
  assert_int_equal(after, head);
  cqrs_subject_state_t st;
  assert_int_equal(cqrs_keys_state(fx->keys, "p2", &st, NULL), CQRS_OK);
  assert_int_equal(st, CQRS_SUBJECT_KEYED);
  send_forget(fx, "p2");
  assert_int_equal(fx->last.error.code, CQRS_OK);
  assert_int_equal(fx->forgotten_seen, 1);
  assert_int_equal(cqrs_keys_state(fx->keys, "p2", &st, NULL), CQRS_OK);
  assert_int_equal(st, CQRS_SUBJECT_FORGOTTEN);
  /* The person applied it, and its state says so. */
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(fx->store, &person_type, "p2", &agg, NULL), CQRS_OK);
  assert_string_equal(((const person_state_t *)cqrs_aggregate_state_const(agg))->email, CQRS_FORGOTTEN);
  assert_int_equal(cqrs_aggregate_version(agg), 2);
  cqrs_aggregate_destroy(agg);
  send_forget(fx, "nobody");
  assert_int_equal(fx->last.error.code, CQRS_EREJECTED);
}

static void test_forget_without_key_store(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  cqrs_registry_t *reg = person_registry();
  cqrs_store_t *store;
  assert_int_equal(cqrs_memory_store_new(&store, NULL), CQRS_OK);
  cqrs_dispatcher_t *d;
  assert_int_equal(cqrs_dispatcher_new(&loop, reg, store, NULL, &d, NULL), CQRS_OK);
  fixture_t fx;
  memset(&fx, 0, sizeof fx);
  assert_int_equal(cqrs_forget(d, "p1", done, &fx), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_true(fx.done);
  assert_int_equal(fx.last.error.code, CQRS_ESTATE);
  assert_int_equal(cqrs_dispatcher_close(d, NULL, NULL), CQRS_OK);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  cqrs_store_destroy(store);
  cqrs_registry_destroy(reg);
}

/* ---- read models ---- */

/* A read model that forwards to an inner one (borrowed), so that the test
 * sees what is stored: the outer one seals, the inner one keeps it. */
static cqrs_code_t fw_put(void *impl, const char *coll, const char *id, const bson_t *doc, int64_t position,
                          bool *applied, cqrs_error_t *err) {
  return cqrs_readmodel_put(impl, coll, id, doc, position, applied, err);
}
static cqrs_code_t fw_patch(void *impl, const char *coll, const char *id, const bson_t *set, int64_t position,
                            bool *applied, cqrs_error_t *err) {
  return cqrs_readmodel_patch(impl, coll, id, set, position, applied, err);
}
static cqrs_code_t fw_patch_where(void *impl, const char *coll, const bson_t *filter, const bson_t *set,
                                  int64_t position, size_t *count, cqrs_error_t *err) {
  return cqrs_readmodel_patch_where(impl, coll, filter, set, position, count, err);
}
static cqrs_code_t fw_get(void *impl, const char *coll, const char *id, bson_t *out, bool *found, cqrs_error_t *err) {
  return cqrs_readmodel_get(impl, coll, id, out, found, err);
}
static cqrs_code_t fw_find(void *impl, const char *coll, const cqrs_find_t *q, cqrs_doc_visit_cb cb, void *data,
                           cqrs_error_t *err) {
  return cqrs_readmodel_find(impl, coll, q, cb, data, err);
}
static const cqrs_readmodel_ops_t forward_ops = {.put = fw_put, .patch = fw_patch, .patch_where = fw_patch_where,
                                                 .get = fw_get, .find = fw_find};

typedef struct customer_doc {
  char name[64];
  char email[64];
} customer_doc_t;
typedef struct invoice_customer {
  char id[CQRS_ID_MAX];
  char name[64];
  char email[64];
} invoice_customer_t;
typedef struct invoice_doc {
  invoice_customer_t customer;
} invoice_doc_t;

static const cqrs_field_t customer_fields[] = {CQRS_STRING(customer_doc_t, name, "name", CQRS_F_PERSONAL),
                                               CQRS_STRING(customer_doc_t, email, "email", CQRS_F_PERSONAL),
                                               CQRS_SUBJECT_OWNER, CQRS_FIELDS_END};
static const cqrs_field_t invoice_customer_fields[] = {
    CQRS_STRING(invoice_customer_t, id, "id", CQRS_F_SUBJECT),
    CQRS_STRING(invoice_customer_t, name, "name", CQRS_F_PERSONAL),
    CQRS_STRING(invoice_customer_t, email, "email", CQRS_F_PERSONAL), CQRS_FIELDS_END};
static const cqrs_field_t invoice_fields[] = {
    CQRS_DOC(invoice_doc_t, customer, "customer", invoice_customer_fields, 0), CQRS_FIELDS_END};
static const cqrs_doc_type_t customers_type = {"customers", customer_fields};
static const cqrs_doc_type_t invoices_type = {"invoices", invoice_fields};

static bool dump_has(const bson_t *doc, void *data) {
  const char **needle = data;
  if (person_has_bytes(bson_get_data(doc), doc->len, needle[0])) needle[1] = "found";
  return true;
}

/* Whether a document of `coll` in the inner read model holds `needle`. */
static bool stored(const cqrs_readmodel_t *inner, const char *coll, const char *needle) {
  const char *arg[2] = {needle, NULL};
  cqrs_find_t q = {0};
  assert_int_equal(cqrs_readmodel_find(inner, coll, &q, dump_has, arg, NULL), CQRS_OK);
  return arg[1] != NULL;
}

static const char *str_at(const bson_t *doc, const char *path) {
  bson_iter_t it, v;
  if (!bson_iter_init(&it, doc) || !bson_iter_find_descendant(&it, path, &v) || !BSON_ITER_HOLDS_UTF8(&v)) return NULL;
  return bson_iter_utf8(&v, NULL);
}

static void test_readmodel_sealed(void **state) {
  (void)state;
  cqrs_keys_t *keys;
  assert_int_equal(cqrs_memory_keys_new(NULL, &keys, NULL), CQRS_OK);
  cqrs_readmodel_t *inner, *rm;
  assert_int_equal(cqrs_memory_readmodel_new(&inner, NULL), CQRS_OK);
  assert_int_equal(cqrs_readmodel_new(&forward_ops, inner, &rm, NULL), CQRS_OK);
  assert_int_equal(cqrs_readmodel_add_type(rm, &customers_type, keys, NULL), CQRS_OK);
  assert_int_equal(cqrs_readmodel_add_type(rm, &invoices_type, keys, NULL), CQRS_OK);
  assert_int_equal(cqrs_readmodel_add_type(rm, &invoices_type, keys, NULL), CQRS_OK); /* the same: nothing */
  const cqrs_doc_type_t other = {"invoices", customer_fields};
  assert_int_equal(cqrs_readmodel_add_type(rm, &other, keys, NULL), CQRS_EDUPLICATE);
  bson_t *c1 = BCON_NEW("name", "Ada Lovelace", "email", "ada@example.org");
  bson_t *c2 = BCON_NEW("name", "Grace Hopper", "email", "grace@example.org");
  bson_t *i1 = BCON_NEW("number", "INV-1", "customer", "{", "id", "p1", "name", "Ada Lovelace", "email",
                        "ada@example.org", "}");
  assert_int_equal(cqrs_readmodel_put(rm, "customers", "p1", c1, 1, NULL, NULL), CQRS_OK);
  assert_int_equal(cqrs_readmodel_put(rm, "customers", "p2", c2, 2, NULL, NULL), CQRS_OK);
  assert_int_equal(cqrs_readmodel_put(rm, "invoices", "i1", i1, 3, NULL, NULL), CQRS_OK);
  assert_false(stored(inner, "customers", "Ada Lovelace"));
  assert_false(stored(inner, "invoices", "ada@example.org"));
  assert_true(stored(inner, "invoices", "INV-1"));
  bson_t out;
  bool found;
  assert_int_equal(cqrs_readmodel_get(rm, "invoices", "i1", &out, &found, NULL), CQRS_OK);
  assert_true(found);
  assert_string_equal(str_at(&out, "customer.name"), "Ada Lovelace");
  bson_destroy(&out);
  /* A patch of many, its subject in the filter; of one, its subject stored. */
  bson_t *filter = BCON_NEW("customer.id", "p1");
  bson_t *set = BCON_NEW("customer.email", "ada@lovelace.org");
  size_t count = 0;
  assert_int_equal(cqrs_readmodel_patch_where(rm, "invoices", filter, set, 4, &count, NULL), CQRS_OK);
  assert_int_equal(count, 1);
  assert_false(stored(inner, "invoices", "ada@lovelace.org"));
  bson_t *rename = BCON_NEW("customer.name", "Augusta Ada King");
  assert_int_equal(cqrs_readmodel_patch(rm, "invoices", "i1", rename, 5, NULL, NULL), CQRS_OK);
  assert_false(stored(inner, "invoices", "Augusta"));
  assert_int_equal(cqrs_readmodel_get(rm, "invoices", "i1", &out, &found, NULL), CQRS_OK);
  assert_string_equal(str_at(&out, "customer.email"), "ada@lovelace.org");
  assert_string_equal(str_at(&out, "customer.name"), "Augusta Ada King");
  bson_destroy(&out);
  /* Personal data with no subject to seal it for is refused. */
  bson_t *anyone = BCON_NEW("number", "INV-1");
  cqrs_error_t err;
  assert_int_equal(cqrs_readmodel_patch_where(rm, "invoices", anyone, set, 6, &count, &err), CQRS_EINVAL);
  assert_non_null(strstr(err.message, "no subject"));
  /* Forgotten: placeholders, the others as they were. */
  assert_int_equal(cqrs_keys_forget(keys, "p1", NULL), CQRS_OK);
  assert_int_equal(cqrs_readmodel_get(rm, "customers", "p1", &out, &found, NULL), CQRS_OK);
  assert_string_equal(str_at(&out, "name"), CQRS_FORGOTTEN);
  bson_destroy(&out);
  assert_int_equal(cqrs_readmodel_get(rm, "invoices", "i1", &out, &found, NULL), CQRS_OK);
  assert_string_equal(str_at(&out, "customer.email"), CQRS_FORGOTTEN);
  assert_string_equal(str_at(&out, "number"), "INV-1");
  bson_destroy(&out);
  assert_int_equal(cqrs_readmodel_get(rm, "customers", "p2", &out, &found, NULL), CQRS_OK);
  assert_string_equal(str_at(&out, "email"), "grace@example.org");
  bson_destroy(&out);
  /* Written for a forgotten subject: stored forgotten. */
  assert_int_equal(cqrs_readmodel_put(rm, "customers", "p1", c1, 7, NULL, NULL), CQRS_OK);
  assert_false(stored(inner, "customers", "Ada"));
  bson_destroy(anyone);
  bson_destroy(rename);
  bson_destroy(set);
  bson_destroy(filter);
  bson_destroy(i1);
  bson_destroy(c2);
  bson_destroy(c1);
  cqrs_readmodel_destroy(rm);
  cqrs_readmodel_destroy(inner);
  cqrs_keys_destroy(keys);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_cqrs_forget, setup, teardown),
      cmocka_unit_test_setup_teardown(test_context_forget, setup, teardown),
      cmocka_unit_test(test_forget_without_key_store),
      cmocka_unit_test(test_readmodel_sealed),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
