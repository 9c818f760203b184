/* Batches (CQRS_HANDLER_BATCH): commands aimed at one hot aggregate run as
 * batches, each command its own commit and result. A small domain of its
 * own, shaped like the invoice book: a book numbers entries (the n-th
 * "tbook.numbered" carries n), an entry is read, never changed, by the
 * command that numbers it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cqrs/backend.h>
#include <cqrs/cqrs.h>

/* ---- the domain ---- */

typedef struct book_state {
  int64_t last;
} book_state_t;
typedef struct entry_state {
  bool recorded;
} entry_state_t;
typedef struct numbered {
  char entry[CQRS_ID_MAX];
  int64_t number;
} numbered_t;
typedef struct entry_ev {
  char entry[CQRS_ID_MAX];
} entry_ev_t;

enum { NORMAL, REFUSE, RAISE_THEN_REFUSE, NOOP, LOAD_MANY };
typedef struct issue {
  char entry[CQRS_ID_MAX];
  char book[CQRS_ID_MAX];
  char target[CQRS_ID_MAX]; /* the book it numbers in, when not `book` */
  int32_t mode;
} issue_t;

static const cqrs_field_t numbered_fields[] = {CQRS_STRING(numbered_t, entry, "entry", CQRS_F_REQUIRED),
                                               CQRS_INT64(numbered_t, number, "number", 0), CQRS_FIELDS_END};
static const cqrs_field_t entry_fields[] = {CQRS_STRING(entry_ev_t, entry, "entry", CQRS_F_REQUIRED), CQRS_FIELDS_END};
static const cqrs_field_t issue_fields[] = {
    CQRS_STRING(issue_t, entry, "entry", CQRS_F_REQUIRED), CQRS_STRING(issue_t, book, "book", CQRS_F_REQUIRED),
    CQRS_STRING(issue_t, target, "target", CQRS_F_OPTIONAL), CQRS_INT32(issue_t, mode, "mode", 0), CQRS_FIELDS_END};
static const cqrs_field_t book_snap[] = {CQRS_INT64(book_state_t, last, "last", 0), CQRS_FIELDS_END};

static const cqrs_event_type_t numbered = {.name = "tbook.numbered", .schema_version = 1,
                                           .payload_size = sizeof(numbered_t), .fields = numbered_fields};
static const cqrs_event_type_t recorded = {.name = "tentry.recorded", .schema_version = 1,
                                           .payload_size = sizeof(entry_ev_t), .fields = entry_fields};

static void on_numbered(void *state, const cqrs_event_t *e) {
  (void)e;
  ((book_state_t *)state)->last++;
}
static void on_recorded(void *state, const cqrs_event_t *e) {
  (void)e;
  ((entry_state_t *)state)->recorded = true;
}
static const cqrs_apply_entry_t book_apply[] = {{&numbered, on_numbered}, {NULL, NULL}};
static const cqrs_apply_entry_t entry_apply[] = {{&recorded, on_recorded}, {NULL, NULL}};
static const cqrs_aggregate_type_t book_type = {.name = "tbook", .state_size = sizeof(book_state_t),
                                                .apply = book_apply, .snapshot_fields = book_snap,
                                                .snapshot_version = 1, .snapshot_every = 10};
static const cqrs_aggregate_type_t entry_type = {.name = "tentry", .state_size = sizeof(entry_state_t),
                                                 .apply = entry_apply};

static cqrs_code_t issue_id(const void *p, char *buf, size_t cap, cqrs_error_t *err) {
  (void)cap;
  return cqrs_id_derive(buf, "issue", ((const issue_t *)p)->entry, err);
}
static const char *issue_book(const void *p) { return ((const issue_t *)p)->book; }
static const char *record_entry(const void *p) { return ((const entry_ev_t *)p)->entry; }
static const cqrs_command_type_t issue_cmd = {.name = "tbook.issue", .payload_size = sizeof(issue_t),
                                              .fields = issue_fields, .make_id = issue_id,
                                              .aggregate_id = issue_book};
static const cqrs_command_type_t record_cmd = {.name = "tentry.record", .payload_size = sizeof(entry_ev_t),
                                               .fields = entry_fields, .aggregate_id = record_entry};

