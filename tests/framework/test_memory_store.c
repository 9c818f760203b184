#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "ledger.h"
#include "store_conformance.h"

static cqrs_store_t *create(const cqrs_registry_t *reg, void *data) {
  (void)reg;
  (void)data;
  cqrs_store_t *s = NULL;
  cqrs_memory_store_new(&s, NULL);
  return s;
}

static void dispose(cqrs_store_t *s, void *data) {
  (void)data;
  cqrs_store_destroy(s);
}

static void test_overhead_per_event_is_bounded(void **state) {
  (void)state;
  cqrs_store_t *s = NULL;
  cqrs_memory_store_new(&s, NULL);
  size_t empty = cqrs_memory_store_overhead(s);
  ledger_fill(s, &ledger_type, "big", 20000);
  size_t per_event = (cqrs_memory_store_overhead(s) - empty) / 20000;
  assert_true(per_event > 0);
  assert_true(per_event <= 256);
  cqrs_store_destroy(s);
  assert_int_equal(cqrs_memory_store_overhead(NULL), 0);
}

typedef struct copies {
  const cqrs_event_t *e[8];
  size_t n;
} copies_t;

static bool take(const cqrs_event_t *e, void *data) {
  copies_t *c = data;
  if (c->n < 8) c->e[c->n++] = cqrs_event_ref(e);
  return true;
}

static void copies_clear(copies_t *c) {
  for (size_t i = 0; i < c->n; i++) cqrs_event_unref(c->e[i]);
  c->n = 0;
}

static void assert_same_event(const cqrs_event_t *a, const cqrs_event_t *b) {
  assert_ptr_equal(a->type, b->type);
  assert_int_equal(a->version, b->version);
  assert_int_equal(a->position, b->position);
  assert_int_equal(a->timestamp, b->timestamp);
  assert_int_equal(a->schema_version, b->schema_version);
  assert_string_equal(a->id, b->id);
  assert_string_equal(cqrs_event_aggregate_type(a), cqrs_event_aggregate_type(b));
  assert_string_equal(cqrs_event_aggregate_id(a), cqrs_event_aggregate_id(b));
  assert_string_equal(cqrs_event_causation_id(a), cqrs_event_causation_id(b));
  assert_string_equal(cqrs_event_correlation_id(a), cqrs_event_correlation_id(b));
  if (a->type == &cqrs_unknown_event_type) {
    const cqrs_unknown_event_t *u = a->payload, *v = b->payload;
    assert_string_equal(u->type, v->type);
    assert_int_equal(u->data_len, v->data_len);
    assert_memory_equal(u->data, v->data, u->data_len);
  } else {
    assert_memory_equal(a->payload, b->payload, a->type->payload_size);
  }
}

typedef struct expect {
  cqrs_event_t **want;
  size_t n;
} expect_t;

/* Compares without keeping: the store may build the next event in the same
 * block. */
static bool compare(const cqrs_event_t *e, void *data) {
  expect_t *x = data;
  assert_same_event(e, x->want[x->n++]);
  return true;
}

/* The store keeps events in a compact form and builds them again on read:
 * every field comes back, whatever the ids (generated or not), the
 * envelopes (several in one commit, a correlation of its own, a command id
 * that is not the causation id), the payloads (all zero, a high last byte,
 * trailing zeros), and for what the form cannot say (an unknown type's raw
 * document, an envelope of another stream). An event kept from a read
 * outlives the store. */
