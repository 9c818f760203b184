/* rebuild: a projection's read model built again from the event store into
 * fresh collections while the application runs, then switched over. The
 * state ({_id: projection, suffix, position, phase}) lives in
 * billing_rebuilds, so an interrupted rebuild resumes where its last flush
 * got to. The switch renames the live collection to <name>_old_<suffix>
 * (kept) and the fresh one to <name>, then applies what the application
 * committed meanwhile: writes carry positions, so nothing applies twice. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "memproj.h"

#define STATE "billing_rebuilds"
#define FLUSH_EVERY 20000

static const char usage[] =
    "usage: billing-admin rebuild PROJECTION [--restart] [--json]\n"
    "Rebuilds PROJECTION (billing.invoices: billing_queries and billing_customers; billing.balances:\n"
    "billing_balances) from the event store into fresh collections, with their indexes, while the\n"
    "application keeps running; shows a progress bar with rate and ETA; then switches over: the old\n"
    "collections are kept as <name>_old_<suffix>. Resumable: run it again after an interruption\n"
    "(--restart: start a new build). Exit: 0 switched, 2 usage, 3 server error.\n";

typedef struct rebuild {
  admin_t *a;
  const admin_projection_t *p;
  char suffix[32];
  char names[3][96]; /* target collection per source collection */
  billing_collections_t cols;
  int64_t position; /* every event up to here is applied */
  memproj_t *mp;
  admin_progress_t prog;
  int64_t from, since_flush;
  int rc;
} rebuild_t;

static int save_state(rebuild_t *r, const char *phase) {
  mongoc_collection_t *c = mongoc_database_get_collection(r->a->db, STATE);
  bson_t filter = BSON_INITIALIZER, doc = BSON_INITIALIZER, opts = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "_id", r->p->name);
  BSON_APPEND_UTF8(&doc, "suffix", r->suffix);
  BSON_APPEND_INT64(&doc, "position", r->position);
  BSON_APPEND_UTF8(&doc, "phase", phase);
  BSON_APPEND_DATE_TIME(&doc, "at", cqrs_now_ms());
  BSON_APPEND_BOOL(&opts, "upsert", true);
  bson_error_t e;
  bool ok = mongoc_collection_replace_one(c, &filter, &doc, &opts, NULL, &e);
  bson_destroy(&filter);
  bson_destroy(&doc);
  bson_destroy(&opts);
  mongoc_collection_destroy(c);
  return ok ? ADMIN_OK : admin_server_error("save the rebuild's state", &e);
}

static int load_state(rebuild_t *r, bool restart) {
  mongoc_collection_t *c = mongoc_database_get_collection(r->a->db, STATE);
  bson_t filter = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "_id", r->p->name);
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, &filter, NULL, NULL);
  const bson_t *doc;
  bool resume = false;
  if (mongoc_cursor_next(cur, &doc) && !restart) {
    const char *phase = admin_str(doc, "phase"), *suffix = admin_str(doc, "suffix");
    if (phase && suffix && !strcmp(phase, "building")) {
      snprintf(r->suffix, sizeof r->suffix, "%s", suffix);
      r->position = admin_int64(doc, "position", 0);
      resume = true;
    }
  }
  bson_error_t e;
  int rc = mongoc_cursor_error(cur, &e) ? admin_server_error("read the rebuild's state", &e) : ADMIN_OK;
  mongoc_cursor_destroy(cur);
  bson_destroy(&filter);
  mongoc_collection_destroy(c);
  if (!rc && !resume) {
    snprintf(r->suffix, sizeof r->suffix, "%lld", (long long)cqrs_now_ms());
    r->position = 0;
  }
  if (!rc && resume && !r->a->json) printf("resuming rebuild %s of %s from position %lld\n", r->suffix, r->p->name, (long long)r->position);
  return rc;
}

/* The fresh collections get the live ones' indexes before any document. */
static int copy_indexes(rebuild_t *r, const char *from, const char *to) {
  mongoc_collection_t *src = mongoc_database_get_collection(r->a->db, from);
  mongoc_cursor_t *cur = mongoc_collection_find_indexes_with_opts(src, NULL);
  const bson_t *idx;
  int rc = ADMIN_OK;
  while (!rc && mongoc_cursor_next(cur, &idx)) {
    const char *name = admin_str(idx, "name");
    bson_iter_t it, key;
    if (!name || !strcmp(name, "_id_") || !bson_iter_init_find(&it, idx, "key") || !BSON_ITER_HOLDS_DOCUMENT(&it)) continue;
    uint32_t len;
    const uint8_t *data;
    bson_iter_document(&it, &len, &data);
    bson_t keys;
    bson_init_static(&keys, data, len);
    bool unique = bson_iter_init_find(&key, idx, "unique") && bson_iter_as_bool(&key);
    cqrs_error_t err;
    if (cqrs_mongo_ensure_index(r->a->m, to, &keys, name, unique, &err)) rc = admin_cqrs_error("create an index", &err);
  }
  bson_error_t e;
  /* A collection that does not exist yet has no indexes to copy. */
  if (!rc && mongoc_cursor_error(cur, &e) && e.code != 26) rc = admin_server_error("list indexes", &e);
  mongoc_cursor_destroy(cur);
  mongoc_collection_destroy(src);
  return rc;
}

