/* Projection controls: an operator's requests written to the control
 * records of the checkpoints (projection.h), read by the running
 * dispatcher every control_ms: pause and resume, reset, skip, replay. */
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include <cqrs/backend.h>

#include "ledger.h"

#define MAX_POS 512

typedef struct seen {
  _Atomic int count[MAX_POS]; /* written on the pool by a blocking projection, read on the loop */
  _Atomic size_t n;
  int64_t fail_at; /* position to fail on; 0: none */
} seen_t;

static cqrs_code_t watch(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  seen_t *s = data;
  if (s->fail_at && e->position == s->fail_at)
    return cqrs_error_set(err, CQRS_EHANDLER, "cannot project %lld", (long long)e->position);
  if (e->position < MAX_POS) s->count[e->position]++;
  s->n++;
  return CQRS_OK;
}

typedef struct letters {
  int n;
  int64_t position;
  unsigned attempts;
  char name[CQRS_NAME_MAX];
} letters_t;

static void sink(const cqrs_dead_letter_t *dl, void *data) {
  letters_t *l = data;
  l->n++;
  l->position = dl->event->position;
  l->attempts = dl->attempts;
  snprintf(l->name, sizeof l->name, "%s", dl->error->name);
}

typedef struct fx {
  uv_loop_t loop;
  cqrs_registry_t *reg;
  cqrs_store_t *mem, *store;
  cqrs_checkpoints_t *cp_mem, *cp;
  cqrs_dispatcher_t *d;
  seen_t seen;
  letters_t letters;
  uv_timer_t guard;
  bool timed_out;
} fx_t;

static void open_dispatcher(fx_t *fx, uint64_t retry_base_ms) {
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  assert_int_equal(o.control_ms, 1000); /* the default */
  o.control_ms = 5;
  o.retry_base_ms = retry_base_ms;
  o.dead_letter_info = sink;
  o.dead_letter_data = &fx->letters;
  cqrs_error_t err;
  if (cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, &o, &fx->d, &err)) fail_msg("%s", err.message);
  bool blocking = fx->store != fx->mem;
  cqrs_projection_def_t def = {"proj", NULL, watch, &fx->seen, blocking ? CQRS_SUBSCRIBE_BLOCKING : 0};
  if (ledger_handlers(fx->d, NULL, 0, &err) || cqrs_projection_start(fx->d, &def, fx->cp, &err))
    fail_msg("%s", err.message);
}

static void ignore(const cqrs_result_t *r, void *data) {
  (void)data;
  assert_int_equal(r->error.code, CQRS_OK);
}

static void guard_cb(uv_timer_t *t) { ((fx_t *)t->data)->timed_out = true; }

static fx_t *fx_new(bool blocking) {
  fx_t *fx = calloc(1, sizeof *fx);
  uv_loop_init(&fx->loop);
  fx->reg = ledger_registry();
  cqrs_memory_store_new(&fx->mem, NULL);
  fx->store = blocking ? ledger_blocking_store(fx->mem, 0) : fx->mem;
  cqrs_memory_checkpoints_new(&fx->cp_mem, NULL);
  fx->cp = blocking ? ledger_blocking_checkpoints(fx->cp_mem) : fx->cp_mem;
  /* Keeps the loop turning (the control timer does not) and fails a test
   * that waits for what never comes, rather than hanging it. */
  uv_timer_init(&fx->loop, &fx->guard);
  fx->guard.data = fx;
  uv_timer_start(&fx->guard, guard_cb, 30000, 0);
  return fx;
}

static int setup(void **state) {
  *state = fx_new(false);
  return 0;
}

static int setup_blocking(void **state) {
  *state = fx_new(true);
  return 0;
}

static int teardown(void **state) {
  fx_t *fx = *state;
  uv_close((uv_handle_t *)&fx->guard, NULL);
  if (fx->d) cqrs_dispatcher_close(fx->d, NULL, NULL);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&fx->loop), 0);
  if (fx->cp != fx->cp_mem) cqrs_checkpoints_destroy(fx->cp);
  cqrs_checkpoints_destroy(fx->cp_mem);
  if (fx->store != fx->mem) cqrs_store_destroy(fx->store);
  cqrs_store_destroy(fx->mem);
  cqrs_registry_destroy(fx->reg);
  free(fx);
  return 0;
}

static cqrs_projection_control_t control(fx_t *fx) {
  cqrs_projection_control_t c;
  bool found;
  cqrs_error_t err;
  if (cqrs_checkpoints_control_load(fx->cp_mem, "proj", &c, &found, &err)) fail_msg("%s", err.message);
  return c;
}

