#include <uv.h>

#include "conformance-private.h"

static const cqrs_field_t amount_fields[] = {CQRS_INT64(amount_t, amount, "amount", 0), CQRS_FIELDS_END};
const cqrs_event_type_t cqrs__conf_credited = {.name = "conformance.credited", .schema_version = 1,
                                               .payload_size = sizeof(amount_t), .fields = amount_fields};

typedef struct racer {
  uv_rwlock_t *start;
  void (*fn)(void *arg);
  void *arg;
} racer_t;

static void run_racer(void *arg) {
  racer_t *r = arg;
  uv_rwlock_rdlock(r->start); /* held for writing until every thread is up */
  uv_rwlock_rdunlock(r->start);
  r->fn(r->arg);
}

void cqrs__conf_race(void (*fn)(void *arg), void *args, size_t size, int n) {
  uv_thread_t threads[CONF_THREADS];
  racer_t racers[CONF_THREADS];
  uv_rwlock_t start;
  assert_true(n > 0 && n <= CONF_THREADS);
  assert_int_equal(uv_rwlock_init(&start), 0);
  uv_rwlock_wrlock(&start);
  int started = 0;
  for (; started < n; started++) {
    racers[started] = (racer_t){&start, fn, (char *)args + (size_t)started * size};
    if (uv_thread_create(&threads[started], run_racer, &racers[started])) break;
  }
  uv_rwlock_wrunlock(&start);
  for (int i = 0; i < started; i++) uv_thread_join(&threads[i]);
  uv_rwlock_destroy(&start);
  if (started < n) fail_msg("cannot start thread %d of %d", started + 1, n);
}

bson_t *cqrs__conf_json(const char *json) {
  bson_error_t e;
  bson_t *b = bson_new_from_json((const uint8_t *)json, -1, &e);
  if (!b) fail_msg("bad JSON %s: %s", json, e.message);
  return b;
}

static const conf_suite_t *running; /* one suite at a time */

int cqrs__conf_setup(void **state) {
  void *obj = running->make();
  if (!obj) {
    print_error("%s: cannot create %s\n", running->name, running->what);
    return -1;
  }
  *state = obj;
  return 0;
}

int cqrs__conf_teardown(void **state) {
  running->unmake(*state);
  return 0;
}

int cqrs__conf_run(const conf_suite_t *suite, const struct CMUnitTest *tests, size_t n) {
  running = suite;
  return _cmocka_run_group_tests(suite->name, tests, n, NULL, NULL);
}
