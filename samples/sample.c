#include "sample.h"

#ifdef CQRS_SAMPLE_HTTP
#include <cqrs/http.h>
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(const char *name, FILE *to) {
  fprintf(to,
          "usage: %s [--mongo URI [--reset]] [--cqs MODE] [--metrics-port N [--linger S]]\n"
          "  Runs the %s flow of the billing sample, in memory by default.\n"
          "  --mongo URI   use a MongoDB server (URI also read from MONGODB_URI when the flag has none);\n"
          "                the database is the URI's, else \"cqrs\"\n"
          "  --reset       drop that database first (the sample expects to start empty)\n"
          "  --metrics-port N  serve GET /metrics on 127.0.0.1:N (0: any free port); with --mongo,\n"
          "                announce it in the collection cqrs_instances\n"
          "  --linger S    keep serving /metrics S seconds after the flow\n"
          "  --cqs MODE    set the flag mongodb_cqs_enabled first (off, shadow, PERCENT, on); invoice\n"
          "                reads (the query invoice.read) go where it says, legacy or CQS\n",
          name, name);
}

/* A whole decimal number in [lo, hi], or -1. */
static long number_arg(const char *v, long lo, long hi) {
  char *end;
  long n = v ? strtol(v, &end, 10) : -1;
  return v && *v && !*end && n >= lo && n <= hi ? n : -1;
}

static int metrics_open(sample_t *s, const char *mongo) {
#ifdef CQRS_SAMPLE_HTTP
  cqrs_error_t err;
  cqrs_http_metrics_t *h;
  if (cqrs_metrics_new(&s->metrics, &err) || cqrs_metrics_attach(s->metrics, s->d, &err) ||
      cqrs_metrics_attach_queries(s->metrics, s->q, &err) ||
      cqrs_http_metrics_start(&s->loop, s->metrics, NULL, (uint16_t)s->metrics_port, &h, &err)) {
    fprintf(stderr, "%s: cannot serve metrics: %s\n", s->name, err.message);
    return 3;
  }
  s->http = h;
  char endpoint[64];
  snprintf(endpoint, sizeof endpoint, "http://127.0.0.1:%u/metrics", (unsigned)cqrs_http_metrics_port(h));
  printf("%s: metrics at %s\n", s->name, endpoint);
  fflush(stdout);
  return mongo ? sample_mongo_announce(s, mongo, endpoint) : 0;
#else
  (void)mongo;
  fprintf(stderr, "%s: this build has no /metrics endpoint (needs libmicrohttpd, -DCQRS_HTTP=ON)\n", s->name);
  return 2;
#endif
}

static void linger_done(uv_timer_t *t) { uv_close((uv_handle_t *)t, NULL); }

static void metrics_close(sample_t *s) {
#ifdef CQRS_SAMPLE_HTTP
  if (s->http && s->linger_s) {
    printf("%s: flow done; serving /metrics %u s more\n", s->name, s->linger_s);
    fflush(stdout);
    uv_timer_t t;
    uv_timer_init(&s->loop, &t);
    uv_timer_start(&t, linger_done, (uint64_t)s->linger_s * 1000, 0);
    uv_run(&s->loop, UV_RUN_DEFAULT);
  }
  if (s->http) cqrs_http_metrics_close(s->http, NULL, NULL);
  s->http = NULL;
#endif
  if (s->instance) sample_mongo_unannounce(s);
}

