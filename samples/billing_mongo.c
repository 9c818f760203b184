#include "billing_mongo.h"

#include <ctype.h>
#include <mongoc/mongoc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>


const cqrs_mongo_options_t billing_mongo_options = {
    .events = "billing_commands",
    .snapshots = "billing_snapshots",
    .checkpoints = "billing_checkpoints",
    .dead_letters = "billing_dead_letters",
    .keys = "billing_keys",
};

static int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

cqrs_code_t billing_mongo_keys(cqrs_mongo_t *m, cqrs_keys_t **out, cqrs_error_t *err) {
  cqrs_keys_options_t o;
  cqrs_keys_options_init(&o);
  uint8_t master[32];
  const char *hex = getenv("BILLING_MASTER_KEY");
  if (hex && *hex) {
    if (strlen(hex) != 64) return cqrs_error_set(err, CQRS_EINVAL, "BILLING_MASTER_KEY must be 64 hex digits");
    for (size_t i = 0; i < 32; i++) {
      int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
      if (hi < 0 || lo < 0) return cqrs_error_set(err, CQRS_EINVAL, "BILLING_MASTER_KEY must be 64 hex digits");
      master[i] = (uint8_t)(hi << 4 | lo);
    }
    o.master_key = master;
  }
  cqrs_code_t rc = cqrs_mongo_keys_new(m, &o, out, err);
  explicit_bzero(master, sizeof master);
  return rc;
}

cqrs_code_t billing_mongo_indexes(cqrs_mongo_t *m, cqrs_error_t *err) {
  cqrs_code_t rc = cqrs_mongo_ensure_indexes(m, err);
  static const struct {
    const char *json, *name;
  } read_side[] = {
      {"{\"customer.id\": 1, \"status\": 1}", "customer_status"},
      {"{\"amount\": 1, \"currency\": 1}", "amount_currency"},
      {"{\"createdAt\": -1}", "created_at"},
  };
  for (size_t i = 0; !rc && i < sizeof read_side / sizeof read_side[0]; i++) {
    bson_error_t e;
    bson_t *keys = bson_new_from_json((const uint8_t *)read_side[i].json, -1, &e);
    rc = cqrs_mongo_ensure_index(m, billing_default_collections.invoices, keys, read_side[i].name, false, err);
    bson_destroy(keys);
  }
  return rc;
}

/* Options whose value the driver treats as a secret. */
static const char *const secret_options[] = {MONGOC_URI_TLSCERTIFICATEKEYFILEPASSWORD,
                                             MONGOC_URI_SSLCLIENTCERTIFICATEKEYPASSWORD, "sslpemkeypassword",
                                             MONGOC_URI_AUTHMECHANISMPROPERTIES, NULL};
/* Options the driver knows that none of mongoc_uri_option_is_* names. */
static const char *const other_known[] = {MONGOC_URI_AUTHMECHANISM, MONGOC_URI_AUTHSOURCE, MONGOC_URI_GSSAPISERVICENAME,
                                          MONGOC_URI_CANONICALIZEHOSTNAME, MONGOC_URI_READPREFERENCE,
                                          MONGOC_URI_READPREFERENCETAGS, MONGOC_URI_READCONCERNLEVEL, MONGOC_URI_W,
                                          MONGOC_URI_COMPRESSORS, MONGOC_URI_MAXSTALENESSSECONDS, NULL};

static bool listed_key(const char *const *list, const char *key, size_t len) {
  for (size_t i = 0; list[i]; i++) {
    if (strlen(list[i]) == len && !strncasecmp(list[i], key, len)) return true;
  }
  return false;
}

static bool secret_option(const char *key, size_t len) {
  if (listed_key(secret_options, key, len)) return true;
  char name[64];
  if (len >= sizeof name) return true; /* no option has so long a name */
  for (size_t i = 0; i < len; i++) name[i] = (char)tolower((unsigned char)key[i]);
  name[len] = '\0';
  bool known = mongoc_uri_option_is_int32(name) || mongoc_uri_option_is_int64(name) ||
               mongoc_uri_option_is_bool(name) || mongoc_uri_option_is_utf8(name) || listed_key(other_known, key, len);
  return !known;
}

char *billing_mongo_uri_redacted(const char *uri) {
  if (!uri) return bson_strdup("");
  bson_string_t *out = bson_string_new(NULL);
  const char *scheme = strstr(uri, "://");
  const char *rest = scheme ? scheme + 3 : uri;
  const char *query = strchr(rest, '?');
  const char *hosts_end = query ? query : rest + strlen(rest);
  /* user:password@ -- the last '@' before the options ends the user part. */
  const char *at = NULL;
  for (const char *p = rest; p < hosts_end; p++) {
    if (*p == '@') at = p;
  }
  const char *colon = at ? memchr(rest, ':', (size_t)(at - rest)) : NULL;
  if (colon) {
    bson_string_append_printf(out, "%.*s:***", (int)(colon - uri), uri);
    bson_string_append_printf(out, "%.*s", (int)(hosts_end - at), at);
  } else {
    bson_string_append_printf(out, "%.*s", (int)(hosts_end - uri), uri);
  }
  if (query) {
    bson_string_append_c(out, '?');
    for (const char *p = query + 1; *p;) {
      size_t len = strcspn(p, "&;");
      const char *eq = memchr(p, '=', len);
      size_t klen = eq ? (size_t)(eq - p) : len;
      if (eq && secret_option(p, klen)) bson_string_append_printf(out, "%.*s=***", (int)klen, p);
      else bson_string_append_printf(out, "%.*s", (int)len, p);
      p += len;
      if (*p) bson_string_append_c(out, *p++);
    }
  }
  return bson_string_free(out, false);
}

