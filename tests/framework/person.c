#include "person.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const cqrs_field_t registered_fields[] = {
    CQRS_STRING(person_registered_t, name, "name", CQRS_F_REQUIRED | CQRS_F_PERSONAL),
    CQRS_STRING(person_registered_t, email, "email", CQRS_F_PERSONAL),
    CQRS_INT64(person_registered_t, born, "born", CQRS_F_PERSONAL),
    CQRS_STRING(person_registered_t, city, "city", 0),
    CQRS_SUBJECT_OWNER,
    CQRS_FIELDS_END};
static const cqrs_field_t noted_fields[] = {
    CQRS_STRING(person_noted_t, person_id, "personId", CQRS_F_REQUIRED | CQRS_F_SUBJECT),
    CQRS_STRING(person_noted_t, note, "note", CQRS_F_PERSONAL), CQRS_FIELDS_END};

const cqrs_event_type_t person_registered = {.name = "person.registered", .schema_version = 1, .payload_size = sizeof(person_registered_t), .fields = registered_fields};
const cqrs_event_type_t person_noted = {.name = "person.noted", .schema_version = 1, .payload_size = sizeof(person_noted_t), .fields = noted_fields};

static void on_registered(void *state, const cqrs_event_t *e) {
  person_state_t *s = state;
  const person_registered_t *p = e->payload;
  s->registered = true;
  memcpy(s->name, p->name, sizeof s->name);
  memcpy(s->email, p->email, sizeof s->email);
  s->events++;
}

static void on_noted(void *state, const cqrs_event_t *e) {
  (void)e;
  ((person_state_t *)state)->events++;
}

static void on_forgotten(void *state, const cqrs_event_t *e) {
  (void)e;
  person_state_t *s = state;
  snprintf(s->name, sizeof s->name, "%s", CQRS_FORGOTTEN);
  snprintf(s->email, sizeof s->email, "%s", CQRS_FORGOTTEN);
  s->events++;
}

static const cqrs_apply_entry_t person_apply[] = {{&person_registered, on_registered},
                                                  {&person_noted, on_noted},
                                                  {&cqrs_forgotten_event_type, on_forgotten},
                                                  {NULL, NULL}};
static const cqrs_field_t state_fields[] = {CQRS_BOOL(person_state_t, registered, "registered", 0),
                                            CQRS_STRING(person_state_t, name, "name", CQRS_F_PERSONAL),
                                            CQRS_STRING(person_state_t, email, "email", CQRS_F_PERSONAL),
                                            CQRS_INT64(person_state_t, events, "events", 0),
                                            CQRS_SUBJECT_OWNER,
                                            CQRS_FIELDS_END};

const cqrs_aggregate_type_t person_type = {.name = "person",
                                           .state_size = sizeof(person_state_t),
                                           .apply = person_apply,
                                           .snapshot_fields = state_fields,
                                           .snapshot_version = 1,
                                           .snapshot_every = 2};

cqrs_registry_t *person_registry(void) {
  cqrs_registry_t *reg = NULL;
  if (cqrs_registry_new(&reg, NULL) || cqrs_registry_add_aggregate(reg, &person_type, NULL)) {
    fprintf(stderr, "person_registry failed\n");
    abort();
  }
  return reg;
}

cqrs_code_t person_register(cqrs_store_t *store, const char *id, const char *cmd, const char *name,
                            const char *email, int64_t born, cqrs_error_t *err) {
  cqrs_aggregate_t *agg;
  cqrs_code_t rc = cqrs_repository_load(store, &person_type, id, &agg, err);
  if (rc) return rc;
  person_registered_t p;
  memset(&p, 0, sizeof p);
  snprintf(p.name, sizeof p.name, "%s", name);
  snprintf(p.email, sizeof p.email, "%s", email);
  snprintf(p.city, sizeof p.city, "Lyon");
  p.born = born;
  cqrs_cause_t cause = {cmd, NULL};
  rc = cqrs_aggregate_raise(agg, &person_registered, &p, err);
  if (!rc) rc = cqrs_repository_save(store, agg, &cause, NULL, err);
  cqrs_aggregate_destroy(agg);
  return rc;
}

bool person_has_bytes(const void *hay, size_t len, const char *needle) {
  size_t n = strlen(needle);
  const unsigned char *h = hay;
  for (size_t i = 0; n && i + n <= len; i++) {
    if (!memcmp(h + i, needle, n)) return true;
  }
  return false;
}

/* ---- a key store the tests can look into ---- */

#define TK_MAX 64
struct test_keys {
  pthread_mutex_t lock;
  char subjects[TK_MAX][CQRS_ID_MAX];
  cqrs_key_record_t recs[TK_MAX];
  int n, gets;
  bool down;
};

static int find(test_keys_t *tk, const char *subject) {
  for (int i = 0; i < tk->n; i++) {
    if (!strcmp(tk->subjects[i], subject)) return i;
  }
  return -1;
}

