/* migrate: the seed's three steps from a legacy billing_documents
 * collection. Step 1 creates the collections and indexes. Step 2 turns each
 * valid legacy document into the domain's own events — customer.registered
 * once per customer, invoice.issued with the legacy number kept, then
 * invoice.paid or invoice.cancelled, each at its legacy date — and tells
 * each year's book the highest number it saw (invoice.import, through the
 * domain's handler), so that numbering continues after it. Step 3 is `flag`.
 *
 * Commits are appended straight to the store with command ids derived from
 * the legacy ids ("migrate:invoice:<id>"), so a re-run appends nothing
 * twice; the invoice projection is applied to each batch in memory and
 * written in bulk (memproj.h), its checkpoint saved with the progress after
 * each batch. A run killed at any point resumes after the last batch it
 * finished, first projecting what it had committed but not projected; the
 * customers the store holds are read from it, not appended again.
 * Documents that cannot be migrated are left as they are and listed in
 * billing_migration_rejects with their reason and its kind: malformed ones,
 * and a second document with an invoice number the first (in _id order)
 * has. A document whose customer was registered with another name or
 * e-mail migrates, keeps the registered one, and is listed there too, as a
 * conflict. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <cqrs/backend.h>

#include "billing_mongo.h"
#include "migrate.h"

#define MAX_YEARS 64

static const char usage[] =
    "usage: billing-admin migrate [--from COLLECTION] [--batch N] [--restart] [--quiet] [--json]\n"
    "Step 1: creates the CQS collections and their indexes. Step 2: migrates every document of\n"
    "COLLECTION (default billing_documents) into events (customers registered, invoices issued with\n"
    "their numbers kept, paid, cancelled, each at its legacy date), amounts converted exactly to minor\n"
    "units, and projects them into billing_queries and billing_customers. Idempotent and resumable:\n"
    "a re-run continues after the last finished batch (--restart: from the first document; nothing\n"
    "is appended twice). Documents that cannot migrate (malformed, or a second one with an invoice\n"
    "number already taken) are left untouched; those whose customer was registered with another name\n"
    "or e-mail migrate and keep the registered one. Both are listed with their reason (stdout, and the\n"
    "collection billing_migration_rejects) and counted by reason. Step 3 is `billing-admin flag`.\n"
    "An absent or empty COLLECTION is refused unless --allow-empty.\n"
    "Exit: 0 all migrated as they were, 1 some refused or in conflict, 3 server error or no data.\n";

static cqrs_code_t project(mig_t *g, cqrs_event_t *const *events, size_t n, cqrs_error_t *err) {
  for (size_t i = 0; i < n; i++) {
    cqrs_code_t rc = memproj_apply(g->mp, events[i], err);
    if (rc) return rc;
    if (events[i]->position > g->projected) g->projected = events[i]->position;
  }
  return CQRS_OK;
}

/* Appends one commit of `n` events on a new stream, each at its time, and
 * projects it. Sets *existed when the stream had been written before (by
 * an earlier run: the same command id; or by someone else: a conflict). */
static cqrs_code_t commit(mig_t *g, const cqrs_aggregate_type_t *agg, const char *id, const char *command_id,
                          const cqrs_event_type_t *const *types, const void *const *payloads, const int64_t *times,
                          size_t n, bool *existed, cqrs_error_t *err) {
  cqrs_envelope_t *env;
  cqrs_event_t *events[3] = {NULL, NULL, NULL};
  *existed = false;
  cqrs_code_t rc = cqrs_envelope_new(agg->name, id, command_id, command_id, &env, err);
  if (rc) return rc;
  for (size_t i = 0; !rc && i < n; i++)
    rc = cqrs_event_new(types[i], env, NULL, (int64_t)i + 1, times[i], payloads[i], &events[i], err);
  cqrs_envelope_unref(env);
  if (!rc) {
    cqrs_append_t req = {agg->name, id, 0, command_id, events, n};
    cqrs_append_result_t res;
    rc = cqrs_store_append(g->a->store, &req, &res, err);
    if (rc == CQRS_ECONFLICT) {
      *existed = true;
      rc = CQRS_OK;
    } else if (!rc && res.duplicate) {
      *existed = true;
    } else if (!rc) {
      rc = project(g, events, n, err);
    }
  }
  for (size_t i = 0; i < n; i++) cqrs_event_unref(events[i]);
  return rc;
}

