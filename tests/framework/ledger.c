#include "ledger.h"

#include <cqrs/backend.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const cqrs_field_t opened_fields[] = {CQRS_STRING(ledger_opened_t, owner, "owner", CQRS_F_REQUIRED),
                                             CQRS_FIELDS_END};
static const cqrs_field_t amount_fields[] = {CQRS_INT64_RANGE(ledger_amount_t, amount, "amount", 1, INT64_MAX),
                                             CQRS_FIELDS_END};
const cqrs_event_type_t ledger_opened = {.name = "ledger.opened", .schema_version = 1,
                                         .payload_size = sizeof(ledger_opened_t), .fields = opened_fields};
const cqrs_event_type_t ledger_credited = {.name = "ledger.credited", .schema_version = 1,
                                           .payload_size = sizeof(ledger_amount_t), .fields = amount_fields};
const cqrs_event_type_t ledger_debited = {.name = "ledger.debited", .schema_version = 1,
                                          .payload_size = sizeof(ledger_amount_t), .fields = amount_fields};

static const cqrs_field_t renamed_v1_fields[] = {
    CQRS_STRING(ledger_renamed_v1_t, title, "title", CQRS_F_REQUIRED), CQRS_FIELDS_END};
static const cqrs_field_t renamed_fields[] = {CQRS_STRING(ledger_renamed_t, name, "name", CQRS_F_REQUIRED),
                                              CQRS_STRING(ledger_renamed_t, reason, "reason", 0), CQRS_FIELDS_END};
const cqrs_event_type_t ledger_renamed_v1 = {.name = "ledger.renamed", .schema_version = 1,
                                             .payload_size = sizeof(ledger_renamed_v1_t), .fields = renamed_v1_fields};
const cqrs_event_type_t ledger_renamed = {.name = "ledger.renamed", .schema_version = 2,
                                          .payload_size = sizeof(ledger_renamed_t), .fields = renamed_fields};

cqrs_code_t ledger_renamed_upcast(const bson_t *in, bson_t *out, cqrs_error_t *err) {
  bson_iter_t it;
  if (!bson_iter_init_find(&it, in, "title") || !BSON_ITER_HOLDS_UTF8(&it))
    return cqrs_error_set(err, CQRS_ECODEC, "ledger.renamed v1 lacks a title");
  BSON_APPEND_UTF8(out, "name", bson_iter_utf8(&it, NULL));
  BSON_APPEND_UTF8(out, "reason", "unknown");
  return CQRS_OK;
}

static const cqrs_field_t open_fields[] = {CQRS_STRING(ledger_open_cmd_t, id, "id", CQRS_F_REQUIRED),
                                           CQRS_STRING(ledger_open_cmd_t, owner, "owner", CQRS_F_REQUIRED),
                                           CQRS_FIELDS_END};
static const cqrs_field_t move_fields[] = {CQRS_STRING(ledger_move_cmd_t, id, "id", CQRS_F_REQUIRED),
                                           CQRS_INT64_RANGE(ledger_move_cmd_t, amount, "amount", 1, 1000000000000),
                                           CQRS_FIELDS_END};
const cqrs_command_type_t ledger_open = {.name = "ledger.open", .payload_size = sizeof(ledger_open_cmd_t),
                                         .fields = open_fields};
const cqrs_command_type_t ledger_credit = {.name = "ledger.credit", .payload_size = sizeof(ledger_move_cmd_t),
                                           .fields = move_fields};
const cqrs_command_type_t ledger_debit = {.name = "ledger.debit", .payload_size = sizeof(ledger_move_cmd_t),
                                          .fields = move_fields};

static void apply_opened(void *state, const cqrs_event_t *e) {
  ledger_state_t *s = state;
  const ledger_opened_t *p = e->payload;
  s->opened = true;
  memcpy(s->owner, p->owner, sizeof s->owner);
  s->applied++;
}
static void apply_credited(void *state, const cqrs_event_t *e) {
  ledger_state_t *s = state;
  s->balance += ((const ledger_amount_t *)e->payload)->amount;
  s->applied++;
}
static void apply_debited(void *state, const cqrs_event_t *e) {
  ledger_state_t *s = state;
  s->balance -= ((const ledger_amount_t *)e->payload)->amount;
  s->applied++;
}

