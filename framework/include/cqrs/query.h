/* libcqrs: queries: named, pure reads of read models. */
#ifndef CQRS_QUERY_H
#define CQRS_QUERY_H

#include <uv.h>

#include "cqrs/readmodel.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A query handler gets the read model as const: it can read, never write,
 * and it has no way to the write side. `out` is initialised by the caller;
 * the handler appends its answer. */
typedef cqrs_code_t (*cqrs_query_handler_cb)(const cqrs_readmodel_t *rm, const bson_t *params, bson_t *out, void *data,
                                     cqrs_error_t *err);
/* The 0.1 name, removed in 0.3. */
typedef cqrs_query_handler_cb cqrs_query_fn CQRS_DEPRECATED("use cqrs_query_handler_cb");

typedef struct cqrs_query_bus cqrs_query_bus_t;

/* Creates a query bus over `rm` (borrowed, must outlive it) into *out. NULL
 * `rm` or `out`: CQRS_EINVAL; CQRS_ENOMEM; on error *out is NULL. `err` may
 * be NULL. */
CQRS_EXPORT cqrs_code_t cqrs_query_bus_new(const cqrs_readmodel_t *rm, cqrs_query_bus_t **out, cqrs_error_t *err);
CQRS_EXPORT void cqrs_query_bus_destroy(cqrs_query_bus_t *q);

/* Registers query `name`; a duplicate is CQRS_EDUPLICATE. Before running any. */
CQRS_EXPORT cqrs_code_t cqrs_query_bus_register(cqrs_query_bus_t *q, const char *name, cqrs_query_handler_cb fn,
                                                void *data, cqrs_error_t *err);

/* Runs query `name` on the calling thread (blocks when the read model does).
 * `params` NULL is an empty document. Unknown name: CQRS_ENOT_FOUND. */
CQRS_EXPORT cqrs_code_t cqrs_query_bus_run(const cqrs_query_bus_t *q, const char *name, const bson_t *params,
                                           bson_t *out, cqrs_error_t *err);

/* Runs query `name` off the loop thread when the read model blocks, on the
 * loop thread at its next turn otherwise, and calls `cb` once, later, on the
 * loop thread with the answer (borrowed); never inside this call. Call it
 * on the loop's thread. Returns an error without calling `cb` for NULL
 * arguments. */
typedef void (*cqrs_query_cb)(cqrs_code_t code, const bson_t *answer, const cqrs_error_t *err, void *data);
CQRS_EXPORT cqrs_code_t cqrs_query_bus_send(const cqrs_query_bus_t *q, uv_loop_t *loop, const char *name,
                                            const bson_t *params, cqrs_query_cb cb, void *data);

/* ---- names before 0.2, deprecated (removed in 0.3) ---- */
typedef cqrs_query_bus_t cqrs_queries_t CQRS_DEPRECATED("use cqrs_query_bus_t");
CQRS_DEPRECATED("use cqrs_query_bus_new")
CQRS_EXPORT cqrs_code_t cqrs_queries_new(const cqrs_readmodel_t *rm, cqrs_query_bus_t **out, cqrs_error_t *err);
CQRS_DEPRECATED("use cqrs_query_bus_destroy")
CQRS_EXPORT void cqrs_queries_destroy(cqrs_query_bus_t *q);
CQRS_DEPRECATED("use cqrs_query_bus_register")
CQRS_EXPORT cqrs_code_t cqrs_queries_register(cqrs_query_bus_t *q, const char *name, cqrs_query_handler_cb fn,
                                              void *data, cqrs_error_t *err);
CQRS_DEPRECATED("use cqrs_query_bus_run")
CQRS_EXPORT cqrs_code_t cqrs_queries_run(const cqrs_query_bus_t *q, const char *name, const bson_t *params, bson_t *out,
                                         cqrs_error_t *err);
CQRS_DEPRECATED("use cqrs_query_bus_send")
CQRS_EXPORT cqrs_code_t cqrs_queries_send(const cqrs_query_bus_t *q, uv_loop_t *loop, const char *name,
                                          const bson_t *params, cqrs_query_cb cb, void *data);

#ifdef __cplusplus
}
#endif
#endif
