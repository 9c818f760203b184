/* Metrics internals: the middleware chain the dispatcher and the query bus
 * call, and what the bus and the store expose to metrics.c. */
#ifndef CQRS_METRICS_PRIVATE_H
#define CQRS_METRICS_PRIVATE_H

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

/* What a subscriber shows of itself (bus.c). Loop thread. */
typedef struct cqrs__sub_figures {
  const char *name;
  int64_t position;          /* last event handled or dead-lettered */
  int64_t handled_up_to;     /* position, or the feed's when it waits for nothing */
  int64_t oldest_pending_ts; /* timestamp of the oldest event queued, 0 when none */
  uint64_t retries;          /* failed deliveries */
  uint64_t dead_letters;     /* events given up on */
} cqrs__sub_figures_t;
/* Fills the i-th subscriber's figures; false past the end. Also the feed's
 * position. */
bool cqrs__bus_sub_figures(const cqrs_dispatcher_t *d, size_t i, cqrs__sub_figures_t *out);
int64_t cqrs__bus_feed_position(const cqrs_dispatcher_t *d);

#endif
