/* The transfer aggregate. A transfer is requested here; its process
 * (process.c) then debits, credits or refunds the accounts, and records the
 * outcome with complete, fail or refund. */
#include "billing-private.h"

static const cqrs_field_t request_fields[] = {
    CQRS_STRING(billing_request_transfer_t, transfer_id, "transferId", CQRS_F_REQUIRED),
    CQRS_STRING(billing_request_transfer_t, from, "from", CQRS_F_REQUIRED),
    CQRS_STRING(billing_request_transfer_t, to, "to", CQRS_F_REQUIRED),
    CQRS_MONEY_RANGE(billing_request_transfer_t, amount, "amount", 1, INT64_MAX), CQRS_FIELDS_END};
static const cqrs_field_t outcome_fields[] = {
    CQRS_STRING(billing_transfer_outcome_t, transfer_id, "transferId", CQRS_F_REQUIRED),
    CQRS_STRING(billing_transfer_outcome_t, reason, "reason", CQRS_F_OPTIONAL), CQRS_FIELDS_END};

static cqrs_code_t natural_request_id(const void *payload, char *buf, size_t cap, cqrs_error_t *err) {
  BILLING_UNUSED(cap);
  return cqrs_id_derive(buf, "transfer.request", ((const billing_request_transfer_t *)payload)->transfer_id, err);
}

/* Each command runs on the loop owning its transfer (dispatcher loops). */
static const char *requested_transfer(const void *p) { return ((const billing_request_transfer_t *)p)->transfer_id; }
static const char *ended_transfer(const void *p) { return ((const billing_transfer_outcome_t *)p)->transfer_id; }

const cqrs_command_type_t billing_request_transfer = {.name = "transfer.request",
                                                      .payload_size = sizeof(billing_request_transfer_t),
                                                      .fields = request_fields,
                                                      .make_id = natural_request_id,
                                                      .aggregate_id = requested_transfer};
const cqrs_command_type_t billing_complete_transfer = {.name = "transfer.complete",
                                                       .payload_size = sizeof(billing_transfer_outcome_t),
                                                       .fields = outcome_fields,
                                                       .aggregate_id = ended_transfer};
const cqrs_command_type_t billing_fail_transfer = {.name = "transfer.fail",
                                                   .payload_size = sizeof(billing_transfer_outcome_t),
                                                   .fields = outcome_fields,
                                                   .aggregate_id = ended_transfer};
const cqrs_command_type_t billing_refund_transfer = {.name = "transfer.refund",
                                                     .payload_size = sizeof(billing_transfer_outcome_t),
                                                     .fields = outcome_fields,
                                                     .aggregate_id = ended_transfer};

static const cqrs_field_t requested_fields[] = {
    CQRS_STRING(billing_transfer_requested_t, from, "from", CQRS_F_REQUIRED),
    CQRS_STRING(billing_transfer_requested_t, to, "to", CQRS_F_REQUIRED),
    CQRS_MONEY_RANGE(billing_transfer_requested_t, amount, "amount", 1, INT64_MAX), CQRS_FIELDS_END};
static const cqrs_field_t ended_fields[] = {CQRS_STRING(billing_transfer_ended_t, reason, "reason", 0),
                                            CQRS_FIELDS_END};

const cqrs_event_type_t billing_transfer_requested = {.name = "transfer.requested", .schema_version = 1,
                                                      .payload_size = sizeof(billing_transfer_requested_t),
                                                      .fields = requested_fields};
const cqrs_event_type_t billing_transfer_completed = {.name = "transfer.completed", .schema_version = 1,
                                                      .payload_size = sizeof(billing_transfer_ended_t),
                                                      .fields = ended_fields};
const cqrs_event_type_t billing_transfer_failed = {.name = "transfer.failed", .schema_version = 1,
                                                   .payload_size = sizeof(billing_transfer_ended_t),
                                                   .fields = ended_fields};
const cqrs_event_type_t billing_transfer_refunded = {.name = "transfer.refunded", .schema_version = 1,
                                                     .payload_size = sizeof(billing_transfer_ended_t),
                                                     .fields = ended_fields};

static void on_requested(void *state, const cqrs_event_t *e) {
  billing_transfer_state_t *s = state;
  const billing_transfer_requested_t *p = e->payload;
  s->status = BILLING_TRANSFER_REQUESTED;
  memcpy(s->from, p->from, sizeof s->from);
  memcpy(s->to, p->to, sizeof s->to);
  s->amount = p->amount;
}

static void ended(billing_transfer_state_t *s, int32_t status, const cqrs_event_t *e) {
  s->status = status;
  memcpy(s->reason, ((const billing_transfer_ended_t *)e->payload)->reason, sizeof s->reason);
}

static void on_completed(void *state, const cqrs_event_t *e) { ended(state, BILLING_TRANSFER_COMPLETED, e); }
static void on_failed(void *state, const cqrs_event_t *e) { ended(state, BILLING_TRANSFER_FAILED, e); }
static void on_refunded(void *state, const cqrs_event_t *e) { ended(state, BILLING_TRANSFER_REFUNDED, e); }

