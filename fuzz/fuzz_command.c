/* The command document (cqrs_command_from_bson). A command that decodes is
 * valid (its payload passes validation, its ids are UTF-8) and survives a
 * round trip through cqrs_command_to_bson unchanged. */
#include <string.h>

#include "fuzz_types.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  bson_t doc;
  if (!bson_init_static(&doc, data, size)) return 0;
  const cqrs_registry_t *reg = fz_registry();
  cqrs_command_t *cmd = NULL, *again = NULL;
  cqrs_error_t err;
  if (cqrs_command_from_bson(reg, &doc, &cmd, &err) != CQRS_OK) {
    if (cmd) FZ_FAIL("a failed decode left a command");
    return 0;
  }
  fz_check_string("id", cqrs_command_id(cmd), CQRS_ID_MAX);
  fz_check_string("correlation id", cqrs_command_correlation_id(cmd), CQRS_ID_MAX);
  const fz_payload_t *p = cqrs_command_payload(cmd);
  fz_check_payload(p);
  if (cqrs_fields_validate(fz_payload_fields, p, &err)) FZ_FAIL("decoded an invalid command: %s", err.message);
  bson_t out = BSON_INITIALIZER;
  if (cqrs_command_to_bson(cmd, &out, &err)) FZ_FAIL("encode: %s", err.message);
  if (cqrs_command_from_bson(reg, &out, &again, &err)) FZ_FAIL("decode of the encoding: %s", err.message);
  if (strcmp(cqrs_command_id(cmd), cqrs_command_id(again)) ||
      strcmp(cqrs_command_correlation_id(cmd), cqrs_command_correlation_id(again)) ||
      memcmp(p, cqrs_command_payload(again), sizeof *p))
    FZ_FAIL("round trip changed the command");
  bson_destroy(&out);
  cqrs_command_destroy(again);
  cqrs_command_destroy(cmd);
  return 0;
}
