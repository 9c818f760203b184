/* check: the seed's consistency check, write side against read side. The
 * event store is streamed through the billing projections into an
 * in-memory read model — the documents the events imply — which is then
 * compared with billing_queries, billing_customers and billing_balances
 * document by document (a cursor each).
 *
 * Each projection is compared as far as its checkpoint, and must have
 * caught up with the head of the store: events it wants past its
 * checkpoint are counted, and once the check is done (and after --wait
 * seconds for a running application) any left make it fail. A document
 * written past the checkpoint but not past the head is the application
 * moving on during the check (skipped, counted); one past the head was
 * written by no event: corruption ("ahead"), reported and repaired. */
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#include "admin.h"

static const char usage[] =
    "usage: billing-admin check [--invoice ID] [--repair] [--show N] [--wait SECONDS] [--json]\n"
    "Rebuilds the read documents the event store implies and compares them with billing_queries,\n"
    "billing_customers and billing_balances: missing, extra, different documents (with the differing\n"
    "fields) and documents ahead of the store (a _position past its head, which no event wrote), and\n"
    "the consistency percentage. Each projection must have caught up with the head: how far behind\n"
    "its checkpoint is, in events it has to handle, is shown, and any left after SECONDS (default 5,\n"
    "for a running application to get there) fail the check. --invoice checks one invoice and its\n"
    "customer. --repair rewrites what differs (missing, different and ahead documents written as\n"
    "implied, extra ones deleted; each write only over the very document compared) and counts what it\n"
    "did. --show N prints at most N differences (default 100; all with --json). An empty event store\n"
    "is refused unless --allow-empty.\n"
    "Exit: 0 consistent and caught up, 1 differences found (also when --repair fixed them) or a\n"
    "projection behind, 3 server error or no data.\n";

#define NPROJ 2
#define NCOLL 3

typedef struct seen {
  UT_hash_handle hh;
  char id[];
} seen_t;

typedef struct coll_report {
  const char *name;
  int64_t limit; /* positions compared up to here */
  int64_t consistent, different, extra, ahead, missing; /* each document counts in one */
  int64_t skipped, repaired, unrepaired;
} coll_report_t;

static int64_t documents(const coll_report_t *r) {
  return r->consistent + r->different + r->extra + r->ahead + r->missing;
}

/* A projection: its checkpoint, and the positions of the events it wants
 * past it (up to the head), which it still has to handle. */
typedef struct proj_state {
  int64_t checkpoint, limit, checkpoint_now, behind;
  int64_t *pending;
  size_t npending, cap;
} proj_state_t;

typedef struct checker {
  admin_t *a;
  cqrs_readmodel_t *mem;
  billing_t *proj;
  bool repair;
  long long show, shown, wait_s;
  const char *only_id[NCOLL]; /* --invoice: the ids to compare per collection, NULL: all */
  int64_t head, head_now;     /* at the start; re-read when a document claims more */
  proj_state_t ps[NPROJ];
  int64_t events;
  admin_progress_t prog;
  cqrs_code_t rc;
  cqrs_error_t err;
  bson_t list; /* differences, for --json */
  uint32_t nlist;
} checker_t;

static bool note_pending(proj_state_t *ps, int64_t position) {
  if (ps->npending == ps->cap) {
    size_t cap = ps->cap ? 2 * ps->cap : 256;
    int64_t *p = realloc(ps->pending, cap * sizeof *p);
    if (!p) return false;
    ps->pending = p;
    ps->cap = cap;
  }
  ps->pending[ps->npending++] = position;
  return true;
}

static bool apply_event(const cqrs_event_t *e, void *data) {
  checker_t *k = data;
  if (e->position > k->head) return true; /* committed during the check: the next one's */
  k->events++;
  if (!k->only_id[0] && k->events % 1000 == 0) admin_progress_update(&k->prog, k->events);
  for (size_t i = 0; i < NPROJ; i++) {
    const admin_projection_t *p = &admin_projections[i];
    proj_state_t *ps = &k->ps[i];
    if (!admin_projection_wants(p, e->type)) continue;
    if (e->position > ps->checkpoint && !note_pending(ps, e->position)) {
      k->rc = cqrs_error_set(&k->err, CQRS_ENOMEM, "out of memory");
      return false;
    }
    if (e->position > ps->limit) continue;
    cqrs_code_t rc = p->handler(e, k->proj, &k->err);
    if (rc && rc != CQRS_ENOT_FOUND) { /* the live projection dead-letters those too */
      k->rc = rc;
      return false;
    }
  }
  return true;
}

