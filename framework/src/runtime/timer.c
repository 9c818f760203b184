/* The framework's timers, on the runtime's clock (runtime-private.h). */
#include <stddef.h>

#include "runtime/runtime-private.h"

static cqrs__timer_t *timer_of_alarm(const cqrs__alarm_t *a) {
  return (cqrs__timer_t *)((char *)a - offsetof(cqrs__timer_t, alarm));
}

/* A due timer holds the loop until it fires (runtime-private.h); then its
 * handle is referenced as its owner left it. */
static void let_go(cqrs__timer_t *t) {
  if (!t->held) return;
  t->held = false;
  uv_unref((uv_handle_t *)&t->handle);
}

/* On a manual clock every firing comes through here. */
static void fire(uv_timer_t *h) {
  cqrs__timer_t *t = (cqrs__timer_t *)h;
  let_go(t);
  if (t->repeat) cqrs__alarm_set(t->clock, &t->alarm, cqrs__clock_mono(t->clock) + t->repeat);
  t->cb(h);
}

static void ring(cqrs__alarm_t *a) {
  cqrs__timer_t *t = timer_of_alarm(a);
  if (!uv_has_ref((uv_handle_t *)&t->handle)) {
    t->held = true;
    uv_ref((uv_handle_t *)&t->handle);
  }
  uv_timer_start(&t->handle, fire, 0, 0);
}

static bool holds(const cqrs__alarm_t *a) { return uv_has_ref((const uv_handle_t *)&timer_of_alarm(a)->handle); }

void cqrs__timer_init(cqrs__runtime_t *rt, cqrs__timer_t *t, cqrs_clock_t *clock, void *data) {
  uv_timer_init(rt->loop, &t->handle);
  t->handle.data = data;
  t->clock = clock ? clock : rt->clock;
  t->alarm = (cqrs__alarm_t){.ring = ring, .holds = holds};
  t->cb = NULL;
  t->repeat = 0;
  t->held = false;
}

void cqrs__timer_start(cqrs__timer_t *t, uv_timer_cb cb, uint64_t ms, uint64_t repeat) {
  if (!t->clock->manual) {
    uv_timer_start(&t->handle, cb, ms, repeat);
    return;
  }
  t->cb = cb;
  t->repeat = repeat;
  t->held = false; /* its owner has just set its reference as it wants it */
  cqrs__alarm_cancel(t->clock, &t->alarm);
  if (ms == 0) {
    uv_timer_start(&t->handle, fire, 0, 0);
    return;
  }
  uv_timer_stop(&t->handle);
  cqrs__alarm_set(t->clock, &t->alarm, cqrs__clock_mono(t->clock) + ms);
}

void cqrs__timer_stop(cqrs__timer_t *t) {
  if (t->clock->manual) {
    cqrs__alarm_cancel(t->clock, &t->alarm);
    let_go(t);
  }
  uv_timer_stop(&t->handle);
}

void cqrs__timer_close(cqrs__runtime_t *rt, cqrs__timer_t *t) {
  cqrs__timer_stop(t);
  cqrs__runtime_close_handle(rt, (uv_handle_t *)&t->handle);
}
