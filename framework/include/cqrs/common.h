/* libcqrs: shared definitions: export macro, limits, allocation hook, errors. */
#ifndef CQRS_COMMON_H
#define CQRS_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(CQRS_BUILDING) && defined(__GNUC__)
#define CQRS_EXPORT __attribute__((visibility("default")))
#else
#define CQRS_EXPORT
#endif

#if defined(__GNUC__)
#define CQRS_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define CQRS_PRINTF(f, a)
#endif

/* An old name, kept for one minor version: the compiler says what to use
 * instead (docs/versioning.md). */
#if defined(__GNUC__)
#define CQRS_DEPRECATED(msg) __attribute__((deprecated(msg)))
#else
#define CQRS_DEPRECATED(msg)
#endif

/* Bounded lengths, terminating NUL included. */
#define CQRS_ID_MAX 64      /* aggregate ids, command ids, correlation ids */
#define CQRS_NAME_MAX 64    /* type names, reasons, subscriber names */
#define CQRS_MESSAGE_MAX 256
#define CQRS_EVENT_ID_LEN 25 /* 24 hex characters of an ObjectId + NUL */

/* Every fallible call returns one of these; CQRS_OK is 0. */
typedef enum cqrs_code {
  CQRS_OK = 0,
  CQRS_EREJECTED,        /* business failure: see cqrs_error_t.name for the reason */
  CQRS_EINVAL,           /* invalid argument (NULL, out of range) */
  CQRS_EINVALID_COMMAND, /* a command failed technical validation */
  CQRS_ENO_HANDLER,      /* no handler registered for a command type */
  CQRS_EDUPLICATE,       /* a second registration of the same name */
  CQRS_EUNKNOWN_TYPE,    /* a type name nobody registered */
  CQRS_ECONFLICT,        /* optimistic concurrency: the stream moved */
  CQRS_ESTORE,           /* the store failed or is unavailable */
  CQRS_ECODEC,           /* malformed or mistyped BSON */
  CQRS_ENOMEM,           /* allocation failed */
  CQRS_EHANDLER,         /* a handler failed (not a business rejection) */
  CQRS_ECLOSED,          /* the object is closing or closed */
  CQRS_ENOT_FOUND,       /* no such document, snapshot or query */
  CQRS_ETOO_LARGE,       /* a string, document or store limit exceeded */
  CQRS_ESTATE,           /* call not allowed in the current state */
  CQRS_ETIMEOUT,         /* a wait ran out of time */
  CQRS_CODE_COUNT
} cqrs_code_t;

/* Where an error comes from. */
typedef enum cqrs_domain {
  CQRS_DOMAIN_NONE = 0, /* no error */
  CQRS_DOMAIN_FRAMEWORK,
  CQRS_DOMAIN_STORE,
  CQRS_DOMAIN_BUSINESS
} cqrs_domain_t;

/* One error shape end to end. `name` is a stable identifier: the code's name
 * ("conflict") for framework and store errors ("store_failed" for a store
 * error that retrying cannot cure), the business reason
 * ("account.not_enough_money") for rejections. */
typedef struct cqrs_error {
  cqrs_code_t code;
  cqrs_domain_t domain;
  char name[CQRS_NAME_MAX];
  char message[CQRS_MESSAGE_MAX];
  /* What the layer underneath reported (for MongoDB: the driver's or the
   * server's bson_error_t domain and code); 0 and 0 when nothing did. */
  uint32_t cause_domain;
  uint32_t cause_code;
  /* Trying again later may succeed (network, failover, timeout). See
   * cqrs_error_transient. */
  bool transient;
} cqrs_error_t;

/* Stable name of a code ("conflict", "invalid_command", ...); never NULL. */
CQRS_EXPORT const char *cqrs_code_name(cqrs_code_t code);

/* Human-readable text of a code; never NULL. */
CQRS_EXPORT const char *cqrs_strerror(cqrs_code_t code);

/* Fills `err` (may be NULL) with a framework or store error and returns `code`.
 * The domain is STORE for CQRS_ESTORE, FRAMEWORK otherwise; no cause; the
 * error is transient for CQRS_ESTORE (a store that cannot say better is
 * presumed unavailable), permanent otherwise. */
