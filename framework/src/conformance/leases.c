/* The lease store suite: what cqrs_lease_ops_t promises, through the
 * checked calls of lease.h. Terms run out on the factory's clock: a manual
 * one is advanced; on the real one the suite waits, each wait far from the
 * bound it tests. */
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "conformance-private.h"

#define LONG_TTL 60000 /* a term that does not run out during a test */

static const cqrs_lease_store_factory_t *factory; /* the suite running */

static void *make(void) { return factory->create(factory->data); }

/* `ms` pass on the stores' clock. */
static void pass(uint64_t ms) {
  if (factory->clock) {
    assert_int_equal(cqrs_clock_advance(factory->clock, ms), CQRS_OK);
  } else {
    uv_sleep((unsigned)ms);
  }
}

static void unmake(void *obj) {
  if (factory->dispose) {
    factory->dispose(obj, factory->data);
  } else {
    cqrs_lease_store_destroy(obj);
  }
}

/* One holder at a time; every new term a higher token; only the holder
 * renews or releases, under its own token. */
static void test_holders_and_tokens(void **state) {
  cqrs_lease_store_t *l = *state;
  cqrs_error_t err;
  int64_t a = -1, b = -1, c = -1;
  assert_int_equal(cqrs_lease_store_acquire(l, "conformance.proj", "a", 10000, &a, &err), CQRS_OK);
  assert_true(a > 0);
  assert_int_equal(cqrs_lease_store_acquire(l, "conformance.proj", "b", 10000, &b, &err), CQRS_OK);
  assert_int_equal(b, 0); /* a holds it */
  assert_int_equal(cqrs_lease_store_renew(l, "conformance.proj", "a", a, 10000, &err), CQRS_OK);
  assert_int_equal(cqrs_lease_store_renew(l, "conformance.proj", "b", a, 10000, &err), CQRS_ECONFLICT);
  assert_int_equal(err.code, CQRS_ECONFLICT);
  assert_int_equal(cqrs_lease_store_renew(l, "conformance.proj", "a", a + 1, 10000, &err), CQRS_ECONFLICT);
  /* Another name is another lease. */
  assert_int_equal(cqrs_lease_store_acquire(l, "conformance.other", "b", 10000, &c, &err), CQRS_OK);
  assert_true(c > 0);
  /* Released (by its holder only): b takes it, with a higher token; a's is dead. */
  assert_int_equal(cqrs_lease_store_release(l, "conformance.proj", "b", a, &err), CQRS_OK);
  assert_int_equal(cqrs_lease_store_acquire(l, "conformance.proj", "b", 10000, &b, &err), CQRS_OK);
  assert_int_equal(b, 0);
  assert_int_equal(cqrs_lease_store_release(l, "conformance.proj", "a", a, &err), CQRS_OK);
  assert_int_equal(cqrs_lease_store_acquire(l, "conformance.proj", "b", 50, &b, &err), CQRS_OK);
  assert_true(b > a);
  assert_int_equal(cqrs_lease_store_renew(l, "conformance.proj", "a", a, 10000, &err), CQRS_ECONFLICT);
  /* Expired: a takes it back, and b can renew no more. */
  pass(100);
  assert_int_equal(cqrs_lease_store_acquire(l, "conformance.proj", "a", 10000, &a, &err), CQRS_OK);
  assert_true(a > b);
  assert_int_equal(cqrs_lease_store_renew(l, "conformance.proj", "b", b, 10000, &err), CQRS_ECONFLICT);
  /* The holder acquiring again gets a new token. */
  int64_t again;
  assert_int_equal(cqrs_lease_store_acquire(l, "conformance.proj", "a", 10000, &again, &err), CQRS_OK);
  assert_true(again > a);
  assert_int_equal(cqrs_lease_store_renew(l, "conformance.proj", "a", again, 10000, &err), CQRS_OK);
  /* Releasing what one does not hold changes nothing. */
  assert_int_equal(cqrs_lease_store_release(l, "conformance.none", "a", 1, &err), CQRS_OK);
  assert_int_equal(cqrs_lease_store_release(l, "conformance.other", "a", c, &err), CQRS_OK);
  assert_int_equal(cqrs_lease_store_renew(l, "conformance.other", "b", c, 10000, &err), CQRS_OK);
}

/* A renewal extends the term from when it is made. TTL_MS is long beside
 * each wait, so that a slow machine does not make the test wrong: the
 * renewal comes WAIT_MS after the acquisition, within the first term, and
 * the last check another WAIT_MS after it, within the second. */
