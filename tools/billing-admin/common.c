/* What the subcommands share: connecting, options, output. */
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "admin.h"
#include "billing_mongo.h"

void admin_err(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("billing-admin: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

int admin_server_error(const char *what, const bson_error_t *e) {
  /* Driver messages may quote the host, never the password. */
  admin_err("cannot %s: %s (code %u)", what, e->message, e->code);
  return ADMIN_SERVER;
}

int admin_cqrs_error(const char *what, const cqrs_error_t *e) {
  admin_err("cannot %s: %s", what, e->message);
  return e->code == CQRS_ESTORE ? ADMIN_SERVER : ADMIN_PROBLEMS;
}

static void no_log(mongoc_log_level_t level, const char *domain, const char *message, void *data) {
  (void)level, (void)domain, (void)message, (void)data;
}

/* The collections of the billing context, the legacy one included: a
 * database with none of them is not the application's. */
static const char *const app_collections[] = {"billing_commands",  "billing_queries",     "billing_customers",
                                              "billing_balances",  "billing_checkpoints", "billing_dead_letters",
                                              BILLING_LEGACY_COLLECTION, BILLING_FLAGS_COLLECTION, "cqrs_instances", NULL};

static int require_app_data(admin_t *a) {
  bson_error_t be;
  char **names = mongoc_database_get_collection_names_with_opts(a->db, NULL, &be);
  if (!names) return admin_server_error("list the collections", &be);
  bool found = false;
  for (char **n = names; *n && !found; n++) {
    for (size_t i = 0; app_collections[i] && !found; i++) found = !strcmp(*n, app_collections[i]);
  }
  bson_strfreev(names);
  if (found) return ADMIN_OK;
  admin_err("database '%s' holds none of the billing context's collections (billing_commands, billing_queries, "
            "billing_documents...): a wrong database in the URI? (the default is 'cqrs'; --allow-empty uses it "
            "all the same)",
            mongoc_database_get_name(a->db));
  return ADMIN_SERVER;
}

/* Why the ping failed: the server answered and refused the credentials, or
 * it could not be reached at all. */
static int ping_failed(admin_t *a, const mongoc_uri_t *parsed, const bson_error_t *be) {
  if (be->domain == MONGOC_ERROR_CLIENT && be->code == MONGOC_ERROR_CLIENT_AUTHENTICATE) {
    const char *user = mongoc_uri_get_username(parsed);
    admin_err("cannot log in to MongoDB at %s as %s: %s", a->redacted, user ? user : "(no user)", be->message);
  } else {
    admin_err("cannot reach MongoDB at %s: %s", a->redacted, be->message);
  }
  return ADMIN_SERVER;
}

int admin_connect(admin_t *a, uv_loop_t *loop) {
  if (a->m) return ADMIN_OK;
  const char *uri = a->uri;
  if (!uri || !*uri) uri = getenv("BILLING_MONGODB_URI");
  if (!uri || !*uri) uri = getenv("MONGODB_URI");
  if (!uri || !*uri) {
    admin_err("no MongoDB URI: give --uri URI or set BILLING_MONGODB_URI");
    return ADMIN_SERVER;
  }
  mongoc_log_set_handler(no_log, NULL); /* the tool says what failed itself */
  cqrs_error_t err;
  if (cqrs_registry_new(&a->reg, &err) || billing_register(a->reg, &err)) {
    admin_err("cannot register the billing types");
    return ADMIN_SERVER;
  }
  bson_error_t be;
  mongoc_uri_t *parsed = mongoc_uri_new_with_error(uri, &be);
  if (!parsed) {
    /* The driver's message can quote the URI, secrets included. */
    admin_err("the MongoDB URI is not valid (expected mongodb://[user:password@]host[:port][/database])");
    return ADMIN_SERVER;
  }
  bson_free(a->redacted);
  a->redacted = billing_mongo_uri_redacted(uri);
  /* The database: the URI's, else libcqrs-mongo's default, "cqrs". */
  if (cqrs_mongo_new(uri, &billing_mongo_options, a->reg, loop, &a->m, &err)) {
    mongoc_uri_destroy(parsed);
    admin_err("%s", err.message);
    return ADMIN_SERVER;
  }
  a->client = mongoc_client_new_from_uri(parsed);
  if (!a->client) {
    mongoc_uri_destroy(parsed);
    admin_err("the MongoDB URI is not valid");
    return ADMIN_SERVER;
  }
  mongoc_client_set_appname(a->client, "billing-admin");
  a->db = mongoc_client_get_database(a->client, cqrs_mongo_database(a->m));
  bson_t ping = BSON_INITIALIZER;
  BSON_APPEND_INT32(&ping, "ping", 1);
  bool ok = mongoc_database_command_simple(a->db, &ping, NULL, NULL, &be);
  bson_destroy(&ping);
  int rc = ok ? ADMIN_OK : ping_failed(a, parsed, &be);
  mongoc_uri_destroy(parsed);
  if (rc) return rc;
  if (cqrs_mongo_store_new(a->m, &a->store, &err) || cqrs_mongo_readmodel_new(a->m, &a->rm, &err) ||
      cqrs_mongo_checkpoint_store_new(a->m, &a->cp, &err) || billing_mongo_keys(a->m, &a->keys, &err) ||
      cqrs_store_set_keys(a->store, a->keys, a->reg, &err) || billing_seal_read_model(a->rm, NULL, a->keys, &err)) {
    admin_err("%s", err.message);
    return ADMIN_SERVER;
  }
  return a->allow_empty || a->may_be_empty ? ADMIN_OK : require_app_data(a);
}

void admin_disconnect(admin_t *a) {
  cqrs_checkpoint_store_destroy(a->cp);
  cqrs_readmodel_destroy(a->rm);
  cqrs_store_destroy(a->store);
  cqrs_keys_destroy(a->keys);
  if (a->db) mongoc_database_destroy(a->db);
  if (a->client) mongoc_client_destroy(a->client);
  cqrs_mongo_destroy(a->m);
  cqrs_registry_destroy(a->reg);
  bson_free(a->redacted);
  a->cp = NULL, a->rm = NULL, a->store = NULL, a->keys = NULL, a->db = NULL, a->client = NULL, a->m = NULL, a->reg = NULL;
  a->redacted = NULL;
}

int admin_parse(admin_t *a, int argc, char **argv, const char *const *specs, const char *usage, int min_pos,
                int max_pos, admin_args_t *out) {
  memset(out, 0, sizeof *out);
  struct option opts[21];
  char names[16][32];
  int n = 0;
  for (; specs && specs[n] && n < 16; n++) {
    size_t len = strlen(specs[n]);
    bool arg = len && specs[n][len - 1] == '=';
    snprintf(names[n], sizeof names[n], "%.*s", (int)(arg ? len - 1 : len), specs[n]);
    opts[n] = (struct option){names[n], arg ? required_argument : no_argument, NULL, 1000 + n};
  }
  opts[n] = (struct option){"help", no_argument, NULL, 'h'};
  opts[n + 1] = (struct option){"json", no_argument, NULL, 'j'};
  opts[n + 2] = (struct option){"uri", required_argument, NULL, 'u'};
  opts[n + 3] = (struct option){"allow-empty", no_argument, NULL, 'e'};
  opts[n + 4] = (struct option){NULL, 0, NULL, 0};
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long_only(argc, argv, "h", opts, NULL)) != -1) {
    if (c == 'h') {
      fputs(usage, stdout);
      return -1;
    } else if (c == 'j') {
      a->json = true;
    } else if (c == 'u') {
      a->uri = optarg;
    } else if (c == 'e') {
      a->allow_empty = true;
    } else if (c >= 1000) {
      out->vals[c - 1000] = optarg ? optarg : "";
    } else {
      if (optopt >= 1000 || (optopt == 'u'))
        admin_err("%s: option '%s' needs a value (see %s --help)", argv[0], argv[optind - 1], argv[0]);
      else
        admin_err("%s: unknown option '%s' (see %s --help)", argv[0], argv[optind - 1], argv[0]);
      return ADMIN_USAGE;
    }
  }
  for (; optind < argc; optind++) {
    if (out->npos == max_pos || out->npos == ADMIN_MAX_POS) {
      admin_err("%s: unexpected argument '%s' (see %s --help)", argv[0], argv[optind], argv[0]);
      return ADMIN_USAGE;
    }
    out->pos[out->npos++] = argv[optind];
  }
  if (out->npos < min_pos) {
    admin_err("%s: missing argument (see %s --help)", argv[0], argv[0]);
    return ADMIN_USAGE;
  }
  return 0;
}

