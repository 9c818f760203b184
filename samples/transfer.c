/* The account-transfer flow: opens accounts, deposits, runs transfers (one
 * refused for want of money, two refunded), prints each result and the final
 * balances, and fails if money was created or lost. */
#include <stdio.h>
#include <string.h>

#include "sample.h"

static void open_account(sample_t *s, const char *id, const char *owner, const char *currency) {
  billing_open_account_t c;
  memset(&c, 0, sizeof c);
  snprintf(c.account_id, sizeof c.account_id, "%s", id);
  snprintf(c.owner, sizeof c.owner, "%s", owner);
  snprintf(c.currency, sizeof c.currency, "%s", currency);
  char label[96];
  snprintf(label, sizeof label, "open %s for %s in %s", id, owner, currency);
  sample_send(s, label, &billing_open_account, &c, "");
}

static void deposit(sample_t *s, const char *id, int64_t cents) {
  billing_move_t c;
  memset(&c, 0, sizeof c);
  snprintf(c.account_id, sizeof c.account_id, "%s", id);
  c.amount = sample_eur(cents);
  char label[96], m[32];
  sample_money(m, sizeof m, cents, "EUR");
  snprintf(label, sizeof label, "deposit %s on %s", m, id);
  sample_send(s, label, &billing_deposit, &c, "");
}

static void transfer(sample_t *s, const char *tid, const char *from, const char *to, int64_t cents,
                     const char *expect) {
  billing_request_transfer_t c;
  memset(&c, 0, sizeof c);
  snprintf(c.transfer_id, sizeof c.transfer_id, "%s", tid);
  snprintf(c.from, sizeof c.from, "%s", from);
  snprintf(c.to, sizeof c.to, "%s", to);
  c.amount = sample_eur(cents);
  char label[96], m[32];
  sample_money(m, sizeof m, cents, "EUR");
  snprintf(label, sizeof label, "transfer %s: %s from %s to %s", tid, m, from, to);
  sample_send(s, label, &billing_request_transfer, &c, expect);
}

static const char *status_name(int32_t status) {
  switch (status) {
  case BILLING_TRANSFER_REQUESTED:
    return "in flight";
  case BILLING_TRANSFER_COMPLETED:
    return "completed";
  case BILLING_TRANSFER_FAILED:
    return "failed";
  case BILLING_TRANSFER_REFUNDED:
    return "refunded";
  default:
    return "never requested";
  }
}

/* How each transfer ended, as the write side knows it. */
static void report_transfer(sample_t *s, const char *tid, int32_t expect) {
  cqrs_aggregate_t *t;
  cqrs_error_t err;
  if (cqrs_repository_load(s->store, &billing_transfer, tid, &t, &err)) {
    fprintf(stderr, "transfer: cannot load %s: %s\n", tid, err.message);
    s->failures++;
    return;
  }
  const billing_transfer_state_t *st = cqrs_aggregate_state_const(t);
  printf("  %-10s %-16s %s\n", tid, status_name(st->status), st->reason);
  if (st->status != expect) s->failures++;
  cqrs_aggregate_destroy(t);
}

static int64_t total_eur(sample_t *s) {
  bson_t out;
  int64_t total = sample_query(s, "account.total", NULL, &out) ? sample_int(&out, "totals.EUR", -1) : -1;
  bson_destroy(&out);
  return total;
}

static void print_balance(sample_t *s, const char *id) {
  bson_t params = BSON_INITIALIZER, out;
  BSON_APPEND_UTF8(&params, "accountId", id);
  if (sample_query(s, "account.balance", &params, &out)) {
    char m[32];
    sample_money(m, sizeof m, sample_int(&out, "balance.amount", 0), sample_str(&out, "balance.currency"));
    printf("  %-8s %16s  %s\n", id, m, sample_str(&out, "status"));
  }
  bson_destroy(&out);
  bson_destroy(&params);
}

int main(int argc, char **argv) {
  sample_t s;
  int rc = sample_open(&s, "transfer", argc, argv);
  if (rc) return rc == 1 ? 0 : rc;

  printf("accounts:\n");
  open_account(&s, "alice", "Alice Martin", "EUR");
  open_account(&s, "bob", "Bob Durand", "EUR");
  open_account(&s, "carol", "Carol Petit", "EUR");
  open_account(&s, "dave", "Dave Smith", "USD");
  deposit(&s, "alice", 100000);
  deposit(&s, "bob", 25000);
  int64_t before = total_eur(&s);
  billing_close_account_t close = {"carol"};
  sample_send(&s, "close carol", &billing_close_account, &close, "");

  printf("transfers:\n");
  transfer(&s, "t-1", "alice", "bob", 30000, "");
  transfer(&s, "t-2", "bob", "alice", 1000000, "account.not_enough_money");
  transfer(&s, "t-3", "alice", "carol", 5000, "");
  transfer(&s, "t-4", "alice", "dave", 1000, "");
  transfer(&s, "t-1", "alice", "bob", 30000, SAMPLE_DUPLICATE); /* sent again: done once */

  printf("outcomes:\n");
  report_transfer(&s, "t-1", BILLING_TRANSFER_COMPLETED);
  report_transfer(&s, "t-2", BILLING_TRANSFER_NONE);
  report_transfer(&s, "t-3", BILLING_TRANSFER_REFUNDED);
  report_transfer(&s, "t-4", BILLING_TRANSFER_REFUNDED);

  printf("balances:\n");
  const char *ids[] = {"alice", "bob", "carol", "dave"};
  for (size_t i = 0; i < 4; i++) print_balance(&s, ids[i]);
  int64_t after = total_eur(&s);
  char b[32], a[32];
  sample_money(b, sizeof b, before, "EUR");
  sample_money(a, sizeof a, after, "EUR");
  printf("total: %s before, %s after: %s\n", b, a, before == after ? "no money created or lost" : "MONEY MISMATCH");
  if (before != after || before < 0) s.failures++;
  return sample_close(&s);
}