#define TTL_MS 3000
#define WAIT_MS 1800
static void test_renewal_extends_the_term(void **state) {
  cqrs_lease_store_t *l = *state;
  cqrs_error_t err;
  int64_t a = 0, b = -1;
  assert_int_equal(cqrs_lease_store_acquire(l, "conformance.renewed", "a", TTL_MS, &a, &err), CQRS_OK);
  assert_true(a > 0);
  pass(WAIT_MS);
  if (cqrs_lease_store_renew(l, "conformance.renewed", "a", a, TTL_MS, &err)) fail_msg("renew: %s", err.message);
  pass(WAIT_MS); /* past the first term, within the second */
  assert_int_equal(cqrs_lease_store_acquire(l, "conformance.renewed", "b", TTL_MS, &b, &err), CQRS_OK);
  assert_int_equal(b, 0);
  assert_int_equal(cqrs_lease_store_renew(l, "conformance.renewed", "a", a, TTL_MS, &err), CQRS_OK);
}

typedef struct taker {
  cqrs_lease_store_t *l;
  char owner[16];
  int64_t token;
  cqrs_code_t rc;
  cqrs_error_t err;
} taker_t;

static void take(void *arg) {
  taker_t *t = arg;
  t->rc = cqrs_lease_store_acquire(t->l, "conformance.raced", t->owner, LONG_TTL, &t->token, &t->err);
}

/* Takers on several threads at once, for a free lease: one wins. */
static void test_takers_race(void **state) {
  cqrs_lease_store_t *l = *state;
  taker_t takers[CONF_THREADS];
  for (int i = 0; i < CONF_THREADS; i++) {
    takers[i] = (taker_t){.l = l, .token = -1};
    snprintf(takers[i].owner, sizeof takers[i].owner, "taker-%d", i);
  }
  cqrs__conf_race(take, takers, sizeof takers[0], CONF_THREADS);
  int winners = 0, winner = -1;
  for (int i = 0; i < CONF_THREADS; i++) {
    if (takers[i].rc) fail_msg("%s: %s", takers[i].owner, takers[i].err.message);
    if (takers[i].token > 0) winners++, winner = i;
  }
  assert_int_equal(winners, 1);
  cqrs_error_t err;
  assert_int_equal(
      cqrs_lease_store_renew(l, "conformance.raced", takers[winner].owner, takers[winner].token, LONG_TTL, &err),
      CQRS_OK);
  for (int i = 0; i < CONF_THREADS; i++) {
    if (i == winner) continue;
    assert_int_equal(
        cqrs_lease_store_renew(l, "conformance.raced", takers[i].owner, takers[winner].token, LONG_TTL, &err),
        CQRS_ECONFLICT);
  }
}

static void test_bad_arguments(void **state) {
  cqrs_lease_store_t *l = *state;
  cqrs_error_t err;
  int64_t a = -1;
  assert_int_equal(cqrs_lease_store_acquire(l, "", "a", 10000, &a, &err), CQRS_EINVAL);
  assert_int_equal(a, 0);
  assert_int_equal(cqrs_lease_store_acquire(l, "conformance.proj", NULL, 10000, &a, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_lease_store_acquire(l, "conformance.proj", "a", 0, &a, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_lease_store_acquire(l, "conformance.proj", "a", 10, NULL, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_lease_store_acquire(NULL, "conformance.proj", "a", 10, &a, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_lease_store_renew(l, "conformance.proj", "a", 0, 10, &err), CQRS_EINVAL);
  assert_int_equal(cqrs_lease_store_release(l, "conformance.proj", "a", -1, &err), CQRS_EINVAL);
  char long_name[CQRS_NAME_MAX + 1];
  memset(long_name, 'x', CQRS_NAME_MAX);
  long_name[CQRS_NAME_MAX] = '\0';
  assert_int_equal(cqrs_lease_store_acquire(l, long_name, "a", 10, &a, &err), CQRS_ETOO_LARGE);
  /* Nothing refused took the lease. */
  assert_int_equal(cqrs_lease_store_acquire(l, "conformance.proj", "b", 10000, &a, &err), CQRS_OK);
  assert_true(a > 0);
}

int cqrs_conformance_leases(const cqrs_lease_store_factory_t *f) {
  if (!f || !f->name || !f->create) return 1;
  factory = f;
  const struct CMUnitTest tests[] = {
      CONF_TEST(test_holders_and_tokens),
      CONF_TEST(test_renewal_extends_the_term),
      CONF_TEST(test_takers_race),
      CONF_TEST(test_bad_arguments),
  };
  const conf_suite_t suite = {f->name, "leases", make, unmake};
  return cqrs__conf_run(&suite, tests, sizeof tests / sizeof tests[0]);
}
