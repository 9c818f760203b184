/* A dispatcher: a runtime (runtime/) with its two components, the command
 * side (command/) and the event side (events/), and the loops the options
 * ask for. Leases, process managers and metrics join it later, each from
 * its own module. */
#include "command/command-private.h"
#include "events/events-private.h"
#include "forget-private.h"

/* The size of the options as 0.2.0 had them: what a caller who set no size
 * (0: a struct filled by hand) is read as. When an option is appended, this
 * becomes offsetof(cqrs_dispatcher_options_t, <the first one appended>). */
#define OPTIONS_SIZE_0_2 sizeof(cqrs_dispatcher_options_t)

static void defaults(cqrs_dispatcher_options_t *o) {
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->conflict_retries = 5;
  o->retry_attempts = 3;
  o->retry_base_ms = 1000;
  o->retry_cap_ms = 30000;
  o->aggregate_cache = 16384;
  o->loops = 1;
  o->dead_letters_kept = 1024;
  o->control_ms = 1000;
  o->batch_max = CQRS_BATCH_MAX;
}

void cqrs_dispatcher_options_init_size(cqrs_dispatcher_options_t *o, size_t size) {
  if (!o || size < sizeof o->size) return;
  cqrs_dispatcher_options_t d;
  defaults(&d);
  d.size = size < sizeof d ? size : sizeof d;
  memcpy(o, &d, d.size);
}

/* The caller's options over the defaults, as far as its size goes. */
static void options_of(const cqrs_dispatcher_options_t *opts, cqrs_dispatcher_options_t *o) {
  defaults(o);
  if (!opts) return;
  size_t n = opts->size ? opts->size : OPTIONS_SIZE_0_2;
  if (n > sizeof *o) n = sizeof *o;
  memcpy(o, opts, n);
  o->size = sizeof *o;
}

cqrs_code_t cqrs_dispatcher_new(uv_loop_t *loop, const cqrs_registry_t *reg, cqrs_store_t *store,
                                const cqrs_dispatcher_options_t *opts, cqrs_dispatcher_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  if (!loop || !reg || !store) return cqrs_error_set(err, CQRS_EINVAL, "NULL loop, registry or store");
  cqrs_dispatcher_options_t o;
  options_of(opts, &o);
  if (o.batch_max > CQRS_BATCH_MAX)
    return cqrs_error_set(err, CQRS_EINVAL, "batch_max %u is over %d", o.batch_max, CQRS_BATCH_MAX);
  if (!o.batch_max) o.batch_max = CQRS_BATCH_MAX;
  cqrs__runtime_t *rt = cqrs__calloc(1, sizeof *rt);
  if (!rt) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate a dispatcher");
  cqrs_code_t rc = cqrs__runtime_init(rt, loop, o.clock, reg, store, err);
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

cqrs_code_t cqrs_dispatcher_execute_sync(cqrs_dispatcher_t *d, cqrs_command_t *cmd, const char *projection,
                                         uint64_t timeout_ms, cqrs_execution_t *out, cqrs_error_t *err) {
  cqrs_execution_t x;
  cqrs_code_t rc = cqrs_dispatcher_execute_ex(d, cmd, &x, err);
  if (out) *out = x;
  if (rc || !x.position) return rc;
  rc = cqrs_projection_wait_sync(d, projection, x.position, timeout_ms);
  if (rc)
    cqrs_error_set(err, rc, "the command committed (position %lld), but waiting for %s: %s", (long long)x.position,
                   projection ? projection : "the projections", cqrs_code_name(rc));
  return rc;
}

cqrs_code_t cqrs_dispatcher_close(cqrs_dispatcher_t *d, cqrs_close_cb cb, void *data) {
  if (!d) return CQRS_EINVAL;
  return cqrs__runtime_close(d, cb, data);
}
