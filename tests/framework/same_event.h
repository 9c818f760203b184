/* Asserts that two events are the same in every field a store keeps: ids,
 * type, versions, time, position, envelope and payload (a placeholder's
 * type name, schema version and raw data). */
#ifndef TEST_SAME_EVENT_H
#define TEST_SAME_EVENT_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cqrs/cqrs.h>

static inline void assert_same_event(const cqrs_event_t *a, const cqrs_event_t *b) {
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
    assert_int_equal(u->schema_version, v->schema_version);
    assert_int_equal(u->data_len, v->data_len);
    assert_memory_equal(u->data, v->data, u->data_len);
  } else {
    assert_memory_equal(a->payload, b->payload, a->type->payload_size);
  }
}

#endif
