/* Shared by the transfer tests (in memory and on MongoDB): does a
 * transfer's record agree with the accounts? */
#ifndef TEST_BILLING_TRANSFERS_H
#define TEST_BILLING_TRANSFERS_H

#include <string.h>

#include <billing/billing.h>

/* The account events the transfer's own steps caused, counted by the
 * steps' ids (process.h: "~transfer/<step>" and the transfer id, through
 * cqrs_id_derive), not by the payload's transferId, which any withdrawal
 * may carry. */
typedef struct transfer_moves {
  char debit[CQRS_ID_MAX], credit[CQRS_ID_MAX], refund[CQRS_ID_MAX];
  int debits, credits, refunds;
} transfer_moves_t;

static inline bool transfer_count_move(const cqrs_event_t *e, void *data) {
  transfer_moves_t *m = data;
  const char *cause = cqrs_event_causation_id(e);
  m->debits += e->type == &billing_account_withdrawn && !strcmp(cause, m->debit);
  m->credits += e->type == &billing_account_deposited && !strcmp(cause, m->credit);
  m->refunds += e->type == &billing_account_refunded && !strcmp(cause, m->refund);
  return true;
}

/* On a disagreement: the transfer's own streams (the aggregate's and the
 * process instance's), to tell from the CI log what happened. */
static inline bool transfer_print(const cqrs_event_t *e, void *data) {
  if (strcmp(cqrs_event_aggregate_id(e), data)) return true;
  bson_t b;
  if (cqrs_event_to_bson(e, &b, NULL) == CQRS_OK) {
    char *json = bson_as_relaxed_extended_json(&b, NULL);
    fprintf(stderr, "  #%lld %s\n", (long long)e->position, json ? json : "?");
    bson_free(json);
    bson_destroy(&b);
  }
  return true;
}

/* The transfer's status, after checking that it agrees with the accounts:
 * completed <=> one debit and one credit; refunded <=> one debit and one
 * refund; failed or never requested <=> nothing moved. Any other status,
 * or a disagreement, fails the test. */
static inline int32_t transfer_agrees(cqrs_store_t *store, const char *tid) {
  transfer_moves_t m;
  memset(&m, 0, sizeof m);
  assert_int_equal(cqrs_id_derive(m.debit, "~transfer/debit", tid, NULL), CQRS_OK);
  assert_int_equal(cqrs_id_derive(m.credit, "~transfer/credit", tid, NULL), CQRS_OK);
  assert_int_equal(cqrs_id_derive(m.refund, "~transfer/refund", tid, NULL), CQRS_OK);
  assert_int_equal(cqrs_store_read_all(store, 1, SIZE_MAX, transfer_count_move, &m, NULL), CQRS_OK);
  cqrs_aggregate_t *agg;
  assert_int_equal(cqrs_repository_load(store, &billing_transfer, tid, &agg, NULL), CQRS_OK);
  int32_t st = ((const billing_transfer_state_t *)cqrs_aggregate_state_const(agg))->status;
  cqrs_aggregate_destroy(agg);
  bool ok = (st == BILLING_TRANSFER_COMPLETED && m.debits == 1 && m.credits == 1 && !m.refunds) ||
            (st == BILLING_TRANSFER_REFUNDED && m.debits == 1 && !m.credits && m.refunds == 1) ||
            ((st == BILLING_TRANSFER_FAILED || st == BILLING_TRANSFER_NONE) && !m.debits && !m.credits && !m.refunds);
  if (!ok) {
    cqrs_store_read_all(store, 1, SIZE_MAX, transfer_print, (void *)tid, NULL);
    fail_msg("transfer %s: status %d with %d debits, %d credits, %d refunds", tid, st, m.debits, m.credits,
             m.refunds);
  }
  return st;
}

#endif
