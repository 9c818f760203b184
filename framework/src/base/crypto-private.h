/* The one cipher of libcqrs: XChaCha20-Poly1305 (IETF), an AEAD from
 * libsodium, with 24-byte random nonces (safe to draw at random for as many
 * messages as a key will ever see). Personal fields are sealed with it
 * (model/seal.c), and data keys with the application's master key
 * (store/keys.c). Not installed. */
#ifndef CQRS_CRYPTO_PRIVATE_H
#define CQRS_CRYPTO_PRIVATE_H

#include "base/cqrs-private.h"

#define CQRS__KEY_BYTES 32u
#define CQRS__NONCE_BYTES 24u
#define CQRS__TAG_BYTES 16u
#define CQRS__KEY_ID_BYTES 8u

/* libsodium's initialisation, once per process; false when it failed (no
 * source of randomness): every call below then fails. Thread-safe. */
bool cqrs__crypto_ready(void);

/* `n` random bytes into `out`; false: no randomness. */
bool cqrs__crypto_random(void *out, size_t n);

/* Encrypts `len` bytes of `msg` into `out` (room for CQRS__NONCE_BYTES +
 * len + CQRS__TAG_BYTES: a fresh nonce, then ciphertext and tag), binding
 * `ad` (ad_len bytes). False: not initialised. */
bool cqrs__crypto_seal(const uint8_t key[CQRS__KEY_BYTES], const void *ad, size_t ad_len, const void *msg, size_t len,
                       uint8_t *out);

/* Decrypts what cqrs__crypto_seal wrote (`len` bytes of `in`, nonce first)
 * into `out` (room for len - CQRS__NONCE_BYTES - CQRS__TAG_BYTES bytes).
 * False: too short, not initialised, or the tag does not verify (another
 * key, another `ad`, altered bytes). */
bool cqrs__crypto_open(const uint8_t key[CQRS__KEY_BYTES], const void *ad, size_t ad_len, const uint8_t *in,
                       size_t len, uint8_t *out);

/* A short public name of a key (BLAKE2b of it, keyed by a constant), to say
 * which master key wrapped a data key without storing anything that helps
 * find the key. */
void cqrs__crypto_key_id(const uint8_t key[CQRS__KEY_BYTES], uint8_t id[CQRS__KEY_ID_BYTES]);

/* Overwrites `n` bytes at `p` in a way the compiler keeps. */
void cqrs__crypto_wipe(void *p, size_t n);

#endif