static cqrs_code_t tk_fail(test_keys_t *tk, cqrs_error_t *err) {
  pthread_mutex_unlock(&tk->lock);
  return cqrs_error_set(err, CQRS_ESTORE, "test key store is down");
}

static cqrs_code_t tk_get(void *impl, const char *subject, cqrs_key_record_t *out, cqrs_error_t *err) {
  test_keys_t *tk = impl;
  pthread_mutex_lock(&tk->lock);
  if (tk->down) return tk_fail(tk, err);
  tk->gets++;
  int i = find(tk, subject);
  if (i >= 0) *out = tk->recs[i];
  else out->state = CQRS_SUBJECT_UNKNOWN;
  pthread_mutex_unlock(&tk->lock);
  return CQRS_OK;
}

static int make(test_keys_t *tk, const char *subject) {
  int i = find(tk, subject);
  if (i >= 0 || tk->n == TK_MAX) return i;
  i = tk->n++;
  snprintf(tk->subjects[i], CQRS_ID_MAX, "%s", subject);
  memset(&tk->recs[i], 0, sizeof tk->recs[i]);
  return i;
}

static cqrs_code_t tk_create(void *impl, const char *subject, const cqrs_key_record_t *rec, cqrs_key_record_t *out,
                             cqrs_error_t *err) {
  test_keys_t *tk = impl;
  pthread_mutex_lock(&tk->lock);
  if (tk->down) return tk_fail(tk, err);
  int i = find(tk, subject);
  if (i < 0 && (i = make(tk, subject)) >= 0) tk->recs[i] = *rec;
  if (i >= 0) *out = tk->recs[i];
  pthread_mutex_unlock(&tk->lock);
  return i >= 0 ? CQRS_OK : cqrs_error_set(err, CQRS_ETOO_LARGE, "test key store is full");
}

static cqrs_code_t tk_forget(void *impl, const char *subject, int64_t at, cqrs_error_t *err) {
  test_keys_t *tk = impl;
  pthread_mutex_lock(&tk->lock);
  if (tk->down) return tk_fail(tk, err);
  int i = make(tk, subject);
  if (i >= 0 && tk->recs[i].state != CQRS_SUBJECT_FORGOTTEN) {
    memset(&tk->recs[i], 0, sizeof tk->recs[i]);
    tk->recs[i].state = CQRS_SUBJECT_FORGOTTEN;
    tk->recs[i].forgotten_at = at;
  }
  pthread_mutex_unlock(&tk->lock);
  return CQRS_OK;
}

static cqrs_code_t tk_rewrap(void *impl, const char *subject, const uint8_t old_wrap[8], const cqrs_key_record_t *rec,
                             cqrs_error_t *err) {
  test_keys_t *tk = impl;
  pthread_mutex_lock(&tk->lock);
  int i = find(tk, subject);
  cqrs_code_t rc = CQRS_OK;
  if (i < 0 || memcmp(tk->recs[i].wrap, old_wrap, 8)) rc = cqrs_error_set(err, CQRS_ECONFLICT, "changed");
  else tk->recs[i] = *rec;
  pthread_mutex_unlock(&tk->lock);
  return rc;
}

static cqrs_code_t tk_list(void *impl, cqrs_key_visit_cb cb, void *data, cqrs_error_t *err) {
  test_keys_t *tk = impl;
  (void)err;
  for (int i = 0; i < tk->n; i++) {
    if (!cb(tk->subjects[i], &tk->recs[i], data)) break;
  }
  return CQRS_OK;
}

static const cqrs_keys_ops_t test_keys_ops = {.get = tk_get, .create = tk_create, .forget = tk_forget,
                                              .list = tk_list, .destroy = NULL, .rewrap = tk_rewrap};

test_keys_t *test_keys_new(void) {
  test_keys_t *tk = calloc(1, sizeof *tk);
  if (tk) pthread_mutex_init(&tk->lock, NULL);
  return tk;
}

void test_keys_free(test_keys_t *tk) {
  if (!tk) return;
  pthread_mutex_destroy(&tk->lock);
  free(tk);
}

cqrs_keys_t *test_keys_view(test_keys_t *tk, const cqrs_keys_options_t *opts) {
  cqrs_keys_t *k = NULL;
  cqrs_keys_new(&test_keys_ops, tk, opts, &k, NULL);
  return k;
}

void test_keys_down(test_keys_t *tk, bool down) {
  pthread_mutex_lock(&tk->lock);
  tk->down = down;
  pthread_mutex_unlock(&tk->lock);
}

int test_keys_gets(const test_keys_t *tk) { return tk->gets; }

bool test_keys_record(test_keys_t *tk, const char *subject, cqrs_key_record_t *out) {
  pthread_mutex_lock(&tk->lock);
  int i = find(tk, subject);
  if (i >= 0) *out = tk->recs[i];
  pthread_mutex_unlock(&tk->lock);
  return i >= 0;
}
