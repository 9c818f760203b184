/* Subscribing: event handlers and projections (subscribers with a
 * checkpoint), under leases when the dispatcher has them; and what each
 * shows of itself. */
#include "events/events-private.h"

static cqrs_code_t add_sub(cqrs__events_t *ev, const char *name, const cqrs_event_type_t *const *types,
                           cqrs_event_handler_cb fn, void *data, bool blocking, sub_t **out, cqrs_error_t *err) {
  if (!fn) return cqrs_error_set(err, CQRS_EINVAL, "NULL handler");
  if (cqrs__runtime_closing(ev->rt)) return cqrs_error_set(err, CQRS_ECLOSED, "dispatcher is closing");
  cqrs_code_t rc = cqrs__check_str(name, CQRS_NAME_MAX, "subscriber name", err);
  if (rc) return rc;
  for (size_t i = 0; i < ev->nsubs; i++) {
    if (!strcmp(ev->subs[i]->name, name))
      return cqrs_error_set(err, CQRS_EDUPLICATE, "subscriber '%s' already exists", name);
  }
  size_t ntypes = 0;
  if (types) {
    while (types[ntypes]) ntypes++;
  }
  sub_t *s = cqrs__calloc(1, sizeof *s);
  sub_t **subs = cqrs__realloc(ev->subs, (ev->nsubs + 1) * sizeof *subs);
  const cqrs_event_type_t **tcopy = types ? cqrs__calloc(ntypes + 1, sizeof *tcopy) : NULL;
  if (subs) ev->subs = subs;
  if (!s || !subs || (types && !tcopy)) {
    cqrs__free(s);
    cqrs__free((void *)tcopy);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot add a subscriber");
  }
  if (tcopy) memcpy((void *)tcopy, types, ntypes * sizeof *tcopy);
  s->ev = ev;
  memcpy(s->name, name, strlen(name) + 1);
  s->types = tcopy;
  s->fn = fn;
  s->data = data;
  s->blocking = blocking;
  s->position = ev->feed_pos;
  s->park_ceiling = INT64_MAX;
  s->state = SUB_LIVE;
  cqrs__timer_init(ev->rt, &s->timer, NULL, s);
  cqrs__runtime_handle_opened(ev->rt);
  ev->subs[ev->nsubs++] = s;
  *out = s;
  return CQRS_OK;
}

/* Undoes add_sub for a subscriber nothing has seen yet (the last one
 * added). Its timer closes first, counted as a job in flight so that the
 * runtime waits for it. */
static void sub_discarded(uv_handle_t *h) {
  sub_t *s = h->data;
  cqrs__runtime_t *rt = s->ev->rt;
  cqrs__sub_free(s);
  rt->jobs--;
  if (cqrs__runtime_closing(rt)) cqrs__runtime_maybe_closed(rt);
}

static void discard_sub(sub_t *s) {
  cqrs__events_t *ev = s->ev;
  ev->subs[--ev->nsubs] = NULL;
  ev->rt->handles--;
  ev->rt->jobs++;
  cqrs__timer_stop(&s->timer);
  uv_close((uv_handle_t *)&s->timer.handle, sub_discarded);
}

cqrs_code_t cqrs_dispatcher_subscribe(cqrs_dispatcher_t *d, const char *name, const cqrs_event_type_t *const *types,
                                      cqrs_event_handler_cb fn, void *data, unsigned flags, cqrs_error_t *err) {
  if (!d) return cqrs_error_set(err, CQRS_EINVAL, "NULL dispatcher");
  sub_t *s = NULL;
  return add_sub(d->events, name, types, fn, data, flags & CQRS_SUBSCRIBE_BLOCKING, &s, err);
}

