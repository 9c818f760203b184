/* What every lease store must do (memory, MongoDB): included by the tests
 * of each, after cmocka. */
#ifndef TEST_LEASE_CONFORMANCE_H
#define TEST_LEASE_CONFORMANCE_H

#include <cqrs/cqrs.h>
#include <string.h>
#include <uv.h>

/* A fresh store with no lease in it. */
typedef cqrs_leases_t *(*lease_factory_fn)(void *data);

static void lease_conformance(lease_factory_fn make, void *data) {
  cqrs_leases_t *l = make(data);
  cqrs_error_t err;
  int64_t a = -1, b = -1, c = -1;
  assert_int_equal(cqrs_leases_acquire(l, "proj", "a", 10000, &a, &err), CQRS_OK);
  assert_true(a > 0);
  assert_int_equal(cqrs_leases_acquire(l, "proj", "b", 10000, &b, &err), CQRS_OK);
  assert_int_equal(b, 0); /* a holds it */
  assert_int_equal(cqrs_leases_renew(l, "proj", "a", a, 10000, &err), CQRS_OK);
  assert_int_equal(cqrs_leases_renew(l, "proj", "b", a, 10000, &err), CQRS_ECONFLICT);
  assert_int_equal(cqrs_leases_renew(l, "proj", "a", a + 1, 10000, &err), CQRS_ECONFLICT);
  /* Another name is another lease. */
  assert_int_equal(cqrs_leases_acquire(l, "other", "b", 10000, &c, &err), CQRS_OK);
  assert_true(c > 0);
  /* Released (by its holder only): b takes it, with a higher token; a's is dead. */
  assert_int_equal(cqrs_leases_release(l, "proj", "b", a, &err), CQRS_OK);
  assert_int_equal(cqrs_leases_acquire(l, "proj", "b", 10000, &b, &err), CQRS_OK);
  assert_int_equal(b, 0);
  assert_int_equal(cqrs_leases_release(l, "proj", "a", a, &err), CQRS_OK);
  assert_int_equal(cqrs_leases_acquire(l, "proj", "b", 50, &b, &err), CQRS_OK);
  assert_true(b > a);
  assert_int_equal(cqrs_leases_renew(l, "proj", "a", a, 10000, &err), CQRS_ECONFLICT);
  /* Expired: a takes it back, and b can renew no more. */
  uv_sleep(100);
  assert_int_equal(cqrs_leases_acquire(l, "proj", "a", 10000, &a, &err), CQRS_OK);
  assert_true(a > b);
  assert_int_equal(cqrs_leases_renew(l, "proj", "b", b, 10000, &err), CQRS_ECONFLICT);
  /* The holder acquiring again gets a new token. */
  int64_t again;
  assert_int_equal(cqrs_leases_acquire(l, "proj", "a", 10000, &again, &err), CQRS_OK);
  assert_true(again > a);
  assert_int_equal(cqrs_leases_renew(l, "proj", "a", again, 10000, &err), CQRS_OK);
  /* Bad arguments. */
  assert_int_equal(cqrs_leases_acquire(l, "", "a", 10000, &a, &err), CQRS_EINVAL);
  assert_int_equal(a, 0);
  assert_int_equal(cqrs_leases_acquire(l, "proj", NULL, 10000, &a, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_leases_acquire(l, "proj", "a", 0, &a, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_leases_acquire(l, "proj", "a", 10, NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_leases_acquire(NULL, "proj", "a", 10, &a, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_leases_renew(l, "proj", "a", 0, 10, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_leases_release(l, "proj", "a", -1, &err), CQRS_EINVAL);
  char long_name[CQRS_NAME_MAX + 1];
  memset(long_name, 'x', CQRS_NAME_MAX);
  long_name[CQRS_NAME_MAX] = '\0';
  assert_int_equal(cqrs_leases_acquire(l, long_name, "a", 10, &a, &err), CQRS_ETOO_LARGE);
  cqrs_leases_destroy(l);
}

/* Fenced checkpoint writes, on checkpoints with nothing saved under "p". */
static void fence_conformance(cqrs_checkpoints_t *cp) {
  cqrs_error_t err;
  int64_t pos;
  assert_int_equal(cqrs_checkpoints_save_fenced(cp, "p", 10, 2, &err), CQRS_OK);
  assert_int_equal(cqrs_checkpoints_save_fenced(cp, "p", 20, 1, &err), CQRS_ECONFLICT);
  assert_non_null(strstr(err.message, "fenced off"));
  assert_int_equal(cqrs_checkpoints_load(cp, "p", &pos, &err), CQRS_OK);
  assert_int_equal(pos, 10);
  assert_int_equal(cqrs_checkpoints_save_fenced(cp, "p", 30, 2, &err), CQRS_OK);
  assert_int_equal(cqrs_checkpoints_save_fenced(cp, "p", 40, 3, &err), CQRS_OK);
  assert_int_equal(cqrs_checkpoints_save_fenced(cp, "p", 50, 2, &err), CQRS_ECONFLICT);
  /* A plain save (an operator's reset) is not fenced, and keeps the fence. */
  assert_int_equal(cqrs_checkpoints_save(cp, "p", 0, &err), CQRS_OK);
  assert_int_equal(cqrs_checkpoints_load(cp, "p", &pos, &err), CQRS_OK);
  assert_int_equal(pos, 0);
  assert_int_equal(cqrs_checkpoints_save_fenced(cp, "p", 5, 2, &err), CQRS_ECONFLICT);
  assert_int_equal(cqrs_checkpoints_save_fenced(cp, "p", 5, 0, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_checkpoints_save_fenced(cp, "p", -1, 4, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_checkpoints_save_fenced(NULL, "p", 5, 4, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_checkpoints_save_fenced(cp, "", 5, 4, &err), CQRS_EINVAL);
}

#endif
