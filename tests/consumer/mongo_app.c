/* Links cqrs::mongo: parses a URI and, when MONGODB_URI names a server,
 * creates the indexes there, in a database of its own. */
#include <cqrs/mongo.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
  const char *env = getenv("MONGODB_URI");
  const char *uri = env && *env ? env : "mongodb://127.0.0.1:1/consumer";
  cqrs_registry_t *reg = NULL;
  cqrs_registry_new(&reg, NULL);
  const cqrs_mongo_options_t opts = {.database = "cqrs_consumer"};
  cqrs_mongo_t *m = NULL;
  cqrs_error_t err = {0};
  int rc = 1;
  if (reg && cqrs_mongo_new(uri, &opts, reg, NULL, &m, &err) == CQRS_OK &&
      (!env || !*env || cqrs_mongo_ensure_indexes(m, &err) == CQRS_OK)) {
    printf("ok: database %s\n", cqrs_mongo_database(m));
    rc = 0;
  } else {
    fprintf(stderr, "mongo_app: %s\n", err.message);
  }
  cqrs_mongo_destroy(m);
  cqrs_registry_destroy(reg);
  return rc;
}