static const cqrs_apply_entry_t ledger_apply[] = {
    {&ledger_opened, apply_opened}, {&ledger_credited, apply_credited}, {&ledger_debited, apply_debited}, {NULL, NULL}};
static const cqrs_field_t state_fields[] = {CQRS_BOOL(ledger_state_t, opened, "opened", 0),
                                            CQRS_STRING(ledger_state_t, owner, "owner", 0),
                                            CQRS_INT64(ledger_state_t, balance, "balance", 0), CQRS_FIELDS_END};

const cqrs_aggregate_type_t ledger_type = {.name = "ledger", .state_size = sizeof(ledger_state_t), .state_init = NULL,
                                           .state_cleanup = NULL, .apply = ledger_apply, .snapshot_fields = NULL,
                                           .snapshot_version = 0, .snapshot_every = 0};
const cqrs_aggregate_type_t ledger_snap_type = {.name = "ledger-snap", .state_size = sizeof(ledger_state_t),
                                                .state_init = NULL, .state_cleanup = NULL, .apply = ledger_apply,
                                                .snapshot_fields = state_fields, .snapshot_version = 1,
                                                .snapshot_every = 10};

cqrs_registry_t *ledger_registry(void) {
  cqrs_registry_t *reg = NULL;
  cqrs_registry_new(&reg, NULL);
  if (!reg || cqrs_registry_add_aggregate(reg, &ledger_type, NULL) ||
      cqrs_registry_add_aggregate(reg, &ledger_snap_type, NULL) || cqrs_registry_add_command(reg, &ledger_open, NULL) ||
      cqrs_registry_add_command(reg, &ledger_credit, NULL) || cqrs_registry_add_command(reg, &ledger_debit, NULL)) {
    fprintf(stderr, "ledger_registry failed\n");
    abort();
  }
  return reg;
}

static cqrs_code_t handle_open(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  const ledger_open_cmd_t *c = cqrs_command_payload(cmd);
  cqrs_aggregate_t *agg;
  cqrs_code_t rc = cqrs_context_load(ctx, data, c->id, &agg, err);
  if (rc) return rc;
  if (((ledger_state_t *)cqrs_aggregate_state(agg))->opened)
    return cqrs_reject(err, "ledger.already_open", "ledger %s is already open", c->id);
  ledger_opened_t e = {{0}};
  memcpy(e.owner, c->owner, sizeof e.owner);
  return cqrs_aggregate_raise(agg, &ledger_opened, &e, err);
}

static cqrs_code_t handle_move(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err,
                               bool credit) {
  const ledger_move_cmd_t *c = cqrs_command_payload(cmd);
  cqrs_aggregate_t *agg;
  cqrs_code_t rc = cqrs_context_load(ctx, data, c->id, &agg, err);
  if (rc) return rc;
  const ledger_state_t *s = cqrs_aggregate_state(agg);
  if (!s->opened) return cqrs_reject(err, "ledger.not_open", "ledger %s is not open", c->id);
  if (!credit && s->balance < c->amount)
    return cqrs_reject(err, "ledger.insufficient", "balance %lld < %lld", (long long)s->balance, (long long)c->amount);
  ledger_amount_t e = {c->amount};
  return cqrs_aggregate_raise(agg, credit ? &ledger_credited : &ledger_debited, &e, err);
}

static cqrs_code_t handle_credit(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  return handle_move(ctx, cmd, data, err, true);
}

static cqrs_code_t handle_debit(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  return handle_move(ctx, cmd, data, err, false);
}

cqrs_code_t ledger_handlers(cqrs_dispatcher_t *d, const cqrs_aggregate_type_t *type, unsigned flags,
                            cqrs_error_t *err) {
  void *t = (void *)(type ? type : &ledger_type);
  cqrs_code_t rc = cqrs_dispatcher_register(d, &ledger_open, handle_open, t, flags, err);
  if (!rc) rc = cqrs_dispatcher_register(d, &ledger_credit, handle_credit, t, flags, err);
  if (!rc) rc = cqrs_dispatcher_register(d, &ledger_debit, handle_debit, t, flags, err);
  return rc;
}

cqrs_code_t ledger_setup(cqrs_dispatcher_t *d, void *data, cqrs_error_t *err) {
  return ledger_handlers(d, data, 0, err);
}