CQRS_EXPORT cqrs_code_t cqrs_error_set(cqrs_error_t *err, cqrs_code_t code, const char *fmt, ...)
    CQRS_PRINTF(3, 4);

/* Fills `err` (may be NULL) with a business rejection whose stable reason is
 * `reason` (e.g. "account.not_enough_money"); returns CQRS_EREJECTED. */
CQRS_EXPORT cqrs_code_t cqrs_reject(cqrs_error_t *err, const char *reason, const char *fmt, ...)
    CQRS_PRINTF(3, 4);

/* Records the cause of a store error already set in `err` (may be NULL) and
 * whether retrying may cure it; a permanent CQRS_ESTORE is named
 * "store_failed". */
CQRS_EXPORT void cqrs_error_set_cause(cqrs_error_t *err, uint32_t cause_domain, uint32_t cause_code,
                                      bool transient);

/* True for a CQRS_ESTORE error that retrying may cure: the event bus retries
 * those without end, and dead-letters every other failure after its
 * attempts. NULL: false. */
CQRS_EXPORT bool cqrs_error_transient(const cqrs_error_t *err);

/* Resets `err` to "no error". */
CQRS_EXPORT void cqrs_error_clear(cqrs_error_t *err);

/* Allocation hook: every allocation of libcqrs goes through these, so tests can
 * fail the N-th one. Pass NULLs to restore malloc/realloc/free. Not thread-safe:
 * set it before creating any object. */
typedef struct cqrs_allocator {
  void *(*malloc_fn)(size_t size);
  void *(*realloc_fn)(void *ptr, size_t size);
  void (*free_fn)(void *ptr);
} cqrs_allocator_t;
CQRS_EXPORT void cqrs_set_allocator(const cqrs_allocator_t *allocator);

/* The library does not print: what it has to say goes to a log handler.
 * The default writes "cqrs <domain>: <message>" lines to stderr for warnings
 * and errors. Set it before creating any object; `cb` NULL restores the
 * default. Handlers may be called from any thread (pool threads too). */
typedef enum cqrs_log_level {
  CQRS_LOG_ERROR = 0, /* something was lost or stopped for good */
  CQRS_LOG_WARNING,   /* a failure that is retried or worked around */
  CQRS_LOG_INFO,
  CQRS_LOG_DEBUG
} cqrs_log_level_t;
typedef void (*cqrs_log_cb)(cqrs_log_level_t level, const char *domain, const char *message, void *data);
CQRS_EXPORT void cqrs_log_set_handler(cqrs_log_cb cb, void *data);
/* Logs through the handler; for back ends ("mongo") and applications. */
CQRS_EXPORT void cqrs_log(cqrs_log_level_t level, const char *domain, const char *fmt, ...) CQRS_PRINTF(3, 4);

/* The library's version, "MAJOR.MINOR.PATCH", and as 0xMMmmpp. */
CQRS_EXPORT const char *cqrs_version(void);
CQRS_EXPORT unsigned cqrs_version_hex(void);

/* Milliseconds since the Unix epoch, UTC. */
CQRS_EXPORT int64_t cqrs_now_ms(void);

/* Writes a fresh unique id (24 hex characters) into buf[CQRS_EVENT_ID_LEN]. */
CQRS_EXPORT void cqrs_new_id(char buf[CQRS_EVENT_ID_LEN]);

/* Writes "<prefix>:<id>" into buf[CQRS_ID_MAX], or, when that does not fit,
 * "<prefix>#" and a 128-bit hash of both in hex: distinct inputs give
 * distinct ids, never a cut one (a command id derived from a natural id,
 * docs/architecture.md). CQRS_EINVAL for NULL or an over-long prefix. */
CQRS_EXPORT cqrs_code_t cqrs_id_derive(char buf[CQRS_ID_MAX], const char *prefix, const char *id,
                                       cqrs_error_t *err);

#ifdef __cplusplus
}
#endif
#endif
