/* gen-legacy: N documents of the seed's legacy invoice shape, a chosen
 * share of them malformed in each of the ways migrate must refuse. */
#include <stdlib.h>
#include <string.h>

#include "admin.h"

static const char usage[] =
    "usage: billing-admin gen-legacy N [--malformed PCT] [--customers C] [--seed S] [--collection NAME] [--drop]\n"
    "Writes N documents {_id, invoiceNumber, amount (a double), currency, customer {id, name, email},\n"
    "status, createdAt, dueDate (two documents in three), updatedAt, paidAt} into NAME (default\n"
    "billing_documents). PCT percent of them\n"
    "(default 0) are malformed, in turn: a missing field, a negative amount, a non-numeric amount,\n"
    "an unknown status, a bad e-mail, an amount that is no whole number of minor units.\n"
    "--drop empties the collection first. Deterministic for a given --seed.\n"
    "--json prints {written, malformed: {kind: n}}.\n";

static uint64_t next(uint64_t *s) { /* splitmix64 */
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static const char *const currencies[] = {"EUR", "EUR", "EUR", "USD", "GBP", "JPY", "KWD"};
static const char *const kinds[] = {"missing_field", "negative_amount", "non_numeric_amount",
                                    "unknown_status", "bad_email", "inexact_amount"};
#define NKINDS 6

static double as_double(int64_t minor, int exponent) {
  double scale = 1;
  for (int i = 0; i < exponent; i++) scale *= 10;
  /* Through the decimal text, as a legacy system printing 1500.00 would. */
  char buf[64];
  snprintf(buf, sizeof buf, "%.*f", exponent, (double)minor / scale);
  return strtod(buf, NULL);
}

static void build(bson_t *doc, uint64_t *rng, long long i, long long customers, int64_t number[3], int kind) {
  char id[32], num[BILLING_NUMBER_MAX], cid[32], name[64], email[96];
  snprintf(id, sizeof id, "inv_%08lld", i);
  int year = 2023 + (int)(i % 3);
  billing_invoice_number(num, year, ++number[i % 3]);
  long long c = (long long)(next(rng) % (uint64_t)customers);
  snprintf(cid, sizeof cid, "cust_%05lld", c);
  snprintf(name, sizeof name, "Customer %lld", c);
  snprintf(email, sizeof email, "billing+%lld@customer%lld.example.com", c, c);
  const char *cur = currencies[next(rng) % 7];
  int e = billing_currency_exponent(cur);
  int64_t minor = 1 + (int64_t)(next(rng) % 5000000);
  unsigned st = (unsigned)(next(rng) % 10);
  const char *status = st < 6 ? "pending" : st < 9 ? "paid" : "cancelled";
  int64_t created = 1672531200000LL + (int64_t)(i % 3) * 31536000000LL + (int64_t)(next(rng) % 31000000000ull);
  int missing = kind == 0 ? (int)(next(rng) % 5) : -1; /* which field goes */

  BSON_APPEND_UTF8(doc, "_id", id);
  if (missing != 0) BSON_APPEND_UTF8(doc, "invoiceNumber", num);
  if (missing != 1) {
    if (kind == 1) BSON_APPEND_DOUBLE(doc, "amount", -as_double(minor, e));
    else if (kind == 2) BSON_APPEND_UTF8(doc, "amount", "1 500,00");
    else if (kind == 5) BSON_APPEND_DOUBLE(doc, "amount", as_double(minor, e) + (e ? 0.4 : 0.5) / (e == 3 ? 1000 : e == 2 ? 100 : 1));
    else BSON_APPEND_DOUBLE(doc, "amount", as_double(minor, e));
  }
  if (missing != 2) BSON_APPEND_UTF8(doc, "currency", cur);
  if (missing != 3) {
    bson_t cust;
    BSON_APPEND_DOCUMENT_BEGIN(doc, "customer", &cust);
    BSON_APPEND_UTF8(&cust, "id", cid);
    BSON_APPEND_UTF8(&cust, "name", name);
    BSON_APPEND_UTF8(&cust, "email", kind == 4 ? "billing at customer.example.com" : email);
    bson_append_document_end(doc, &cust);
  }
  if (missing != 4) BSON_APPEND_UTF8(doc, "status", kind == 3 ? "refunded" : status);
  BSON_APPEND_DATE_TIME(doc, "createdAt", created);
  if (i % 3) BSON_APPEND_DATE_TIME(doc, "dueDate", created + 30LL * 86400000); /* a third have none */
  BSON_APPEND_DATE_TIME(doc, "updatedAt", created + (st >= 6 ? 86400000 : 0));
  if (!strcmp(status, "paid")) BSON_APPEND_DATE_TIME(doc, "paidAt", created + 86400000);
}

int admin_gen_legacy(admin_t *a, int argc, char **argv) {
  static const char *const specs[] = {"malformed=", "customers=", "seed=", "collection=", "drop", NULL};
  admin_args_t args;
  int rc = admin_parse(a, argc, argv, specs, usage, 1, 1, &args);
  if (rc) return rc < 0 ? ADMIN_OK : rc;
  long long n, pct = 0, customers = 1000, seed = 1;
  if (admin_int("N", args.pos[0], 0, 100000000, &n) ||
      (args.vals[0] && admin_int("--malformed", args.vals[0], 0, 100, &pct)) ||
      (args.vals[1] && admin_int("--customers", args.vals[1], 1, 10000000, &customers)) ||
      (args.vals[2] && admin_int("--seed", args.vals[2], 0, INT64_MAX, &seed)))
    return ADMIN_USAGE;
  const char *name = args.vals[3] ? args.vals[3] : BILLING_LEGACY_COLLECTION;
  a->may_be_empty = true; /* it writes the data */
  if ((rc = admin_connect(a, NULL))) return rc;
  mongoc_collection_t *coll = mongoc_database_get_collection(a->db, name);
  bson_error_t e;
  if (args.vals[4]) {
    bson_t all = BSON_INITIALIZER;
    bool ok = mongoc_collection_delete_many(coll, &all, NULL, NULL, &e);
    bson_destroy(&all);
    if (!ok) {
      mongoc_collection_destroy(coll);
      return admin_server_error("empty the collection", &e);
    }
  }
  uint64_t rng = (uint64_t)seed;
  int64_t number[3] = {0, 0, 0};
  long long counts[NKINDS] = {0}, malformed = 0, written = 0;
  admin_progress_t prog;
  admin_progress_start(&prog, "gen-legacy", n);
  while (written < n) {
    mongoc_bulk_operation_t *bulk = mongoc_collection_create_bulk_operation_with_opts(coll, NULL);
    long long end = written + 1000 < n ? written + 1000 : n;
    for (long long i = written; i < end; i++) {
      int kind = -1;
      if ((long long)(next(&rng) % 10000) < pct * 100) {
        kind = (int)(malformed++ % NKINDS);
        counts[kind]++;
      }
      bson_t doc = BSON_INITIALIZER;
      build(&doc, &rng, i, customers, number, kind);
      mongoc_bulk_operation_insert_with_opts(bulk, &doc, NULL, NULL);
      bson_destroy(&doc);
    }
    bson_t reply;
    bool ok = mongoc_bulk_operation_execute(bulk, &reply, &e) != 0;
    bson_destroy(&reply);
    mongoc_bulk_operation_destroy(bulk);
    if (!ok) {
      mongoc_collection_destroy(coll);
      return admin_server_error("insert legacy documents", &e);
    }
    written = end;
    admin_progress_update(&prog, written);
  }
  admin_progress_end(&prog);
  mongoc_collection_destroy(coll);
  if (a->json) {
    bson_t out = BSON_INITIALIZER, m;
    BSON_APPEND_UTF8(&out, "collection", name);
    BSON_APPEND_INT64(&out, "written", written);
    BSON_APPEND_INT64(&out, "valid", written - malformed);
    BSON_APPEND_DOCUMENT_BEGIN(&out, "malformed", &m);
    for (int k = 0; k < NKINDS; k++) BSON_APPEND_INT64(&m, kinds[k], counts[k]);
    bson_append_document_end(&out, &m);
    admin_print_json(stdout, &out);
    bson_destroy(&out);
  } else {
    printf("wrote %lld documents into %s: %lld valid, %lld malformed", written, name, written - malformed, malformed);
    for (int k = 0; k < NKINDS; k++) printf("%s%s %lld", k ? ", " : " (", kinds[k], counts[k]);
    printf(")\n");
  }
  return ADMIN_OK;
}
