/* libcqrs: the backend author's header. For whoever writes a new event
 * store, read model, checkpoint store or lease store (libcqrs-mongo is
 * written against it, and nothing else of libcqrs): the four operation
 * tables and the calls that wrap one into the object applications use, and
 * what a store needs to rebuild the events it reads back. Applications
 * include cqrs/cqrs.h only; prove a backend with cqrs::conformance
 * (cqrs/conformance.h). docs/architecture.md, "Writing a backend".
 *
 * The contract every table shares:
 * - Wrapping. cqrs_store_new, cqrs_readmodel_new, cqrs_checkpoints_new and
 *   cqrs_leases_new borrow `ops` (a static table) and take over `impl` in
 *   every case: ops->destroy(impl) runs once, in the object's _destroy or at
 *   once when the wrapping fails. A NULL destroy releases nothing.
 * - Arguments. Every call has its arguments checked before it reaches the
 *   table (the checks of cqrs_store_append, cqrs_readmodel_put, ...): names,
 *   ids and owners are non-empty valid UTF-8 within CQRS_NAME_MAX or
 *   CQRS_ID_MAX; positions, versions, tokens and ttls are in range; pointers
 *   are not NULL unless a header says they may be. `err` may be NULL.
 * - Threads and `blocking`. Calls may come from several threads at once: an
 *   implementation is thread-safe. One that does no I/O leaves `blocking`
 *   false and is then called from any thread, the loop's too: it must never
 *   wait on anything slow. One that does I/O sets `blocking`: the framework
 *   then calls it only from the libuv thread pool (leases: from a thread the
 *   dispatcher keeps for them), never from a loop thread.
 * - Visitors. A read calls its visitor on the calling thread, before it
 *   returns, in order; the event or document is borrowed for the duration of
 *   the call (the visitor takes cqrs_event_ref to keep an event). A visitor
 *   returning false ends the read early, which then succeeds.
 * - Errors. Fill `err` with cqrs_error_set and return its code. A backend
 *   that cannot reach its server returns CQRS_ESTORE, which is transient
 *   by default (the event bus retries it without end); add
 *   cqrs_error_set_cause(err, domain, code, transient) to keep the driver's
 *   own domain and code and to say whether retrying can help (false: the
 *   bus dead-letters after its attempts, the error is named "store_failed").
 *   CQRS_ECONFLICT is an answer, not a failure: the stream moved (append),
 *   the lease is no longer the caller's (renew), a higher token has written
 *   (save_fenced). CQRS_ECODEC: a stored document that cannot be decoded;
 *   CQRS_ETOO_LARGE: over the backend's own limits; CQRS_ENOT_FOUND: a
 *   patch of a document that does not exist. */
#ifndef CQRS_BACKEND_H
#define CQRS_BACKEND_H

#include "cqrs/cqrs.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- events, as a store rebuilds them ---- */

/* Creates an envelope with one reference, copying the strings (each at most
 * CQRS_ID_MAX - 1 bytes or CQRS_ETOO_LARGE; not valid UTF-8: CQRS_EINVAL).
 * Stores use it when decoding; the events of one commit share one. */
CQRS_EXPORT cqrs_code_t cqrs_envelope_new(const char *aggregate_type, const char *aggregate_id,
                                          const char *causation_id, const char *correlation_id,
                                          cqrs_envelope_t **out, cqrs_error_t *err);
CQRS_EXPORT void cqrs_envelope_unref(const cqrs_envelope_t *env);

/* Creates an event with one reference. Copies `payload` (payload_size bytes),
 * takes a reference on `env`. `id` NULL generates one. A version outside
 * [1, INT64_MAX - 1] or an id that is not valid UTF-8 is CQRS_EINVAL. Stores
 * use it when decoding; domain code raises events through cqrs_aggregate_raise.
 * Positions: a store writes `position` itself, on the events it has just
 * created (before any other thread sees them) and on the events of an
 * append request once they are committed; no other field of an event is
 * ever written after this call. */
CQRS_EXPORT cqrs_code_t cqrs_event_new(const cqrs_event_type_t *type, const cqrs_envelope_t *env, const char *id,
                                       int64_t version, int64_t timestamp, const void *payload,
                                       cqrs_event_t **out, cqrs_error_t *err);

/* Creates a placeholder event with one reference for stored type
 * `type_name` (at most CQRS_NAME_MAX - 1 bytes) and payload `data` (both
 * copied); the rest as cqrs_event_new. A store's read_all yields one in
 * place of an event whose type the registry does not know (see
 * cqrs_unknown_event_type); encoding it (cqrs_event_body_to_bson, which
 * cqrs_event_to_bson and the stores use) writes the original type, schema
 * version and data back. */