/* ---- comparing two documents ---- */

static bool same_value(const bson_iter_t *x, const bson_iter_t *y) {
  if (BSON_ITER_HOLDS_NUMBER(x) && BSON_ITER_HOLDS_NUMBER(y)) {
    if (BSON_ITER_HOLDS_DOUBLE(x) || BSON_ITER_HOLDS_DOUBLE(y))
      return bson_iter_as_double(x) == bson_iter_as_double(y);
    return bson_iter_as_int64(x) == bson_iter_as_int64(y);
  }
  if (bson_iter_type(x) != bson_iter_type(y)) return false;
  switch (bson_iter_type(x)) {
  case BSON_TYPE_UTF8: {
    uint32_t lx, ly;
    const char *sx = bson_iter_utf8(x, &lx), *sy = bson_iter_utf8(y, &ly);
    return lx == ly && !memcmp(sx, sy, lx);
  }
  case BSON_TYPE_DATE_TIME: return bson_iter_date_time(x) == bson_iter_date_time(y);
  case BSON_TYPE_BOOL: return bson_iter_bool(x) == bson_iter_bool(y);
  case BSON_TYPE_NULL: return true;
  default: {
    bson_t a = BSON_INITIALIZER, b = BSON_INITIALIZER;
    bson_append_iter(&a, "v", 1, x);
    bson_append_iter(&b, "v", 1, y);
    bool same = bson_equal(&a, &b);
    bson_destroy(&a);
    bson_destroy(&b);
    return same;
  }
  }
}

static void add_field(bson_t *fields, uint32_t *n, const char *path, const bson_iter_t *want, const bson_iter_t *got) {
  char key[16], w[160], g[160];
  const char *k;
  bson_uint32_to_string((*n)++, &k, key, sizeof key);
  bson_t f;
  bson_append_document_begin(fields, k, -1, &f);
  BSON_APPEND_UTF8(&f, "field", path);
  if (want) admin_value_text(want, w, sizeof w); else snprintf(w, sizeof w, "(absent)");
  if (got) admin_value_text(got, g, sizeof g); else snprintf(g, sizeof g, "(absent)");
  BSON_APPEND_UTF8(&f, "expected", w);
  BSON_APPEND_UTF8(&f, "found", g);
  bson_append_document_end(fields, &f);
}

/* Appends {field, expected, found} for each dotted path where they differ. */
static void diff_docs(const bson_t *want, const bson_t *got, const char *prefix, bson_t *fields, uint32_t *n) {
  bson_iter_t w, g;
  char path[256];
  if (bson_iter_init(&w, want)) {
    while (bson_iter_next(&w)) {
      const char *key = bson_iter_key(&w);
      if (!*prefix && !strcmp(key, "_id")) continue;
      snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", key);
      if (!bson_iter_init_find(&g, got, key)) {
        add_field(fields, n, path, &w, NULL);
      } else if (BSON_ITER_HOLDS_DOCUMENT(&w) && BSON_ITER_HOLDS_DOCUMENT(&g)) {
        bson_t sw, sg;
        uint32_t lw, lg;
        const uint8_t *dw, *dg;
        bson_iter_document(&w, &lw, &dw);
        bson_iter_document(&g, &lg, &dg);
        if (bson_init_static(&sw, dw, lw) && bson_init_static(&sg, dg, lg)) diff_docs(&sw, &sg, path, fields, n);
      } else if (!same_value(&w, &g)) {
        add_field(fields, n, path, &w, &g);
      }
    }
  }
  if (bson_iter_init(&g, got)) {
    while (bson_iter_next(&g)) {
      const char *key = bson_iter_key(&g);
      if (bson_iter_init_find(&w, want, key)) continue;
      snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", key);
      add_field(fields, n, path, NULL, &g);
    }
  }
}

/* ---- reporting and repairing ---- */

