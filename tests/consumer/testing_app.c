/* Links cqrs::testing (and, through it, cmocka): one given / when / then
 * test of a counter that refuses to pass its limit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <cmocka.h>
#include <cqrs/testing.h>

typedef struct { char id[CQRS_ID_MAX]; int64_t n; } add_t;
static const cqrs_field_t add_fields[] = {CQRS_STRING(add_t, id, "id", CQRS_F_REQUIRED),
                                          CQRS_INT64_RANGE(add_t, n, "n", 1, 100), CQRS_FIELDS_END};
static const cqrs_command_type_t add_cmd = {.name = "counter.add", .payload_size = sizeof(add_t),
                                            .fields = add_fields};
static const cqrs_event_type_t added = {.name = "counter.added", .schema_version = 1,
                                        .payload_size = sizeof(add_t), .fields = add_fields};

typedef struct { int64_t total; } counter_t;
static void on_added(void *state, const cqrs_event_t *e) {
  ((counter_t *)state)->total += ((const add_t *)e->payload)->n;
}
static const cqrs_apply_entry_t counter_apply[] = {{&added, on_added}, {NULL, NULL}};
static const cqrs_aggregate_type_t counter_type = {.name = "counter", .state_size = sizeof(counter_t),
                                                  .apply = counter_apply};

static cqrs_code_t handle_add(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)data;
  const add_t *a = cqrs_command_payload(cmd);
  cqrs_aggregate_t *c;
  cqrs_code_t rc = cqrs_context_load(ctx, &counter_type, a->id, &c, err);
  if (rc) return rc;
  if (((const counter_t *)cqrs_aggregate_state(c))->total + a->n > 100)
    return cqrs_reject(err, "counter.over_limit", "the counter stops at 100");
  return cqrs_aggregate_raise(c, &added, a, err);
}

static cqrs_code_t setup_handlers(cqrs_dispatcher_t *d, void *data, cqrs_error_t *err) {
  (void)data;
  return cqrs_dispatcher_register(d, &add_cmd, handle_add, NULL, 0, err);
}

static cqrs_registry_t *reg;

static int setup(void **state) {
  cqrs_test_t *t = NULL;
  cqrs_error_t err;
  if (cqrs_test_new(reg, &counter_type, "c-1", setup_handlers, NULL, &t, &err)) {
    fprintf(stderr, "cqrs_test_new: %s\n", err.message);
    return -1;
  }
  *state = t;
  return 0;
}
static int teardown(void **state) { return cqrs_test_destroy(*state) ? 0 : -1; }

static void test_add_then_refuse(void **state) {
  cqrs_test_t *t = *state;
  CQRS_GIVEN(t, &added, (add_t){"c-1", 60});
  CQRS_WHEN(t, &add_cmd, (add_t){"c-1", 30});
  CQRS_THEN_EVENTS(t, {&added, &(add_t){"c-1", 30}});
  CQRS_WHEN(t, &add_cmd, (add_t){"c-1", 20});
  CQRS_THEN_REJECTED(t, "counter.over_limit");
}

int main(void) {
  if (cqrs_registry_new(&reg, NULL) || cqrs_registry_add_aggregate(reg, &counter_type, NULL) || cqrs_registry_add_command(reg, &add_cmd, NULL))
    return 1;
  const struct CMUnitTest tests[] = {cmocka_unit_test_setup_teardown(test_add_then_refuse, setup, teardown)};
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  cqrs_registry_destroy(reg);
  return failed;
}
