/* Connection, names, errors and indexes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "mongo-private.h"

static uv_once_t init_once = UV_ONCE_INIT;
static void init_driver(void) { mongoc_init(); }

static void quiet_log(mongoc_log_level_t level, const char *domain, const char *message, void *data) {
  (void)data;
  if (level <= MONGOC_LOG_LEVEL_ERROR) cqrs_log(CQRS_LOG_ERROR, "mongo", "mongoc %s: %s", domain, message);
}

void cqrs_mongo_quiet_logs(void) {
  uv_once(&init_once, init_driver);
  mongoc_log_set_handler(quiet_log, NULL);
}

static char *dup_or(const char *s, const char *dflt) { return bson_strdup(s && *s ? s : dflt); }

static bool name_ok(const char *s) {
  if (!s || !*s || strlen(s) > 120) return false;
  for (const char *p = s; *p; p++) {
    if (*p == '$' || *p == '/' || *p == '\\' || *p == ' ' || *p == '"' || (unsigned char)*p < 0x20) return false;
  }
  return true;
}

/* The URI with the password masked: the driver's parse gives us the parts. */
static char *redact(const char *uri_string, const mongoc_uri_t *uri) {
  const char *password = mongoc_uri_get_password(uri);
  if (!password || !*password) return bson_strdup(uri_string);
  const char *at = strrchr(uri_string, '@');
  const char *scheme = strstr(uri_string, "://");
  if (!at || !scheme) return bson_strdup("mongodb://***");
  const char *colon = memchr(scheme + 3, ':', (size_t)(at - scheme - 3));
  if (!colon) return bson_strdup(uri_string);
  return bson_strdup_printf("%.*s:***%s", (int)(colon - uri_string), uri_string, at);
}

cqrs_code_t cqrs_mongo_new(const char *uri_string, const cqrs_mongo_options_t *opts, const cqrs_registry_t *reg,
                           uv_loop_t *loop, cqrs_mongo_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  if (!uri_string || !*uri_string || !reg) return cqrs_error_set(err, CQRS_EINVAL, "NULL or empty URI, or no registry");
  uv_once(&init_once, init_driver);
  /* The caller's options as far as its size goes; 0: the size 0.2.0 had
   * (offsetof the first option appended since, when one is). */
  cqrs_mongo_options_t o = {0};
  if (opts) {
    size_t n = opts->size ? opts->size : sizeof o;
    memcpy(&o, opts, n < sizeof o ? n : sizeof o);
  }
  bson_error_t berr;
  mongoc_uri_t *uri = mongoc_uri_new_with_error(uri_string, &berr);
  if (!uri) return cqrs_error_set(err, CQRS_EINVAL, "invalid MongoDB URI (%.180s)", berr.message);
  int32_t sst = o.server_selection_timeout_ms;
  if (sst > 0 || !mongoc_uri_has_option(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS))
    mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, sst > 0 ? sst : 2000);
  if (!mongoc_uri_has_option(uri, MONGOC_URI_CONNECTTIMEOUTMS))
    mongoc_uri_set_option_as_int32(uri, MONGOC_URI_CONNECTTIMEOUTMS, 2000);
  if (!mongoc_uri_has_option(uri, MONGOC_URI_APPNAME)) mongoc_uri_set_appname(uri, "libcqrs");
  cqrs_mongo_t *m = bson_malloc0(sizeof *m);
  m->uri = uri;
  m->redacted = redact(uri_string, uri);
  m->db = dup_or(o.database, mongoc_uri_get_database(uri) ? mongoc_uri_get_database(uri) : "cqrs");
  m->events = dup_or(o.events, "cqrs_events");
  m->head = bson_strdup_printf("%s_head", m->events);
  m->snapshots = dup_or(o.snapshots, "cqrs_snapshots");
  m->checkpoints = dup_or(o.checkpoints, "cqrs_checkpoints");
  m->dead_letters = dup_or(o.dead_letters, "cqrs_dead_letters");
  m->leases = dup_or(o.leases, "cqrs_leases");
  m->keys = dup_or(o.keys, "cqrs_keys");
  m->reg = reg;
  m->loop = loop;
  m->versions = bson_malloc0(VERSION_SLOTS * sizeof *m->versions);
  uv_mutex_init(&m->versions_lock);
  uv_mutex_init(&m->group_lock);
  uv_cond_init(&m->group_cond);
  uv_cond_init(&m->group_full);
  uv_mutex_init(&m->hint_lock);
  uv_mutex_init(&m->dl_lock);
  uv_cond_init(&m->dl_cond);
  if (!name_ok(m->db) || !name_ok(m->events) || !name_ok(m->head) || !name_ok(m->snapshots) || !name_ok(m->checkpoints) ||
      !name_ok(m->dead_letters) || !name_ok(m->leases) || !name_ok(m->keys)) {
    cqrs_mongo_destroy(m);
    return cqrs_error_set(err, CQRS_EINVAL, "database or collection names must be 1..120 plain characters");
  }
  m->pool = mongoc_client_pool_new(uri);
  if (!m->pool) {
    cqrs_mongo_destroy(m);
    return cqrs_error_set(err, CQRS_EINVAL, "cannot create a client pool for %s", "the URI given");
  }
  mongoc_client_pool_set_error_api(m->pool, MONGOC_ERROR_API_VERSION_2);
  *out = m;
  return CQRS_OK;
}