static void report(checker_t *k, const char *what, const char *coll, const char *id, const bson_t *fields,
                   const char *note) {
  bson_t item;
  char key[16];
  const char *kk;
  bson_uint32_to_string(k->nlist++, &kk, key, sizeof key);
  bson_append_document_begin(&k->list, kk, -1, &item);
  BSON_APPEND_UTF8(&item, "kind", what);
  BSON_APPEND_UTF8(&item, "collection", coll);
  BSON_APPEND_UTF8(&item, "id", id);
  if (note) BSON_APPEND_UTF8(&item, "note", note);
  if (fields) BSON_APPEND_ARRAY(&item, "fields", fields);
  bson_append_document_end(&k->list, &item);
  if (k->a->json || k->shown >= k->show) return;
  k->shown++;
  printf("%-9s %s %s%s%s", what, coll, id, note ? " " : "", note ? note : "");
  bson_iter_t it;
  if (fields && bson_iter_init(&it, fields)) {
    const char *sep = ": ";
    while (bson_iter_next(&it)) {
      bson_t f;
      uint32_t len;
      const uint8_t *data;
      bson_iter_document(&it, &len, &data);
      if (!bson_init_static(&f, data, len)) continue;
      printf("%s%s %s, found %s", sep, admin_str(&f, "field"), admin_str(&f, "expected"), admin_str(&f, "found"));
      sep = "; ";
    }
  }
  printf("\n");
}

typedef enum { REPAIR_DONE, REPAIR_MOVED, REPAIR_FAILED } repair_t;

static int64_t reply_count(const bson_t *reply, const char *key) {
  bson_iter_t it;
  return bson_iter_init_find(&it, reply, key) && BSON_ITER_HOLDS_NUMBER(&it) ? bson_iter_as_int64(&it) : 0;
}

/* Writes `want` (NULL: deletes) over the document `filter` selects. Only
 * a write that matched counts: one that did not means the document moved
 * on meanwhile, and is not ours to touch. */
static repair_t repair_doc(mongoc_collection_t *c, const bson_t *filter, const bson_t *want, bool upsert) {
  bson_t opts = BSON_INITIALIZER, reply;
  bson_error_t e;
  bool ok;
  if (want) {
    if (upsert) BSON_APPEND_BOOL(&opts, "upsert", true);
    ok = mongoc_collection_replace_one(c, filter, want, &opts, &reply, &e);
  } else {
    ok = mongoc_collection_delete_one(c, filter, NULL, &reply, &e);
  }
  bson_destroy(&opts);
  repair_t r = REPAIR_DONE;
  if (!ok && e.code == 11000) {
    r = REPAIR_MOVED; /* the application wrote it meanwhile */
  } else if (!ok) {
    admin_server_error("repair a document", &e);
    r = REPAIR_FAILED;
  } else if (reply_count(&reply, want ? "matchedCount" : "deletedCount") + reply_count(&reply, "upsertedCount") == 0) {
    r = REPAIR_MOVED;
  }
  bson_destroy(&reply);
  return r;
}

/* The filter that selects exactly the document compared: its _id (as it
 * is, whatever its type) and its _position (as found, or absent). */
static void exact_filter(const bson_t *doc, bson_t *filter) {
  bson_iter_t it;
  bson_init(filter);
  if (bson_iter_init_find(&it, doc, "_id")) bson_append_iter(filter, "_id", 3, &it);
  if (bson_iter_init_find(&it, doc, CQRS_RM_POSITION)) {
    bson_append_iter(filter, CQRS_RM_POSITION, -1, &it);
  } else {
    bson_t ex;
    BSON_APPEND_DOCUMENT_BEGIN(filter, CQRS_RM_POSITION, &ex);
    BSON_APPEND_BOOL(&ex, "$exists", false);
    bson_append_document_end(filter, &ex);
  }
}

static int count_repair(coll_report_t *r, repair_t how) {
  if (how == REPAIR_DONE) r->repaired++;
  else r->unrepaired++;
  return how == REPAIR_FAILED ? ADMIN_SERVER : ADMIN_OK;
}

static bool wanted(const checker_t *k, size_t ci, const char *id) {
  return !k->only_id[0] || (k->only_id[ci] && !strcmp(k->only_id[ci], id));
}

typedef struct missing_ctx {
  checker_t *k;
  seen_t *seen;
  coll_report_t *r;
  mongoc_collection_t *c;
  size_t ci;
  int rc;
} missing_ctx_t;

