#include "base/cqrs-private.h"

static cqrs_code_t validate_payload(const cqrs_command_type_t *type, const void *payload, cqrs_error_t *err) {
  cqrs_error_t e;
  cqrs_error_clear(&e);
  cqrs_code_t rc = cqrs_fields_validate(type->fields, payload, &e);
  if (!rc && type->validate) rc = type->validate(payload, &e);
  if (!rc) return CQRS_OK;
  return cqrs_error_set(err, CQRS_EINVALID_COMMAND, "%.64s: %.180s", type->name,
                        e.message[0] ? e.message : cqrs_strerror(rc));
}

static cqrs_code_t check_type(const cqrs_command_type_t *type, cqrs_error_t *err) {
  if (!type || !type->name || !*type->name || !type->fields || !type->payload_size)
    return cqrs_error_set(err, CQRS_EINVAL, "command type lacks a name, a field table or a payload size");
  return CQRS_OK;
}

static cqrs_code_t command_alloc(const cqrs_command_type_t *type, cqrs_command_t **out, cqrs_error_t *err) {
  cqrs_command_t *cmd = cqrs__malloc(sizeof *cmd + type->payload_size);
  if (!cmd) return cqrs_error_set(err, CQRS_ENOMEM, "cannot allocate a command");
  cmd->type = type;
  cmd->internal = false;
  cmd->settle = NULL;
  cqrs_new_id(cmd->id);
  memcpy(cmd->correlation_id, cmd->id, sizeof cmd->correlation_id);
  *out = cmd;
  return CQRS_OK;
}

cqrs_code_t cqrs_command_new(const cqrs_command_type_t *type, const void *payload, cqrs_command_t **out,
                             cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  cqrs_code_t rc = check_type(type, err);
  if (rc) return rc;
  if (!payload) return cqrs_error_set(err, CQRS_EINVALID_COMMAND, "%s: payload is NULL", type->name);
  if ((rc = validate_payload(type, payload, err))) return rc;
  char natural[CQRS_ID_MAX];
  if (type->make_id) {
    cqrs_error_t e;
    cqrs_error_clear(&e);
    natural[0] = '\0';
    if (type->make_id(payload, natural, sizeof natural, &e) || cqrs__check_str(natural, sizeof natural, "id", &e))
      return cqrs_error_set(err, CQRS_EINVALID_COMMAND, "%.64s: no id: %.160s", type->name, e.message);
  }
  if ((rc = command_alloc(type, out, err))) return rc;
  memcpy((*out)->payload, payload, type->payload_size);
  if (type->make_id) {
    memcpy((*out)->id, natural, strlen(natural) + 1);
    memcpy((*out)->correlation_id, natural, strlen(natural) + 1);
  }
  return CQRS_OK;
}

cqrs_code_t cqrs_command_from_bson(const cqrs_registry_t *reg, const bson_t *doc, cqrs_command_t **out,
                                   cqrs_error_t *err) {
  if (!out) return cqrs_error_set(err, CQRS_EINVAL, "out is NULL");
  *out = NULL;
  if (!reg || !doc) return cqrs_error_set(err, CQRS_EINVAL, "NULL registry or document");
  cqrs_error_t e;
  if (cqrs_bson_check_utf8(doc, &e)) return cqrs_error_set(err, CQRS_ECODEC, "corrupt command document: %.200s", e.message);
  bson_iter_t it;
  if (!bson_iter_init_find(&it, doc, "type") || !BSON_ITER_HOLDS_UTF8(&it))
    return cqrs_error_set(err, CQRS_ECODEC, "command document lacks a string 'type'");
  const char *name = bson_iter_utf8(&it, NULL);
  const cqrs_command_type_t *type = cqrs_registry_command(reg, name);
  if (!type) return cqrs_error_set(err, CQRS_EUNKNOWN_TYPE, "unknown command type '%.64s'", name);
  if (!bson_iter_init_find(&it, doc, "data") || !BSON_ITER_HOLDS_DOCUMENT(&it))
    return cqrs_error_set(err, CQRS_ECODEC, "command document lacks a document 'data'");
  uint32_t len;
  const uint8_t *raw;
  bson_iter_document(&it, &len, &raw);
  bson_t data;
  if (!bson_init_static(&data, raw, len)) return cqrs_error_set(err, CQRS_ECODEC, "malformed 'data'");
  cqrs_command_t *cmd = NULL;
  cqrs_code_t rc = command_alloc(type, &cmd, err);
  if (rc) return rc;
  memset(cmd->payload, 0, type->payload_size);
  if ((rc = cqrs_fields_decode(type->fields, &data, cmd->payload, err)) ||
      (rc = validate_payload(type, cmd->payload, err)))
    goto fail;
  if (bson_iter_init_find(&it, doc, "id")) {
    if (!BSON_ITER_HOLDS_UTF8(&it)) {
      rc = cqrs_error_set(err, CQRS_ECODEC, "command 'id' must be a string");
      goto fail;
    }
    if ((rc = cqrs_command_set_id(cmd, bson_iter_utf8(&it, NULL), err))) goto fail;
  }
  if (bson_iter_init_find(&it, doc, "correlationId")) {
    if (!BSON_ITER_HOLDS_UTF8(&it)) {
      rc = cqrs_error_set(err, CQRS_ECODEC, "command 'correlationId' must be a string");
      goto fail;
    }
    if ((rc = cqrs_command_set_correlation_id(cmd, bson_iter_utf8(&it, NULL), err))) goto fail;
  }
  *out = cmd;
  return CQRS_OK;
fail:
  cqrs__free(cmd); /* the payload came from BSON: it owns nothing */
  return rc;
}