int admin_int(const char *opt, const char *v, long long lo, long long hi, long long *out) {
  char *end;
  long long x = v ? strtoll(v, &end, 10) : 0;
  if (!v || !*v || *end || x < lo || x > hi) {
    admin_err("%s: expected an integer in %lld..%lld, got '%s'", opt, lo, hi, v ? v : "");
    return ADMIN_USAGE;
  }
  *out = x;
  return 0;
}

void admin_print_json(FILE *f, const bson_t *doc) {
  char *s = bson_as_relaxed_extended_json(doc, NULL);
  fprintf(f, "%s\n", s ? s : "{}");
  bson_free(s);
}

void admin_value_text(const bson_iter_t *it, char *buf, size_t cap) {
  switch (bson_iter_type(it)) {
  case BSON_TYPE_UTF8:
    snprintf(buf, cap, "\"%s\"", bson_iter_utf8(it, NULL));
    break;
  case BSON_TYPE_INT32:
  case BSON_TYPE_INT64:
    snprintf(buf, cap, "%lld", (long long)bson_iter_as_int64(it));
    break;
  case BSON_TYPE_DOUBLE:
    snprintf(buf, cap, "%.17g", bson_iter_double(it));
    break;
  case BSON_TYPE_DATE_TIME:
    snprintf(buf, cap, "date(%lld)", (long long)bson_iter_date_time(it));
    break;
  case BSON_TYPE_BOOL:
    snprintf(buf, cap, "%s", bson_iter_bool(it) ? "true" : "false");
    break;
  case BSON_TYPE_NULL:
    snprintf(buf, cap, "null");
    break;
  default: {
    bson_t tmp = BSON_INITIALIZER;
    bson_append_iter(&tmp, "v", 1, it);
    char *s = bson_as_relaxed_extended_json(&tmp, NULL);
    snprintf(buf, cap, "%s", s ? s : "?");
    bson_free(s);
    bson_destroy(&tmp);
  }
  }
}