static bool check_missing(const bson_t *d, void *data) {
  missing_ctx_t *m = data;
  char id[CQRS_ID_MAX + 32];
  if (!admin_doc_id(d, id, sizeof id) || !wanted(m->k, m->ci, id)) return true;
  seen_t *s;
  HASH_FIND_STR(m->seen, id, s);
  if (s) return true;
  m->r->missing++;
  report(m->k, "missing", m->r->name, id, NULL, NULL);
  if (!m->k->repair) return true;
  /* Never over a document the application has written meanwhile. */
  bson_t filter = BSON_INITIALIZER, range;
  BSON_APPEND_UTF8(&filter, "_id", id);
  BSON_APPEND_DOCUMENT_BEGIN(&filter, CQRS_RM_POSITION, &range);
  BSON_APPEND_INT64(&range, "$lte", m->r->limit);
  bson_append_document_end(&filter, &range);
  /* Written as the application writes it: personal fields sealed. */
  bson_t sealed = BSON_INITIALIZER;
  if (cqrs_readmodel_seal_doc(m->k->a->rm, m->r->name, id, d, &sealed, &m->k->err))
    m->rc = admin_cqrs_error("seal the implied document", &m->k->err);
  else
    m->rc = count_repair(m->r, repair_doc(m->c, &filter, &sealed, true));
  bson_destroy(&sealed);
  bson_destroy(&filter);
  return m->rc == ADMIN_OK;
}

/* Whether `position` is past the head; the head is read again before
 * saying so (the application may have moved on since the start). */
static int past_head(checker_t *k, int64_t position, bool *past) {
  if (position > k->head_now) {
    cqrs_error_t err;
    if (cqrs_store_head(k->a->store, &k->head_now, &err)) return admin_cqrs_error("read the head of the store", &err);
  }
  *past = position > k->head_now;
  return ADMIN_OK;
}

/* Compares one read-side document with what the events imply. */
static int compare_doc(checker_t *k, mongoc_collection_t *c, const bson_t *doc, const char *id, coll_report_t *r) {
  bson_iter_t it;
  bool has_pos = bson_iter_init_find(&it, doc, CQRS_RM_POSITION) && BSON_ITER_HOLDS_NUMBER(&it);
  int64_t pos = has_pos ? bson_iter_as_int64(&it) : 0;
  bool ahead = false;
  int rc = pos > r->limit ? past_head(k, pos, &ahead) : ADMIN_OK;
  if (rc) return rc;
  if (pos > r->limit && !ahead) {
    r->skipped++; /* the application moved on during the check */
    return ADMIN_OK;
  }
  char note[96];
  snprintf(note, sizeof note, "(_position %lld is past the head %lld: written by no event)", (long long)pos,
           (long long)k->head_now);
  /* Only a string _id can be implied: the projections write no other. */
  bson_t want;
  bool found = false;
  if (bson_iter_init_find(&it, doc, "_id") && BSON_ITER_HOLDS_UTF8(&it) &&
      cqrs_readmodel_get(k->mem, r->name, id, &want, &found, &k->err))
    return admin_cqrs_error("read the implied document", &k->err);
  bson_t fields = BSON_INITIALIZER, opened = BSON_INITIALIZER, sealed = BSON_INITIALIZER;
  uint32_t n = 0;
  /* Personal fields compare opened, and are written back sealed. */
  if (found && cqrs_readmodel_open_doc(k->a->rm, r->name, doc, &opened, &k->err))
    rc = admin_cqrs_error("open a read-side document", &k->err);
  if (found && !rc) diff_docs(&want, &opened, "", &fields, &n);
  if (ahead) {
    r->ahead++;
    report(k, "ahead", r->name, id, n ? &fields : NULL, note);
  } else if (!found) {
    r->extra++;
    report(k, "extra", r->name, id, NULL, NULL);
  } else if (n) {
    r->different++;
    report(k, "different", r->name, id, &fields, NULL);
  } else {
    r->consistent++;
  }
  if (!rc && k->repair && (ahead || !found || n)) {
    bson_t filter;
    exact_filter(doc, &filter);
    if (found && cqrs_readmodel_seal_doc(k->a->rm, r->name, id, &want, &sealed, &k->err))
      rc = admin_cqrs_error("seal the implied document", &k->err);
    else
      rc = count_repair(r, repair_doc(c, &filter, found ? &sealed : NULL, false));
    bson_destroy(&filter);
  }
  bson_destroy(&fields);
  bson_destroy(&opened);
  bson_destroy(&sealed);
  if (found) bson_destroy(&want);
  return rc;
}

