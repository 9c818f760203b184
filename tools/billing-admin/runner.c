/* The projections the tool knows, and a dispatcher for the write paths: the
 * loop runs on the main thread, the work on a thread of its own that sends
 * commands with cqrs_dispatcher_execute. */
#include <string.h>

#include "admin.h"

static const char *const invoice_colls[] = {"billing_customers", "billing_queries", NULL};
static const char *const balance_colls[] = {"billing_balances", NULL};

const admin_projection_t admin_projections[] = {
    {"billing.invoices", invoice_colls, billing_project_invoices, billing_invoices_types},
    {"billing.balances", balance_colls, billing_project_balances, billing_balances_types},
    {NULL, NULL, NULL, NULL}};

const admin_projection_t *admin_projection_find(const char *name) {
  for (const admin_projection_t *p = admin_projections; p->name; p++) {
    if (!strcmp(p->name, name)) return p;
  }
  return NULL;
}

bool admin_projection_wants(const admin_projection_t *p, const cqrs_event_type_t *t) {
  for (const cqrs_event_type_t *const *x = p->types; *x; x++) {
    if (*x == t) return true;
  }
  return false;
}

typedef struct run {
  admin_t *a;
  cqrs_dispatcher_t *d;
  admin_work_fn work;
  void *data;
  int rc;
  uv_async_t finished;
  uv_thread_t thread;
} run_t;

static void worker(void *arg) {
  run_t *r = arg;
  r->rc = r->work(r->a, r->d, r->data);
  uv_async_send(&r->finished);
}

static void on_finished(uv_async_t *h) {
  run_t *r = h->data;
  uv_thread_join(&r->thread);
  uv_close((uv_handle_t *)h, NULL);
  cqrs_dispatcher_close(r->d, NULL, NULL);
}

int admin_run_dispatcher(admin_t *a, bool projections, admin_work_fn work, void *data) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  int rc = admin_connect(a, &loop);
  if (rc) {
    admin_disconnect(a); /* the dead-letter sink points at this loop */
    uv_loop_close(&loop);
    return rc;
  }
  cqrs_dispatcher_options_t opts;
  cqrs_dispatcher_options_init(&opts);
  opts.keep_alive = true;
  opts.dead_letter_info = cqrs_mongo_dead_letter_info;
  opts.dead_letter_data = a->m;
  opts.retry_base_ms = 100;
  opts.retry_cap_ms = 2000;
  opts.conflict_retries = 50; /* one book per year takes every import of the year */
  cqrs_error_t err;
  run_t r = {.a = a, .work = work, .data = data, .rc = ADMIN_OK};
  billing_t *b = NULL;
  if (cqrs_dispatcher_new(&loop, a->reg, a->store, &opts, &r.d, &err)) {
    rc = admin_cqrs_error("start a dispatcher", &err);
  } else if (projections ? billing_start(r.d, a->rm, a->cp, NULL, &b, &err) : billing_register_handlers(r.d, &err)) {
    rc = admin_cqrs_error("start the billing context", &err);
    cqrs_dispatcher_close(r.d, NULL, NULL);
  } else {
    uv_async_init(&loop, &r.finished, on_finished);
    r.finished.data = &r;
    if (uv_thread_create(&r.thread, worker, &r)) {
      rc = ADMIN_SERVER;
      admin_err("cannot start a thread");
      uv_close((uv_handle_t *)&r.finished, NULL);
      cqrs_dispatcher_close(r.d, NULL, NULL);
    }
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  billing_destroy(b);
  admin_disconnect(a);
  if (uv_loop_close(&loop)) admin_err("the loop did not close cleanly");
  return rc ? rc : r.rc;
}
