/* billing-admin as a whole, the real binary against the real server: which
 * database it uses, what it refuses to run on, what it prints of a URI, how
 * it reports a failed login, its progress and its output when killed. */
#include "admin_fixture.h"

static bool contains(const adm_t *t, const char *what) { return strstr(t->out, what) || strstr(t->err, what); }

/* The base URI with `path_and_query` appended ("/db?opt=v"). */
static void uri_with(char *buf, size_t cap, const char *path_and_query) {
  const char *base = test_mongo_uri();
  snprintf(buf, cap, "%s%s", base, path_and_query);
}

static bool db_exists(adm_t *t, const char *name) {
  char **names = mongoc_client_get_database_names_with_opts(t->client, NULL, NULL);
  bool found = false;
  for (char **n = names; n && *n; n++) found |= !strcmp(*n, name);
  bson_strfreev(names);
  return found;
}

/* One default database everywhere: the samples' and the load run's "cqrs". */
static void test_default_database_is_cqrs(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  char uri[256];
  uri_with(uri, sizeof uri, "");
  adm_run_on(&t, uri, (const char *const[]){"--json", "flag", NULL});
  if (!contains(&t, "\"database\" : \"cqrs\"") && !contains(&t, "database 'cqrs'"))
    fail_msg("not the database cqrs: %s %s", t.out, t.err);
  assert_false(contains(&t, "'billing'"));
  adm_close(&t);
}

/* A database that holds none of the application's data is a wrong URI,
 * not a consistent store: refused unless --allow-empty says it is meant. */
static void test_wrong_database_refused(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t); /* t.db exists nowhere yet */
  assert_int_equal(ADM(&t, "check"), 3);
  assert_non_null(strstr(t.err, "holds none of the billing context's"));
  assert_non_null(strstr(t.err, t.db));
  assert_non_null(strstr(t.err, "--allow-empty"));
  assert_int_equal(ADM(&t, "migrate"), 3);
  assert_false(db_exists(&t, t.db)); /* nothing created there */
  assert_int_equal(ADM(&t, "flag", "mongodb_cqs_enabled", "on"), 3);
  assert_int_equal(ADM(&t, "events", "tail"), 3);
  assert_false(db_exists(&t, t.db));

  /* Asked for: an empty store is consistent, and migrate sets it up. */
  assert_int_equal(ADM(&t, "migrate", "--allow-empty", "--quiet"), 0);
  assert_true(db_exists(&t, t.db));
  /* The collections exist now, the store is still empty: check says so. */
  assert_int_equal(ADM(&t, "check"), 3);
  assert_non_null(strstr(t.err, "event store"));
  assert_non_null(strstr(t.err, "empty"));
  assert_int_equal(ADM(&t, "check", "--allow-empty"), 0);
  assert_int_equal(ADM(&t, "--allow-empty", "check"), 0);
  adm_close(&t);
}

/* Every secret a URI can carry is masked, in messages and in --json. */
static void test_secrets_masked(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  static const char *const secrets[] = {"s3cret", "hunter2", "tok3n", "misspelt9", NULL};
  const char *unreachable = "mongodb://ops:s3cret@127.0.0.1:1/x?serverSelectionTimeoutMS=300"
                            "&tlsCertificateKeyFilePassword=hunter2&authMechanism=MONGODB-AWS"
                            "&authMechanismProperties=AWS_SESSION_TOKEN:tok3n&tlsCertificateKeyPasword=misspelt9";
  for (int json = 0; json < 2; json++) {
    const char *args[] = {json ? "--json" : "check", json ? "check" : NULL, NULL};
    assert_int_equal(adm_run_on(&t, unreachable, args), 3);
    for (size_t i = 0; secrets[i]; i++) {
      if (contains(&t, secrets[i])) fail_msg("'%s' printed: %s %s", secrets[i], t.out, t.err);
    }
    assert_non_null(strstr(t.err, "mongodb://ops:***@127.0.0.1:1/x?"));
    assert_non_null(strstr(t.err, "tlsCertificateKeyFilePassword=***"));
    assert_non_null(strstr(t.err, "serverSelectionTimeoutMS=300"));
  }
  /* A server that answers: the URI the tool prints as it works. */
  char uri[512];
  snprintf(uri, sizeof uri, "%s?tls=false&tlsCertificateKeyFilePassword=hunter2&appname=ops", t.uri);
  assert_int_equal(adm_run_on(&t, uri, (const char *const[]){"migrate", "--allow-empty", NULL}), 0);
  assert_non_null(strstr(t.out, "tlsCertificateKeyFilePassword=***&appname=ops"));
  assert_int_equal(adm_run_on(&t, uri, (const char *const[]){"--json", "migrate", "--allow-empty", NULL}), 0);
  for (size_t i = 0; secrets[i]; i++) assert_false(contains(&t, secrets[i]));
  adm_close(&t);
}