static void test_events_read_back_exactly(void **state) {
  (void)state;
  cqrs_store_t *s = NULL;
  assert_int_equal(cqrs_memory_store_new(&s, NULL), CQRS_OK);
  cqrs_envelope_t *env1, *env2, *other;
  assert_int_equal(cqrs_envelope_new("ledger", "x", "cause-1", "conversation-9", &env1, NULL), CQRS_OK);
  assert_int_equal(cqrs_envelope_new("ledger", "x", "cause-2", NULL, &env2, NULL), CQRS_OK);
  assert_int_equal(cqrs_envelope_new("ledger", "elsewhere", "cause-1", NULL, &other, NULL), CQRS_OK);
  ledger_opened_t opened = {"Ann"};
  ledger_amount_t zero = {0}, high = {INT64_MIN}, odd = {0x1234};
  bson_t raw = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&raw, "auditor", "Bo");
  cqrs_event_t *ev[6];
  assert_int_equal(cqrs_event_new(&ledger_opened, env1, NULL, 1, 1700000000001, &opened, &ev[0], NULL), CQRS_OK);
  assert_int_equal(cqrs_event_new(&ledger_credited, env1, "an id of my own", 2, 1700000000002, &zero, &ev[1], NULL),
                   CQRS_OK);
  assert_int_equal(cqrs_event_new(&ledger_credited, env2, NULL, 3, -5, &high, &ev[2], NULL), CQRS_OK);
  assert_int_equal(cqrs_event_new(&ledger_debited, other, "x", 4, 0, &odd, &ev[3], NULL), CQRS_OK);
  assert_int_equal(cqrs_unknown_event_new("ledger.audited", 7, &raw, env2, NULL, 5, 9, &ev[4], NULL), CQRS_OK);
  assert_int_equal(cqrs_event_new(&ledger_credited, env1, NULL, 6, 10, &odd, &ev[5], NULL), CQRS_OK);
  cqrs_append_t req = {"ledger", "x", 0, "the-command", ev, 6};
  cqrs_append_result_t res;
  assert_int_equal(cqrs_store_append(s, &req, &res, NULL), CQRS_OK);
  assert_false(res.duplicate);
  assert_int_equal(res.last_position, 6);
  copies_t c = {0};
  assert_int_equal(cqrs_store_read_stream(s, "ledger", "x", 1, take, &c, NULL), CQRS_OK);
  assert_int_equal(c.n, 6);
  for (size_t i = 0; i < 6; i++) assert_same_event(c.e[i], ev[i]);
  copies_clear(&c);
  assert_int_equal(cqrs_store_read_all(s, 2, 100, take, &c, NULL), CQRS_OK);
  assert_int_equal(c.n, 5);
  for (size_t i = 0; i < 5; i++) assert_same_event(c.e[i], ev[i + 1]);
  copies_clear(&c);
  expect_t x = {ev, 0};
  assert_int_equal(cqrs_store_read_stream(s, "ledger", "x", 1, compare, &x, NULL), CQRS_OK);
  assert_int_equal(x.n, 6);
  x.n = 0;
  assert_int_equal(cqrs_store_read_all(s, 1, 6, compare, &x, NULL), CQRS_OK);
  assert_int_equal(x.n, 6);
  /* The command id, not the causation id, makes a later append a duplicate. */
  cqrs_event_t *again;
  assert_int_equal(cqrs_event_new(&ledger_credited, env1, NULL, 1, 11, &odd, &again, NULL), CQRS_OK);
  cqrs_append_t dup = {"ledger", "y", 0, "the-command", &again, 1};
  assert_int_equal(cqrs_store_append(s, &dup, &res, NULL), CQRS_OK);
  assert_true(res.duplicate);
  dup.command_id = "cause-1";
  assert_int_equal(cqrs_store_append(s, &dup, &res, NULL), CQRS_OK);
  assert_false(res.duplicate);
  assert_int_equal(res.last_position, 7);
  cqrs_event_unref(again);
  assert_int_equal(cqrs_store_read_stream(s, "ledger", "x", 6, take, &c, NULL), CQRS_OK);
  assert_int_equal(c.n, 1);
  cqrs_store_destroy(s);
  assert_same_event(c.e[0], ev[5]);
  copies_clear(&c);
  for (size_t i = 0; i < 6; i++) cqrs_event_unref(ev[i]);
  /* What follows the NUL of a string that ends the payload means nothing:
   * it reads back as zeros, as after a trip through BSON. */
  assert_int_equal(cqrs_memory_store_new(&s, NULL), CQRS_OK);
  ledger_opened_t messy;
  memset(&messy, 'z', sizeof messy);
  memcpy(messy.owner, "Ann", 4);
  assert_int_equal(cqrs_event_new(&ledger_opened, env1, NULL, 1, 1, &messy, &ev[0], NULL), CQRS_OK);
  cqrs_append_t one = {"ledger", "x", 0, "c-2", ev, 1};
  assert_int_equal(cqrs_store_append(s, &one, &res, NULL), CQRS_OK);
  assert_int_equal(cqrs_store_read_stream(s, "ledger", "x", 1, take, &c, NULL), CQRS_OK);
  assert_int_equal(c.n, 1);
  ledger_opened_t clean = {"Ann"};
  assert_memory_equal(c.e[0]->payload, &clean, sizeof clean);
  copies_clear(&c);
  cqrs_event_unref(ev[0]);
  cqrs_store_destroy(s);
  cqrs_envelope_unref(env1);
  cqrs_envelope_unref(env2);
  cqrs_envelope_unref(other);
  bson_destroy(&raw);
}

static long fail_from = -1; /* allocations left before every one fails; < 0: none fails */
static void *failing_malloc(size_t n) { return fail_from >= 0 && fail_from-- == 0 ? (fail_from = 0, NULL) : malloc(n); }
static void *failing_realloc(void *p, size_t n) { return fail_from == 0 ? NULL : realloc(p, n); }

/* A read builds events, so it can run out of memory: it says so, and the
 * callback saw only whole events. */
static void test_read_without_memory_fails_cleanly(void **state) {
  (void)state;
  cqrs_store_t *s = NULL;
  assert_int_equal(cqrs_memory_store_new(&s, NULL), CQRS_OK);
  ledger_fill(s, &ledger_type, "x", 5);
  cqrs_allocator_t a = {failing_malloc, failing_realloc, free};
  copies_t c = {0};
  cqrs_error_t err;
  fail_from = 2;
  cqrs_set_allocator(&a);
  cqrs_code_t rc = cqrs_store_read_stream(s, "ledger", "x", 1, take, &c, &err);
  cqrs_set_allocator(NULL);
  fail_from = -1;
  assert_int_equal(rc, CQRS_ENOMEM);
  assert_int_equal(c.n, 2);
  assert_int_equal(c.e[1]->version, 2);
  copies_clear(&c);
  fail_from = 0;
  cqrs_set_allocator(&a);
  rc = cqrs_store_read_all(s, 1, 10, take, &c, &err);
  cqrs_set_allocator(NULL);
  fail_from = -1;
  assert_int_equal(rc, CQRS_ENOMEM);
  assert_int_equal(c.n, 0);
  cqrs_store_destroy(s);
}

int main(void) {
  conformance_factory_t f = {"memory store conformance", create, dispose, NULL};
  int failures = conformance_run(&f);
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_overhead_per_event_is_bounded),
                                     cmocka_unit_test(test_events_read_back_exactly),
                                     cmocka_unit_test(test_read_without_memory_fails_cleanly)};
  return failures + cmocka_run_group_tests(tests, NULL, NULL);
}
