/* A reader of the Prometheus text exposition format (version 0.0.4): the
 * sample lines `name{label="value",...} value [timestamp]`, comments and
 * blank lines skipped. Enough to read what a /metrics endpoint serves. */
#ifndef BILLING_ADMIN_PROM_H
#define BILLING_ADMIN_PROM_H

#include <stdbool.h>
#include <stddef.h>

#define PROM_NAME_MAX 128
#define PROM_LABELS_MAX 512

typedef struct prom_sample {
  char name[PROM_NAME_MAX];
  char labels[PROM_LABELS_MAX]; /* unescaped, as key=value pairs separated by \x1f */
  double value;
} prom_sample_t;

typedef struct prom_doc {
  prom_sample_t *samples;
  size_t n, cap;
} prom_doc_t;

/* Parses `text` into `out` (zeroed by the caller; free with prom_free).
 * False on a malformed line, with the line number and why in err[cap]. */
bool prom_parse(const char *text, prom_doc_t *out, char *err, size_t cap);
void prom_free(prom_doc_t *d);

/* The value of label `key` of a sample, or NULL. */
const char *prom_label(const prom_sample_t *s, const char *key, char *buf, size_t cap);
/* Sum of the samples named `name` whose label `key` equals `value` (key
 * NULL: all of them); *found tells whether any matched. */
double prom_sum(const prom_doc_t *d, const char *name, const char *key, const char *value, bool *found);
/* The largest sample named `name` (0 when none). */
double prom_max(const prom_doc_t *d, const char *name);
/* The q-quantile (0 < q < 1) of histogram `base` (its _bucket samples,
 * summed over the other labels), from the difference `now - before` of two
 * scrapes (before NULL: since the start). Linear within a bucket, as
 * Prometheus's histogram_quantile does. -1 when there are no observations. */
double prom_quantile(const prom_doc_t *now, const prom_doc_t *before, const char *base, double q);

#endif
