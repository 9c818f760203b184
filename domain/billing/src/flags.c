/* The seed's mongodb_cqs_enabled flag: invoice reads go to the legacy
 * billing_documents collection (off), to the CQS read model (on), to both
 * (shadow: the legacy answer is returned, every difference recorded in
 * billing_flag_diffs), or by customer (a percentage: a stable hash of the
 * customer id decides, so a customer's view does not flip between reads).
 * Either side answers in one representation (invoice_view.c). */
#include <stdlib.h>
#include <uv.h>

#include "billing-private.h"

struct billing_flags {
  cqrs_readmodel_t *rm;
  int64_t refresh_ms;
  uv_mutex_t lock;
  int64_t loaded_at; /* 0: never */
  billing_cqs_flag_t flag;
  uint64_t compared, differing; /* shadow reads */
};

cqrs_code_t billing_cqs_flag_parse(const char *text, billing_cqs_flag_t *out, cqrs_error_t *err) {
  if (!text || !out) return cqrs_error_set(err, CQRS_EINVAL, "NULL text or out");
  memset(out, 0, sizeof *out);
  if (!strcmp(text, "off")) out->mode = BILLING_CQS_OFF;
  else if (!strcmp(text, "on")) out->mode = BILLING_CQS_ON, out->percent = 100;
  else if (!strcmp(text, "shadow")) out->mode = BILLING_CQS_SHADOW;
  else {
    char *end;
    long v = strtol(text, &end, 10);
    if (end == text || (*end && strcmp(end, "%")) || v < 0 || v > 100)
      return cqrs_error_set(err, CQRS_EINVAL, "'%.32s' is not off, shadow, on or a percentage 0..100", text);
    out->mode = BILLING_CQS_PERCENT;
    out->percent = (int)v;
  }
  return CQRS_OK;
}

const char *billing_cqs_mode_name(billing_cqs_mode_t mode) {
  switch (mode) {
  case BILLING_CQS_ON: return "on";
  case BILLING_CQS_SHADOW: return "shadow";
  case BILLING_CQS_PERCENT: return "percent";
  default: return "off";
  }
}

static uint32_t fnv1a(const char *s) {
  uint32_t h = 2166136261u;
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
  return h;
}

bool billing_cqs_routes_to_cqs(const billing_cqs_flag_t *f, const char *customer_id) {
  if (!f) return false;
  switch (f->mode) {
  case BILLING_CQS_ON: return true;
  case BILLING_CQS_PERCENT: return customer_id && (int)(fnv1a(customer_id) % 100) < f->percent;
  default: return false;
  }
}

static cqrs_code_t flag_get(const cqrs_readmodel_t *rm, billing_cqs_flag_t *out, int64_t *position,
                            cqrs_error_t *err) {
  bson_t doc;
  bool found;
  memset(out, 0, sizeof *out);
  *position = 0;
  cqrs_code_t rc = cqrs_readmodel_get(rm, BILLING_FLAGS_COLLECTION, BILLING_CQS_FLAG, &doc, &found, err);
  if (rc || !found) return rc;
  bson_iter_t it;
  const char *mode = bson_iter_init_find(&it, &doc, "mode") && BSON_ITER_HOLDS_UTF8(&it) ? bson_iter_utf8(&it, NULL) : "";
  if (!strcmp(mode, "on")) out->mode = BILLING_CQS_ON, out->percent = 100;
  else if (!strcmp(mode, "shadow")) out->mode = BILLING_CQS_SHADOW;
  else if (!strcmp(mode, "percent")) out->mode = BILLING_CQS_PERCENT;
  else if (strcmp(mode, "off")) rc = cqrs_error_set(err, CQRS_ECODEC, "flag %s has an unknown mode '%.16s'", BILLING_CQS_FLAG, mode);
  if (!rc && out->mode == BILLING_CQS_PERCENT && bson_iter_init_find(&it, &doc, "percent")) {
    int64_t p = bson_iter_as_int64(&it);
    out->percent = p < 0 ? 0 : p > 100 ? 100 : (int)p;
  }
  if (bson_iter_init_find(&it, &doc, CQRS_RM_POSITION)) *position = bson_iter_as_int64(&it);
  bson_destroy(&doc);
  return rc;
}

cqrs_code_t billing_cqs_flag_load(const cqrs_readmodel_t *rm, billing_cqs_flag_t *out, cqrs_error_t *err) {
  if (!rm || !out) return cqrs_error_set(err, CQRS_EINVAL, "NULL read model or out");
  int64_t position;
  return flag_get(rm, out, &position, err);
}

