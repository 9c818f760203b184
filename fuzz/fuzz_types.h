/* The types the fuzz harnesses decode into: every field kind, a nested
 * document, ranges, an event with three schema versions and its upcasters,
 * an aggregate with snapshots. */
#ifndef FUZZ_TYPES_H
#define FUZZ_TYPES_H

#include <cqrs/cqrs.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct fz_place {
  char city[12];
  int32_t zip;
} fz_place_t;

typedef struct fz_payload {
  char name[16];
  int64_t count;
  int32_t small;
  bool flag;
  int64_t when;
  cqrs_money_t price;
  fz_place_t where;
  char note[8];
  fz_place_t stops[3]; /* collections: documents and strings */
  int32_t nstops;
  char tags[2][6];
  int32_t ntags;
} fz_payload_t;

typedef struct fz_state {
  char name[16];
  int64_t total;
  int32_t seen;
  bool open;
} fz_state_t;

extern const cqrs_field_t fz_payload_fields[];
extern const cqrs_command_type_t fz_command;     /* "fz.do", payload fz_payload_t */
extern const cqrs_event_type_t fz_done;          /* "fz.done", schema 3, fz_payload_t */
extern const cqrs_event_type_t fz_counted;       /* "fz.counted", {count} as fz_payload_t */
extern const cqrs_aggregate_type_t fz_aggregate; /* "fz", snapshots of fz_state_t every 4 events */

/* Personal data (cqrs/personal.h): name, e-mail, birth year, a home and
 * trips are personal, the subject is the owner (the aggregate id). Schema
 * 1 called the e-mail "mail". */
typedef struct fz_personal {
  char name[16];
  char email[24];
  int64_t born;
  fz_place_t home;
  char city[12]; /* not personal */
  fz_place_t trips[2];
  int32_t ntrips;
} fz_personal_t;
extern const cqrs_field_t fz_personal_fields[];
extern const cqrs_event_type_t fz_personal; /* "fz.personal", schema 2 */
/* A key store with fixed contents, the same in every run: subject "s1"
 * has the key FZ_KEY (32 bytes of 0x5a), "s2" was forgotten, no other
 * subject has a key (and none is kept if made). Built once. */
cqrs_keys_t *fz_keys(void);
/* The event id the sealed harness and its seeds use: the associated data. */
#define FZ_EVENT_ID "0123456789abcdef01234567"

/* Every type above and the upcasters of fz.done (1 -> 2 -> 3). Built once. */
const cqrs_registry_t *fz_registry(void);

/* Aborts (a finding) when `s`, at most `cap` bytes, is not a NUL-terminated
 * valid UTF-8 string: the decoders promise that much. */
void fz_check_string(const char *what, const char *s, size_t cap);
/* The same for every string member of a decoded payload. */
void fz_check_payload(const fz_payload_t *p);
void fz_check_personal(const fz_personal_t *p);

/* Aborts with a message: the harness found a broken promise. */
#define FZ_FAIL(...)                  \
  do {                                \
    fprintf(stderr, "FUZZ: " __VA_ARGS__); \
    fputc('\n', stderr);              \
    abort();                          \
  } while (0)

#endif
