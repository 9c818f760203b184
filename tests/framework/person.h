/* A small domain with personal data for the framework's privacy tests: a
 * person (name, e-mail, birth year personal; the aggregate id is the
 * subject), notes about a person from elsewhere (the subject a field of the
 * payload), a snapshot every two events with the personal state sealed. */
#ifndef TEST_PERSON_H
#define TEST_PERSON_H

#include <cqrs/backend.h>

typedef struct person_registered {
  char name[32];
  char email[64];
  int64_t born;
  char city[24]; /* not personal */
} person_registered_t;

typedef struct person_noted {
  char person_id[CQRS_ID_MAX]; /* the subject */
  char note[48];               /* personal */
} person_noted_t;

typedef struct person_state {
  bool registered;
  char name[32];
  char email[64];
  int64_t events;
} person_state_t;

extern const cqrs_event_type_t person_registered, person_noted;
extern const cqrs_aggregate_type_t person_type;

/* A registry with the person types (and cqrs.forgotten, which the person
 * applies: it clears the name and e-mail). */
cqrs_registry_t *person_registry(void);

/* Loads person `id` from `store`, raises a registration and saves it under
 * command id `cmd`; returns the code of the save. */
cqrs_code_t person_register(cqrs_store_t *store, const char *id, const char *cmd, const char *name,
                            const char *email, int64_t born, cqrs_error_t *err);

/* Whether `len` bytes at `hay` contain the string `needle`. */
bool person_has_bytes(const void *hay, size_t len, const char *needle);

/* A key store (cqrs_keys_ops_t) whose records the test can see and break:
 * counts its gets, fails every call with CQRS_ESTORE while `down`. Several
 * cqrs_keys_t may share one (cqrs_keys_new over test_keys_ops and `tk`,
 * with a destroy that frees nothing). */
typedef struct test_keys test_keys_t;
test_keys_t *test_keys_new(void);
void test_keys_free(test_keys_t *tk);
cqrs_keys_t *test_keys_view(test_keys_t *tk, const cqrs_keys_options_t *opts);
void test_keys_down(test_keys_t *tk, bool down);
int test_keys_gets(const test_keys_t *tk);
/* The stored record of `subject` (false: none). */
bool test_keys_record(test_keys_t *tk, const char *subject, cqrs_key_record_t *out);

#endif
