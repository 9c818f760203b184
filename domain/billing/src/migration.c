/* Importing invoices numbered by a legacy system. invoice.import tells the
 * book of a year that a number was given outside it: the book applies
 * invoice.imported as last = max(last, n), so that numbering continues after
 * the highest imported number, whatever order imports come in. Amounts come
 * from decimal doubles (the seed's 1500.00) and become exact minor units. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include "billing-private.h"

/* ISO 4217 minor-unit exponents other than 2 (0 and 3), and every active
 * code, so an unknown currency is refused rather than guessed. */
static const char exp0[] = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF ";
static const char exp3[] = "BHD IQD JOD KWD LYD OMR TND ";
static const char exp4[] = "CLF UYW ";
static const char codes[] =
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD CAD CDF "
    "CHF CLF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD "
    "HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL "
    "LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR "
    "PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP "
    "TRY TTD TWD TZS UAH UGX USD UYI UYU UYW UZS VES VND VUV WST XAF XCD XOF XPF YER ZAR ZMW ZWL ";

static bool listed(const char *list, const char *code) {
  if (!code || strlen(code) != 3) return false;
  for (const char *p = list; *p; p += 4) {
    if (!memcmp(p, code, 3)) return true;
  }
  return false;
}

int billing_currency_exponent(const char *code) {
  if (!listed(codes, code)) return -1;
  if (listed(exp0, code)) return 0;
  if (listed(exp3, code)) return 3;
  if (listed(exp4, code)) return 4;
  return 2;
}

/* The shortest text that reads back as `v` (4290.3964, not 4290.3963999999996). */
static void shortest(double v, char *buf, size_t cap) {
  for (int p = 1; p <= 17; p++) {
    snprintf(buf, cap, "%.*g", p, v);
    if (strtod(buf, NULL) == v) return;
  }
}

cqrs_code_t billing_amount_from_double(double value, const char *currency, int64_t *minor, cqrs_error_t *err) {
  if (!minor) return cqrs_error_set(err, CQRS_EINVAL, "minor is NULL");
  *minor = 0;
  int e = billing_currency_exponent(currency);
  if (e < 0) return cqrs_error_set(err, CQRS_EINVAL, "unknown currency %.8s", currency ? currency : "(null)");
  if (!isfinite(value)) return cqrs_error_set(err, CQRS_EINVAL, "amount is not a finite number");
  double scale = 1;
  for (int i = 0; i < e; i++) scale *= 10;
  double scaled = value * scale;
  /* Beyond 2^53 a double no longer holds every integer: no exact answer. */
  char text[32];
  shortest(value, text, sizeof text);
  if (fabs(scaled) >= 9007199254740992.0) return cqrs_error_set(err, CQRS_EINVAL, "amount %s is too large", text);
  long long n = llround(scaled);
  /* The double must be the one nearest to the decimal n / 10^e: written out
   * with e decimals and read back, it is the same double, or the legacy
   * value had more digits than the currency has (1500.005 EUR). */
  char buf[96], frac[8];
  long long whole = llabs(n), div = (long long)scale, f = whole % div;
  for (int i = e - 1; i >= 0; i--, f /= 10) frac[i] = (char)('0' + f % 10);
  frac[e] = '\0';
  snprintf(buf, sizeof buf, "%s%lld%s%s", n < 0 ? "-" : "", whole / div, e ? "." : "", frac);
  errno = 0;
  double back = strtod(buf, NULL);
  if (errno || back != value)
    return cqrs_error_set(err, CQRS_EINVAL, "amount %s is not a whole number of %s minor units (10^-%d)", text,
                          currency, e);
  *minor = n;
  return CQRS_OK;
}