static cqrs_command_t *must(const cqrs_command_type_t *type, const void *payload) {
  cqrs_command_t *cmd;
  cqrs_error_t err;
  if (cqrs_command_new(type, payload, &cmd, &err)) {
    fprintf(stderr, "cannot build %s: %s\n", type->name, err.message);
    abort();
  }
  return cmd;
}

cqrs_command_t *ledger_open_new(const char *id, const char *owner) {
  ledger_open_cmd_t c = {{0}, {0}};
  snprintf(c.id, sizeof c.id, "%s", id);
  snprintf(c.owner, sizeof c.owner, "%s", owner);
  return must(&ledger_open, &c);
}

cqrs_command_t *ledger_credit_new(const char *id, int64_t amount) {
  ledger_move_cmd_t c = {{0}, amount};
  snprintf(c.id, sizeof c.id, "%s", id);
  return must(&ledger_credit, &c);
}

cqrs_command_t *ledger_debit_new(const char *id, int64_t amount) {
  ledger_move_cmd_t c = {{0}, amount};
  snprintf(c.id, sizeof c.id, "%s", id);
  return must(&ledger_debit, &c);
}

void ledger_fill(cqrs_store_t *store, const cqrs_aggregate_type_t *type, const char *id, int64_t n) {
  cqrs_envelope_t *env;
  cqrs_error_t err;
  if (cqrs_envelope_new(type->name, id, "fill", NULL, &env, &err)) abort();
  int64_t v = 0;
  cqrs_event_t *batch[100];
  while (v < n) {
    size_t k = 0;
    int64_t start = v;
    for (; k < 100 && v < n; k++, v++) {
      ledger_opened_t o = {"filler"};
      ledger_amount_t a = {1};
      if (cqrs_event_new(v == 0 ? &ledger_opened : &ledger_credited, env, NULL, v + 1, 0, v == 0 ? (void *)&o : (void *)&a,
                         &batch[k], &err))
        abort();
    }
    char cmd[64];
    snprintf(cmd, sizeof cmd, "fill-%s-%lld", id, (long long)start);
    cqrs_append_t req = {type->name, id, start, cmd, batch, k};
    cqrs_append_result_t res;
    if (cqrs_store_append(store, &req, &res, &err)) {
      fprintf(stderr, "fill: %s\n", err.message);
      abort();
    }
    for (size_t i = 0; i < k; i++) cqrs_event_unref(batch[i]);
  }
  cqrs_envelope_unref(env);
}

typedef struct blocking {
  cqrs_store_t *inner;
  unsigned delay_ms;
  _Atomic int fail_reads;
  _Atomic bool fail_permanent; /* the failures are permanent store errors */
  _Atomic bool hold_head;      /* head waits until released */
  _Atomic bool watching;       /* count the calls made on `watched` */
  uv_thread_t watched;
  _Atomic int calls_on_watched;
} blocking_t;

/* True (and counted) when called on the watched thread. */
static bool note_thread(blocking_t *b) {
  if (!atomic_load(&b->watching)) return false;
  uv_thread_t self = uv_thread_self();
  if (!uv_thread_equal(&self, &b->watched)) return false;
  atomic_fetch_add(&b->calls_on_watched, 1);
  return true;
}

