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
  CQRS_FIELD_DOC,    /* a nested struct described by its own field table */
  CQRS_FIELD_ARRAY,  /* a bounded array of items (CQRS_ARRAY): a BSON array */
  CQRS_FIELD_SUBJECT /* no member: names the subject of the table's personal fields (CQRS_SUBJECT_FN) */
} cqrs_field_kind_t;

/* Field flags. A range is given with a _RANGE macro, which sets both
 * CQRS_F_RANGE and CQRS_F_BOUNDS with its [lo, hi]: CQRS_F_RANGE passed to a
 * plain macro has no bounds, so a table holding CQRS_F_RANGE without
 * CQRS_F_BOUNDS, or with min > max, is refused (CQRS_EINVAL) when its type
 * is registered and when it validates. See cqrs_fields_check. */
#define CQRS_F_REQUIRED 0x1u /* strings non-empty; decode fails when absent */
#define CQRS_F_RANGE 0x2u    /* integers, times and money amounts within [min, max] */
#define CQRS_F_OPTIONAL 0x4u /* decode leaves the member zeroed when absent */
#define CQRS_F_BOUNDS 0x8u   /* min and max were given: set by the _RANGE macros */
/* Personal data (docs/privacy.md). A CQRS_F_PERSONAL field is stored
 * encrypted with the key of its data subject, and reads as a placeholder
 * once the subject is forgotten (cqrs/personal.h). A table holding one
 * names its subject exactly once: a string field flagged CQRS_F_SUBJECT
 * (its value is the subject's id), or a CQRS_SUBJECT_FN / CQRS_SUBJECT_OWNER
 * entry; cqrs_fields_check refuses a personal field without a subject. The
 * subject field itself is never personal. */
#define CQRS_F_PERSONAL 0x10u
#define CQRS_F_SUBJECT 0x20u

/* Returns the id of the data subject of `obj` (a payload, a state, or NULL
 * for a read-model document); `owner` is the id of the aggregate the event
 * or snapshot belongs to, or the document's id. NULL or "": no subject
 * (writing a personal field then fails). */
typedef const char *(*cqrs_subject_cb)(const void *obj, const char *owner);
typedef struct cqrs_field {
  const char *key; /* BSON key */
  cqrs_field_kind_t kind;
  size_t offset;
  size_t size; /* member size; for strings the capacity including NUL */
  unsigned flags;
  int64_t min, max;
  const struct cqrs_field *fields; /* CQRS_FIELD_DOC: the nested table */
  cqrs_subject_cb subject;          /* CQRS_FIELD_SUBJECT: the function */
} cqrs_field_t;

#define CQRS__MEMBER_SIZE(T, m) sizeof(((T *)0)->m)
#define CQRS__FIELD(T, m, key, kind, flags, lo, hi, table) \
  { (key), (kind), offsetof(T, m), CQRS__MEMBER_SIZE(T, m), (flags), (lo), (hi), (table), NULL }
/* The plain macros drop CQRS_F_BOUNDS: only a _RANGE macro gives bounds. */
#define CQRS__PLAIN(T, m, key, kind, flags, table) \
  CQRS__FIELD(T, m, key, kind, (flags) & ~CQRS_F_BOUNDS, 0, 0, table)
#define CQRS__RANGE(T, m, key, kind, lo, hi) CQRS__FIELD(T, m, key, kind, CQRS_F_RANGE | CQRS_F_BOUNDS, lo, hi, NULL)

#define CQRS_STRING(T, m, key, flags) CQRS__PLAIN(T, m, key, CQRS_FIELD_STRING, flags, NULL)
#define CQRS_INT64(T, m, key, flags) CQRS__PLAIN(T, m, key, CQRS_FIELD_INT64, flags, NULL)
#define CQRS_INT32(T, m, key, flags) CQRS__PLAIN(T, m, key, CQRS_FIELD_INT32, flags, NULL)
#define CQRS_BOOL(T, m, key, flags) CQRS__PLAIN(T, m, key, CQRS_FIELD_BOOL, flags, NULL)
#define CQRS_TIME(T, m, key, flags) CQRS__PLAIN(T, m, key, CQRS_FIELD_TIME, flags, NULL)
#define CQRS_MONEY(T, m, key, flags) CQRS__PLAIN(T, m, key, CQRS_FIELD_MONEY, flags, NULL)
#define CQRS_DOC(T, m, key, table, flags) CQRS__PLAIN(T, m, key, CQRS_FIELD_DOC, flags, table)
/* Numbers within [lo, hi], both included (e.g. 1..INT64_MAX for "positive");
 * for money the amount. */
