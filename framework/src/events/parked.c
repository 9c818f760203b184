/* Poison events off a projection's path. When a projection's handler fails
 * on an event for a reason that is the event's (not a store that went
 * away), the event is set aside, with the events of its stream that come
 * after it, and the queue goes on with the other streams. What is set
 * aside is retried with back-off and dead-lettered after its attempts; the
 * next of its stream is then delivered. The checkpoint never passes the
 * oldest event set aside, so what a crash or a lost lease lets go of is
 * read again from it (docs/architecture.md, "Poison events"). */
#include <stdarg.h>
#include <stdio.h>

#include "events/events-private.h"

uint64_t cqrs__events_backoff(const cqrs__events_t *ev, unsigned attempts) {
  uint64_t ms = ev->retry_base_ms;
  for (unsigned i = 1; i < attempts && ms < ev->retry_cap_ms; i++) ms *= 2;
  return ms > ev->retry_cap_ms ? ev->retry_cap_ms : ms;
}

static bool same_stream(const cqrs_event_t *a, const cqrs_event_t *b) {
  if (a->envelope == b->envelope) return true;
  return !strcmp(cqrs_event_aggregate_id(a), cqrs_event_aggregate_id(b)) &&
         !strcmp(cqrs_event_aggregate_type(a), cqrs_event_aggregate_type(b));
}

bool cqrs__park_holds(const sub_t *s, const cqrs_event_t *e) {
  for (size_t i = 0; i < s->npark; i++) {
    if (same_stream(s->park[i].event, e)) return true;
  }
  return false;
}

/* Whether park[i] is the first set aside of its stream (the one to try). */
static bool first_of_stream(const sub_t *s, size_t i) {
  for (size_t j = 0; j < i; j++) {
    if (same_stream(s->park[j].event, s->park[i].event)) return false;
  }
  return true;
}

static size_t find(const sub_t *s, const cqrs_event_t *e) {
  for (size_t i = 0; i < s->npark; i++) {
    if (s->park[i].event == e) return i;
  }
  return SIZE_MAX;
}

static uint64_t now_of(const sub_t *s) { return cqrs__runtime_now(s->ev->rt); }

bool cqrs__park_add(sub_t *s, const cqrs_event_t *e, const cqrs_error_t *error) {
  if (s->npark == CQRS__PARK_MAX) return false;
  if (s->npark == s->park_cap) {
    size_t cap = s->park_cap ? s->park_cap * 2 : 8;
    parked_t *p = cqrs__realloc(s->park, cap * sizeof *p);
    if (!p) return false;
    s->park = p;
    s->park_cap = cap;
  }
  /* In position order: the queue hands them over in that order. */
  size_t at = s->npark;
  while (at > 0 && s->park[at - 1].event->position > e->position) at--;
  memmove(&s->park[at + 1], &s->park[at], (s->npark - at) * sizeof *s->park);
  parked_t *p = &s->park[at];
  memset(p, 0, sizeof *p);
  p->event = cqrs_event_ref(e);
  if (error) {
    p->attempts = 1;
    p->error = *error;
    p->first_failed_at = cqrs__clock_wall(s->ev->rt->clock);
    p->due = now_of(s) + cqrs__events_backoff(s->ev, 1);
  }
  s->npark++;
  return true;
}

const cqrs_event_t *cqrs__park_next(sub_t *s) {
  if (s->park_inflight) return NULL;
  bool closing = cqrs__runtime_closing(s->ev->rt);
  uint64_t now = now_of(s);
  for (size_t i = 0; i < s->npark; i++) {
    if ((closing || s->park[i].due <= now) && first_of_stream(s, i)) return s->park[i].event;
  }
  return NULL;
}

static void remove_at(sub_t *s, size_t i) {
  const cqrs_event_t *e = s->park[i].event;
  memmove(&s->park[i], &s->park[i + 1], (s->npark - i - 1) * sizeof *s->park);
  s->npark--;
  /* The next of its stream is tried at once. */
  uint64_t now = now_of(s);
  for (size_t j = i; j < s->npark; j++) {
    if (same_stream(s->park[j].event, e)) {
      if (s->park[j].due > now) s->park[j].due = now;
      break;
    }
  }
  cqrs_event_unref(e);
}

void cqrs__ctl_answer(sub_t *s, int64_t request, const char *fmt, ...) {
  if (!request) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->ctl.result, sizeof s->ctl.result, fmt, ap);
  va_end(ap);
  if (request > s->ctl.done) s->ctl.done = request;
  if (s->ctl.busy == request) s->ctl.busy = 0;
  s->ctl.report_due = true;
}