static const cqrs_apply_entry_t transfer_apply[] = {{&billing_transfer_requested, on_requested},
                                                    {&billing_transfer_completed, on_completed},
                                                    {&billing_transfer_failed, on_failed},
                                                    {&billing_transfer_refunded, on_refunded},
                                                    {NULL, NULL}};

const cqrs_aggregate_type_t billing_transfer = {
    .name = "transfer", .state_size = sizeof(billing_transfer_state_t), .apply = transfer_apply};

/* ---- domain ---- */

static cqrs_code_t handle_request(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  BILLING_UNUSED(data);
  const billing_request_transfer_t *c = cqrs_command_payload(cmd);
  if (!strcmp(c->from, c->to))
    return cqrs_reject(err, "transfer.same_account", "a transfer needs two accounts, not %s twice", c->from);
  cqrs_aggregate_t *t, *from;
  cqrs_code_t rc = cqrs_context_load(ctx, &billing_transfer, c->transfer_id, &t, err);
  if (rc) return rc;
  if (((const billing_transfer_state_t *)cqrs_aggregate_state_const(t))->status != BILLING_TRANSFER_NONE)
    return cqrs_reject(err, "transfer.already_requested", "transfer %s exists", c->transfer_id);
  /* Refuse at once what the debit would refuse, so that it changes nothing.
   * (The debit checks again: the balance may move in between.) */
  if ((rc = cqrs_context_load(ctx, &billing_account, c->from, &from, err))) return rc;
  const billing_account_state_t *a = cqrs_aggregate_state_const(from);
  if (!a->opened) return cqrs_reject(err, "account.not_open", "account %s does not exist", c->from);
  if (a->closed) return cqrs_reject(err, "account.closed", "account %s is closed", c->from);
  if (strcmp(a->currency, c->amount.currency))
    return cqrs_reject(err, "account.currency_mismatch", "account %s holds %s, not %s", c->from, a->currency,
                       c->amount.currency);
  if (a->balance < c->amount.amount)
    return cqrs_reject(err, "account.not_enough_money", "account %s holds " BILLING_MONEY_FMT ", " BILLING_MONEY_FMT " asked",
                       c->from, BILLING_MONEY_ARGS(a->balance, a->currency),
                       BILLING_MONEY_ARGS(c->amount.amount, c->amount.currency));
  billing_transfer_requested_t e;
  memset(&e, 0, sizeof e);
  memcpy(e.from, c->from, sizeof e.from);
  memcpy(e.to, c->to, sizeof e.to);
  e.amount = c->amount;
  return cqrs_aggregate_raise(t, &billing_transfer_requested, &e, err);
}

/* Records an outcome once; recording the same outcome again is a no-op. */
static cqrs_code_t end(cqrs_context_t *ctx, const cqrs_command_t *cmd, int32_t status, const cqrs_event_type_t *type,
                       cqrs_error_t *err) {
  const billing_transfer_outcome_t *c = cqrs_command_payload(cmd);
  cqrs_aggregate_t *t;
  cqrs_code_t rc = cqrs_context_load(ctx, &billing_transfer, c->transfer_id, &t, err);
  if (rc) return rc;
  const billing_transfer_state_t *s = cqrs_aggregate_state_const(t);
  if (s->status == status) return CQRS_OK;
  if (s->status != BILLING_TRANSFER_REQUESTED)
    return cqrs_reject(err, s->status == BILLING_TRANSFER_NONE ? "transfer.unknown" : "transfer.already_ended",
                       "transfer %s cannot end as %s", c->transfer_id, type->name);
  billing_transfer_ended_t e;
  memset(&e, 0, sizeof e);
  memcpy(e.reason, c->reason, sizeof e.reason);
  return cqrs_aggregate_raise(t, type, &e, err);
}

static cqrs_code_t handle_complete(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  BILLING_UNUSED(data);
  return end(ctx, cmd, BILLING_TRANSFER_COMPLETED, &billing_transfer_completed, err);
}

static cqrs_code_t handle_fail(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  BILLING_UNUSED(data);
  return end(ctx, cmd, BILLING_TRANSFER_FAILED, &billing_transfer_failed, err);
}

static cqrs_code_t handle_refund(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  BILLING_UNUSED(data);
  return end(ctx, cmd, BILLING_TRANSFER_REFUNDED, &billing_transfer_refunded, err);
}

cqrs_code_t billing__transfer_handlers(cqrs_dispatcher_t *d, cqrs_error_t *err) {
  cqrs_code_t rc = cqrs_dispatcher_register(d, &billing_request_transfer, handle_request, NULL, 0, err);
  if (!rc) rc = cqrs_dispatcher_register(d, &billing_complete_transfer, handle_complete, NULL, 0, err);
  if (!rc) rc = cqrs_dispatcher_register(d, &billing_fail_transfer, handle_fail, NULL, 0, err);
  if (!rc) rc = cqrs_dispatcher_register(d, &billing_refund_transfer, handle_refund, NULL, 0, err);
  return rc;
}