void cqrs_mongo_destroy(cqrs_mongo_t *m) {
  if (!m) return;
  if (m->versions) {
    uv_mutex_lock(&m->dl_lock);
    while (m->dl_writing) uv_cond_wait(&m->dl_cond, &m->dl_lock);
    uv_mutex_unlock(&m->dl_lock);
  }
  if (m->pool) mongoc_client_pool_destroy(m->pool);
  if (m->versions) {
    uv_mutex_destroy(&m->versions_lock);
    uv_mutex_destroy(&m->group_lock);
    uv_cond_destroy(&m->group_cond);
    uv_cond_destroy(&m->group_full);
    uv_mutex_destroy(&m->hint_lock);
    uv_mutex_destroy(&m->dl_lock);
    uv_cond_destroy(&m->dl_cond);
  }
  bson_free(m->versions);
  mongoc_uri_destroy(m->uri);
  bson_free(m->redacted);
  bson_free(m->db);
  bson_free(m->events);
  bson_free(m->head);
  bson_free(m->snapshots);
  bson_free(m->checkpoints);
  bson_free(m->dead_letters);
  bson_free(m->leases);
  bson_free(m->keys);
  bson_free(m);
}

const char *cqrs_mongo_uri_redacted(const cqrs_mongo_t *m) { return m ? m->redacted : NULL; }
const char *cqrs_mongo_database(const cqrs_mongo_t *m) { return m ? m->db : NULL; }

static size_t version_key(char *key, const char *type, const char *id, uint32_t *hash) {
  size_t lt = strlen(type), li = strlen(id);
  memcpy(key, type, lt + 1);
  memcpy(key + lt + 1, id, li + 1);
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < lt + li + 2; i++) h = (h ^ (unsigned char)key[i]) * 16777619u;
  *hash = h;
  return lt + li + 2;
}

void cqrs__mongo_version_seen(cqrs_mongo_t *m, const char *type, const char *id, int64_t version) {
  char key[CQRS_NAME_MAX + CQRS_ID_MAX];
  uint32_t h;
  size_t n = version_key(key, type, id, &h);
  version_slot_t *slot = &m->versions[h % VERSION_SLOTS];
  uv_mutex_lock(&m->versions_lock);
  if (memcmp(slot->key, key, n) || slot->version < version) {
    memcpy(slot->key, key, n);
    slot->version = version;
  }
  uv_mutex_unlock(&m->versions_lock);
}

bool cqrs__mongo_version_known(cqrs_mongo_t *m, const char *type, const char *id, int64_t version) {
  char key[CQRS_NAME_MAX + CQRS_ID_MAX];
  uint32_t h;
  size_t n = version_key(key, type, id, &h);
  version_slot_t *slot = &m->versions[h % VERSION_SLOTS];
  uv_mutex_lock(&m->versions_lock);
  bool known = slot->version == version && !memcmp(slot->key, key, n);
  uv_mutex_unlock(&m->versions_lock);
  return known;
}

void cqrs__mongo_open(cqrs_mongo_t *m, const char *coll, mconn_t *c) {
  c->client = mongoc_client_pool_pop(m->pool);
  c->coll = coll ? mongoc_client_get_collection(c->client, m->db, coll) : NULL;
}

void cqrs__mongo_done(cqrs_mongo_t *m, mconn_t *c) {
  if (c->coll) mongoc_collection_destroy(c->coll);
  if (c->client) mongoc_client_pool_push(m->pool, c->client);
  c->coll = NULL;
  c->client = NULL;
}

bool cqrs__mongo_duplicate_key(const bson_error_t *e) { return e->code == 11000 || e->code == 11001; }

/* Server codes that retrying can cure: the network, an election, a node
 * shutting down, a time limit, a write concern not yet satisfied, a write
 * conflict. (MongoDB's own list of retryable errors, plus time limits.) */