static cqrs_code_t projection_start(cqrs_dispatcher_t *d, const cqrs_projection_def_t *def, cqrs_checkpoints_t *cp,
                                    cqrs__checkpoint_fn checkpoint, bool async, sub_t **out, cqrs_error_t *err) {
  *out = NULL;
  if (!d || !def || !cp) return cqrs_error_set(err, CQRS_EINVAL, "NULL dispatcher, definition or checkpoints");
  cqrs__leasing_t *leasing = d->leasing;
  if (leasing && !cqrs__checkpoints_fenced(cp))
    return cqrs_error_set(err, CQRS_EINVAL, "under leases a projection needs checkpoints that fence their writes");
  bool cp_blocking = cqrs__checkpoints_blocking(cp);
  int64_t pos = 0;
  cqrs_code_t rc;
  if (!cp_blocking && !leasing) {
    if ((rc = cqrs__check_str(def->name, CQRS_NAME_MAX, "projection name", err))) return rc;
    if ((rc = cqrs_checkpoints_load(cp, def->name, &pos, err))) return rc;
  }
  sub_t *s = NULL;
  rc = add_sub(d->events, def->name, def->types, def->handler, def->data,
               !async && ((def->flags & CQRS_SUBSCRIBE_BLOCKING) || cp_blocking), &s, err);
  if (rc) return rc;
  s->cp = cp;
  s->async = async;
  s->checkpoint = checkpoint;
  s->cp_blocking = async && cp_blocking;
  s->state = SUB_LOADING;
  if (leasing) {
    cqrs__sub_lease(s, leasing);
  } else if (!cp_blocking) {
    cqrs__sub_start_catchup(s, pos);
  } else if ((rc = cqrs__sub_queue_checkpoint_load(s, err))) {
    discard_sub(s);
    return rc;
  }
  *out = s;
  return CQRS_OK;
}

cqrs_code_t cqrs_projection_start(cqrs_dispatcher_t *d, const cqrs_projection_def_t *def, cqrs_checkpoints_t *cp,
                                  cqrs_error_t *err) {
  sub_t *s;
  return projection_start(d, def, cp, NULL, false, &s, err);
}

cqrs_code_t cqrs__projection_start_async(cqrs_dispatcher_t *d, const cqrs_projection_def_t *def,
                                         cqrs_checkpoints_t *cp, cqrs__checkpoint_fn checkpoint, sub_t **out,
                                         cqrs_error_t *err) {
  return projection_start(d, def, cp, checkpoint, true, out, err);
}

cqrs_code_t cqrs_dispatcher_set_leases(cqrs_dispatcher_t *d, const cqrs_lease_options_t *o, cqrs_error_t *err) {
  if (!d) return cqrs_error_set(err, CQRS_EINVAL, "NULL dispatcher");
  for (size_t i = 0; i < d->events->nsubs; i++) {
    if (d->events->subs[i]->cp) return cqrs_error_set(err, CQRS_ESTATE, "leases come before projections start");
  }
  return cqrs__leasing_new(d, o, err);
}

static const sub_t *find_sub(const cqrs_dispatcher_t *d, const char *name) {
  if (!d || !name) return NULL;
  const cqrs__events_t *ev = d->events;
  for (size_t i = 0; i < ev->nsubs; i++) {
    if (!strcmp(ev->subs[i]->name, name)) return ev->subs[i];
  }
  return NULL;
}

bool cqrs_projection_live(const cqrs_dispatcher_t *d, const char *name) {
  const sub_t *s = find_sub(d, name);
  return s && s->state == SUB_LIVE;
}

int64_t cqrs_projection_position(const cqrs_dispatcher_t *d, const char *name) {
  const sub_t *s = find_sub(d, name);
  return s ? s->position : 0;
}

bool cqrs_projection_owned(const cqrs_dispatcher_t *d, const char *name) {
  const sub_t *s = find_sub(d, name);
  return s && s->lease.held;
}

/* ---- figures for metrics ---- */

bool cqrs__events_sub_figures(const cqrs_dispatcher_t *d, size_t i, cqrs__sub_figures_t *out) {
  if (!d || i >= d->events->nsubs) return false;
  const cqrs__events_t *ev = d->events;
  const sub_t *s = ev->subs[i];
  out->name = s->name;
  out->position = s->position;
  /* A live subscriber with nothing queued has seen everything the feed has,
   * including the events its types filter out. */
  bool idle = s->state == SUB_LIVE && !s->q_len && !s->busy && !s->waiting;
  out->handled_up_to = idle && ev->feed_pos > s->position ? ev->feed_pos : s->position;
  const cqrs_event_t *head = cqrs__sub_head(s);
  out->oldest_pending_ts = head ? head->timestamp : 0;
  if (s->state == SUB_STANDBY) { /* another process runs it: its lag is that one's to show */
    out->handled_up_to = ev->feed_pos;
    out->oldest_pending_ts = 0;
  }
  out->retries = s->retries;
  out->dead_letters = s->dead_letters;
  out->parked = s->npark;
  return true;
}

int64_t cqrs__events_feed_position(const cqrs_dispatcher_t *d) { return d ? d->events->feed_pos : 0; }