static bool visit(const cqrs_event_t *e, void *data) {
  rebuild_t *r = data;
  cqrs_error_t err;
  if (memproj_apply(r->mp, e, &err)) {
    r->rc = admin_cqrs_error("project an event", &err);
    return false;
  }
  r->position = e->position;
  if (++r->since_flush >= FLUSH_EVERY) {
    r->since_flush = 0;
    if ((r->rc = memproj_flush(r->mp)) || (r->rc = save_state(r, "building"))) return false;
  }
  admin_progress_update(&r->prog, r->position - r->from);
  return true;
}

/* Applies every event after r->position up to the head, then flushes. */
static int run_to_head(rebuild_t *r, bool progress) {
  int64_t head;
  cqrs_error_t err;
  if (cqrs_store_head(r->a->store, &head, &err)) return admin_cqrs_error("read the head", &err);
  r->from = r->position;
  if (progress) admin_progress_start(&r->prog, r->p->name, head - r->position);
  else admin_progress_start(&r->prog, "", 0), r->prog.tty = false, r->prog.last_decile = 10;
  if (head > r->position && cqrs_store_read_all(r->a->store, r->position + 1, SIZE_MAX, visit, r, &err))
    return admin_cqrs_error("read the event store", &err);
  if (r->rc) return r->rc;
  int rc = memproj_flush(r->mp);
  if (!rc && progress) admin_progress_end(&r->prog);
  return rc;
}

#define NAMESPACE_EXISTS 48
#define SWITCH_ATTEMPTS 8

static int rename_coll(rebuild_t *r, const char *from, const char *to) {
  mongoc_collection_t *c = mongoc_database_get_collection(r->a->db, from);
  bson_error_t e;
  bool ok = mongoc_collection_rename(c, cqrs_mongo_database(r->a->m), to, false, &e);
  mongoc_collection_destroy(c);
  /* A live collection that never existed has nothing to keep. */
  if (!ok && e.code == 26) return ADMIN_OK;
  return ok ? ADMIN_OK : admin_server_error("rename a collection", &e);
}

/* For a test that needs the application's commands to land between the
 * build and the switch: BILLING_ADMIN_HOLD_BEFORE_SWITCH names a pipe, and
 * the switch waits until a byte (or its end) comes through it. Unset: no
 * wait. */
static void hold_before_switch(void) {
  const char *path = getenv("BILLING_ADMIN_HOLD_BEFORE_SWITCH");
  if (!path || !*path) return;
  FILE *f = fopen(path, "r");
  if (!f) return;
  (void)fgetc(f);
  fclose(f);
}

/* The live name exists again: NamespaceExists, or on FerretDB 2 over
 * DocumentDB, when the application made it while the rename ran, the
 * catalog's unique constraint (a duplicate key). */
static bool made_again(const bson_error_t *e) { return e->code == NAMESPACE_EXISTS || e->code == 11000; }

/* The fresh collection takes the live name. The application may have
 * written there since the live collection stepped aside, making it again:
 * what it wrote is of events the catch-up pass applies after the switch, so
 * that collection is dropped and the rename tried again (renameCollection's
 * dropTarget would do it in one step; FerretDB 1.24 does not implement it). */
static int take_name(rebuild_t *r, const char *fresh, const char *live) {
  mongoc_collection_t *c = mongoc_database_get_collection(r->a->db, fresh);
  bson_error_t e;
  bool ok = false;
  for (int i = 0; !ok && i < SWITCH_ATTEMPTS; i++) {
    if ((ok = mongoc_collection_rename(c, cqrs_mongo_database(r->a->m), live, false, &e))) break;
    if (!made_again(&e)) break;
    mongoc_collection_t *made = mongoc_database_get_collection(r->a->db, live);
    bson_error_t de;
    bool dropped = mongoc_collection_drop(made, &de) || de.code == 26;
    mongoc_collection_destroy(made);
    if (!dropped) {
      e = de;
      break;
    }
  }
  mongoc_collection_destroy(c);
  if (ok) return ADMIN_OK;
  if (made_again(&e))
    admin_err("rebuild: the application made %s again %d times while it was switched over; run rebuild again",
              live, SWITCH_ATTEMPTS);
  return admin_server_error("rename a collection", &e);
}

