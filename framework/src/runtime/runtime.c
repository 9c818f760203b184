/* The runtime core: components, closing, handles, pool jobs. */
#include "runtime/runtime-private.h"

cqrs_code_t cqrs__runtime_init(cqrs__runtime_t *rt, uv_loop_t *loop, cqrs_clock_t *clock, const cqrs_registry_t *reg,
                               cqrs_store_t *store, cqrs_error_t *err) {
  rt->loop = loop;
  rt->clock = clock ? clock : cqrs_clock_real();
  rt->loop_thread = uv_thread_self();
  rt->reg = reg;
  rt->store = store;
  if (uv_mutex_init(&rt->lock)) return cqrs_error_set(err, CQRS_ENOMEM, "cannot create a mutex");
  return CQRS_OK;
}

void cqrs__runtime_destroy(cqrs__runtime_t *rt) { uv_mutex_destroy(&rt->lock); }

void cqrs__runtime_abandon(cqrs__runtime_t *rt) {
  for (cqrs__component_t *c = rt->components; c; c = c->next) {
    if (c->ops->release) c->ops->release(c);
  }
  cqrs__component_t *c = rt->components;
  while (c) {
    cqrs__component_t *next = c->next;
    c->ops->free(c);
    c = next;
  }
  cqrs__runtime_destroy(rt);
  cqrs__free(rt);
}

void cqrs__runtime_add(cqrs__runtime_t *rt, cqrs__component_t *c, const cqrs__component_ops_t *ops) {
  c->ops = ops;
  c->rt = rt;
  c->next = rt->components;
  rt->components = c;
}

/* pthread's own call: uv_thread_t is a pthread_t, and every send asks. */
bool cqrs__runtime_on_loop(const cqrs__runtime_t *rt) { return pthread_equal(pthread_self(), rt->loop_thread); }

void cqrs__runtime_handle_opened(cqrs__runtime_t *rt) { rt->handles++; }

static void finish(cqrs__runtime_t *rt) {
  cqrs_close_cb cb = rt->close_cb;
  void *data = rt->close_data;
  /* A thread that saw the runtime open may still be leaving a call. */
  while (atomic_load(&rt->senders)) uv_sleep(0);
  uv_mutex_lock(&rt->lock);
  uv_mutex_unlock(&rt->lock);
  cqrs__component_t *c = rt->components;
  while (c) {
    cqrs__component_t *next = c->next;
    c->ops->free(c);
    c = next;
  }
  cqrs__runtime_destroy(rt);
  cqrs__free(rt);
  if (cb) cb(data);
}

static void handle_closed(uv_handle_t *h) {
  cqrs__runtime_t *rt = h->data;
  if (--rt->handles == 0) finish(rt);
}

void cqrs__runtime_close_handle(cqrs__runtime_t *rt, uv_handle_t *h) {
  h->data = rt;
  uv_close(h, handle_closed);
}

void cqrs__runtime_maybe_closed(cqrs__runtime_t *rt) {
  if (!cqrs__runtime_closing(rt) || rt->closing_handles || rt->jobs) return;
  for (cqrs__component_t *c = rt->components; c; c = c->next) {
    if (c->ops->idle && !c->ops->idle(c)) return;
  }
  for (cqrs__component_t *c = rt->components; c; c = c->next) {
    if (c->ops->release && !c->ops->release(c)) return; /* it calls again once released */
  }
  rt->closing_handles = true;
  rt->handles++; /* the close finishes below, not inside a component's loop over its handles */
  for (cqrs__component_t *c = rt->components; c; c = c->next) {
    if (c->ops->close_handles) c->ops->close_handles(c);
  }
  if (--rt->handles == 0) finish(rt);
}

cqrs_code_t cqrs__runtime_close(cqrs__runtime_t *rt, cqrs_close_cb cb, void *data) {
  uv_mutex_lock(&rt->lock);
  bool was = atomic_exchange(&rt->closing, true);
  uv_mutex_unlock(&rt->lock);
  if (was) return CQRS_ECLOSED;
  rt->close_cb = cb;
  rt->close_data = data;
  for (cqrs__component_t *c = rt->components; c; c = c->next) {
    if (c->ops->closing) c->ops->closing(c);
  }
  cqrs__runtime_maybe_closed(rt);
  return CQRS_OK;
}

static void job_work(uv_work_t *w) {
  cqrs__job_t *job = w->data;
  job->work(job);
}

static void job_after(uv_work_t *w, int status) {
  cqrs__job_t *job = w->data;
  cqrs__runtime_t *rt = job->rt;
  rt->jobs--;
  job->done(job, status == UV_ECANCELED);
  if (cqrs__runtime_closing(rt)) cqrs__runtime_maybe_closed(rt);
}

cqrs_code_t cqrs__job_submit(cqrs__runtime_t *rt, cqrs__job_t *job, void (*work)(cqrs__job_t *),
                             void (*done)(cqrs__job_t *, bool), cqrs_error_t *err) {
  job->rt = rt;
  job->work = work;
  job->done = done;
  job->req.data = job;
  int rc = uv_queue_work(rt->loop, &job->req, job_work, job_after);
  if (rc)
    return cqrs_error_set(err, rc == UV_ENOMEM ? CQRS_ENOMEM : CQRS_ESTATE, "cannot queue work on the thread pool: %s",
                          uv_strerror(rc));
  rt->jobs++;
  return CQRS_OK;
}