static bool server_transient(uint32_t code) {
  static const uint32_t codes[] = {
      6,     /* HostUnreachable */
      7,     /* HostNotFound */
      24,    /* LockTimeout */
      50,    /* MaxTimeMSExpired */
      64,    /* WriteConcernFailed */
      89,    /* NetworkTimeout */
      91,    /* ShutdownInProgress */
      112,   /* WriteConflict */
      133,   /* FailedToSatisfyReadPreference */
      189,   /* PrimarySteppedDown */
      202,   /* NetworkInterfaceExceededTimeLimit */
      262,   /* ExceededTimeLimit */
      9001,  /* SocketException */
      10107, /* NotWritablePrimary */
      11600, /* InterruptedAtShutdown */
      11601, /* Interrupted */
      11602, /* InterruptedDueToReplStateChange */
      13435, /* NotPrimaryNoSecondaryOk */
      13436, /* NotPrimaryOrSecondary */
  };
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    if (codes[i] == code) return true;
  }
  return false;
}

/* 16 MB: BSONObjectTooLarge, and the driver's own refusals. */
static bool too_large(const bson_error_t *e) {
  if (e->domain == MONGOC_ERROR_CLIENT && e->code == MONGOC_ERROR_CLIENT_TOO_BIG) return true;
  if (e->domain == MONGOC_ERROR_SERVER || e->domain == MONGOC_ERROR_WRITE_CONCERN)
    return e->code == 10334 || e->code == 17419 || e->code == 17420;
  return e->domain == MONGOC_ERROR_BSON && strstr(e->message, "too large") != NULL;
}

mongo_fault_t cqrs__mongo_classify(const bson_error_t *e) {
  if (too_large(e)) return MONGO_FAULT_TOO_LARGE;
  switch (e->domain) {
  case MONGOC_ERROR_STREAM:
  case MONGOC_ERROR_SERVER_SELECTION:
  case MONGOC_ERROR_PROTOCOL:
  case MONGOC_ERROR_POOL:
    return MONGO_FAULT_TRANSIENT;
  case MONGOC_ERROR_CLIENT:
    /* Authentication fails the same way next time. */
    return e->code == MONGOC_ERROR_CLIENT_AUTHENTICATE ? MONGO_FAULT_PERMANENT : MONGO_FAULT_TRANSIENT;
  case MONGOC_ERROR_SERVER:
  case MONGOC_ERROR_WRITE_CONCERN:
  case MONGOC_ERROR_QUERY:
    /* Every other server code (validation, authorisation, bad value, a
     * malformed query) says the request itself is at fault. */
    return server_transient(e->code) ? MONGO_FAULT_TRANSIENT : MONGO_FAULT_PERMANENT;
  case MONGOC_ERROR_BSON:
  case MONGOC_ERROR_COMMAND:
  case MONGOC_ERROR_NAMESPACE:
  case MONGOC_ERROR_SASL:
  case MONGOC_ERROR_SCRAM:
    return MONGO_FAULT_PERMANENT;
  default:
    /* Unknown to us: retrying loses nothing but time. */
    return MONGO_FAULT_TRANSIENT;
  }
}

cqrs_code_t cqrs__mongo_error(cqrs_error_t *err, const bson_error_t *e, const char *what) {
  mongo_fault_t f = cqrs__mongo_classify(e);
  cqrs_code_t rc = cqrs_error_set(err, f == MONGO_FAULT_TOO_LARGE ? CQRS_ETOO_LARGE : CQRS_ESTORE,
                                  "MongoDB: %s: %.180s (%s, domain %u code %u)", what, e->message,
                                  f == MONGO_FAULT_TRANSIENT ? "transient" : "permanent", e->domain, e->code);
  cqrs_error_set_cause(err, e->domain, e->code, f == MONGO_FAULT_TRANSIENT);
  if (err) err->domain = CQRS_DOMAIN_STORE;
  return rc;
}

cqrs_code_t cqrs__mongo_find_one(mongoc_collection_t *coll, const bson_t *filter, const bson_t *opts, bson_t *out,
                                 bool *found, cqrs_error_t *err, const char *what) {
  *found = false;
  bson_t o = BSON_INITIALIZER;
  if (opts) bson_concat(&o, opts);
  BSON_APPEND_INT64(&o, "limit", 1);
  mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll, filter, &o, NULL);
  const bson_t *doc;
  if (mongoc_cursor_next(cur, &doc)) {
    bson_copy_to(doc, out);
    *found = true;
  }
  bson_error_t e;
  cqrs_code_t rc = CQRS_OK;
  if (mongoc_cursor_error(cur, &e)) {
    if (*found) bson_destroy(out);
    *found = false;
    rc = cqrs__mongo_error(err, &e, what);
  }
  mongoc_cursor_destroy(cur);
  bson_destroy(&o);
  return rc;
}