static cqrs_code_t handle_issue(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)data;
  const issue_t *p = cqrs_command_payload(cmd);
  cqrs_aggregate_t *entry, *book;
  cqrs_code_t rc = cqrs_context_load(ctx, &entry_type, p->entry, &entry, err);
  if (rc) return rc;
  if (((const entry_state_t *)cqrs_aggregate_state_const(entry))->recorded)
    return cqrs_reject(err, "entry.recorded", "entry %s is recorded", p->entry);
  if (p->mode == REFUSE) return cqrs_reject(err, "entry.refused", "entry %s is refused", p->entry);
  if (p->mode == LOAD_MANY) {
    /* Eight aggregates in all: what a context holds; then refused. */
    for (int i = 0; i < 7; i++) {
      char id[16];
      snprintf(id, sizeof id, "many-%d", i);
      cqrs_aggregate_t *other;
      if ((rc = cqrs_context_load(ctx, &entry_type, id, &other, err))) return rc;
    }
    return cqrs_reject(err, "entry.refused", "entry %s loads too much", p->entry);
  }
  if ((rc = cqrs_context_load(ctx, &book_type, p->target[0] ? p->target : p->book, &book, err))) return rc;
  if (p->mode == NOOP) return CQRS_OK;
  numbered_t e;
  memset(&e, 0, sizeof e);
  memcpy(e.entry, p->entry, sizeof e.entry);
  e.number = ((const book_state_t *)cqrs_aggregate_state_const(book))->last + 1;
  bson_t value = BSON_INITIALIZER;
  BSON_APPEND_INT64(&value, "number", e.number);
  rc = cqrs_context_set_value(ctx, &value, err);
  bson_destroy(&value);
  if (!rc) rc = cqrs_aggregate_raise(book, &numbered, &e, err);
  if (!rc && p->mode == RAISE_THEN_REFUSE) return cqrs_reject(err, "entry.late", "entry %s refused late", p->entry);
  return rc;
}

static cqrs_code_t handle_record(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)data;
  const entry_ev_t *p = cqrs_command_payload(cmd);
  cqrs_aggregate_t *entry;
  cqrs_code_t rc = cqrs_context_load(ctx, &entry_type, p->entry, &entry, err);
  return rc ? rc : cqrs_aggregate_raise(entry, &recorded, p, err);
}

static cqrs_registry_t *registry(void) {
  cqrs_registry_t *reg;
  assert_int_equal(cqrs_registry_new(&reg, NULL), CQRS_OK);
  assert_int_equal(cqrs_registry_add_event(reg, &numbered, NULL), CQRS_OK);
  assert_int_equal(cqrs_registry_add_event(reg, &recorded, NULL), CQRS_OK);
  assert_int_equal(cqrs_registry_add_aggregate(reg, &book_type, NULL), CQRS_OK);
  assert_int_equal(cqrs_registry_add_aggregate(reg, &entry_type, NULL), CQRS_OK);
  assert_int_equal(cqrs_registry_add_command(reg, &issue_cmd, NULL), CQRS_OK);
  assert_int_equal(cqrs_registry_add_command(reg, &record_cmd, NULL), CQRS_OK);
  return reg;
}

static cqrs_command_t *issue_new(const char *entry, const char *book, int mode, const char *target) {
  issue_t p;
  memset(&p, 0, sizeof p);
  snprintf(p.entry, sizeof p.entry, "%s", entry);
  snprintf(p.book, sizeof p.book, "%s", book);
  if (target) snprintf(p.target, sizeof p.target, "%s", target);
  p.mode = mode;
  cqrs_command_t *cmd;
  cqrs_error_t err;
  if (cqrs_command_new(&issue_cmd, &p, &cmd, &err)) fail_msg("%s", err.message);
  return cmd;
}

/* ---- a store that counts (and may hook) the appends it forwards ---- */

typedef struct counting {
  cqrs_store_t *inner;
  _Atomic long appends, many, commits;
  /* Called before forwarding an append of this command id, once. */
  const char *trigger;
  void (*hook)(void *data);
  void *hook_data;
} counting_t;

static bool fire(counting_t *s, const char *command_id) {
  if (!s->trigger || strcmp(s->trigger, command_id)) return false;
  s->trigger = NULL;
  s->hook(s->hook_data);
  return true;
}

static cqrs_code_t s_append(void *impl, const cqrs_append_t *req, cqrs_append_result_t *res, cqrs_error_t *err) {
  counting_t *s = impl;
  fire(s, req->command_id);
  atomic_fetch_add(&s->appends, 1);
  atomic_fetch_add(&s->commits, 1);
  return cqrs_store_append(s->inner, req, res, err);
}
static cqrs_code_t s_append_many(void *impl, const cqrs_append_t *reqs, size_t n, cqrs_append_result_t *res,
                                 size_t *done, cqrs_error_t *err) {
  counting_t *s = impl;
  atomic_fetch_add(&s->many, 1);
  atomic_fetch_add(&s->commits, (long)n);
  return cqrs_store_append_many(s->inner, reqs, n, res, done, err);
}
static cqrs_code_t s_read_stream(void *impl, const char *type, const char *id, int64_t from, cqrs_event_visit_cb cb,
                                 void *data, cqrs_error_t *err) {
  return cqrs_store_read_stream(((counting_t *)impl)->inner, type, id, from, cb, data, err);
}
static cqrs_code_t s_read_all(void *impl, int64_t from, size_t limit, cqrs_event_visit_cb cb, void *data,
                              cqrs_error_t *err) {
  return cqrs_store_read_all(((counting_t *)impl)->inner, from, limit, cb, data, err);
}
static cqrs_code_t s_head(void *impl, int64_t *position, cqrs_error_t *err) {
  return cqrs_store_head(((counting_t *)impl)->inner, position, err);
}
static cqrs_code_t s_snapshot_load(void *impl, const char *type, const char *id, cqrs_snapshot_t *out, bool *found,
                                   cqrs_error_t *err) {
  return cqrs_store_snapshot_load(((counting_t *)impl)->inner, type, id, out, found, err);
}
static cqrs_code_t s_snapshot_save(void *impl, const cqrs_snapshot_t *snap, cqrs_error_t *err) {
  return cqrs_store_snapshot_save(((counting_t *)impl)->inner, snap, err);
}
static cqrs_code_t s_has_command(void *impl, const char *command_id, bool *found, cqrs_error_t *err) {
  return cqrs_store_has_command(((counting_t *)impl)->inner, command_id, found, err);
}
static void s_destroy(void *impl) { (void)impl; }

