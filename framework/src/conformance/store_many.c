/* The event store suite, continued: several commits of one stream in one
 * call (cqrs_store_append_many, the append_many op of cqrs/backend.h, or
 * the framework's appends in turn for a store without it). */
#include <stdio.h>
#include <string.h>

#include "conformance-private.h"

#define STREAM "conformance"
#define MAX_EVENTS 8

/* Commits whose events are built here: commit i of `n` is `counts[i]`
 * events of command `cmds[i]`, following the one before from `expected`;
 * its event k credits `base + 10 * i + k`. */
typedef struct many {
  cqrs_append_t reqs[MAX_EVENTS];
  cqrs_append_result_t res[MAX_EVENTS];
  cqrs_event_t *events[MAX_EVENTS];
  cqrs_envelope_t *envs[MAX_EVENTS];
  size_t n, nevents;
} many_t;

static void many_make(many_t *m, const char *id, int64_t expected, const char *const *cmds, const size_t *counts,
                      size_t n, int64_t base) {
  memset(m, 0, sizeof *m);
  cqrs_error_t err;
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(cqrs_envelope_new(STREAM, id, cmds[i], "corr-many", &m->envs[i], &err), CQRS_OK);
    m->reqs[i] = (cqrs_append_t){STREAM, id, expected, cmds[i], &m->events[m->nevents], counts[i]};
    for (size_t k = 0; k < counts[i]; k++) {
      assert_true(m->nevents < MAX_EVENTS);
      amount_t a = {base + 10 * (int64_t)i + (int64_t)k};
      if (cqrs_event_new(&cqrs__conf_credited, m->envs[i], NULL, expected + (int64_t)k + 1, 1700000000000, &a,
                         &m->events[m->nevents], &err))
        fail_msg("event: %s", err.message);
      m->nevents++;
    }
    expected += (int64_t)counts[i];
  }
  m->n = n;
}

static void many_free(many_t *m) {
  for (size_t i = 0; i < m->nevents; i++) cqrs_event_unref(m->events[i]);
  for (size_t i = 0; i < m->n; i++) cqrs_envelope_unref(m->envs[i]);
}

static cqrs_code_t many_append(conf_store_fx_t *fx, many_t *m, size_t *done, cqrs_error_t *err) {
  return cqrs_store_append_many(fx->store, m->reqs, m->n, m->res, done, err);
}

typedef struct stream {
  int64_t version[64], amount[64];
  char cause[64][64];
  size_t n;
} stream_t;

static bool note(const cqrs_event_t *e, void *data) {
  stream_t *s = data;
  if (s->n < 64) {
    s->version[s->n] = e->version;
    s->amount[s->n] = ((const amount_t *)e->payload)->amount;
    snprintf(s->cause[s->n], sizeof s->cause[0], "%s", cqrs_event_causation_id(e));
    s->n++;
  }
  return s->n < 64;
}

static void read_back(conf_store_fx_t *fx, const char *id, stream_t *out) {
  cqrs_error_t err;
  memset(out, 0, sizeof *out);
  if (cqrs_store_read_stream(fx->store, STREAM, id, 1, note, out, &err)) fail_msg("read_stream: %s", err.message);
  for (size_t i = 0; i < out->n; i++) assert_int_equal(out->version[i], (int64_t)i + 1);
}

static bool has(conf_store_fx_t *fx, const char *cmd) {
  bool found = false;
  cqrs_error_t err;
  if (cqrs_store_has_command(fx->store, cmd, &found, &err)) fail_msg("has_command: %s", err.message);
  return found;
}

/* Commits in order, each its own; the first that does not commit stops
 * the call, and nothing after it lands. */
