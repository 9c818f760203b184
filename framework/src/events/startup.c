/* A projection's start: the load of its checkpoint (inline, or on the
 * pool for blocking checkpoints), then its catch-up; and its life under a
 * lease: standing by, taking over, letting go. */
#include "events/events-private.h"

/* ---- loading the checkpoint ---- */

/* Checkpoint loads of blocking checkpoint stores run on the pool. */
typedef struct cp_work {
  cqrs__job_t job; /* first: the job is the work */
  sub_t *s;
  int64_t position;
  cqrs_code_t rc;
  cqrs_error_t err;
} cp_work_t;

static void cp_work_cb(cqrs__job_t *job) {
  cp_work_t *cw = (cp_work_t *)job;
  cw->rc = cqrs_checkpoints_load(cw->s->cp, cw->s->name, &cw->position, &cw->err);
}

/* Keep the projection stopped rather than replaying from an unknown point;
 * under a lease, let it go: another process (or a later try) starts it. */
static void cp_load_failed(sub_t *s, const cqrs_error_t *err) {
  if (s->lease.on) {
    cqrs__lease_give_up(&s->lease, err);
    return;
  }
  cqrs_log(CQRS_LOG_ERROR, "bus", "projection %s cannot load its checkpoint: %s", s->name, err->message);
}

static void cp_after_work(cqrs__job_t *job, bool cancelled) {
  cp_work_t *cw = (cp_work_t *)job;
  sub_t *s = cw->s;
  s->busy = false;
  if (s->state != SUB_LOADING) {
    cqrs__sub_run(s); /* the lease went while it loaded */
  } else if (!cancelled && cw->rc == CQRS_OK) {
    cqrs__sub_start_catchup(s, cw->position);
  } else if (!cqrs__runtime_closing(s->ev->rt)) {
    cp_load_failed(s, &cw->err);
  }
  cqrs__free(cw);
}

cqrs_code_t cqrs__sub_queue_checkpoint_load(sub_t *s, cqrs_error_t *err) {
  s->state = SUB_LOADING;
  cp_work_t *cw = cqrs__calloc(1, sizeof *cw);
  if (!cw) return cqrs_error_set(err, CQRS_ENOMEM, "projection %s cannot load its checkpoint", s->name);
  cw->s = s;
  cqrs_error_t e;
  cqrs_code_t rc = cqrs__job_submit(s->ev->rt, &cw->job, cp_work_cb, cp_after_work, &e);
  if (rc) {
    cqrs__free(cw);
    return cqrs_error_set(err, rc, "projection %s cannot queue its checkpoint load: %.180s", s->name, e.message);
  }
  s->busy = true;
  return CQRS_OK;
}

void cqrs__sub_load_checkpoint(sub_t *s) {
  s->state = SUB_LOADING;
  cqrs_error_t err;
  if (!cqrs__checkpoints_blocking(s->cp)) {
    int64_t pos = 0;
    if (cqrs_checkpoints_load(s->cp, s->name, &pos, &err)) {
      cp_load_failed(s, &err);
    } else {
      cqrs__sub_start_catchup(s, pos);
    }
    return;
  }
  if (cqrs__sub_queue_checkpoint_load(s, &err)) cp_load_failed(s, &err);
}

/* ---- under a lease ---- */

static sub_t *sub_of_lease(const cqrs__lease_t *l) { return (sub_t *)((char *)l - offsetof(sub_t, lease)); }

static void lease_acquired(cqrs__lease_t *l) { cqrs__sub_load_checkpoint(sub_of_lease(l)); }

static void lease_lost(cqrs__lease_t *l) {
  sub_t *s = sub_of_lease(l);
  s->state = SUB_STANDBY;
  if (s->waiting) {
    cqrs__timer_stop(&s->timer);
    s->waiting = false;
  }
  s->attempts = 0;
  cqrs__park_drop(s);
  cqrs__sub_run(s);
}

/* Standbys may start only once what they did before has settled. */
static bool lease_may_acquire(const cqrs__lease_t *l) {
  const sub_t *s = sub_of_lease(l);
  return s->state == SUB_STANDBY && !s->busy && !s->q_len && !s->cp_saving;
}

void cqrs__sub_lease(sub_t *s, cqrs__leasing_t *leasing) {
  s->lease.name = s->name;
  s->lease.acquired = lease_acquired;
  s->lease.lost = lease_lost;
  s->lease.may_acquire = lease_may_acquire;
  s->state = SUB_STANDBY;
  cqrs__lease_add(leasing, &s->lease); /* loads its checkpoint once it holds the lease */
}
