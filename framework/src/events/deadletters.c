/* Events subscribers gave up on: to the application's sink, or kept in
 * memory, a bounded ring. */
#include <stdio.h>

#include "events/events-private.h"

/* Room for one more dead letter in memory: the ring grows (up to the
 * bound, and only before it has wrapped, so that it stays in order), or
 * its oldest entry goes. NULL: no room at all (out of memory, empty). */
static dead_letter_t *dead_slot(cqrs__events_t *ev) {
  size_t bound = ev->dead_letters_kept;
  if (ev->ndead == ev->dead_cap && ev->dead_head == 0 && ev->dead_cap < bound) {
    size_t cap = ev->dead_cap ? ev->dead_cap * 2 : 16;
    if (cap > bound) cap = bound;
    dead_letter_t *p = cqrs__realloc(ev->dead, cap * sizeof *p);
    if (p) {
      ev->dead = p;
      ev->dead_cap = cap;
    }
  }
  if (ev->ndead < ev->dead_cap) return &ev->dead[(ev->dead_head + ev->ndead++) % ev->dead_cap];
  if (!ev->ndead) return NULL;
  if (ev->dead_dropped++ == 0)
    cqrs_log(CQRS_LOG_WARNING, "bus", "%zu dead letters kept in memory: the oldest are dropped from now on",
             ev->dead_cap);
  dead_letter_t *oldest = &ev->dead[ev->dead_head];
  cqrs_event_unref(oldest->event);
  ev->dead_head = (ev->dead_head + 1) % ev->dead_cap;
  return oldest;
}

void cqrs__dead_letter(sub_t *s, const cqrs_event_t *e, const cqrs_error_t *error, unsigned attempts,
                       int64_t first_failed_at) {
  cqrs__events_t *ev = s->ev;
  ev->dead_total++;
  s->dead_letters++;
  if (ev->dead_letter_info) {
    const cqrs_dead_letter_t dl = {.subscriber = s->name,
                                   .event = e,
                                   .error = error,
                                   .attempts = attempts,
                                   .first_failed_at = first_failed_at};
    ev->dead_letter_info(&dl, ev->dead_letter_data);
    return;
  }
  if (ev->dead_letter) {
    ev->dead_letter(s->name, e, error, ev->dead_letter_data);
    return;
  }
  dead_letter_t *dl = dead_slot(ev);
  if (!dl) {
    ev->dead_dropped++;
    cqrs_log(CQRS_LOG_ERROR, "bus", "dead letter of %s/%s #%lld lost: out of memory", s->name, e->type->name,
             (long long)e->position);
    return;
  }
  dl->event = cqrs_event_ref(e);
  snprintf(dl->subscriber, sizeof dl->subscriber, "%s", s->name);
  dl->error = *error;
  dl->attempts = attempts;
  dl->first_failed_at = first_failed_at;
}

size_t cqrs_dispatcher_dead_letter_count(const cqrs_dispatcher_t *d) { return d ? d->events->dead_total : 0; }

size_t cqrs_dispatcher_dead_letters_dropped(const cqrs_dispatcher_t *d) { return d ? d->events->dead_dropped : 0; }

const cqrs_event_t *cqrs_dispatcher_dead_letter(const cqrs_dispatcher_t *d, size_t i, const char **subscriber,
                                                const cqrs_error_t **error) {
  if (!d || i >= d->events->ndead) return NULL;
  const cqrs__events_t *ev = d->events;
  const dead_letter_t *dl = &ev->dead[(ev->dead_head + i) % ev->dead_cap];
  if (subscriber) *subscriber = dl->subscriber;
  if (error) *error = &dl->error;
  return dl->event;
}

bool cqrs_dispatcher_dead_letter_info(const cqrs_dispatcher_t *d, size_t i, cqrs_dead_letter_t *out) {
  if (!d || !out || i >= d->events->ndead) return false;
  const cqrs__events_t *ev = d->events;
  const dead_letter_t *dl = &ev->dead[(ev->dead_head + i) % ev->dead_cap];
  *out = (cqrs_dead_letter_t){.subscriber = dl->subscriber,
                              .event = dl->event,
                              .error = &dl->error,
                              .attempts = dl->attempts,
                              .first_failed_at = dl->first_failed_at};
  return true;
}

void cqrs__dead_letters_free(cqrs__events_t *ev) {
  for (size_t i = 0; i < ev->ndead; i++) cqrs_event_unref(ev->dead[(ev->dead_head + i) % ev->dead_cap].event);
  cqrs__free(ev->dead);
}
