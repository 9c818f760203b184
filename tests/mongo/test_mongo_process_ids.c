/* The process managers' id scenarios (tests/process_ids.c) on MongoDB, each
 * on a database of its own. */
#include "mongo_fixture.h"
#include "process_ids.h"

typedef struct opened {
  cqrs_mongo_t *m;
  cqrs_store_t *s;
} opened_t;

static opened_t current;

static cqrs_store_t *create(const cqrs_registry_t *reg, void *data) {
  (void)data;
  current.m = test_mongo_open(reg, NULL, NULL);
  cqrs_error_t err;
  if (cqrs_mongo_store_new(current.m, &current.s, &err)) fail_msg("%s", err.message);
  return current.s;
}

static void dispose(cqrs_store_t *s, void *data) {
  (void)data;
  cqrs_store_destroy(s);
  test_mongo_close(current.m);
  current.m = NULL;
}

int main(void) {
  if (!test_mongo_uri()) return 0;
  cqrs_store_factory_t f = {.name = "process ids (MongoDB store)", .create = create, .dispose = dispose};
  return process_ids_run(&f);
}