#define COUNTING_OPS(blocking_, many_)                                                                          \
  {.name = "counting", .blocking = (blocking_), .append = s_append, .read_stream = s_read_stream,              \
   .read_all = s_read_all, .head = s_head, .snapshot_load = s_snapshot_load, .snapshot_save = s_snapshot_save, \
   .has_command = s_has_command, .destroy = s_destroy, .append_many = (many_)}
static const cqrs_store_ops_t counting_ops = COUNTING_OPS(false, s_append_many);
static const cqrs_store_ops_t counting_blocking_ops = COUNTING_OPS(true, s_append_many);
static const cqrs_store_ops_t one_by_one_ops = COUNTING_OPS(false, NULL);

/* ---- the fixture ---- */

#define MAX_OUT 1024

typedef struct fx fx_t;
typedef struct outcome {
  fx_t *fx;
  cqrs_code_t code;
  char name[CQRS_NAME_MAX];
  bool duplicate;
  size_t events;
  int64_t version, number, position;
  int order; /* when it completed: 1, 2, ... */
  atomic_int calls;
  int seen_then; /* events the subscriber had when it completed */
} outcome_t;

struct fx {
  uv_loop_t loop;
  cqrs_registry_t *reg;
  cqrs_store_t *mem, *store;
  counting_t count;
  cqrs_dispatcher_t *d;
  outcome_t out[MAX_OUT];
  atomic_int completed;
  int seen;          /* numbered events the subscriber got */
  bool seen_in_order; /* each one's number one more than the one before, per book */
  int64_t seen_last;
};

static cqrs_code_t subscriber(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  (void)err;
  fx_t *fx = data;
  if (strcmp(cqrs_event_aggregate_id(e), "b")) return CQRS_OK;
  int64_t n = ((const numbered_t *)e->payload)->number;
  if (n != fx->seen_last + 1) fx->seen_in_order = false;
  fx->seen_last = n;
  fx->seen++;
  return CQRS_OK;
}

static void fx_open(fx_t *fx, const cqrs_store_ops_t *ops, unsigned flags, unsigned retries, unsigned batch_max,
                    unsigned loops, bool keep_alive) {
  memset(fx, 0, sizeof *fx);
  assert_int_equal(uv_loop_init(&fx->loop), 0);
  fx->reg = registry();
  assert_int_equal(cqrs_memory_store_new(&fx->mem, NULL), CQRS_OK);
  fx->count.inner = fx->mem;
  assert_int_equal(cqrs_store_new(ops, &fx->count, &fx->store, NULL), CQRS_OK);
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.conflict_retries = retries;
  o.batch_max = batch_max;
  o.loops = loops;
  o.keep_alive = keep_alive;
  cqrs_error_t err;
  if (cqrs_dispatcher_new(&fx->loop, fx->reg, fx->store, &o, &fx->d, &err)) fail_msg("%s", err.message);
  static const cqrs_event_type_t *const types[] = {&numbered, NULL};
  if (cqrs_dispatcher_register(fx->d, &issue_cmd, handle_issue, NULL, CQRS_HANDLER_BATCH | flags, &err) ||
      cqrs_dispatcher_register(fx->d, &record_cmd, handle_record, NULL, 0, &err) ||
      cqrs_dispatcher_subscribe(fx->d, "numbers", types, subscriber, fx, 0, &err))
    fail_msg("%s", err.message);
  fx->seen_in_order = true;
  for (int i = 0; i < MAX_OUT; i++) fx->out[i].fx = fx;
}

static void fx_close(fx_t *fx) {
  assert_int_equal(cqrs_dispatcher_close(fx->d, NULL, NULL), CQRS_OK);
  assert_int_equal(uv_run(&fx->loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&fx->loop), 0);
  cqrs_store_destroy(fx->store);
  cqrs_store_destroy(fx->mem);
  cqrs_registry_destroy(fx->reg);
}

static void on_done(const cqrs_result_t *r, void *data) {
  outcome_t *o = data;
  o->code = r->error.code;
  snprintf(o->name, sizeof o->name, "%s", r->error.name);
  o->duplicate = r->duplicate;
  o->events = r->events;
  o->version = r->version;
  o->position = r->position;
  bson_iter_t it;
  o->number = r->value && bson_iter_init_find(&it, r->value, "number") ? bson_iter_int64(&it) : 0;
  o->seen_then = o->fx->seen;
  o->order = atomic_fetch_add(&o->fx->completed, 1) + 1;
  atomic_fetch_add(&o->calls, 1);
}