static int64_t checkpoint(fx_t *fx) {
  int64_t at = -1;
  assert_int_equal(cqrs_checkpoints_load(fx->cp_mem, "proj", &at, NULL), CQRS_OK);
  return at;
}

static int64_t head(fx_t *fx) {
  int64_t h;
  assert_int_equal(cqrs_store_head(fx->mem, &h, NULL), CQRS_OK);
  return h;
}

#define RUN_UNTIL(fx, cond)                                                           \
  do {                                                                                \
    while (!(cond) && !(fx)->timed_out) uv_run(&(fx)->loop, UV_RUN_ONCE);             \
    if ((fx)->timed_out) fail_msg("waited in vain for %s", #cond);                    \
  } while (0)

/* The projection has carried out request `r` (its report says so). */
static bool answered(fx_t *fx, int64_t r) { return control(fx).done >= r; }

static int64_t request(fx_t *fx, cqrs_projection_action_t action, int64_t position) {
  int64_t r = 0;
  cqrs_error_t err;
  if (cqrs_projection_request(fx->cp_mem, "proj", action, position, &r, &err)) fail_msg("%s", err.message);
  return r;
}

static void test_pause_reset_resume(void **state) {
  fx_t *fx = *state;
  ledger_fill(fx->mem, &ledger_type, "a", 5);
  open_dispatcher(fx, 1);
  RUN_UNTIL(fx, checkpoint(fx) == 5 && !strcmp(control(fx).state, "running"));
  cqrs_projection_control_t c = control(fx);
  assert_int_equal(c.reached, 5);
  assert_true(c.reported_at > 0);
  assert_non_null(strchr(c.owner, ':')); /* host:pid */
  assert_int_equal(cqrs_projection_pause(fx->cp_mem, "proj", true, NULL), CQRS_OK);
  RUN_UNTIL(fx, !strcmp(control(fx).state, "paused"));
  /* Paused: what others commit is not delivered. */
  ledger_fill(fx->mem, &ledger_type, "b", 3); /* 6..8 */
  assert_int_equal(cqrs_dispatcher_send(fx->d, ledger_open_new("c", "o"), ignore, NULL), CQRS_OK); /* 9 */
  RUN_UNTIL(fx, cqrs_dispatcher_pending(fx->d) == 0);
  int64_t r = request(fx, CQRS_PROJECTION_RESET, 2);
  RUN_UNTIL(fx, answered(fx, r));
  assert_string_equal(control(fx).result, "reset to #2");
  assert_string_equal(control(fx).state, "paused");
  assert_int_equal(checkpoint(fx), 2);
  assert_int_equal(fx->seen.n, 5);
  assert_int_equal(fx->seen.count[9], 0);
  /* Resumed: it reads again from 2, and catches up to the head. */
  assert_int_equal(cqrs_projection_pause(fx->cp_mem, "proj", false, NULL), CQRS_OK);
  RUN_UNTIL(fx, checkpoint(fx) == head(fx) && !strcmp(control(fx).state, "running"));
  assert_int_equal(head(fx), 9);
  for (int64_t p = 1; p <= 9; p++) assert_int_equal(fx->seen.count[p], p <= 2 ? 1 : p <= 5 ? 2 : 1);
  assert_true(cqrs_projection_live(fx->d, "proj"));
  /* A request carried out is not carried out again. */
  size_t n = fx->seen.n;
  int64_t before = control(fx).reported_at;
  RUN_UNTIL(fx, control(fx).reported_at > before);
  assert_int_equal(fx->seen.n, n);
}

static void test_skip_a_poison_event(void **state) {
  fx_t *fx = *state;
  ledger_fill(fx->mem, &ledger_type, "a", 3); /* 1..3 */
  ledger_fill(fx->mem, &ledger_type, "b", 2); /* 4..5 */
  fx->seen.fail_at = 2;
  open_dispatcher(fx, 60000); /* only the skip ends it */
  RUN_UNTIL(fx, fx->seen.count[5] && !strcmp(control(fx).state, "failing"));
  assert_int_equal(control(fx).parked, 2);
  assert_int_equal(checkpoint(fx), 1);
  int64_t r = request(fx, CQRS_PROJECTION_SKIP, 2);
  RUN_UNTIL(fx, answered(fx, r) && checkpoint(fx) == 5);
  assert_string_equal(control(fx).result, "skipped #2: dead-lettered");
  assert_int_equal(fx->letters.n, 1);
  assert_int_equal(fx->letters.position, 2);
  assert_int_equal(fx->letters.attempts, 1);
  assert_string_equal(fx->letters.name, "skipped");
  assert_int_equal(fx->seen.count[3], 1); /* behind it in its stream, then delivered */
  assert_int_equal(fx->seen.count[2], 0);
  /* One still to come is dead-lettered when it comes; one behind, refused. */
  r = request(fx, CQRS_PROJECTION_SKIP, 7);
  RUN_UNTIL(fx, !strcmp(control(fx).result, "#7 to be skipped when it comes"));
  ledger_fill(fx->mem, &ledger_type, "c", 3); /* 6..8 */
  assert_int_equal(cqrs_dispatcher_send(fx->d, ledger_open_new("d", "o"), ignore, NULL), CQRS_OK);
  RUN_UNTIL(fx, answered(fx, r) && checkpoint(fx) == 9);
  assert_int_equal(fx->letters.n, 2);
  assert_int_equal(fx->letters.position, 7);
  assert_int_equal(fx->letters.attempts, 0);
  assert_int_equal(fx->seen.count[7], 0);
  assert_int_equal(fx->seen.count[8], 1);
  r = request(fx, CQRS_PROJECTION_SKIP, 4);
  RUN_UNTIL(fx, answered(fx, r));
  assert_non_null(strstr(control(fx).result, "not skipped: #4 is behind the projection"));
}

static void test_replay_a_dead_letter(void **state) {
  fx_t *fx = *state;
  ledger_fill(fx->mem, &ledger_type, "a", 3);
  fx->seen.fail_at = 2;
  open_dispatcher(fx, 1);
  RUN_UNTIL(fx, fx->letters.n == 1 && checkpoint(fx) == 3);
  assert_int_equal(fx->letters.attempts, 3);
  fx->seen.fail_at = 0; /* the handler is fixed */
  int64_t r = request(fx, CQRS_PROJECTION_REPLAY, 2);
  RUN_UNTIL(fx, answered(fx, r));
  assert_string_equal(control(fx).result, "replayed #2: handled");
  assert_int_equal(fx->seen.count[2], 1);
  assert_int_equal(checkpoint(fx), 3); /* a replay holds the checkpoint back at no time */
  /* Failing again, it is dead-lettered again after its attempts. */
  fx->seen.fail_at = 1;
  r = request(fx, CQRS_PROJECTION_REPLAY, 1);
  RUN_UNTIL(fx, answered(fx, r));
  assert_non_null(strstr(control(fx).result, "replayed #1: failed again, dead-lettered: cannot project 1"));
  assert_int_equal(fx->letters.n, 2);
  r = request(fx, CQRS_PROJECTION_REPLAY, 99);
  RUN_UNTIL(fx, answered(fx, r));
  assert_string_equal(control(fx).result, "replay refused: no event #99 in the store");
}

/* Requests written while no process runs the projection are carried out
 * when one starts; the pause too. */
static void test_requests_wait_for_a_process(void **state) {
  fx_t *fx = *state;
  ledger_fill(fx->mem, &ledger_type, "a", 4);
  assert_int_equal(cqrs_checkpoints_save(fx->cp_mem, "proj", 4, NULL), CQRS_OK);
  int64_t r = request(fx, CQRS_PROJECTION_RESET, 1);
  assert_int_equal(cqrs_projection_pause(fx->cp_mem, "proj", true, NULL), CQRS_OK);
  open_dispatcher(fx, 1);
  RUN_UNTIL(fx, answered(fx, r) && !strcmp(control(fx).state, "paused"));
  assert_int_equal(checkpoint(fx), 1);
  assert_int_equal(cqrs_projection_pause(fx->cp_mem, "proj", false, NULL), CQRS_OK);
  RUN_UNTIL(fx, checkpoint(fx) == 4);
  for (int64_t p = 2; p <= 4; p++) assert_int_equal(fx->seen.count[p], 1);
  assert_int_equal(fx->seen.count[1], 0);
}

static void test_control_records(void **state) {
  fx_t *fx = *state;
  cqrs_projection_control_t c;
  bool found = true;
  cqrs_error_t err;
  assert_int_equal(cqrs_checkpoints_control_load(fx->cp_mem, "none", &c, &found, &err), CQRS_OK);
  assert_false(found);
  assert_int_equal(c.request, 0);
  assert_int_equal(cqrs_projection_request(fx->cp_mem, "p", CQRS_PROJECTION_NO_ACTION, 1, NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_projection_request(NULL, "p", CQRS_PROJECTION_SKIP, 1, NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_projection_request(fx->cp_mem, "", CQRS_PROJECTION_SKIP, 1, NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_projection_request(fx->cp_mem, "p", CQRS_PROJECTION_SKIP, -1, NULL, &err), CQRS_EINVAL);
  memset(&c, 0, sizeof c);
  assert_int_equal(cqrs_checkpoints_control_save(fx->cp_mem, "p", &c, 0, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_checkpoints_control_save(fx->cp_mem, "p", &c, 4, &err), CQRS_EINVAL);
  c.action = (cqrs_projection_action_t)9;
  assert_int_equal(cqrs_checkpoints_control_save(fx->cp_mem, "p", &c, CQRS_CONTROL_REQUEST, &err), CQRS_EINVAL);
  c.action = CQRS_PROJECTION_SKIP;
  memset(c.state, 'x', sizeof c.state); /* not terminated */
  assert_int_equal(cqrs_checkpoints_control_save(fx->cp_mem, "p", &c, CQRS_CONTROL_REPORT, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_checkpoints_control_load(fx->cp_mem, "p", &c, &found, &err), CQRS_OK);
  assert_false(found); /* nothing refused was written */
  int64_t r1 = 0, r2 = 0;
  assert_int_equal(cqrs_projection_request(fx->cp_mem, "p", CQRS_PROJECTION_SKIP, 3, &r1, &err), CQRS_OK);
  assert_int_equal(cqrs_projection_request(fx->cp_mem, "p", CQRS_PROJECTION_RESET, 0, &r2, &err), CQRS_OK);
  assert_int_equal(r1, 1);
  assert_int_equal(r2, 2);
  assert_int_equal(cqrs_checkpoints_control_load(fx->cp_mem, "p", &c, &found, &err), CQRS_OK);
  assert_true(found);
  assert_int_equal(c.action, CQRS_PROJECTION_RESET);
  assert_int_equal(c.position, 0);
  assert_int_equal(cqrs_checkpoints_load(fx->cp_mem, "p", &r1, &err), CQRS_OK);
  assert_int_equal(r1, 0); /* the checkpoint is the name's own */
}

static cqrs_code_t no_load(void *impl, const char *name, int64_t *position, cqrs_error_t *err) {
  (void)impl, (void)name, (void)err;
  *position = 0;
  return CQRS_OK;
}
static cqrs_code_t no_save(void *impl, const char *name, int64_t position, cqrs_error_t *err) {
  (void)impl, (void)name, (void)position, (void)err;
  return CQRS_OK;
}
static cqrs_code_t half_load(void *impl, const char *name, cqrs_projection_control_t *out, bool *found,
                             cqrs_error_t *err) {
  (void)impl, (void)name, (void)out, (void)err;
  *found = false;
  return CQRS_OK;
}

static void test_checkpoints_without_controls(void **state) {
  (void)state;
  static const cqrs_checkpoint_ops_t plain = {.load = no_load, .save = no_save};
  static const cqrs_checkpoint_ops_t half = {.load = no_load, .save = no_save, .control_load = half_load};
  cqrs_checkpoints_t *cp;
  cqrs_error_t err;
  assert_int_equal(cqrs_checkpoints_new(&half, NULL, &cp, &err), CQRS_EINVAL);
  assert_null(cp);
  assert_int_equal(cqrs_checkpoints_new(&plain, NULL, &cp, &err), CQRS_OK);
  assert_int_equal(cqrs_projection_pause(cp, "p", true, &err), CQRS_EINVAL);
  assert_non_null(strstr(err.message, "no control records"));
  cqrs_checkpoints_destroy(cp);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_pause_reset_resume, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pause_reset_resume, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_skip_a_poison_event, setup, teardown),
      cmocka_unit_test_setup_teardown(test_skip_a_poison_event, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_replay_a_dead_letter, setup, teardown),
      cmocka_unit_test_setup_teardown(test_replay_a_dead_letter, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_requests_wait_for_a_process, setup, teardown),
      cmocka_unit_test_setup_teardown(test_requests_wait_for_a_process, setup_blocking, teardown),
      cmocka_unit_test_setup_teardown(test_control_records, setup, teardown),
      cmocka_unit_test(test_checkpoints_without_controls),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