void cqrs__conf_append_many(void **state) {
  conf_store_fx_t *fx = *state;
  cqrs_error_t err;
  size_t done = 99;
  many_t m;
  static const char *const c1[] = {"m-1", "m-2", "m-3"};
  many_make(&m, "m1", 0, c1, (const size_t[]){2, 1, 2}, 3, 100);
  if (many_append(fx, &m, &done, &err)) fail_msg("append_many: %s", err.message);
  assert_int_equal(done, 3);
  for (size_t i = 0; i < 3; i++) {
    assert_false(m.res[i].duplicate);
    assert_int_equal(m.res[i].last_position - m.res[i].first_position + 1, (int64_t)m.reqs[i].count);
    if (i) assert_true(m.res[i].first_position > m.res[i - 1].last_position);
  }
  assert_int_equal(m.events[4]->position, m.res[2].last_position);
  many_free(&m);
  stream_t s;
  read_back(fx, "m1", &s);
  assert_int_equal(s.n, 5);
  static const char *const causes[] = {"m-1", "m-1", "m-2", "m-3", "m-3"};
  static const int64_t amounts[] = {100, 101, 110, 120, 121};
  for (size_t i = 0; i < 5; i++) {
    assert_int_equal(s.amount[i], amounts[i]);
    assert_string_equal(s.cause[i], causes[i]);
  }

  /* A command id committed before: that one is a duplicate, the rest does
   * not land. */
  static const char *const c2[] = {"m-4", "m-2", "m-5"};
  many_make(&m, "m1", 5, c2, (const size_t[]){1, 1, 1}, 3, 200);
  assert_int_equal(many_append(fx, &m, &done, &err), CQRS_OK);
  assert_int_equal(done, 1);
  assert_true(m.res[1].duplicate);
  many_free(&m);
  read_back(fx, "m1", &s);
  assert_int_equal(s.n, 6);
  assert_int_equal(s.amount[5], 200);

  /* The same command id twice in one call: the second is the duplicate. */
  static const char *const c3[] = {"m-6", "m-6", "m-7"};
  many_make(&m, "m1", 6, c3, (const size_t[]){1, 1, 1}, 3, 300);
  assert_int_equal(many_append(fx, &m, &done, &err), CQRS_OK);
  assert_int_equal(done, 1);
  assert_true(m.res[1].duplicate);
  many_free(&m);
  read_back(fx, "m1", &s);
  assert_int_equal(s.n, 7);

  /* The stream moved: a conflict at the first, nothing appended. */
  int64_t head_before, head_after;
  assert_int_equal(cqrs_store_head(fx->store, &head_before, NULL), CQRS_OK);
  static const char *const c4[] = {"m-8", "m-9"};
  many_make(&m, "m1", 3, c4, (const size_t[]){1, 1}, 2, 400);
  assert_int_equal(many_append(fx, &m, &done, &err), CQRS_ECONFLICT);
  assert_int_equal(err.code, CQRS_ECONFLICT);
  assert_int_equal(done, 0);
  many_free(&m);
  assert_int_equal(cqrs_store_head(fx->store, &head_after, NULL), CQRS_OK);
  assert_int_equal(head_after, head_before);
  if (!fx->f->without_command_lookup) {
    assert_true(has(fx, "m-4") && has(fx, "m-6"));
    assert_false(has(fx, "m-5") || has(fx, "m-7") || has(fx, "m-8") || has(fx, "m-9"));
  }

  /* Refused before the store sees them: two streams, versions that do not
   * follow, no commit. */
  many_make(&m, "m2", 0, c4, (const size_t[]){1, 1}, 2, 500);
  m.reqs[1].aggregate_id = "m3";
  assert_int_equal(many_append(fx, &m, &done, &err), CQRS_EINVAL);
  m.reqs[1].aggregate_id = "m2";
  m.reqs[1].expected_version = 2;
  assert_int_equal(many_append(fx, &m, &done, &err), CQRS_EINVAL);
  m.reqs[1].expected_version = 1;
  m.reqs[1].command_id = "";
  assert_int_equal(many_append(fx, &m, &done, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_store_append_many(fx->store, m.reqs, 0, m.res, &done, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_store_append_many(fx->store, m.reqs, 2, m.res, NULL, &err), CQRS_EINVAL);
  many_free(&m);
  read_back(fx, "m2", &s);
  assert_int_equal(s.n, 0);
}

/* Writers racing on one stream with chains of three commits, each taking
 * up again from the first of its chain that did not commit: every commit
 * lands once, its events together, with no gap in the versions. */
#define CHAINS 12

typedef struct chainer {
  cqrs_store_t *store;
  int id;
  int failures;
} chainer_t;

static bool last(const cqrs_event_t *e, void *data) {
  *(int64_t *)data = e->version;
  return true;
}

static void chain(void *arg) {
  chainer_t *w = arg;
  conf_store_fx_t fx = {NULL, NULL, w->store};
  for (int c = 0; c < CHAINS && !w->failures; c++) {
    size_t from = 0;
    for (int attempt = 0; from < 3 && attempt < 10000; attempt++) {
      char names[3][32];
      const char *cmds[3];
      size_t counts[3];
      for (size_t i = from; i < 3; i++) {
        snprintf(names[i - from], sizeof names[0], "chain-%d-%d-%zu", w->id, c, i);
        cmds[i - from] = names[i - from];
        counts[i - from] = i + 1;
      }
      int64_t version = 0;
      cqrs_error_t err;
      if (cqrs_store_read_stream(w->store, STREAM, "chains", 1, last, &version, &err)) break;
      many_t m;
      many_make(&m, "chains", version, cmds, counts, 3 - from, w->id * 100000 + c * 1000 + (int64_t)from * 10);
      size_t done;
      cqrs_code_t rc = many_append(&fx, &m, &done, &err);
      many_free(&m);
      from += done;
      if (rc != CQRS_OK && rc != CQRS_ECONFLICT) {
        print_error("chainer %d: %s\n", w->id, err.message);
        break;
      }
      if (rc == CQRS_OK && from < 3) {
        print_error("chainer %d: a duplicate of a command never sent before\n", w->id);
        break;
      }
    }
    if (from < 3) w->failures++;
  }
}

void cqrs__conf_append_many_racing(void **state) {
  conf_store_fx_t *fx = *state;
  chainer_t w[CONF_THREADS];
  for (int i = 0; i < CONF_THREADS; i++) w[i] = (chainer_t){fx->store, i + 1, 0};
  cqrs__conf_race(chain, w, sizeof w[0], CONF_THREADS);
  for (int i = 0; i < CONF_THREADS; i++) assert_int_equal(w[i].failures, 0);
  /* Every commit once, its events together and in order. */
  int64_t seen[CONF_THREADS][CHAINS][3] = {{{0}}};
  int64_t prev = -1;
  size_t events = 0, left = 0;
  bool more = true;
  for (int64_t from = 1; more;) {
    stream_t s;
    memset(&s, 0, sizeof s);
    cqrs_error_t err;
    if (cqrs_store_read_stream(fx->store, STREAM, "chains", from, note, &s, &err)) fail_msg("read: %s", err.message);
    for (size_t i = 0; i < s.n; i++) {
      assert_int_equal(s.version[i], from + (int64_t)i);
      int64_t a = s.amount[i];
      int id = (int)(a / 100000), c = (int)(a / 1000 % 100);
      size_t k = (size_t)(a / 10 % 100);
      assert_true(id >= 1 && id <= CONF_THREADS && c < CHAINS && k < 3);
      if (left) {
        assert_int_equal(a, prev + 1); /* the rest of the commit before */
      } else {
        assert_int_equal(a % 10, 0);
        assert_int_equal(seen[id - 1][c][k]++, 0);
        left = k + 1;
      }
      left--;
      prev = a;
      events++;
    }
    more = s.n == 64;
    from += (int64_t)s.n;
  }
  assert_int_equal(left, 0);
  assert_int_equal(events, CONF_THREADS * CHAINS * 6);
}
