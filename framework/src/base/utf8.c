/* UTF-8 checks of ids and names: the common all-ASCII case first. */
#include "base/cqrs-private.h"

#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

/* Whether one of the 8 bytes of `v` is NUL or not ASCII. Exact when all are
 * below 0x80 (the borrow of `v - ONES` then starts only at a zero byte); a
 * false "yes" only sends the string to the exact check. */
static bool word_odd(uint64_t v) { return ((v | ((v - ONES) & ~v)) & HIGHS) != 0; }

static uint64_t load8(const char *p) {
  uint64_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* Eight bytes at a time, the last word overlapping the one before; ids and
 * names are all ASCII, so the exact check rarely runs. */
bool cqrs__utf8_valid(const char *s, size_t n) {
  bool odd = false;
  if (n >= 8) {
    for (size_t i = 0; i + 8 < n; i += 8) odd |= word_odd(load8(s + i));
    odd |= word_odd(load8(s + n - 8));
  } else if (n >= 4) {
    uint32_t a, b;
    memcpy(&a, s, 4);
    memcpy(&b, s + n - 4, 4);
    odd = word_odd((uint64_t)a << 32 | b);
  } else {
    for (size_t i = 0; i < n; i++) odd |= (unsigned char)s[i] - 1u >= 0x7fu;
  }
  return !odd || bson_utf8_validate(s, n, false);
}