static void test_login_and_usage_messages(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  /* The server answers and refuses the credentials: not "cannot reach". */
  char uri[512];
  const char *base = test_mongo_uri();
  snprintf(uri, sizeof uri, "mongodb://ops:wrong@%s/%s", base + strlen("mongodb://"), t.db);
  assert_int_equal(adm_run_on(&t, uri, (const char *const[]){"check", NULL}), 3);
  assert_non_null(strstr(t.err, "cannot log in to MongoDB"));
  assert_non_null(strstr(t.err, "as ops"));
  assert_null(strstr(t.err, "cannot reach"));
  assert_null(strstr(t.err, "wrong"));
  /* --uri with nothing after it. */
  assert_int_equal(adm_run_on(&t, NULL, (const char *const[]){"--uri", NULL}), 2);
  assert_non_null(strstr(t.err, "--uri needs a value"));
  assert_int_equal(adm_run_on(&t, NULL, (const char *const[]){"check", "--uri", NULL}), 2);
  assert_non_null(strstr(t.err, "needs a value"));
  adm_close(&t);
}

/* check and a re-run migrate say how far they are on stderr. */
static void test_progress_on_stderr(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  assert_int_equal(ADM(&t, "gen-legacy", "300", "--customers", "30"), 0);
  assert_int_equal(ADM(&t, "migrate", "--quiet"), 0);
  assert_int_equal(ADM(&t, "check"), 0);
  assert_non_null(strstr(t.err, "check: events"));
  assert_non_null(strstr(t.err, "check: billing_queries"));
  assert_non_null(strstr(t.err, "100.0%"));
  assert_int_equal(ADM(&t, "check", "--repair"), 0);
  assert_non_null(strstr(t.err, "check: events"));
  assert_int_equal(ADM(&t, "migrate", "--quiet"), 0); /* a re-run: reads the legacy collection again */
  assert_non_null(strstr(t.err, "migrate: legacy numbers"));
  adm_close(&t);
}

/* What was printed before a kill is in the file (stdout line-buffered). */
static void test_output_survives_a_kill(void **state) {
  (void)state;
  NEED_MONGO();
  adm_t t;
  adm_open(&t);
  assert_int_equal(ADM(&t, "gen-legacy", "3000", "--customers", "200"), 0);
  char out[64], err[64];
  snprintf(out, sizeof out, "/tmp/adm_lout_%d", (int)getpid());
  snprintf(err, sizeof err, "/tmp/adm_lerr_%d", (int)getpid());
  const char *argv[] = {"--uri", t.uri, "migrate", "--batch", "10", NULL};
  pid_t pid = adm_spawn(&t, NULL, argv, out, err);
  /* Once the first batch is reported on stderr, the step-1 line was printed. */
  char buf[4096] = "";
  for (int i = 0; i < 6000 && !strstr(buf, "migrate ["); i++) {
    uv_sleep(10);
    FILE *f = fopen(err, "r");
    if (!f) continue;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
  }
  assert_non_null(strstr(buf, "migrate ["));
  kill(pid, SIGKILL);
  adm_wait(&t, pid, out, err);
  assert_non_null(strstr(t.out, "step 1: collections and indexes ready"));
  adm_close(&t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_default_database_is_cqrs),
      cmocka_unit_test(test_wrong_database_refused),
      cmocka_unit_test(test_secrets_masked),
      cmocka_unit_test(test_login_and_usage_messages),
      cmocka_unit_test(test_progress_on_stderr),
      cmocka_unit_test(test_output_survives_a_kill),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
