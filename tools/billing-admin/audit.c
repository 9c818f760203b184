/* audit: the record of what operators did with this tool, in the store
 * (cqrs_audit: {at, who, action, target, detail, arguments}): flag changes,
 * repairs, rebuilds, projection pauses, resumes, resets, skips and
 * replays, dead-letter replays and drops, customers forgotten. The arguments are the command line with
 * every secret masked: a URI as billing_mongo_uri_redacted shows it. */
#include <pwd.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "admin.h"
#include "billing_mongo.h"

#define AUDIT "cqrs_audit"

static const char usage[] =
    "usage: billing-admin audit [-n N] [--action PREFIX] [--json]\n"
    "The newest N admin actions recorded in cqrs_audit (default 50), newest last: when, who\n"
    "(user@host), the action (flag.set, check.repair, rebuild, projection.pause|resume|reset|skip|replay,\n"
    "dead-letters.replay|drop, customer.forget), its target, what came of it and the command line\n"
    "(secrets masked). --action keeps those whose action starts with PREFIX.\n"
    "Exit: 0, 2 usage, 3 server error.\n";

static void who(char *out, size_t cap) {
  char host[256] = "unknown-host";
  gethostname(host, sizeof host - 1);
  host[sizeof host - 1] = '\0';
  const char *user = getenv("USER");
  struct passwd *pw = getpwuid(geteuid());
  if (pw && pw->pw_name) user = pw->pw_name;
  snprintf(out, cap, "%s@%s", user ? user : "unknown", host);
}

/* The command line with its secrets masked: a URI (the value of --uri, or
 * any argument that reads as one) is shown redacted. */
static void arguments(const admin_t *a, bson_t *arr) {
  bool uri_next = false;
  for (int i = 0; i < a->argc; i++) {
    const char *v = a->argv[i];
    char key[16];
    const char *k;
    bson_uint32_to_string((uint32_t)i, &k, key, sizeof key);
    bool is_uri = uri_next || !strncmp(v, "mongodb://", 10) || !strncmp(v, "mongodb+srv://", 14);
    uri_next = !strcmp(v, "--uri") || !strcmp(v, "-uri");
    const char *value = v;
    char *masked = NULL;
    if (!strncmp(v, "--uri=", 6)) {
      char *r = billing_mongo_uri_redacted(v + 6);
      masked = bson_strdup_printf("--uri=%s", r ? r : "***");
      bson_free(r);
    } else if (is_uri) {
      masked = billing_mongo_uri_redacted(v);
      if (!masked) masked = bson_strdup("***");
    }
    bson_append_utf8(arr, k, -1, masked ? masked : value, -1);
    bson_free(masked);
  }
}

void admin_audit(admin_t *a, const char *action, const char *target, const char *detail) {
  if (!a->db) return;
  char by[320];
  who(by, sizeof by);
  bson_t doc = BSON_INITIALIZER, arr;
  BSON_APPEND_DATE_TIME(&doc, "at", cqrs_now_ms());
  BSON_APPEND_UTF8(&doc, "who", by);
  BSON_APPEND_UTF8(&doc, "action", action);
  BSON_APPEND_UTF8(&doc, "target", target ? target : "");
  BSON_APPEND_UTF8(&doc, "detail", detail ? detail : "");
  BSON_APPEND_ARRAY_BEGIN(&doc, "arguments", &arr);
  arguments(a, &arr);
  bson_append_array_end(&doc, &arr);
  mongoc_collection_t *c = mongoc_database_get_collection(a->db, AUDIT);
  bson_error_t e;
  if (!mongoc_collection_insert_one(c, &doc, NULL, NULL, &e))
    admin_err("the audit record of %s was not written: %s", action, e.message);
  mongoc_collection_destroy(c);
  bson_destroy(&doc);
}

int admin_audit_cmd(admin_t *a, int argc, char **argv) {
  static const char *const specs[] = {"n=", "action=", NULL};
  admin_args_t args;
  int rc = admin_parse(a, argc, argv, specs, usage, 0, 0, &args);
  if (rc) return rc < 0 ? ADMIN_OK : rc;
  long long n = 50;
  if (args.vals[0] && admin_int("-n", args.vals[0], 1, 1000000, &n)) return ADMIN_USAGE;
  if ((rc = admin_connect(a, NULL))) return rc;
  mongoc_collection_t *c = mongoc_database_get_collection(a->db, AUDIT);
  bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, sort;
  if (args.vals[1]) {
    /* A prefix, matched without a regular expression: [PREFIX, PREFIX + U+10FFFF). */
    bson_t range;
    char *upper = bson_strdup_printf("%s\xf4\x8f\xbf\xbf", args.vals[1]);
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "action", &range);
    BSON_APPEND_UTF8(&range, "$gte", args.vals[1]);
    BSON_APPEND_UTF8(&range, "$lt", upper);
    bson_append_document_end(&filter, &range);
    bson_free(upper);
  }
  BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
  BSON_APPEND_INT32(&sort, "at", -1);
  BSON_APPEND_INT32(&sort, "_id", -1);
  bson_append_document_end(&opts, &sort);
  BSON_APPEND_INT64(&opts, "limit", n);
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, &filter, &opts, NULL);
  const bson_t *doc;
  bson_t **docs = bson_malloc0((size_t)n * sizeof *docs);
  size_t got = 0;
  while (got < (size_t)n && mongoc_cursor_next(cur, &doc)) docs[got++] = bson_copy(doc);
  bson_error_t e;
  rc = mongoc_cursor_error(cur, &e) ? admin_server_error("read the audit record", &e) : ADMIN_OK;
  for (size_t i = got; i-- > 0;) { /* newest last */
    if (!rc && a->json) {
      admin_print_json(stdout, docs[i]);
    } else if (!rc) {
      time_t secs = (time_t)(admin_int64(docs[i], "at", 0) / 1000);
      struct tm tm;
      char when[32];
      gmtime_r(&secs, &tm);
      strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
      const char *w = admin_str(docs[i], "who"), *act = admin_str(docs[i], "action");
      const char *t = admin_str(docs[i], "target"), *d = admin_str(docs[i], "detail");
      printf("%s %s %s %s%s%s\n", when, w ? w : "?", act ? act : "?", t ? t : "", d && *d ? ": " : "",
             d ? d : "");
    }
    bson_destroy(docs[i]);
  }
  if (!rc && !a->json && !got) printf("no admin actions recorded\n");
  bson_free(docs);
  mongoc_cursor_destroy(cur);
  bson_destroy(&filter);
  bson_destroy(&opts);
  mongoc_collection_destroy(c);
  return rc;
}
