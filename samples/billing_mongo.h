/* The billing context on MongoDB: the seed's collection names and indexes.
 * Here, in the application, so that neither billing nor libcqrs-mongo knows
 * the other. */
#ifndef BILLING_MONGO_H
#define BILLING_MONGO_H

#include <billing/billing.h>
#include <cqrs/mongo.h>

/* events: billing_commands; snapshots, checkpoints, dead letters, keys: billing_*. */
extern const cqrs_mongo_options_t billing_mongo_options;

/* The store's indexes, and on billing_queries the seed's
 * {"customer.id": 1, status: 1}, {amount: 1, currency: 1}, {createdAt: -1}. */
cqrs_code_t billing_mongo_indexes(cqrs_mongo_t *m, cqrs_error_t *err);

/* `uri` fit to print (a new string, free with bson_free): the password and
 * the value of every option that can hold a secret replaced by "***" --
 * mongoc's tlsCertificateKeyFilePassword and its deprecated spelling
 * sslClientCertificateKeyPassword, authMechanismProperties (which carries
 * AWS_SESSION_TOKEN), and any option the driver does not know (a misspelt
 * secret is still a secret). Never NULL but for allocation failure. */
char *billing_mongo_uri_redacted(const char *uri);

/* The key store of the customers' personal data, in billing_keys
 * (cqrs_mongo_keys_new). Its data keys are wrapped by the master key in
 * the environment variable BILLING_MASTER_KEY (64 hex digits), when it is
 * set: it comes from where the application keeps its secrets, never from
 * the database. A malformed one is CQRS_EINVAL. */
cqrs_code_t billing_mongo_keys(cqrs_mongo_t *m, cqrs_keys_t **out, cqrs_error_t *err);

/* Drops the billing collections (the sample's --reset). */
cqrs_code_t billing_mongo_reset(cqrs_mongo_t *m, cqrs_error_t *err);

/* A running process announces its /metrics endpoint in the collection
 * cqrs_instances of the URI's database: {_id: "<host>:<pid>", endpoint, app,
 * startedAt, heartbeatAt}, heartbeatAt refreshed every 5 s from the thread
 * pool (the timer does not keep `loop` alive); the operator tool lists them.
 * Stop removes the document (a short blocking call: at shutdown). */
typedef struct billing_instance billing_instance_t;
cqrs_code_t billing_instance_start(uv_loop_t *loop, const char *uri, const char *app, const char *endpoint,
                                   billing_instance_t **out, cqrs_error_t *err);
void billing_instance_stop(billing_instance_t *inst);

#endif