CQRS_EXPORT cqrs_code_t cqrs_unknown_event_new(const char *type_name, uint32_t schema_version, const bson_t *data,
                                               const cqrs_envelope_t *env, const char *id, int64_t version,
                                               int64_t timestamp, cqrs_event_t **out, cqrs_error_t *err);

/* Decodes a payload stored at `schema_version` of type `name`: runs the
 * upcasters up to the current version, then the field table. *payload is
 * allocated (type->payload_size bytes, free with cqrs_payload_free).
 * Unknown type: CQRS_EUNKNOWN_TYPE; missing upcaster, newer version than
 * known, or a payload to upcast that is corrupt: CQRS_ECODEC. */
CQRS_EXPORT cqrs_code_t cqrs_registry_decode_payload(const cqrs_registry_t *reg, const char *name,
                                                     uint32_t schema_version, const bson_t *data,
                                                     const cqrs_event_type_t **type, void **payload,
                                                     cqrs_error_t *err);
CQRS_EXPORT void cqrs_payload_free(void *payload);

/* ---- the event codec: what a store writes of each event ----
 *
 * An event's body is its own part: `id_key` (NULL: "id") its id, "type",
 * "schemaVersion" (int32), "version" (int64), "timestamp" (date) and "data"
 * (the payload by its field table; a placeholder's original type, schema
 * version and raw data), in that order. A store writes the envelope and
 * positions once per commit beside them. The MongoDB store's commits name
 * the id "eventId"; cqrs_event_to_bson writes a body with "id", then the
 * envelope and position. A key of the body as `id_key`: CQRS_EINVAL. */

/* Reads the integer at `it` as the codec reads every stored integer: an
 * int64, an int32, a date, or a double within int64's range (truncated).
 * false, `*v` unchanged, for anything else. For a store's own fields. */
CQRS_EXPORT bool cqrs_bson_iter_int64(const bson_iter_t *it, int64_t *v);

/* Appends the body of `e` to `out`. `out` cannot grow: CQRS_ETOO_LARGE; a
 * payload its field table cannot encode: that error (cqrs_fields_encode).
 * On an error `out` holds part of the body: discard it. */
CQRS_EXPORT cqrs_code_t cqrs_event_body_to_bson(const cqrs_event_t *e, const char *id_key, bson_t *out,
                                                cqrs_error_t *err);

/* Decodes a body into a new event (one reference) of envelope `env` (a
 * reference taken) at `position`. Integers may be stored as int32, int64,
 * double (truncated) or date; an id that is not a string gets a new id. A
 * key missing or of another type, or a schema version outside [1,
 * UINT32_MAX]: CQRS_ECODEC. A type `reg` does not know: a placeholder
 * (cqrs_unknown_event_new) when `unknown_as_placeholder`, else
 * CQRS_EUNKNOWN_TYPE; an older schema version is upcast, with the errors of
 * cqrs_registry_decode_payload; what cqrs_event_new refuses is its error.
 * Check a document from outside first with cqrs_bson_check_utf8 (a store
 * checks each stored commit once, whole). A payload that holds sealed
 * personal data (cqrs_payload_sealed) is yielded as stored, a placeholder,
 * for the store wrapper that holds the keys to open. */
CQRS_EXPORT cqrs_code_t cqrs_event_body_from_bson(const cqrs_registry_t *reg, const bson_t *doc, const char *id_key,
                                                  const cqrs_envelope_t *env, int64_t position,
                                                  bool unknown_as_placeholder, cqrs_event_t **out,
                                                  cqrs_error_t *err);

/* True when a stored payload holds sealed personal data (values the store
 * wrapper sealed, cqrs/personal.h): a store yields such an event as it was
 * stored, with cqrs_unknown_event_new (by read_stream as by read_all, the
 * type known or not), and the wrapper opens it with its key store. The
 * events a wrapper with a key store appends are of that kind already (an
 * unknown event's type name, schema version and sealed data): a store that
 * writes unknown events back as they were needs nothing more. */
CQRS_EXPORT bool cqrs_payload_sealed(const bson_t *data);

/* ---- event stores (store.h: the requests and the checked calls) ---- */

