#include <bson/bson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "base/cqrs-uthash.h"

_Thread_local bool cqrs__hash_oom;

static cqrs_allocator_t allocator = {malloc, realloc, free};

void cqrs_set_allocator(const cqrs_allocator_t *a) {
  if (a && a->malloc_fn && a->realloc_fn && a->free_fn) {
    allocator = *a;
  } else {
    allocator.malloc_fn = malloc;
    allocator.realloc_fn = realloc;
    allocator.free_fn = free;
  }
}

void *cqrs__malloc(size_t size) { return allocator.malloc_fn(size ? size : 1); }

void *cqrs__calloc(size_t n, size_t size) {
  if (size && n > SIZE_MAX / size) return NULL;
  void *p = cqrs__malloc(n * size);
  if (p) memset(p, 0, n * size);
  return p;
}

void *cqrs__realloc(void *ptr, size_t size) { return allocator.realloc_fn(ptr, size ? size : 1); }

void cqrs__free(void *ptr) {
  if (ptr) allocator.free_fn(ptr);
}

char *cqrs__strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = cqrs__malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

static const struct {
  const char *name;
  const char *text;
} codes[CQRS_CODE_COUNT] = {
    [CQRS_OK] = {"ok", "success"},
    [CQRS_EREJECTED] = {"rejected", "rejected by a business rule"},
    [CQRS_EINVAL] = {"invalid_argument", "invalid argument"},
    [CQRS_EINVALID_COMMAND] = {"invalid_command", "invalid command"},
    [CQRS_ENO_HANDLER] = {"no_handler", "no handler for this command type"},
    [CQRS_EDUPLICATE] = {"duplicate", "already registered"},
    [CQRS_EUNKNOWN_TYPE] = {"unknown_type", "unknown type"},
    [CQRS_ECONFLICT] = {"conflict", "concurrency conflict: the stream has moved"},
    [CQRS_ESTORE] = {"store_unavailable", "the store failed or is unavailable"},
    [CQRS_ECODEC] = {"codec", "malformed or mistyped document"},
    [CQRS_ENOMEM] = {"out_of_memory", "out of memory"},
    [CQRS_EHANDLER] = {"handler_failed", "a handler failed"},
    [CQRS_ECLOSED] = {"closed", "closing or closed"},
    [CQRS_ENOT_FOUND] = {"not_found", "not found"},
    [CQRS_ETOO_LARGE] = {"too_large", "too large"},
    [CQRS_ESTATE] = {"bad_state", "not allowed in the current state"},
    [CQRS_ETIMEOUT] = {"timeout", "timed out"},
};

const char *cqrs_code_name(cqrs_code_t code) {
  if ((unsigned)code >= CQRS_CODE_COUNT) return "unknown_code";
  return codes[code].name;
}

const char *cqrs_strerror(cqrs_code_t code) {
  if ((unsigned)code >= CQRS_CODE_COUNT) return "unknown error code";
  return codes[code].text;
}

static void set_message(cqrs_error_t *err, const char *fmt, va_list ap) {
  if (fmt) {
    vsnprintf(err->message, sizeof err->message, fmt, ap);
  } else {
    snprintf(err->message, sizeof err->message, "%s", cqrs_strerror(err->code));
  }
}

cqrs_code_t cqrs_error_set(cqrs_error_t *err, cqrs_code_t code, const char *fmt, ...) {
  if (!err) return code;
  err->code = code;
  err->domain = code == CQRS_OK ? CQRS_DOMAIN_NONE : code == CQRS_ESTORE ? CQRS_DOMAIN_STORE : CQRS_DOMAIN_FRAMEWORK;
  snprintf(err->name, sizeof err->name, "%s", cqrs_code_name(code));
  err->cause_domain = err->cause_code = 0;
  err->transient = code == CQRS_ESTORE;
  va_list ap;
  va_start(ap, fmt);
  set_message(err, fmt, ap);
  va_end(ap);
  return code;
}

