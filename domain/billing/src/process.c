/* The billing context's process managers, on the framework's primitive
 * (cqrs/process.h).
 *
 * Transfers: one instance per transfer, started by transfer.requested and
 * routed by the transfer aggregate's own id, so an event that merely names
 * a transfer in its payload never reaches it:
 *   requested          -> debit    (account.withdraw from the source)
 *   debit accepted     -> credit   (account.deposit to the target)
 *   debit refused      -> fail     (transfer.fail: nothing moved)
 *   credit accepted    -> complete (transfer.complete)
 *   credit refused     -> refund   (account.refund to the source)
 *   refund accepted    -> refunded (transfer.refund)
 *   complete, fail, refunded recorded -> the instance ends
 * Every outcome is recorded in the instance's stream before the next step
 * is decided, so a replay re-sends nothing that has an outcome.
 *
 * Invoices: one instance per invoice.numbered event of a year's book
 * (routed by the book's id and the event's version), which records the
 * invoice on its own stream (invoice.record). */
#include "billing-private.h"

enum { T_DEBITING = 1, T_CREDITING, T_COMPLETING, T_FAILING, T_REFUNDING, T_RECORDING_REFUND, T_STUCK };

typedef struct transfer_process {
  int32_t stage;
  char from[CQRS_ID_MAX];
  char to[CQRS_ID_MAX];
  cqrs_money_t amount;
  char reason[CQRS_NAME_MAX];
} transfer_process_t;

static const cqrs_field_t transfer_state_fields[] = {
    CQRS_INT32(transfer_process_t, stage, "stage", 0), CQRS_STRING(transfer_process_t, from, "from", 0),
    CQRS_STRING(transfer_process_t, to, "to", 0), CQRS_MONEY(transfer_process_t, amount, "amount", 0),
    CQRS_STRING(transfer_process_t, reason, "reason", 0), CQRS_FIELDS_END};

static cqrs_code_t move(cqrs_process_t *p, const char *step, const char *account, const cqrs_money_t *amount,
                        cqrs_error_t *err) {
  billing_move_t m;
  memset(&m, 0, sizeof m);
  snprintf(m.account_id, sizeof m.account_id, "%s", account);
  m.amount = *amount;
  snprintf(m.transfer_id, sizeof m.transfer_id, "%s", cqrs_process_id(p));
  return cqrs_process_send(p, step, &m, err);
}

static cqrs_code_t outcome(cqrs_process_t *p, const char *step, const char *reason, cqrs_error_t *err) {
  billing_transfer_outcome_t o;
  memset(&o, 0, sizeof o);
  snprintf(o.transfer_id, sizeof o.transfer_id, "%s", cqrs_process_id(p));
  snprintf(o.reason, sizeof o.reason, "%s", reason);
  return cqrs_process_send(p, step, &o, err);
}

static cqrs_code_t on_requested(cqrs_process_t *p, void *state, const cqrs_event_t *e, void *data,
                                cqrs_error_t *err) {
  BILLING_UNUSED(data);
  transfer_process_t *s = state;
  const billing_transfer_requested_t *r = e->payload;
  memcpy(s->from, r->from, sizeof s->from);
  memcpy(s->to, r->to, sizeof s->to);
  s->amount = r->amount;
  s->stage = T_DEBITING;
  return move(p, "debit", s->from, &s->amount, err);
}

static cqrs_code_t on_transfer_step(cqrs_process_t *p, void *state, const cqrs_step_outcome_t *o, void *data,
                                    cqrs_error_t *err) {
  BILLING_UNUSED(data);
  transfer_process_t *s = state;
  bool ok = o->status == CQRS_STEP_ACCEPTED;
  if (!ok && s->stage != T_COMPLETING && s->stage != T_FAILING && s->stage != T_RECORDING_REFUND)
    snprintf(s->reason, sizeof s->reason, "%s", o->reason);
  switch (s->stage) {
    case T_DEBITING:
      s->stage = ok ? T_CREDITING : T_FAILING;
      return ok ? move(p, "credit", s->to, &s->amount, err) : outcome(p, "fail", s->reason, err);
    case T_CREDITING:
      s->stage = ok ? T_COMPLETING : T_REFUNDING;
      return ok ? outcome(p, "complete", "", err) : move(p, "refund", s->from, &s->amount, err);
    case T_REFUNDING:
      if (!ok) {
        /* The source refused its own money back (it cannot, short of a
         * bug): the amount stays debited and the transfer open, for an
         * operator to see in the process's stream. */
        s->stage = T_STUCK;
        cqrs_process_end(p);
        return CQRS_OK;
      }
      s->stage = T_RECORDING_REFUND;
      return outcome(p, "refunded", s->reason, err);
    default:
      cqrs_process_end(p);
      return CQRS_OK;
  }
}

static const cqrs_process_route_t transfer_routes[] = {{&billing_transfer_requested, true, NULL, on_requested},
                                                       {NULL, false, NULL, NULL}};
static const cqrs_process_step_t transfer_steps[] = {
    {"debit", &billing_withdraw},          {"credit", &billing_deposit},    {"refund", &billing_refund},
    {"complete", &billing_complete_transfer}, {"fail", &billing_fail_transfer}, {"refunded", &billing_refund_transfer},
    {NULL, NULL}};

const cqrs_process_type_t billing_transfer_process = {.name = "transfer",
                                                      .state_size = sizeof(transfer_process_t),
                                                      .state_fields = transfer_state_fields,
                                                      .routes = transfer_routes,
                                                      .steps = transfer_steps,
                                                      .on_step = on_transfer_step};

/* ---- invoices ---- */

typedef struct invoice_process {
  int32_t recording;
} invoice_process_t;

static const cqrs_field_t invoice_state_fields[] = {CQRS_INT32(invoice_process_t, recording, "recording", 0),
                                                    CQRS_FIELDS_END};

static bool route_numbered(const cqrs_event_t *e, char *buf, size_t cap) {
  return snprintf(buf, cap, "%s.%lld", cqrs_event_aggregate_id(e), (long long)e->version) < (int)cap;
}

static cqrs_code_t on_numbered(cqrs_process_t *p, void *state, const cqrs_event_t *e, void *data,
                               cqrs_error_t *err) {
  BILLING_UNUSED(data);
  ((invoice_process_t *)state)->recording = 1;
  return cqrs_process_send(p, "record", e->payload, err);
}

static cqrs_code_t on_invoice_step(cqrs_process_t *p, void *state, const cqrs_step_outcome_t *o, void *data,
                                   cqrs_error_t *err) {
  BILLING_UNUSED(state);
  BILLING_UNUSED(data);
  BILLING_UNUSED(o);
  BILLING_UNUSED(err);
  cqrs_process_end(p);
  return CQRS_OK;
}

static const cqrs_process_route_t invoice_routes[] = {{&billing_invoice_numbered, true, route_numbered, on_numbered},
                                                      {NULL, false, NULL, NULL}};
static const cqrs_process_step_t invoice_steps[] = {{"record", &billing_record_invoice}, {NULL, NULL}};

const cqrs_process_type_t billing_invoice_process = {.name = "invoice",
                                                     .state_size = sizeof(invoice_process_t),
                                                     .state_fields = invoice_state_fields,
                                                     .routes = invoice_routes,
                                                     .steps = invoice_steps,
                                                     .on_step = on_invoice_step};