cqrs_code_t cqrs_mongo_ensure_index(cqrs_mongo_t *m, const char *coll, const bson_t *keys, const char *name,
                                    bool unique, cqrs_error_t *err) {
  if (!m || !coll || !keys || !name) return cqrs_error_set(err, CQRS_EINVAL, "NULL argument to ensure an index");
  /* One index per command: FerretDB 1.24 fails on several that exist. */
  bson_t cmd = BSON_INITIALIZER, indexes, index;
  BSON_APPEND_UTF8(&cmd, "createIndexes", coll);
  BSON_APPEND_ARRAY_BEGIN(&cmd, "indexes", &indexes);
  BSON_APPEND_DOCUMENT_BEGIN(&indexes, "0", &index);
  BSON_APPEND_DOCUMENT(&index, "key", keys);
  BSON_APPEND_UTF8(&index, "name", name);
  if (unique) BSON_APPEND_BOOL(&index, "unique", true);
  bson_append_document_end(&indexes, &index);
  bson_append_array_end(&cmd, &indexes);
  mconn_t c;
  cqrs__mongo_open(m, NULL, &c);
  mongoc_database_t *db = mongoc_client_get_database(c.client, m->db);
  bson_error_t e;
  bson_t reply;
  bool ok = mongoc_database_write_command_with_opts(db, &cmd, NULL, &reply, &e);
  bson_destroy(&reply);
  mongoc_database_destroy(db);
  cqrs__mongo_done(m, &c);
  bson_destroy(&cmd);
  if (!ok) {
    char what[160];
    snprintf(what, sizeof what, "create index %s on %s", name, coll);
    return cqrs__mongo_error(err, &e, what);
  }
  return CQRS_OK;
}

cqrs_code_t cqrs_mongo_index_names(cqrs_mongo_t *m, const char *coll, bson_t *out, cqrs_error_t *err) {
  if (!m || !coll || !out) return cqrs_error_set(err, CQRS_EINVAL, "NULL argument to list indexes");
  mconn_t c;
  cqrs__mongo_open(m, coll, &c);
  mongoc_cursor_t *cur = mongoc_collection_find_indexes_with_opts(c.coll, NULL);
  const bson_t *doc;
  uint32_t n = 0;
  while (mongoc_cursor_next(cur, &doc)) {
    bson_iter_t it;
    if (bson_iter_init_find(&it, doc, "name") && BSON_ITER_HOLDS_UTF8(&it)) {
      char key[16];
      const char *k;
      bson_uint32_to_string(n++, &k, key, sizeof key);
      bson_append_utf8(out, k, -1, bson_iter_utf8(&it, NULL), -1);
    }
  }
  bson_error_t e;
  cqrs_code_t rc = mongoc_cursor_error(cur, &e) ? cqrs__mongo_error(err, &e, "list indexes") : CQRS_OK;
  mongoc_cursor_destroy(cur);
  cqrs__mongo_done(m, &c);
  return rc;
}

cqrs_code_t cqrs_mongo_ensure_indexes(cqrs_mongo_t *m, cqrs_error_t *err) {
  if (!m) return cqrs_error_set(err, CQRS_EINVAL, "NULL connection");
  cqrs_code_t rc = cqrs__mongo_check_format(m, err);
  if (rc) return rc;
  /* Uniqueness on one field each: DocumentDB checks a compound unique
   * index at a cost that grows with the collection (docs/scaling.md). */
  static const struct {
    const char *json;
    const char *name;
    bool unique;
    int coll; /* 0: events, 1: dead letters */
  } specs[] = {
      {"{\"timestamp\": 1}", "timestamp", false, 0},
      {"{\"type\": 1, \"timestamp\": 1}", "type_timestamp", false, 0},
      {"{\"events.type\": 1, \"events.timestamp\": 1}", "events_type_timestamp", false, 0},
      {"{\"aggregateType\": 1, \"aggregateId\": 1, \"version\": 1}", "stream_version", false, 0},
      {"{\"streamVersion\": 1}", "stream_version_key", true, 0},
      {"{\"commandId\": 1}", "command_id", true, 0},
      {"{\"position\": 1}", "position", true, 0},
      {"{\"at\": 1}", "at", false, 1},
  };
  for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
    bson_error_t e;
    bson_t *keys = bson_new_from_json((const uint8_t *)specs[i].json, -1, &e);
    rc = cqrs_mongo_ensure_index(m, specs[i].coll ? m->dead_letters : m->events, keys, specs[i].name,
                                             specs[i].unique, err);
    bson_destroy(keys);
    if (rc) return rc;
  }
  return CQRS_OK;
}

cqrs_code_t cqrs_mongo_drop_database(cqrs_mongo_t *m, cqrs_error_t *err) {
  if (!m) return cqrs_error_set(err, CQRS_EINVAL, "NULL connection");
  mconn_t c;
  cqrs__mongo_open(m, NULL, &c);
  mongoc_database_t *db = mongoc_client_get_database(c.client, m->db);
  bson_error_t e;
  bool ok = mongoc_database_drop(db, &e);
  mongoc_database_destroy(db);
  cqrs__mongo_done(m, &c);
  return ok ? CQRS_OK : cqrs__mongo_error(err, &e, "drop database");
}
