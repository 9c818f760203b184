/* What the store says of each projection: its checkpoint against the
 * head, the events of its types past the checkpoint (the commits that hold
 * them, read without their payloads) and the age of the oldest; whether or
 * not a process runs it. status and projections show it. */
#include <string.h>

#include "admin.h"
#include "billing_mongo.h"

#define LAG_READ_MAX 100000 /* commits read past a checkpoint to count what is left; beyond: "at least" */

/* The commits past the checkpoint that hold events of the projection's
 * types, oldest first, read light (positions and time, no payload): a
 * commit is one aggregate's events, all of them of its types or none. */
static int store_lag_one(admin_t *a, const admin_projection_t *p, admin_store_lag_t *l) {
  mongoc_collection_t *c = mongoc_database_get_collection(a->db, billing_mongo_options.events);
  bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, gt, ev, in, sort, proj;
  BSON_APPEND_DOCUMENT_BEGIN(&filter, "position", &gt);
  BSON_APPEND_INT64(&gt, "$gt", l->checkpoint);
  bson_append_document_end(&filter, &gt);
  BSON_APPEND_DOCUMENT_BEGIN(&filter, "events.type", &ev);
  BSON_APPEND_ARRAY_BEGIN(&ev, "$in", &in);
  for (uint32_t i = 0; p->types[i]; i++) {
    char key[16];
    const char *k;
    bson_uint32_to_string(i, &k, key, sizeof key);
    bson_append_utf8(&in, k, -1, p->types[i]->name, -1);
  }
  bson_append_array_end(&ev, &in);
  bson_append_document_end(&filter, &ev);
  BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
  BSON_APPEND_INT32(&sort, "position", 1);
  bson_append_document_end(&opts, &sort);
  BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
  BSON_APPEND_INT32(&proj, "position", 1);
  BSON_APPEND_INT32(&proj, "lastPosition", 1);
  BSON_APPEND_INT32(&proj, "timestamp", 1);
  bson_append_document_end(&opts, &proj);
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, &filter, &opts, NULL);
  const bson_t *doc;
  int64_t commits = 0;
  while (mongoc_cursor_next(cur, &doc)) {
    if (++commits > LAG_READ_MAX) {
      l->at_least = true;
      break;
    }
    int64_t first = admin_int64(doc, "position", 0), last = admin_int64(doc, "lastPosition", first);
    if (!l->behind) l->lag_s = (double)(cqrs_now_ms() - admin_int64(doc, "timestamp", cqrs_now_ms())) / 1000.0;
    l->behind += last >= first ? last - first + 1 : 1;
  }
  bson_error_t e;
  int rc = mongoc_cursor_error(cur, &e) ? admin_server_error("read the event store", &e) : ADMIN_OK;
  mongoc_cursor_destroy(cur);
  bson_destroy(&filter);
  bson_destroy(&opts);
  mongoc_collection_destroy(c);
  if (l->lag_s < 0) l->lag_s = 0; /* clocks apart */
  return rc;
}

int admin_store_lags(admin_t *a, admin_store_lag_t *lags) {
  cqrs_error_t err;
  int64_t head;
  if (cqrs_store_head(a->store, &head, &err)) return admin_cqrs_error("read the head of the store", &err);
  for (size_t i = 0; admin_projections[i].name; i++) {
    admin_store_lag_t *l = &lags[i];
    memset(l, 0, sizeof *l);
    l->name = admin_projections[i].name;
    l->head = head;
    if (cqrs_checkpoints_load(a->cp, l->name, &l->checkpoint, &err)) return admin_cqrs_error("read a checkpoint", &err);
    int rc = l->checkpoint < head ? store_lag_one(a, &admin_projections[i], l) : ADMIN_OK;
    if (rc) return rc;
  }
  return ADMIN_OK;
}
