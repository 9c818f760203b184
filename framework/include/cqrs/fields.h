/* libcqrs: declarative field tables: BSON encoding, decoding and technical
 * validation of plain C structs (command and event payloads, aggregate state
 * snapshots), so that no user writes bson_append_* by hand. */
#ifndef CQRS_FIELDS_H
#define CQRS_FIELDS_H

#include <bson/bson.h>

#include "cqrs/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Money: an integer count of minor units and an ISO 4217 code. Never a double.
 * Encoded as {amount: int64, currency: "EUR"}. */
typedef struct cqrs_money {
  int64_t amount;
  char currency[4];
} cqrs_money_t;

typedef enum cqrs_field_kind {
  CQRS_FIELD_END = 0,
  CQRS_FIELD_STRING, /* char[N] member, NUL-terminated, at most N-1 bytes */
  CQRS_FIELD_INT64,  /* int64_t */
  CQRS_FIELD_INT32,  /* int32_t */
  CQRS_FIELD_BOOL,   /* bool */
  CQRS_FIELD_TIME,   /* int64_t UTC milliseconds, a BSON date */
  CQRS_FIELD_MONEY,  /* cqrs_money_t, a nested {amount, currency} */
  CQRS_FIELD_DOC     /* a nested struct described by its own field table */
} cqrs_field_kind_t;

/* Field flags. */
#define CQRS_F_REQUIRED 0x1u /* strings non-empty; decode fails when absent */
#define CQRS_F_RANGE 0x2u    /* integers and money amounts within [min, max] */
#define CQRS_F_OPTIONAL 0x4u /* decode leaves the member zeroed when absent */

typedef struct cqrs_field {
  const char *key; /* BSON key */
  cqrs_field_kind_t kind;
  size_t offset;
  size_t size; /* member size; for strings the capacity including NUL */
  unsigned flags;
  int64_t min, max;
  const struct cqrs_field *fields; /* CQRS_FIELD_DOC: the nested table */
} cqrs_field_t;

#define CQRS__MEMBER_SIZE(T, m) sizeof(((T *)0)->m)
#define CQRS_STRING(T, m, key, flags) \
  { (key), CQRS_FIELD_STRING, offsetof(T, m), CQRS__MEMBER_SIZE(T, m), (flags), 0, 0, NULL }
#define CQRS_INT64(T, m, key, flags) \
  { (key), CQRS_FIELD_INT64, offsetof(T, m), CQRS__MEMBER_SIZE(T, m), (flags), 0, 0, NULL }
#define CQRS_INT64_RANGE(T, m, key, lo, hi) \
  { (key), CQRS_FIELD_INT64, offsetof(T, m), CQRS__MEMBER_SIZE(T, m), CQRS_F_RANGE, (lo), (hi), NULL }
#define CQRS_INT32(T, m, key, flags) \
  { (key), CQRS_FIELD_INT32, offsetof(T, m), CQRS__MEMBER_SIZE(T, m), (flags), 0, 0, NULL }
#define CQRS_BOOL(T, m, key, flags) \
  { (key), CQRS_FIELD_BOOL, offsetof(T, m), CQRS__MEMBER_SIZE(T, m), (flags), 0, 0, NULL }
#define CQRS_TIME(T, m, key, flags) \
  { (key), CQRS_FIELD_TIME, offsetof(T, m), CQRS__MEMBER_SIZE(T, m), (flags), 0, 0, NULL }
#define CQRS_MONEY(T, m, key, flags) \
  { (key), CQRS_FIELD_MONEY, offsetof(T, m), CQRS__MEMBER_SIZE(T, m), (flags), 0, 0, NULL }
/* Money whose amount must lie in [lo, hi] (e.g. 1..INT64_MAX for "positive"). */
#define CQRS_MONEY_RANGE(T, m, key, lo, hi) \
  { (key), CQRS_FIELD_MONEY, offsetof(T, m), CQRS__MEMBER_SIZE(T, m), CQRS_F_RANGE, (lo), (hi), NULL }
#define CQRS_DOC(T, m, key, table, flags) \
  { (key), CQRS_FIELD_DOC, offsetof(T, m), CQRS__MEMBER_SIZE(T, m), (flags), 0, 0, (table) }
#define CQRS_FIELDS_END { NULL, CQRS_FIELD_END, 0, 0, 0, 0, 0, NULL }

/* Appends every field of `obj` to `out` (initialised by the caller).
 * Returns CQRS_ETOO_LARGE if the document cannot grow, CQRS_EINVAL on NULLs. */
CQRS_EXPORT cqrs_code_t cqrs_fields_encode(const cqrs_field_t *fields, const void *obj, bson_t *out,
                                           cqrs_error_t *err);

/* Decodes `in` into `obj` (zeroed first; `obj` must be the table's struct).
 * Unknown keys are ignored. A missing required key, a key of the wrong BSON
 * type or an oversized string fails with CQRS_ECODEC naming the key. */
CQRS_EXPORT cqrs_code_t cqrs_fields_decode(const cqrs_field_t *fields, const bson_t *in, void *obj,
                                           cqrs_error_t *err);

/* Technical validation: strings NUL-terminated within their member and
 * non-empty when required, ranges, currencies of three capital letters.
 * Fails with CQRS_EINVALID_COMMAND naming the field. */
CQRS_EXPORT cqrs_code_t cqrs_fields_validate(const cqrs_field_t *fields, const void *obj, cqrs_error_t *err);

/* Copies `src` into the char[cap] `dst`; fails with CQRS_ETOO_LARGE rather
 * than truncating, CQRS_EINVAL when `src` is NULL. */
CQRS_EXPORT cqrs_code_t cqrs_strlcpy(char *dst, size_t cap, const char *src, cqrs_error_t *err);

/* Builds a money value; fails with CQRS_EINVAL unless `currency` is three
 * capital letters. */
CQRS_EXPORT cqrs_code_t cqrs_money_set(cqrs_money_t *m, int64_t amount, const char *currency, cqrs_error_t *err);

#ifdef __cplusplus
}
#endif
#endif
