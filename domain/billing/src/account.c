/* The account aggregate: open, deposit, withdraw, refund, close. */
#include "billing-private.h"

static const cqrs_field_t open_fields[] = {
    CQRS_STRING(billing_open_account_t, account_id, "accountId", CQRS_F_REQUIRED),
    CQRS_STRING(billing_open_account_t, owner, "owner", CQRS_F_REQUIRED),
    CQRS_STRING(billing_open_account_t, currency, "currency", CQRS_F_REQUIRED), CQRS_FIELDS_END};
static const cqrs_field_t move_fields[] = {
    CQRS_STRING(billing_move_t, account_id, "accountId", CQRS_F_REQUIRED),
    CQRS_MONEY_RANGE(billing_move_t, amount, "amount", 1, INT64_MAX),
    CQRS_STRING(billing_move_t, transfer_id, "transferId", CQRS_F_OPTIONAL), CQRS_FIELDS_END};
static const cqrs_field_t close_fields[] = {
    CQRS_STRING(billing_close_account_t, account_id, "accountId", CQRS_F_REQUIRED), CQRS_FIELDS_END};

static cqrs_code_t validate_currency(const void *payload, cqrs_error_t *err) {
  const billing_open_account_t *c = payload;
  cqrs_money_t probe;
  return cqrs_money_set(&probe, 0, c->currency, err);
}

/* Each command runs on the loop owning its account (dispatcher loops). */
static const char *opened_account(const void *p) { return ((const billing_open_account_t *)p)->account_id; }
static const char *moved_account(const void *p) { return ((const billing_move_t *)p)->account_id; }
static const char *closed_account(const void *p) { return ((const billing_close_account_t *)p)->account_id; }

const cqrs_command_type_t billing_open_account = {.name = "account.open",
                                                  .payload_size = sizeof(billing_open_account_t),
                                                  .fields = open_fields,
                                                  .validate = validate_currency,
                                                  .aggregate_id = opened_account};
const cqrs_command_type_t billing_deposit = {.name = "account.deposit", .payload_size = sizeof(billing_move_t),
                                             .fields = move_fields, .aggregate_id = moved_account};
const cqrs_command_type_t billing_withdraw = {.name = "account.withdraw", .payload_size = sizeof(billing_move_t),
                                              .fields = move_fields, .aggregate_id = moved_account};
const cqrs_command_type_t billing_refund = {.name = "account.refund", .payload_size = sizeof(billing_move_t),
                                            .fields = move_fields, .aggregate_id = moved_account};
const cqrs_command_type_t billing_close_account = {.name = "account.close",
                                                   .payload_size = sizeof(billing_close_account_t),
                                                   .fields = close_fields,
                                                   .aggregate_id = closed_account};

static const cqrs_field_t opened_fields[] = {
    CQRS_STRING(billing_account_opened_t, owner, "owner", CQRS_F_REQUIRED),
    CQRS_STRING(billing_account_opened_t, currency, "currency", CQRS_F_REQUIRED), CQRS_FIELDS_END};
static const cqrs_field_t moved_fields[] = {
    CQRS_MONEY_RANGE(billing_account_moved_t, amount, "amount", 1, INT64_MAX),
    CQRS_INT64(billing_account_moved_t, balance, "balance", 0),
    CQRS_STRING(billing_account_moved_t, transfer_id, "transferId", CQRS_F_OPTIONAL), CQRS_FIELDS_END};
static const cqrs_field_t closed_fields[] = {CQRS_TIME(billing_account_closed_t, closed_at, "closedAt", 0),
                                             CQRS_FIELDS_END};

const cqrs_event_type_t billing_account_opened = {.name = "account.opened", .schema_version = 1,
                                                  .payload_size = sizeof(billing_account_opened_t),
                                                  .fields = opened_fields};
const cqrs_event_type_t billing_account_deposited = {.name = "account.deposited", .schema_version = 1,
                                                     .payload_size = sizeof(billing_account_moved_t),
                                                     .fields = moved_fields};
