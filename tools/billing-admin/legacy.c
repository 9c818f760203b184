/* A legacy billing_documents document, checked and converted: what migrate
 * turns into events and what it refuses, with the reason. */
#include <string.h>

#include "legacy.h"

bool legacy_parse(const bson_t *doc, legacy_t *l, cqrs_error_t *err) {
  memset(l, 0, sizeof *l);
  if (billing_legacy_invoice_parse(doc, &l->v, err)) return false;
  /* Natural command ids keep 40 characters of an id: longer ones could
   * collide. */
  if (strlen(l->v.id) >= LEGACY_ID_MAX) {
    cqrs_error_set(err, CQRS_EINVAL, "_id (over %d characters) is too long", LEGACY_ID_MAX - 1);
    snprintf(err->name, sizeof err->name, "legacy.too_long");
    return false;
  }
  if (strlen(l->v.customer_id) >= LEGACY_ID_MAX) {
    cqrs_error_set(err, CQRS_EINVAL, "customer.id (over %d characters) is too long", LEGACY_ID_MAX - 1);
    snprintf(err->name, sizeof err->name, "legacy.too_long");
    return false;
  }
  return billing_invoice_number_parse(l->v.number, &l->year, &l->sequence);
}
