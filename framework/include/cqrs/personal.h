/* libcqrs: personal data that can be forgotten (crypto-shredding).
 *
 * A field flagged CQRS_F_PERSONAL (fields.h) in the table of an event type,
 * of an aggregate's snapshot state or of a read-model document type is
 * stored encrypted with a key of its own data subject (XChaCha20-Poly1305
 * from libsodium; the event id, or the snapshot or the collection, and the
 * field's key are bound to the ciphertext, so a ciphertext moved elsewhere
 * does not open). Keys live in a key store (memory, MongoDB, or your own:
 * cqrs/backend.h), created when a subject is first written, cached, and
 * optionally wrapped by a master key the application supplies. Forgetting a
 * subject deletes its key: from then on its personal fields read as
 * placeholders everywhere, and history still loads. docs/privacy.md says
 * what this protects against and what not. */
#ifndef CQRS_PERSONAL_H
#define CQRS_PERSONAL_H

#include "cqrs/dispatcher.h"
#include "cqrs/readmodel.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What a forgotten personal string reads as (where the member has room for
 * it; the empty string where it has not). Numbers, times and booleans read
 * as 0, money as 0 "XXX", documents field by field, arrays as empty; in
 * read-model documents every forgotten value is this string. */
#define CQRS_FORGOTTEN "[forgotten]"

/* True when the personal field `key` (dotted for a nested one, as in
 * "address.city") of event `e` was forgotten: its subject's key was deleted
 * and it holds the placeholder. False for any other field, or NULLs. */
CQRS_EXPORT bool cqrs_field_forgotten(const cqrs_event_t *e, const char *key);

/* ---- key stores ---- */

typedef struct cqrs_keys cqrs_keys_t;

typedef struct cqrs_keys_options {
  /* 32 bytes, or NULL: data keys are stored wrapped (encrypted) with it, so
   * the key store alone does not open the data. Borrowed, copied. Keep it
   * somewhere else than the key store and its backups. */
  const uint8_t *master_key;
  /* 32 bytes, or NULL: the master key before a rotation. A data key wrapped
   * with it is unwrapped and stored again wrapped with master_key when it is
   * first used (docs/privacy.md, "Key rotation"). */
  const uint8_t *previous_master_key;
  /* Data keys kept unwrapped in memory, least recently used evicted;
   * default 4096 (0: the default). */
  size_t cache;
  /* How long a cached key or forgotten subject is trusted before the key
   * store is asked again, so that a forget made by another process reaches
   * this one; default 60000 (0: the default). */
  uint64_t cache_ms;
  void *reserved[4]; /* zero */
} cqrs_keys_options_t;

/* Fills `opts` with the defaults. */
CQRS_EXPORT void cqrs_keys_options_init(cqrs_keys_options_t *opts);

/* An in-memory key store: the keys die with the process (as the memory
 * store's events do). `opts` NULL: defaults. Free with cqrs_keys_destroy
 * after every store and read model that uses it. NULL `out`: CQRS_EINVAL;
 * CQRS_ENOMEM; libsodium that cannot start: CQRS_ESTATE. */
CQRS_EXPORT cqrs_code_t cqrs_memory_keys_new(const cqrs_keys_options_t *opts, cqrs_keys_t **out,
                                             cqrs_error_t *err);
CQRS_EXPORT void cqrs_keys_destroy(cqrs_keys_t *keys);
/* True when the key store does I/O (MongoDB): stores using it then block. */
CQRS_EXPORT bool cqrs_keys_blocking(const cqrs_keys_t *keys);

/* Deletes the key of `subject` and records that it was forgotten, for good:
 * no key is ever made for it again (what is written for it afterwards is
 * stored forgotten). Idempotent. Blocks when the key store does. Prefer
 * cqrs_forget or cqrs_context_forget, which also record the event. */
CQRS_EXPORT cqrs_code_t cqrs_keys_forget(cqrs_keys_t *keys, const char *subject, cqrs_error_t *err);

typedef enum cqrs_subject_state {
  CQRS_SUBJECT_UNKNOWN = 0, /* no key, never forgotten */
  CQRS_SUBJECT_KEYED,       /* has a key */
  CQRS_SUBJECT_FORGOTTEN    /* its key was deleted */
} cqrs_subject_state_t;

typedef struct cqrs_subject_info {
  const char *subject; /* borrowed for the visit */
  cqrs_subject_state_t state;
  int64_t created_at;   /* UTC ms the key was made (0: unknown) */
  int64_t forgotten_at; /* UTC ms it was deleted (0: not forgotten) */
} cqrs_subject_info_t;

/* Whether `subject` has a key, was forgotten, or neither (*state). */
CQRS_EXPORT cqrs_code_t cqrs_keys_state(cqrs_keys_t *keys, const char *subject, cqrs_subject_state_t *state,
                                        cqrs_error_t *err);

/* Visits every subject the key store knows (with a key or forgotten), in
 * the order of their ids; the visitor returns false to stop. */
typedef bool (*cqrs_subject_visit_cb)(const cqrs_subject_info_t *info, void *data);
CQRS_EXPORT cqrs_code_t cqrs_keys_list(cqrs_keys_t *keys, cqrs_subject_visit_cb cb, void *data, cqrs_error_t *err);

/* ---- where personal data is written ---- */