const char *admin_str(const bson_t *doc, const char *path) {
  bson_iter_t it, v;
  if (doc && bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &v) && BSON_ITER_HOLDS_UTF8(&v))
    return bson_iter_utf8(&v, NULL);
  return NULL;
}

int64_t admin_int64(const bson_t *doc, const char *path, int64_t dflt) {
  bson_iter_t it, v;
  if (doc && bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &v) &&
      (BSON_ITER_HOLDS_NUMBER(&v) || BSON_ITER_HOLDS_DATE_TIME(&v)))
    return BSON_ITER_HOLDS_DATE_TIME(&v) ? bson_iter_date_time(&v) : bson_iter_as_int64(&v);
  return dflt;
}

bool admin_doc_id(const bson_t *doc, char *buf, size_t cap) {
  bson_iter_t it;
  if (!bson_iter_init_find(&it, doc, "_id")) return false;
  if (BSON_ITER_HOLDS_UTF8(&it)) {
    snprintf(buf, cap, "%s", bson_iter_utf8(&it, NULL));
    return true;
  }
  if (BSON_ITER_HOLDS_OID(&it) && cap >= 25) {
    bson_oid_to_string(bson_iter_oid(&it), buf);
    return true;
  }
  admin_value_text(&it, buf, cap);
  return false;
}

/* ---- progress ---- */

void admin_progress_start(admin_progress_t *p, const char *label, int64_t total) {
  memset(p, 0, sizeof *p);
  p->label = label;
  p->total = total;
  p->started_ms = cqrs_now_ms();
  p->tty = isatty(2);
  p->last_decile = -1;
}

static void draw(admin_progress_t *p, bool final) {
  int64_t now = cqrs_now_ms();
  double secs = (double)(now - p->started_ms) / 1000.0;
  double rate = secs > 0 ? (double)p->done / secs : 0;
  double pct = p->total > 0 ? 100.0 * (double)p->done / (double)p->total : 100.0;
  if (pct > 100) pct = 100;
  char eta[32] = "--";
  if (rate > 0 && p->total > p->done) {
    long s = (long)((double)(p->total - p->done) / rate);
    snprintf(eta, sizeof eta, "%ldm%02lds", s / 60, s % 60);
  } else if (p->done >= p->total) {
    snprintf(eta, sizeof eta, "0m00s");
  }
  char bar[31];
  int fill = (int)(pct * 30 / 100);
  for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
  bar[30] = '\0';
  fprintf(stderr, "%s%s [%s] %5.1f%% %lld/%lld %.0f/s ETA %s%s", p->tty ? "\r\033[K" : "", p->label, bar, pct,
          (long long)p->done, (long long)p->total, rate, eta, p->tty && !final ? "" : "\n");
  fflush(stderr);
}

void admin_progress_update(admin_progress_t *p, int64_t done) {
  p->done = done;
  int64_t now = cqrs_now_ms();
  if (p->tty) {
    if (now - p->drawn_ms < 200) return;
    p->drawn_ms = now;
    draw(p, false);
    return;
  }
  int decile = p->total > 0 ? (int)(10 * done / p->total) : 10;
  if (decile != p->last_decile) {
    p->last_decile = decile;
    draw(p, false);
  }
}

void admin_progress_end(admin_progress_t *p) {
  if (p->tty || p->last_decile != 10) draw(p, true);
}
