/* check: the seed's consistency check, write side against read side. The
 * event store is streamed through the billing projections into an
 * in-memory read model — the documents the events imply — which is then
 * compared with billing_queries, billing_customers and billing_balances
 * document by document (a cursor each). Each projection is compared as far
 * as its checkpoint: what the application has not projected yet is lag, not
 * a difference, and a document written past it (the application moved on
 * during the check) is skipped. */
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#include "admin.h"

static const char usage[] =
    "usage: billing-admin check [--invoice ID] [--repair] [--show N] [--json]\n"
    "Rebuilds the read documents the event store implies and compares them with billing_queries,\n"
    "billing_customers and billing_balances: missing, extra and different documents (with the\n"
    "differing fields) and the consistency percentage. --invoice checks one invoice and its\n"
    "customer. --repair rewrites what differs (missing and different documents written as implied,\n"
    "extra ones deleted). --show N prints at most N differences (default 100; all with --json).\n"
    "Exit: 0 consistent, 1 differences found (also when --repair fixed them), 3 server error.\n";

typedef struct seen {
  UT_hash_handle hh;
  char id[];
} seen_t;

typedef struct coll_report {
  const char *name;
  int64_t limit; /* positions compared up to here */
  int64_t expected, consistent, missing, extra, different, skipped, repaired;
} coll_report_t;

typedef struct checker {
  admin_t *a;
  cqrs_readmodel_t *mem;
  billing_t *proj;
  bool repair;
  long long show, shown;
  const char *only_id[3]; /* --invoice: the ids to compare per collection, NULL: all */
  int64_t limits[2];       /* per projection */
  int64_t events;
  cqrs_code_t rc;
  cqrs_error_t err;
  bson_t list; /* differences, for --json */
  uint32_t nlist;
} checker_t;

static int64_t limit_of(const checker_t *k, const admin_projection_t *p) {
  return k->limits[p - admin_projections];
}

