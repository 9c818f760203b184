#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cqrs/backend.h"
#include "cqrs/testing.h"

/* Events a `when` committed, with a reference each. */
typedef struct event_vec {
  const cqrs_event_t **items;
  size_t len, cap;
} event_vec_t;

static bool vec_push(event_vec_t *v, const cqrs_event_t *e) {
  if (v->len == v->cap) {
    size_t cap = v->cap ? v->cap * 2 : 8;
    const cqrs_event_t **items = realloc((void *)v->items, cap * sizeof *items);
    if (!items) return false;
    v->items = items;
    v->cap = cap;
  }
  v->items[v->len++] = cqrs_event_ref(e);
  return true;
}

static void vec_clear(event_vec_t *v) {
  for (size_t i = 0; i < v->len; i++) cqrs_event_unref(v->items[i]);
  v->len = 0;
}

static void vec_free(event_vec_t *v) {
  vec_clear(v);
  free((void *)v->items);
}

struct cqrs_test {
  uv_loop_t loop;
  cqrs_clock_t *clock; /* manual: the dispatcher's, and the given events' */
  const cqrs_registry_t *reg;
  const cqrs_aggregate_type_t *type;
  char id[CQRS_ID_MAX];
  cqrs_store_t *store;
  cqrs_keys_t *keys; /* personal fields are sealed as in production */
  cqrs_dispatcher_t *d;
  unsigned given;
  bool done;
  cqrs_error_t error;
  event_vec_t events;
  char cmd_id[CQRS_ID_MAX]; /* the when's command: only its events count */
};

cqrs_code_t cqrs_test_new(const cqrs_registry_t *reg, const cqrs_aggregate_type_t *type, const char *id,
                          cqrs_test_setup_cb setup, void *data, cqrs_test_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  if (!reg || !type || !id || !*id || strlen(id) >= CQRS_ID_MAX)
    return cqrs_error_set(err, CQRS_EINVAL, "NULL registry or type, or a bad id");
  cqrs_test_t *t = calloc(1, sizeof *t);
  if (!t) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate a test fixture");
  uv_loop_init(&t->loop);
  t->reg = reg;
  t->type = type;
  memcpy(t->id, id, strlen(id) + 1);
  cqrs_error_t local;
  if (!err) err = &local;
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.retry_base_ms = 1;
  cqrs_code_t rc = cqrs_clock_manual_new(cqrs_now_ms(), &t->clock, err);
  o.clock = t->clock;
  if (!rc) rc = cqrs_memory_store_new(&t->store, err);
  if (!rc) rc = cqrs_memory_keys_new(NULL, &t->keys, err);
  if (!rc) rc = cqrs_store_set_keys(t->store, t->keys, reg, err);
  if (!rc) rc = cqrs_dispatcher_new(&t->loop, reg, t->store, &o, &t->d, err);
  if (!rc && setup) rc = setup(t->d, data, err);
  if (rc) {
    cqrs_test_destroy(t);
    return rc;
  }
  *out = t;
  return CQRS_OK;
}

static void closed(void *data) { *(bool *)data = true; }

bool cqrs_test_destroy(cqrs_test_t *t) {
  if (!t) return true;
  bool ok = true;
  if (t->d) {
    bool done = false;
    cqrs_dispatcher_close(t->d, closed, &done);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    ok = done;
  }
  int rc = uv_loop_close(&t->loop);
  if (rc) fprintf(stderr, "cqrs_test_destroy: uv_loop_close: %s\n", uv_strerror(rc));
  vec_free(&t->events);
  cqrs_store_destroy(t->store);
  cqrs_clock_destroy(t->clock);
  cqrs_keys_destroy(t->keys);
  free(t);
  return ok && rc == 0;
}

typedef struct version_probe {
  int64_t version;
} version_probe_t;

static bool count_version(const cqrs_event_t *e, void *data) {
  ((version_probe_t *)data)->version = e->version;
  return true;
}

