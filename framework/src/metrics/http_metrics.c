/* GET /metrics on libmicrohttpd, driven by the application's libuv loop:
 * the daemon runs without a thread of its own (MHD_USE_EPOLL), one uv_poll
 * watches its epoll descriptor and a uv_timer its idle timeouts; each wake-up
 * calls MHD_run, which never blocks. So every request is answered on the loop
 * thread, where a snapshot of the dispatcher may be taken.
 *
 * GET /healthz answers 200 while the loop does; GET /readyz 200 while the
 * projections are caught up within a second and the store answers, 503
 * with the reason otherwise (for load balancers and orchestrators).
 *
 * Slow clients: MHD's connection timeout is an idle one, which a client
 * trickling a byte now and then never reaches, so 64 of them would hold
 * every slot. Each connection here has REQUEST_DEADLINE_MS from its accept
 * (or its last answer) to deliver a request, and when every slot is taken
 * the oldest connection waiting for one is let go: both by shutting its
 * socket down, after which MHD sees the end of it and closes it. And when
 * MHD stopped listening at the limit, it listens again at the start of its
 * next run: after a run that closed connections, it runs once more. */
#include <errno.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "cqrs/http.h"

#define CONNECTION_LIMIT 64
#define CONNECTION_TIMEOUT_S 10
#define REQUEST_DEADLINE_MS 5000
#define REAP_EVERY_MS 250
#define READY_LAG_S 1.0 /* the seed's sync-lag target */

/* A connection, in the order they started waiting for a request. */
typedef struct conn {
  struct conn *prev, *next;
  MHD_socket fd;
  uint64_t since; /* loop time (ms) of its accept or its last answer */
  bool cut;       /* shut down: MHD closes it next */
} conn_t;

struct cqrs_http_metrics {
  uv_loop_t *loop;
  const cqrs_metrics_t *m;
  struct MHD_Daemon *daemon;
  uv_poll_t poll;
  uv_timer_t timer;
  uv_timer_t reaper;
  conn_t *oldest, *newest;
  unsigned connections;
  uint64_t closed; /* connections closed so far */
  double ready_calls, ready_failed; /* store calls and transient failures at the last /readyz */
  int handles_open;
  bool closing;
  uint16_t port;
  uint64_t requests;
  cqrs_close_cb close_cb;
  void *close_data;
};

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type, const char *body,
                             size_t len, const char *allow) {
  struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
  if (!r) return MHD_NO;
  enum MHD_Result ok = MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
  if (ok == MHD_YES && allow) ok = MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
  if (ok == MHD_YES) ok = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return ok;
}

static const char text_plain[] = "text/plain; charset=utf-8";

/* /readyz: ready while every subscriber's oldest unhandled event is at most
 * READY_LAG_S old (the seed's sync-lag target), and the event store is
 * answering: not every store call since the previous /readyz failed for a
 * transient reason (server unavailable, time-out). */
static enum MHD_Result readiness(cqrs_http_metrics_t *h, struct MHD_Connection *c) {
  cqrs_metrics_snapshot_t *s;
  cqrs_error_t err;
  char msg[CQRS_NAME_MAX + 160];
  if (cqrs_metrics_snapshot(h->m, &s, &err)) {
    int n = snprintf(msg, sizeof msg, "not ready: %s\n", err.message);
    return reply(c, MHD_HTTP_SERVICE_UNAVAILABLE, text_plain, msg, n > 0 ? (size_t)n : 0, NULL);
  }
  const cqrs_metric_t *worst = NULL;
  for (size_t i = 0; i < cqrs_metrics_snapshot_count(s); i++) {
    const cqrs_metric_t *m = cqrs_metrics_snapshot_get(s, i);
    if (!strcmp(m->name, "cqrs_projection_lag_seconds") && (!worst || m->value > worst->value)) worst = m;
  }
  double calls = cqrs_metrics_snapshot_value(s, "cqrs_store_calls_total", NULL);
  double failed = cqrs_metrics_snapshot_value(s, "cqrs_store_errors_total", "class", "transient", NULL);
  bool store_down = failed > h->ready_failed && calls - h->ready_calls <= failed - h->ready_failed;
  h->ready_calls = calls;
  h->ready_failed = failed;
  int n;
  if (worst && worst->value > READY_LAG_S)
    n = snprintf(msg, sizeof msg, "not ready: %s lags %.3f s (more than %.0f s)\n", worst->label_values[0],
                 worst->value, READY_LAG_S);
  else if (store_down)
    n = snprintf(msg, sizeof msg, "not ready: every event store call since the last check failed\n");
  else
    n = snprintf(msg, sizeof msg, "ready\n");
  cqrs_metrics_snapshot_destroy(s);
  bool ready = !strcmp(msg, "ready\n");
  return reply(c, ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, text_plain, msg, n > 0 ? (size_t)n : 0, NULL);
}

