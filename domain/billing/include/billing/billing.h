/* The billing context: accounts and transfers, customers and invoices, on
 * libcqrs. Uses only the public framework API. Money is always an integer
 * count of minor units with its ISO 4217 currency. */
#ifndef BILLING_H
#define BILLING_H

#include <cqrs/cqrs.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BILLING_NAME_MAX 128  /* owners, customer names (including NUL) */
#define BILLING_EMAIL_MAX 255 /* RFC 5321's 254 + NUL */
#define BILLING_NUMBER_MAX 40 /* "INV-2026-001", with room for any int year and count */

/* ---- accounts ---- */

typedef struct billing_open_account {
  char account_id[CQRS_ID_MAX];
  char owner[BILLING_NAME_MAX];
  char currency[4];
} billing_open_account_t;

/* Deposit, withdraw and refund. `transfer_id` is empty outside transfers. */
typedef struct billing_move {
  char account_id[CQRS_ID_MAX];
  cqrs_money_t amount;
  char transfer_id[CQRS_ID_MAX];
} billing_move_t;

typedef struct billing_close_account {
  char account_id[CQRS_ID_MAX];
} billing_close_account_t;

typedef struct billing_account_opened {
  char owner[BILLING_NAME_MAX];
  char currency[4];
} billing_account_opened_t;

/* Deposited, withdrawn, refunded: the amount and the balance after it. */
typedef struct billing_account_moved {
  cqrs_money_t amount;
  int64_t balance;
  char transfer_id[CQRS_ID_MAX];
} billing_account_moved_t;

typedef struct billing_account_closed {
  int64_t closed_at;
} billing_account_closed_t;

typedef struct billing_account_state {
  bool opened, closed;
  char owner[BILLING_NAME_MAX];
  char currency[4];
  int64_t balance;
} billing_account_state_t;

extern const cqrs_command_type_t billing_open_account, billing_deposit, billing_withdraw, billing_refund,
    billing_close_account;
extern const cqrs_event_type_t billing_account_opened, billing_account_deposited, billing_account_withdrawn,
    billing_account_refunded, billing_account_closed;
extern const cqrs_aggregate_type_t billing_account;

/* ---- transfers ---- */

typedef struct billing_request_transfer {
  char transfer_id[CQRS_ID_MAX];
  char from[CQRS_ID_MAX];
  char to[CQRS_ID_MAX];
  cqrs_money_t amount;
} billing_request_transfer_t;

/* Outcomes the process manager records: complete, fail, refund. */
typedef struct billing_transfer_outcome {
  char transfer_id[CQRS_ID_MAX];
  char reason[CQRS_NAME_MAX]; /* why it failed or was refunded; empty when completed */
} billing_transfer_outcome_t;

typedef struct billing_transfer_requested {
  char from[CQRS_ID_MAX];
  char to[CQRS_ID_MAX];
  cqrs_money_t amount;
} billing_transfer_requested_t;

typedef struct billing_transfer_ended {
  char reason[CQRS_NAME_MAX];
} billing_transfer_ended_t;

typedef enum billing_transfer_status {
  BILLING_TRANSFER_NONE = 0,
  BILLING_TRANSFER_REQUESTED,
  BILLING_TRANSFER_COMPLETED,
  BILLING_TRANSFER_FAILED,  /* the debit was refused: nothing moved */
  BILLING_TRANSFER_REFUNDED /* the credit was refused: the debit was given back */
} billing_transfer_status_t;

typedef struct billing_transfer_state {
  int32_t status;
  char from[CQRS_ID_MAX];
  char to[CQRS_ID_MAX];
  cqrs_money_t amount;
  char reason[CQRS_NAME_MAX];
} billing_transfer_state_t;

extern const cqrs_command_type_t billing_request_transfer, billing_complete_transfer, billing_fail_transfer,
    billing_refund_transfer;
extern const cqrs_event_type_t billing_transfer_requested, billing_transfer_completed, billing_transfer_failed,
    billing_transfer_refunded;
extern const cqrs_aggregate_type_t billing_transfer;

/* ---- customers ---- */

typedef struct billing_register_customer {
  char customer_id[CQRS_ID_MAX];
  char name[BILLING_NAME_MAX];
  char email[BILLING_EMAIL_MAX];
} billing_register_customer_t;