/* A customer the store holds already is not appended again; one
 * registered with another name or e-mail keeps it, and the document that
 * says otherwise is listed as a conflict. */
static int register_customer(mig_t *g, const legacy_t *l, const bson_t *doc) {
  const billing_invoice_view_t *v = &l->v;
  known_customer_t *k = known_customer_find(g, v->customer_id);
  if (k) {
    bool name = *k->name && strcmp(k->name, v->name), email = *k->email && strcmp(k->email, v->email);
    if (!name && !email) return ADMIN_OK;
    char reason[CQRS_MESSAGE_MAX + 600];
    snprintf(reason, sizeof reason, "customer %s: %s '%.200s' differs from '%.200s', the one registered (kept)",
             v->customer_id, email ? "e-mail" : "name", email ? v->email : v->name, email ? k->email : k->name);
    return migrate_record(g, doc, false, reason, "customer_conflict");
  }
  billing_customer_registered_t p;
  memset(&p, 0, sizeof p);
  memcpy(p.name, v->name, sizeof p.name);
  memcpy(p.email, v->email, sizeof p.email);
  char cmd[CQRS_ID_MAX];
  snprintf(cmd, sizeof cmd, "migrate:customer:%.40s", v->customer_id); /* checked: at most 40 */
  const cqrs_event_type_t *types[] = {&billing_customer_registered};
  const void *payloads[] = {&p};
  bool existed;
  cqrs_error_t err;
  g->customers_appended++;
  if (commit(g, &billing_customer, v->customer_id, cmd, types, payloads, &v->created_at, 1, &existed, &err))
    return admin_cqrs_error("register a customer", &err);
  return known_customer_add(g, v->customer_id, v->name, v->email);
}

static cqrs_code_t migrate_invoice(mig_t *g, const legacy_t *l, bool *existed, cqrs_error_t *err) {
  const billing_invoice_view_t *v = &l->v;
  billing_invoice_issued_t issued;
  memset(&issued, 0, sizeof issued);
  memcpy(issued.number, v->number, sizeof issued.number);
  memcpy(issued.customer_id, v->customer_id, sizeof issued.customer_id);
  issued.amount = v->amount;
  issued.due_date = v->due_date; /* 0 when the legacy document has none: none is made up */
  billing_invoice_paid_t paid = {v->amount};
  billing_invoice_cancelled_t cancelled;
  memset(&cancelled, 0, sizeof cancelled);
  snprintf(cancelled.reason, sizeof cancelled.reason, "cancelled before the migration");
  const cqrs_event_type_t *types[2] = {&billing_invoice_issued, NULL};
  const void *payloads[2] = {&issued, NULL};
  int64_t times[2] = {v->created_at, 0};
  size_t n = 1;
  if (v->status == BILLING_INVOICE_PAID) types[n] = &billing_invoice_paid, payloads[n] = &paid, times[n++] = v->paid_at;
  if (v->status == BILLING_INVOICE_CANCELLED)
    types[n] = &billing_invoice_cancelled, payloads[n] = &cancelled, times[n++] = v->cancelled_at;
  char cmd[CQRS_ID_MAX];
  snprintf(cmd, sizeof cmd, "migrate:invoice:%.40s", v->id); /* checked: at most 40 */
  return commit(g, &billing_invoice, v->id, cmd, types, payloads, times, n, existed, err);
}

typedef struct year_max {
  int year;
  int64_t seq;
  char number[BILLING_NUMBER_MAX];
} year_max_t;

