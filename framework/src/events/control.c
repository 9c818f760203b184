/* Projection controls: what an operator asks of a running projection
 * through its control record (projection.h), read every control_ms beside
 * the checkpoints, on the pool when they or the store block. Each tick
 * writes the report of every projection this process runs (not a standby:
 * under a lease only the holder acts and reports), reads its record, and
 * then, on the loop, acts on it: a pause holds deliveries (a live
 * projection lets go of its queue and catches up again when resumed), a
 * reset moves the checkpoint once nothing is in flight, a skip
 * dead-letters one event, a replay reads one event from the store and sets
 * it aside to be delivered again. */
#include <stdio.h>

#include "events/events-private.h"

typedef struct ctl_item {
  sub_t *s; /* lives as long as the dispatcher, which waits for the job */
  cqrs_checkpoint_store_t *cp;
  bool report;
  cqrs_projection_control_t out; /* the report to write */
  int64_t replay_at;             /* an event to read (0: none) */
  cqrs_projection_control_t in;  /* the record read */
  bool found;
  cqrs_code_t rc;
  cqrs_error_t err;
  cqrs__event_vec_t replay;
  cqrs_code_t replay_rc;
  cqrs_error_t replay_err;
} ctl_item_t;

typedef struct ctl_job {
  cqrs__job_t job; /* first: the job is the work */
  cqrs__events_t *ev;
  size_t n;
  ctl_item_t items[];
} ctl_job_t;

static const char *state_of(const sub_t *s) {
  if (s->ctl.resetting) return "resetting";
  if (s->ctl.paused) return "paused";
  if (s->npark || s->attempts) return "failing";
  if (s->state == SUB_LOADING || s->state == SUB_CATCHING_UP) return "catching-up";
  return "running";
}

static void fill_report(const cqrs__events_t *ev, const sub_t *s, cqrs_projection_control_t *out) {
  memset(out, 0, sizeof *out);
  out->done = s->ctl.done;
  snprintf(out->result, sizeof out->result, "%s", s->ctl.result);
  snprintf(out->state, sizeof out->state, "%s", state_of(s));
  const char *owner = ev->rt->leasing ? cqrs__leasing_owner(ev->rt->leasing) : ev->owner;
  snprintf(out->owner, sizeof out->owner, "%s", owner);
  out->reported_at = cqrs_now_ms(); /* real time, whatever the clock: other processes read it against theirs */
  out->reached = s->position > 0 ? s->position : 0;
  out->parked = (int64_t)s->npark;
}

static bool collect(const cqrs_event_t *e, void *data) {
  return cqrs__event_vec_push_ref(data, e) == CQRS_OK;
}

static void work_cb(cqrs__job_t *job) {
  ctl_job_t *cj = (ctl_job_t *)job;
  for (size_t i = 0; i < cj->n; i++) {
    ctl_item_t *it = &cj->items[i];
    const char *name = it->s->name;
    cqrs_error_t err;
    if (it->report && cqrs_checkpoint_store_control_save(it->cp, name, &it->out, CQRS_CONTROL_REPORT, &err))
      cqrs_log(CQRS_LOG_WARNING, "bus", "projection %s: report not written: %s", name, err.message);
    it->rc = cqrs_checkpoint_store_control_load(it->cp, name, &it->in, &it->found, &it->err);
    if (it->replay_at)
      it->replay_rc = cqrs_store_read_all(cj->ev->rt->store, it->replay_at, 1, collect, &it->replay, &it->replay_err);
  }
}

/* The reset, once nothing is in flight: the queue and what is set aside
 * go, the checkpoint is saved at the new position (by sub_run, inline or
 * on the pool, under the lease's token), and the projection catches up
 * from there (unless paused). */
static void reset_now(sub_t *s) {
  if (s->busy || s->cp_saving || s->park_inflight) return;
  cqrs__sub_let_go(s);
  cqrs__park_clear(s);
  s->position = s->read_pos = s->ctl.reset_to;
  s->saved = -1;
  s->state = SUB_CATCHING_UP;
  s->ctl.resetting = false;
  s->ctl.reset_saving = true; /* answered once the checkpoint says so: an operator reads it next */
  cqrs__sub_run(s);
}

static void pause_now(sub_t *s) {
  if (s->ctl.paused && s->state == SUB_LIVE && !s->busy) cqrs__sub_let_go(s);
}