typedef struct billing_change_email {
  char customer_id[CQRS_ID_MAX];
  char email[BILLING_EMAIL_MAX];
} billing_change_email_t;

typedef struct billing_customer_registered {
  char name[BILLING_NAME_MAX];
  char email[BILLING_EMAIL_MAX];
} billing_customer_registered_t;

typedef struct billing_email_changed {
  char email[BILLING_EMAIL_MAX];
  char previous[BILLING_EMAIL_MAX];
} billing_email_changed_t;

/* customer.forget: the customer's key is deleted and cqrs.forgotten recorded
 * on their stream (docs/privacy.md); their name and e-mail read CQRS_FORGOTTEN
 * from then on, in events, snapshots and the read models alike. */
typedef struct billing_forget_customer {
  char customer_id[CQRS_ID_MAX];
} billing_forget_customer_t;

/* The name and e-mail of customers are personal (CQRS_F_PERSONAL): the
 * store needs a key store (cqrs_store_set_keys) to write them. */
typedef struct billing_customer_state {
  bool registered;
  char name[BILLING_NAME_MAX];
  char email[BILLING_EMAIL_MAX];
  bool forgotten;
} billing_customer_state_t;

extern const cqrs_command_type_t billing_register_customer, billing_change_email, billing_forget_customer;
extern const cqrs_event_type_t billing_customer_registered, billing_customer_email_changed;
extern const cqrs_aggregate_type_t billing_customer;

/* True when `email` looks like an address: one '@', a local part, a domain
 * with a dot, no spaces or control characters, at most 254 bytes. */
bool billing_email_valid(const char *email);

/* ---- invoices ---- */

typedef struct billing_issue_invoice {
  char invoice_id[CQRS_ID_MAX];
  char customer_id[CQRS_ID_MAX];
  cqrs_money_t amount;
  int64_t due_date; /* UTC ms */
} billing_issue_invoice_t;

typedef struct billing_pay_invoice {
  char invoice_id[CQRS_ID_MAX];
  cqrs_money_t amount;
} billing_pay_invoice_t;

typedef struct billing_cancel_invoice {
  char invoice_id[CQRS_ID_MAX];
  char reason[CQRS_NAME_MAX];
} billing_cancel_invoice_t;

/* The book of a year numbers its invoices: invoice.numbered is the fact that
 * a number went to an invoice; the process manager then records the invoice
 * (invoice.issued) on the invoice's own stream. */
typedef struct billing_invoice_numbered {
  char invoice_id[CQRS_ID_MAX];
  char number[BILLING_NUMBER_MAX];
  char customer_id[CQRS_ID_MAX];
  cqrs_money_t amount;
  int64_t due_date;
} billing_invoice_numbered_t;

typedef billing_invoice_numbered_t billing_record_invoice_t;

typedef struct billing_invoice_issued {
  char number[BILLING_NUMBER_MAX];
  char customer_id[CQRS_ID_MAX];
  cqrs_money_t amount;
  int64_t due_date;
} billing_invoice_issued_t;

typedef struct billing_invoice_paid {
  cqrs_money_t amount;
} billing_invoice_paid_t;

typedef struct billing_invoice_cancelled {
  char reason[CQRS_NAME_MAX];
} billing_invoice_cancelled_t;

typedef enum billing_invoice_status {
  BILLING_INVOICE_NONE = 0,
  BILLING_INVOICE_PENDING,
  BILLING_INVOICE_PAID,
  BILLING_INVOICE_CANCELLED
} billing_invoice_status_t;

typedef struct billing_invoice_state {
  int32_t status;
  char number[BILLING_NUMBER_MAX];
  char customer_id[CQRS_ID_MAX];
  cqrs_money_t amount;
  int64_t due_date;
} billing_invoice_state_t;

typedef struct billing_book_state {
  int64_t last; /* the last number given this year */
} billing_book_state_t;

extern const cqrs_command_type_t billing_issue_invoice, billing_record_invoice, billing_pay_invoice,
    billing_cancel_invoice;
extern const cqrs_event_type_t billing_invoice_numbered, billing_invoice_issued, billing_invoice_paid,
    billing_invoice_cancelled;
extern const cqrs_aggregate_type_t billing_invoice, billing_invoice_book;

/* Formats "INV-YYYY-NNN" (at least three digits). */
void billing_invoice_number(char buf[BILLING_NUMBER_MAX], int year, int64_t n);

