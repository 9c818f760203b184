/* dead-letters: what a subscriber failed on for good (billing_dead_letters:
 * {subscriber, event, error, at}): list, replay through the projection, drop. */
#include <string.h>
#include <time.h>

#include "admin.h"

static const char usage[] =
    "usage: billing-admin dead-letters list [--subscriber NAME] [--json]\n"
    "       billing-admin dead-letters replay ID|--all [--subscriber NAME]\n"
    "       billing-admin dead-letters drop ID|--all [--subscriber NAME]\n"
    "list: every dead letter, oldest first: its id, when, the subscriber, the event, the error.\n"
    "replay: applies each event again through its projection (billing.invoices, billing.balances)\n"
    "into the read model, and removes the dead letters that succeed; billing.process letters need\n"
    "the application (restart it from a checkpoint before the event). drop: removes them.\n"
    "Exit: 0, 1 some replays failed or nothing matched, 2 usage, 3 server error.\n";

static int each(admin_t *a, const char *id, const char *subscriber, bool (*fn)(admin_t *, const bson_t *, void *),
                void *data, int64_t *count) {
  *count = 0;
  mongoc_collection_t *c = mongoc_database_get_collection(a->db, "billing_dead_letters");
  bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, sort;
  if (id) {
    bson_oid_t oid;
    if (!bson_oid_is_valid(id, strlen(id))) {
      bson_destroy(&filter);
      bson_destroy(&opts);
      mongoc_collection_destroy(c);
      admin_err("dead-letters: '%s' is not a dead-letter id (24 hex characters)", id);
      return ADMIN_USAGE;
    }
    bson_oid_init_from_string(&oid, id);
    BSON_APPEND_OID(&filter, "_id", &oid);
  }
  if (subscriber) BSON_APPEND_UTF8(&filter, "subscriber", subscriber);
  BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
  BSON_APPEND_INT32(&sort, "at", 1);
  bson_append_document_end(&opts, &sort);
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, &filter, &opts, NULL);
  const bson_t *doc;
  int rc = ADMIN_OK;
  *count = 0;
  while (mongoc_cursor_next(cur, &doc)) {
    (*count)++;
    if (!fn(a, doc, data)) rc = ADMIN_PROBLEMS;
  }
  bson_error_t e;
  if (mongoc_cursor_error(cur, &e)) rc = admin_server_error("read the dead letters", &e);
  mongoc_cursor_destroy(cur);
  bson_destroy(&filter);
  bson_destroy(&opts);
  mongoc_collection_destroy(c);
  return rc;
}

static bool list_one(admin_t *a, const bson_t *doc, void *data) {
  (void)data;
  if (a->json) {
    admin_print_json(stdout, doc);
    return true;
  }
  char id[64];
  admin_doc_id(doc, id, sizeof id);
  time_t secs = (time_t)(admin_int64(doc, "at", 0) / 1000);
  struct tm tm;
  char when[32];
  gmtime_r(&secs, &tm);
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  const char *sub = admin_str(doc, "subscriber"), *type = admin_str(doc, "event.type");
  const char *agg = admin_str(doc, "event.aggregateType"), *aid = admin_str(doc, "event.aggregateId");
  const char *msg = admin_str(doc, "error.message"), *code = admin_str(doc, "error.code");
  printf("%s %s %s %s %s/%s v%lld position %lld: %s: %s\n", id, when, sub ? sub : "?", type ? type : "?",
         agg ? agg : "?", aid ? aid : "?", (long long)admin_int64(doc, "event.version", 0),
         (long long)admin_int64(doc, "event.position", 0), code ? code : "?", msg ? msg : "?");
  return true;
}

static bool remove_one(admin_t *a, const bson_t *doc) {
  mongoc_collection_t *c = mongoc_database_get_collection(a->db, "billing_dead_letters");
  bson_t filter = BSON_INITIALIZER;
  bson_iter_t it;
  if (bson_iter_init_find(&it, doc, "_id")) bson_append_iter(&filter, "_id", 3, &it);
  bson_error_t e;
  bool ok = mongoc_collection_delete_one(c, &filter, NULL, NULL, &e);
  if (!ok) admin_server_error("remove a dead letter", &e);
  bson_destroy(&filter);
  mongoc_collection_destroy(c);
  return ok;
}

