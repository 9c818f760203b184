/* The checkpoint store suite: what cqrs_checkpoint_ops_t promises, through
 * the checked calls of projection.h. */
#include <stdio.h>
#include <string.h>

#include "conformance-private.h"

static const cqrs_checkpoint_store_factory_t *factory; /* the suite running */

static void *make(void) { return factory->create(factory->data); }

static void unmake(void *obj) {
  if (factory->dispose) {
    factory->dispose(obj, factory->data);
  } else {
    cqrs_checkpoint_store_destroy(obj);
  }
}

static int64_t load(cqrs_checkpoint_store_t *cp, const char *name) {
  int64_t pos = -1;
  cqrs_error_t err;
  if (cqrs_checkpoint_store_load(cp, name, &pos, &err)) fail_msg("load %s: %s", name, err.message);
  return pos;
}

static void save(cqrs_checkpoint_store_t *cp, const char *name, int64_t position) {
  cqrs_error_t err;
  if (cqrs_checkpoint_store_save(cp, name, position, &err)) fail_msg("save %s: %s", name, err.message);
}

static void test_a_name_never_saved_is_at_zero(void **state) {
  cqrs_checkpoint_store_t *cp = *state;
  assert_int_equal(load(cp, "conformance.never"), 0);
}

/* The last save wins, lower or not (an operator's reset, a rebuild); every
 * name has its own. */
static void test_save_then_load(void **state) {
  cqrs_checkpoint_store_t *cp = *state;
  save(cp, "conformance.p", 42);
  assert_int_equal(load(cp, "conformance.p"), 42);
  save(cp, "conformance.p", 43);
  assert_int_equal(load(cp, "conformance.p"), 43);
  save(cp, "conformance.p", 10);
  assert_int_equal(load(cp, "conformance.p"), 10);
  save(cp, "conformance.p", 0);
  assert_int_equal(load(cp, "conformance.p"), 0);
  save(cp, "conformance.q", INT64_MAX);
  assert_int_equal(load(cp, "conformance.q"), INT64_MAX);
  assert_int_equal(load(cp, "conformance.p"), 0);
  assert_int_equal(load(cp, "conformance.pq"), 0);
  /* The longest name, and one that is not ASCII. */
  char longest[CQRS_NAME_MAX];
  memset(longest, 'n', sizeof longest - 1);
  memcpy(longest, "conformance.", strlen("conformance."));
  longest[sizeof longest - 1] = '\0';
  save(cp, longest, 7);
  assert_int_equal(load(cp, longest), 7);
  save(cp, "conformance.caf\xc3\xa9", 8);
  assert_int_equal(load(cp, "conformance.caf\xc3\xa9"), 8);
  assert_int_equal(load(cp, "conformance.cafe"), 0);
}