cqrs_code_t cqrs_reject(cqrs_error_t *err, const char *reason, const char *fmt, ...) {
  if (!err) return CQRS_EREJECTED;
  err->code = CQRS_EREJECTED;
  err->domain = CQRS_DOMAIN_BUSINESS;
  snprintf(err->name, sizeof err->name, "%s", reason && *reason ? reason : "rejected");
  err->cause_domain = err->cause_code = 0;
  err->transient = false;
  va_list ap;
  va_start(ap, fmt);
  set_message(err, fmt, ap);
  va_end(ap);
  return CQRS_EREJECTED;
}

void cqrs_error_set_cause(cqrs_error_t *err, uint32_t cause_domain, uint32_t cause_code, bool transient) {
  if (!err) return;
  err->cause_domain = cause_domain;
  err->cause_code = cause_code;
  err->transient = transient;
  if (err->code == CQRS_ESTORE && !transient) snprintf(err->name, sizeof err->name, "store_failed");
}

bool cqrs_error_transient(const cqrs_error_t *err) { return err && err->code == CQRS_ESTORE && err->transient; }

void cqrs_error_clear(cqrs_error_t *err) {
  if (!err) return;
  err->code = CQRS_OK;
  err->domain = CQRS_DOMAIN_NONE;
  err->name[0] = '\0';
  err->message[0] = '\0';
  err->cause_domain = err->cause_code = 0;
  err->transient = false;
}

void cqrs__error_copy(cqrs_error_t *dst, const cqrs_error_t *src) {
  if (dst && src && dst != src) *dst = *src;
}

#define HASH_K UINT64_C(0x9e3779b97f4a7c15)

static uint64_t hash_word(uint64_t h, uint64_t w) {
  h = (h ^ w) * HASH_K;
  return h ^ (h >> 29);
}

uint64_t cqrs__hash_str(const char *s, uint64_t seed) { return cqrs__hash_bytes(s, strlen(s), seed); }

uint64_t cqrs__hash_bytes(const void *p, size_t n, uint64_t seed) {
  const char *s = p;
  uint64_t h = seed ^ (n * HASH_K), w;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    memcpy(&w, s + i, 8);
    h = hash_word(h, w);
  }
  if (i < n) {
    /* The tail: a word overlapping the last one, two overlapping halves, or
     * first, middle and last byte (the length is mixed in already). */
    if (n >= 8) {
      memcpy(&w, s + n - 8, 8);
    } else if (n >= 4) {
      uint32_t lo, hi;
      memcpy(&lo, s, 4);
      memcpy(&hi, s + n - 4, 4);
      w = (uint64_t)hi << 32 | lo;
    } else {
      w = (uint64_t)(unsigned char)s[0] | (uint64_t)(unsigned char)s[n / 2] << 8 | (uint64_t)(unsigned char)s[n - 1] << 16;
    }
    h = hash_word(h, w);
  }
  h ^= h >> 33;
  h *= UINT64_C(0xff51afd7ed558ccd);
  return h ^ (h >> 33);
}

cqrs_code_t cqrs__check_str(const char *s, size_t cap, const char *what, cqrs_error_t *err) {
  if (!s || !*s) return cqrs_error_set(err, CQRS_EINVAL, "%s is NULL or empty", what);
  size_t n = strnlen(s, cap);
  if (n >= cap) return cqrs_error_set(err, CQRS_ETOO_LARGE, "%s is longer than %zu bytes", what, cap - 1);
  if (!cqrs__utf8_valid(s, n)) return cqrs_error_set(err, CQRS_EINVAL, "%s is not valid UTF-8", what);
  return CQRS_OK;
}

int64_t cqrs_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Event and command ids are ObjectIds, as libbson makes them (4 bytes of
 * seconds, 5 random bytes per process, a 3-byte counter from a random
 * start), made here without bson_oid_init's per-call context look-up and
 * formatted through a byte-to-hex table. A forked child draws new random
 * bytes, so that parent and child never share a prefix. */
static pthread_once_t id_once = PTHREAD_ONCE_INIT;
static unsigned char id_rand[5];
static _Atomic uint32_t id_seq;
static char id_hex[256][2];

static void id_reseed(void) {
  unsigned char r[8];
  if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ ((uint64_t)getpid() << 40) ^ (uintptr_t)r;
    for (size_t i = 0; i < sizeof r; i++, x = x * 6364136223846793005u + 1442695040888963407u) r[i] = (unsigned char)(x >> 56);
  }
  memcpy(id_rand, r, sizeof id_rand);
  atomic_store_explicit(&id_seq, (uint32_t)r[5] << 16 | (uint32_t)r[6] << 8 | r[7], memory_order_relaxed);
}

