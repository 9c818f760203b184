/* --mongo: the billing context on MongoDB. */
#include <mongoc/mongoc.h>
#include <stdio.h>

#include "billing_mongo.h"
#include "sample.h"

int sample_mongo_open(sample_t *s, const char *uri) {
  cqrs_mongo_quiet_logs();
  /* The driver's parse errors can quote the URI, secrets and all. */
  mongoc_uri_t *parsed = mongoc_uri_new_with_error(uri, NULL);
  if (!parsed) {
    fprintf(stderr, "%s: the MongoDB URI is not valid (expected mongodb://[user:password@]host[:port][/database])\n",
            s->name);
    return 2;
  }
  mongoc_uri_destroy(parsed);
  cqrs_mongo_t *m;
  cqrs_error_t err;
  if (cqrs_mongo_new(uri, &billing_mongo_options, s->reg, &s->loop, &m, &err)) {
    fprintf(stderr, "%s: %s\n", s->name, err.message);
    return 2;
  }
  char *shown = billing_mongo_uri_redacted(uri);
  if ((s->reset && billing_mongo_reset(m, &err)) || billing_mongo_indexes(m, &err)) {
    fprintf(stderr, "%s: cannot use MongoDB at %s: %s\n", s->name, shown, err.message);
    bson_free(shown);
    cqrs_mongo_destroy(m);
    return 3;
  }
  s->backend = m;
  if (cqrs_mongo_store_new(m, &s->store, &err) || cqrs_mongo_readmodel_new(m, &s->rm, &err) ||
      cqrs_mongo_checkpoints_new(m, &s->cp, &err) || billing_mongo_keys(m, &s->keys, &err) ||
      cqrs_store_set_keys(s->store, s->keys, s->reg, &err)) {
    fprintf(stderr, "%s: %s\n", s->name, err.message);
    bson_free(shown);
    return 3;
  }
  s->dead_letter_info = cqrs_mongo_dead_letter_info;
  s->dead_letter_data = m;
  printf("%s: MongoDB at %s, database %s\n", s->name, shown, cqrs_mongo_database(m));
  bson_free(shown);
  return 0;
}

void sample_mongo_close(sample_t *s) {
  cqrs_checkpoints_destroy(s->cp);
  cqrs_readmodel_destroy(s->rm);
  cqrs_store_destroy(s->store);
  cqrs_keys_destroy(s->keys);
  cqrs_mongo_destroy(s->backend);
}

int sample_mongo_announce(sample_t *s, const char *uri, const char *endpoint) {
  cqrs_error_t err;
  billing_instance_t *in;
  if (billing_instance_start(&s->loop, uri, "billing", endpoint, &in, &err)) {
    fprintf(stderr, "%s: %s\n", s->name, err.message);
    return 3;
  }
  s->instance = in;
  return 0;
}

void sample_mongo_unannounce(sample_t *s) {
  billing_instance_stop(s->instance);
  s->instance = NULL;
}
