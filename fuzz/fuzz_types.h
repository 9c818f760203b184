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

/* Every type above and the upcasters of fz.done (1 -> 2 -> 3). Built once. */
const cqrs_registry_t *fz_registry(void);

/* Aborts (a finding) when `s`, at most `cap` bytes, is not a NUL-terminated
 * valid UTF-8 string: the decoders promise that much. */
void fz_check_string(const char *what, const char *s, size_t cap);
/* The same for every string member of a decoded payload. */
void fz_check_payload(const fz_payload_t *p);

/* Aborts with a message: the harness found a broken promise. */
#define FZ_FAIL(...)                  \
  do {                                \
    fprintf(stderr, "FUZZ: " __VA_ARGS__); \
    fputc('\n', stderr);              \
    abort();                          \
  } while (0)

#endif