const cqrs_event_type_t billing_account_withdrawn = {.name = "account.withdrawn", .schema_version = 1,
                                                     .payload_size = sizeof(billing_account_moved_t),
                                                     .fields = moved_fields};
const cqrs_event_type_t billing_account_refunded = {.name = "account.refunded", .schema_version = 1,
                                                    .payload_size = sizeof(billing_account_moved_t),
                                                    .fields = moved_fields};
const cqrs_event_type_t billing_account_closed = {.name = "account.closed", .schema_version = 1,
                                                  .payload_size = sizeof(billing_account_closed_t),
                                                  .fields = closed_fields};

static void on_opened(void *state, const cqrs_event_t *e) {
  billing_account_state_t *s = state;
  const billing_account_opened_t *p = e->payload;
  s->opened = true;
  memcpy(s->owner, p->owner, sizeof s->owner);
  memcpy(s->currency, p->currency, sizeof s->currency);
}

static void on_moved(void *state, const cqrs_event_t *e) {
  ((billing_account_state_t *)state)->balance = ((const billing_account_moved_t *)e->payload)->balance;
}

static void on_closed(void *state, const cqrs_event_t *e) {
  BILLING_UNUSED(e);
  ((billing_account_state_t *)state)->closed = true;
}

static const cqrs_apply_entry_t account_apply[] = {{&billing_account_opened, on_opened},
                                                   {&billing_account_deposited, on_moved},
                                                   {&billing_account_withdrawn, on_moved},
                                                   {&billing_account_refunded, on_moved},
                                                   {&billing_account_closed, on_closed},
                                                   {NULL, NULL}};

static const cqrs_field_t state_fields[] = {CQRS_BOOL(billing_account_state_t, opened, "opened", 0),
                                            CQRS_BOOL(billing_account_state_t, closed, "closed", 0),
                                            CQRS_STRING(billing_account_state_t, owner, "owner", 0),
                                            CQRS_STRING(billing_account_state_t, currency, "currency", 0),
                                            CQRS_INT64(billing_account_state_t, balance, "balance", 0),
                                            CQRS_FIELDS_END};

const cqrs_aggregate_type_t billing_account = {.name = "account",
                                               .state_size = sizeof(billing_account_state_t),
                                               .apply = account_apply,
                                               .snapshot_fields = state_fields,
                                               .snapshot_version = 1,
                                               .snapshot_every = 100};

/* ---- domain ---- */

static cqrs_code_t load(cqrs_context_t *ctx, const char *id, cqrs_aggregate_t **agg,
                        const billing_account_state_t **s, cqrs_error_t *err) {
  cqrs_code_t rc = cqrs_context_load(ctx, &billing_account, id, agg, err);
  if (!rc) *s = cqrs_aggregate_state_const(*agg);
  return rc;
}

static cqrs_code_t check_usable(const billing_account_state_t *s, const char *id, const cqrs_money_t *amount,
                                bool allow_closed, cqrs_error_t *err) {
  if (!s->opened) return cqrs_reject(err, "account.not_open", "account %s does not exist", id);
  if (s->closed && !allow_closed) return cqrs_reject(err, "account.closed", "account %s is closed", id);
  if (amount && strcmp(amount->currency, s->currency))
    return cqrs_reject(err, "account.currency_mismatch", "account %s holds %s, not %s", id, s->currency,
                       amount->currency);
  return CQRS_OK;
}

static cqrs_code_t handle_open(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  BILLING_UNUSED(data);
  const billing_open_account_t *c = cqrs_command_payload(cmd);
  cqrs_aggregate_t *agg;
  const billing_account_state_t *s;
  cqrs_code_t rc = load(ctx, c->account_id, &agg, &s, err);
  if (rc) return rc;
  if (s->opened) return cqrs_reject(err, "account.already_open", "account %s already exists", c->account_id);
  billing_account_opened_t e;
  memset(&e, 0, sizeof e);
  memcpy(e.owner, c->owner, sizeof e.owner);
  memcpy(e.currency, c->currency, sizeof e.currency);
  return cqrs_aggregate_raise(agg, &billing_account_opened, &e, err);
}

