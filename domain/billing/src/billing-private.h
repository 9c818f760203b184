/* Shared by the billing sources. */
#ifndef BILLING_PRIVATE_H
#define BILLING_PRIVATE_H

#include <stdio.h>
#include <string.h>

#include "billing/billing.h"

#define BILLING_UNUSED(x) (void)(x)

/* "550.00 EUR" for messages (two decimals, as the samples use). */
#define BILLING_MONEY_FMT "%s%lld.%02lld %s"
#define BILLING_MONEY_ARGS(amount, currency)                                                         \
  (amount) < 0 ? "-" : "", (long long)((amount) < 0 ? -((amount) / 100) : (amount) / 100), \
      (long long)((amount) < 0 ? -((amount) % 100) : (amount) % 100), (currency)


cqrs_code_t billing__account_handlers(cqrs_dispatcher_t *d, cqrs_error_t *err);
cqrs_code_t billing__transfer_handlers(cqrs_dispatcher_t *d, cqrs_error_t *err);
cqrs_code_t billing__customer_handlers(cqrs_dispatcher_t *d, cqrs_error_t *err);
cqrs_code_t billing__invoice_handlers(cqrs_dispatcher_t *d, cqrs_error_t *err);
cqrs_code_t billing__migration_handlers(cqrs_dispatcher_t *d, cqrs_error_t *err);
/* The book's apply of invoice.imported (migration.c). */
void billing__book_on_imported(void *state, const cqrs_event_t *e);

struct billing {
  cqrs_dispatcher_t *d; /* NULL for a bare projector */
  cqrs_readmodel_t *rm;
  billing_collections_t cols;
};


#endif
