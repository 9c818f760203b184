#include "http_get.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct body {
  char *p;
  size_t len;
} body_t;

static size_t on_body(char *p, size_t size, size_t n, void *data) {
  body_t *b = data;
  char *q = realloc(b->p, b->len + size * n + 1);
  if (!q) return 0;
  b->p = q;
  memcpy(b->p + b->len, p, size * n);
  b->len += size * n;
  b->p[b->len] = '\0';
  return size * n;
}

char *http_get(const char *url, const char *method, long *status, char *type, size_t type_cap) {
  body_t b = {calloc(1, 1), 0};
  CURL *curl = curl_easy_init();
  if (!curl || !b.p) {
    curl_easy_cleanup(curl);
    free(b.p);
    return NULL;
  }
  curl_easy_setopt(curl, CURLOPT_URL, url);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT, 20L);
  if (method) curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
  if (method && !strcmp(method, "HEAD")) curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
  CURLcode rc = curl_easy_perform(curl);
  if (rc == CURLE_OK) {
    char *t = NULL;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, status);
    curl_easy_getinfo(curl, CURLINFO_CONTENT_TYPE, &t);
    if (type && type_cap) snprintf(type, type_cap, "%s", t ? t : "");
  } else {
    fprintf(stderr, "curl %s: %s\n", url, curl_easy_strerror(rc));
    free(b.p);
    b.p = NULL;
  }
  curl_easy_cleanup(curl);
  return b.p;
}
