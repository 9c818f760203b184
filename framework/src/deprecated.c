/* The names before 0.2, kept for programs built against 0.1 (removed in
 * 0.3): each calls its new name. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <cqrs/backend.h>
#include <cqrs/projection.h>
#include <cqrs/query.h>

cqrs_code_t cqrs_checkpoints_new(const cqrs_checkpoint_ops_t *ops, void *impl, cqrs_checkpoint_store_t **out,
                                 cqrs_error_t *err) {
  return cqrs_checkpoint_store_new(ops, impl, out, err);
}

void cqrs_checkpoints_destroy(cqrs_checkpoint_store_t *cp) {
  cqrs_checkpoint_store_destroy(cp);
}

cqrs_code_t cqrs_checkpoints_load(cqrs_checkpoint_store_t *cp, const char *name, int64_t *position, cqrs_error_t *err) {
  return cqrs_checkpoint_store_load(cp, name, position, err);
}

cqrs_code_t cqrs_checkpoints_save(cqrs_checkpoint_store_t *cp, const char *name, int64_t position, cqrs_error_t *err) {
  return cqrs_checkpoint_store_save(cp, name, position, err);
}

cqrs_code_t cqrs_memory_checkpoints_new(cqrs_checkpoint_store_t **out, cqrs_error_t *err) {
  return cqrs_memory_checkpoint_store_new(out, err);
}

cqrs_code_t cqrs_queries_new(const cqrs_readmodel_t *rm, cqrs_query_bus_t **out, cqrs_error_t *err) {
  return cqrs_query_bus_new(rm, out, err);
}

void cqrs_queries_destroy(cqrs_query_bus_t *q) {
  cqrs_query_bus_destroy(q);
}

cqrs_code_t cqrs_queries_register(cqrs_query_bus_t *q, const char *name, cqrs_query_handler_cb fn, void *data,
                                  cqrs_error_t *err) {
  return cqrs_query_bus_register(q, name, fn, data, err);
}

cqrs_code_t cqrs_queries_run(const cqrs_query_bus_t *q, const char *name, const bson_t *params, bson_t *out,
                             cqrs_error_t *err) {
  return cqrs_query_bus_run(q, name, params, out, err);
}

cqrs_code_t cqrs_queries_send(const cqrs_query_bus_t *q, uv_loop_t *loop, const char *name, const bson_t *params,
                              cqrs_query_cb cb, void *data) {
  return cqrs_query_bus_send(q, loop, name, params, cb, data);
}

