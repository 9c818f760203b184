/* libcqrs: the registry of types and upcasters. */
#ifndef CQRS_REGISTRY_H
#define CQRS_REGISTRY_H

#include "cqrs/aggregate.h"
#include "cqrs/command.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Turns a payload of schema version `from` into version `from + 1`.
 * `out` is initialised by the caller. `in` is well-formed BSON whose strings
 * are valid UTF-8 (a corrupt stored payload never reaches an upcaster). */
typedef cqrs_code_t (*cqrs_upcast_cb)(const bson_t *in, bson_t *out, cqrs_error_t *err);
/* The 0.1 name, removed in 0.3. */
typedef cqrs_upcast_cb cqrs_upcast_fn CQRS_DEPRECATED("use cqrs_upcast_cb");

/* Creates a registry into *out, empty but for the framework's own
 * cqrs_forgotten_event_type (cqrs/personal.h). Register every type before sharing it
 * between threads: reads are then lock-free. Free with cqrs_registry_destroy.
 * NULL `out`: CQRS_EINVAL; CQRS_ENOMEM; on error *out is NULL. `err` may be
 * NULL. */
CQRS_EXPORT cqrs_code_t cqrs_registry_new(cqrs_registry_t **out, cqrs_error_t *err);
CQRS_EXPORT void cqrs_registry_destroy(cqrs_registry_t *reg);

/* Register a type (borrowed: descriptors are static). A second type of the
 * same name is CQRS_EDUPLICATE; a descriptor missing its name, size or
 * fields, or whose field table (payload or snapshot) cqrs_fields_check
 * refuses, such as a range without bounds, is CQRS_EINVAL. Command type
 * names starting "cqrs." are the framework's: CQRS_EINVAL. */
CQRS_EXPORT cqrs_code_t cqrs_registry_add_command(cqrs_registry_t *reg, const cqrs_command_type_t *type,
                                                  cqrs_error_t *err);
CQRS_EXPORT cqrs_code_t cqrs_registry_add_event(cqrs_registry_t *reg, const cqrs_event_type_t *type,
                                                cqrs_error_t *err);
CQRS_EXPORT cqrs_code_t cqrs_registry_add_aggregate(cqrs_registry_t *reg, const cqrs_aggregate_type_t *type,
                                                    cqrs_error_t *err);

/* Registers the upcaster from schema version `from` of event type `name`. */
CQRS_EXPORT cqrs_code_t cqrs_registry_add_upcaster(cqrs_registry_t *reg, const char *name, uint32_t from,
                                                   cqrs_upcast_cb fn, cqrs_error_t *err);

/* Look-ups by name; NULL when unknown. */
CQRS_EXPORT const cqrs_command_type_t *cqrs_registry_command(const cqrs_registry_t *reg, const char *name);
CQRS_EXPORT const cqrs_event_type_t *cqrs_registry_event(const cqrs_registry_t *reg, const char *name);
CQRS_EXPORT const cqrs_aggregate_type_t *cqrs_registry_aggregate(const cqrs_registry_t *reg, const char *name);

#ifdef __cplusplus
}
#endif
#endif