typedef struct cqrs_store_ops {
  const char *name;
  bool blocking;
  /* All or nothing. Sets each event's position and fills `res`. Stream
   * moved (its version is not req->expected_version): CQRS_ECONFLICT,
   * nothing appended. A command id that has committed before, on any
   * stream: nothing appended, res->duplicate true, CQRS_OK. */
  cqrs_code_t (*append)(void *impl, const cqrs_append_t *req, cqrs_append_result_t *res, cqrs_error_t *err);
  /* Visits the events of a stream with version >= from_version, in order. */
  cqrs_code_t (*read_stream)(void *impl, const char *aggregate_type, const char *aggregate_id,
                             int64_t from_version, cqrs_event_visit_cb cb, void *data, cqrs_error_t *err);
  /* Visits up to `limit` events with position >= from_position, in position
   * order, never skipping one that commits later with a smaller position.
   * An event of a type the registry does not know is visited as a
   * placeholder (cqrs_unknown_event_new), never an error. */
  cqrs_code_t (*read_all)(void *impl, int64_t from_position, size_t limit, cqrs_event_visit_cb cb, void *data,
                          cqrs_error_t *err);
  /* The highest position visible to read_all (0: empty). */
  cqrs_code_t (*head)(void *impl, int64_t *position, cqrs_error_t *err);
  /* Optional (NULL: no snapshots). Newest snapshot of a stream, the one of
   * the highest version saved; *found false when none. `out->state` is
   * initialised by the store when found; the caller destroys it. */
  cqrs_code_t (*snapshot_load)(void *impl, const char *aggregate_type, const char *aggregate_id,
                               cqrs_snapshot_t *out, bool *found, cqrs_error_t *err);
  cqrs_code_t (*snapshot_save)(void *impl, const cqrs_snapshot_t *snap, cqrs_error_t *err);
  void (*destroy)(void *impl);
  /* Optional: whether a commit of command id `command_id` is stored
   * (*found). What lets a command with a natural id, sent again, be
   * answered as the duplicate it is rather than as its handler's rejection
   * (cqrs_command_type_t.make_id; docs/architecture.md, "Idempotency"). */
  cqrs_code_t (*has_command)(void *impl, const char *command_id, bool *found, cqrs_error_t *err);
  /* Optional (NULL: the framework calls append for each in turn): appends
   * the `n` commits of `reqs`, all of ONE stream and in its order (each
   * expects the version the one before leaves), as append would append each
   * in turn: each its own commit, command id and idempotency. Stops at the
   * first that does not commit; *done: how many did (their `res` filled as
   * append fills it). Returns what that one came to, as append returns it:
   * CQRS_OK with res[*done].duplicate (a command id committed before, or
   * earlier in this call), CQRS_ECONFLICT, or an error in `err`; CQRS_OK
   * with *done == n when all committed. A commit after one that did not
   * commit never lands: the stream's versions have no gap. One call lets a
   * store write the commits in one round trip (docs/architecture.md,
   * "Batches"). */
  cqrs_code_t (*append_many)(void *impl, const cqrs_append_t *reqs, size_t n, cqrs_append_result_t *res,
                             size_t *done, cqrs_error_t *err);
  /* Room for what later versions add without changing the size (docs/versioning.md): zero. */
  void *reserved[3];
} cqrs_store_ops_t;

/* Wraps an implementation into *out. `ops` is borrowed (static); `impl` is
 * taken over in every case: released by ops->destroy in cqrs_store_destroy,
 * or at once when this fails (NULL `out`, NULL ops or a missing append,
 * read_stream, read_all or head: CQRS_EINVAL; CQRS_ENOMEM). On error *out is
 * NULL. `err` may be NULL. */
CQRS_EXPORT cqrs_code_t cqrs_store_new(const cqrs_store_ops_t *ops, void *impl, cqrs_store_t **out,
                                       cqrs_error_t *err);
/* The `impl` a store wraps (borrowed); NULL for NULL. */
CQRS_EXPORT void *cqrs_store_impl(const cqrs_store_t *store);

/* ---- read models (readmodel.h: documents, positions, queries) ---- */

/* Writes to different documents may come at once, from several threads;
 * one document is written by one writer at a time (the projection that owns
 * it), with positions in any order (a replay after a crash goes back). */