/* ---- process managers ---- */

/* Transfers: debit, credit, refund and the outcome, one instance per
 * transfer ("process:transfer"). Invoices: records each numbered invoice on
 * its own stream ("process:invoice"). docs/billing.md tells the steps. */
extern const cqrs_process_type_t billing_transfer_process, billing_invoice_process;

/* ---- wiring ---- */

/* Read-side collection names; the defaults are the seed's. */
typedef struct billing_collections {
  const char *invoices;  /* "billing_queries" */
  const char *customers; /* "billing_customers" */
  const char *balances;  /* "billing_balances" */
} billing_collections_t;
extern const billing_collections_t billing_default_collections;

/* Registers every billing type (and nothing else) in `reg`. */
cqrs_code_t billing_register(cqrs_registry_t *reg, cqrs_error_t *err);

/* Registers the command handlers of the four aggregates on `d`. Enough for
 * aggregate tests; transfers and invoices also need the process manager. */
cqrs_code_t billing_register_handlers(cqrs_dispatcher_t *d, cqrs_error_t *err);

typedef struct billing billing_t;

/* Wires the whole context on `d`: command handlers, the process managers of
 * transfers and invoices (billing_transfer_process, billing_invoice_process), and the
 * projections "billing.invoices" and "billing.balances" into `rm`. When the
 * dispatcher's store has a key store, `rm` seals the customers' names and
 * e-mails with it (billing_seal_read_model). `rm` and
 * `cp` are borrowed. `cols` NULL: the defaults. Free *out with
 * billing_destroy once `d` is closed; on an error *out may be set too (some
 * projections may already use it): close `d`, then destroy it. */
cqrs_code_t billing_start(cqrs_dispatcher_t *d, cqrs_readmodel_t *rm, cqrs_checkpoint_store_t *cp,
                          const billing_collections_t *cols, billing_t **out, cqrs_error_t *err);
void billing_destroy(billing_t *b);

/* Declares the personal keys of the read side on `rm` (cqrs_readmodel_add_type):
 * name and e-mail of `cols->customers` (the document's id is the customer)
 * and customer.name, customer.email of `cols->invoices` (customer.id). A
 * tool that reads the read model calls it with the same key store to read
 * them. `cols` NULL: the defaults. */
cqrs_code_t billing_seal_read_model(cqrs_readmodel_t *rm, const billing_collections_t *cols, cqrs_keys_t *keys,
                                    cqrs_error_t *err);

/* The event types each projection reads (NULL-terminated), for tools that
 * replay or rebuild them. */
extern const cqrs_event_type_t *const billing_invoices_types[];
extern const cqrs_event_type_t *const billing_balances_types[];

/* Projection handlers, exposed for tests that replay events by hand. `data`
 * is a billing_t. */
cqrs_code_t billing_project_invoices(const cqrs_event_t *e, void *data, cqrs_error_t *err);
cqrs_code_t billing_project_balances(const cqrs_event_t *e, void *data, cqrs_error_t *err);
/* A billing_t with no dispatcher, for those tests. */
billing_t *billing_projector_new(cqrs_readmodel_t *rm, const billing_collections_t *cols);

/* Registers the queries on `q` (which reads the read model `billing_start`
 * writes). `cols` NULL: the defaults; it must outlive `q`.
 *   invoice.by_id        {id}                         -> {invoice: doc} or CQRS_ENOT_FOUND
 *   invoice.by_customer  {customerId, status, limit?} -> {invoices: [doc...]} newest first
 *   account.balance      {accountId}                  -> {balance: {amount, currency}, status}
 *   account.total        {}                           -> {totals: {EUR: n, ...}} */
cqrs_code_t billing_register_queries(cqrs_query_bus_t *q, const billing_collections_t *cols, cqrs_error_t *err);

/* ---- migration from a legacy system (migration.c) ---- */

/* invoice.import: the book of the number's year learns that the number was
 * given elsewhere (natural id "invoice.import:<number>"). The book raises
 * invoice.imported when the number is above its last, nothing otherwise;
 * it applies it as last = max(last, sequence), so numbering continues after
 * the highest imported number. The invoice itself is recorded with
 * invoice.record, keeping its number. */
typedef struct billing_import_invoice {
  char number[BILLING_NUMBER_MAX];
  char invoice_id[CQRS_ID_MAX]; /* optional, for the record */
} billing_import_invoice_t;

