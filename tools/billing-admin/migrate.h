/* migrate's state, shared by migrate.c (the batches, progress, report)
 * and migrate_known.c (what the store and the legacy collection already
 * say: customers registered, the owner of each invoice number). */
#ifndef BILLING_ADMIN_MIGRATE_H
#define BILLING_ADMIN_MIGRATE_H

#include <uthash.h>

#include "admin.h"
#include "legacy.h"
#include "memproj.h"

#define MIGRATE_PROGRESS "billing_migration"
#define MIGRATE_REJECTS "billing_migration_rejects"

/* A customer the store holds (registered by this run or an earlier one,
 * or by the application), with what it was registered with. */
typedef struct known_customer {
  UT_hash_handle hh;
  char *name, *email;
  char id[];
} known_customer_t;

/* The first valid legacy document (in _id order) with an invoice number:
 * the one that migrates; any other with that number is refused. */
typedef struct number_owner {
  UT_hash_handle hh;
  char owner[LEGACY_ID_MAX];
  char number[];
} number_owner_t;

typedef struct mig {
  admin_t *a;
  const char *source;
  long long batch;
  bool restart, quiet;
  memproj_t *mp;
  known_customer_t *customers;
  number_owner_t *numbers;
  int64_t projected; /* last position projected in this run */
  long long migrated, already, refused, conflicts, total;
  long long customers_known, customers_appended; /* known at the start; appends tried by this run */
  char last_id[LEGACY_ID_MAX + 32];
  bool resumed; /* the first batch may hold invoices a killed run committed */
  cqrs_dispatcher_t *d;
} mig_t;

/* Loads the customers the store holds (one query over the customer
 * streams' first commits). */
int known_customers_load(mig_t *g);
/* Adds one, copying the strings. */
int known_customer_add(mig_t *g, const char *id, const char *name, const char *email);
known_customer_t *known_customer_find(mig_t *g, const char *id);
/* The owner of `number`, NULL if none. Claims it for `id` when free. */
const char *number_owner_claim(mig_t *g, const char *number, const char *id, bool *claimed);
void known_free(mig_t *g);

/* Records `doc` in the rejects collection: kind "refused" (left untouched)
 * or "conflict" (migrated, but something of it was not kept). */
int migrate_record(mig_t *g, const bson_t *doc, bool refused, const char *reason, const char *kind);

#endif
