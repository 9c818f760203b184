/* The invoice flow: registers customers, issues invoices, pays some (once
 * twice, once with a wrong amount), cancels one, changes an e-mail, forgets
 * a customer who was invoiced and paid (their name and e-mail go, their
 * invoice and its amount stay), then reads an invoice through the seed's
 * flag mongodb_cqs_enabled and prints the read model (the seed's
 * billing_queries documents) through the queries. */
#include <stdio.h>
#include <string.h>

#include "sample.h"

static void customer(sample_t *s, const char *id, const char *name, const char *email, const char *expect) {
  billing_register_customer_t c;
  memset(&c, 0, sizeof c);
  snprintf(c.customer_id, sizeof c.customer_id, "%s", id);
  snprintf(c.name, sizeof c.name, "%s", name);
  snprintf(c.email, sizeof c.email, "%s", email);
  char label[96];
  snprintf(label, sizeof label, "register %s (%s)", name, email);
  sample_send(s, label, &billing_register_customer, &c, expect);
}

static void issue(sample_t *s, const char *id, const char *cust, int64_t cents, const char *expect) {
  billing_issue_invoice_t c;
  memset(&c, 0, sizeof c);
  snprintf(c.invoice_id, sizeof c.invoice_id, "%s", id);
  snprintf(c.customer_id, sizeof c.customer_id, "%s", cust);
  c.amount = sample_eur(cents);
  c.due_date = cqrs_now_ms() + 30LL * 24 * 3600 * 1000;
  char label[96], m[32];
  sample_money(m, sizeof m, cents, "EUR");
  snprintf(label, sizeof label, "issue %s to %s for %s", id, cust, m);
  sample_send(s, label, &billing_issue_invoice, &c, expect);
}

static void pay(sample_t *s, const char *id, int64_t cents, const char *expect) {
  billing_pay_invoice_t c;
  memset(&c, 0, sizeof c);
  snprintf(c.invoice_id, sizeof c.invoice_id, "%s", id);
  c.amount = sample_eur(cents);
  char label[96], m[32];
  sample_money(m, sizeof m, cents, "EUR");
  snprintf(label, sizeof label, "pay %s with %s", id, m);
  sample_send(s, label, &billing_pay_invoice, &c, expect);
}

static void print_invoice(const bson_t *doc) {
  char m[32];
  sample_money(m, sizeof m, sample_int(doc, "amount", 0), sample_str(doc, "currency"));
  printf("    %-8s %-13s %14s  %-9s %s <%s>\n", sample_str(doc, "_id"), sample_str(doc, "invoiceNumber"), m, sample_str(doc, "status"),
         sample_str(doc, "customer.name"), sample_str(doc, "customer.email"));
}

static void list(sample_t *s, const char *cust, const char *status) {
  bson_t params = BSON_INITIALIZER, out;
  BSON_APPEND_UTF8(&params, "customerId", cust);
  BSON_APPEND_UTF8(&params, "status", status);
  BSON_APPEND_INT32(&params, "limit", 10);
  printf("  %s, %s, newest first:\n", cust, status);
  if (sample_query(s, "invoice.by_customer", &params, &out)) {
    bson_iter_t it, arr;
    if (bson_iter_init_find(&it, &out, "invoices") && bson_iter_recurse(&it, &arr)) {
      int n = 0;
      while (bson_iter_next(&arr)) {
        uint32_t len;
        const uint8_t *raw;
        bson_iter_document(&arr, &len, &raw);
        bson_t doc;
        if (bson_init_static(&doc, raw, len)) print_invoice(&doc);
        n++;
      }
      if (!n) printf("    (none)\n");
    }
  }
  bson_destroy(&out);
  bson_destroy(&params);
}

/* The invoice of a query's answer {invoice: doc}, read in place. */
static bool invoice_of(const bson_t *answer, bson_t *doc) {
  bson_iter_t it;
  uint32_t len;
  const uint8_t *raw;
  if (!bson_iter_init_find(&it, answer, "invoice") || !BSON_ITER_HOLDS_DOCUMENT(&it)) return false;
  bson_iter_document(&it, &len, &raw);
  return bson_init_static(doc, raw, len);
}

/* Prints it as JSON after `label`; the e-mail change must have reached it. */
static void show_invoice(sample_t *s, const char *label, const bson_t *doc) {
  char *json = bson_as_relaxed_extended_json(doc, NULL);
  printf("  %s: %s\n", label, json);
  bson_free(json);
  if (strcmp(sample_str(doc, "customer.email"), "accounts@acme.com")) s->failures++;
}

/* The read model itself: the query invoice.by_id over billing_queries. */
static void read_by_id(sample_t *s, const char *id) {
  printf("read model (billing_queries):\n");
  bson_t params = BSON_INITIALIZER, out, doc;
  BSON_APPEND_UTF8(&params, "id", id);
  if (sample_query(s, "invoice.by_id", &params, &out) && invoice_of(&out, &doc)) show_invoice(s, id, &doc);
  bson_destroy(&out);
  bson_destroy(&params);
}

/* Reads an invoice the way the application does, through the seed's flag
 * (invoice.read): from billing_documents, billing_queries or both. The
 * sample's invoices are new: only the CQS side has them. */