static bool drop_one(admin_t *a, const bson_t *doc, void *data) {
  (void)data;
  char id[64];
  admin_doc_id(doc, id, sizeof id);
  if (!remove_one(a, doc)) return false;
  if (!a->json) printf("dropped %s\n", id);
  return true;
}

static bool take_event(const cqrs_event_t *e, void *data) {
  *(const cqrs_event_t **)data = cqrs_event_ref(e);
  return false;
}

/* A dead letter keeps the event with its personal fields redacted
 * (cqrs_event_to_bson): the store's own copy, opened with the key store,
 * is the one to replay (unless its subject was forgotten since: then it
 * reads as the placeholder, as it should). */
static cqrs_event_t *stored_copy(admin_t *a, cqrs_event_t *e) {
  const cqrs_event_t *stored = NULL;
  if (e->position < 1 || cqrs_store_read_all(a->store, e->position, 1, take_event, &stored, NULL) || !stored) return e;
  if (strcmp(stored->id, e->id)) {
    cqrs_event_unref(stored);
    return e;
  }
  cqrs_event_unref(e);
  return (cqrs_event_t *)(uintptr_t)stored;
}

static bool replay_one(admin_t *a, const bson_t *doc, void *data) {
  billing_t *proj = data;
  char id[64];
  admin_doc_id(doc, id, sizeof id);
  const char *sub = admin_str(doc, "subscriber");
  const admin_projection_t *p = sub ? admin_projection_find(sub) : NULL;
  if (!p) {
    printf("not replayed %s: subscriber %s is not a projection this tool runs\n", id, sub ? sub : "?");
    return false;
  }
  bson_iter_t it;
  if (!bson_iter_init_find(&it, doc, "event") || !BSON_ITER_HOLDS_DOCUMENT(&it)) {
    printf("not replayed %s: no event in the dead letter\n", id);
    return false;
  }
  uint32_t len;
  const uint8_t *d;
  bson_iter_document(&it, &len, &d);
  bson_t ev;
  bson_init_static(&ev, d, len);
  cqrs_event_t *e;
  cqrs_error_t err;
  if (cqrs_event_from_bson(a->reg, &ev, &e, &err)) {
    printf("not replayed %s: %s\n", id, err.message);
    return false;
  }
  e = stored_copy(a, e);
  cqrs_code_t rc = p->handler(e, proj, &err);
  cqrs_event_unref(e);
  if (rc) {
    printf("not replayed %s: %s\n", id, err.message);
    return false;
  }
  if (!remove_one(a, doc)) return false;
  printf("replayed %s\n", id);
  return true;
}

int admin_dead_letters(admin_t *a, int argc, char **argv) {
  static const char *const specs[] = {"subscriber=", "all", NULL};
  admin_args_t args;
  int rc = admin_parse(a, argc, argv, specs, usage, 1, 2, &args);
  if (rc) return rc < 0 ? ADMIN_OK : rc;
  const char *verb = args.pos[0], *id = args.npos > 1 ? args.pos[1] : NULL;
  bool list = !strcmp(verb, "list");
  if (!list && strcmp(verb, "replay") && strcmp(verb, "drop")) {
    admin_err("dead-letters: expected list, replay or drop (see dead-letters --help)");
    return ADMIN_USAGE;
  }
  if (!list && !id == !args.vals[1]) {
    admin_err("dead-letters %s: give one ID or --all", verb);
    return ADMIN_USAGE;
  }
  if ((rc = admin_connect(a, NULL))) return rc;
  int64_t count = 0;
  if (list) {
    rc = each(a, id, args.vals[0], list_one, NULL, &count);
    if (!rc && !a->json) printf("%lld dead letters\n", (long long)count);
    return rc;
  }
  billing_t *proj = billing_projector_new(a->rm, NULL);
  if (!proj) return ADMIN_SERVER;
  rc = each(a, id, args.vals[0], verb[0] == 'r' ? replay_one : drop_one, proj, &count);
  billing_destroy(proj);
  if (count) {
    char detail[64];
    snprintf(detail, sizeof detail, "%lld dead letter(s)%s", (long long)count, rc ? ", not all of them" : "");
    admin_audit(a, verb[0] == 'r' ? "dead-letters.replay" : "dead-letters.drop", id ? id : "all", detail);
  }
  if (!rc && !count) {
    printf("no dead letters matched\n");
    rc = ADMIN_PROBLEMS;
  }
  return rc;
}