static cqrs_code_t import_books(mig_t *g, const year_max_t *ym, size_t n, cqrs_error_t *err) {
  for (size_t i = 0; i < n; i++) {
    billing_import_invoice_t p;
    memset(&p, 0, sizeof p);
    memcpy(p.number, ym[i].number, sizeof p.number);
    cqrs_command_t *cmd;
    cqrs_code_t rc = cqrs_command_new(&billing_import_invoice, &p, &cmd, err);
    if (!rc) rc = cqrs_dispatcher_execute(g->d, cmd, err, NULL);
    if (rc) return rc;
  }
  return CQRS_OK;
}

static int save_progress(mig_t *g, bool finished) {
  mongoc_collection_t *c = mongoc_database_get_collection(g->a->db, MIGRATE_PROGRESS);
  bson_t filter = BSON_INITIALIZER, u = BSON_INITIALIZER, set, inc, opts = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "_id", g->source);
  BSON_APPEND_DOCUMENT_BEGIN(&u, "$set", &set);
  BSON_APPEND_UTF8(&set, "lastId", g->last_id);
  BSON_APPEND_DATE_TIME(&set, "updatedAt", cqrs_now_ms());
  BSON_APPEND_BOOL(&set, "finished", finished);
  bson_append_document_end(&u, &set);
  BSON_APPEND_DOCUMENT_BEGIN(&u, "$inc", &inc);
  BSON_APPEND_INT64(&inc, "migrated", g->migrated + g->already);
  bson_append_document_end(&u, &inc);
  BSON_APPEND_BOOL(&opts, "upsert", true);
  bson_error_t e;
  bool ok = mongoc_collection_update_one(c, &filter, &u, &opts, NULL, &e);
  bson_destroy(&filter);
  bson_destroy(&u);
  bson_destroy(&opts);
  mongoc_collection_destroy(c);
  return ok ? ADMIN_OK : admin_server_error("save the migration's progress", &e);
}

/* Marks the documents of `ls` whose invoice an earlier run committed: one
 * query for the whole batch rather than one duplicate-key round per commit
 * (for the batch a killed run left half done). */
static int find_committed(mig_t *g, const legacy_t *ls, const bool *ok, size_t n, bool *done) {
  mongoc_collection_t *c = mongoc_database_get_collection(g->a->db, billing_mongo_options.events);
  bson_t filter = BSON_INITIALIZER, range, opts = BSON_INITIALIZER, proj;
  /* The batch is in _id order, so its command ids span one range (a long
   * $in list is more than some servers take). */
  char lo[CQRS_ID_MAX] = "", hi[CQRS_ID_MAX] = "";
  for (size_t i = 0; i < n; i++) {
    char cmd[CQRS_ID_MAX];
    if (!ok[i]) continue;
    snprintf(cmd, sizeof cmd, "migrate:invoice:%.40s", ls[i].v.id);
    if (!lo[0] || strcmp(cmd, lo) < 0) memcpy(lo, cmd, sizeof lo);
    if (strcmp(cmd, hi) > 0) memcpy(hi, cmd, sizeof hi);
  }
  int rc = ADMIN_OK;
  if (lo[0]) {
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "commandId", &range);
    BSON_APPEND_UTF8(&range, "$gte", lo);
    BSON_APPEND_UTF8(&range, "$lte", hi);
    bson_append_document_end(&filter, &range);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
    BSON_APPEND_INT32(&proj, "commandId", 1);
    bson_append_document_end(&opts, &proj);
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, &filter, &opts, NULL);
    const bson_t *doc;
    while (mongoc_cursor_next(cur, &doc)) {
      const char *cmd = admin_str(doc, "commandId");
      for (size_t i = 0; cmd && i < n; i++) {
        if (ok[i] && !strcmp(cmd + strlen("migrate:invoice:"), ls[i].v.id)) done[i] = true;
      }
    }
    bson_error_t e;
    if (mongoc_cursor_error(cur, &e)) rc = admin_server_error("look for committed invoices", &e);
    mongoc_cursor_destroy(cur);
  }
  bson_destroy(&filter);
  bson_destroy(&opts);
  mongoc_collection_destroy(c);
  return rc;
}

/* Checks a document: refused (recorded) when malformed or when its number
 * belongs to an earlier document. */