/* Sends command i (its outcome goes to out[i]). */
static void send_cmd(fx_t *fx, int i, cqrs_command_t *cmd) {
  assert_int_equal(cqrs_dispatcher_send(fx->d, cmd, on_done, &fx->out[i]), CQRS_OK);
}

static void send_issue(fx_t *fx, int i, const char *book, int mode, const char *target) {
  char entry[32];
  snprintf(entry, sizeof entry, "e%d", i);
  send_cmd(fx, i, issue_new(entry, book, mode, target));
}

static void run_until(fx_t *fx, int completed) {
  while (atomic_load(&fx->completed) < completed) uv_run(&fx->loop, UV_RUN_ONCE);
}

static void assert_numbered(const outcome_t *o, int64_t number) {
  if (o->code != CQRS_OK) fail_msg("outcome %s, numbered %lld expected", cqrs_code_name(o->code), (long long)number);
  assert_false(o->duplicate);
  assert_int_equal(o->events, 1);
  assert_int_equal(o->number, number);
  assert_int_equal(atomic_load(&o->calls), 1);
}

/* The numbers of book `id` in the store, in version order: 1, 2, ... n,
 * each entry once. Returns n. */
typedef struct book_read {
  int64_t n;
  char entries[MAX_OUT][CQRS_ID_MAX];
} book_read_t;

static bool read_number(const cqrs_event_t *e, void *data) {
  book_read_t *b = data;
  const numbered_t *p = e->payload;
  assert_int_equal(e->version, b->n + 1);
  assert_int_equal(p->number, b->n + 1);
  for (int64_t i = 0; i < b->n; i++) assert_string_not_equal(b->entries[i], p->entry);
  if (b->n < MAX_OUT) snprintf(b->entries[b->n], sizeof b->entries[0], "%s", p->entry);
  b->n++;
  return true;
}

static int64_t book_numbers(cqrs_store_t *store, const char *id, book_read_t *b) {
  memset(b, 0, sizeof *b);
  assert_int_equal(cqrs_store_read_stream(store, "tbook", id, 1, read_number, b, NULL), CQRS_OK);
  return b->n;
}

/* The entry store number `n` of book `id` went to. */
static const char *entry_of(book_read_t *b, int64_t n) { return b->entries[n - 1]; }

/* ---- order ---- */

/* Forty commands sent at once run as one batch: one call of the store,
 * numbers in the order sent, results in that order, the subscriber's
 * events in it before each caller hears back; the book's snapshots and
 * cached state carry on to the next batch. */
static void test_numbers_follow_send_order(void **state) {
  (void)state;
  static fx_t fx;
  fx_open(&fx, &counting_ops, 0, 5, 0, 1, false);
  for (int i = 0; i < 40; i++) send_issue(&fx, i, "b", NORMAL, NULL);
  uv_run(&fx.loop, UV_RUN_DEFAULT);
  assert_int_equal(atomic_load(&fx.completed), 40);
  for (int i = 0; i < 40; i++) {
    assert_numbered(&fx.out[i], i + 1);
    assert_int_equal(fx.out[i].version, i + 1);
    assert_int_equal(fx.out[i].order, i + 1);
    assert_true(fx.out[i].seen_then >= i + 1);
    if (i) assert_true(fx.out[i].position > fx.out[i - 1].position);
  }
  assert_int_equal(atomic_load(&fx.count.many), 1);
  assert_int_equal(atomic_load(&fx.count.appends), 0);
  assert_int_equal(atomic_load(&fx.count.commits), 40);
  for (int i = 40; i < 80; i++) send_issue(&fx, i, "b", NORMAL, NULL);
  uv_run(&fx.loop, UV_RUN_DEFAULT);
  for (int i = 40; i < 80; i++) assert_numbered(&fx.out[i], i + 1);
  assert_int_equal(atomic_load(&fx.count.many), 2);
  assert_int_equal(fx.seen, 80);
  assert_true(fx.seen_in_order);
  static book_read_t b;
  assert_int_equal(book_numbers(fx.store, "b", &b), 80);
  for (int i = 0; i < 80; i++) {
    char entry[16];
    snprintf(entry, sizeof entry, "e%d", i);
    assert_string_equal(entry_of(&b, i + 1), entry);
  }
  /* Each commit its own: causation and correlation are its command's. */
  cqrs_aggregate_t *book;
  assert_int_equal(cqrs_repository_load(fx.mem, &book_type, "b", &book, NULL), CQRS_OK);
  assert_int_equal(((const book_state_t *)cqrs_aggregate_state_const(book))->last, 80);
  cqrs_aggregate_destroy(book);
  cqrs_snapshot_t snap;
  bool found = false;
  assert_int_equal(cqrs_store_snapshot_load(fx.mem, "tbook", "b", &snap, &found, NULL), CQRS_OK);
  assert_true(found);
  assert_int_equal(snap.version, 80);
  bson_destroy(&snap.state);
  fx_close(&fx);
}

