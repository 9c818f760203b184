/* The legacy invoice document (the seed's billing_documents shape) as the
 * migration takes it: the domain's reading of it (billing_legacy_invoice_parse,
 * the one the mongodb_cqs_enabled read path uses too) and what the
 * migration needs on top. */
#ifndef BILLING_ADMIN_LEGACY_H
#define BILLING_ADMIN_LEGACY_H

#include <billing/billing.h>

#define LEGACY_ID_MAX 41 /* 40 characters: natural command ids keep that many */

typedef struct legacy {
  billing_invoice_view_t v; /* id, number, amount (minor units), customer, status, dates */
  int year;
  int64_t sequence;
} legacy_t;

/* Checks `doc` and fills `l`; false otherwise, with the reason in
 * err->message ("amount is negative", "missing field customer") and its
 * kind in err->name ("legacy.negative_amount"...). */
bool legacy_parse(const bson_t *doc, legacy_t *l, cqrs_error_t *err);

#endif