static int check_doc(mig_t *g, const bson_t *doc, legacy_t *l, bool *ok) {
  cqrs_error_t err;
  if (!(*ok = legacy_parse(doc, l, &err))) return migrate_record(g, doc, true, err.message, err.name);
  bool claimed;
  const char *owner = number_owner_claim(g, l->v.number, l->v.id, &claimed);
  if (!owner) {
    admin_err("out of memory");
    return ADMIN_SERVER;
  }
  if (claimed || !strcmp(owner, l->v.id)) return ADMIN_OK;
  *ok = false;
  char reason[200];
  snprintf(reason, sizeof reason, "duplicate invoiceNumber %s: %s holds it (the first in _id order)", l->v.number,
           owner);
  return migrate_record(g, doc, true, reason, "duplicate_number");
}

/* Migrates one batch: customers first (an invoice's read document takes
 * its customer's name and e-mail), then invoices. */
static int run_batch(mig_t *g, bson_t **docs, size_t n) {
  legacy_t *ls = calloc(n ? n : 1, sizeof *ls);
  bool *ok = calloc(n ? n : 1, sizeof *ok), *done = calloc(n ? n : 1, sizeof *done);
  int rc = ls && ok && done ? ADMIN_OK : ADMIN_SERVER;
  for (size_t i = 0; !rc && i < n; i++) rc = check_doc(g, docs[i], &ls[i], &ok[i]);
  if (!rc && (g->resumed || g->restart)) rc = find_committed(g, ls, ok, n, done);
  g->resumed = false;
  for (size_t i = 0; !rc && i < n; i++) {
    if (ok[i] && !done[i]) rc = register_customer(g, &ls[i], docs[i]);
  }
  cqrs_error_t err;
  for (size_t i = 0; !rc && i < n; i++) {
    bool existed = done[i];
    if (!ok[i]) continue;
    if (!existed && migrate_invoice(g, &ls[i], &existed, &err)) rc = admin_cqrs_error("migrate an invoice", &err);
    else if (existed) g->already++;
    else g->migrated++;
  }
  free(ls);
  free(ok);
  free(done);
  return rc;
}

static void year_note(year_max_t *ym, size_t *nym, const legacy_t *l, bool *overflow) {
  size_t y = 0;
  while (y < *nym && ym[y].year != l->year) y++;
  if (y == MAX_YEARS) {
    *overflow = true;
    return;
  }
  if (y == *nym) ym[(*nym)++] = (year_max_t){l->year, 0, ""};
  if (l->sequence > ym[y].seq) {
    ym[y].seq = l->sequence;
    memcpy(ym[y].number, l->v.number, sizeof ym[y].number);
  }
}

/* One pass over the whole legacy collection in _id order, before any
 * invoice is recorded: the first valid document with each number owns it,
 * and each year's book learns the highest number of the year among the
 * documents that will migrate, so that no migrated invoice ever holds a
 * number its book could give again. */
static int survey(mig_t *g) {
  mongoc_collection_t *c = mongoc_database_get_collection(g->a->db, g->source);
  bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, sort;
  BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
  BSON_APPEND_INT32(&sort, "_id", 1);
  bson_append_document_end(&opts, &sort);
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, &filter, &opts, NULL);
  year_max_t ym[MAX_YEARS];
  size_t nym = 0;
  const bson_t *doc;
  int rc = ADMIN_OK;
  cqrs_error_t err;
  bson_error_t e;
  int64_t total = mongoc_collection_estimated_document_count(c, NULL, NULL, NULL, &e), seen = 0;
  admin_progress_t prog;
  admin_progress_start(&prog, "migrate: legacy numbers", total > 0 ? total : 0);
  while (!rc && mongoc_cursor_next(cur, &doc)) {
    if (++seen % 1000 == 0) admin_progress_update(&prog, seen);
    legacy_t l;
    bool claimed, overflow = false;
    if (!legacy_parse(doc, &l, &err)) continue;
    if (!number_owner_claim(g, l.v.number, l.v.id, &claimed)) rc = ADMIN_SERVER;
    if (!claimed) continue; /* a duplicate: it will not migrate */
    year_note(ym, &nym, &l, &overflow);
    if (!overflow) continue;
    year_max_t one = {l.year, l.sequence, ""};
    memcpy(one.number, l.v.number, sizeof one.number);
    if (import_books(g, &one, 1, &err)) rc = admin_cqrs_error("tell a book its number", &err);
  }
  if (!rc && mongoc_cursor_error(cur, &e)) rc = admin_server_error("read the legacy documents", &e);
  if (!rc) {
    prog.total = seen;
    admin_progress_update(&prog, seen);
    admin_progress_end(&prog);
  }
  if (!rc && import_books(g, ym, nym, &err)) rc = admin_cqrs_error("tell the books their numbers", &err);
  for (size_t i = 0; !rc && !g->quiet && !g->a->json && i < nym; i++)
    printf("book %04d: numbering continues after %s\n", ym[i].year, ym[i].number);
  mongoc_cursor_destroy(cur);
  bson_destroy(&filter);
  bson_destroy(&opts);
  mongoc_collection_destroy(c);
  return rc;
}

