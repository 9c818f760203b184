
#include "base/cqrs-uthash.h"
#include "runtime/middleware-private.h"


typedef struct query {
  UT_hash_handle hh;
  cqrs_query_handler_cb fn;
  void *data;
  char name[CQRS_NAME_MAX];
} query_t;

struct cqrs_query_bus {
  const cqrs_readmodel_t *rm;
  query_t *queries;
  cqrs__mw_chain_t mw;
};

cqrs_code_t cqrs_query_bus_new(const cqrs_readmodel_t *rm, cqrs_query_bus_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  if (!rm) return cqrs_error_set(err, CQRS_EINVAL, "NULL read model");
  cqrs_query_bus_t *q = cqrs__calloc(1, sizeof *q);
  if (!q) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate a query bus");
  q->rm = rm;
  *out = q;
  return CQRS_OK;
}

void cqrs_query_bus_destroy(cqrs_query_bus_t *q) {
  if (!q) return;
  query_t *e, *tmp;
  HASH_ITER(hh, q->queries, e, tmp) {
    HASH_DEL(q->queries, e);
    cqrs__free(e);
  }
  cqrs__free(q);
}

cqrs_code_t cqrs_query_bus_register(cqrs_query_bus_t *q, const char *name, cqrs_query_handler_cb fn, void *data,
                                    cqrs_error_t *err) {
  if (!q || !fn) return cqrs_error_set(err, CQRS_EINVAL, "NULL query bus or handler");
  cqrs_code_t rc = cqrs__check_str(name, CQRS_NAME_MAX, "query name", err);
  if (rc) return rc;
  query_t *e;
  HASH_FIND_STR(q->queries, name, e);
  if (e) return cqrs_error_set(err, CQRS_EDUPLICATE, "query '%s' is already registered", name);
  if (!(e = cqrs__calloc(1, sizeof *e))) return cqrs_error_set(err, CQRS_ENOMEM, "cannot register a query");
  memcpy(e->name, name, strlen(name) + 1);
  e->fn = fn;
  e->data = data;
  CQRS_HASH_TRY(HASH_ADD_STR(q->queries, name, e));
  if (CQRS_HASH_FAILED()) {
    cqrs__free(e);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot register a query");
  }
  return CQRS_OK;
}

cqrs_code_t cqrs_query_bus_use(cqrs_query_bus_t *q, const cqrs_middleware_t *mw, void *data, cqrs_error_t *err) {
  if (!q) return cqrs_error_set(err, CQRS_EINVAL, "NULL query bus");
  return cqrs__mw_add(&q->mw, mw, data, err);
}

cqrs_code_t cqrs_query_bus_run(const cqrs_query_bus_t *q, const char *name, const bson_t *params, bson_t *out,
                               cqrs_error_t *err) {
  if (!q || !name || !out) return cqrs_error_set(err, CQRS_EINVAL, "NULL query bus, name or output");
  query_t *e;
  HASH_FIND_STR(q->queries, name, e);
  if (!e) return cqrs_error_set(err, CQRS_ENOT_FOUND, "no query named '%.64s'", name);
  cqrs_error_t local;
  if (!err) err = &local; /* the middleware sees why */
  bson_t empty = BSON_INITIALIZER;
  cqrs_error_clear(err);
  uint64_t started = q->mw.n ? uv_hrtime() : 0;
  cqrs_code_t rc = q->mw.n ? cqrs__mw_query_before(&q->mw, name, params ? params : &empty, err) : CQRS_OK;
  if (rc == CQRS_OK) rc = e->fn(q->rm, params ? params : &empty, out, e->data, err);
  if (rc && err && err->code == CQRS_OK) cqrs_error_set(err, rc, "query %s failed", name);
  if (q->mw.n) cqrs__mw_query_after(&q->mw, name, rc, err, started);
  bson_destroy(&empty);
  return rc;
}

typedef struct query_req {
  uv_work_t work;
  uv_timer_t timer; /* a non-blocking read model: run at the next turn of the loop */
  const cqrs_query_bus_t *q;
  char name[CQRS_NAME_MAX];
  bson_t *params, *answer; /* pointers: a bson_t needs 128-byte alignment */
  cqrs_query_cb cb;
  void *data;
  cqrs_code_t rc;
  cqrs_error_t err;
} query_req_t;

static void query_work(uv_work_t *w) {
  query_req_t *r = w->data;
  r->rc = cqrs_query_bus_run(r->q, r->name, r->params, r->answer, &r->err);
}

static void query_free(query_req_t *r) {
  bson_destroy(r->params);
  bson_destroy(r->answer);
  cqrs__free(r);
}

static void query_after(uv_work_t *w, int status) {
  query_req_t *r = w->data;
  if (status) r->rc = cqrs_error_set(&r->err, CQRS_ECLOSED, "query cancelled");
  r->cb(r->rc, r->answer, &r->err, r->data);
  query_free(r);
}

static void timer_closed(uv_handle_t *h) { query_free(h->data); }

static void query_now(uv_timer_t *t) {
  query_req_t *r = t->data;
  query_work(&r->work);
  r->cb(r->rc, r->answer, &r->err, r->data);
  uv_close((uv_handle_t *)t, timer_closed);
}

cqrs_code_t cqrs_query_bus_send(const cqrs_query_bus_t *q, uv_loop_t *loop, const char *name, const bson_t *params,
                                cqrs_query_cb cb, void *data) {
  if (!q || !loop || !cb) return CQRS_EINVAL;
  if (cqrs__check_str(name, CQRS_NAME_MAX, "query name", NULL)) return CQRS_EINVAL;
  query_req_t *r = cqrs__calloc(1, sizeof *r);
  if (!r) return CQRS_ENOMEM;
  r->q = q;
  memcpy(r->name, name, strlen(name) + 1);
  r->params = params ? bson_copy(params) : bson_new();
  r->answer = bson_new();
  r->cb = cb;
  r->data = data;
  r->work.data = r;
  if (!cqrs_readmodel_blocking(q->rm)) {
    /* Never inside the call: the callback runs later, on the loop thread. */
    uv_timer_init(loop, &r->timer);
    r->timer.data = r;
    uv_timer_start(&r->timer, query_now, 0, 0);
    return CQRS_OK;
  }
  if (uv_queue_work(loop, &r->work, query_work, query_after)) {
    query_free(r);
    return CQRS_ESTATE;
  }
  return CQRS_OK;
}
