/* Personal fields inside the framework (cqrs/personal.h): what a table says
 * of them (personal.c), and their sealing and opening in BSON documents
 * (seal.c, on base/crypto.c). Keys come from the store layer through a
 * keyring of function pointers, so that this layer calls nothing above it.
 * Not installed.
 *
 * A sealed value is a BSON binary of subtype CQRS__SEAL_SUBTYPE (user
 * defined) in place of the plaintext value:
 *   byte 0    CQRS__SEAL_SEALED, _FORGOTTEN (its key was gone when it was
 *             written) or _REDACTED (cqrs_event_to_bson's exports)
 *   byte 1    the BSON type of the plaintext value (a placeholder of the
 *             right type needs it once the key is gone)
 *   byte 2    n, the subject id's length (1..CQRS_ID_MAX - 1), then its n bytes
 *   sealed:   4 bytes, the key's generation (little endian), then the
 *             nonce, the ciphertext of the document {"v": value} and the tag
 * The associated data binds the context (an event's id, a snapshot's
 * stream, a read-model collection), the value's dotted key, the subject,
 * the generation and the type: a ciphertext opens only where it was made. */
#ifndef CQRS_PERSONAL_PRIVATE_H
#define CQRS_PERSONAL_PRIVATE_H

#include "base/crypto-private.h"

#define CQRS__SEAL_SUBTYPE BSON_SUBTYPE_USER
#define CQRS__SEAL_SEALED 1u
#define CQRS__SEAL_FORGOTTEN 2u
#define CQRS__SEAL_REDACTED 3u
#define CQRS__PERSONAL_MAX 32 /* personal fields of one table: bits of the event's mask */
#define CQRS__PERSONAL_KEY_MAX 128 /* bytes of a personal field's dotted key, NUL included */

/* The keys of data subjects, as the codec needs them (store/keys.c makes
 * one of a cqrs_keys_t). Both may be called from any thread. */
typedef struct cqrs__keyring {
  void *self;
  /* The key to seal `subject`'s data with, made if it has none (*forgotten:
   * the subject was forgotten, no key). */
  cqrs_code_t (*seal_key)(void *self, const char *subject, uint8_t key[CQRS__KEY_BYTES], uint32_t *generation,
                          bool *forgotten, cqrs_error_t *err);
  /* The key of `subject` at `generation` to open with; *forgotten when it
   * was forgotten; a subject with no key that was never forgotten is an
   * error (the key store lost it). */
  cqrs_code_t (*open_key)(void *self, const char *subject, uint32_t generation, uint8_t key[CQRS__KEY_BYTES],
                          bool *forgotten, cqrs_error_t *err);
} cqrs__keyring_t;

/* personal.c */

/* Whether the table (or one nested in it) has a personal field. Cached by
 * the table's address (personal.c): stores ask it of every event they
 * append, so the hit is inline, a load and a compare. */
#define CQRS__PERSONAL_TABLES 256
extern _Atomic uintptr_t cqrs__personal_tables[CQRS__PERSONAL_TABLES];
bool cqrs__personal_scan(const cqrs_field_t *fields);
static inline size_t cqrs__personal_slot(const cqrs_field_t *fields) {
  return ((uintptr_t)fields >> 4) % CQRS__PERSONAL_TABLES;
}
static inline bool cqrs__personal_table(const cqrs_field_t *fields) {
  if (!fields) return false;
  uintptr_t e = atomic_load_explicit(&cqrs__personal_tables[cqrs__personal_slot(fields)], memory_order_relaxed);
  if ((e & ~(uintptr_t)1) == (uintptr_t)fields) return e & 1;
  return cqrs__personal_scan(fields);
}

/* The subject of `obj` described by `fields` (CQRS_F_SUBJECT or a subject
 * entry), `owner` the aggregate's or document's id; NULL when none. */
const char *cqrs__personal_subject(const cqrs_field_t *fields, const void *obj, const char *owner);
/* The same of an encoded document (read models: `obj` unknown). */
const char *cqrs__personal_doc_subject(const cqrs_field_t *fields, const bson_t *doc, const char *owner);
/* The dotted key of the table's subject field into buf (false: none, or a
 * subject function). */
bool cqrs__personal_subject_key(const cqrs_field_t *fields, char *buf, size_t cap);

/* The field of the table a dotted key names, walking nested tables (NULL:
 * none); *personal: it, or a document it is in, is personal. */
const cqrs_field_t *cqrs__personal_lookup(const cqrs_field_t *fields, const char *path, bool *personal);

/* Bits, in the table's order of personal fields, of those that hold a
 * forgotten (or redacted) value in the opened document `doc`. */
uint32_t cqrs__personal_mask(const cqrs_field_t *fields, const bson_t *doc);
/* Index of personal field `path` in that order, -1 when it is not one. */
int cqrs__personal_index(const cqrs_field_t *fields, const char *path);

/* A binary value where field `f` was expected (fields.c's decoder): a
 * forgotten or redacted value is the kind's placeholder at `p` (`obj`: the
 * struct, for an array's count); a sealed one, nobody opened, an error. */
cqrs_code_t cqrs__personal_decode_marker(const bson_iter_t *it, const cqrs_field_t *f, void *p, void *obj,
                                         cqrs_error_t *err);

/* The event's mask of forgotten fields, set once by the reader who built it. */
void cqrs__event_set_forgotten(cqrs_event_t *e, uint32_t mask);

/* seal.c */

/* Whether `doc` holds a sealed, forgotten or redacted value anywhere
 * outside arrays. */
bool cqrs__personal_sealed(const bson_t *doc);

/* Encodes `obj` with `fields` into `out` (initialised by the caller), each
 * personal field sealed with the subject's key under context `ctx`; a
 * forgotten subject's fields are written forgotten. `ring` NULL with a
 * personal field: CQRS_ESTATE. */
cqrs_code_t cqrs__personal_encode(const cqrs_field_t *fields, const void *obj, const char *owner, const char *ctx,
                                  const cqrs__keyring_t *ring, bson_t *out, cqrs_error_t *err);

/* Copies the document `in` (or a patch of dotted keys) into `out`, sealing
 * the values whose keys `fields` says are personal, for `subject`, under
 * `ctx`. *sealed: how many were. */
cqrs_code_t cqrs__personal_seal_doc(const cqrs_field_t *fields, const bson_t *in, const char *subject,
                                    const char *ctx, const cqrs__keyring_t *ring, bson_t *out, size_t *sealed,
                                    cqrs_error_t *err);

/* Copies `in` into `out`, each sealed value opened: decrypted, or when its
 * subject is forgotten a forgotten marker (`markers`: for a field table's
 * decoder to make its placeholder) or a placeholder of the value's type
 * (strings CQRS_FORGOTTEN: documents). A value that does not open (another
 * context, key or field; altered bytes) is CQRS_ECODEC. */
cqrs_code_t cqrs__personal_open(const bson_t *in, const char *ctx, const cqrs__keyring_t *ring, bool markers,
                                bson_t *out, cqrs_error_t *err);

/* Encodes `obj` with its personal fields redacted (exports, dead letters). */
cqrs_code_t cqrs__personal_encode_redacted(const cqrs_field_t *fields, const void *obj, bson_t *out,
                                           cqrs_error_t *err);

#endif