/* Projects what earlier runs committed but did not project (killed between
 * a commit and its projection), from the projection's checkpoint. */
typedef struct catchup {
  mig_t *g;
  admin_progress_t prog;
  int64_t from;
  cqrs_code_t rc;
  cqrs_error_t err;
} catchup_t;

static bool catch_up_one(const cqrs_event_t *e, void *data) {
  catchup_t *c = data;
  if ((e->position - c->from) % 1000 == 0) admin_progress_update(&c->prog, e->position - c->from);
  if (!admin_projection_wants(&admin_projections[0], e->type)) return true;
  c->rc = memproj_apply(c->g->mp, e, &c->err);
  if (e->position > c->g->projected) c->g->projected = e->position;
  return c->rc == CQRS_OK;
}

static int save_checkpoint(mig_t *g) {
  int rc = memproj_flush(g->mp);
  if (rc) return rc;
  cqrs_error_t err;
  int64_t at;
  if (cqrs_checkpoint_store_load(g->a->cp, admin_projections[0].name, &at, &err))
    return admin_cqrs_error("read a checkpoint", &err);
  if (g->projected > at && cqrs_checkpoint_store_save(g->a->cp, admin_projections[0].name, g->projected, &err))
    return admin_cqrs_error("save a checkpoint", &err);
  return ADMIN_OK;
}

static int catch_up(mig_t *g) {
  cqrs_error_t err;
  int64_t from, head;
  if (cqrs_checkpoint_store_load(g->a->cp, admin_projections[0].name, &from, &err) ||
      cqrs_store_head(g->a->store, &head, &err))
    return admin_cqrs_error("read the checkpoint and the head", &err);
  if (from >= head) return ADMIN_OK;
  catchup_t c = {.g = g, .from = from};
  admin_progress_start(&c.prog, "migrate: projecting what was committed", head - from);
  if (cqrs_store_read_all(g->a->store, from + 1, SIZE_MAX, catch_up_one, &c, &err))
    return c.rc ? admin_cqrs_error("project the events", &c.err) : admin_cqrs_error("read the event store", &err);
  if (c.rc) return admin_cqrs_error("project the events", &c.err);
  admin_progress_update(&c.prog, head - from);
  admin_progress_end(&c.prog);
  return save_checkpoint(g);
}

static int load_progress(mig_t *g) {
  g->last_id[0] = '\0';
  mongoc_collection_t *c = mongoc_database_get_collection(g->a->db, MIGRATE_PROGRESS);
  bson_t filter = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&filter, "_id", g->source);
  if (g->restart) {
    /* From the first document: the counts start again too. */
    bson_error_t e;
    bool ok = mongoc_collection_delete_one(c, &filter, NULL, NULL, &e);
    bson_destroy(&filter);
    mongoc_collection_destroy(c);
    return ok ? ADMIN_OK : admin_server_error("reset the migration's progress", &e);
  }
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, &filter, NULL, NULL);
  const bson_t *doc;
  if (mongoc_cursor_next(cur, &doc)) {
    const char *last = admin_str(doc, "lastId");
    if (last) snprintf(g->last_id, sizeof g->last_id, "%s", last);
  }
  bson_error_t e;
  int rc = mongoc_cursor_error(cur, &e) ? admin_server_error("read the migration's progress", &e) : ADMIN_OK;
  mongoc_cursor_destroy(cur);
  bson_destroy(&filter);
  mongoc_collection_destroy(c);
  if (!rc && g->last_id[0] && !g->quiet && !g->a->json) printf("resuming after %s\n", g->last_id);
  g->resumed = true;
  return rc;
}