static bool remember(seen_t **seen, const char *id) {
  size_t len = strlen(id) + 1;
  seen_t *s = malloc(sizeof *s + len);
  if (!s) return false;
  memcpy(s->id, id, len);
  HASH_ADD_STR(*seen, id, s);
  return true;
}

static void forget_all(seen_t **seen) {
  seen_t *s, *tmp;
  HASH_ITER(hh, *seen, s, tmp) {
    HASH_DEL(*seen, s);
    free(s);
  }
}

static int compare_collection(checker_t *k, size_t ci, const char *name, int64_t limit, coll_report_t *r) {
  memset(r, 0, sizeof *r);
  r->name = name;
  r->limit = limit;
  mongoc_collection_t *c = mongoc_database_get_collection(k->a->db, name);
  bson_t filter = BSON_INITIALIZER;
  if (k->only_id[0]) BSON_APPEND_UTF8(&filter, "_id", k->only_id[ci] ? k->only_id[ci] : "");
  bson_error_t e;
  int64_t total = k->only_id[0] ? 0 : mongoc_collection_estimated_document_count(c, NULL, NULL, NULL, &e);
  char label[64];
  snprintf(label, sizeof label, "check: %s", name);
  admin_progress_t prog;
  if (!k->only_id[0]) admin_progress_start(&prog, label, total > 0 ? total : 0);
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, &filter, NULL, NULL);
  seen_t *seen = NULL;
  const bson_t *doc;
  int rc = ADMIN_OK;
  int64_t done = 0;
  while (!rc && mongoc_cursor_next(cur, &doc)) {
    char id[CQRS_ID_MAX + 32];
    admin_doc_id(doc, id, sizeof id); /* any _id: one no event implies is extra */
    if (!remember(&seen, id)) rc = ADMIN_SERVER;
    if (!rc) rc = compare_doc(k, c, doc, id, r);
    if (!k->only_id[0] && ++done % 500 == 0) admin_progress_update(&prog, done);
  }
  if (!rc && mongoc_cursor_error(cur, &e)) rc = admin_server_error("read the read side", &e);
  mongoc_cursor_destroy(cur);
  if (!rc && !k->only_id[0]) {
    prog.total = done > prog.total ? done : prog.total;
    admin_progress_update(&prog, done);
    admin_progress_end(&prog);
  }
  if (!rc) {
    /* What the events imply and the read side lacks. */
    missing_ctx_t mc = {k, seen, r, c, ci, ADMIN_OK};
    cqrs_find_t all = {NULL, NULL, false, 0};
    cqrs_code_t frc = cqrs_readmodel_find(k->mem, name, &all, check_missing, &mc, &k->err);
    if (frc && frc != CQRS_ENOT_FOUND && !mc.rc) rc = admin_cqrs_error("walk the implied documents", &k->err);
    if (!rc) rc = mc.rc;
  }
  forget_all(&seen);
  bson_destroy(&filter);
  mongoc_collection_destroy(c);
  return rc;
}

/* ---- --invoice: the invoice's stream and its customer's, in position order ---- */

typedef struct ev_list {
  const cqrs_event_t **items;
  size_t n, cap;
} ev_list_t;

static bool collect(const cqrs_event_t *e, void *data) {
  ev_list_t *l = data;
  if (l->n == l->cap) {
    size_t cap = l->cap ? 2 * l->cap : 32;
    const cqrs_event_t **items = realloc(l->items, cap * sizeof *items);
    if (!items) return false;
    l->items = items;
    l->cap = cap;
  }
  l->items[l->n++] = cqrs_event_ref(e);
  return true;
}

static int by_position(const void *x, const void *y) {
  int64_t a = (*(const cqrs_event_t *const *)x)->position, b = (*(const cqrs_event_t *const *)y)->position;
  return (a > b) - (a < b);
}

