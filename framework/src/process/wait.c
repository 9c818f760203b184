/* Process managers: waiting until no instance of a type is open here
 * (cqrs_process_wait, _wait_sync), through the event side's waiters. */
#include "process/process-private.h"

static const cqrs__process_t *find(const cqrs_dispatcher_t *d, const char *name) {
  for (const cqrs__process_t *p = d->procs; p; p = p->next) {
    if (!strcmp(p->pm->def->name, name)) return p;
  }
  return NULL;
}

/* An instance is open, or may be, while it has started and not ended, while
 * an input is on its way to it, or while it is to be reloaded (which says
 * whether it is). Loop thread: the waiters' check. */
static cqrs_code_t none_open(const cqrs_dispatcher_t *d, const char *name) {
  const cqrs__process_t *p = find(d, name);
  if (!p) return CQRS_ENOT_FOUND;
  open_t *o, *tmp;
  HASH_ITER(hh, p->open, o, tmp) {
    if (o->started || o->busy || o->queue || o->resume_at || o->held_at) return CQRS_CODE_COUNT;
  }
  return CQRS_OK;
}

cqrs_code_t cqrs_process_wait(cqrs_dispatcher_t *d, const char *name, uint64_t timeout_ms, cqrs_wait_cb cb,
                              void *data) {
  if (!d || !name || !cb) return CQRS_EINVAL;
  if (cqrs__runtime_closing(d)) return CQRS_ECLOSED;
  if (!find(d, name)) return CQRS_ENOT_FOUND;
  return cqrs__wait_until(d, none_open, name, timeout_ms, cb, data);
}

cqrs_code_t cqrs_process_wait_sync(cqrs_dispatcher_t *d, const char *name, uint64_t timeout_ms) {
  if (!d || !name) return CQRS_EINVAL;
  /* No process type has a longer name; the waiter's copy would cut it. */
  if (strlen(name) > CQRS_PROCESS_NAME_MAX) return cqrs__runtime_on_loop(d) ? CQRS_ESTATE : CQRS_ENOT_FOUND;
  return cqrs__wait_until_sync(d, none_open, name, timeout_ms);
}