static void free_docs(bson_t **docs, size_t n) {
  for (size_t i = 0; i < n; i++) bson_destroy(docs[i]);
}

/* For a test of a run killed part-way: BILLING_ADMIN_KILL_AFTER_BATCH=K
 * kills the process once its K-th batch's commits are written, before
 * that batch's checkpoint is saved (the point where a re-run has the most
 * to sort out). Unset: nothing. */
static void killed_after_batch(long batches) {
  const char *k = getenv("BILLING_ADMIN_KILL_AFTER_BATCH");
  if (k && *k && atol(k) == batches) raise(SIGKILL);
}

static int migrate_all(mig_t *g) {
  mongoc_collection_t *c = mongoc_database_get_collection(g->a->db, g->source);
  bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, sort, range;
  if (g->last_id[0]) {
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "_id", &range);
    BSON_APPEND_UTF8(&range, "$gt", g->last_id);
    bson_append_document_end(&filter, &range);
  }
  BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
  BSON_APPEND_INT32(&sort, "_id", 1);
  bson_append_document_end(&opts, &sort);
  bson_error_t e;
  int64_t total = mongoc_collection_count_documents(c, &filter, NULL, NULL, NULL, &e);
  int rc = total < 0 ? admin_server_error("count the legacy documents", &e) : ADMIN_OK;
  mongoc_cursor_t *cur = rc ? NULL : mongoc_collection_find_with_opts(c, &filter, &opts, NULL);
  bson_t **docs = calloc((size_t)g->batch, sizeof *docs);
  size_t n = 0;
  long batches = 0;
  int64_t done = 0;
  admin_progress_t prog;
  admin_progress_start(&prog, "migrate", total);
  const bson_t *doc;
  while (!rc && cur && docs) {
    bool more = mongoc_cursor_next(cur, &doc);
    if (more) docs[n++] = bson_copy(doc);
    if (n == (size_t)g->batch || (!more && n)) {
      if (!(rc = run_batch(g, docs, n))) {
        killed_after_batch(++batches);
        rc = save_checkpoint(g);
      }
      admin_doc_id(docs[n - 1], g->last_id, sizeof g->last_id);
      if (!rc) rc = save_progress(g, false);
      g->migrated = g->already = 0;
      done += (int64_t)n;
      free_docs(docs, n);
      n = 0;
      admin_progress_update(&prog, done);
    }
    if (!more) break;
  }
  if (docs) free_docs(docs, n);
  free(docs);
  if (cur && !rc && mongoc_cursor_error(cur, &e)) rc = admin_server_error("read the legacy documents", &e);
  if (!rc) admin_progress_end(&prog);
  if (!rc) rc = save_progress(g, true);
  mongoc_cursor_destroy(cur);
  bson_destroy(&filter);
  bson_destroy(&opts);
  mongoc_collection_destroy(c);
  return rc;
}

/* ---- the report: totals over every run, the progress document and the rejects ---- */

typedef struct kinds {
  char name[CQRS_NAME_MAX];
  int64_t n;
} kinds_t;

static void count_kind(kinds_t *k, size_t *nk, size_t cap, const char *name) {
  size_t i = 0;
  while (i < *nk && strcmp(k[i].name, name)) i++;
  if (i == *nk) {
    if (*nk == cap) return;
    snprintf(k[(*nk)++].name, sizeof k[i].name, "%s", name);
  }
  k[i].n++;
}

typedef struct totals {
  int64_t migrated, refused, conflicts;
  kinds_t kinds[32];
  size_t nkinds;
} totals_t;

