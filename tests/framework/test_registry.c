#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "ledger.h"

/* Registration checks each type's field table once, so that a range flag
 * without bounds (read as [0, 0] before) is a start-up error. */
typedef struct pay {
  char id[16];
  int32_t count;
  struct {
    int64_t when;
  } at;
} pay_t;

typedef struct at {
  int64_t when;
} at_t;

static const cqrs_field_t at_unbounded[] = {CQRS_TIME(at_t, when, "when", CQRS_F_RANGE), CQRS_FIELDS_END};
static const cqrs_field_t at_bounded[] = {CQRS_TIME_RANGE(at_t, when, "when", 0, INT64_MAX), CQRS_FIELDS_END};
static const cqrs_field_t unbounded[] = {CQRS_STRING(pay_t, id, "id", CQRS_F_REQUIRED),
                                         CQRS_INT32(pay_t, count, "count", CQRS_F_RANGE), CQRS_FIELDS_END};
static const cqrs_field_t nested_unbounded[] = {CQRS_STRING(pay_t, id, "id", CQRS_F_REQUIRED),
                                                CQRS_DOC(pay_t, at, "at", at_unbounded, 0), CQRS_FIELDS_END};
static const cqrs_field_t good[] = {CQRS_STRING(pay_t, id, "id", CQRS_F_REQUIRED),
                                    CQRS_INT32_RANGE(pay_t, count, "count", 1, 100),
                                    CQRS_DOC(pay_t, at, "at", at_bounded, 0), CQRS_FIELDS_END};

static const cqrs_event_type_t bad_event = {.name = "pay.made", .schema_version = 1, .payload_size = sizeof(pay_t),
                                            .fields = unbounded};
static const cqrs_apply_entry_t bad_apply[] = {{&bad_event, NULL}, {NULL, NULL}};

static void expect_refused(cqrs_code_t rc, const cqrs_error_t *err, const char *needle) {
  assert_int_equal(rc, CQRS_EINVAL);
  if (!strstr(err->message, needle)) fail_msg("'%s' does not mention '%s'", err->message, needle);
}

static void test_commands_with_unbounded_ranges_are_refused(void **state) {
  (void)state;
  cqrs_registry_t *reg = NULL;
  cqrs_registry_new(&reg, NULL);
  cqrs_error_t err;
  const cqrs_command_type_t bad = {.name = "pay.bad", .payload_size = sizeof(pay_t), .fields = unbounded};
  expect_refused(cqrs_registry_add_command(reg, &bad, &err), &err, "pay.bad: field count: CQRS_F_RANGE without bounds");
  assert_null(cqrs_registry_command(reg, "pay.bad"));
  const cqrs_command_type_t deep = {.name = "pay.deep", .payload_size = sizeof(pay_t), .fields = nested_unbounded};
  expect_refused(cqrs_registry_add_command(reg, &deep, &err), &err, "at.when");
  const cqrs_command_type_t ok = {.name = "pay.ok", .payload_size = sizeof(pay_t), .fields = good};
  assert_int_equal(cqrs_registry_add_command(reg, &ok, &err), CQRS_OK);
  /* An unregistered type with such a table is refused when a command is built. */
  pay_t p = {"p-1", 0, {0}};
  cqrs_command_t *cmd = NULL;
  assert_int_equal(cqrs_command_new(&bad, &p, &cmd, &err), CQRS_EINVALID_COMMAND);
  assert_non_null(strstr(err.message, "without bounds"));
  assert_null(cmd);
  cqrs_registry_destroy(reg);
}

static void test_events_and_snapshots_with_unbounded_ranges_are_refused(void **state) {
  (void)state;
  cqrs_registry_t *reg = NULL;
  cqrs_registry_new(&reg, NULL);
  cqrs_error_t err;
  expect_refused(cqrs_registry_add_event(reg, &bad_event, &err), &err, "event type pay.made");
  assert_null(cqrs_registry_event(reg, "pay.made"));
  cqrs_aggregate_type_t snap = ledger_snap_type;
  snap.name = "ledger-bad-snap";
  snap.snapshot_fields = unbounded;
  expect_refused(cqrs_registry_add_aggregate(reg, &snap, &err), &err, "aggregate type ledger-bad-snap");
  assert_null(cqrs_registry_aggregate(reg, "ledger-bad-snap"));
  /* An aggregate whose events carry such a table is refused as well. */
  cqrs_aggregate_type_t agg = ledger_type;
  agg.name = "ledger-bad-events";
  agg.apply = bad_apply;
  expect_refused(cqrs_registry_add_aggregate(reg, &agg, &err), &err, "pay.made");
  assert_int_equal(cqrs_registry_add_aggregate(reg, &ledger_snap_type, &err), CQRS_OK);
  cqrs_registry_destroy(reg);
}

static void test_names_must_be_utf8(void **state) {
  (void)state;
  cqrs_registry_t *reg = NULL;
  cqrs_registry_new(&reg, NULL);
  cqrs_error_t err;
  const cqrs_event_type_t odd = {.name = "pay.\xff", .schema_version = 1, .payload_size = sizeof(pay_t),
                                 .fields = good};
  assert_int_equal(cqrs_registry_add_event(reg, &odd, &err), CQRS_EINVAL);
  assert_non_null(strstr(err.message, "not valid UTF-8"));
  cqrs_registry_destroy(reg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_commands_with_unbounded_ranges_are_refused),
      cmocka_unit_test(test_events_and_snapshots_with_unbounded_ranges_are_refused),
      cmocka_unit_test(test_names_must_be_utf8),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