typedef struct billing_invoice_imported {
  char number[BILLING_NUMBER_MAX];
  char invoice_id[CQRS_ID_MAX];
  int64_t sequence; /* NNN of INV-YYYY-NNN */
} billing_invoice_imported_t;

extern const cqrs_command_type_t billing_import_invoice;
extern const cqrs_event_type_t billing_invoice_imported;

/* The ISO 4217 minor-unit exponent of `code` (EUR 2, JPY 0, KWD 3), or -1
 * for a code that is not an active currency. */
int billing_currency_exponent(const char *code);

/* Converts a decimal amount held in a double into minor units, exactly:
 * CQRS_EINVAL (with the reason) for an unknown currency, a value that is
 * not finite or too large, or a double that is not the nearest one to a
 * whole number of minor units (1500.005 EUR). Negative values convert. */
cqrs_code_t billing_amount_from_double(double value, const char *currency, int64_t *minor, cqrs_error_t *err);

/* Parses "INV-YYYY-NNN" (at least three digits, NNN >= 1). */
bool billing_invoice_number_parse(const char *number, int *year, int64_t *n);

/* ---- an invoice as a read answers it (invoice_view.c) ---- */

/* One representation of an invoice, whichever side answers a read, the
 * legacy billing_documents or the CQS billing_queries:
 *   {_id, invoiceNumber, amount (int64, minor units), currency,
 *    customer {id, name, email}, status, createdAt, updatedAt,
 *    dueDate?, paidAt?, cancelledAt?}
 * dates as BSON dates (UTC ms); a date an invoice does not have is left
 * out. Money is never a double here. */
typedef struct billing_invoice_view {
  char id[CQRS_ID_MAX]; /* an ObjectId as 24 hex characters */
  char number[BILLING_NUMBER_MAX];
  cqrs_money_t amount;
  char customer_id[CQRS_ID_MAX];
  char name[BILLING_NAME_MAX];
  char email[BILLING_EMAIL_MAX];
  billing_invoice_status_t status;
  int64_t created_at, updated_at, due_date, paid_at, cancelled_at; /* UTC ms; 0: none */
} billing_invoice_view_t;

/* Checks a legacy billing_documents invoice (the seed's shape: amount a
 * double in major units, createdAt required, dueDate, updatedAt, paidAt,
 * cancelledAt optional) and fills `out`: the amount converted exactly into
 * minor units; paidAt (paid) and cancelledAt (cancelled) default to
 * updatedAt, then createdAt; updatedAt to the latest date. A document that
 * cannot be read exactly is CQRS_EINVAL, with the reason in err->message
 * ("amount is negative", "missing field customer") and its kind in
 * err->name ("legacy.negative_amount", "legacy.missing_field"...). */
cqrs_code_t billing_legacy_invoice_parse(const bson_t *doc, billing_invoice_view_t *out, cqrs_error_t *err);
/* A billing_queries document, as the invoices projection writes it;
 * CQRS_ECODEC when it lacks a field the projection always writes. */
cqrs_code_t billing_cqs_invoice_parse(const bson_t *doc, billing_invoice_view_t *out, cqrs_error_t *err);
/* Appends the representation above to `out`. */
void billing_invoice_view_to_bson(const billing_invoice_view_t *v, bson_t *out);
/* Appends {field, legacy, cqs} (values as text, NULL for a side with no
 * invoice) to the array `list` for each field that says what the invoice
 * is and on which they disagree (number, amount, currency, status,
 * customer, createdAt, dueDate, paidAt, cancelledAt; not updatedAt).
 * Either view may be NULL (no such invoice). Returns how many. */
size_t billing_invoice_view_diff(const billing_invoice_view_t *legacy, const billing_invoice_view_t *cqs, bson_t *list);
/* "pending", "paid", "cancelled" ("none" otherwise). */
const char *billing_invoice_status_name(billing_invoice_status_t s);

/* ---- the mongodb_cqs_enabled feature flag (flags.c) ---- */

#define BILLING_LEGACY_COLLECTION "billing_documents"
#define BILLING_FLAGS_COLLECTION "billing_flags"
#define BILLING_FLAG_DIFFS_COLLECTION "billing_flag_diffs"
#define BILLING_CQS_FLAG "mongodb_cqs_enabled"

