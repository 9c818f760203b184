/* Stands in for libuv's uv_queue_work: an executable's definition comes
 * first in the dynamic lookup of libcqrs's calls; this one forwards to
 * libuv's unless told to fail (work_fault.h). */
#define _GNU_SOURCE
#include "work_fault.h"

#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

static _Atomic unsigned long calls, skip, failing;

void work_fault_fail(unsigned long s, unsigned long n) {
  atomic_store(&skip, s);
  atomic_store(&failing, n);
}

unsigned long work_fault_calls(void) { return atomic_load(&calls); }

typedef int (*queue_work_fn)(uv_loop_t *, uv_work_t *, uv_work_cb, uv_after_work_cb);

int uv_queue_work(uv_loop_t *loop, uv_work_t *req, uv_work_cb work_cb, uv_after_work_cb after_work_cb) {
  static _Atomic(queue_work_fn) real;
  queue_work_fn fn = atomic_load(&real);
  if (!fn) {
    *(void **)&fn = dlsym(RTLD_NEXT, "uv_queue_work");
    if (!fn) {
      fprintf(stderr, "work_fault: libuv's uv_queue_work not found: %s\n", dlerror());
      abort();
    }
    atomic_store(&real, fn);
  }
  atomic_fetch_add(&calls, 1);
  unsigned long s = atomic_load(&skip);
  while (s > 0 && !atomic_compare_exchange_weak(&skip, &s, s - 1)) {
  }
  if (s == 0) {
    unsigned long f = atomic_load(&failing);
    while (f > 0 && !atomic_compare_exchange_weak(&failing, &f, f - 1)) {
    }
    if (f > 0) return UV_ENOMEM;
  }
  return fn(loop, req, work_cb, after_work_cb);
}