static void list_rejects(mig_t *g, mongoc_cursor_t *cur, bson_t *refused, bson_t *conflicts, totals_t *t) {
  const bson_t *doc;
  while (mongoc_cursor_next(cur, &doc)) {
    char id[LEGACY_ID_MAX + 32], key[16];
    const char *k;
    admin_doc_id(doc, id, sizeof id);
    const char *reason = admin_str(doc, "reason"), *kind = admin_str(doc, "kind");
    bson_iter_t it;
    bool migrated = bson_iter_init_find(&it, doc, "migrated") && bson_iter_as_bool(&it);
    if (!g->quiet && !g->a->json)
      printf("%s %s: %s\n", migrated ? "conflict" : "refused", id, reason ? reason : "?");
    bson_t item;
    bson_uint32_to_string((uint32_t)(migrated ? t->conflicts++ : t->refused++), &k, key, sizeof key);
    bson_append_document_begin(migrated ? conflicts : refused, k, -1, &item);
    BSON_APPEND_UTF8(&item, "id", id);
    BSON_APPEND_UTF8(&item, "reason", reason ? reason : "?");
    BSON_APPEND_UTF8(&item, "kind", kind ? kind : "other");
    bson_append_document_end(migrated ? conflicts : refused, &item);
    count_kind(t->kinds, &t->nkinds, sizeof t->kinds / sizeof t->kinds[0], kind ? kind : "other");
  }
}

static void print_report(mig_t *g, const totals_t *t) {
  printf("step 2: %lld documents migrated, %lld refused (left untouched), %lld migrated with a conflict; all "
         "listed in %s\n",
         (long long)t->migrated, (long long)t->refused, (long long)t->conflicts, MIGRATE_REJECTS);
  if (t->nkinds) {
    printf("        by reason:");
    for (size_t i = 0; i < t->nkinds; i++) printf("%s %s %lld", i ? "," : "", t->kinds[i].name, (long long)t->kinds[i].n);
    printf("\n");
  }
  printf("        customers: %lld already in the store, %lld registered by this run\n", g->customers_known,
         g->customers_appended);
  printf("step 3: switch reads over with `billing-admin flag mongodb_cqs_enabled shadow`, then a\n"
         "        percentage, then on (docs/operations.md, the migration runbook)\n");
}

static int report(mig_t *g) {
  mongoc_collection_t *p = mongoc_database_get_collection(g->a->db, MIGRATE_PROGRESS);
  mongoc_collection_t *r = mongoc_database_get_collection(g->a->db, MIGRATE_REJECTS);
  bson_t filter = BSON_INITIALIZER, rf = BSON_INITIALIZER, opts = BSON_INITIALIZER, sort;
  BSON_APPEND_UTF8(&filter, "_id", g->source);
  BSON_APPEND_UTF8(&rf, "source", g->source);
  BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
  BSON_APPEND_INT32(&sort, "_id", 1);
  bson_append_document_end(&opts, &sort);
  totals_t t;
  memset(&t, 0, sizeof t);
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(p, &filter, NULL, NULL);
  const bson_t *doc;
  if (mongoc_cursor_next(cur, &doc)) t.migrated = admin_int64(doc, "migrated", 0);
  mongoc_cursor_destroy(cur);
  bson_t out = BSON_INITIALIZER, refused, conflicts, kinds;
  BSON_APPEND_ARRAY_BEGIN(&out, "malformed", &refused);
  bson_t conflicts_list = BSON_INITIALIZER;
  cur = mongoc_collection_find_with_opts(r, &rf, &opts, NULL);
  list_rejects(g, cur, &refused, &conflicts_list, &t);
  bson_append_array_end(&out, &refused);
  bson_error_t e;
  int rc = mongoc_cursor_error(cur, &e) ? admin_server_error("list the refused documents", &e) : ADMIN_OK;
  mongoc_cursor_destroy(cur);
  BSON_APPEND_ARRAY_BEGIN(&out, "conflicts", &conflicts);
  bson_concat(&conflicts, &conflicts_list);
  bson_append_array_end(&out, &conflicts);
  BSON_APPEND_DOCUMENT_BEGIN(&out, "byReason", &kinds);
  for (size_t i = 0; i < t.nkinds; i++) BSON_APPEND_INT64(&kinds, t.kinds[i].name, t.kinds[i].n);
  bson_append_document_end(&out, &kinds);
  BSON_APPEND_UTF8(&out, "source", g->source);
  BSON_APPEND_INT64(&out, "migrated", t.migrated);
  BSON_APPEND_INT64(&out, "malformedCount", t.refused);
  BSON_APPEND_INT64(&out, "conflictCount", t.conflicts);
  BSON_APPEND_INT64(&out, "customersKnown", g->customers_known);
  BSON_APPEND_INT64(&out, "customersAppended", g->customers_appended);
  if (!rc && g->a->json) admin_print_json(stdout, &out);
  else if (!rc) print_report(g, &t);
  bson_destroy(&conflicts_list);
  bson_destroy(&out);
  bson_destroy(&filter);
  bson_destroy(&rf);
  bson_destroy(&opts);
  mongoc_collection_destroy(p);
  mongoc_collection_destroy(r);
  return rc ? rc : t.refused || t.conflicts ? ADMIN_PROBLEMS : ADMIN_OK;
}

