/* libcqrs: command types and commands. */
#ifndef CQRS_COMMAND_H
#define CQRS_COMMAND_H

#include <bson/bson.h>

#include "cqrs/fields.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A command type, declared once as a static const. The payload is a plain
 * struct: `fields` gives its codec and technical validation, `validate` adds
 * checks the table cannot express (technical only: business rules belong to
 * the domain), `payload_free` releases what a payload owns (rarely needed). */
typedef struct cqrs_command_type {
  const char *name; /* stable, e.g. "account.deposit" */
  size_t payload_size;
  const cqrs_field_t *fields;
  cqrs_code_t (*validate)(const void *payload, cqrs_error_t *err); /* optional */
  void (*payload_free)(void *payload);                             /* optional */
  /* Optional natural id: writes the command id derived from the payload
   * (e.g. "invoice.issue:inv_123") into buf[CQRS_ID_MAX], so that the same
   * request sent twice commits once. Without it ids are fresh. */
  cqrs_code_t (*make_id)(const void *payload, char *buf, size_t cap, cqrs_error_t *err);
  /* Optional: the id of the aggregate the command changes, borrowed from the
   * payload, so that a dispatcher with several loops runs every command of
   * that aggregate on the one loop owning it. NULL, or a NULL return: the
   * home loop. Any thread; must not fail. */
  const char *(*aggregate_id)(const void *payload);
  /* Room for what later versions add without changing the size (docs/versioning.md): zero. */
  void *reserved[4];
} cqrs_command_type_t;

typedef struct cqrs_command cqrs_command_t;
typedef struct cqrs_registry cqrs_registry_t;

/* Builds a command: validates `payload`, copies it (payload_size bytes, so a
 * payload owning pointers hands them over), gives the command a fresh id (or
 * the type's natural id) and uses it as correlation id. On error nothing is allocated and *out is NULL.
 * Free with cqrs_command_destroy unless handed to cqrs_dispatcher_send. */
CQRS_EXPORT cqrs_code_t cqrs_command_new(const cqrs_command_type_t *type, const void *payload,
                                         cqrs_command_t **out, cqrs_error_t *err);

/* Decodes {type, id?, correlationId?, data} through the registry's command
 * types: unknown type is CQRS_EUNKNOWN_TYPE, malformed data or any string
 * that is not valid UTF-8 CQRS_ECODEC, invalid data CQRS_EINVALID_COMMAND. */
CQRS_EXPORT cqrs_code_t cqrs_command_from_bson(const cqrs_registry_t *reg, const bson_t *doc,
                                               cqrs_command_t **out, cqrs_error_t *err);

/* Encodes the command as {type, id, correlationId, data} into `out`. */
CQRS_EXPORT cqrs_code_t cqrs_command_to_bson(const cqrs_command_t *cmd, bson_t *out, cqrs_error_t *err);

/* Replaces the id (e.g. a client-chosen one, for idempotent retries) or the
 * correlation id. Strings are copied; empty, oversized or not UTF-8 ones are
 * refused. */
CQRS_EXPORT cqrs_code_t cqrs_command_set_id(cqrs_command_t *cmd, const char *id, cqrs_error_t *err);
CQRS_EXPORT cqrs_code_t cqrs_command_set_correlation_id(cqrs_command_t *cmd, const char *id, cqrs_error_t *err);

CQRS_EXPORT const cqrs_command_type_t *cqrs_command_type(const cqrs_command_t *cmd);
CQRS_EXPORT const char *cqrs_command_id(const cqrs_command_t *cmd);
CQRS_EXPORT const char *cqrs_command_correlation_id(const cqrs_command_t *cmd);
/* The payload struct, owned by the command. */
CQRS_EXPORT const void *cqrs_command_payload(const cqrs_command_t *cmd);

/* Frees the command and its payload. NULL does nothing. */
CQRS_EXPORT void cqrs_command_destroy(cqrs_command_t *cmd);

#ifdef __cplusplus
}
#endif
#endif