bool billing_invoice_number_parse(const char *number, int *year, int64_t *n) {
  if (!number || strncmp(number, "INV-", 4)) return false;
  const char *p = number + 4;
  int y = 0, digits = 0;
  for (; *p >= '0' && *p <= '9' && digits < 5; p++, digits++) y = y * 10 + (*p - '0');
  if (digits != 4 || *p != '-') return false;
  p++;
  int64_t v = 0;
  digits = 0;
  for (; *p >= '0' && *p <= '9'; p++, digits++) {
    if (v > (INT64_MAX - 9) / 10) return false;
    v = v * 10 + (*p - '0');
  }
  if (*p || digits < 3 || v < 1) return false;
  if (year) *year = y;
  if (n) *n = v;
  return true;
}

static const cqrs_field_t import_fields[] = {
    CQRS_STRING(billing_import_invoice_t, number, "number", CQRS_F_REQUIRED),
    CQRS_STRING(billing_import_invoice_t, invoice_id, "invoiceId", CQRS_F_OPTIONAL), CQRS_FIELDS_END};
static const cqrs_field_t imported_fields[] = {
    CQRS_STRING(billing_invoice_imported_t, number, "number", CQRS_F_REQUIRED),
    CQRS_STRING(billing_invoice_imported_t, invoice_id, "invoiceId", 0),
    CQRS_INT64(billing_invoice_imported_t, sequence, "sequence", CQRS_F_REQUIRED), CQRS_FIELDS_END};

static cqrs_code_t import_validate(const void *payload, cqrs_error_t *err) {
  const billing_import_invoice_t *c = payload;
  if (!billing_invoice_number_parse(c->number, NULL, NULL))
    return cqrs_error_set(err, CQRS_EINVALID_COMMAND, "number %.40s is not INV-YYYY-NNN", c->number);
  return CQRS_OK;
}

static cqrs_code_t import_id(const void *payload, char *buf, size_t cap, cqrs_error_t *err) {
  BILLING_UNUSED(err);
  snprintf(buf, cap, "invoice.import:%.40s", ((const billing_import_invoice_t *)payload)->number);
  return CQRS_OK;
}

const cqrs_command_type_t billing_import_invoice = {.name = "invoice.import",
                                                    .payload_size = sizeof(billing_import_invoice_t),
                                                    .fields = import_fields,
                                                    .validate = import_validate,
                                                    .make_id = import_id};
const cqrs_event_type_t billing_invoice_imported = {.name = "invoice.imported", .schema_version = 1,
                                                    .payload_size = sizeof(billing_invoice_imported_t),
                                                    .fields = imported_fields};

void billing__book_on_imported(void *state, const cqrs_event_t *e) {
  billing_book_state_t *s = state;
  const billing_invoice_imported_t *p = e->payload;
  if (p->sequence > s->last) s->last = p->sequence;
}

static cqrs_code_t handle_import(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  BILLING_UNUSED(data);
  const billing_import_invoice_t *c = cqrs_command_payload(cmd);
  int year;
  int64_t n;
  if (!billing_invoice_number_parse(c->number, &year, &n))
    return cqrs_error_set(err, CQRS_EINVALID_COMMAND, "number %.40s is not INV-YYYY-NNN", c->number);
  char book_id[16];
  snprintf(book_id, sizeof book_id, "%04d", year);
  cqrs_aggregate_t *book;
  cqrs_code_t rc = cqrs_context_load(ctx, &billing_invoice_book, book_id, &book, err);
  if (rc) return rc;
  /* A number at or below the book's last changes nothing: numbering goes on
   * after the highest, whatever order the imports come in. */
  if (n <= ((const billing_book_state_t *)cqrs_aggregate_state_const(book))->last) return CQRS_OK;
  billing_invoice_imported_t e;
  memset(&e, 0, sizeof e);
  memcpy(e.number, c->number, sizeof e.number);
  memcpy(e.invoice_id, c->invoice_id, sizeof e.invoice_id);
  e.sequence = n;
  return cqrs_aggregate_raise(book, &billing_invoice_imported, &e, err);
}

cqrs_code_t billing__migration_handlers(cqrs_dispatcher_t *d, cqrs_error_t *err) {
  return cqrs_dispatcher_register(d, &billing_import_invoice, handle_import, NULL, 0, err);
}
