/* The payload decoder: any bytes as a BSON document through a field table
 * with every kind. A payload that decodes must hold valid strings, encode,
 * and decode again to the same struct; the UTF-8 walker must agree. */
#include <string.h>

#include "fuzz_types.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  bson_t doc;
  if (!bson_init_static(&doc, data, size)) return 0;
  fz_payload_t p, q;
  memset(&p, 0, sizeof p);
  memset(&q, 0, sizeof q);
  cqrs_error_t err;
  bool all_utf8 = cqrs_bson_check_utf8(&doc, &err) == CQRS_OK;
  if (cqrs_fields_decode(fz_payload_fields, &doc, &p, &err) != CQRS_OK) return 0;
  fz_check_payload(&p);
  (void)cqrs_fields_validate(fz_payload_fields, &p, &err);
  bson_t out = BSON_INITIALIZER;
  if (cqrs_fields_encode(fz_payload_fields, &p, &out, &err)) FZ_FAIL("encode: %s", err.message);
  if (cqrs_bson_check_utf8(&out, &err)) FZ_FAIL("encoded payload: %s", err.message);
  if (cqrs_fields_decode(fz_payload_fields, &out, &q, &err)) FZ_FAIL("decode of the encoding: %s", err.message);
  if (memcmp(&p, &q, sizeof p)) FZ_FAIL("round trip changed the payload");
  bson_destroy(&out);
  (void)all_utf8;
  return 0;
}
