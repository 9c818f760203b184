/* The in-memory backends pass cqrs::conformance: the event store (and the
 * same store behind a table without the optional append_many), the read
 * model, the checkpoints and the leases. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cqrs/conformance.h>

static cqrs_store_t *store(const cqrs_registry_t *reg, void *data) {
  (void)reg, (void)data;
  cqrs_store_t *s = NULL;
  cqrs_error_t err;
  if (cqrs_memory_store_new(&s, &err)) print_error("memory store: %s\n", err.message);
  return s;
}

/* The memory store behind a table without append_many: the framework's
 * appends in turn keep that call's promises too. */
static cqrs_code_t w_append(void *impl, const cqrs_append_t *req, cqrs_append_result_t *res, cqrs_error_t *err) {
  return cqrs_store_append(impl, req, res, err);
}
static cqrs_code_t w_read_stream(void *impl, const char *type, const char *id, int64_t from, cqrs_event_visit_cb cb,
                                 void *data, cqrs_error_t *err) {
  return cqrs_store_read_stream(impl, type, id, from, cb, data, err);
}
static cqrs_code_t w_read_all(void *impl, int64_t from, size_t limit, cqrs_event_visit_cb cb, void *data,
                              cqrs_error_t *err) {
  return cqrs_store_read_all(impl, from, limit, cb, data, err);
}
static cqrs_code_t w_head(void *impl, int64_t *position, cqrs_error_t *err) {
  return cqrs_store_head(impl, position, err);
}
static cqrs_code_t w_snapshot_load(void *impl, const char *type, const char *id, cqrs_snapshot_t *out, bool *found,
                                   cqrs_error_t *err) {
  return cqrs_store_snapshot_load(impl, type, id, out, found, err);
}
static cqrs_code_t w_snapshot_save(void *impl, const cqrs_snapshot_t *snap, cqrs_error_t *err) {
  return cqrs_store_snapshot_save(impl, snap, err);
}
static cqrs_code_t w_has_command(void *impl, const char *command_id, bool *found, cqrs_error_t *err) {
  return cqrs_store_has_command(impl, command_id, found, err);
}
static void w_destroy(void *impl) { cqrs_store_destroy(impl); }
static const cqrs_store_ops_t one_by_one_ops = {.name = "memory, one append at a time",
                                                .append = w_append,
                                                .read_stream = w_read_stream,
                                                .read_all = w_read_all,
                                                .head = w_head,
                                                .snapshot_load = w_snapshot_load,
                                                .snapshot_save = w_snapshot_save,
                                                .has_command = w_has_command,
                                                .destroy = w_destroy};

static cqrs_store_t *one_by_one(const cqrs_registry_t *reg, void *data) {
  cqrs_store_t *inner = store(reg, data), *s = NULL;
  cqrs_error_t err;
  if (inner && cqrs_store_new(&one_by_one_ops, inner, &s, &err)) print_error("wrapper: %s\n", err.message);
  return s;
}

static cqrs_readmodel_t *readmodel(void *data) {
  (void)data;
  cqrs_readmodel_t *rm = NULL;
  cqrs_error_t err;
  if (cqrs_memory_readmodel_new(&rm, &err)) print_error("memory read model: %s\n", err.message);
  return rm;
}

static cqrs_checkpoints_t *checkpoints(void *data) {
  (void)data;
  cqrs_checkpoints_t *cp = NULL;
  cqrs_error_t err;
  if (cqrs_memory_checkpoints_new(&cp, &err)) print_error("memory checkpoints: %s\n", err.message);
  return cp;
}

static cqrs_leases_t *leases(void *clock) {
  cqrs_leases_t *l = NULL;
  cqrs_error_t err;
  if (cqrs_memory_leases_new_with_clock(clock, &l, &err)) print_error("memory leases: %s\n", err.message);
  return l;
}

int main(void) {
  int failures = cqrs_conformance_store(&(cqrs_store_factory_t){.name = "memory store conformance", .create = store});
  failures += cqrs_conformance_store(
      &(cqrs_store_factory_t){.name = "memory store without append_many conformance", .create = one_by_one});
  failures += cqrs_conformance_readmodel(
      &(cqrs_readmodel_factory_t){.name = "memory read model conformance", .create = readmodel});
  failures += cqrs_conformance_checkpoints(
      &(cqrs_checkpoints_factory_t){.name = "memory checkpoints conformance", .create = checkpoints});
  /* The leases' terms on a manual clock that the suite moves. */
  cqrs_clock_t *clock;
  if (cqrs_clock_manual_new(cqrs_now_ms(), &clock, NULL)) return 1;
  failures += cqrs_conformance_leases(
      &(cqrs_leases_factory_t){.name = "memory leases conformance", .create = leases, .data = clock, .clock = clock});
  cqrs_clock_destroy(clock);
  return failures;
}
