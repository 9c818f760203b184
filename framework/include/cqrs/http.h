/* libcqrs-http: an optional HTTP endpoint, GET /metrics, serving the
 * Prometheus text of a cqrs_metrics_t on the application's libuv loop.
 * A separate library (cqrs::http, libmicrohttpd polled by the loop), so the
 * core keeps depending on libuv, libbson and uthash only. */
#ifndef CQRS_HTTP_H
#define CQRS_HTTP_H

#include "cqrs/metrics.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cqrs_http_metrics cqrs_http_metrics_t;

/* Listens on `host` (IPv4; NULL: "127.0.0.1") and `port` (0: any free port)
 * and answers GET and HEAD /metrics with a fresh snapshot of `m` (borrowed),
 * 404 elsewhere, 405 for other methods. Requests are handled on `loop`'s
 * thread, which must be the loop of the dispatcher `m` watches. Errors:
 * CQRS_EINVAL (arguments, address), CQRS_ESTATE (cannot listen: port in use),
 * CQRS_ENOMEM. Like a dispatcher without keep_alive, it does not keep the
 * loop alive by itself. Close it with cqrs_http_metrics_close before that
 * dispatcher. */
CQRS_EXPORT cqrs_code_t cqrs_http_metrics_start(uv_loop_t *loop, const cqrs_metrics_t *m, const char *host,
                                                uint16_t port, cqrs_http_metrics_t **out, cqrs_error_t *err);

/* The port it listens on (the one chosen when started with 0). */
CQRS_EXPORT uint16_t cqrs_http_metrics_port(const cqrs_http_metrics_t *h);

/* Requests answered so far. */
CQRS_EXPORT uint64_t cqrs_http_metrics_requests(const cqrs_http_metrics_t *h);

/* Stops listening, drops open connections, frees everything, then calls `cb`
 * (may be NULL) on the loop thread. A second call is CQRS_ECLOSED. */
CQRS_EXPORT cqrs_code_t cqrs_http_metrics_close(cqrs_http_metrics_t *h, cqrs_close_cb cb, void *data);

#ifdef __cplusplus
}
#endif
#endif