#define CQRS_INT64_RANGE(T, m, key, lo, hi) CQRS__RANGE(T, m, key, CQRS_FIELD_INT64, lo, hi)
#define CQRS_INT32_RANGE(T, m, key, lo, hi) CQRS__RANGE(T, m, key, CQRS_FIELD_INT32, lo, hi)
#define CQRS_TIME_RANGE(T, m, key, lo, hi) CQRS__RANGE(T, m, key, CQRS_FIELD_TIME, lo, hi)
#define CQRS_MONEY_RANGE(T, m, key, lo, hi) CQRS__RANGE(T, m, key, CQRS_FIELD_MONEY, lo, hi)
#define CQRS_FIELDS_END { NULL, CQRS_FIELD_END, 0, 0, 0, 0, 0, NULL, NULL }
/* The subject of the table's personal fields is what `fn` returns. */
#define CQRS_SUBJECT_FN(fn) { "", CQRS_FIELD_SUBJECT, 0, 0, 0, 0, 0, NULL, (fn) }
/* The subject is the owner: the aggregate whose event or snapshot it is
 * (a customer's events name no customer id: their aggregate id is it), or
 * the read-model document's id. */
#define CQRS_SUBJECT_OWNER CQRS_SUBJECT_FN(cqrs_subject_owner)
CQRS_EXPORT const char *cqrs_subject_owner(const void *obj, const char *owner);

/* Collections: `E m[N]` with an `int32_t count` member beside it, encoded
 * as a BSON array of the first `count` items. `items` is a table of one
 * entry made with a CQRS_ITEM_ macro (then CQRS_FIELDS_END) saying what an
 * item is: strings, numbers, money, or documents of their own table (which
 * may hold arrays in turn). CQRS_F_REQUIRED: at least one item. Decoding
 * more than N items is CQRS_ECODEC; validation checks the count and every
 * item; items past the count are ignored. Example:
 *   typedef struct { char sku[16]; int32_t qty; } line_t;
 *   typedef struct { char id[CQRS_ID_MAX]; line_t lines[8]; int32_t nlines; } order_t;
 *   static const cqrs_field_t line_fields[] = {CQRS_STRING(line_t, sku, "sku", CQRS_F_REQUIRED),
 *       CQRS_INT32_RANGE(line_t, qty, "qty", 1, 1000), CQRS_FIELDS_END};
 *   static const cqrs_field_t line_item[] = {CQRS_ITEM_DOC(line_t, line_fields), CQRS_FIELDS_END};
 *   ... CQRS_ARRAY(order_t, lines, nlines, "lines", line_item, CQRS_F_REQUIRED) ... */
#define CQRS__COUNT_OFFSET(T, count) \
  ((int64_t)offsetof(T, count) + 0 * (int64_t)sizeof(char[CQRS__MEMBER_SIZE(T, count) == sizeof(int32_t) ? 1 : -1]))
#define CQRS_ARRAY(T, m, count, key, items, flags)                                                             \
  { (key), CQRS_FIELD_ARRAY, offsetof(T, m), CQRS__MEMBER_SIZE(T, m), (flags) & ~CQRS_F_BOUNDS, CQRS__COUNT_OFFSET(T, count), \
    0, (items), NULL }