static bool check_cause(const cqrs_event_t *e, void *data) {
  (void)data;
  char want[CQRS_ID_MAX];
  assert_int_equal(cqrs_id_derive(want, "issue", ((const numbered_t *)e->payload)->entry, NULL), CQRS_OK);
  assert_string_equal(cqrs_event_causation_id(e), want);
  assert_string_equal(cqrs_event_correlation_id(e), want);
  return true;
}

static void test_each_command_its_own_commit(void **state) {
  (void)state;
  static fx_t fx;
  fx_open(&fx, &counting_ops, 0, 5, 0, 1, false);
  for (int i = 0; i < 12; i++) send_issue(&fx, i, "b", NORMAL, NULL);
  uv_run(&fx.loop, UV_RUN_DEFAULT);
  assert_int_equal(cqrs_store_read_stream(fx.mem, "tbook", "b", 1, check_cause, NULL, NULL), CQRS_OK);
  for (int i = 0; i < 12; i++) {
    char entry[16], id[CQRS_ID_MAX];
    snprintf(entry, sizeof entry, "e%d", i);
    assert_int_equal(cqrs_id_derive(id, "issue", entry, NULL), CQRS_OK);
    bool found = false;
    assert_int_equal(cqrs_store_has_command(fx.mem, id, &found, NULL), CQRS_OK);
    assert_true(found);
  }
  fx_close(&fx);
}

/* ---- what cannot share a batch ---- */

/* A rejection leaves the others committed, numbers without a gap; a
 * command that raised and then rejected runs alone, its events nowhere. */
static void test_a_rejection_leaves_the_others_committed(void **state) {
  (void)state;
  static fx_t fx;
  fx_open(&fx, &counting_ops, 0, 5, 0, 1, false);
  for (int i = 0; i < 10; i++) send_issue(&fx, i, "b", i == 3 ? REFUSE : i == 6 ? RAISE_THEN_REFUSE : NORMAL, NULL);
  uv_run(&fx.loop, UV_RUN_DEFAULT);
  assert_int_equal(atomic_load(&fx.completed), 10);
  assert_int_equal(fx.out[3].code, CQRS_EREJECTED);
  assert_string_equal(fx.out[3].name, "entry.refused");
  assert_int_equal(fx.out[6].code, CQRS_EREJECTED);
  assert_string_equal(fx.out[6].name, "entry.late");
  assert_int_equal(fx.out[6].events, 0);
  int64_t n = 0;
  for (int i = 0; i < 10; i++) {
    if (i != 3 && i != 6) assert_numbered(&fx.out[i], ++n);
    assert_int_equal(fx.out[i].order, i + 1);
  }
  static book_read_t b;
  assert_int_equal(book_numbers(fx.store, "b", &b), 8);
  /* #0-#5 in one call, #6 alone (nothing to commit), #7-#9 in another. */
  assert_int_equal(atomic_load(&fx.count.many), 2);
  assert_int_equal(atomic_load(&fx.count.commits), 8);
  fx_close(&fx);
}

/* One that changes another aggregate, one that needs the whole context,
 * one that changes nothing: each runs alone, the others batch around it. */
static void test_what_cannot_share_a_batch_runs_alone(void **state) {
  (void)state;
  static fx_t fx;
  fx_open(&fx, &counting_ops, 0, 5, 0, 1, false);
  for (int i = 0; i < 8; i++)
    send_issue(&fx, i, "b", i == 4 ? LOAD_MANY : i == 6 ? NOOP : NORMAL, i == 2 ? "other" : NULL);
  uv_run(&fx.loop, UV_RUN_DEFAULT);
  assert_int_equal(atomic_load(&fx.completed), 8);
  assert_numbered(&fx.out[2], 1); /* the other book's first */
  assert_int_equal(fx.out[4].code, CQRS_EREJECTED);
  assert_string_equal(fx.out[4].name, "entry.refused"); /* not the context's limit: alone it fits */
  assert_int_equal(fx.out[6].code, CQRS_OK);
  assert_int_equal(fx.out[6].events, 0);
  assert_int_equal(fx.out[6].version, 0); /* a lone command that loaded two aggregates */
  int64_t n = 0;
  for (int i = 0; i < 8; i++) {
    if (i != 2 && i != 4 && i != 6) assert_numbered(&fx.out[i], ++n);
    assert_int_equal(fx.out[i].order, i + 1);
  }
  static book_read_t b;
  assert_int_equal(book_numbers(fx.store, "b", &b), 5);
  assert_int_equal(book_numbers(fx.store, "other", &b), 1);
  fx_close(&fx);
}

/* ---- duplicates ---- */

