/* See prom.h. */
#include "prom.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SEP '\x1f'

static bool bad(char *err, size_t cap, int line, const char *why) {
  snprintf(err, cap, "line %d: %s", line, why);
  return false;
}

static bool name_char(char c, bool first) {
  return isalpha((unsigned char)c) || c == '_' || c == ':' || (!first && isdigit((unsigned char)c));
}

/* Parses {k="v",...} at *p into out; advances *p past the brace. */
static bool parse_labels(const char **p, char *out, size_t cap, int line, char *err, size_t ecap) {
  const char *s = *p + 1;
  size_t n = 0;
  for (;;) {
    while (*s == ' ' || *s == '\t') s++;
    if (*s == '}') break;
    if (!name_char(*s, true)) return bad(err, ecap, line, "a label name was expected");
    if (n && n + 1 < cap) out[n++] = SEP;
    while (name_char(*s, false)) {
      if (n + 1 < cap) out[n++] = *s;
      s++;
    }
    if (*s++ != '=') return bad(err, ecap, line, "'=' was expected after a label name");
    if (n + 1 < cap) out[n++] = '=';
    if (*s++ != '"') return bad(err, ecap, line, "a quoted label value was expected");
    while (*s != '"') {
      char c = *s++;
      if (!c || c == '\n') return bad(err, ecap, line, "unterminated label value");
      if (c == '\\') {
        c = *s++;
        if (c == 'n') c = '\n';
        else if (c != '\\' && c != '"') return bad(err, ecap, line, "unknown escape in a label value");
      }
      if (n + 1 < cap) out[n++] = c;
    }
    s++;
    while (*s == ' ' || *s == '\t') s++;
    if (*s == ',') {
      s++;
      continue;
    }
    if (*s != '}') return bad(err, ecap, line, "',' or '}' was expected");
  }
  out[n] = '\0';
  *p = s + 1;
  return true;
}

static bool parse_value(const char *s, double *v) {
  if (!strncmp(s, "+Inf", 4)) return *v = INFINITY, true;
  if (!strncmp(s, "-Inf", 4)) return *v = -INFINITY, true;
  if (!strncmp(s, "NaN", 3)) return *v = NAN, true;
  char *end;
  *v = strtod(s, &end);
  return end != s && (*end == '\0' || *end == ' ' || *end == '\t' || *end == '\n' || *end == '\r');
}

bool prom_parse(const char *text, prom_doc_t *out, char *err, size_t cap) {
  int line = 0;
  for (const char *p = text; p && *p;) {
    line++;
    const char *eol = strchr(p, '\n');
    const char *next = eol ? eol + 1 : NULL;
    while (*p == ' ' || *p == '\t') p++;
    if (*p == '#' || *p == '\n' || *p == '\r' || !*p) {
      p = next;
      continue;
    }
    prom_sample_t s;
    memset(&s, 0, sizeof s);
    size_t n = 0;
    if (!name_char(*p, true)) return bad(err, cap, line, "a metric name was expected");
    while (name_char(*p, false)) {
      if (n + 1 >= sizeof s.name) return bad(err, cap, line, "metric name too long");
      s.name[n++] = *p++;
    }
    if (*p == '{' && !parse_labels(&p, s.labels, sizeof s.labels, line, err, cap)) return false;
    if (*p != ' ' && *p != '\t') return bad(err, cap, line, "a space was expected before the value");
    while (*p == ' ' || *p == '\t') p++;
    if (!parse_value(p, &s.value)) return bad(err, cap, line, "the value is not a number");
    if (out->n == out->cap) {
      size_t ncap = out->cap ? out->cap * 2 : 64;
      prom_sample_t *ns = realloc(out->samples, ncap * sizeof *ns);
      if (!ns) return bad(err, cap, line, "out of memory");
      out->samples = ns;
      out->cap = ncap;
    }
    out->samples[out->n++] = s;
    p = next;
  }
  return true;
}

void prom_free(prom_doc_t *d) {
  free(d->samples);
  memset(d, 0, sizeof *d);
}

const char *prom_label(const prom_sample_t *s, const char *key, char *buf, size_t cap) {
  size_t klen = strlen(key);
  for (const char *p = s->labels; *p;) {
    const char *end = strchr(p, SEP);
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len > klen && !strncmp(p, key, klen) && p[klen] == '=') {
      snprintf(buf, cap, "%.*s", (int)(len - klen - 1), p + klen + 1);
      return buf;
    }
    if (!end) break;
    p = end + 1;
  }
  return NULL;
}

double prom_sum(const prom_doc_t *d, const char *name, const char *key, const char *value, bool *found) {
  double sum = 0;
  char buf[PROM_LABELS_MAX];
  if (found) *found = false;
  for (size_t i = 0; d && i < d->n; i++) {
    const prom_sample_t *s = &d->samples[i];
    if (strcmp(s->name, name)) continue;
    if (key) {
      const char *v = prom_label(s, key, buf, sizeof buf);
      if (!v || strcmp(v, value)) continue;
    }
    sum += s->value;
    if (found) *found = true;
  }
  return sum;
}

double prom_max(const prom_doc_t *d, const char *name) {
  double max = 0;
  for (size_t i = 0; d && i < d->n; i++) {
    if (!strcmp(d->samples[i].name, name) && d->samples[i].value > max) max = d->samples[i].value;
  }
  return max;
}

typedef struct bucket {
  double le, count;
} bucket_t;

static int by_le(const void *a, const void *b) {
  double x = ((const bucket_t *)a)->le, y = ((const bucket_t *)b)->le;
  return (x > y) - (x < y);
}

/* Cumulative counts per bound, summed over the other labels. */
static size_t buckets(const prom_doc_t *d, const char *name, double sign, bucket_t *out, size_t n, size_t cap) {
  char buf[64];
  for (size_t i = 0; d && i < d->n; i++) {
    const prom_sample_t *s = &d->samples[i];
    const char *le = strcmp(s->name, name) ? NULL : prom_label(s, "le", buf, sizeof buf);
    double bound;
    if (!le || !parse_value(le, &bound)) continue;
    size_t j = 0;
    while (j < n && out[j].le != bound) j++;
    if (j == n) {
      if (n == cap) continue;
      out[n++] = (bucket_t){bound, 0};
    }
    out[j].count += sign * s->value;
  }
  return n;
}

double prom_quantile(const prom_doc_t *now, const prom_doc_t *before, const char *base, double q) {
  char name[PROM_NAME_MAX + 8];
  snprintf(name, sizeof name, "%s_bucket", base);
  bucket_t b[64];
  size_t n = buckets(now, name, 1, b, 0, 64);
  if (before) n = buckets(before, name, -1, b, n, 64);
  if (!n) return -1;
  qsort(b, n, sizeof *b, by_le);
  double total = b[n - 1].count;
  if (total <= 0) return -1;
  double rank = q * total, prev_le = 0, prev_count = 0;
  for (size_t i = 0; i < n; i++) {
    if (b[i].count >= rank) {
      if (isinf(b[i].le)) return prev_le; /* above the last bound: its value */
      double in = b[i].count - prev_count;
      return in > 0 ? prev_le + (b[i].le - prev_le) * (rank - prev_count) / in : b[i].le;
    }
    prev_le = b[i].le;
    prev_count = b[i].count;
  }
  return prev_le;
}