cqrs_code_t billing_cqs_flag_save(cqrs_readmodel_t *rm, const billing_cqs_flag_t *f, cqrs_error_t *err) {
  if (!rm || !f) return cqrs_error_set(err, CQRS_EINVAL, "NULL read model or flag");
  billing_cqs_flag_t old;
  int64_t position;
  cqrs_code_t rc = flag_get(rm, &old, &position, err);
  if (rc == CQRS_ECODEC) rc = CQRS_OK; /* a broken setting is what this call repairs */
  if (rc) return rc;
  bson_t doc = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&doc, "mode", billing_cqs_mode_name(f->mode));
  BSON_APPEND_INT32(&doc, "percent", f->mode == BILLING_CQS_ON ? 100 : f->mode == BILLING_CQS_PERCENT ? f->percent : 0);
  BSON_APPEND_DATE_TIME(&doc, "updatedAt", cqrs_now_ms());
  /* The read model keeps the write with the higher position: each setting
   * supersedes the one it read. */
  rc = cqrs_readmodel_put(rm, BILLING_FLAGS_COLLECTION, BILLING_CQS_FLAG, &doc, position + 1, NULL, err);
  bson_destroy(&doc);
  return rc;
}

billing_flags_t *billing_flags_new(cqrs_readmodel_t *rm, int64_t refresh_ms) {
  if (!rm) return NULL;
  billing_flags_t *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  if (uv_mutex_init(&f->lock)) {
    free(f);
    return NULL;
  }
  f->rm = rm;
  f->refresh_ms = refresh_ms < 0 ? 0 : refresh_ms;
  return f;
}

void billing_flags_destroy(billing_flags_t *f) {
  if (!f) return;
  uv_mutex_destroy(&f->lock);
  free(f);
}

cqrs_code_t billing_flags_current(billing_flags_t *f, billing_cqs_flag_t *out, cqrs_error_t *err) {
  if (!f || !out) return cqrs_error_set(err, CQRS_EINVAL, "NULL flags or out");
  int64_t now = cqrs_now_ms();
  uv_mutex_lock(&f->lock);
  bool fresh = f->loaded_at && now - f->loaded_at < f->refresh_ms;
  *out = f->flag;
  uv_mutex_unlock(&f->lock);
  if (fresh) return CQRS_OK;
  cqrs_code_t rc = billing_cqs_flag_load(f->rm, out, err);
  if (rc) return rc;
  uv_mutex_lock(&f->lock);
  f->flag = *out;
  f->loaded_at = now;
  uv_mutex_unlock(&f->lock);
  return CQRS_OK;
}

static const char *str_at(const bson_t *doc, const char *path) {
  bson_iter_t it, sub;
  if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &sub) && BSON_ITER_HOLDS_UTF8(&sub))
    return bson_iter_utf8(&sub, NULL);
  return NULL;
}

static cqrs_code_t record_differences(billing_flags_t *f, const char *id, const billing_invoice_view_t *legacy,
                                      const billing_invoice_view_t *cqs, size_t *count, cqrs_error_t *err) {
  bson_t doc = BSON_INITIALIZER, list;
  BSON_APPEND_UTF8(&doc, "invoiceId", id);
  BSON_APPEND_BOOL(&doc, "legacyFound", legacy != NULL);
  BSON_APPEND_BOOL(&doc, "cqsFound", cqs != NULL);
  BSON_APPEND_ARRAY_BEGIN(&doc, "differences", &list);
  *count = billing_invoice_view_diff(legacy, cqs, &list);
  bson_append_array_end(&doc, &list);
  BSON_APPEND_DATE_TIME(&doc, "at", cqrs_now_ms());
  cqrs_code_t rc = CQRS_OK;
  if (*count) {
    bson_t old;
    bool found;
    int64_t position = 0;
    if (!(rc = cqrs_readmodel_get(f->rm, BILLING_FLAG_DIFFS_COLLECTION, id, &old, &found, err)) && found) {
      bson_iter_t it;
      if (bson_iter_init_find(&it, &old, CQRS_RM_POSITION)) position = bson_iter_as_int64(&it);
      bson_destroy(&old);
    }
    /* One document per invoice: the latest disagreement, and how many reads
     * disagreed (the position counts them). */
    if (!rc) rc = cqrs_readmodel_put(f->rm, BILLING_FLAG_DIFFS_COLLECTION, id, &doc, position + 1, NULL, err);
  }
  bson_destroy(&doc);
  uv_mutex_lock(&f->lock);
  f->compared++;
  f->differing += *count > 0;
  uv_mutex_unlock(&f->lock);
  return rc;
}

void billing_flags_shadow_counts(billing_flags_t *f, uint64_t *compared, uint64_t *differing) {
  if (!f) return;
  uv_mutex_lock(&f->lock);
  if (compared) *compared = f->compared;
  if (differing) *differing = f->differing;
  uv_mutex_unlock(&f->lock);
}

/* Reads one side into `v`. A legacy document that cannot be read exactly
 * is no invoice (how->malformed says why); a CQS one is the projection's
 * and must read. */
static cqrs_code_t read_side(billing_flags_t *f, const char *coll, bool legacy, const char *id,
                             billing_invoice_view_t *v, bool *found, billing_read_t *how, cqrs_error_t *err) {
  bson_t doc;
  cqrs_code_t rc = cqrs_readmodel_get(f->rm, coll, id, &doc, found, err);
  if (rc || !*found) return rc;
  cqrs_error_t why;
  rc = legacy ? billing_legacy_invoice_parse(&doc, v, &why) : billing_cqs_invoice_parse(&doc, v, &why);
  bson_destroy(&doc);
  if (rc && legacy) {
    *found = false;
    how->malformed = true;
    snprintf(how->problem, sizeof how->problem, "%s", why.message);
    return CQRS_OK;
  }
  if (rc && err) *err = why;
  return rc;
}