static void test_duplicates_in_a_batch(void **state) {
  (void)state;
  static fx_t fx;
  fx_open(&fx, &counting_ops, 0, 5, 0, 1, false);
  /* The same natural id twice in one batch: the second is the duplicate,
   * the one after it runs again and takes the next number. */
  send_cmd(&fx, 0, issue_new("a", "b", NORMAL, NULL));
  send_cmd(&fx, 1, issue_new("c", "b", NORMAL, NULL));
  send_cmd(&fx, 2, issue_new("a", "b", NORMAL, NULL));
  send_cmd(&fx, 3, issue_new("d", "b", NORMAL, NULL));
  uv_run(&fx.loop, UV_RUN_DEFAULT);
  assert_numbered(&fx.out[0], 1);
  assert_numbered(&fx.out[1], 2);
  assert_int_equal(fx.out[2].code, CQRS_OK);
  assert_true(fx.out[2].duplicate);
  assert_int_equal(fx.out[2].events, 0);
  assert_numbered(&fx.out[3], 3);
  /* One committed in an earlier batch, its handler unaware of it: the
   * store says duplicate. */
  send_cmd(&fx, 4, issue_new("e", "b", NORMAL, NULL));
  send_cmd(&fx, 5, issue_new("a", "b", NORMAL, NULL));
  send_cmd(&fx, 6, issue_new("f", "b", NORMAL, NULL));
  uv_run(&fx.loop, UV_RUN_DEFAULT);
  assert_numbered(&fx.out[4], 4);
  assert_true(fx.out[5].code == CQRS_OK && fx.out[5].duplicate && fx.out[5].events == 0);
  assert_numbered(&fx.out[6], 5);
  /* One whose handler sees what it did (its entry recorded since) and
   * rejects: answered as the duplicate it is, the others untouched. */
  entry_ev_t rec = {"c"};
  cqrs_command_t *cmd;
  assert_int_equal(cqrs_command_new(&record_cmd, &rec, &cmd, NULL), CQRS_OK);
  send_cmd(&fx, 7, cmd);
  uv_run(&fx.loop, UV_RUN_DEFAULT);
  assert_int_equal(fx.out[7].code, CQRS_OK);
  long many = atomic_load(&fx.count.many);
  send_cmd(&fx, 8, issue_new("g", "b", NORMAL, NULL));
  send_cmd(&fx, 9, issue_new("c", "b", NORMAL, NULL));
  send_cmd(&fx, 10, issue_new("h", "b", NORMAL, NULL));
  uv_run(&fx.loop, UV_RUN_DEFAULT);
  assert_numbered(&fx.out[8], 6);
  assert_true(fx.out[9].code == CQRS_OK && fx.out[9].duplicate && fx.out[9].events == 0);
  assert_numbered(&fx.out[10], 7);
  assert_int_equal(atomic_load(&fx.count.many), many + 1); /* g and h in one call */
  static book_read_t b;
  assert_int_equal(book_numbers(fx.store, "b", &b), 7);
  fx_close(&fx);
}

/* ---- another writer ---- */

/* A second dispatcher on the same store, on a loop and thread of its own. */
typedef struct other {
  uv_loop_t loop;
  uv_async_t stop;
  uv_thread_t thread;
  cqrs_dispatcher_t *d;
  cqrs_store_t *store;
  const cqrs_registry_t *reg;
  uv_sem_t ready;
  outcome_t out;
} other_t;

static void other_stop(uv_async_t *a) {
  other_t *o = a->data;
  cqrs_dispatcher_close(o->d, NULL, NULL);
  uv_close((uv_handle_t *)a, NULL);
}

static void other_main(void *arg) {
  other_t *o = arg;
  assert_int_equal(uv_loop_init(&o->loop), 0);
  cqrs_dispatcher_options_t opts;
  cqrs_dispatcher_options_init(&opts);
  opts.keep_alive = true;
  assert_int_equal(cqrs_dispatcher_new(&o->loop, o->reg, o->store, &opts, &o->d, NULL), CQRS_OK);
  assert_int_equal(cqrs_dispatcher_register(o->d, &issue_cmd, handle_issue, NULL, 0, NULL), CQRS_OK);
  uv_async_init(&o->loop, &o->stop, other_stop);
  o->stop.data = o;
  uv_sem_post(&o->ready);
  uv_run(&o->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&o->loop), 0);
}

/* The hook: before our commit of a chosen command goes in, the other
 * dispatcher numbers an entry of its own in the same book. */
static void other_writes(void *data) {
  other_t *o = data;
  cqrs_error_t err;
  if (cqrs_dispatcher_execute(o->d, issue_new("theirs", "b", NORMAL, NULL), &err, NULL))
    fail_msg("the other writer: %s", err.message);
}

