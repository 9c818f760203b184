/* billing-admin keys, forget and verify: the subjects of personal data,
 * forgetting a customer (customer.forget: their key deleted, the fact
 * recorded), and searching every collection of the database for values
 * that must be gone (docs/privacy.md, docs/operations.md). */
#include <string.h>
#include <time.h>

#include "admin.h"

/* ---- verify: a scan of every collection, with the driver ---- */

#define VALUES_MAX 16

typedef struct finding {
  char coll[128];
  char id[CQRS_ID_MAX + 32];
  int value; /* index into the values */
} finding_t;

typedef struct scan {
  const char *values[VALUES_MAX];
  int nvalues;
  int64_t collections, documents;
  finding_t found[64];
  int nfound; /* may pass 64: only the first are kept */
} scan_t;

static bool holds(const uint8_t *b, size_t len, const char *needle) {
  size_t n = strlen(needle);
  for (size_t i = 0; n && i + n <= len; i++) {
    if (b[i] == (uint8_t)needle[0] && !memcmp(b + i, needle, n)) return true;
  }
  return false;
}

/* Every document of every collection but the server's own: the events,
 * snapshots, read models, checkpoints, dead letters, keys, the legacy
 * collection and whatever else the application keeps there. */
static int scan_all(admin_t *a, scan_t *s) {
  bson_error_t e;
  char **names = mongoc_database_get_collection_names_with_opts(a->db, NULL, &e);
  if (!names) return admin_server_error("list the collections", &e);
  int rc = ADMIN_OK;
  for (size_t i = 0; !rc && names[i]; i++) {
    if (!strncmp(names[i], "system.", 7)) continue;
    s->collections++;
    mongoc_collection_t *c = mongoc_database_get_collection(a->db, names[i]);
    bson_t filter = BSON_INITIALIZER;
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, &filter, NULL, NULL);
    const bson_t *doc;
    while (mongoc_cursor_next(cur, &doc)) {
      s->documents++;
      for (int v = 0; v < s->nvalues; v++) {
        if (!holds(bson_get_data(doc), doc->len, s->values[v])) continue;
        if (s->nfound < (int)(sizeof s->found / sizeof s->found[0])) {
          finding_t *f = &s->found[s->nfound];
          snprintf(f->coll, sizeof f->coll, "%s", names[i]);
          if (!admin_doc_id(doc, f->id, sizeof f->id)) snprintf(f->id, sizeof f->id, "?");
          f->value = v;
        }
        s->nfound++;
      }
    }
    if (mongoc_cursor_error(cur, &e)) rc = admin_server_error("read a collection", &e);
    mongoc_cursor_destroy(cur);
    bson_destroy(&filter);
    mongoc_collection_destroy(c);
  }
  bson_strfreev(names);
  return rc;
}

/* The report never prints the values themselves (they are what must be
 * gone): their number in the order given. */
static int report(admin_t *a, const char *subject, const scan_t *s) {
  if (a->json) {
    bson_t doc = BSON_INITIALIZER, arr;
    if (subject) BSON_APPEND_UTF8(&doc, "subject", subject);
    BSON_APPEND_INT32(&doc, "values", s->nvalues);
    BSON_APPEND_INT64(&doc, "collections", s->collections);
    BSON_APPEND_INT64(&doc, "documents", s->documents);
    BSON_APPEND_INT32(&doc, "found", s->nfound);
    BSON_APPEND_ARRAY_BEGIN(&doc, "where", &arr);
    for (int i = 0; i < s->nfound && i < 64; i++) {
      char key[16];
      const char *k;
      bson_uint32_to_string((uint32_t)i, &k, key, sizeof key);
      bson_t item;
      BSON_APPEND_DOCUMENT_BEGIN(&arr, k, &item);
      BSON_APPEND_UTF8(&item, "collection", s->found[i].coll);
      BSON_APPEND_UTF8(&item, "id", s->found[i].id);
      BSON_APPEND_INT32(&item, "value", s->found[i].value + 1);
      bson_append_document_end(&arr, &item);
    }
    bson_append_array_end(&doc, &arr);
    admin_print_json(stdout, &doc);
    bson_destroy(&doc);
  } else {
    printf("verify: %d value%s searched in %lld collections (%lld documents): ", s->nvalues,
           s->nvalues == 1 ? "" : "s", (long long)s->collections, (long long)s->documents);
    if (!s->nfound) {
      printf("none found\n");
    } else {
      printf("%d found\n", s->nfound);
      for (int i = 0; i < s->nfound && i < 64; i++)
        printf("  value %d in %s %s\n", s->found[i].value + 1, s->found[i].coll, s->found[i].id);
    }
  }
  return s->nfound ? ADMIN_PROBLEMS : ADMIN_OK;
}

