/* The process manager of transfers and invoices: a blocking, checkpointed
 * projection. Each step is a command with an id derived from the transfer
 * or invoice, executed synchronously, so the checkpoint passes an event only
 * once its step is committed, and a step replayed after a crash is a
 * duplicate that commits nothing.
 *
 *   transfer.requested          -> withdraw from the source      (T/debit)
 *     refused                   -> transfer.fail                 (T/fail)
 *   account.withdrawn for T     -> deposit to the target         (T/credit)
 *     done                      -> transfer.complete             (T/complete)
 *     refused                   -> refund the source             (T/refund)
 *                                  and transfer.refund           (T/refunded)
 *   invoice.numbered            -> invoice.record on the invoice's stream
 */
#include "billing-private.h"

/* Executes one step. `id` NULL: the command type's natural id. */
static cqrs_code_t step(billing_t *b, const cqrs_command_type_t *type, const void *payload, const char *id,
                        cqrs_error_t *err) {
  cqrs_command_t *cmd;
  cqrs_code_t rc = cqrs_command_new(type, payload, &cmd, err);
  if (rc) return rc;
  if (id && (rc = cqrs_command_set_id(cmd, id, err))) {
    cqrs_command_destroy(cmd);
    return rc;
  }
  return cqrs_dispatcher_execute(b->d, cmd, err, NULL);
}

static cqrs_code_t outcome(billing_t *b, const cqrs_command_type_t *type, const char *transfer, const char *reason,
                           const char *step_name, cqrs_error_t *err) {
  billing_transfer_outcome_t o;
  memset(&o, 0, sizeof o);
  snprintf(o.transfer_id, sizeof o.transfer_id, "%s", transfer);
  snprintf(o.reason, sizeof o.reason, "%s", reason);
  char id[CQRS_ID_MAX];
  BILLING_STEP_ID(id, transfer, step_name);
  return step(b, type, &o, id, err);
}

static cqrs_code_t move(billing_t *b, const cqrs_command_type_t *type, const char *account, const cqrs_money_t *amount,
                        const char *transfer, const char *step_name, cqrs_error_t *err) {
  billing_move_t m;
  memset(&m, 0, sizeof m);
  snprintf(m.account_id, sizeof m.account_id, "%s", account);
  m.amount = *amount;
  snprintf(m.transfer_id, sizeof m.transfer_id, "%s", transfer);
  char id[CQRS_ID_MAX];
  BILLING_STEP_ID(id, transfer, step_name);
  return step(b, type, &m, id, err);
}

static cqrs_code_t on_requested(billing_t *b, const cqrs_event_t *e, cqrs_error_t *err) {
  const billing_transfer_requested_t *p = e->payload;
  const char *t = cqrs_event_aggregate_id(e);
  cqrs_code_t rc = move(b, &billing_withdraw, p->from, &p->amount, t, "debit", err);
  if (rc != CQRS_EREJECTED) return rc;
  char reason[CQRS_NAME_MAX];
  snprintf(reason, sizeof reason, "%s", err->name);
  return outcome(b, &billing_fail_transfer, t, reason, "fail", err);
}

static cqrs_code_t on_debited(billing_t *b, const char *t, cqrs_error_t *err) {
  cqrs_aggregate_t *agg;
  cqrs_code_t rc = cqrs_repository_load(cqrs_dispatcher_store(b->d), &billing_transfer, t, &agg, err);
  if (rc) return rc;
  billing_transfer_state_t s = *(const billing_transfer_state_t *)cqrs_aggregate_state_const(agg);
  cqrs_aggregate_destroy(agg);
  if (s.status == BILLING_TRANSFER_NONE) return CQRS_OK; /* a withdrawal naming no transfer we know */
  rc = move(b, &billing_deposit, s.to, &s.amount, t, "credit", err);
  if (rc == CQRS_OK) return outcome(b, &billing_complete_transfer, t, "", "complete", err);
  if (rc != CQRS_EREJECTED) return rc;
  char reason[CQRS_NAME_MAX];
  snprintf(reason, sizeof reason, "%s", err->name);
  if ((rc = move(b, &billing_refund, s.from, &s.amount, t, "refund", err))) {
    if (rc == CQRS_EREJECTED) rc = cqrs_error_set(err, CQRS_EHANDLER, "transfer %s: refund refused: %s", t, err->message);
    return rc;
  }
  return outcome(b, &billing_refund_transfer, t, reason, "refunded", err);
}

static cqrs_code_t on_numbered(billing_t *b, const cqrs_event_t *e, cqrs_error_t *err) {
  cqrs_code_t rc = step(b, &billing_record_invoice, e->payload, NULL, err);
  if (rc == CQRS_EREJECTED) rc = cqrs_error_set(err, CQRS_EHANDLER, "cannot record invoice: %s", err->message);
  return rc;
}

cqrs_code_t billing__process(const cqrs_event_t *e, void *data, cqrs_error_t *err) {
  billing_t *b = data;
  if (e->type == &billing_transfer_requested) return on_requested(b, e, err);
  if (e->type == &billing_invoice_numbered) return on_numbered(b, e, err);
  if (e->type == &billing_account_withdrawn) {
    const billing_account_moved_t *p = e->payload;
    return p->transfer_id[0] ? on_debited(b, p->transfer_id, err) : CQRS_OK;
  }
  return CQRS_OK;
}