static enum MHD_Result answer(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *upload, size_t *upload_size, void **con_cls) {
  (void)version, (void)upload, (void)con_cls;
  cqrs_http_metrics_t *h = cls;
  h->requests++;
  *upload_size = 0; /* a body is read and ignored */
  bool get = !strcmp(method, MHD_HTTP_METHOD_GET), head = !strcmp(method, MHD_HTTP_METHOD_HEAD);
  bool metrics = !strcmp(url, "/metrics"), healthz = !strcmp(url, "/healthz"), readyz = !strcmp(url, "/readyz");
  if (!metrics && !healthz && !readyz)
    return reply(c, MHD_HTTP_NOT_FOUND, text_plain, "not found: try /metrics, /healthz or /readyz\n", 45, NULL);
  if (!get && !head)
    return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, text_plain, "method not allowed\n", 19, "GET, HEAD");
  if (healthz) return reply(c, MHD_HTTP_OK, text_plain, "ok\n", 3, NULL); /* the loop answers: alive */
  if (readyz) return readiness(h, c);
  cqrs_metrics_snapshot_t *s;
  char *text = NULL;
  size_t len = 0;
  cqrs_error_t err;
  if (cqrs_metrics_snapshot(h->m, &s, &err) == CQRS_OK) {
    cqrs_metrics_render(s, &text, &len, &err);
    cqrs_metrics_snapshot_destroy(s);
  }
  if (!text) {
    char msg[CQRS_MESSAGE_MAX + 2];
    int n = snprintf(msg, sizeof msg, "%s\n", err.message);
    return reply(c, MHD_HTTP_INTERNAL_SERVER_ERROR, text_plain, msg, n > 0 ? (size_t)n : 0, NULL);
  }
  enum MHD_Result ok = reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, len, NULL);
  cqrs_metrics_text_free(text);
  return ok;
}

/* ---- connections and their deadlines ---- */

static void conn_unlink(cqrs_http_metrics_t *h, conn_t *c) {
  if (c->prev) c->prev->next = c->next; else h->oldest = c->next;
  if (c->next) c->next->prev = c->prev; else h->newest = c->prev;
  c->prev = c->next = NULL;
}

static void conn_append(cqrs_http_metrics_t *h, conn_t *c) {
  c->prev = h->newest;
  c->next = NULL;
  if (h->newest) h->newest->next = c; else h->oldest = c;
  h->newest = c;
}

/* Lets a connection go: its reads end, and MHD closes it. */
static void conn_cut(conn_t *c) {
  if (c->cut) return;
  c->cut = true;
  shutdown(c->fd, SHUT_RDWR);
}

static void reap_cb(uv_timer_t *t);

static void on_connection(void *cls, struct MHD_Connection *mc, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
  cqrs_http_metrics_t *h = cls;
  conn_t *c = *socket_context;
  if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
    if (!c) return;
    conn_unlink(h, c);
    free(c);
    *socket_context = NULL;
    h->connections--;
    h->closed++;
    if (!h->connections && !h->closing) uv_timer_stop(&h->reaper);
    return;
  }
  const union MHD_ConnectionInfo *fd = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
  if (!fd || !(c = calloc(1, sizeof *c))) {
    if (fd) shutdown(fd->connect_fd, SHUT_RDWR); /* not tracked: not kept */
    return;
  }
  c->fd = fd->connect_fd;
  c->since = uv_now(h->loop);
  *socket_context = c;
  conn_append(h, c);
  /* Every slot taken: the one waiting longest gives way to the next. */
  if (++h->connections >= CONNECTION_LIMIT) {
    for (conn_t *o = h->oldest; o; o = o->next) {
      if (!o->cut) {
        conn_cut(o);
        break;
      }
    }
  }
  if (!uv_is_active((uv_handle_t *)&h->reaper)) uv_timer_start(&h->reaper, reap_cb, REAP_EVERY_MS, REAP_EVERY_MS);
}

/* An answer went out: the connection may wait for its next request anew. */
static void on_completed(void *cls, struct MHD_Connection *mc, void **con_cls, enum MHD_RequestTerminationCode code) {
  (void)con_cls, (void)code;
  cqrs_http_metrics_t *h = cls;
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  conn_t *c = ci ? ci->socket_context : NULL;
  if (!c || c->cut) return;
  conn_unlink(h, c);
  c->since = uv_now(h->loop);
  conn_append(h, c);
}

static void drive(cqrs_http_metrics_t *h);

static void reap_cb(uv_timer_t *t) {
  cqrs_http_metrics_t *h = t->data;
  uint64_t now = uv_now(h->loop);
  bool cut = false;
  for (conn_t *c = h->oldest; c && now - c->since >= REQUEST_DEADLINE_MS; c = c->next) {
    cut |= !c->cut;
    conn_cut(c);
  }
  if (cut) drive(h);
}

