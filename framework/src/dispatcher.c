/* A dispatcher: a runtime (runtime/) with its two components, the command
 * side (command/) and the event side (events/), and the loops the options
 * ask for. Leases, process managers and metrics join it later, each from
 * its own module. */
#include "command/command-private.h"
#include "events/events-private.h"
#include "forget-private.h"

void cqrs_dispatcher_options_init(cqrs_dispatcher_options_t *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->conflict_retries = 5;
  o->retry_attempts = 3;
  o->retry_base_ms = 1000;
  o->retry_cap_ms = 30000;
  o->aggregate_cache = 16384;
  o->loops = 1;
  o->dead_letters_kept = 1024;
}

cqrs_code_t cqrs_dispatcher_new(uv_loop_t *loop, const cqrs_registry_t *reg, cqrs_store_t *store,
                                const cqrs_dispatcher_options_t *opts, cqrs_dispatcher_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  if (!loop || !reg || !store) return cqrs_error_set(err, CQRS_EINVAL, "NULL loop, registry or store");
  cqrs_dispatcher_options_t o;
  if (opts) {
    o = *opts;
  } else {
    cqrs_dispatcher_options_init(&o);
  }
  cqrs__runtime_t *rt = cqrs__calloc(1, sizeof *rt);
  if (!rt) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate a dispatcher");
  cqrs_code_t rc = cqrs__runtime_init(rt, loop, reg, store, err);
  if (rc) {
    cqrs__free(rt);
    return rc;
  }
  cqrs__commands_t *c = NULL;
  if ((rc = cqrs__commands_new(rt, &o, &c, err)) || (rc = cqrs__events_new(rt, &o, err)) ||
      (rc = cqrs__loops_start(rt, c, &o, err)) || (rc = cqrs__forget_start(rt, err))) {
    cqrs__runtime_abandon(rt);
    return rc;
  }
  rt->seen = (cqrs__seen_port_t){c, cqrs__owner_seen};
  /* On the loop: what fails from here is undone by closing, on the loop. */
  if ((rc = cqrs__commands_attach(c, err)) || (rc = cqrs__events_attach(rt->events, err))) {
    cqrs__runtime_close(rt, NULL, NULL);
    return rc;
  }
  *out = rt;
  return CQRS_OK;
}

cqrs_code_t cqrs_dispatcher_close(cqrs_dispatcher_t *d, cqrs_close_cb cb, void *data) {
  if (!d) return CQRS_EINVAL;
  return cqrs__runtime_close(d, cb, data);
}
