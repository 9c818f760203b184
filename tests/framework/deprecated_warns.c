/* Built by test_deprecated_warns with -Werror=deprecated-declarations: the
 * build must fail, and its message name the new name. */
#include <cqrs/cqrs.h>

int main(void) {
  cqrs_checkpoint_store_t *cp = NULL;
  return cqrs_memory_checkpoints_new(&cp, NULL) == CQRS_OK;
}
