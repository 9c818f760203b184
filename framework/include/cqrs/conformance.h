/* libcqrs-conformance: the suites a backend written against cqrs/backend.h
 * runs to prove it keeps the contract of its interface, the ones the
 * in-memory and MongoDB backends pass. Link cqrs::conformance (pkg-config
 * cqrs-conformance; it brings cmocka).
 *
 * Each suite runs as one cmocka group named after the factory, calls its
 * `create` once per test for a fresh, empty object (and `dispose` after the
 * test; NULL: the object's _destroy) and returns the number of tests that
 * failed, cmocka's output saying which and why. The suites call the backend
 * from several threads at once, and the store suite runs a dispatcher on a
 * libuv loop of its own over the store. They use their own event types,
 * collections, checkpoint and lease names, all starting "conformance"; run
 * each on an object nothing else uses. */
#ifndef CQRS_CONFORMANCE_H
#define CQRS_CONFORMANCE_H

#include "cqrs/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cqrs_store_factory {
  const char *name; /* the cmocka group's */
  /* A fresh, empty store that decodes events through `reg` (the suite's,
   * borrowed: it outlives the store); NULL fails the test. */
  cqrs_store_t *(*create)(const cqrs_registry_t *reg, void *data);
  void (*dispose)(cqrs_store_t *store, void *data);
  void *data;
  /* The store keeps no snapshots (snapshot_load and snapshot_save NULL):
   * the suite checks that a save is refused and a load finds none. */
  bool without_snapshots;
  /* The store has no has_command op (it cannot tell whether a command id
   * committed): its test is skipped. */
  bool without_command_lookup;
  uint64_t reserved[4];
} cqrs_store_factory_t;

/* Appends (all or nothing, conflicts, repeated command ids on any stream;
 * several commits of a stream in one call, alone and racing),
 * reads of a stream and of the whole log, head, snapshots, arguments,
 * appends racing on threads, events of a type the registry does not know
 * (read as placeholders, dead-lettered by a dispatcher). */
CQRS_EXPORT int cqrs_conformance_store(const cqrs_store_factory_t *f);

typedef struct cqrs_readmodel_factory {
  const char *name;
  cqrs_readmodel_t *(*create)(void *data); /* fresh and empty; NULL fails the test */
  void (*dispose)(cqrs_readmodel_t *rm, void *data);
  void *data;
  uint64_t reserved[4];
} cqrs_readmodel_factory_t;

/* put (insert or replace; _id and _position the store's), patch ($set of
 * plain and dotted keys), set_int64, patch_where, get, find (equality
 * filters, sort, ties, limit, an early stop, a join from the visitor),
 * positions that never move back, collections apart, writers racing on
 * threads, arguments. */
CQRS_EXPORT int cqrs_conformance_readmodel(const cqrs_readmodel_factory_t *f);

typedef struct cqrs_checkpoint_store_factory {
  const char *name;
  cqrs_checkpoint_store_t *(*create)(void *data); /* fresh and empty; NULL fails the test */
  void (*dispose)(cqrs_checkpoint_store_t *cp, void *data);
  void *data;
  /* The checkpoints cannot fence (save_fenced NULL): the suite checks that
   * a fenced save is refused (CQRS_EINVAL) instead of its fencing. */
  bool unfenced;
  /* The checkpoints keep no control records (control_load and control_save
   * NULL): the suite checks that they are refused (CQRS_EINVAL). */
  bool without_controls;
  uint64_t reserved[4];
} cqrs_checkpoint_store_factory_t;

/* load (0 for a name never saved), save (a later save wins, a reset to a
 * lower position too), names apart, fenced saves (a lower token than one
 * that wrote: CQRS_ECONFLICT, nothing saved; a plain save keeps the fence),
 * control records (each part kept by the other's write, apart from the
 * checkpoint), savers racing on threads, a checkpoint, a report and a
 * request written at once (none lost to the others), arguments. */
CQRS_EXPORT int cqrs_conformance_checkpoints(const cqrs_checkpoint_store_factory_t *f);

typedef struct cqrs_lease_store_factory {
  const char *name;
  cqrs_lease_store_t *(*create)(void *data); /* fresh, no lease held; NULL fails the test */
  void (*dispose)(cqrs_lease_store_t *l, void *data);
  void *data;
  /* A manual clock the stores `create` makes decide expiry by (e.g.
   * cqrs_memory_lease_store_new_with_clock): the suite advances it instead of
   * waiting, so no term runs out early on a slow machine. NULL: the stores
   * run on the real clock and the suite waits for it (about 4 s). */
  union {
    cqrs_clock_t *clock;
    uint64_t clock_room_; /* keeps the struct's size where pointers are smaller */
  };
  uint64_t reserved[3];
} cqrs_lease_store_factory_t;

/* acquire (one holder; tokens that only grow), renew (only the holder under
 * its token; extends the term), release, expiry, names apart, takers racing
 * on threads (one wins), arguments. Terms run out on the factory's clock. */
CQRS_EXPORT int cqrs_conformance_leases(const cqrs_lease_store_factory_t *f);

#ifdef __cplusplus
}
#endif
#endif