/* A request newer than what this projection has carried out. */
static void take(sub_t *s, const cqrs_projection_control_t *c) {
  s->ctl.busy = c->request;
  switch (c->action) {
    case CQRS_PROJECTION_RESET:
      if (s->async) {
        cqrs__ctl_answer(s, c->request, "refused: a process manager cannot be reset");
        return;
      }
      s->ctl.resetting = true;
      s->ctl.reset_to = c->position;
      reset_now(s);
      return;
    case CQRS_PROJECTION_SKIP:
      if (c->position <= 0) {
        cqrs__ctl_answer(s, c->request, "refused: no event #%lld", (long long)c->position);
        return;
      }
      s->ctl.skip_at = c->position;
      if (cqrs__sub_skip_now(s)) {
        cqrs__sub_run(s);
      } else if (c->position <= s->position) {
        s->ctl.skip_at = 0;
        cqrs__ctl_answer(s, c->request, "not skipped: #%lld is behind the projection (handled, or dead-lettered)",
               (long long)c->position);
      } else {
        snprintf(s->ctl.result, sizeof s->ctl.result, "#%lld to be skipped when it comes", (long long)c->position);
        s->ctl.report_due = true;
      }
      return;
    case CQRS_PROJECTION_REPLAY:
      if (c->position <= 0) {
        cqrs__ctl_answer(s, c->request, "refused: no event #%lld", (long long)c->position);
        return;
      }
      s->ctl.replay_at = c->position; /* read by the next tick */
      cqrs__control_kick(s->ev);
      return;
    default:
      cqrs__ctl_answer(s, c->request, "refused: unknown action %d", (int)c->action);
  }
}

static void replay_read(ctl_item_t *it) {
  sub_t *s = it->s;
  int64_t at = it->replay_at, request = s->ctl.busy;
  if (s->ctl.replay_at != at) return; /* let go of meanwhile */
  s->ctl.replay_at = 0;
  if (it->replay_rc) {
    cqrs__ctl_answer(s, request, "replay of #%lld: cannot read the store: %.100s", (long long)at, it->replay_err.message);
    return;
  }
  const cqrs_event_t *e = it->replay.len ? it->replay.items[0] : NULL;
  if (!e || e->position != at) {
    cqrs__ctl_answer(s, request, "replay refused: no event #%lld in the store", (long long)at);
  } else if (!cqrs__sub_wants(s, e)) {
    cqrs__ctl_answer(s, request, "replay refused: #%lld is a %s, not of its types", (long long)at, e->type->name);
  } else if (!cqrs__park_replay(s, e, request)) {
    cqrs__ctl_answer(s, request, "replay of #%lld refused: no room to set it aside", (long long)at);
  } else {
    snprintf(s->ctl.result, sizeof s->ctl.result, "replaying #%lld", (long long)at);
    cqrs__sub_run(s);
  }
}

static void apply(ctl_item_t *it) {
  sub_t *s = it->s;
  if (s->state == SUB_STANDBY) return; /* the lease went meanwhile */
  if (it->replay_at) replay_read(it);
  if (it->rc) {
    cqrs_log(CQRS_LOG_WARNING, "bus", "projection %s: control record not read: %s", s->name, it->err.message);
    return;
  }
  const cqrs_projection_control_t *c = &it->in;
  if (c->done > s->ctl.done) s->ctl.done = c->done; /* carried out before (another process, a restart) */
  bool was = s->ctl.paused;
  s->ctl.paused = c->paused;
  if (was != c->paused) s->ctl.report_due = true;
  pause_now(s);
  if (s->ctl.resetting) reset_now(s);
  if (c->request > s->ctl.done && c->request != s->ctl.busy && c->action != CQRS_PROJECTION_NO_ACTION) {
    if (s->ctl.busy && s->ctl.skip_at) { /* a skip still waiting for its event gives way */
      s->ctl.skip_at = 0;
      cqrs__ctl_answer(s, s->ctl.busy, "skip superseded by request %lld", (long long)c->request);
    }
    if (!s->ctl.busy) take(s, c);
  }
  if (was && !c->paused) cqrs__sub_run(s);
}

static bool controlled(const sub_t *s) { return s->cp && cqrs__checkpoints_controlled(s->cp); }

static void tick(cqrs__events_t *ev);

