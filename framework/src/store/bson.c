/* Comparing BSON values and matching documents against a filter, as the
 * in-memory read model's find and patch_where do. */
#include "store/bson-private.h"

int cqrs__bson_compare(const bson_iter_t *a, const bson_iter_t *b, bool *comparable) {
  *comparable = true;
  bson_type_t ta = bson_iter_type(a), tb = bson_iter_type(b);
  bool na = ta == BSON_TYPE_INT32 || ta == BSON_TYPE_INT64 || ta == BSON_TYPE_DOUBLE;
  bool nb = tb == BSON_TYPE_INT32 || tb == BSON_TYPE_INT64 || tb == BSON_TYPE_DOUBLE;
  if (na && nb) {
    if (ta != BSON_TYPE_DOUBLE && tb != BSON_TYPE_DOUBLE) {
      int64_t x = bson_iter_as_int64(a), y = bson_iter_as_int64(b);
      return x < y ? -1 : x > y;
    }
    double x = bson_iter_as_double(a), y = bson_iter_as_double(b);
    return x < y ? -1 : x > y;
  }
  if (ta != tb) {
    *comparable = false;
    return ta < tb ? -1 : 1;
  }
  switch (ta) {
  case BSON_TYPE_UTF8:
    return strcmp(bson_iter_utf8(a, NULL), bson_iter_utf8(b, NULL));
  case BSON_TYPE_DATE_TIME: {
    int64_t x = bson_iter_date_time(a), y = bson_iter_date_time(b);
    return x < y ? -1 : x > y;
  }
  case BSON_TYPE_BOOL:
    return (int)bson_iter_bool(a) - (int)bson_iter_bool(b);
  case BSON_TYPE_OID:
    return bson_oid_compare(bson_iter_oid(a), bson_iter_oid(b));
  case BSON_TYPE_NULL:
    return 0;
  default:
    *comparable = false;
    return 0;
  }
}

bool cqrs__bson_matches(const bson_t *doc, const bson_t *filter) {
  if (!filter) return true;
  bson_iter_t f;
  if (!bson_iter_init(&f, filter)) return false;
  while (bson_iter_next(&f)) {
    bson_iter_t root, v;
    if (!bson_iter_init(&root, doc) || !bson_iter_find_descendant(&root, bson_iter_key(&f), &v)) return false;
    bool comparable;
    if (cqrs__bson_compare(&v, &f, &comparable) != 0 || !comparable) return false;
  }
  return true;
}