static void read_through_flag(sample_t *s, const char *id, const char *customer) {
  billing_cqs_flag_t f;
  cqrs_error_t err;
  if (billing_flags_current(s->flags, &f, &err)) {
    fprintf(stderr, "%s: cannot read %s: %s\n", s->name, BILLING_CQS_FLAG, err.message);
    s->failures++;
    return;
  }
  bool to_cqs = billing_cqs_routes_to_cqs(&f, customer);
  printf("reads through %s (%s%s):\n", BILLING_CQS_FLAG, billing_cqs_mode_name(f.mode),
         f.mode == BILLING_CQS_PERCENT ? (to_cqs ? ", acme on the CQS side" : ", acme on the legacy side") : "");
  bson_t params = BSON_INITIALIZER, out;
  BSON_APPEND_UTF8(&params, "id", id);
  BSON_APPEND_UTF8(&params, "customerId", customer);
  cqrs_code_t rc = sample_query_maybe(s, "invoice.read", &params, &out);
  bson_t doc;
  if (rc == CQRS_OK && invoice_of(&out, &doc)) {
    char label[96];
    snprintf(label, sizeof label, "%s from the %s side", id, strcmp(sample_str(&out, "source"), "cqs") ? "legacy" : "CQS");
    show_invoice(s, label, &doc);
  } else if (rc == CQRS_ENOT_FOUND && !to_cqs) {
    printf("  %s: not in %s (the sample's invoices are new: only the CQS side has them)\n", id,
           BILLING_LEGACY_COLLECTION);
  } else {
    printf("  %s: not found on the CQS side\n", id);
    s->failures++;
  }
  if (f.mode == BILLING_CQS_SHADOW) {
    uint64_t compared, differing;
    billing_flags_shadow_counts(s->flags, &compared, &differing);
    printf("  shadow: %llu reads compared, %llu differed (recorded in %s)\n", (unsigned long long)compared,
           (unsigned long long)differing, BILLING_FLAG_DIFFS_COLLECTION);
  }
  bson_destroy(&out);
  bson_destroy(&params);
}

/* The forgotten customer's invoice: still there, still paid, its amount
 * whole; their name and e-mail the placeholder. */
static void check_forgotten(sample_t *s, const char *id, int64_t cents) {
  bson_t params = BSON_INITIALIZER, out;
  BSON_APPEND_UTF8(&params, "id", id);
  bool ok = false;
  if (sample_query(s, "invoice.by_id", &params, &out)) {
    bson_iter_t it;
    uint32_t len;
    const uint8_t *raw;
    bson_t doc;
    if (bson_iter_init_find(&it, &out, "invoice") && BSON_ITER_HOLDS_DOCUMENT(&it)) {
      bson_iter_document(&it, &len, &raw);
      ok = bson_init_static(&doc, raw, len) && !strcmp(sample_str(&doc, "customer.name"), CQRS_FORGOTTEN) &&
           !strcmp(sample_str(&doc, "customer.email"), CQRS_FORGOTTEN) && !strcmp(sample_str(&doc, "status"), "paid") &&
           sample_int(&doc, "amount", 0) == cents;
    }
    bson_destroy(&out);
  }
  bson_destroy(&params);
  printf("  %s kept its amount and status, without the forgotten customer's name and e-mail: %s\n", id,
         ok ? "yes" : "NO");
  if (!ok) s->failures++;
}

int main(int argc, char **argv) {
  sample_t s;
  int rc = sample_open(&s, "invoice", argc, argv);
  if (rc) return rc == 1 ? 0 : rc;

  printf("customers:\n");
  customer(&s, "acme", "Acme Corp", "billing@acme.com", "");
  customer(&s, "globex", "Globex", "ap@globex.example", "");
  customer(&s, "initech", "Initech", "not an address", "invalid_command");

  printf("invoices:\n");
  issue(&s, "inv_1", "acme", 150000, "");
  issue(&s, "inv_2", "acme", 20000, "");
  issue(&s, "inv_3", "globex", 9990, "");
  issue(&s, "inv_4", "acme", 5000, "");
  issue(&s, "inv_1", "acme", 150000, SAMPLE_DUPLICATE); /* again: no second number */
  billing_issue_invoice_t stranger = {"inv_9", "nobody", {100, "EUR"}, 1};
  sample_send(&s, "issue inv_9 to an unknown customer", &billing_issue_invoice, &stranger, "invoice.unknown_customer");
  pay(&s, "inv_1", 150000, "");
  pay(&s, "inv_1", 150000, "invoice.already_paid");
  pay(&s, "inv_2", 19999, "invoice.wrong_amount");
  billing_cancel_invoice_t cancel = {"inv_4", "ordered twice"};
  sample_send(&s, "cancel inv_4", &billing_cancel_invoice, &cancel, "");
  pay(&s, "inv_4", 5000, "invoice.cancelled");
  billing_change_email_t change = {"acme", "accounts@acme.com"};
  sample_send(&s, "change acme's e-mail to accounts@acme.com", &billing_change_email, &change, "");

  printf("forgetting a customer (docs/privacy.md):\n");
  customer(&s, "umbrella", "Umbrella Corp", "it@umbrella.example", "");
  issue(&s, "inv_5", "umbrella", 4200, "");
  pay(&s, "inv_5", 4200, "");
  billing_forget_customer_t forget = {"umbrella"};
  sample_send(&s, "forget umbrella", &billing_forget_customer, &forget, "");
  sample_send(&s, "forget umbrella again (nothing more)", &billing_forget_customer, &forget, "");
  billing_change_email_t late = {"umbrella", "new@umbrella.example"};
  sample_send(&s, "change umbrella's e-mail", &billing_change_email, &late, "customer.forgotten");

  read_by_id(&s, "inv_1");
  read_through_flag(&s, "inv_1", "acme");
  list(&s, "acme", "paid");
  list(&s, "acme", "pending");
  list(&s, "acme", "cancelled");
  list(&s, "globex", "pending");
  list(&s, "umbrella", "paid");
  check_forgotten(&s, "inv_5", 4200);
  return sample_close(&s);
}