static bool apply_event(const cqrs_event_t *e, void *data) {
  checker_t *k = data;
  k->events++;
  for (const admin_projection_t *p = admin_projections; p->name; p++) {
    if (!admin_projection_wants(p, e->type) || e->position > limit_of(k, p)) continue;
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

static void report(checker_t *k, const char *what, const char *coll, const char *id, const bson_t *fields) {
  bson_t item;
  char key[16];
  const char *kk;
  bson_uint32_to_string(k->nlist++, &kk, key, sizeof key);
  bson_append_document_begin(&k->list, kk, -1, &item);
  BSON_APPEND_UTF8(&item, "kind", what);
  BSON_APPEND_UTF8(&item, "collection", coll);
  BSON_APPEND_UTF8(&item, "id", id);
  if (fields) BSON_APPEND_ARRAY(&item, "fields", fields);
  bson_append_document_end(&k->list, &item);
  if (k->a->json || k->shown >= k->show) return;
  k->shown++;
  printf("%-9s %s %s", what, coll, id);
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

static bool repair(mongoc_collection_t *c, const char *id, const bson_t *want, int64_t limit) {
  bson_t filter = BSON_INITIALIZER, range, opts = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "_id", id);
  /* Never over a document the application has moved past meanwhile. */
  BSON_APPEND_DOCUMENT_BEGIN(&filter, CQRS_RM_POSITION, &range);
  BSON_APPEND_INT64(&range, "$lte", limit);
  bson_append_document_end(&filter, &range);
  bson_error_t e;
  bool ok;
  if (want) {
    BSON_APPEND_BOOL(&opts, "upsert", true);
    ok = mongoc_collection_replace_one(c, &filter, want, &opts, NULL, &e);
    if (!ok && e.code == 11000) ok = true; /* it moved past: not ours to write */
  } else {
    ok = mongoc_collection_delete_one(c, &filter, NULL, NULL, &e);
  }
  if (!ok) admin_server_error("repair a document", &e);
  bson_destroy(&filter);
  bson_destroy(&opts);
  return ok;
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
  m->r->expected++;
  report(m->k, "missing", m->r->name, id, NULL);
  bson_t sealed = BSON_INITIALIZER;
  bool repaired = m->k->repair && !cqrs_readmodel_seal_doc(m->k->a->rm, m->r->name, id, d, &sealed, NULL) &&
                  repair(m->c, id, &sealed, m->r->limit);
  bson_destroy(&sealed);
  if (m->k->repair) {
    if (!repaired) {
      m->rc = ADMIN_SERVER;
      return false;
    }
    m->r->repaired++;
  }
  return true;
}

static int compare_collection(checker_t *k, size_t ci, const char *name, int64_t limit, coll_report_t *r) {
  memset(r, 0, sizeof *r);
  r->name = name;
  r->limit = limit;
  mongoc_collection_t *c = mongoc_database_get_collection(k->a->db, name);
  bson_t filter = BSON_INITIALIZER;
  if (k->only_id[0]) BSON_APPEND_UTF8(&filter, "_id", k->only_id[ci] ? k->only_id[ci] : "");
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, &filter, NULL, NULL);
  seen_t *seen = NULL, *s, *tmp;
  const bson_t *doc;
  int rc = ADMIN_OK;
  while (!rc && mongoc_cursor_next(cur, &doc)) {
    char id[CQRS_ID_MAX + 32];
    if (!admin_doc_id(doc, id, sizeof id)) continue; /* not a read-model document */
    size_t len = strlen(id) + 1;
    if (!(s = malloc(sizeof *s + len))) {
      rc = ADMIN_SERVER;
      break;
    }
    memcpy(s->id, id, len);
    HASH_ADD_STR(seen, id, s);
    if (admin_int64(doc, CQRS_RM_POSITION, 0) > limit) {
      r->skipped++;
      continue;
    }
    bson_t want;
    bool found;
    if (cqrs_readmodel_get(k->mem, name, id, &want, &found, &k->err)) {
      rc = admin_cqrs_error("read the implied document", &k->err);
      break;
    }
    if (!found) {
      r->extra++;
      report(k, "extra", name, id, NULL);
      if (k->repair && repair(c, id, NULL, limit)) r->repaired++;
      continue;
    }
    r->expected++;
    bson_t fields = BSON_INITIALIZER, opened = BSON_INITIALIZER, sealed = BSON_INITIALIZER;
    uint32_t n = 0;
    /* Personal fields compare opened, and are written back sealed. */
    cqrs_readmodel_open_doc(k->a->rm, name, doc, &opened, NULL);
    diff_docs(&want, &opened, "", &fields, &n);
    if (n) {
      r->different++;
      report(k, "different", name, id, &fields);
      if (k->repair && !cqrs_readmodel_seal_doc(k->a->rm, name, id, &want, &sealed, NULL) &&
          repair(c, id, &sealed, limit))
        r->repaired++;
    } else {
      r->consistent++;
    }
    bson_destroy(&fields);
    bson_destroy(&opened);
    bson_destroy(&sealed);
    bson_destroy(&want);
  }
  bson_error_t e;
  if (!rc && mongoc_cursor_error(cur, &e)) rc = admin_server_error("read the read side", &e);
  mongoc_cursor_destroy(cur);
  if (!rc) {
    /* What the events imply and the read side lacks. */
    missing_ctx_t mc = {k, seen, r, c, ci, ADMIN_OK};
    cqrs_find_t all = {NULL, NULL, false, 0};
    cqrs_code_t frc = cqrs_readmodel_find(k->mem, name, &all, check_missing, &mc, &k->err);
    if (frc && frc != CQRS_ENOT_FOUND) rc = admin_cqrs_error("walk the implied documents", &k->err);
    if (!rc) rc = mc.rc;
  }
  HASH_ITER(hh, seen, s, tmp) {
    HASH_DEL(seen, s);
    free(s);
  }
  bson_destroy(&filter);
  mongoc_collection_destroy(c);
  return rc;
}

/* --invoice: the invoice's stream and its customer's, in position order. */
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

static void summary_json(bson_t *out, const coll_report_t *r) {
  bson_t c;
  BSON_APPEND_DOCUMENT_BEGIN(out, r->name, &c);
  BSON_APPEND_INT64(&c, "upToPosition", r->limit);
  BSON_APPEND_INT64(&c, "expected", r->expected);
  BSON_APPEND_INT64(&c, "consistent", r->consistent);
  BSON_APPEND_INT64(&c, "missing", r->missing);
  BSON_APPEND_INT64(&c, "extra", r->extra);
  BSON_APPEND_INT64(&c, "different", r->different);
  BSON_APPEND_INT64(&c, "skippedNewer", r->skipped);
  BSON_APPEND_INT64(&c, "repaired", r->repaired);
  bson_append_document_end(out, &c);
}

int admin_check(admin_t *a, int argc, char **argv) {
  static const char *const specs[] = {"invoice=", "repair", "show=", NULL};
  admin_args_t args;
  int rc = admin_parse(a, argc, argv, specs, usage, 0, 0, &args);
  if (rc) return rc < 0 ? ADMIN_OK : rc;
  checker_t k;
  memset(&k, 0, sizeof k);
  k.a = a;
  k.repair = args.vals[1] != NULL;
  k.show = 100;
  if (args.vals[2] && admin_int("--show", args.vals[2], 0, INT64_MAX, &k.show)) return ADMIN_USAGE;
  if (args.vals[0] && (!*args.vals[0] || strlen(args.vals[0]) >= CQRS_ID_MAX)) {
    admin_err("check: --invoice needs an invoice id (1 to %d characters)", CQRS_ID_MAX - 1);
    return ADMIN_USAGE;
  }
  if ((rc = admin_connect(a, NULL))) return rc;
  int64_t started = cqrs_now_ms(), head;
  cqrs_error_t err;
  if (cqrs_store_head(a->store, &head, &err)) return admin_cqrs_error("read the head of the store", &err);
  for (size_t i = 0; i < 2; i++) {
    int64_t at;
    if (cqrs_checkpoints_load(a->cp, admin_projections[i].name, &at, &err)) return admin_cqrs_error("read a checkpoint", &err);
    /* No checkpoint: nothing runs that projection here; compare with everything. */
    k.limits[i] = at > 0 && at < head ? at : head;
  }
  cqrs_memory_readmodel_new(&k.mem, NULL);
  k.proj = billing_projector_new(k.mem, NULL);
  bson_init(&k.list);
  char customer[CQRS_ID_MAX];
  if (!k.mem || !k.proj) {
    rc = ADMIN_SERVER;
  } else if (args.vals[0]) {
    k.only_id[0] = args.vals[0];
    if (!(rc = replay_invoice(&k, args.vals[0], customer, sizeof customer))) k.only_id[1] = customer[0] ? customer : NULL;
    k.only_id[2] = NULL;
  } else if (cqrs_store_read_all(a->store, 1, SIZE_MAX, apply_event, &k, &err)) {
    rc = admin_cqrs_error("read the event store", &err);
  } else if (k.rc) {
    rc = admin_cqrs_error("project the events", &k.err);
  }
  /* billing_queries, billing_customers (for --invoice: that invoice, its customer), billing_balances */
  const char *names[3] = {billing_default_collections.invoices, billing_default_collections.customers,
                          billing_default_collections.balances};
  const size_t proj_of[3] = {0, 0, 1};
  coll_report_t r[3];
  memset(r, 0, sizeof r);
  for (size_t i = 0; !rc && i < 3; i++) rc = compare_collection(&k, i, names[i], k.limits[proj_of[i]], &r[i]);
  int64_t expected = 0, consistent = 0, problems = 0;
  for (size_t i = 0; i < 3; i++) {
    expected += r[i].expected + r[i].extra;
    consistent += r[i].consistent;
    problems += r[i].missing + r[i].extra + r[i].different;
  }
  if (!rc && k.only_id[0] && r[0].expected + r[0].extra == 0) {
    admin_err("check: no invoice %s, neither in the event store nor on the read side", k.only_id[0]);
    rc = ADMIN_PROBLEMS;
  }
  double pct = expected ? 100.0 * (double)consistent / (double)expected : 100.0;
  double secs = (double)(cqrs_now_ms() - started) / 1000.0;
  if (!rc && a->json) {
    bson_t out = BSON_INITIALIZER, colls;
    BSON_APPEND_DOCUMENT_BEGIN(&out, "collections", &colls);
    for (size_t i = 0; i < 3; i++) summary_json(&colls, &r[i]);
    bson_append_document_end(&out, &colls);
    BSON_APPEND_INT64(&out, "events", k.events);
    BSON_APPEND_DOUBLE(&out, "consistency", pct);
    BSON_APPEND_BOOL(&out, "consistent", problems == 0);
    BSON_APPEND_BOOL(&out, "repaired", k.repair && problems > 0);
    BSON_APPEND_DOUBLE(&out, "seconds", secs);
    BSON_APPEND_ARRAY(&out, "differences", &k.list);
    admin_print_json(stdout, &out);
    bson_destroy(&out);
  } else if (!rc) {
    if (k.shown < problems) printf("... %lld more (see --show or --json)\n", (long long)(problems - k.shown));
    for (size_t i = 0; i < 3; i++) {
      if (k.only_id[0] && !k.only_id[i]) continue;
      printf("%-17s %lld documents, %lld consistent, %lld missing, %lld extra, %lld different", r[i].name,
             (long long)(r[i].expected + r[i].extra), (long long)r[i].consistent, (long long)r[i].missing,
             (long long)r[i].extra, (long long)r[i].different);
      if (r[i].skipped) printf(", %lld newer than position %lld skipped", (long long)r[i].skipped, (long long)r[i].limit);
      if (k.repair) printf(", %lld repaired", (long long)r[i].repaired);
      printf("\n");
    }
    printf("consistency %.3f %% (target 99.9 %%) over %lld events in %.1f s%s\n", pct, (long long)k.events, secs,
           problems ? (k.repair ? ": differences repaired" : ": differences found") : "");
  }
  bson_destroy(&k.list);
  billing_destroy(k.proj);
  cqrs_readmodel_destroy(k.mem);
  return rc ? rc : problems ? ADMIN_PROBLEMS : ADMIN_OK;
}