static cqrs_code_t b_append(void *impl, const cqrs_append_t *r, cqrs_append_result_t *res, cqrs_error_t *err) {
  note_thread(impl);
  return cqrs_store_append(((blocking_t *)impl)->inner, r, res, err);
}
static cqrs_code_t b_read_stream(void *impl, const char *t, const char *id, int64_t from, cqrs_event_visit_cb cb,
                                 void *data, cqrs_error_t *err) {
  note_thread(impl);
  return cqrs_store_read_stream(((blocking_t *)impl)->inner, t, id, from, cb, data, err);
}
static cqrs_code_t b_read_all(void *impl, int64_t from, size_t limit, cqrs_event_visit_cb cb, void *data,
                              cqrs_error_t *err) {
  blocking_t *b = impl;
  note_thread(b);
  if (b->delay_ms) uv_sleep(b->delay_ms);
  if (atomic_load(&b->fail_reads) > 0) {
    atomic_fetch_sub(&b->fail_reads, 1);
    cqrs_error_set(err, CQRS_ESTORE, "the server went away");
    if (atomic_load(&b->fail_permanent)) cqrs_error_set_cause(err, 0, 0, false);
    return CQRS_ESTORE;
  }
  return cqrs_store_read_all(b->inner, from, limit, cb, data, err);
}
static cqrs_code_t b_head(void *impl, int64_t *p, cqrs_error_t *err) {
  blocking_t *b = impl;
  if (!note_thread(b)) {
    while (atomic_load(&b->hold_head)) uv_sleep(1); /* a pool thread, waiting for the test */
  }
  return cqrs_store_head(b->inner, p, err);
}
static cqrs_code_t b_snap_load(void *impl, const char *t, const char *id, cqrs_snapshot_t *out, bool *found,
                               cqrs_error_t *err) {
  return cqrs_store_snapshot_load(((blocking_t *)impl)->inner, t, id, out, found, err);
}
static cqrs_code_t b_snap_save(void *impl, const cqrs_snapshot_t *snap, cqrs_error_t *err) {
  return cqrs_store_snapshot_save(((blocking_t *)impl)->inner, snap, err);
}

static const cqrs_store_ops_t blocking_ops = {.name = "blocking", .blocking = true, .append = b_append,
                                              .read_stream = b_read_stream, .read_all = b_read_all, .head = b_head,
                                              .snapshot_load = b_snap_load, .snapshot_save = b_snap_save,
                                              .destroy = free};
static const cqrs_store_ops_t flaky_ops = {.name = "flaky", .blocking = false, .append = b_append,
                                           .read_stream = b_read_stream, .read_all = b_read_all, .head = b_head,
                                           .snapshot_load = b_snap_load, .snapshot_save = b_snap_save, .destroy = free};

void ledger_blocking_store_fail_reads(cqrs_store_t *store, int n) { ledger_store_fail_reads(store, n, false); }

void ledger_blocking_store_hold_head(cqrs_store_t *store, bool hold) {
  atomic_store(&((blocking_t *)cqrs_store_impl(store))->hold_head, hold);
}

void ledger_blocking_store_watch(cqrs_store_t *store) {
  blocking_t *b = cqrs_store_impl(store);
  b->watched = uv_thread_self();
  atomic_store(&b->watching, true);
}

int ledger_blocking_store_calls_on_watched(cqrs_store_t *store) {
  return atomic_load(&((blocking_t *)cqrs_store_impl(store))->calls_on_watched);
}

void ledger_store_fail_reads(cqrs_store_t *store, int n, bool permanent) {
  blocking_t *b = cqrs_store_impl(store);
  atomic_store(&b->fail_permanent, permanent);
  atomic_store(&b->fail_reads, n);
}

static cqrs_store_t *forwarding_store(const cqrs_store_ops_t *ops, cqrs_store_t *inner, unsigned delay_ms) {
  blocking_t *b = calloc(1, sizeof *b);
  b->inner = inner;
  b->delay_ms = delay_ms;
  cqrs_store_t *s = NULL;
  cqrs_store_new(ops, b, &s, NULL);
  return s;
}

cqrs_store_t *ledger_blocking_store(cqrs_store_t *inner, unsigned delay_ms) {
  return forwarding_store(&blocking_ops, inner, delay_ms);
}

cqrs_store_t *ledger_flaky_store(cqrs_store_t *inner) { return forwarding_store(&flaky_ops, inner, 0); }

static cqrs_code_t bc_load(void *impl, const char *name, int64_t *position, cqrs_error_t *err) {
  return cqrs_checkpoints_load(impl, name, position, err);
}
static cqrs_code_t bc_save(void *impl, const char *name, int64_t position, cqrs_error_t *err) {
  return cqrs_checkpoints_save(impl, name, position, err);
}
static cqrs_code_t bc_save_fenced(void *impl, const char *name, int64_t position, int64_t token, cqrs_error_t *err) {
  return cqrs_checkpoints_save_fenced(impl, name, position, token, err);
}
static cqrs_code_t bc_control_load(void *impl, const char *name, cqrs_projection_control_t *out, bool *found,
                                   cqrs_error_t *err) {
  return cqrs_checkpoints_control_load(impl, name, out, found, err);
}
static cqrs_code_t bc_control_save(void *impl, const char *name, const cqrs_projection_control_t *c, unsigned parts,
                                   cqrs_error_t *err) {
  return cqrs_checkpoints_control_save(impl, name, c, parts, err);
}
static const cqrs_checkpoint_ops_t blocking_cp_ops = {.blocking = true,
                                                      .load = bc_load,
                                                      .save = bc_save,
                                                      .destroy = NULL,
                                                      .save_fenced = bc_save_fenced,
                                                      .control_load = bc_control_load,
                                                      .control_save = bc_control_save};