cqrs_code_t cqrs_test_given_for(cqrs_test_t *t, const cqrs_aggregate_type_t *atype, const char *id,
                                const cqrs_event_type_t *type, const void *payload) {
  cqrs_error_t err;
  if (!t || !atype || !type || !payload) return CQRS_EINVAL;
  version_probe_t probe = {0};
  cqrs_code_t rc = cqrs_store_read_stream(t->store, atype->name, id, 1, count_version, &probe, &err);
  if (rc) return rc;
  char cmd_id[32];
  snprintf(cmd_id, sizeof cmd_id, "given-%u", ++t->given);
  cqrs_envelope_t *env;
  if ((rc = cqrs_envelope_new(atype->name, id, cmd_id, NULL, &env, &err))) return rc;
  cqrs_event_t *e;
  rc = cqrs_event_new(type, env, NULL, probe.version + 1, cqrs_clock_now_ms(t->clock), payload, &e, &err);
  cqrs_envelope_unref(env);
  if (rc) return rc;
  cqrs_append_t req = {atype->name, id, probe.version, cmd_id, &e, 1};
  cqrs_append_result_t res;
  rc = cqrs_store_append(t->store, &req, &res, &err);
  cqrs_event_unref(e);
  if (rc) fprintf(stderr, "cqrs_test_given: %s\n", err.message);
  return rc;
}

cqrs_code_t cqrs_test_given(cqrs_test_t *t, const cqrs_event_type_t *type, const void *payload) {
  if (!t) return CQRS_EINVAL;
  return cqrs_test_given_for(t, t->type, t->id, type, payload);
}

static void when_done(const cqrs_result_t *r, void *data) {
  cqrs_test_t *t = data;
  t->error = r->error;
  t->done = true;
}

static bool collect(const cqrs_event_t *e, void *data) {
  cqrs_test_t *t = data;
  if (strcmp(cqrs_event_causation_id(e), t->cmd_id)) return true; /* a subscriber's or process's */
  return vec_push(&t->events, e);
}

/* Runs the loop until it stops, and again after each advance of the clock
 * to a timer that keeps the loop running (a back-off, a retry). */
static void run_until_idle(cqrs_test_t *t) {
  uint64_t ms;
  do {
    uv_run(&t->loop, UV_RUN_DEFAULT);
  } while (cqrs_clock_next_due(t->clock, &ms) && cqrs_clock_advance(t->clock, ms) == CQRS_OK);
}

void cqrs_test_run(cqrs_test_t *t) {
  if (t) run_until_idle(t);
}

cqrs_clock_t *cqrs_test_clock(cqrs_test_t *t) { return t ? t->clock : NULL; }

void cqrs_test_advance(cqrs_test_t *t, uint64_t ms) {
  if (!t) return;
  cqrs_clock_advance(t->clock, ms);
  run_until_idle(t);
}

cqrs_code_t cqrs_test_when(cqrs_test_t *t, const cqrs_command_type_t *type, const void *payload) {
  if (!t) return CQRS_EINVAL;
  vec_clear(&t->events);
  cqrs_error_clear(&t->error);
  t->done = false;
  int64_t head = 0;
  cqrs_store_head(t->store, &head, NULL);
  cqrs_command_t *cmd;
  if (cqrs_command_new(type, payload, &cmd, &t->error)) return CQRS_OK; /* the result is the error */
  snprintf(t->cmd_id, sizeof t->cmd_id, "%s", cqrs_command_id(cmd));
  cqrs_code_t rc = cqrs_dispatcher_send(t->d, cmd, when_done, t);
  if (rc) return rc;
  run_until_idle(t);
  if (!t->done) return CQRS_ESTATE;
  return cqrs_store_read_all(t->store, head + 1, SIZE_MAX, collect, t, NULL);
}

const cqrs_error_t *cqrs_test_error(const cqrs_test_t *t) { return t ? &t->error : NULL; }
size_t cqrs_test_event_count(const cqrs_test_t *t) { return t ? t->events.len : 0; }
const cqrs_event_t *cqrs_test_event(const cqrs_test_t *t, size_t i) {
  return t && i < t->events.len ? t->events.items[i] : NULL;
}
cqrs_dispatcher_t *cqrs_test_dispatcher(cqrs_test_t *t) { return t ? t->d : NULL; }

cqrs_aggregate_t *cqrs_test_load(cqrs_test_t *t) {
  cqrs_aggregate_t *agg = NULL;
  if (t) cqrs_repository_load(t->store, t->type, t->id, &agg, NULL);
  return agg;
}

static char *payload_json(const cqrs_event_type_t *type, const void *payload) {
  bson_t b = BSON_INITIALIZER;
  cqrs_fields_encode(type->fields, payload, &b, NULL);
  char *json = bson_as_relaxed_extended_json(&b, NULL);
  bson_destroy(&b);
  return json;
}