cqrs_code_t billing_mongo_reset(cqrs_mongo_t *m, cqrs_error_t *err) {
  /* The sample's own database only: everything in it is the sample's. */
  return cqrs_mongo_drop_database(m, err);
}

#define HEARTBEAT_MS 5000

struct billing_instance {
  mongoc_client_pool_t *pool;
  char db[128], id[300], app[32], endpoint[128];
  int64_t started;
  uv_timer_t timer;
  uv_work_t work;
  bool busy, stopping, closed;
};

static bool instance_write(billing_instance_t *in, bool remove, bson_error_t *e) {
  mongoc_client_t *c = mongoc_client_pool_pop(in->pool);
  mongoc_collection_t *coll = mongoc_client_get_collection(c, in->db, "cqrs_instances");
  bson_t *sel = BCON_NEW("_id", BCON_UTF8(in->id));
  bool ok;
  if (remove) {
    ok = mongoc_collection_delete_one(coll, sel, NULL, NULL, e);
  } else {
    bson_t *doc = BCON_NEW("_id", BCON_UTF8(in->id), "endpoint", BCON_UTF8(in->endpoint), "app", BCON_UTF8(in->app),
                           "startedAt", BCON_DATE_TIME(in->started), "heartbeatAt", BCON_DATE_TIME(cqrs_now_ms()));
    bson_t *opts = BCON_NEW("upsert", BCON_BOOL(true));
    ok = mongoc_collection_replace_one(coll, sel, doc, opts, NULL, e);
    bson_destroy(opts);
    bson_destroy(doc);
  }
  bson_destroy(sel);
  mongoc_collection_destroy(coll);
  mongoc_client_pool_push(in->pool, c);
  return ok;
}

static void beat_work(uv_work_t *w) {
  bson_error_t e;
  billing_instance_t *in = w->data;
  if (!instance_write(in, false, &e)) fprintf(stderr, "cqrs_instances: heartbeat of %s failed: %s\n", in->id, e.message);
}

static void instance_free(billing_instance_t *in) {
  bson_error_t e;
  if (!instance_write(in, true, &e)) fprintf(stderr, "cqrs_instances: cannot remove %s: %s\n", in->id, e.message);
  mongoc_client_pool_destroy(in->pool);
  free(in);
}

static void beat_done(uv_work_t *w, int status) {
  (void)status;
  billing_instance_t *in = w->data;
  in->busy = false;
  if (in->closed) instance_free(in);
}

static void beat(uv_timer_t *t) {
  billing_instance_t *in = t->data;
  if (in->busy || in->stopping) return; /* a slow server: skip a beat rather than queue them */
  in->work.data = in;
  if (uv_queue_work(t->loop, &in->work, beat_work, beat_done) == 0) in->busy = true;
}

cqrs_code_t billing_instance_start(uv_loop_t *loop, const char *uri, const char *app, const char *endpoint,
                                   billing_instance_t **out, cqrs_error_t *err) {
  *out = NULL;
  bson_error_t e;
  mongoc_uri_t *u = mongoc_uri_new_with_error(uri, &e);
  if (!u) return cqrs_error_set(err, CQRS_EINVAL, "bad MongoDB URI: %s", e.message);
  billing_instance_t *in = calloc(1, sizeof *in);
  if (!in || !(in->pool = mongoc_client_pool_new(u))) {
    mongoc_uri_destroy(u);
    free(in);
    return cqrs_error_set(err, CQRS_ENOMEM, "cannot create a client pool");
  }
  snprintf(in->db, sizeof in->db, "%s", mongoc_uri_get_database(u) ? mongoc_uri_get_database(u) : "cqrs");
  mongoc_uri_destroy(u);
  char host[256] = "localhost";
  size_t hl = sizeof host;
  uv_os_gethostname(host, &hl);
  snprintf(in->id, sizeof in->id, "%s:%d", host, (int)uv_os_getpid());
  snprintf(in->app, sizeof in->app, "%s", app);
  snprintf(in->endpoint, sizeof in->endpoint, "%s", endpoint);
  in->started = cqrs_now_ms();
  if (!instance_write(in, false, &e)) {
    mongoc_client_pool_destroy(in->pool);
    free(in);
    return cqrs_error_set(err, CQRS_ESTORE, "cannot register in cqrs_instances: %s", e.message);
  }
  uv_timer_init(loop, &in->timer);
  in->timer.data = in;
  uv_timer_start(&in->timer, beat, HEARTBEAT_MS, HEARTBEAT_MS);
  uv_unref((uv_handle_t *)&in->timer);
  *out = in;
  return CQRS_OK;
}

static void instance_closed(uv_handle_t *h) {
  billing_instance_t *in = h->data;
  in->closed = true;
  if (!in->busy) instance_free(in); /* else once the heartbeat in flight is back */
}

void billing_instance_stop(billing_instance_t *in) {
  if (!in) return;
  in->stopping = true;
  uv_timer_stop(&in->timer);
  uv_close((uv_handle_t *)&in->timer, instance_closed);
}
