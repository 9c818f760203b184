/* Middleware chains, called around each command and query. */
#include "runtime/middleware-private.h"

cqrs_code_t cqrs__mw_add(cqrs__mw_chain_t *c, const cqrs_middleware_t *mw, void *data, cqrs_error_t *err) {
  if (!mw) return cqrs_error_set(err, CQRS_EINVAL, "NULL middleware");
  for (size_t i = 0; i < sizeof mw->reserved / sizeof mw->reserved[0]; i++) {
    if (mw->reserved[i]) return cqrs_error_set(err, CQRS_EINVAL, "middleware: reserved fields must be zero");
  }
  if (c->n == CQRS_MIDDLEWARE_MAX)
    return cqrs_error_set(err, CQRS_ETOO_LARGE, "at most %d middleware", CQRS_MIDDLEWARE_MAX);
  c->mw[c->n] = mw;
  c->data[c->n] = data;
  c->n++;
  return CQRS_OK;
}

/* A `before` that fails without filling the error still stops the request. */
static cqrs_code_t refused(cqrs_code_t rc, cqrs_error_t *err, const char *what, const char *name) {
  if (err && err->code != rc) cqrs_error_set(err, rc, "middleware refused %s %s", what, name);
  return rc;
}

cqrs_code_t cqrs__mw_command_before(const cqrs__mw_chain_t *c, const cqrs_command_t *cmd, cqrs_error_t *err) {
  for (size_t i = 0; i < c->n; i++) {
    if (!c->mw[i]->command_before) continue;
    cqrs_code_t rc = c->mw[i]->command_before(cmd, c->data[i], err);
    if (rc) return refused(rc, err, "command", cmd->type->name);
  }
  return CQRS_OK;
}

void cqrs__mw_command_after(const cqrs__mw_chain_t *c, const cqrs_command_t *cmd, const cqrs_result_t *r,
                            uint64_t started_ns, unsigned conflicts) {
  cqrs_command_stats_t st = {started_ns ? uv_hrtime() - started_ns : 0, conflicts};
  for (size_t i = 0; i < c->n; i++) {
    if (c->mw[i]->command_after) c->mw[i]->command_after(cmd, r, &st, c->data[i]);
  }
}

cqrs_code_t cqrs__mw_query_before(const cqrs__mw_chain_t *c, const char *name, const bson_t *params,
                                  cqrs_error_t *err) {
  for (size_t i = 0; i < c->n; i++) {
    if (!c->mw[i]->query_before) continue;
    cqrs_code_t rc = c->mw[i]->query_before(name, params, c->data[i], err);
    if (rc) return refused(rc, err, "query", name);
  }
  return CQRS_OK;
}

void cqrs__mw_query_after(const cqrs__mw_chain_t *c, const char *name, cqrs_code_t code, const cqrs_error_t *err,
                          uint64_t started_ns) {
  uint64_t ns = started_ns ? uv_hrtime() - started_ns : 0;
  for (size_t i = 0; i < c->n; i++) {
    if (c->mw[i]->query_after) c->mw[i]->query_after(name, code, err, ns, c->data[i]);
  }
}