static void conflict_mid_batch(unsigned retries) {
  static fx_t fx;
  /* Appends in turn: the hook runs between two commits of one batch. */
  fx_open(&fx, &one_by_one_ops, 0, retries, 0, 1, false);
  static other_t other;
  memset(&other, 0, sizeof other);
  other.store = fx.mem;
  other.reg = fx.reg;
  uv_sem_init(&other.ready, 0);
  assert_int_equal(uv_thread_create(&other.thread, other_main, &other), 0);
  uv_sem_wait(&other.ready);
  char trigger[CQRS_ID_MAX];
  assert_int_equal(cqrs_id_derive(trigger, "issue", "e2", NULL), CQRS_OK);
  fx.count.trigger = trigger;
  fx.count.hook = other_writes;
  fx.count.hook_data = &other;
  for (int i = 0; i < 6; i++) send_issue(&fx, i, "b", NORMAL, NULL);
  uv_run(&fx.loop, UV_RUN_DEFAULT);
  assert_null(fx.count.trigger); /* it fired */
  uv_async_send(&other.stop);
  uv_thread_join(&other.thread);
  uv_sem_destroy(&other.ready);
  assert_numbered(&fx.out[0], 1);
  assert_numbered(&fx.out[1], 2); /* the other writer's is 3 */
  if (retries) {
    for (int i = 2; i < 6; i++) assert_numbered(&fx.out[i], i + 2);
  } else {
    /* No retry left: the conflict is #2's answer; those after it run again. */
    assert_int_equal(fx.out[2].code, CQRS_ECONFLICT);
    for (int i = 3; i < 6; i++) assert_numbered(&fx.out[i], i + 1);
  }
  static book_read_t b;
  assert_int_equal(book_numbers(fx.mem, "b", &b), retries ? 7 : 6);
  assert_string_equal(entry_of(&b, 3), "theirs");
  fx_close(&fx);
}

static void test_a_conflict_mid_batch_runs_the_rest_again(void **state) {
  (void)state;
  conflict_mid_batch(5);
}

static void test_a_conflict_mid_batch_counts_toward_retries(void **state) {
  (void)state;
  conflict_mid_batch(0);
}

/* ---- threads ---- */

#define SENDERS 4

typedef struct sender {
  fx_t *fx;
  int from, count, books;
} sender_t;

static void send_range(void *arg) {
  sender_t *s = arg;
  for (int i = s->from; i < s->from + s->count; i++) {
    char book[16];
    snprintf(book, sizeof book, "b%d", i % s->books);
    send_issue(s->fx, i, s->books == 1 ? "b" : book, NORMAL, NULL);
  }
}

/* Four threads send at once: every command once, each book's numbers
 * without a gap, no conflict reaching a caller. */
static void race(fx_t *fx, int per_sender, int books) {
  uv_thread_t th[SENDERS];
  sender_t s[SENDERS];
  for (int i = 0; i < SENDERS; i++) {
    s[i] = (sender_t){fx, i * per_sender, per_sender, books};
    assert_int_equal(uv_thread_create(&th[i], send_range, &s[i]), 0);
  }
  int total = SENDERS * per_sender;
  run_until(fx, total);
  for (int i = 0; i < SENDERS; i++) uv_thread_join(&th[i]);
  int64_t numbered_in_all = 0;
  for (int k = 0; k < books; k++) {
    char book[16];
    snprintf(book, sizeof book, "b%d", k);
    static book_read_t b;
    numbered_in_all += book_numbers(fx->mem, books == 1 ? "b" : book, &b);
  }
  assert_int_equal(numbered_in_all, total);
  for (int i = 0; i < total; i++) {
    if (fx->out[i].code != CQRS_OK) fail_msg("command %d: %s", i, cqrs_code_name(fx->out[i].code));
    assert_int_equal(atomic_load(&fx->out[i].calls), 1);
    assert_true(fx->out[i].number >= 1);
  }
}

static void test_threads_on_the_pool(void **state) {
  (void)state;
  static fx_t fx;
  fx_open(&fx, &counting_blocking_ops, 0, 5, 0, 1, true);
  race(&fx, 200, 1);
  /* Batches formed while one ran: fewer calls than commands. */
  assert_true(atomic_load(&fx.count.many) + atomic_load(&fx.count.appends) < SENDERS * 200);
  fx_close(&fx);
}

static void test_threads_on_several_loops(void **state) {
  (void)state;
  static fx_t fx;
  fx_open(&fx, &counting_ops, 0, 5, 0, 4, true);
  race(&fx, 200, 8);
  fx_close(&fx);
}

/* ---- allocation failures ---- */

static atomic_long fail_at = -1;
static void *failing_malloc(size_t n) { return atomic_fetch_sub(&fail_at, 1) == 0 ? NULL : malloc(n); }
static void *failing_realloc(void *p, size_t n) { return atomic_fetch_sub(&fail_at, 1) == 0 ? NULL : realloc(p, n); }

/* Every allocation of a batch fails in turn: each command completes once,
 * committed exactly when it says so, the numbers without a gap. */