static const char verify_usage[] =
    "usage: billing-admin verify VALUE [VALUE...] [--json]\n"
    "Searches every document of every collection of the database (events, snapshots, read models,\n"
    "checkpoints, dead letters, keys, the legacy collection...) for the exact bytes of each VALUE:\n"
    "the name or e-mail of a forgotten customer must be in none. Prints where each was found, by\n"
    "its number (never the value). Exit 0: none found; 1: found.\n";

int admin_verify(admin_t *a, int argc, char **argv) {
  admin_args_t args;
  int rc = admin_parse(a, argc, argv, NULL, verify_usage, 1, ADMIN_MAX_POS, &args);
  if (rc) return rc < 0 ? ADMIN_OK : rc;
  scan_t s;
  memset(&s, 0, sizeof s);
  for (int i = 0; i < args.npos; i++) {
    if (!*args.pos[i]) {
      admin_err("verify: an empty value matches everything");
      return ADMIN_USAGE;
    }
    s.values[s.nvalues++] = args.pos[i];
  }
  if ((rc = admin_connect(a, NULL))) return rc;
  return (rc = scan_all(a, &s)) ? rc : report(a, NULL, &s);
}

/* ---- keys ---- */

static const char keys_usage[] =
    "usage: billing-admin keys [--forgotten] [--json]\n"
    "Lists the subjects of personal data (customers) the key store knows: those with a key, and those\n"
    "forgotten (their key deleted), with when. Never prints a key.\n";

typedef struct lister {
  bool json, only_forgotten;
  int64_t keyed, forgotten;
} lister_t;

static void when(int64_t ms, char *buf, size_t cap) {
  if (!ms) {
    snprintf(buf, cap, "-");
    return;
  }
  time_t secs = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static bool list_one(const cqrs_subject_info_t *info, void *data) {
  lister_t *l = data;
  bool gone = info->state == CQRS_SUBJECT_FORGOTTEN;
  if (gone) l->forgotten++;
  else l->keyed++;
  if (l->only_forgotten && !gone) return true;
  if (l->json) {
    bson_t doc = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&doc, "subject", info->subject);
    BSON_APPEND_UTF8(&doc, "state", gone ? "forgotten" : "keyed");
    if (info->created_at) BSON_APPEND_DATE_TIME(&doc, "createdAt", info->created_at);
    if (info->forgotten_at) BSON_APPEND_DATE_TIME(&doc, "forgottenAt", info->forgotten_at);
    admin_print_json(stdout, &doc);
    bson_destroy(&doc);
  } else {
    char c[32], f[32];
    when(info->created_at, c, sizeof c);
    when(info->forgotten_at, f, sizeof f);
    printf("%-30s %-9s %-20s %s\n", info->subject, gone ? "forgotten" : "keyed", c, f);
  }
  return true;
}

int admin_keys(admin_t *a, int argc, char **argv) {
  static const char *const specs[] = {"forgotten", NULL};
  admin_args_t args;
  int rc = admin_parse(a, argc, argv, specs, keys_usage, 0, 0, &args);
  if (rc) return rc < 0 ? ADMIN_OK : rc;
  if ((rc = admin_connect(a, NULL))) return rc;
  lister_t l = {a->json, args.vals[0] != NULL, 0, 0};
  if (!a->json) printf("%-30s %-9s %-20s %s\n", "SUBJECT", "STATE", "CREATED", "FORGOTTEN");
  cqrs_error_t err;
  if (cqrs_keys_list(a->keys, list_one, &l, &err)) return admin_cqrs_error("list the keys", &err);
  if (!a->json) printf("%lld with a key, %lld forgotten\n", (long long)l.keyed, (long long)l.forgotten);
  return ADMIN_OK;
}

/* ---- forget ---- */

static const char forget_usage[] =
    "usage: billing-admin forget CUSTOMER [--no-verify] [--json]\n"
    "Forgets a customer: sends customer.forget, which deletes their key and records cqrs.forgotten on\n"
    "their stream (the running application's projections then overwrite their name and e-mail). Their\n"
    "invoices and amounts stay. Before the forget the tool reads what the store knows of them (name,\n"
    "every e-mail), in memory only; after it, it searches every collection for those values, as\n"
    "`verify` does, and reports none or where (--no-verify: skip). Exit 0: forgotten (or already),\n"
    "nothing left; 1: an unknown customer, or values found; 3: server errors.\n";

