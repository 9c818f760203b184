#include "prom_check.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool name_char(char c, bool first) { return isalpha((unsigned char)c) || c == '_' || c == ':' || (!first && isdigit((unsigned char)c)); }

/* Reads a metric or label name at *p; returns its length (0: none). */
static size_t read_name(const char *p) {
  size_t n = 0;
  while (p[n] && name_char(p[n], n == 0)) n++;
  return n;
}

static bool fail(char *why, size_t cap, int line, const char *msg) {
  snprintf(why, cap, "line %d: %s", line, msg);
  return false;
}

bool prom_check(const char *text, char *why, size_t cap) {
  char family[128] = "", type[16] = "";
  char last_series[512] = "";
  double last_bucket = -1, last_le = -INFINITY;
  int line = 0;
  if (!*text) return fail(why, cap, 0, "empty");
  for (const char *p = text; *p;) {
    line++;
    const char *end = strchr(p, '\n');
    if (!end) return fail(why, cap, line, "no newline at the end");
    char l[1024];
    size_t len = (size_t)(end - p);
    if (len >= sizeof l) return fail(why, cap, line, "line too long");
    memcpy(l, p, len);
    l[len] = '\0';
    p = end + 1;
    if (!strncmp(l, "# HELP ", 7)) {
      size_t n = read_name(l + 7);
      if (!n || l[7 + n] != ' ') return fail(why, cap, line, "bad HELP");
      continue;
    }
    if (!strncmp(l, "# TYPE ", 7)) {
      size_t n = read_name(l + 7);
      if (!n || n >= sizeof family || l[7 + n] != ' ') return fail(why, cap, line, "bad TYPE");
      const char *k = l + 8 + n;
      if (strcmp(k, "counter") && strcmp(k, "gauge") && strcmp(k, "histogram") && strcmp(k, "summary") &&
          strcmp(k, "untyped"))
        return fail(why, cap, line, "unknown type");
      memcpy(family, l + 7, n);
      family[n] = '\0';
      snprintf(type, sizeof type, "%s", k);
      last_bucket = -1;
      last_le = -INFINITY;
      continue;
    }
    if (l[0] == '#') continue;
    size_t n = read_name(l);
    if (!n) return fail(why, cap, line, "sample without a name");
    char name[128];
    if (n >= sizeof name) return fail(why, cap, line, "name too long");
    memcpy(name, l, n);
    name[n] = '\0';
    const char *suffix = "";
    if (!strncmp(name, family, strlen(family))) suffix = name + strlen(family);
    else return fail(why, cap, line, "sample outside its TYPE'd family");
    bool hist = !strcmp(type, "histogram");
    if (hist ? strcmp(suffix, "_bucket") && strcmp(suffix, "_sum") && strcmp(suffix, "_count") : *suffix != '\0')
      return fail(why, cap, line, "sample name does not match its family");
    const char *q = l + n;
    char series_key[512] = "";
    double le = NAN;
    if (*q == '{') {
      q++;
      while (*q != '}') {
        size_t ln = read_name(q);
        if (!ln || q[ln] != '=' || q[ln + 1] != '"') return fail(why, cap, line, "bad label");
        bool is_le = ln == 2 && !strncmp(q, "le", 2);
        const char *v = q + ln + 2;
        char val[256];
        size_t vn = 0;
        while (*v && *v != '"') {
          if (*v == '\\') {
            v++;
            if (*v != '\\' && *v != '"' && *v != 'n') return fail(why, cap, line, "bad escape");
          }
          if (vn + 1 < sizeof val) val[vn++] = *v;
          v++;
        }
        val[vn] = '\0';
        if (*v != '"') return fail(why, cap, line, "unterminated label value");
        if (is_le) {
          le = !strcmp(val, "+Inf") ? INFINITY : strtod(val, NULL);
        } else {
          strncat(series_key, q, ln + 1);
          strncat(series_key, val, sizeof series_key - strlen(series_key) - 1);
          strncat(series_key, ",", sizeof series_key - strlen(series_key) - 1);
        }
        q = v + 1;
        if (*q == ',') q++;
        else if (*q != '}') return fail(why, cap, line, "labels not separated by ','");
      }
      q++;
    }
    if (*q != ' ') return fail(why, cap, line, "no space before the value");
    char *vend;
    double value = strtod(q + 1, &vend);
    if (vend == q + 1 || (*vend && *vend != ' ')) return fail(why, cap, line, "bad value");
    if (strcmp(type, "counter") == 0 && value < 0) return fail(why, cap, line, "negative counter");
    if (hist && !strcmp(suffix, "_bucket")) {
      if (isnan(le)) return fail(why, cap, line, "bucket without le");
      if (strcmp(series_key, last_series)) {
        snprintf(last_series, sizeof last_series, "%s", series_key);
        last_bucket = -1;
        last_le = -INFINITY;
      }
      if (le <= last_le) return fail(why, cap, line, "buckets not in increasing le");
      if (value < last_bucket) return fail(why, cap, line, "buckets not cumulative");
      last_le = le;
      last_bucket = value;
    } else if (hist && !strcmp(suffix, "_count")) {
      if (last_le != INFINITY || value != last_bucket) return fail(why, cap, line, "_count is not the +Inf bucket");
    }
  }
  return true;
}

double prom_value(const char *text, const char *series) {
  size_t n = strlen(series);
  for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
    if (!strncmp(p, series, n) && p[n] == ' ') return strtod(p + n + 1, NULL);
  }
  return -1;
}
