/* cqrs_forget's command (forget.c), which every dispatcher handles. */
#ifndef CQRS_FORGET_PRIVATE_H
#define CQRS_FORGET_PRIVATE_H

#include "runtime/runtime-private.h"

/* Registers the handler of the framework's cqrs.forget on `rt`'s command side. */
cqrs_code_t cqrs__forget_start(cqrs__runtime_t *rt, cqrs_error_t *err);

#endif