static void test_every_allocation_failure(void **state) {
  (void)state;
  cqrs_allocator_t hook = {failing_malloc, failing_realloc, free};
  int failed_runs = 0;
  for (long n = 0;; n++) {
    static fx_t fx;
    fx_open(&fx, &counting_ops, 0, 5, 0, 1, false);
    cqrs_command_t *cmds[12];
    for (int i = 0; i < 12; i++) {
      char entry[16];
      snprintf(entry, sizeof entry, "e%d", i == 7 ? 2 : i); /* #7 is #2 sent again */
      cmds[i] = issue_new(entry, "b", i == 4 ? REFUSE : NORMAL, NULL);
    }
    atomic_store(&fail_at, n);
    cqrs_set_allocator(&hook);
    for (int i = 0; i < 12; i++) {
      if (cqrs_dispatcher_send(fx.d, cmds[i], on_done, &fx.out[i])) atomic_store(&fx.out[i].calls, -1);
    }
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    cqrs_set_allocator(NULL);
    bool reached = atomic_load(&fail_at) < 0;
    static book_read_t b;
    int64_t committed = book_numbers(fx.mem, "b", &b);
    int64_t answered = 0;
    for (int i = 0; i < 12; i++) {
      outcome_t *o = &fx.out[i];
      if (atomic_load(&o->calls) == -1) continue; /* refused at once, never called back */
      assert_int_equal(atomic_load(&o->calls), 1);
      if (o->code == CQRS_OK && !o->duplicate && o->events) {
        char entry[16];
        snprintf(entry, sizeof entry, "e%d", i == 7 ? 2 : i);
        assert_true(o->number >= 1 && o->number <= committed);
        assert_string_equal(entry_of(&b, o->number), entry);
        answered++;
      } else if (o->code != CQRS_OK && o->code != CQRS_EREJECTED && o->code != CQRS_ENOMEM) {
        fail_msg("n=%ld: command %d: %s", n, i, cqrs_code_name(o->code));
      }
      if (o->code == CQRS_ENOMEM) failed_runs++;
    }
    /* Committed exactly when the answer says so. */
    assert_int_equal(committed, answered);
    fx_close(&fx);
    if (!reached) break;
  }
  assert_true(failed_runs > 0);
}

/* ---- options ---- */

static cqrs_code_t start_nothing(cqrs_call_t *call, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  (void)call, (void)cmd, (void)data, (void)err;
  return CQRS_OK;
}

static cqrs_code_t decide_nothing(cqrs_context_t *ctx, const cqrs_command_t *cmd, const bson_t *reply, void *data,
                                  cqrs_error_t *err) {
  (void)ctx, (void)cmd, (void)reply, (void)data, (void)err;
  return CQRS_OK;
}

static void test_options(void **state) {
  (void)state;
  static fx_t fx;
  /* One request a batch: none batched, each appended alone. */
  fx_open(&fx, &counting_ops, 0, 5, 1, 1, false);
  for (int i = 0; i < 10; i++) send_issue(&fx, i, "b", NORMAL, NULL);
  uv_run(&fx.loop, UV_RUN_DEFAULT);
  for (int i = 0; i < 10; i++) assert_numbered(&fx.out[i], i + 1);
  assert_int_equal(atomic_load(&fx.count.many), 0);
  assert_int_equal(atomic_load(&fx.count.appends), 10);
  cqrs_error_t err;
  assert_int_equal(cqrs_dispatcher_register_call(fx.d, &issue_cmd, start_nothing, decide_nothing, NULL,
                                                 CQRS_HANDLER_BATCH, &err),
                   CQRS_EINVAL);
  fx_close(&fx);
  /* A batch of four at most. */
  fx_open(&fx, &counting_ops, 0, 5, 4, 1, false);
  for (int i = 0; i < 10; i++) send_issue(&fx, i, "b", NORMAL, NULL);
  uv_run(&fx.loop, UV_RUN_DEFAULT);
  for (int i = 0; i < 10; i++) assert_numbered(&fx.out[i], i + 1);
  assert_int_equal(atomic_load(&fx.count.many), 3); /* 4, 4, then 2 */
  assert_int_equal(atomic_load(&fx.count.appends), 0);
  fx_close(&fx);
  uv_loop_t loop;
  uv_loop_init(&loop);
  cqrs_registry_t *reg = registry();
  cqrs_store_t *store;
  cqrs_memory_store_new(&store, NULL);
  cqrs_dispatcher_options_t o;
  cqrs_dispatcher_options_init(&o);
  o.batch_max = CQRS_BATCH_MAX + 1;
  cqrs_dispatcher_t *d;
  assert_int_equal(cqrs_dispatcher_new(&loop, reg, store, &o, &d, &err), CQRS_EINVAL);
  assert_null(d);
  assert_int_equal(uv_loop_close(&loop), 0);
  cqrs_store_destroy(store);
  cqrs_registry_destroy(reg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_numbers_follow_send_order),
      cmocka_unit_test(test_each_command_its_own_commit),
      cmocka_unit_test(test_a_rejection_leaves_the_others_committed),
      cmocka_unit_test(test_what_cannot_share_a_batch_runs_alone),
      cmocka_unit_test(test_duplicates_in_a_batch),
      cmocka_unit_test(test_a_conflict_mid_batch_runs_the_rest_again),
      cmocka_unit_test(test_a_conflict_mid_batch_counts_toward_retries),
      cmocka_unit_test(test_threads_on_the_pool),
      cmocka_unit_test(test_threads_on_several_loops),
      cmocka_unit_test(test_every_allocation_failure),
      cmocka_unit_test(test_options),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