static int replay_invoice(checker_t *k, const char *id, char *customer, size_t cap) {
  ev_list_t l = {NULL, 0, 0};
  cqrs_error_t err;
  int rc = ADMIN_OK;
  if (cqrs_store_read_stream(k->a->store, billing_invoice.name, id, 1, collect, &l, &err))
    rc = admin_cqrs_error("read the invoice's stream", &err);
  customer[0] = '\0';
  for (size_t i = 0; i < l.n; i++) {
    if (l.items[i]->type == &billing_invoice_issued)
      snprintf(customer, cap, "%s", ((const billing_invoice_issued_t *)l.items[i]->payload)->customer_id);
  }
  if (!rc && customer[0] && cqrs_store_read_stream(k->a->store, billing_customer.name, customer, 1, collect, &l, &err))
    rc = admin_cqrs_error("read the customer's stream", &err);
  if (l.n) qsort(l.items, l.n, sizeof *l.items, by_position);
  for (size_t i = 0; !rc && i < l.n; i++) {
    if (!apply_event(l.items[i], k)) rc = admin_cqrs_error("project the events", &k->err);
  }
  for (size_t i = 0; i < l.n; i++) cqrs_event_unref(l.items[i]);
  free(l.items);
  return rc;
}

/* ---- how far behind the projections are ---- */

static int load_checkpoints(checker_t *k) {
  cqrs_error_t err;
  for (size_t i = 0; i < NPROJ; i++) {
    proj_state_t *ps = &k->ps[i];
    if (cqrs_checkpoints_load(k->a->cp, admin_projections[i].name, &ps->checkpoint, &err))
      return admin_cqrs_error("read a checkpoint", &err);
    /* No checkpoint: nothing ever ran it; compare with everything (it is
     * behind by every event it wants all the same). */
    ps->limit = ps->checkpoint > 0 && ps->checkpoint < k->head ? ps->checkpoint : k->head;
    ps->checkpoint_now = ps->checkpoint;
  }
  return ADMIN_OK;
}

/* The events each projection still has to handle, now; waits up to
 * --wait seconds for a running application to handle them. */
static int measure_behind(checker_t *k) {
  int64_t deadline = cqrs_now_ms() + k->wait_s * 1000;
  for (;;) {
    int64_t behind = 0;
    cqrs_error_t err;
    for (size_t i = 0; i < NPROJ; i++) {
      proj_state_t *ps = &k->ps[i];
      if (!ps->npending) continue;
      if (cqrs_checkpoints_load(k->a->cp, admin_projections[i].name, &ps->checkpoint_now, &err))
        return admin_cqrs_error("read a checkpoint", &err);
      ps->behind = 0;
      for (size_t j = 0; j < ps->npending; j++) ps->behind += ps->pending[j] > ps->checkpoint_now;
      behind += ps->behind;
    }
    if (!behind || cqrs_now_ms() >= deadline) return ADMIN_OK;
    uv_sleep(200);
  }
}

/* ---- the summary ---- */

static void summary_json(bson_t *out, const coll_report_t *r) {
  bson_t c;
  BSON_APPEND_DOCUMENT_BEGIN(out, r->name, &c);
  BSON_APPEND_INT64(&c, "upToPosition", r->limit);
  BSON_APPEND_INT64(&c, "documents", documents(r));
  BSON_APPEND_INT64(&c, "consistent", r->consistent);
  BSON_APPEND_INT64(&c, "missing", r->missing);
  BSON_APPEND_INT64(&c, "extra", r->extra);
  BSON_APPEND_INT64(&c, "different", r->different);
  BSON_APPEND_INT64(&c, "ahead", r->ahead);
  BSON_APPEND_INT64(&c, "skippedNewer", r->skipped);
  BSON_APPEND_INT64(&c, "repaired", r->repaired);
  BSON_APPEND_INT64(&c, "notRepaired", r->unrepaired);
  bson_append_document_end(out, &c);
}

