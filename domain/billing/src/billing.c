/* Registration and wiring of the billing context. */
#include <stdlib.h>

#include "billing-private.h"

const billing_collections_t billing_default_collections = {"billing_queries", "billing_customers",
                                                           "billing_balances"};

static const cqrs_aggregate_type_t *const aggregates[] = {&billing_account, &billing_transfer, &billing_customer,
                                                          &billing_invoice, &billing_invoice_book, NULL};
static const cqrs_command_type_t *const commands[] = {
    &billing_open_account,   &billing_deposit,           &billing_withdraw,      &billing_refund,
    &billing_close_account,  &billing_request_transfer,  &billing_complete_transfer, &billing_fail_transfer,
    &billing_refund_transfer, &billing_register_customer, &billing_change_email,  &billing_forget_customer, &billing_issue_invoice,
    &billing_record_invoice, &billing_pay_invoice,       &billing_cancel_invoice, &billing_import_invoice, NULL};

cqrs_code_t billing_register(cqrs_registry_t *reg, cqrs_error_t *err) {
  cqrs_code_t rc = CQRS_OK;
  for (size_t i = 0; !rc && aggregates[i]; i++) rc = cqrs_registry_add_aggregate(reg, aggregates[i], err);
  for (size_t i = 0; !rc && commands[i]; i++) rc = cqrs_registry_add_command(reg, commands[i], err);
  if (!rc) rc = cqrs_registry_add_process(reg, &billing_transfer_process, err);
  if (!rc) rc = cqrs_registry_add_process(reg, &billing_invoice_process, err);
  return rc;
}

cqrs_code_t billing_register_handlers(cqrs_dispatcher_t *d, cqrs_error_t *err) {
  cqrs_code_t rc = billing__account_handlers(d, err);
  if (!rc) rc = billing__transfer_handlers(d, err);
  if (!rc) rc = billing__customer_handlers(d, err);
  if (!rc) rc = billing__invoice_handlers(d, err);
  if (!rc) rc = billing__migration_handlers(d, err);
  return rc;
}

billing_t *billing_projector_new(cqrs_readmodel_t *rm, const billing_collections_t *cols) {
  if (!rm) return NULL;
  billing_t *b = calloc(1, sizeof *b);
  if (!b) return NULL;
  b->rm = rm;
  b->cols = cols ? *cols : billing_default_collections;
  return b;
}

const cqrs_event_type_t *const billing_invoices_types[] = {&billing_customer_registered,
                                                           &billing_customer_email_changed,
                                                           &cqrs_forgotten_event_type,
                                                           &billing_invoice_issued,
                                                           &billing_invoice_paid,
                                                           &billing_invoice_cancelled,
                                                           NULL};
const cqrs_event_type_t *const billing_balances_types[] = {&billing_account_opened, &billing_account_deposited,
                                                           &billing_account_withdrawn, &billing_account_refunded,
                                                           &billing_account_closed, NULL};

cqrs_code_t billing_start(cqrs_dispatcher_t *d, cqrs_readmodel_t *rm, cqrs_checkpoint_store_t *cp,
                          const billing_collections_t *cols, billing_t **out, cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  if (!d || !rm || !cp) return cqrs_error_set(err, CQRS_EINVAL, "NULL dispatcher, read model or checkpoints");
  billing_t *b = billing_projector_new(rm, cols);
  if (!b) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate the billing context");
  b->d = d;
  cqrs_keys_t *keys = cqrs_store_keys(cqrs_dispatcher_store(d));
  /* With a key store the read model seals the customers' data too; without
   * one no customer can be written (the store refuses), so none reaches it. */
  if (keys) {
    cqrs_code_t rc = billing_seal_read_model(rm, &b->cols, keys, err);
    if (rc) {
      billing_destroy(b);
      return rc;
    }
  }
  unsigned rm_flags = cqrs_readmodel_blocking(rm) ? CQRS_SUBSCRIBE_BLOCKING : 0;
  const cqrs_projection_def_t invoices = {"billing.invoices", billing_invoices_types, billing_project_invoices, b, rm_flags};
  const cqrs_projection_def_t balances = {"billing.balances", billing_balances_types, billing_project_balances, b, rm_flags};
  cqrs_code_t rc = billing_register_handlers(d, err);
  if (!rc) rc = cqrs_projection_start(d, &invoices, cp, err);
  if (!rc) rc = cqrs_projection_start(d, &balances, cp, err);
  if (!rc) rc = cqrs_process_start(d, &billing_transfer_process, b, cp, err);
  if (!rc) rc = cqrs_process_start(d, &billing_invoice_process, b, cp, err);
  /* Even on an error the dispatcher may hold projections that point at b:
   * the caller closes the dispatcher, then destroys b. */
  *out = b;
  return rc;
}

void billing_destroy(billing_t *b) { free(b); }