int sample_open(sample_t *s, const char *name, int argc, char **argv) {
  memset(s, 0, sizeof *s);
  s->name = name;
  s->metrics_port = -1;
  const char *mongo = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(name, stdout);
      return 1;
    } else if (!strcmp(argv[i], "--mongo")) {
      if (i + 1 < argc && strncmp(argv[i + 1], "--", 2)) {
        mongo = argv[++i];
      } else if (getenv("MONGODB_URI") && *getenv("MONGODB_URI")) {
        mongo = getenv("MONGODB_URI");
      } else {
        fprintf(stderr, "%s: --mongo needs a URI (or MONGODB_URI in the environment)\n", name);
        return 2;
      }
    } else if (!strcmp(argv[i], "--reset")) {
      s->reset = true;
    } else if (!strcmp(argv[i], "--cqs")) {
      billing_cqs_flag_t f;
      if (i + 1 == argc || billing_cqs_flag_parse(argv[i + 1], &f, NULL)) {
        fprintf(stderr, "%s: --cqs needs off, shadow, on or a percentage 0..100\n", name);
        return 2;
      }
      s->cqs_mode = argv[++i];
    } else if (!strcmp(argv[i], "--metrics-port") || !strcmp(argv[i], "--linger")) {
      bool port = !strcmp(argv[i], "--metrics-port");
      long n = number_arg(i + 1 < argc ? argv[i + 1] : NULL, 0, port ? 65535 : 86400);
      if (n < 0) {
        fprintf(stderr, "%s: %s needs a number (%s)\n", name, argv[i], port ? "0..65535" : "seconds");
        return 2;
      }
      i++;
      if (port) s->metrics_port = (int)n;
      else s->linger_s = (unsigned)n;
    } else {
      fprintf(stderr, "%s: unknown argument '%s'\n", name, argv[i]);
      usage(name, stderr);
      return 2;
    }
  }
  uv_loop_init(&s->loop);
  cqrs_error_t err;
  if (cqrs_registry_new(&s->reg, &err) || billing_register(s->reg, &err)) {
    fprintf(stderr, "%s: cannot register the billing types: %s\n", name, err.message);
    return 3;
  }
  if (mongo) {
    int rc = sample_mongo_open(s, mongo);
    if (rc) return rc;
  } else {
    if (cqrs_memory_store_new(&s->store, &err) || cqrs_memory_readmodel_new(&s->rm, &err) ||
        cqrs_memory_checkpoints_new(&s->cp, &err) || cqrs_memory_keys_new(NULL, &s->keys, &err) ||
        cqrs_store_set_keys(s->store, s->keys, s->reg, &err)) {
      fprintf(stderr, "%s: %s\n", name, err.message);
      return 3;
    }
  }
  if (!s->store || !s->rm || !s->cp) {
    fprintf(stderr, "%s: out of memory\n", name);
    return 3;
  }
  if (s->reset && !mongo) {
    fprintf(stderr, "%s: --reset goes with --mongo\n", name);
    return 2;
  }
  cqrs_dispatcher_options_t opts;
  cqrs_dispatcher_options_init(&opts);
  opts.dead_letter_info = s->dead_letter_info;
  opts.dead_letter_data = s->dead_letter_data;
  if (cqrs_dispatcher_new(&s->loop, s->reg, s->store, &opts, &s->d, &err) ||
      billing_start(s->d, s->rm, s->cp, NULL, &s->billing, &err)) {
    fprintf(stderr, "%s: cannot start: %s\n", name, err.message);
    return 3;
  }
  if (s->cqs_mode) {
    billing_cqs_flag_t f;
    billing_cqs_flag_parse(s->cqs_mode, &f, NULL);
    if (billing_cqs_flag_save(s->rm, &f, &err)) {
      fprintf(stderr, "%s: cannot set %s: %s\n", name, BILLING_CQS_FLAG, err.message);
      return 3;
    }
  }
  /* The flag is read again at most once a second. */
  if (cqrs_queries_new(s->rm, &s->q, &err) || billing_register_queries(s->q, NULL, &err) ||
      !(s->flags = billing_flags_new(s->rm, 1000)) || billing_register_flagged_queries(s->q, s->flags, &err)) {
    fprintf(stderr, "%s: cannot register the queries\n", name);
    return 3;
  }
  if (s->metrics_port >= 0) {
    int rc = metrics_open(s, mongo);
    if (rc) return rc;
  }
  printf("%s: billing on %s\n", name, mongo ? "MongoDB" : "the in-memory store");
  return 0;
}

int sample_close(sample_t *s) {
  metrics_close(s);
  if (s->d) {
    cqrs_dispatcher_close(s->d, NULL, NULL);
    uv_run(&s->loop, UV_RUN_DEFAULT);
  }
  int rc = uv_loop_close(&s->loop);
  if (rc) fprintf(stderr, "%s: the loop did not close cleanly: %s\n", s->name, uv_strerror(rc));
  cqrs_queries_destroy(s->q);
  billing_flags_destroy(s->flags);
  cqrs_metrics_destroy(s->metrics);
  billing_destroy(s->billing);
  if (s->backend) {
    sample_mongo_close(s);
  } else {
    cqrs_checkpoints_destroy(s->cp);
    cqrs_readmodel_destroy(s->rm);
    cqrs_store_destroy(s->store);
    cqrs_keys_destroy(s->keys);
  }
  cqrs_registry_destroy(s->reg);
  return s->failures ? 1 : rc ? 1 : 0;
}

