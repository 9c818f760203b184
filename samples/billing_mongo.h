/* The billing context on MongoDB: the seed's collection names and indexes.
 * Here, in the application, so that neither billing nor libcqrs-mongo knows
 * the other. */
#ifndef BILLING_MONGO_H
#define BILLING_MONGO_H

#include <billing/billing.h>
#include <cqrs/mongo.h>

/* events: billing_commands; snapshots, checkpoints, dead letters: billing_*. */
extern const cqrs_mongo_options_t billing_mongo_options;

/* The store's indexes, and on billing_queries the seed's
 * {"customer.id": 1, status: 1}, {amount: 1, currency: 1}, {createdAt: -1}. */
cqrs_code_t billing_mongo_indexes(cqrs_mongo_t *m, cqrs_error_t *err);

/* Drops the billing collections (the sample's --reset). */
cqrs_code_t billing_mongo_reset(cqrs_mongo_t *m, cqrs_error_t *err);

#endif
