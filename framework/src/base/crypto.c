/* libsodium behind the few calls libcqrs needs (base/crypto-private.h). */
#include <pthread.h>
#include <sodium.h>

#include "base/crypto-private.h"

_Static_assert(CQRS__KEY_BYTES == crypto_aead_xchacha20poly1305_ietf_KEYBYTES, "key size");
_Static_assert(CQRS__NONCE_BYTES == crypto_aead_xchacha20poly1305_ietf_NPUBBYTES, "nonce size");
_Static_assert(CQRS__TAG_BYTES == crypto_aead_xchacha20poly1305_ietf_ABYTES, "tag size");

static pthread_once_t once = PTHREAD_ONCE_INIT;
static bool ready;

static void init(void) { ready = sodium_init() >= 0; }

bool cqrs__crypto_ready(void) {
  pthread_once(&once, init);
  return ready;
}

bool cqrs__crypto_random(void *out, size_t n) {
  if (!cqrs__crypto_ready()) return false;
  randombytes_buf(out, n);
  return true;
}

bool cqrs__crypto_seal(const uint8_t key[CQRS__KEY_BYTES], const void *ad, size_t ad_len, const void *msg, size_t len,
                       uint8_t *out) {
  if (!cqrs__crypto_ready()) return false;
  randombytes_buf(out, CQRS__NONCE_BYTES);
  unsigned long long clen;
  return crypto_aead_xchacha20poly1305_ietf_encrypt(out + CQRS__NONCE_BYTES, &clen, msg, len, ad, ad_len, NULL, out,
                                                    key) == 0;
}

bool cqrs__crypto_open(const uint8_t key[CQRS__KEY_BYTES], const void *ad, size_t ad_len, const uint8_t *in,
                       size_t len, uint8_t *out) {
  if (len < CQRS__NONCE_BYTES + CQRS__TAG_BYTES || !cqrs__crypto_ready()) return false;
  unsigned long long mlen;
  return crypto_aead_xchacha20poly1305_ietf_decrypt(out, &mlen, NULL, in + CQRS__NONCE_BYTES,
                                                    len - CQRS__NONCE_BYTES, ad, ad_len, in, key) == 0;
}

void cqrs__crypto_key_id(const uint8_t key[CQRS__KEY_BYTES], uint8_t id[CQRS__KEY_ID_BYTES]) {
  static const unsigned char label[crypto_generichash_KEYBYTES] = "libcqrs master key id, v1";
  crypto_generichash(id, CQRS__KEY_ID_BYTES, key, CQRS__KEY_BYTES, label, sizeof label);
}

void cqrs__crypto_wipe(void *p, size_t n) { sodium_memzero(p, n); }