static cqrs_code_t move(cqrs_context_t *ctx, const cqrs_command_t *cmd, const cqrs_event_type_t *type,
                        cqrs_error_t *err) {
  const billing_move_t *c = cqrs_command_payload(cmd);
  cqrs_aggregate_t *agg;
  const billing_account_state_t *s;
  cqrs_code_t rc = load(ctx, c->account_id, &agg, &s, err);
  if (rc) return rc;
  /* Refunds give back what a transfer took: they reach closed accounts too. */
  if ((rc = check_usable(s, c->account_id, &c->amount, type == &billing_account_refunded, err))) return rc;
  billing_account_moved_t e;
  memset(&e, 0, sizeof e);
  e.amount = c->amount;
  memcpy(e.transfer_id, c->transfer_id, sizeof e.transfer_id);
  if (type == &billing_account_withdrawn) {
    if (s->balance < c->amount.amount)
      return cqrs_reject(err, "account.not_enough_money", "account %s holds " BILLING_MONEY_FMT ", " BILLING_MONEY_FMT " asked",
                         c->account_id, BILLING_MONEY_ARGS(s->balance, s->currency),
                         BILLING_MONEY_ARGS(c->amount.amount, c->amount.currency));
    e.balance = s->balance - c->amount.amount;
  } else {
    if (s->balance > INT64_MAX - c->amount.amount)
      return cqrs_reject(err, "account.balance_overflow", "account %s cannot hold more", c->account_id);
    e.balance = s->balance + c->amount.amount;
  }
  return cqrs_aggregate_raise(agg, type, &e, err);
}

static cqrs_code_t handle_deposit(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  BILLING_UNUSED(data);
  return move(ctx, cmd, &billing_account_deposited, err);
}

static cqrs_code_t handle_withdraw(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  BILLING_UNUSED(data);
  return move(ctx, cmd, &billing_account_withdrawn, err);
}

static cqrs_code_t handle_refund(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  BILLING_UNUSED(data);
  return move(ctx, cmd, &billing_account_refunded, err);
}

static cqrs_code_t handle_close(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  BILLING_UNUSED(data);
  const billing_close_account_t *c = cqrs_command_payload(cmd);
  cqrs_aggregate_t *agg;
  const billing_account_state_t *s;
  cqrs_code_t rc = load(ctx, c->account_id, &agg, &s, err);
  if (rc || (rc = check_usable(s, c->account_id, NULL, false, err))) return rc;
  /* Closing with money inside would make it vanish. */
  if (s->balance != 0)
    return cqrs_reject(err, "account.not_empty", "account %s still holds " BILLING_MONEY_FMT, c->account_id,
                       BILLING_MONEY_ARGS(s->balance, s->currency));
  billing_account_closed_t e = {cqrs_context_now_ms(ctx)};
  return cqrs_aggregate_raise(agg, &billing_account_closed, &e, err);
}

cqrs_code_t billing__account_handlers(cqrs_dispatcher_t *d, cqrs_error_t *err) {
  cqrs_code_t rc = cqrs_dispatcher_register(d, &billing_open_account, handle_open, NULL, 0, err);
  if (!rc) rc = cqrs_dispatcher_register(d, &billing_deposit, handle_deposit, NULL, 0, err);
  if (!rc) rc = cqrs_dispatcher_register(d, &billing_withdraw, handle_withdraw, NULL, 0, err);
  if (!rc) rc = cqrs_dispatcher_register(d, &billing_refund, handle_refund, NULL, 0, err);
  if (!rc) rc = cqrs_dispatcher_register(d, &billing_close_account, handle_close, NULL, 0, err);
  return rc;
}
