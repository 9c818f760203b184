/* The legacy invoice document (the seed's billing_documents shape) and its
 * checks. */
#ifndef BILLING_ADMIN_LEGACY_H
#define BILLING_ADMIN_LEGACY_H

#include <billing/billing.h>

#define LEGACY_ID_MAX 41 /* 40 characters: natural command ids keep that many */

typedef struct legacy {
  char id[LEGACY_ID_MAX];
  char number[BILLING_NUMBER_MAX];
  int year;
  int64_t sequence;
  char customer_id[LEGACY_ID_MAX];
  char name[BILLING_NAME_MAX];
  char email[BILLING_EMAIL_MAX];
  cqrs_money_t amount; /* exact minor units */
  int status;          /* billing_invoice_status_t */
} legacy_t;

/* Checks `doc` and fills `l`; false with the reason (e.g. "amount is
 * negative", "missing field customer") in reason[cap] otherwise. */
bool legacy_parse(const bson_t *doc, legacy_t *l, char *reason, size_t cap);

#endif
