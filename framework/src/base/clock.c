/* The clock (cqrs/clock.h): the real one, and manual ones with their alarms. */
#include "base/cqrs-private.h"

static cqrs_clock_t real_clock = {.manual = false};

cqrs_clock_t *cqrs_clock_real(void) { return &real_clock; }

cqrs_code_t cqrs_clock_manual_new(int64_t start_ms, cqrs_clock_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  if (start_ms <= 0) return cqrs_error_set(err, CQRS_EINVAL, "a manual clock starts after the epoch (%lld)", (long long)start_ms);
  cqrs_clock_t *c = cqrs__calloc(1, sizeof *c);
  if (!c) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate a clock");
  if (uv_mutex_init(&c->lock)) {
    cqrs__free(c);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot create the clock's lock");
  }
  c->manual = true;
  atomic_init(&c->wall, start_ms);
  atomic_init(&c->mono, (uint64_t)start_ms);
  *out = c;
  return CQRS_OK;
}

void cqrs_clock_destroy(cqrs_clock_t *c) {
  if (!c || !c->manual) return;
  uv_mutex_destroy(&c->lock);
  cqrs__free(c);
}

bool cqrs_clock_is_manual(const cqrs_clock_t *c) { return c && c->manual; }

int64_t cqrs_clock_now_ms(const cqrs_clock_t *c) { return cqrs__clock_wall(c); }

uint64_t cqrs_clock_monotonic_ms(const cqrs_clock_t *c) { return cqrs__clock_mono(c); }

/* Lock held. */
static void unlink_alarm(cqrs_clock_t *c, cqrs__alarm_t *a) {
  for (cqrs__alarm_t **pp = &c->alarms; *pp; pp = &(*pp)->next) {
    if (*pp == a) {
      *pp = a->next;
      break;
    }
  }
  a->next = NULL;
  a->set = false;
}

void cqrs__alarm_set(cqrs_clock_t *c, cqrs__alarm_t *a, uint64_t due) {
  uv_mutex_lock(&c->lock);
  if (a->set) unlink_alarm(c, a);
  a->due = due;
  a->set = true;
  /* After those due at the same time: they ring in the order they were set. */
  cqrs__alarm_t **pp = &c->alarms;
  while (*pp && (*pp)->due <= due) pp = &(*pp)->next;
  a->next = *pp;
  *pp = a;
  uv_mutex_unlock(&c->lock);
}

void cqrs__alarm_cancel(cqrs_clock_t *c, cqrs__alarm_t *a) {
  if (!a->set) return;
  uv_mutex_lock(&c->lock);
  if (a->set) unlink_alarm(c, a);
  uv_mutex_unlock(&c->lock);
}

cqrs_code_t cqrs_clock_advance(cqrs_clock_t *c, uint64_t ms) {
  if (!c || !c->manual) return CQRS_EINVAL;
  if (ms > INT64_MAX / 2) return CQRS_EINVAL;
  uv_mutex_lock(&c->lock);
  atomic_fetch_add_explicit(&c->wall, (int64_t)ms, memory_order_relaxed);
  uint64_t now = atomic_fetch_add_explicit(&c->mono, ms, memory_order_relaxed) + ms;
  /* The due ones leave the list in order; each rings outside the lock (a
   * ring may set its alarm again, or another). */
  cqrs__alarm_t *due = NULL, **tail = &due;
  while (c->alarms && c->alarms->due <= now) {
    cqrs__alarm_t *a = c->alarms;
    c->alarms = a->next;
    a->next = NULL;
    a->set = false;
    *tail = a;
    tail = &a->next;
  }
  uv_mutex_unlock(&c->lock);
  while (due) {
    cqrs__alarm_t *a = due;
    due = a->next;
    a->next = NULL;
    a->ring(a);
  }
  return CQRS_OK;
}

bool cqrs_clock_next_due(const cqrs_clock_t *c, uint64_t *in_ms) {
  if (!c || !c->manual || !in_ms) return false;
  cqrs_clock_t *m = (cqrs_clock_t *)c; /* the lock only */
  bool found = false;
  uv_mutex_lock(&m->lock);
  uint64_t now = atomic_load_explicit(&m->mono, memory_order_relaxed);
  for (const cqrs__alarm_t *a = m->alarms; a; a = a->next) {
    if (a->holds && a->holds(a)) {
      *in_ms = a->due > now ? a->due - now : 0;
      found = true;
      break;
    }
  }
  uv_mutex_unlock(&m->lock);
  return found;
}