static cqrs_code_t answer(const billing_invoice_view_t *v, bool found, bson_t *out, bool *out_found) {
  *out_found = found;
  if (found) {
    bson_init(out);
    billing_invoice_view_to_bson(v, out);
  }
  return CQRS_OK;
}

cqrs_code_t billing_invoice_read(billing_flags_t *f, const billing_collections_t *cols, const char *id,
                                 const char *customer_id, bson_t *out, bool *found, billing_read_t *how,
                                 cqrs_error_t *err) {
  if (!f || !id || !out || !found || !how) return cqrs_error_set(err, CQRS_EINVAL, "NULL argument");
  *found = false;
  memset(how, 0, sizeof *how);
  const billing_collections_t *c = cols ? cols : &billing_default_collections;
  billing_cqs_flag_t flag;
  cqrs_code_t rc = billing_flags_current(f, &flag, err);
  if (rc) return rc;
  how->mode = flag.mode;
  billing_invoice_view_t legacy, cqs;
  bool lf = false, cf = false;
  switch (flag.mode) {
  case BILLING_CQS_OFF:
    how->source = BILLING_READ_LEGACY;
    break;
  case BILLING_CQS_ON:
    how->source = BILLING_READ_CQS;
    break;
  case BILLING_CQS_PERCENT:
    if (!customer_id) {
      /* Without the caller's customer, the invoice names it. */
      if ((rc = read_side(f, c->invoices, false, id, &cqs, &cf, how, err))) return rc;
      if (!cf && (rc = read_side(f, BILLING_LEGACY_COLLECTION, true, id, &legacy, &lf, how, err))) return rc;
      customer_id = cf ? cqs.customer_id : lf ? legacy.customer_id : NULL;
    }
    how->source = billing_cqs_routes_to_cqs(&flag, customer_id) ? BILLING_READ_CQS : BILLING_READ_LEGACY;
    if (how->source == BILLING_READ_CQS && cf) return answer(&cqs, true, out, found);
    if (how->source == BILLING_READ_LEGACY && lf) return answer(&legacy, true, out, found);
    break;
  case BILLING_CQS_SHADOW:
  default:
    how->source = BILLING_READ_BOTH;
    if ((rc = read_side(f, BILLING_LEGACY_COLLECTION, true, id, &legacy, &lf, how, err)) ||
        (rc = read_side(f, c->invoices, false, id, &cqs, &cf, how, err)))
      return rc;
    rc = record_differences(f, id, lf ? &legacy : NULL, cf ? &cqs : NULL, &how->differences, err);
    return rc ? rc : answer(&legacy, lf, out, found);
  }
  bool to_cqs = how->source == BILLING_READ_CQS;
  billing_invoice_view_t *v = to_cqs ? &cqs : &legacy;
  rc = read_side(f, to_cqs ? c->invoices : BILLING_LEGACY_COLLECTION, !to_cqs, id, v, found, how, err);
  return rc ? rc : answer(v, *found, out, found);
}

static cqrs_code_t query_read(const cqrs_readmodel_t *rm, const bson_t *params, bson_t *out, void *data,
                              cqrs_error_t *err) {
  BILLING_UNUSED(rm);
  const char *id = str_at(params, "id"), *customer = str_at(params, "customerId");
  if (!id || !*id || strlen(id) >= CQRS_ID_MAX) return cqrs_error_set(err, CQRS_EINVAL, "parameter 'id' (a string) is required");
  bson_t doc;
  bool found;
  billing_read_t how;
  cqrs_code_t rc = billing_invoice_read(data, NULL, id, customer, &doc, &found, &how, err);
  if (rc) return rc;
  if (!found && how.malformed)
    return cqrs_error_set(err, CQRS_ENOT_FOUND, "no invoice %s (%s holds one that cannot be read: %s)", id,
                          BILLING_LEGACY_COLLECTION, how.problem);
  if (!found) return cqrs_error_set(err, CQRS_ENOT_FOUND, "no invoice %s", id);
  BSON_APPEND_DOCUMENT(out, "invoice", &doc);
  BSON_APPEND_UTF8(out, "source", how.source == BILLING_READ_CQS ? "cqs" : "legacy");
  if (how.source == BILLING_READ_BOTH) BSON_APPEND_INT64(out, "shadowDifferences", (int64_t)how.differences);
  bson_destroy(&doc);
  return CQRS_OK;
}

cqrs_code_t billing_register_flagged_queries(cqrs_query_bus_t *q, billing_flags_t *f, cqrs_error_t *err) {
  if (!q || !f) return cqrs_error_set(err, CQRS_EINVAL, "NULL queries or flags");
  return cqrs_query_bus_register(q, "invoice.read", query_read, f, err);
}