#define CQRS__ITEM(kind, size, flags, lo, hi, table) { "", (kind), 0, (size), (flags), (lo), (hi), (table), NULL }
#define CQRS_ITEM_STRING(cap, flags) CQRS__ITEM(CQRS_FIELD_STRING, (cap), (flags) & ~CQRS_F_BOUNDS, 0, 0, NULL)
#define CQRS_ITEM_INT64(flags) CQRS__ITEM(CQRS_FIELD_INT64, sizeof(int64_t), (flags) & ~CQRS_F_BOUNDS, 0, 0, NULL)
#define CQRS_ITEM_INT64_RANGE(lo, hi) \
  CQRS__ITEM(CQRS_FIELD_INT64, sizeof(int64_t), CQRS_F_RANGE | CQRS_F_BOUNDS, (lo), (hi), NULL)
#define CQRS_ITEM_INT32(flags) CQRS__ITEM(CQRS_FIELD_INT32, sizeof(int32_t), (flags) & ~CQRS_F_BOUNDS, 0, 0, NULL)
#define CQRS_ITEM_INT32_RANGE(lo, hi) \
  CQRS__ITEM(CQRS_FIELD_INT32, sizeof(int32_t), CQRS_F_RANGE | CQRS_F_BOUNDS, (lo), (hi), NULL)
#define CQRS_ITEM_MONEY_RANGE(lo, hi) \
  CQRS__ITEM(CQRS_FIELD_MONEY, sizeof(cqrs_money_t), CQRS_F_RANGE | CQRS_F_BOUNDS, (lo), (hi), NULL)
#define CQRS_ITEM_DOC(E, table) CQRS__ITEM(CQRS_FIELD_DOC, sizeof(E), 0, 0, 0, (table))

/* Checks a table itself: known kinds and flags, member sizes that fit the
 * kind, keys present, nested tables present, and every CQRS_F_RANGE with
 * bounds from a _RANGE macro and min <= max; personal fields with exactly
 * one subject (a CQRS_F_SUBJECT string, or a CQRS_SUBJECT_FN entry, in the
 * table or a nested one), not inside arrays, at most 32 of them, the
 * subject itself not personal. CQRS_EINVAL naming the field.
 * The registry calls it for every type it is given. */
CQRS_EXPORT cqrs_code_t cqrs_fields_check(const cqrs_field_t *fields, cqrs_error_t *err);

/* Appends every field of `obj` to `out` (initialised by the caller).
 * Returns CQRS_ETOO_LARGE if the document cannot grow, CQRS_EINVAL on NULLs. */
CQRS_EXPORT cqrs_code_t cqrs_fields_encode(const cqrs_field_t *fields, const void *obj, bson_t *out,
                                           cqrs_error_t *err);

/* Decodes `in` into `obj` (zeroed first; `obj` must be the table's struct).
 * Unknown keys are ignored. A missing required key, a key of the wrong BSON
 * type, an oversized string or one that is not valid UTF-8 (or holds a NUL)
 * fails with CQRS_ECODEC naming the key. */
CQRS_EXPORT cqrs_code_t cqrs_fields_decode(const cqrs_field_t *fields, const bson_t *in, void *obj,
                                           cqrs_error_t *err);

/* Technical validation: strings NUL-terminated within their member, valid
 * UTF-8 and non-empty when required, ranges, currencies of three capital
 * letters. Fails with CQRS_EINVALID_COMMAND naming the field; a range field
 * without bounds (see CQRS_F_BOUNDS) is CQRS_EINVAL. */
CQRS_EXPORT cqrs_code_t cqrs_fields_validate(const cqrs_field_t *fields, const void *obj, cqrs_error_t *err);

/* Checks that `doc` is well-formed BSON and that every string in it, keys
 * included, in nested documents and arrays too, is valid UTF-8 without NUL
 * bytes; CQRS_ECODEC naming the key otherwise, or when nesting goes deeper
 * than 100 levels. The decoders of stored documents call it first: libbson's
 * bson_validate (1.23) lets invalid UTF-8 and some corrupt nested documents
 * through, on which other libbson calls then abort. */
CQRS_EXPORT cqrs_code_t cqrs_bson_check_utf8(const bson_t *doc, cqrs_error_t *err);

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