cqrs_checkpoints_t *ledger_blocking_checkpoints(cqrs_checkpoints_t *inner) {
  cqrs_checkpoints_t *cp = NULL;
  cqrs_checkpoints_new(&blocking_cp_ops, inner, &cp, NULL);
  return cp;
}

/* A store that forwards to `inner` until `budget` calls have been made, then
 * fails every call as a server that went away would: what a process killed
 * at that point leaves behind. */
typedef struct faulty {
  cqrs_store_t *inner;
  _Atomic long budget; /* calls left; < 0: unlimited */
  _Atomic long calls;
} faulty_t;

static bool spend(faulty_t *f) {
  atomic_fetch_add(&f->calls, 1);
  long b = atomic_load(&f->budget);
  while (b > 0 && !atomic_compare_exchange_weak(&f->budget, &b, b - 1)) {
  }
  return b != 0;
}
#define FAULTY(impl, err)                                                            \
  faulty_t *f = impl;                                                                \
  if (!spend(f)) return cqrs_error_set(err, CQRS_ESTORE, "the store stopped (fault injection)")

static cqrs_code_t f_append(void *impl, const cqrs_append_t *r, cqrs_append_result_t *res, cqrs_error_t *err) {
  FAULTY(impl, err);
  return cqrs_store_append(f->inner, r, res, err);
}
static cqrs_code_t f_read_stream(void *impl, const char *t, const char *id, int64_t from, cqrs_event_visit_cb cb,
                                 void *data, cqrs_error_t *err) {
  FAULTY(impl, err);
  return cqrs_store_read_stream(f->inner, t, id, from, cb, data, err);
}
static cqrs_code_t f_read_all(void *impl, int64_t from, size_t limit, cqrs_event_visit_cb cb, void *data,
                              cqrs_error_t *err) {
  FAULTY(impl, err);
  return cqrs_store_read_all(f->inner, from, limit, cb, data, err);
}
static cqrs_code_t f_head(void *impl, int64_t *p, cqrs_error_t *err) {
  FAULTY(impl, err);
  return cqrs_store_head(f->inner, p, err);
}
static cqrs_code_t f_snap_load(void *impl, const char *t, const char *id, cqrs_snapshot_t *out, bool *found,
                               cqrs_error_t *err) {
  FAULTY(impl, err);
  return cqrs_store_snapshot_load(f->inner, t, id, out, found, err);
}
static cqrs_code_t f_snap_save(void *impl, const cqrs_snapshot_t *snap, cqrs_error_t *err) {
  FAULTY(impl, err);
  return cqrs_store_snapshot_save(f->inner, snap, err);
}

static const cqrs_store_ops_t faulty_ops = {.name = "faulty", .blocking = false, .append = f_append,
                                            .read_stream = f_read_stream, .read_all = f_read_all, .head = f_head,
                                            .snapshot_load = f_snap_load, .snapshot_save = f_snap_save,
                                            .destroy = free};

cqrs_store_t *ledger_faulty_store(cqrs_store_t *inner, long budget) {
  faulty_t *f = calloc(1, sizeof *f);
  f->inner = inner;
  atomic_store(&f->budget, budget);
  cqrs_store_t *s = NULL;
  cqrs_store_new(&faulty_ops, f, &s, NULL);
  return s;
}

long ledger_faulty_store_calls(cqrs_store_t *store) {
  return atomic_load(&((faulty_t *)cqrs_store_impl(store))->calls);
}

void ledger_run_idle(uv_loop_t *loop, cqrs_clock_t *clock) {
  uint64_t in;
  do {
    uv_run(loop, UV_RUN_DEFAULT);
  } while (cqrs_clock_next_due(clock, &in) && cqrs_clock_advance(clock, in) == CQRS_OK);
}