/* What the store knows of the customer: the values to search for after. */
typedef struct known {
  char values[VALUES_MAX][BILLING_EMAIL_MAX];
  int n;
  bool forgotten;
} known_t;

static void keep_value(known_t *k, const char *v) {
  if (!*v || !strcmp(v, CQRS_FORGOTTEN) || k->n == VALUES_MAX) return;
  for (int i = 0; i < k->n; i++) {
    if (!strcmp(k->values[i], v)) return;
  }
  snprintf(k->values[k->n++], sizeof k->values[0], "%s", v);
}

static bool learn(const cqrs_event_t *e, void *data) {
  known_t *k = data;
  if (e->type == &billing_customer_registered) {
    const billing_customer_registered_t *p = e->payload;
    keep_value(k, p->name);
    keep_value(k, p->email);
  } else if (e->type == &billing_customer_email_changed) {
    const billing_email_changed_t *p = e->payload;
    keep_value(k, p->email);
    keep_value(k, p->previous);
  } else if (e->type == &cqrs_forgotten_event_type) {
    k->forgotten = true;
  }
  return true;
}

typedef struct forget_job {
  const char *customer;
  bool verify;
  known_t known;
  cqrs_error_t error;
  bool duplicate, rejected;
} forget_job_t;

static int forget_work(admin_t *a, cqrs_dispatcher_t *d, void *data) {
  forget_job_t *j = data;
  cqrs_error_t err;
  if (cqrs_store_read_stream(a->store, billing_customer.name, j->customer, 1, learn, &j->known, &err))
    return admin_cqrs_error("read the customer's events", &err);
  billing_forget_customer_t c;
  memset(&c, 0, sizeof c);
  snprintf(c.customer_id, sizeof c.customer_id, "%s", j->customer);
  cqrs_command_t *cmd;
  if (cqrs_command_new(&billing_forget_customer, &c, &cmd, &err)) return admin_cqrs_error("build the command", &err);
  cqrs_code_t rc = cqrs_dispatcher_execute(d, cmd, &j->error, &j->duplicate);
  if (rc == CQRS_EREJECTED) {
    j->rejected = true;
    return ADMIN_PROBLEMS;
  }
  return rc ? admin_cqrs_error("forget the customer", &j->error) : ADMIN_OK;
}

int admin_forget(admin_t *a, int argc, char **argv) {
  static const char *const specs[] = {"no-verify", NULL};
  admin_args_t args;
  int rc = admin_parse(a, argc, argv, specs, forget_usage, 1, 1, &args);
  if (rc) return rc < 0 ? ADMIN_OK : rc;
  if (strlen(args.pos[0]) >= CQRS_ID_MAX) {
    admin_err("forget: a customer id has at most %d characters", CQRS_ID_MAX - 1);
    return ADMIN_USAGE;
  }
  forget_job_t j;
  memset(&j, 0, sizeof j);
  j.customer = args.pos[0];
  rc = admin_run_dispatcher(a, false, forget_work, &j);
  if (j.rejected) {
    admin_err("forget: %s", j.error.message);
  } else if (!rc && !a->json) {
    printf("customer %s: %s\n", j.customer,
           j.known.forgotten ? "was forgotten already" : "forgotten (its key deleted, cqrs.forgotten recorded)");
  }
  if (!rc && !j.rejected && !(rc = admin_connect(a, NULL))) /* the dispatcher's run let go of the connection */
    admin_audit(a, "customer.forget", j.customer, j.known.forgotten ? "forgotten already" : "forgotten");
  if (!rc && !args.vals[0] && !j.known.n) {
    if (!a->json) printf("verify: nothing of %s is known any more to search for; `billing-admin verify VALUE...` "
                         "searches for what you know\n", j.customer);
  } else if (!rc && !args.vals[0]) {
    scan_t s;
    memset(&s, 0, sizeof s);
    for (int i = 0; i < j.known.n; i++) s.values[s.nvalues++] = j.known.values[i];
    if (!(rc = admin_connect(a, NULL)) && !(rc = scan_all(a, &s))) rc = report(a, j.customer, &s);
  }
  explicit_bzero(&j.known, sizeof j.known);
  return rc;
}
