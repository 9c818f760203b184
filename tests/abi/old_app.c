/* An application of libcqrs 0.1.0 (its API: cqrs_registry_new took no
 * argument and returned the registry). Built against 0.1.0, it must not
 * load 0.2's library by accident: run against 0.2 only, the loader refuses
 * it (another soname), where before it called the new ABI and crashed. */
#include <cqrs/cqrs.h>
#include <stdio.h>

int main(void) {
  cqrs_registry_t *reg = cqrs_registry_new();
  if (!reg) return 1;
  cqrs_registry_destroy(reg);
  puts("old_app: ran");
  return 0;
}
