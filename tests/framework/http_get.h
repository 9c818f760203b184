/* One HTTP request with libcurl, for the tests of the /metrics endpoint. */
#ifndef TEST_HTTP_GET_H
#define TEST_HTTP_GET_H

#include <stddef.h>

/* Requests `url` with `method` (NULL: GET). Returns the body (free it; ""
 * when empty) and fills `status` and `type` (Content-Type), or returns NULL
 * after printing curl's error. */
char *http_get(const char *url, const char *method, long *status, char *type, size_t type_cap);

#endif