void cqrs__park_resolved(sub_t *s, const cqrs_event_t *e, const cqrs_error_t *err) {
  size_t i = find(s, e);
  if (i == SIZE_MAX) { /* let go of meanwhile (a lost lease) */
    if (s->park_orphan) cqrs_event_unref(e);
    s->park_orphan = false;
    return;
  }
  parked_t *p = &s->park[i];
  if (!err || err->code == CQRS_OK) {
    cqrs__ctl_answer(s, p->request, "replayed #%lld: handled", (long long)e->position);
    remove_at(s, i);
    return;
  }
  cqrs__events_t *ev = s->ev;
  s->retries++;
  if (cqrs_error_transient(err)) {
    /* The store went away: no fault of the event's, not counted. At close
     * it is read again from the checkpoint on the next start. */
    if (cqrs__runtime_closing(ev->rt)) {
      cqrs__park_drop(s);
      return;
    }
    p->due = now_of(s) + cqrs__events_backoff(ev, p->attempts ? p->attempts : 1);
    return;
  }
  p->attempts++;
  p->error = *err;
  if (!p->first_failed_at) p->first_failed_at = cqrs__clock_wall(s->ev->rt->clock);
  if (p->attempts < ev->retry_attempts && err->code != CQRS_EUNKNOWN_TYPE) {
    p->due = now_of(s) + cqrs__events_backoff(ev, p->attempts);
    return;
  }
  cqrs_error_t last = p->error;
  cqrs__dead_letter(s, e, &last, p->attempts, p->first_failed_at);
  cqrs__ctl_answer(s, p->request, "replayed #%lld: failed again, dead-lettered: %.100s", (long long)e->position, last.message);
  remove_at(s, i);
}

bool cqrs__park_replay(sub_t *s, const cqrs_event_t *e, int64_t request) {
  if (!cqrs__park_add(s, e, NULL)) return false;
  size_t i = find(s, e);
  s->park[i].request = request;
  s->park[i].due = now_of(s);
  return true;
}

bool cqrs__park_skip(sub_t *s, int64_t position, const cqrs_error_t *why) {
  for (size_t i = 0; i < s->npark; i++) {
    parked_t *p = &s->park[i];
    if (p->event->position != position || p->event == s->park_inflight) continue;
    cqrs__dead_letter(s, p->event, why, p->attempts, p->first_failed_at);
    cqrs__ctl_answer(s, p->request, "replay of #%lld skipped", (long long)position);
    remove_at(s, i);
    return true;
  }
  return false;
}

void cqrs__park_clear(sub_t *s) {
  for (size_t i = 0; i < s->npark; i++) {
    cqrs__ctl_answer(s, s->park[i].request, "replay of #%lld let go of: reset", (long long)s->park[i].event->position);
    if (s->park[i].event != s->park_inflight) cqrs_event_unref(s->park[i].event);
  }
  s->park_orphan = s->park_inflight != NULL;
  s->npark = 0;
  s->park_ceiling = INT64_MAX;
}

void cqrs__park_drop(sub_t *s) {
  if (!s->npark) return;
  /* What the checkpoint may say from now on: before the oldest let go of. */
  int64_t floor = cqrs__park_floor(s);
  if (s->park_ceiling > floor) s->park_ceiling = floor;
  if (s->position > floor) s->position = floor;
  for (size_t i = 0; i < s->npark; i++) {
    if (s->park[i].event != s->park_inflight) cqrs_event_unref(s->park[i].event);
  }
  /* One on its way is let go of when its delivery comes back. */
  s->park_orphan = s->park_inflight != NULL;
  s->npark = 0;
}

uint64_t cqrs__park_next_due(const cqrs__events_t *ev) {
  uint64_t next = UINT64_MAX;
  for (size_t i = 0; i < ev->nsubs; i++) {
    const sub_t *s = ev->subs[i];
    /* One busy or in a back-off runs again when that ends. */
    if (s->busy || s->waiting) continue;
    for (size_t j = 0; j < s->npark; j++) {
      if (s->park[j].due < next && first_of_stream(s, j)) next = s->park[j].due;
    }
  }
  return next;
}

/* ---- an operator's controls (control.c) ---- */

void cqrs__sub_let_go(sub_t *s) {
  while (s->q_len) cqrs__q_pop(s);
  s->attempts = 0;
  if (s->waiting) {
    cqrs__timer_stop(&s->timer);
    s->waiting = false;
  }
  if (s->state == SUB_LIVE || s->state == SUB_CATCHING_UP) {
    s->read_pos = s->position;
    s->state = SUB_CATCHING_UP;
  }
}

bool cqrs__sub_skip_now(sub_t *s) {
  int64_t at = s->ctl.skip_at;
  cqrs_error_t why;
  cqrs_error_set(&why, CQRS_EHANDLER, "skipped by an operator (request %lld)", (long long)s->ctl.busy);
  snprintf(why.name, sizeof why.name, "skipped");
  bool skipped = cqrs__park_skip(s, at, &why);
  if (!skipped && !s->busy && s->q_len && cqrs__q_peek(s, 0)->position == at) {
    const cqrs_event_t *e = cqrs__q_peek(s, 0);
    cqrs__dead_letter(s, e, &why, s->attempts, s->attempts ? s->first_failed_at : 0);
    s->position = e->position;
    s->attempts = 0;
    if (s->waiting) {
      cqrs__timer_stop(&s->timer);
      s->waiting = false;
    }
    cqrs__q_pop(s);
    skipped = true;
  }
  if (!skipped) return false;
  s->ctl.skip_at = 0;
  cqrs__ctl_answer(s, s->ctl.busy, "skipped #%lld: dead-lettered", (long long)at);
  return true;
}
