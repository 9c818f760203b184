/* Upcasting alone: the first byte picks the stored schema version (0 to 4,
 * 4 being newer than known), the rest is the stored payload of fz.done. */
#include <string.h>

#include <cqrs/backend.h>

#include "fuzz_types.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  bson_t doc;
  if (!bson_init_static(&doc, data + 1, size - 1)) return 0;
  const cqrs_event_type_t *type = NULL;
  void *payload = NULL;
  cqrs_error_t err;
  cqrs_code_t rc = cqrs_registry_decode_payload(fz_registry(), "fz.done", data[0] % 5, &doc, &type, &payload, &err);
  if (rc) {
    if (payload) FZ_FAIL("a failed decode left a payload");
    return 0;
  }
  if (type != &fz_done) FZ_FAIL("decoded as another type");
  fz_check_payload(payload);
  cqrs_payload_free(payload);
  return 0;
}