/* Fenced writes, on checkpoints with nothing saved under "conformance.p". */
static void test_fenced_saves(void **state) {
  cqrs_checkpoint_store_t *cp = *state;
  cqrs_error_t err;
  if (factory->unfenced) {
    assert_int_equal(cqrs_checkpoint_store_save_fenced(cp, "conformance.p", 10, 2, &err), CQRS_EINVAL);
    assert_int_equal(load(cp, "conformance.p"), 0);
    return;
  }
  assert_int_equal(cqrs_checkpoint_store_save_fenced(cp, "conformance.p", 10, 2, &err), CQRS_OK);
  assert_int_equal(cqrs_checkpoint_store_save_fenced(cp, "conformance.p", 20, 1, &err), CQRS_ECONFLICT);
  assert_int_equal(err.code, CQRS_ECONFLICT);
  assert_int_equal(load(cp, "conformance.p"), 10);
  assert_int_equal(cqrs_checkpoint_store_save_fenced(cp, "conformance.p", 30, 2, &err), CQRS_OK);
  assert_int_equal(cqrs_checkpoint_store_save_fenced(cp, "conformance.p", 40, 3, &err), CQRS_OK);
  assert_int_equal(cqrs_checkpoint_store_save_fenced(cp, "conformance.p", 50, 2, &err), CQRS_ECONFLICT);
  assert_int_equal(load(cp, "conformance.p"), 40);
  /* A plain save (an operator's reset) is not fenced, and keeps the fence. */
  save(cp, "conformance.p", 0);
  assert_int_equal(load(cp, "conformance.p"), 0);
  assert_int_equal(cqrs_checkpoint_store_save_fenced(cp, "conformance.p", 5, 2, &err), CQRS_ECONFLICT);
  assert_int_equal(load(cp, "conformance.p"), 0);
  assert_int_equal(cqrs_checkpoint_store_save_fenced(cp, "conformance.p", 5, 0, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_checkpoint_store_save_fenced(cp, "conformance.p", -1, 4, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_checkpoint_store_save_fenced(NULL, "conformance.p", 5, 4, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_checkpoint_store_save_fenced(cp, "", 5, 4, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_checkpoint_store_save_fenced(cp, "conformance.p", 6, 3, &err), CQRS_OK);
  assert_int_equal(load(cp, "conformance.p"), 6);
  /* A fence is a name's own: a lower token writes another name. */
  assert_int_equal(cqrs_checkpoint_store_save_fenced(cp, "conformance.q", 9, 1, &err), CQRS_OK);
  assert_int_equal(load(cp, "conformance.q"), 9);
}

/* Control records (projection.h): none until written; each part written
 * keeps the other; a record is its name's own and apart from its
 * checkpoint; what is read is what was written. */
static void fill_report(cqrs_projection_control_t *c, const char *state, int64_t done) {
  c->done = done;
  snprintf(c->result, sizeof c->result, "reset to #%lld", (long long)done);
  snprintf(c->state, sizeof c->state, "%s", state);
  snprintf(c->owner, sizeof c->owner, "h\xc3\xb4te:42");
  c->reported_at = 1700000000123;
  c->reached = 77;
  c->parked = 3;
}

static void test_control_records(void **state) {
  cqrs_checkpoint_store_t *cp = *state;
  cqrs_projection_control_t c, got;
  bool found = true;
  cqrs_error_t err;
  if (factory->without_controls) {
    assert_int_equal(cqrs_checkpoint_store_control_load(cp, "conformance.p", &got, &found, &err), CQRS_EINVAL);
    assert_false(found);
    return;
  }
  if (cqrs_checkpoint_store_control_load(cp, "conformance.p", &got, &found, &err)) fail_msg("%s", err.message);
  assert_false(found);
  assert_int_equal(got.request, 0);
  save(cp, "conformance.p", 12);
  memset(&c, 0, sizeof c);
  c.paused = true;
  c.request = 5;
  c.action = CQRS_PROJECTION_SKIP;
  c.position = 9;
  fill_report(&c, "ignored", 1); /* not written: the request part only */
  if (cqrs_checkpoint_store_control_save(cp, "conformance.p", &c, CQRS_CONTROL_REQUEST, &err))
    fail_msg("%s", err.message);
  if (cqrs_checkpoint_store_control_load(cp, "conformance.p", &got, &found, &err)) fail_msg("%s", err.message);
  assert_true(found);
  assert_true(got.paused);
  assert_int_equal(got.request, 5);
  assert_int_equal(got.action, CQRS_PROJECTION_SKIP);
  assert_int_equal(got.position, 9);
  assert_int_equal(got.done, 0);
  assert_string_equal(got.state, "");
  assert_int_equal(load(cp, "conformance.p"), 12); /* the checkpoint stays */
  /* The report keeps the request. */
  memset(&c, 0, sizeof c);
  fill_report(&c, "paused", 4);
  if (cqrs_checkpoint_store_control_save(cp, "conformance.p", &c, CQRS_CONTROL_REPORT, &err))
    fail_msg("%s", err.message);
  if (cqrs_checkpoint_store_control_load(cp, "conformance.p", &got, &found, &err)) fail_msg("%s", err.message);
  assert_true(got.paused);
  assert_int_equal(got.request, 5);
  assert_int_equal(got.position, 9);
  assert_int_equal(got.done, 4);
  assert_string_equal(got.result, "reset to #4");
  assert_string_equal(got.state, "paused");
  assert_string_equal(got.owner, "h\xc3\xb4te:42");
  assert_int_equal(got.reported_at, 1700000000123);
  assert_int_equal(got.reached, 77);
  assert_int_equal(got.parked, 3);
  /* A checkpoint's save keeps the record; the request keeps the report. */
  save(cp, "conformance.p", 13);
  if (cqrs_checkpoint_store_save_fenced(cp, "conformance.p", 14, 2, &err) && !factory->unfenced)
    fail_msg("%s", err.message);
  memset(&c, 0, sizeof c);
  c.request = 6;
  c.action = CQRS_PROJECTION_RESET;
  if (cqrs_checkpoint_store_control_save(cp, "conformance.p", &c, CQRS_CONTROL_REQUEST, &err))
    fail_msg("%s", err.message);
  if (cqrs_checkpoint_store_control_load(cp, "conformance.p", &got, &found, &err)) fail_msg("%s", err.message);
  assert_false(got.paused);
  assert_int_equal(got.request, 6);
  assert_int_equal(got.action, CQRS_PROJECTION_RESET);
  assert_int_equal(got.position, 0);
  assert_int_equal(got.done, 4);
  assert_string_equal(got.state, "paused");
  assert_int_equal(load(cp, "conformance.p"), factory->unfenced ? 13 : 14);
  /* Another name has none; a record without a checkpoint leaves it at 0. */
  if (cqrs_checkpoint_store_control_load(cp, "conformance.q", &got, &found, &err)) fail_msg("%s", err.message);
  assert_false(found);
  if (cqrs_checkpoint_store_control_save(cp, "conformance.q", &c, CQRS_CONTROL_REQUEST | CQRS_CONTROL_REPORT, &err))
    fail_msg("%s", err.message);
  assert_int_equal(load(cp, "conformance.q"), 0);
  /* Refused: nothing written. */
  c.position = -1;
  assert_int_equal(cqrs_checkpoint_store_control_save(cp, "conformance.r", &c, CQRS_CONTROL_REQUEST, &err),
                   CQRS_EINVAL);
  c.position = 0;
  assert_int_equal(cqrs_checkpoint_store_control_save(cp, "conformance.r", &c, 0, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_checkpoint_store_control_save(cp, "", &c, CQRS_CONTROL_REQUEST, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_checkpoint_store_control_save(NULL, "conformance.r", &c, CQRS_CONTROL_REQUEST, &err),
                   CQRS_EINVAL);
  assert_int_equal(cqrs_checkpoint_store_control_load(cp, "conformance.r", &got, NULL, &err), CQRS_EINVAL);
  if (cqrs_checkpoint_store_control_load(cp, "conformance.r", &got, &found, &err)) fail_msg("%s", err.message);
  assert_false(found);
}

#define SAVES 40

typedef struct saver {
  cqrs_checkpoint_store_t *cp;
  char name[CQRS_NAME_MAX];
  int failures;
  cqrs_error_t err;
} saver_t;

static void save_many(void *arg) {
  saver_t *s = arg;
  for (int64_t p = 1; p <= SAVES && !s->failures; p++) {
    if (cqrs_checkpoint_store_save(s->cp, s->name, p, &s->err)) s->failures++;
  }
}

/* Savers of their own names on several threads at once: each name ends at
 * its last save. */
static void test_savers_race(void **state) {
  cqrs_checkpoint_store_t *cp = *state;
  saver_t savers[CONF_THREADS];
  for (int i = 0; i < CONF_THREADS; i++) {
    savers[i] = (saver_t){.cp = cp};
    snprintf(savers[i].name, sizeof savers[i].name, "conformance.race.%d", i);
  }
  cqrs__conf_race(save_many, savers, sizeof savers[0], CONF_THREADS);
  for (int i = 0; i < CONF_THREADS; i++) {
    if (savers[i].failures) fail_msg("%s: %s", savers[i].name, savers[i].err.message);
    assert_int_equal(load(cp, savers[i].name), SAVES);
  }
}

/* One projection's three writers at once, as they run: the projection
 * saving its checkpoint, its process writing reports, an operator writing
 * requests. Each part ends at its own last write: none is lost to the
 * others' (a store that reads a document and writes it whole loses them). */
typedef struct part_writer {
  cqrs_checkpoint_store_t *cp;
  int part; /* 0: the checkpoint, else CQRS_CONTROL_REPORT or _REQUEST */
  int failures;
  cqrs_error_t err;
} part_writer_t;

static void write_part(void *arg) {
  part_writer_t *w = arg;
  for (int64_t i = 1; i <= SAVES && !w->failures; i++) {
    cqrs_projection_control_t c;
    memset(&c, 0, sizeof c);
    c.request = c.done = i;
    cqrs_code_t rc =
        w->part ? cqrs_checkpoint_store_control_save(w->cp, "conformance.parts", &c, (unsigned)w->part, &w->err)
                : cqrs_checkpoint_store_save(w->cp, "conformance.parts", i, &w->err);
    if (rc) w->failures++;
  }
}

static void test_checkpoint_and_controls_race(void **state) {
  cqrs_checkpoint_store_t *cp = *state;
  if (factory->without_controls) return; /* nothing but the checkpoint to write */
  part_writer_t w[3] = {{cp, 0, 0, {0}}, {cp, CQRS_CONTROL_REPORT, 0, {0}}, {cp, CQRS_CONTROL_REQUEST, 0, {0}}};
  cqrs__conf_race(write_part, w, sizeof w[0], 3);
  for (int i = 0; i < 3; i++) {
    if (w[i].failures) fail_msg("%s", w[i].err.message);
  }
  cqrs_projection_control_t got;
  bool found;
  cqrs_error_t err;
  if (cqrs_checkpoint_store_control_load(cp, "conformance.parts", &got, &found, &err)) fail_msg("%s", err.message);
  assert_true(found);
  assert_int_equal(load(cp, "conformance.parts"), SAVES);
  assert_int_equal(got.done, SAVES);
  assert_int_equal(got.request, SAVES);
}

static void test_bad_arguments(void **state) {
  cqrs_checkpoint_store_t *cp = *state;
  cqrs_error_t err;
  int64_t pos = 5;
  assert_int_equal(cqrs_checkpoint_store_load(cp, "", &pos, &err), CQRS_EINVAL);
  assert_int_equal(pos, 0);
  assert_int_equal(cqrs_checkpoint_store_load(cp, NULL, &pos, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_checkpoint_store_load(cp, "conformance.p", NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_checkpoint_store_load(NULL, "conformance.p", &pos, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_checkpoint_store_save(cp, "conformance.p", -1, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_checkpoint_store_save(cp, "", 1, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_checkpoint_store_save(cp, "conformance.\xff", 1, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_checkpoint_store_save(NULL, "conformance.p", 1, &err), CQRS_EINVAL);
  char longer[CQRS_NAME_MAX + 1];
  memset(longer, 'n', sizeof longer - 1);
  longer[sizeof longer - 1] = '\0';
  assert_int_equal(cqrs_checkpoint_store_save(cp, longer, 1, &err), CQRS_ETOO_LARGE);
  assert_int_equal(cqrs_checkpoint_store_load(cp, longer, &pos, &err), CQRS_ETOO_LARGE);
  assert_int_equal(load(cp, "conformance.p"), 0); /* nothing refused was saved */
}

int cqrs_conformance_checkpoints(const cqrs_checkpoint_store_factory_t *f) {
  if (!f || !f->name || !f->create) return 1;
  factory = f;
  const struct CMUnitTest tests[] = {
      CONF_TEST(test_a_name_never_saved_is_at_zero),
      CONF_TEST(test_save_then_load),
      CONF_TEST(test_fenced_saves),
      CONF_TEST(test_control_records),
      CONF_TEST(test_savers_race),
      CONF_TEST(test_checkpoint_and_controls_race),
      CONF_TEST(test_bad_arguments),
  };
  const conf_suite_t suite = {f->name, "checkpoints", make, unmake};
  return cqrs__conf_run(&suite, tests, sizeof tests / sizeof tests[0]);
}