typedef struct cqrs_readmodel_ops {
  bool blocking;
  /* Inserts or replaces document `id` (the store sets _id and _position,
   * whatever `doc` says of them). *applied false, nothing written, when the
   * document is at `position` or later. */
  cqrs_code_t (*put)(void *impl, const char *coll, const char *id, const bson_t *doc, int64_t position,
                     bool *applied, cqrs_error_t *err);
  /* Sets the given (dotted) keys of document `id`, keeping the others, as
   * MongoDB's $set does; CQRS_ENOT_FOUND when absent; *applied as for put. */
  cqrs_code_t (*patch)(void *impl, const char *coll, const char *id, const bson_t *set, int64_t position,
                       bool *applied, cqrs_error_t *err);
  /* Patches every document matching `filter` (as find) whose position is
   * below `position`; *count: how many. */
  cqrs_code_t (*patch_where)(void *impl, const char *coll, const bson_t *filter, const bson_t *set,
                             int64_t position, size_t *count, cqrs_error_t *err);
  /* Copies document `id` into `out` (initialised by the store when found). */
  cqrs_code_t (*get)(void *impl, const char *coll, const char *id, bson_t *out, bool *found, cqrs_error_t *err);
  /* Visits the documents matching q->filter (equality on each of its
   * (dotted) keys, numbers equal whatever their width), ordered by q->sort
   * (NULL: by id; ties by id) in the direction q->descending says, up to
   * q->limit (0: all). The visitor may read the same read model again (a
   * join). */
  cqrs_code_t (*find)(void *impl, const char *coll, const cqrs_find_t *q, cqrs_doc_visit_cb cb, void *data,
                      cqrs_error_t *err);
  void (*destroy)(void *impl);
  /* Room for what later versions add without changing the size (docs/versioning.md): zero. */
  void *reserved[4];
} cqrs_readmodel_ops_t;

/* Wraps an implementation into *out. `ops` is borrowed (static); `impl` is
 * taken over in every case: released by ops->destroy in
 * cqrs_readmodel_destroy, or at once when this fails (NULL `out`, NULL ops or
 * a missing put, patch, patch_where, get or find: CQRS_EINVAL; CQRS_ENOMEM).
 * On error *out is NULL. `err` may be NULL. */
CQRS_EXPORT cqrs_code_t cqrs_readmodel_new(const cqrs_readmodel_ops_t *ops, void *impl, cqrs_readmodel_t **out,
                                           cqrs_error_t *err);

/* ---- checkpoint stores (projection.h) ---- */

typedef struct cqrs_checkpoint_ops {
  bool blocking; /* called only from the thread pool when true */
  /* *position is 0 when the projection has no checkpoint yet. */
  cqrs_code_t (*load)(void *impl, const char *name, int64_t *position, cqrs_error_t *err);
  /* Saves `position` (>= 0, possibly lower than before: a rebuild). */
  cqrs_code_t (*save)(void *impl, const char *name, int64_t position, cqrs_error_t *err);
  void (*destroy)(void *impl);
  /* Optional (needed with leases): saves only when no write with a higher
   * `token` came before; CQRS_ECONFLICT when one did (the writer's lease has
   * passed to another). A plain save is not fenced (an operator's reset)
   * and leaves the highest token in force. */
  cqrs_code_t (*save_fenced)(void *impl, const char *name, int64_t position, int64_t token, cqrs_error_t *err);
  /* Optional, both or neither (projection controls, projection.h): the
   * control record of `name` into `out` (zeroed by the caller; *found false
   * when none); and a write of the parts of `c` that `parts` names
   * (CQRS_CONTROL_REQUEST, CQRS_CONTROL_REPORT), the other part kept, the
   * record created when absent. A record is the name's own, apart from its
   * checkpoint: a save leaves it alone, and it leaves the checkpoint. */
  cqrs_code_t (*control_load)(void *impl, const char *name, cqrs_projection_control_t *out, bool *found,
                              cqrs_error_t *err);
  cqrs_code_t (*control_save)(void *impl, const char *name, const cqrs_projection_control_t *c, unsigned parts,
                              cqrs_error_t *err);
  /* Room for what later versions add without changing the size (docs/versioning.md): zero. */
  void *reserved[4];
} cqrs_checkpoint_ops_t;

/* Wraps an implementation into *out. `ops` is borrowed (static); `impl` is
 * taken over in every case: released by ops->destroy in
 * cqrs_checkpoints_destroy, or at once when this fails (NULL `out`, NULL ops
 * or a missing load or save: CQRS_EINVAL; CQRS_ENOMEM). On error *out is
 * NULL. `err` may be NULL. */
CQRS_EXPORT cqrs_code_t cqrs_checkpoints_new(const cqrs_checkpoint_ops_t *ops, void *impl, cqrs_checkpoints_t **out,
                                             cqrs_error_t *err);

/* ---- lease stores (lease.h) ---- */

/* Times are the caller's wall clock (UTC ms): an implementation shared by
 * several machines relies on their clocks being close (docs/scaling.md says
 * how close). */