typedef struct pending {
  sample_t *s;
  const char *label;
  const char *expect;
  bool done;
} pending_t;

static void on_done(const cqrs_result_t *r, void *data) {
  pending_t *p = data;
  p->done = true;
  const char *got = r->error.code != CQRS_OK ? r->error.name : r->duplicate ? SAMPLE_DUPLICATE : "";
  bool as_expected = !strcmp(got, p->expect);
  if (r->error.code == CQRS_OK) {
    const char *extra = "";
    char buf[64] = "";
    bson_iter_t it;
    if (r->value && bson_iter_init_find(&it, r->value, "number") && BSON_ITER_HOLDS_UTF8(&it)) {
      snprintf(buf, sizeof buf, " as %s", bson_iter_utf8(&it, NULL));
      extra = buf;
    }
    printf("  %-44s ok%s%s\n", p->label, extra, r->duplicate ? " (already done)" : "");
  } else {
    printf("  %-44s %s: %s\n", p->label, r->error.code == CQRS_EREJECTED ? "refused" : "error", r->error.message);
  }
  if (!as_expected) {
    const char *should = !strcmp(p->expect, SAMPLE_DUPLICATE) ? "been answered as already done"
                         : *p->expect                         ? "been refused as "
                                                              : "succeeded";
    fprintf(stderr, "%s: '%s' should have %s%s\n", p->s->name, p->label, should,
            strcmp(p->expect, SAMPLE_DUPLICATE) ? p->expect : "");
    p->s->failures++;
  }
}

void sample_send(sample_t *s, const char *label, const cqrs_command_type_t *type, const void *payload,
                 const char *expect) {
  cqrs_command_t *cmd;
  cqrs_error_t err;
  if (cqrs_command_new(type, payload, &cmd, &err)) {
    printf("  %-44s invalid: %s\n", label, err.message);
    if (strcmp(expect, err.name)) s->failures++;
    return;
  }
  pending_t p = {s, label, expect, false};
  if (cqrs_dispatcher_send(s->d, cmd, on_done, &p)) {
    fprintf(stderr, "%s: cannot send %s\n", s->name, label);
    s->failures++;
    return;
  }
  uv_run(&s->loop, UV_RUN_DEFAULT); /* returns once the command and what it set off are done */
  if (!p.done) s->failures++;
}

bool sample_query(sample_t *s, const char *name, const bson_t *params, bson_t *out) {
  bson_init(out);
  cqrs_error_t err;
  if (cqrs_queries_run(s->q, name, params, out, &err)) {
    fprintf(stderr, "%s: query %s failed: %s\n", s->name, name, err.message);
    s->failures++;
    return false;
  }
  return true;
}

cqrs_code_t sample_query_maybe(sample_t *s, const char *name, const bson_t *params, bson_t *out) {
  bson_init(out);
  cqrs_error_t err;
  cqrs_code_t rc = cqrs_queries_run(s->q, name, params, out, &err);
  if (rc && rc != CQRS_ENOT_FOUND) {
    fprintf(stderr, "%s: query %s failed: %s\n", s->name, name, err.message);
    s->failures++;
  }
  return rc;
}

const char *sample_str(const bson_t *doc, const char *path) {
  bson_iter_t it, v;
  if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &v) && BSON_ITER_HOLDS_UTF8(&v))
    return bson_iter_utf8(&v, NULL);
  return "?";
}

int64_t sample_int(const bson_t *doc, const char *path, int64_t dflt) {
  bson_iter_t it, v;
  if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &v) &&
      (BSON_ITER_HOLDS_INT64(&v) || BSON_ITER_HOLDS_INT32(&v)))
    return bson_iter_as_int64(&v);
  return dflt;
}

void sample_money(char *buf, size_t cap, int64_t amount, const char *currency) {
  const char *sign = amount < 0 ? "-" : "";
  uint64_t v = amount < 0 ? (uint64_t)0 - (uint64_t)amount : (uint64_t)amount;
  snprintf(buf, cap, "%s%llu.%02llu %s", sign, (unsigned long long)(v / 100), (unsigned long long)(v % 100), currency);
}

cqrs_money_t sample_eur(int64_t cents) {
  cqrs_money_t m;
  cqrs_money_set(&m, cents, "EUR", NULL);
  return m;
}