static void id_init(void) {
  static const char digits[] = "0123456789abcdef";
  for (unsigned i = 0; i < 256; i++) {
    id_hex[i][0] = digits[i >> 4];
    id_hex[i][1] = digits[i & 15];
  }
  id_reseed();
  pthread_atfork(NULL, NULL, id_reseed);
}

void cqrs_new_id(char buf[CQRS_EVENT_ID_LEN]) {
  pthread_once(&id_once, id_init);
  uint32_t t = (uint32_t)time(NULL);
  uint32_t seq = atomic_fetch_add_explicit(&id_seq, 1, memory_order_relaxed);
  unsigned char b[12] = {(unsigned char)(t >> 24), (unsigned char)(t >> 16), (unsigned char)(t >> 8), (unsigned char)t,
                         id_rand[0], id_rand[1], id_rand[2], id_rand[3], id_rand[4],
                         (unsigned char)(seq >> 16), (unsigned char)(seq >> 8), (unsigned char)seq};
  for (size_t i = 0; i < sizeof b; i++) memcpy(buf + 2 * i, id_hex[b[i]], 2);
  buf[24] = '\0';
}

void cqrs__hash128(const char *a, const char *b, uint64_t h[2]) {
  h[0] = 1469598103934665603ull;
  h[1] = 0x9e3779b97f4a7c15ull;
  const char *parts[2] = {a, b};
  for (int k = 0; k < 2; k++) {
    for (const unsigned char *p = (const unsigned char *)parts[k];; p++) {
      unsigned c = *p ? *p : 0x100u + (unsigned)k; /* the separator cannot be a byte of the input */
      h[0] = (h[0] ^ c) * 1099511628211ull;
      h[1] = (h[1] ^ c) * 0xff51afd7ed558ccdull;
      h[1] ^= h[1] >> 29;
      if (!*p) break;
    }
  }
  h[0] ^= h[1] >> 31;
  h[1] ^= h[0] >> 33;
  h[1] *= 0xc4ceb9fe1a85ec53ull;
}

cqrs_code_t cqrs_id_derive(char buf[CQRS_ID_MAX], const char *prefix, const char *id, cqrs_error_t *err) {
  if (!buf || !prefix || !id) return cqrs_error_set(err, CQRS_EINVAL, "NULL buffer, prefix or id");
  size_t np = strlen(prefix);
  if (np + 34 >= CQRS_ID_MAX) return cqrs_error_set(err, CQRS_EINVAL, "id prefix '%.64s' is too long", prefix);
  size_t ni = strlen(id);
  if (np + 1 + ni < CQRS_ID_MAX) {
    memcpy(buf, prefix, np);
    buf[np] = ':';
    memcpy(buf + np + 1, id, ni + 1);
    return CQRS_OK;
  }
  uint64_t h[2];
  cqrs__hash128(prefix, id, h);
  snprintf(buf, CQRS_ID_MAX, "%s#%016llx%016llx", prefix, (unsigned long long)h[0], (unsigned long long)h[1]);
  return CQRS_OK;
}

static cqrs_log_cb log_cb;
static void *log_data;

void cqrs_log_set_handler(cqrs_log_cb cb, void *data) {
  log_cb = cb;
  log_data = data;
}

void cqrs_log(cqrs_log_level_t level, const char *domain, const char *fmt, ...) {
  if (!fmt) return;
  if (!log_cb && level > CQRS_LOG_WARNING) return;
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (log_cb) {
    log_cb(level, domain ? domain : "", msg, log_data);
  } else {
    fprintf(stderr, "cqrs %s: %s\n", domain ? domain : "", msg);
  }
}

#ifndef CQRS_VERSION_STRING
#define CQRS_VERSION_STRING "0.0.0"
#define CQRS_VERSION_HEX 0
#endif
const char *cqrs_version(void) { return CQRS_VERSION_STRING; }
unsigned cqrs_version_hex(void) { return CQRS_VERSION_HEX; }