typedef enum billing_cqs_mode {
  BILLING_CQS_OFF = 0, /* reads go to the legacy collection (also: no flag set) */
  BILLING_CQS_SHADOW,  /* both are read, the legacy answer returned, differences recorded */
  BILLING_CQS_PERCENT, /* `percent` of customers read the CQS side */
  BILLING_CQS_ON       /* the CQS side only */
} billing_cqs_mode_t;

typedef struct billing_cqs_flag {
  billing_cqs_mode_t mode;
  int percent; /* 0..100, for BILLING_CQS_PERCENT */
} billing_cqs_flag_t;

/* "off", "shadow", "on", "25" or "25%"; anything else is CQRS_EINVAL. */
cqrs_code_t billing_cqs_flag_parse(const char *text, billing_cqs_flag_t *out, cqrs_error_t *err);
const char *billing_cqs_mode_name(billing_cqs_mode_t mode);
/* True when a read for `customer_id` goes to the CQS side: on; or percent
 * and the customer's stable bucket (FNV-1a of the id, mod 100) < percent. */
bool billing_cqs_routes_to_cqs(const billing_cqs_flag_t *f, const char *customer_id);

/* The flag as persisted in billing_flags (document "mongodb_cqs_enabled"
 * {mode, percent, updatedAt}); absent: off. Blocks when `rm` does. */
cqrs_code_t billing_cqs_flag_load(const cqrs_readmodel_t *rm, billing_cqs_flag_t *out, cqrs_error_t *err);
cqrs_code_t billing_cqs_flag_save(cqrs_readmodel_t *rm, const billing_cqs_flag_t *f, cqrs_error_t *err);

/* The read path: an object caching the flag for `refresh_ms` over `rm`
 * (borrowed; it reads both collections and writes billing_flag_diffs).
 * Thread-safe. NULL on allocation failure or NULL rm. */
typedef struct billing_flags billing_flags_t;
billing_flags_t *billing_flags_new(cqrs_readmodel_t *rm, int64_t refresh_ms);
void billing_flags_destroy(billing_flags_t *f);
cqrs_code_t billing_flags_current(billing_flags_t *f, billing_cqs_flag_t *out, cqrs_error_t *err);

typedef enum billing_read_source { BILLING_READ_LEGACY = 1, BILLING_READ_CQS, BILLING_READ_BOTH } billing_read_source_t;
typedef struct billing_read {
  billing_cqs_mode_t mode;
  billing_read_source_t source;
  size_t differences; /* shadow: fields that disagreed on this read */
  bool malformed;     /* the legacy side holds a document it cannot read */
  char problem[CQRS_MESSAGE_MAX]; /* why, when malformed */
} billing_read_t;

/* Reads invoice `id` where the flag routes it, in the one representation
 * of billing_invoice_view_to_bson whichever side answers. `customer_id`
 * (may be NULL: then the document's customer.id decides) picks the side in
 * percent mode. A legacy document that cannot be read exactly (the
 * documents the migration refuses) is not found, with how->malformed and
 * the reason: the CQS side has no such invoice either. Shadow returns the
 * legacy answer, compares it with the CQS one (billing_invoice_view_diff),
 * records {invoiceId, legacyFound, cqsFound, differences: [{field, legacy,
 * cqs}], at} in billing_flag_diffs when they disagree, and counts the reads
 * compared and those that disagreed (billing_flags_shadow_counts). `out`
 * initialised when *found. */
cqrs_code_t billing_invoice_read(billing_flags_t *f, const billing_collections_t *cols, const char *id,
                                 const char *customer_id, bson_t *out, bool *found, billing_read_t *how,
                                 cqrs_error_t *err);

/* Shadow reads since `f` was made: compared, and those where the two sides
 * disagreed (either pointer may be NULL). Thread-safe. */
void billing_flags_shadow_counts(billing_flags_t *f, uint64_t *compared, uint64_t *differing);

/* Registers "invoice.read" {id, customerId?} -> {invoice, source: "legacy"|"cqs",
 * shadowDifferences?} on `q`, honouring the flag through `f` (borrowed, must
 * outlive `q`); CQRS_ENOT_FOUND when the side read has no such invoice. */
cqrs_code_t billing_register_flagged_queries(cqrs_query_bus_t *q, billing_flags_t *f, cqrs_error_t *err);

#ifdef __cplusplus
}
#endif
#endif