static void after_work(cqrs__job_t *job, bool cancelled) {
  ctl_job_t *cj = (ctl_job_t *)job;
  cqrs__events_t *ev = cj->ev;
  ev->control_busy = false;
  bool closing = cqrs__runtime_closing(ev->rt);
  for (size_t i = 0; i < cj->n; i++) {
    if (!cancelled && !closing) apply(&cj->items[i]);
    cqrs__event_vec_free(&cj->items[i].replay);
  }
  cqrs__free(cj);
  bool due = false;
  for (size_t i = 0; i < ev->nsubs; i++) due |= ev->subs[i]->ctl.report_due;
  if (!closing && (ev->control_again || due)) tick(ev);
}

static void tick(cqrs__events_t *ev) {
  if (ev->control_busy) {
    ev->control_again = true;
    return;
  }
  ev->control_again = false;
  size_t n = 0;
  bool blocking = cqrs_store_blocking(ev->rt->store);
  for (size_t i = 0; i < ev->nsubs; i++) {
    sub_t *s = ev->subs[i];
    if (!controlled(s)) continue;
    if (s->state == SUB_STANDBY) {
      /* Another process runs it: what this one had under way is that one's to do. */
      s->ctl = (sub_ctl_t){.done = s->ctl.done};
      continue;
    }
    n++;
    blocking |= cqrs__checkpoints_blocking(s->cp);
  }
  if (!n) return;
  ctl_job_t *cj = cqrs__calloc(1, sizeof *cj + n * sizeof cj->items[0]);
  if (!cj) {
    cqrs_log(CQRS_LOG_WARNING, "bus", "projection controls not read: out of memory");
    return;
  }
  cj->ev = ev;
  for (size_t i = 0; i < ev->nsubs; i++) {
    sub_t *s = ev->subs[i];
    if (!controlled(s) || s->state == SUB_STANDBY) continue;
    ctl_item_t *it = &cj->items[cj->n++];
    it->s = s;
    it->cp = s->cp;
    it->report = true;
    if (s->ctl.reset_saving && !s->busy && !s->cp_saving && s->saved == s->ctl.reset_to) {
      s->ctl.reset_saving = false;
      cqrs__ctl_answer(s, s->ctl.busy, "reset to #%lld", (long long)s->ctl.reset_to);
    }
    fill_report(ev, s, &it->out);
    s->ctl.report_due = false;
    it->replay_at = s->ctl.replay_at;
  }
  cqrs_error_t err;
  if (!blocking) {
    work_cb(&cj->job);
    ev->control_busy = true;
    after_work(&cj->job, false);
    return;
  }
  if (cqrs__job_submit(ev->rt, &cj->job, work_cb, after_work, &err)) {
    cqrs_log(CQRS_LOG_WARNING, "bus", "projection controls not read: %s", err.message);
    cqrs__free(cj);
    return;
  }
  ev->control_busy = true;
}

/* The timer's round is skipped while one is still under way (a server that
 * does not answer makes a round slow): rounds back to back would keep a
 * job in flight for good, and with it the loop of a dispatcher meant to
 * keep none alive. A kick while one is under way runs once after it. */
static void timer_cb(uv_timer_t *t) {
  cqrs__events_t *ev = t->data;
  if (!ev->control_busy) tick(ev);
}

void cqrs__control_kick(cqrs__events_t *ev) {
  if (ev->control_on && !cqrs__runtime_closing(ev->rt)) tick(ev);
}

void cqrs__control_attach(cqrs__events_t *ev) {
  if (!ev->control_ms) return;
  cqrs__timer_init(ev->rt, &ev->control_timer, NULL, ev);
  uv_unref((uv_handle_t *)&ev->control_timer.handle); /* it keeps no loop alive */
  cqrs__timer_start(&ev->control_timer, timer_cb, ev->control_ms, ev->control_ms);
  ev->control_on = true;
  cqrs__runtime_handle_opened(ev->rt);
  /* host:pid; a host name too long for that is hashed, not cut. */
  int pid = (int)uv_os_getpid();
  char host[256];
  size_t len = sizeof host;
  if (uv_os_gethostname(host, &len)) snprintf(host, sizeof host, "unknown-host");
  char pidtext[16];
  snprintf(pidtext, sizeof pidtext, ":%d", pid);
  if (strlen(host) + strlen(pidtext) >= sizeof ev->owner)
    snprintf(host, sizeof host, "host-%016llx", (unsigned long long)cqrs__hash_str(host, 0));
  memcpy(ev->owner, host, strlen(host));
  memcpy(ev->owner + strlen(host), pidtext, strlen(pidtext) + 1);
}

void cqrs__control_close_handles(cqrs__events_t *ev) {
  if (!ev->control_on) return;
  cqrs__timer_close(ev->rt, &ev->control_timer);
}