static void timer_cb(uv_timer_t *t);

/* Lets the daemon do what it can, then sleeps until its next timeout. */
static void drive(cqrs_http_metrics_t *h) {
  if (h->closing) return;
  /* A run that closed connections may have left MHD below its limit and
   * not listening: the next run listens again (and accepts who waits). */
  for (int runs = 0; runs < 4; runs++) {
    uint64_t closed = h->closed;
    MHD_run(h->daemon);
    if (h->closed == closed) break;
  }
  MHD_UNSIGNED_LONG_LONG ms;
  if (MHD_get_timeout(h->daemon, &ms) == MHD_YES) {
    uv_timer_start(&h->timer, timer_cb, (uint64_t)ms, 0);
  } else {
    uv_timer_stop(&h->timer);
  }
}

static void timer_cb(uv_timer_t *t) { drive(t->data); }

static void poll_cb(uv_poll_t *p, int status, int events) {
  (void)status, (void)events; /* an error on the descriptor is MHD's to see */
  drive(p->data);
}

cqrs_code_t cqrs_http_metrics_start(uv_loop_t *loop, const cqrs_metrics_t *m, const char *host, uint16_t port,
                                    cqrs_http_metrics_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  if (!loop || !m) return cqrs_error_set(err, CQRS_EINVAL, "NULL loop or metrics");
  if (!host) host = "127.0.0.1";
  struct sockaddr_in addr;
  if (uv_ip4_addr(host, port, &addr))
    return cqrs_error_set(err, CQRS_EINVAL, "'%.64s' is not an IPv4 address", host);
  cqrs_http_metrics_t *h = calloc(1, sizeof *h);
  if (!h) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate the endpoint");
  h->loop = loop;
  h->m = m;
  h->daemon = MHD_start_daemon(MHD_USE_EPOLL, port, NULL, NULL, answer, h, MHD_OPTION_SOCK_ADDR,
                               (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_LIMIT, (unsigned)CONNECTION_LIMIT,
                               MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)CONNECTION_TIMEOUT_S,
                               MHD_OPTION_NOTIFY_CONNECTION, on_connection, h, MHD_OPTION_NOTIFY_COMPLETED,
                               on_completed, h, MHD_OPTION_END);
  if (!h->daemon) {
    int e = errno;
    free(h);
    return cqrs_error_set(err, CQRS_ESTATE, "cannot serve /metrics on %s:%u: %s", host, (unsigned)port,
                          e ? strerror(e) : "libmicrohttpd refused");
  }
  const union MHD_DaemonInfo *fd = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_EPOLL_FD);
  const union MHD_DaemonInfo *bound = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
  h->port = bound ? bound->port : port;
  if (!fd || uv_poll_init(loop, &h->poll, fd->epoll_fd)) {
    MHD_stop_daemon(h->daemon);
    free(h);
    return cqrs_error_set(err, CQRS_ESTATE, "cannot watch the endpoint's descriptor on the loop");
  }
  h->poll.data = h;
  uv_timer_init(loop, &h->timer);
  h->timer.data = h;
  uv_timer_init(loop, &h->reaper);
  h->reaper.data = h;
  h->handles_open = 3;
  uv_poll_start(&h->poll, UV_READABLE, poll_cb);
  uv_unref((uv_handle_t *)&h->poll);
  uv_unref((uv_handle_t *)&h->timer);
  uv_unref((uv_handle_t *)&h->reaper);
  *out = h;
  return CQRS_OK;
}

uint16_t cqrs_http_metrics_port(const cqrs_http_metrics_t *h) { return h ? h->port : 0; }
uint64_t cqrs_http_metrics_requests(const cqrs_http_metrics_t *h) { return h ? h->requests : 0; }

/* The daemon closes its descriptors once the loop has let go of them. */
static void handle_closed(uv_handle_t *hd) {
  cqrs_http_metrics_t *h = hd->data;
  if (--h->handles_open) return;
  MHD_stop_daemon(h->daemon);
  cqrs_close_cb cb = h->close_cb;
  void *data = h->close_data;
  free(h);
  if (cb) cb(data);
}

cqrs_code_t cqrs_http_metrics_close(cqrs_http_metrics_t *h, cqrs_close_cb cb, void *data) {
  if (!h) return CQRS_EINVAL;
  if (h->closing) return CQRS_ECLOSED;
  h->closing = true;
  h->close_cb = cb;
  h->close_data = data;
  uv_close((uv_handle_t *)&h->poll, handle_closed);
  uv_close((uv_handle_t *)&h->timer, handle_closed);
  uv_close((uv_handle_t *)&h->reaper, handle_closed);
  return CQRS_OK;
}