static bool same_payload(const cqrs_event_type_t *type, const void *a, const void *b) {
  bson_t x = BSON_INITIALIZER, y = BSON_INITIALIZER;
  cqrs_fields_encode(type->fields, a, &x, NULL);
  cqrs_fields_encode(type->fields, b, &y, NULL);
  bool eq = bson_equal(&x, &y);
  bson_destroy(&x);
  bson_destroy(&y);
  return eq;
}

static bool outcome_ok(const cqrs_test_t *t, char *msg, size_t cap) {
  if (t->error.code == CQRS_OK) return true;
  snprintf(msg, cap, "expected events, but the command failed: %s (%s): %s", cqrs_code_name(t->error.code),
           t->error.name, t->error.message);
  return false;
}

bool cqrs_test_check_events(const cqrs_test_t *t, const cqrs_expected_event_t *expected, char *msg, size_t cap) {
  if (!t || !expected) {
    snprintf(msg, cap, "NULL fixture or expectation");
    return false;
  }
  if (!outcome_ok(t, msg, cap)) return false;
  size_t n = 0;
  while (expected[n].type) n++;
  for (size_t i = 0; i < n || i < t->events.len; i++) {
    const cqrs_event_t *got = i < t->events.len ? t->events.items[i] : NULL;
    const cqrs_expected_event_t *want = i < n ? &expected[i] : NULL;
    if (!got || !want) {
      snprintf(msg, cap, "expected %zu event(s), got %zu; event %zu is %s %s", n, t->events.len, i + 1,
               got ? "unexpected:" : "missing:", got ? got->type->name : want->type->name);
      return false;
    }
    if (got->type != want->type || !same_payload(want->type, want->payload, got->payload)) {
      char *g = payload_json(got->type, got->payload), *w = payload_json(want->type, want->payload);
      snprintf(msg, cap, "event %zu: expected %s %s, got %s %s", i + 1, want->type->name, w ? w : "?",
               got->type->name, g ? g : "?");
      bson_free(g);
      bson_free(w);
      return false;
    }
  }
  return true;
}

bool cqrs_test_check_rejected(const cqrs_test_t *t, const char *reason, char *msg, size_t cap) {
  if (!t || !reason) {
    snprintf(msg, cap, "NULL fixture or reason");
    return false;
  }
  if (t->error.code != CQRS_EREJECTED || strcmp(t->error.name, reason)) {
    snprintf(msg, cap, "expected rejection '%s', got %s '%s': %s", reason, cqrs_code_name(t->error.code),
             t->error.name, t->error.message);
    return false;
  }
  if (t->events.len) {
    snprintf(msg, cap, "rejected as expected, but %zu event(s) were committed", t->events.len);
    return false;
  }
  return true;
}

bool cqrs_test_check_error(const cqrs_test_t *t, cqrs_code_t code, char *msg, size_t cap) {
  if (!t) {
    snprintf(msg, cap, "NULL fixture");
    return false;
  }
  if (t->error.code != code) {
    snprintf(msg, cap, "expected error %s, got %s '%s': %s", cqrs_code_name(code), cqrs_code_name(t->error.code),
             t->error.name, t->error.message);
    return false;
  }
  if (t->events.len) {
    snprintf(msg, cap, "failed as expected, but %zu event(s) were committed", t->events.len);
    return false;
  }
  return true;
}

bool cqrs_process_test_check_sent(const cqrs_process_test_t *t, const cqrs_expected_step_t *expected, char *msg,
                                  size_t cap) {
  size_t want = 0;
  while (expected && expected[want].step) want++;
  size_t got = cqrs_process_test_sent_count(t);
  for (size_t i = 0; i < want && i < got; i++) {
    const cqrs_command_type_t *type = NULL;
    const char *step = cqrs_process_test_sent(t, i, &type, NULL);
    if (!step || strcmp(step, expected[i].step) || type != expected[i].type) {
      snprintf(msg, cap, "step %zu sent: %s (%s), expected %s (%s)", i, step ? step : "(none)",
               type && type->name ? type->name : "?", expected[i].step,
               expected[i].type && expected[i].type->name ? expected[i].type->name : "?");
      return false;
    }
  }
  if (got != want) {
    snprintf(msg, cap, "%zu step(s) sent, expected %zu", got, want);
    return false;
  }
  return true;
}