static void print_json(const checker_t *k, const coll_report_t *r, double pct, int64_t problems, int64_t behind,
                       double secs) {
  bson_t out = BSON_INITIALIZER, colls, projs;
  BSON_APPEND_UTF8(&out, "database", cqrs_mongo_database(k->a->m));
  BSON_APPEND_INT64(&out, "head", k->head);
  BSON_APPEND_DOCUMENT_BEGIN(&out, "projections", &projs);
  for (size_t i = 0; i < NPROJ; i++) {
    bson_t p;
    BSON_APPEND_DOCUMENT_BEGIN(&projs, admin_projections[i].name, &p);
    BSON_APPEND_INT64(&p, "checkpoint", k->ps[i].checkpoint_now);
    BSON_APPEND_INT64(&p, "behind", k->ps[i].behind);
    BSON_APPEND_INT64(&p, "comparedUpTo", k->ps[i].limit);
    bson_append_document_end(&projs, &p);
  }
  bson_append_document_end(&out, &projs);
  BSON_APPEND_DOCUMENT_BEGIN(&out, "collections", &colls);
  for (size_t i = 0; i < NCOLL; i++) summary_json(&colls, &r[i]);
  bson_append_document_end(&out, &colls);
  BSON_APPEND_INT64(&out, "events", k->events);
  BSON_APPEND_DOUBLE(&out, "consistency", pct);
  BSON_APPEND_BOOL(&out, "consistent", problems == 0);
  BSON_APPEND_BOOL(&out, "caughtUp", behind == 0);
  BSON_APPEND_BOOL(&out, "repaired", k->repair && problems > 0);
  BSON_APPEND_DOUBLE(&out, "seconds", secs);
  BSON_APPEND_ARRAY(&out, "differences", &k->list);
  admin_print_json(stdout, &out);
  bson_destroy(&out);
}

static void print_text(const checker_t *k, const coll_report_t *r, double pct, int64_t problems, int64_t behind,
                       double secs) {
  if (k->shown < problems) printf("... %lld more (see --show or --json)\n", (long long)(problems - k->shown));
  for (size_t i = 0; i < NCOLL; i++) {
    if (k->only_id[0] && !k->only_id[i]) continue;
    printf("%-17s %lld documents, %lld consistent, %lld missing, %lld extra, %lld different", r[i].name,
           (long long)documents(&r[i]), (long long)r[i].consistent,
           (long long)r[i].missing, (long long)r[i].extra, (long long)r[i].different);
    if (r[i].ahead) printf(", %lld ahead of the store", (long long)r[i].ahead);
    if (r[i].skipped) printf(", %lld newer than position %lld skipped", (long long)r[i].skipped, (long long)r[i].limit);
    if (k->repair) printf(", %lld repaired", (long long)r[i].repaired);
    if (r[i].unrepaired) printf(", %lld not repaired (changed meanwhile)", (long long)r[i].unrepaired);
    printf("\n");
  }
  for (size_t i = 0; i < NPROJ; i++) {
    const proj_state_t *ps = &k->ps[i];
    printf("%-17s checkpoint %lld, head %lld: ", admin_projections[i].name, (long long)ps->checkpoint_now,
           (long long)k->head);
    if (ps->behind)
      printf("%lld events behind (its documents compared as of position %lld)\n", (long long)ps->behind,
             (long long)ps->limit);
    else
      printf("caught up\n");
  }
  printf("consistency %.3f %% (target 99.9 %%) over %lld events in %.1f s%s", pct, (long long)k->events, secs,
         problems ? (k->repair ? ": differences repaired" : ": differences found") : "");
  if (behind) printf("%s%lld events not projected yet", problems ? "; " : ": ", (long long)behind);
  printf("\n");
}

static int parse(admin_t *a, int argc, char **argv, checker_t *k, const char **invoice) {
  static const char *const specs[] = {"invoice=", "repair", "show=", "wait=", NULL};
  admin_args_t args;
  int rc = admin_parse(a, argc, argv, specs, usage, 0, 0, &args);
  if (rc) return rc;
  k->repair = args.vals[1] != NULL;
  k->show = 100;
  k->wait_s = 5;
  if ((args.vals[2] && admin_int("--show", args.vals[2], 0, INT64_MAX, &k->show)) ||
      (args.vals[3] && admin_int("--wait", args.vals[3], 0, 86400, &k->wait_s)))
    return ADMIN_USAGE;
  if (args.vals[0] && (!*args.vals[0] || strlen(args.vals[0]) >= CQRS_ID_MAX)) {
    admin_err("check: --invoice needs an invoice id (1 to %d characters)", CQRS_ID_MAX - 1);
    return ADMIN_USAGE;
  }
  *invoice = args.vals[0];
  return ADMIN_OK;
}

