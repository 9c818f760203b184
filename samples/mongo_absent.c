/* Built when libcqrs-mongo is not: --mongo explains itself. */
#include <stdio.h>

#include "sample.h"

int sample_mongo_open(sample_t *s, const char *uri) {
  (void)uri;
  fprintf(stderr, "%s: this build has no MongoDB support (configure with -DCQRS_MONGO=ON and libmongoc)\n", s->name);
  return 2;
}

void sample_mongo_close(sample_t *s) { (void)s; }

int sample_mongo_announce(sample_t *s, const char *uri, const char *endpoint) {
  (void)s, (void)uri, (void)endpoint;
  return 2; /* unreachable: --mongo fails first */
}

void sample_mongo_unannounce(sample_t *s) { (void)s; }