/* Nothing to migrate is a wrong database or --from, unless --allow-empty
 * says the collections are only being set up. Checked before step 1
 * creates anything. */
static int require_source(mig_t *g) {
  if (g->a->allow_empty) return ADMIN_OK;
  mongoc_collection_t *c = mongoc_database_get_collection(g->a->db, g->source);
  bson_t all = BSON_INITIALIZER, opts = BSON_INITIALIZER;
  BSON_APPEND_INT64(&opts, "limit", 1);
  bson_error_t e;
  int64_t n = mongoc_collection_count_documents(c, &all, &opts, NULL, NULL, &e);
  bson_destroy(&all);
  bson_destroy(&opts);
  mongoc_collection_destroy(c);
  if (n < 0) return admin_server_error("count the legacy documents", &e);
  if (n > 0) return ADMIN_OK;
  admin_err("migrate: no documents in %s.%s, nothing to migrate: a wrong database or --from? (--allow-empty "
            "creates the collections all the same)",
            cqrs_mongo_database(g->a->m), g->source);
  return ADMIN_SERVER;
}

static int work(admin_t *a, cqrs_dispatcher_t *d, void *data) {
  mig_t *g = data;
  g->a = a;
  g->d = d;
  cqrs_error_t err;
  int rc = require_source(g);
  if (rc) return rc;
  if (billing_mongo_indexes(a->m, &err)) return admin_cqrs_error("create the indexes", &err);
  if (!g->quiet && !a->json)
    printf("step 1: collections and indexes ready in %s at %s\n", cqrs_mongo_database(a->m), a->redacted);
  g->mp = memproj_new(a, NULL, true);
  if (!g->mp) return ADMIN_SERVER;
  rc = load_progress(g);
  if (!rc) rc = catch_up(g);
  if (!rc) rc = known_customers_load(g);
  if (!rc) rc = survey(g);
  if (!rc) rc = migrate_all(g);
  fflush(stdout);
  if (!rc) rc = report(g);
  memproj_destroy(g->mp);
  known_free(g);
  return rc;
}

int admin_migrate(admin_t *a, int argc, char **argv) {
  static const char *const specs[] = {"from=", "batch=", "restart", "quiet", NULL};
  admin_args_t args;
  int rc = admin_parse(a, argc, argv, specs, usage, 0, 0, &args);
  if (rc) return rc < 0 ? ADMIN_OK : rc;
  mig_t g;
  memset(&g, 0, sizeof g);
  g.source = args.vals[0] ? args.vals[0] : BILLING_LEGACY_COLLECTION;
  g.batch = 500;
  if (args.vals[1] && admin_int("--batch", args.vals[1], 1, 100000, &g.batch)) return ADMIN_USAGE;
  g.restart = args.vals[2] != NULL;
  g.quiet = args.vals[3] != NULL;
  return admin_run_dispatcher(a, false, work, &g);
}
