/* The process managers' id scenarios (tests/process_ids.c) on the memory store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cqrs/cqrs.h>

#include "process_ids.h"

static cqrs_store_t *create(const cqrs_registry_t *reg, void *data) {
  (void)reg, (void)data;
  cqrs_store_t *s = NULL;
  cqrs_memory_store_new(&s, NULL);
  return s;
}

static void dispose(cqrs_store_t *s, void *data) {
  (void)data;
  cqrs_store_destroy(s);
}

int main(void) {
  cqrs_store_factory_t f = {.name = "process ids (memory store)", .create = create, .dispose = dispose};
  return process_ids_run(&f);
}