/* Gives `store` a key store (borrowed, must outlive it): from now on the
 * personal fields of the events it appends are sealed, and what it reads
 * is opened (`reg`, borrowed, decodes the events it yields sealed). Call
 * before the store is used; calling it again replaces both. Without a key store, appending an event with personal
 * fields fails (CQRS_ESTATE), as does reading one back: personal data is
 * never written in clear. Snapshots (the repository) are sealed likewise. */
CQRS_EXPORT cqrs_code_t cqrs_store_set_keys(cqrs_store_t *store, cqrs_keys_t *keys, const cqrs_registry_t *reg,
                                            cqrs_error_t *err);
/* The key store given to `store`, or NULL (borrowed). */
CQRS_EXPORT cqrs_keys_t *cqrs_store_keys(const cqrs_store_t *store);

/* Visits the events from `from_position` as `store` keeps them at rest,
 * without opening them: an event with personal fields is a placeholder of
 * cqrs_unknown_event_type whose data holds its sealed payload. For audits
 * and tests (what a dump of the store would show); otherwise as
 * cqrs_store_read_all. */
CQRS_EXPORT cqrs_code_t cqrs_store_read_sealed(cqrs_store_t *store, int64_t from_position, size_t limit,
                                               cqrs_event_visit_cb cb, void *data, cqrs_error_t *err);

/* The personal fields of the documents of one read-model collection: the
 * keys of `fields` flagged CQRS_F_PERSONAL (nested tables give dotted keys,
 * "customer.email"), and their subject (a CQRS_F_SUBJECT string, which may
 * be nested, "customer.id"; or CQRS_SUBJECT_OWNER: the document's id). The
 * table need list only those keys: the others are written as given. */
typedef struct cqrs_doc_type {
  const char *collection;
  const cqrs_field_t *fields;
} cqrs_doc_type_t;

/* Seals the personal fields of the documents of `type->collection` on every
 * write through `rm` with `keys` (borrowed, must outlive `rm`), and opens
 * them on every read (forgotten ones read CQRS_FORGOTTEN). A write that
 * sets a personal key must name the subject: put and patch_where carry it
 * (the document, or the filter's equality on the subject's key), a patch of
 * one document reads it there. Personal keys cannot be filtered or sorted
 * on. `type` is copied (its table borrowed: static). Call before the read
 * model is used; the same type and keys again change nothing, another type
 * for the collection is CQRS_EDUPLICATE. */
CQRS_EXPORT cqrs_code_t cqrs_readmodel_add_type(cqrs_readmodel_t *rm, const cqrs_doc_type_t *type,
                                                cqrs_keys_t *keys, cqrs_error_t *err);

/* For tools that read or write the documents of a collection directly (a
 * driver's bulk writes, a comparison with what is stored): `in`, a document
 * of `coll`, sealed (as `rm` would write it; `id` is the document's id) or
 * opened (as `rm` would read it) into `out` (initialised by the caller).
 * A collection without a document type is copied as it is. */
CQRS_EXPORT cqrs_code_t cqrs_readmodel_seal_doc(const cqrs_readmodel_t *rm, const char *coll, const char *id,
                                                const bson_t *in, bson_t *out, cqrs_error_t *err);
CQRS_EXPORT cqrs_code_t cqrs_readmodel_open_doc(const cqrs_readmodel_t *rm, const char *coll, const bson_t *in,
                                                bson_t *out, cqrs_error_t *err);

/* ---- forgetting ---- */

/* The fact that a subject was forgotten: what cqrs_forget and
 * cqrs_context_forget's handlers record. Projections subscribe to it and
 * drop (or overwrite with CQRS_FORGOTTEN) what they derived for `subject`.
 * Every registry knows this type from cqrs_registry_new. */
typedef struct cqrs_forgotten {
  char subject[CQRS_ID_MAX];
} cqrs_forgotten_t;
CQRS_EXPORT extern const cqrs_event_type_t cqrs_forgotten_event_type; /* "cqrs.forgotten" */
/* The stream cqrs_forget records on: aggregate type "cqrs.subject", id the
 * subject. Its state is a cqrs_forgotten_t (empty until forgotten). */
CQRS_EXPORT extern const cqrs_aggregate_type_t cqrs_subject_type;

/* Forgets `subject`: a command of the framework's that deletes the
 * subject's key in the store's key store, then records cqrs.forgotten on
 * the stream cqrs.subject/<subject> (command id derived from the subject:
 * forgetting twice records once). Any thread; completes as
 * cqrs_dispatcher_send does (`done` once on the loop thread). The store has
 * no key store: the command fails with CQRS_ESTATE. */
CQRS_EXPORT cqrs_code_t cqrs_forget(cqrs_dispatcher_t *d, const char *subject, cqrs_done_cb done, void *data);

/* Inside a handler: forgets `subject` as part of this command: its key is
 * deleted when the command commits, just before its events are appended
 * (a key store that fails fails the command, and nothing is appended). The
 * handler records the fact itself, usually by raising
 * cqrs_forgotten_event_type on the aggregate the subject is (the billing
 * customer.forget does). One subject per command. */
CQRS_EXPORT cqrs_code_t cqrs_context_forget(cqrs_context_t *ctx, const char *subject, cqrs_error_t *err);

#ifdef __cplusplus
}
#endif
#endif