/* Reads the events: all of them, or --invoice's streams. */
static int read_events(checker_t *k, const char *invoice, char *customer, size_t cap) {
  cqrs_error_t err;
  if (invoice) {
    k->only_id[0] = invoice;
    int rc = replay_invoice(k, invoice, customer, cap);
    k->only_id[1] = customer[0] ? customer : NULL;
    k->only_id[2] = NULL;
    return rc;
  }
  admin_progress_start(&k->prog, "check: events", k->head);
  if (cqrs_store_read_all(k->a->store, 1, SIZE_MAX, apply_event, k, &err))
    return k->rc ? admin_cqrs_error("project the events", &k->err) : admin_cqrs_error("read the event store", &err);
  if (k->rc) return admin_cqrs_error("project the events", &k->err);
  admin_progress_update(&k->prog, k->events);
  admin_progress_end(&k->prog);
  return ADMIN_OK;
}

static int run(checker_t *k, const char *invoice) {
  cqrs_error_t err;
  if (cqrs_store_head(k->a->store, &k->head, &err)) return admin_cqrs_error("read the head of the store", &err);
  k->head_now = k->head;
  if (!k->head && !k->a->allow_empty) {
    admin_err("check: the event store (billing_commands in database '%s') is empty: nothing to check against "
              "(--allow-empty checks an empty store all the same)",
              cqrs_mongo_database(k->a->m));
    return ADMIN_SERVER;
  }
  int rc = load_checkpoints(k);
  if (rc) return rc;
  char customer[CQRS_ID_MAX];
  if ((rc = read_events(k, invoice, customer, sizeof customer))) return rc;
  /* billing_queries, billing_customers (for --invoice: that invoice, its customer), billing_balances */
  const char *names[NCOLL] = {billing_default_collections.invoices, billing_default_collections.customers,
                              billing_default_collections.balances};
  static const size_t proj_of[NCOLL] = {0, 0, 1};
  coll_report_t r[NCOLL];
  memset(r, 0, sizeof r);
  int64_t started = cqrs_now_ms();
  for (size_t i = 0; !rc && i < NCOLL; i++) rc = compare_collection(k, i, names[i], k->ps[proj_of[i]].limit, &r[i]);
  if (!rc) rc = measure_behind(k);
  if (rc) return rc;
  int64_t total = 0, consistent = 0, problems = 0, behind = 0;
  for (size_t i = 0; i < NCOLL; i++) {
    total += documents(&r[i]);
    consistent += r[i].consistent;
    problems += r[i].missing + r[i].extra + r[i].different + r[i].ahead;
  }
  for (size_t i = 0; i < NPROJ; i++) behind += k->ps[i].behind;
  if (k->only_id[0] && documents(&r[0]) == 0) {
    admin_err("check: no invoice %s, neither in the event store nor on the read side", k->only_id[0]);
    return ADMIN_PROBLEMS;
  }
  double pct = total ? 100.0 * (double)consistent / (double)total : 100.0;
  double secs = (double)(cqrs_now_ms() - started) / 1000.0;
  if (k->a->json) print_json(k, r, pct, problems, behind, secs);
  else print_text(k, r, pct, problems, behind, secs);
  if (k->repair && problems) {
    int64_t repaired = 0, unrepaired = 0;
    for (size_t i = 0; i < NCOLL; i++) {
      repaired += r[i].repaired;
      unrepaired += r[i].unrepaired;
    }
    char detail[96];
    snprintf(detail, sizeof detail, "%lld repaired, %lld not repaired", (long long)repaired, (long long)unrepaired);
    admin_audit(k->a, "check.repair", k->only_id[0] ? k->only_id[0] : "all", detail);
  }
  return problems || behind ? ADMIN_PROBLEMS : ADMIN_OK;
}

int admin_check(admin_t *a, int argc, char **argv) {
  checker_t k;
  memset(&k, 0, sizeof k);
  k.a = a;
  const char *invoice = NULL;
  int rc = parse(a, argc, argv, &k, &invoice);
  if (rc) return rc < 0 ? ADMIN_OK : rc;
  if ((rc = admin_connect(a, NULL))) return rc;
  cqrs_memory_readmodel_new(&k.mem, NULL);
  k.proj = billing_projector_new(k.mem, NULL);
  bson_init(&k.list);
  rc = k.mem && k.proj ? run(&k, invoice) : ADMIN_SERVER;
  bson_destroy(&k.list);
  billing_destroy(k.proj);
  cqrs_readmodel_destroy(k.mem);
  for (size_t i = 0; i < NPROJ; i++) free(k.ps[i].pending);
  return rc;
}
