/* Middleware chains: what the command side and the query bus call around
 * each command and query (metrics plug in here). */
#ifndef CQRS_MIDDLEWARE_PRIVATE_H
#define CQRS_MIDDLEWARE_PRIVATE_H

#include "base/cqrs-private.h"

typedef struct cqrs__mw_chain {
  size_t n;
  const cqrs_middleware_t *mw[CQRS_MIDDLEWARE_MAX];
  void *data[CQRS_MIDDLEWARE_MAX];
} cqrs__mw_chain_t;

cqrs_code_t cqrs__mw_add(cqrs__mw_chain_t *c, const cqrs_middleware_t *mw, void *data, cqrs_error_t *err);
/* The first `before` that refuses wins; `err` holds its error. */
cqrs_code_t cqrs__mw_command_before(const cqrs__mw_chain_t *c, const cqrs_command_t *cmd, cqrs_error_t *err);
void cqrs__mw_command_after(const cqrs__mw_chain_t *c, const cqrs_command_t *cmd, const cqrs_result_t *r,
                            uint64_t started_ns, unsigned conflicts);
cqrs_code_t cqrs__mw_query_before(const cqrs__mw_chain_t *c, const char *name, const bson_t *params,
                                  cqrs_error_t *err);
void cqrs__mw_query_after(const cqrs__mw_chain_t *c, const char *name, cqrs_code_t code, const cqrs_error_t *err,
                          uint64_t started_ns);

#endif
