/* Fault injection for libuv's thread pool: a test linking work_fault.c
 * makes uv_queue_work fail, as libcqrs sees it, the way the allocation hook
 * makes an allocation fail. */
#ifndef TEST_WORK_FAULT_H
#define TEST_WORK_FAULT_H

/* Lets the next `skip` calls of uv_queue_work through, then fails `n`
 * with UV_ENOMEM (the work never runs, its callbacks are never called). */
void work_fault_fail(unsigned long skip, unsigned long n);
/* Calls of uv_queue_work so far, failed or not. Any thread. */
unsigned long work_fault_calls(void);

#endif