typedef struct cqrs_lease_ops {
  /* true: called only from a thread the dispatcher keeps for them (not the
   * pool, where a renewal could wait behind slow reads of the store). */
  bool blocking;
  /* Takes lease `name` for `owner` until now + ttl_ms when nobody holds it,
   * its holder's time ran out, or `owner` holds it: *token is then a new
   * token, higher than every one handed out before for `name`. *token 0:
   * someone else holds it (not an error). */
  cqrs_code_t (*acquire)(void *impl, const char *name, const char *owner, uint64_t ttl_ms, int64_t *token,
                         cqrs_error_t *err);
  /* Extends the lease held under `token` to now + ttl_ms; CQRS_ECONFLICT
   * when it is no longer `owner`'s under that token. */
  cqrs_code_t (*renew)(void *impl, const char *name, const char *owner, int64_t token, uint64_t ttl_ms,
                       cqrs_error_t *err);
  /* Lets go at once (others may take it now); nothing when not held. */
  cqrs_code_t (*release)(void *impl, const char *name, const char *owner, int64_t token, cqrs_error_t *err);
  void (*destroy)(void *impl);
  /* Room for what later versions add without changing the size (docs/versioning.md): zero. */
  void *reserved[4];
} cqrs_lease_ops_t;

/* Wraps an implementation into *out, as cqrs_checkpoints_new does: `ops`
 * borrowed (static), `impl` taken over in every case (CQRS_EINVAL for NULL
 * `out` or ops or a missing operation; CQRS_ENOMEM). */
CQRS_EXPORT cqrs_code_t cqrs_leases_new(const cqrs_lease_ops_t *ops, void *impl, cqrs_leases_t **out,
                                        cqrs_error_t *err);

/* ---- key stores (personal.h) ---- */

/* What a key store keeps per subject. The key bytes are opaque to it: a
 * data key, or a data key wrapped by the application's master key (then
 * `wrap` names that master key; all zero: not wrapped). */
#define CQRS_KEY_STORED_MAX 96
typedef struct cqrs_key_record {
  cqrs_subject_state_t state; /* CQRS_SUBJECT_UNKNOWN: no record */
  uint32_t generation;        /* >= 1 */
  uint8_t key[CQRS_KEY_STORED_MAX];
  size_t key_len;
  uint8_t wrap[8];
  int64_t created_at, forgotten_at; /* UTC ms */
} cqrs_key_record_t;

typedef bool (*cqrs_key_visit_cb)(const char *subject, const cqrs_key_record_t *rec, void *data);

typedef struct cqrs_keys_ops {
  bool blocking;
  /* The record of `subject`; out->state CQRS_SUBJECT_UNKNOWN when none. */
  cqrs_code_t (*get)(void *impl, const char *subject, cqrs_key_record_t *out, cqrs_error_t *err);
  /* Stores `rec` (KEYED) as the record of `subject` unless it has one
   * (keyed or forgotten: a forgotten subject never gets a key again);
   * *out is then the record stored, the one given or the one found. Two
   * processes creating at once agree on one key. */
  cqrs_code_t (*create)(void *impl, const char *subject, const cqrs_key_record_t *rec, cqrs_key_record_t *out,
                        cqrs_error_t *err);
  /* Deletes the key of `subject` and records it forgotten at `at`, whether
   * or not it had a record; a forgotten record stays as it is. The key
   * bytes must be gone from the store when this returns. */
  cqrs_code_t (*forget)(void *impl, const char *subject, int64_t at, cqrs_error_t *err);
  /* Visits every record, by subject. */
  cqrs_code_t (*list)(void *impl, cqrs_key_visit_cb cb, void *data, cqrs_error_t *err);
  void (*destroy)(void *impl);
  /* Optional: replaces the key bytes and `wrap` of a KEYED record whose
   * wrap is `old_wrap` (a master key's rotation); CQRS_ECONFLICT when it
   * is not (another process did it). */
  cqrs_code_t (*rewrap)(void *impl, const char *subject, const uint8_t old_wrap[8], const cqrs_key_record_t *rec,
                        cqrs_error_t *err);
} cqrs_keys_ops_t;

/* Wraps a key store implementation, as cqrs_store_new does (`ops`
 * borrowed, `impl` taken over in every case; NULL `out`, ops or a missing
 * get, create, forget or list: CQRS_EINVAL), with the options of
 * cqrs_memory_keys_new (NULL: defaults; a master key and its id, the
 * cache). */
CQRS_EXPORT cqrs_code_t cqrs_keys_new(const cqrs_keys_ops_t *ops, void *impl, const cqrs_keys_options_t *opts,
                                      cqrs_keys_t **out, cqrs_error_t *err);

#ifdef __cplusplus
}
#endif
#endif