cqrs_code_t cqrs_command_to_bson(const cqrs_command_t *cmd, bson_t *out, cqrs_error_t *err) {
  if (!cmd || !out) return cqrs_error_set(err, CQRS_EINVAL, "NULL command or output");
  if (!BSON_APPEND_UTF8(out, "type", cmd->type->name) || !BSON_APPEND_UTF8(out, "id", cmd->id) ||
      !BSON_APPEND_UTF8(out, "correlationId", cmd->correlation_id))
    return cqrs_error_set(err, CQRS_ETOO_LARGE, "command document too large");
  bson_t data;
  if (!BSON_APPEND_DOCUMENT_BEGIN(out, "data", &data)) return cqrs_error_set(err, CQRS_ETOO_LARGE, "too large");
  cqrs_code_t rc = cqrs_fields_encode(cmd->type->fields, cmd->payload, &data, err);
  if (!bson_append_document_end(out, &data) && !rc) rc = cqrs_error_set(err, CQRS_ETOO_LARGE, "too large");
  return rc;
}

static cqrs_code_t set_id(char *dst, const char *id, const char *what, cqrs_error_t *err) {
  cqrs_code_t rc = cqrs__check_str(id, CQRS_ID_MAX, what, err);
  if (rc) return rc;
  memcpy(dst, id, strlen(id) + 1);
  return CQRS_OK;
}

cqrs_code_t cqrs_command_set_id(cqrs_command_t *cmd, const char *id, cqrs_error_t *err) {
  if (!cmd) return cqrs_error_set(err, CQRS_EINVAL, "command is NULL");
  bool same = !strcmp(cmd->id, cmd->correlation_id);
  cqrs_code_t rc = set_id(cmd->id, id, "command id", err);
  if (!rc && same) memcpy(cmd->correlation_id, cmd->id, sizeof cmd->id);
  return rc;
}

cqrs_code_t cqrs_command_set_correlation_id(cqrs_command_t *cmd, const char *id, cqrs_error_t *err) {
  if (!cmd) return cqrs_error_set(err, CQRS_EINVAL, "command is NULL");
  return set_id(cmd->correlation_id, id, "correlation id", err);
}

const cqrs_command_type_t *cqrs_command_type(const cqrs_command_t *cmd) { return cmd ? cmd->type : NULL; }
const char *cqrs_command_id(const cqrs_command_t *cmd) { return cmd ? cmd->id : NULL; }
const char *cqrs_command_correlation_id(const cqrs_command_t *cmd) { return cmd ? cmd->correlation_id : NULL; }
const void *cqrs_command_payload(const cqrs_command_t *cmd) { return cmd ? cmd->payload : NULL; }

void cqrs_command_destroy(cqrs_command_t *cmd) {
  if (!cmd) return;
  if (cmd->type->payload_free) cmd->type->payload_free(cmd->payload);
  cqrs__free(cmd);
}