/* The live collections hold every event up to r->position now: a
 * checkpoint behind it (no application ran the projection) moves up to it,
 * so that check does not count those events as still to handle. One ahead
 * (the application's) is left alone. */
static int advance_checkpoint(rebuild_t *r) {
  cqrs_error_t err;
  int64_t at;
  if (cqrs_checkpoint_store_load(r->a->cp, r->p->name, &at, &err)) return admin_cqrs_error("read the checkpoint", &err);
  if (at < r->position && cqrs_checkpoint_store_save(r->a->cp, r->p->name, r->position, &err))
    return admin_cqrs_error("save the checkpoint", &err);
  return ADMIN_OK;
}

int admin_rebuild(admin_t *a, int argc, char **argv) {
  static const char *const specs[] = {"restart", NULL};
  admin_args_t args;
  int rc = admin_parse(a, argc, argv, specs, usage, 1, 1, &args);
  if (rc) return rc < 0 ? ADMIN_OK : rc;
  rebuild_t r;
  memset(&r, 0, sizeof r);
  r.a = a;
  if (!(r.p = admin_projection_find(args.pos[0]))) {
    admin_err("rebuild: unknown projection '%s' (billing.invoices or billing.balances)", args.pos[0]);
    return ADMIN_USAGE;
  }
  if ((rc = admin_connect(a, NULL)) || (rc = load_state(&r, args.vals[0] != NULL))) return rc;
  const char *src[3] = {billing_default_collections.invoices, billing_default_collections.customers,
                        billing_default_collections.balances};
  for (size_t i = 0; i < 3; i++) snprintf(r.names[i], sizeof r.names[i], "%s_rebuild_%s", src[i], r.suffix);
  r.cols = (billing_collections_t){r.names[0], r.names[1], r.names[2]};
  const char *const *mine = r.p->collections;
  for (size_t i = 0; !rc && mine[i]; i++) {
    for (size_t j = 0; j < 3; j++) {
      if (!strcmp(mine[i], src[j])) rc = copy_indexes(&r, src[j], r.names[j]);
    }
  }
  int64_t started = cqrs_now_ms();
  if (!rc && !(r.mp = memproj_new(a, &r.cols, true))) rc = ADMIN_SERVER;
  if (!rc) rc = save_state(&r, "building");
  if (!rc) rc = run_to_head(&r, true);
  if (!rc) rc = save_state(&r, "building");
  if (!rc) hold_before_switch();
  /* The switch: the live collections step aside (kept), the fresh ones
   * take their names, and what was committed meanwhile is applied. */
  char old[3][96];
  for (size_t i = 0; !rc && mine[i]; i++) {
    for (size_t j = 0; !rc && j < 3; j++) {
      if (strcmp(mine[i], src[j])) continue;
      snprintf(old[j], sizeof old[j], "%s_old_%s", src[j], r.suffix);
      if (!(rc = rename_coll(&r, src[j], old[j]))) rc = take_name(&r, r.names[j], src[j]);
    }
  }
  if (!rc) {
    memproj_destroy(r.mp);
    r.mp = memproj_new(a, NULL, true); /* the fresh collections under their own names now */
    rc = r.mp ? run_to_head(&r, false) : ADMIN_SERVER;
  }
  if (!rc) rc = advance_checkpoint(&r);
  if (!rc) rc = save_state(&r, "switched");
  double secs = (double)(cqrs_now_ms() - started) / 1000.0;
  if (!rc && a->json) {
    bson_t out = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&out, "projection", r.p->name);
    BSON_APPEND_UTF8(&out, "suffix", r.suffix);
    BSON_APPEND_INT64(&out, "position", r.position);
    BSON_APPEND_INT64(&out, "documents", memproj_written(r.mp));
    BSON_APPEND_DOUBLE(&out, "seconds", secs);
    admin_print_json(stdout, &out);
    bson_destroy(&out);
  } else if (!rc) {
    printf("%s rebuilt up to position %lld in %.1f s and switched over; the old collections are kept:", r.p->name,
           (long long)r.position, secs);
    for (size_t i = 0; mine[i]; i++) printf(" %s_old_%s", mine[i], r.suffix);
    printf("\n");
  }
  if (!rc) {
    char detail[128];
    snprintf(detail, sizeof detail, "up to #%lld, old collections suffixed _old_%s", (long long)r.position, r.suffix);
    admin_audit(a, "rebuild", r.p->name, detail);
  }
  memproj_destroy(r.mp);
  return rc;
}
