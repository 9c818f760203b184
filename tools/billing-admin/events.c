/* events: a look at the event store. */
#include <signal.h>
#include <string.h>
#include <time.h>

#include "admin.h"

static const char usage[] =
    "usage: billing-admin events tail [-n N] [--follow] [--json]\n"
    "       billing-admin events stream TYPE ID [--json]\n"
    "tail: the last N events of the store (default 20), in position order; --follow keeps printing\n"
    "new ones until interrupted. stream: every event of one aggregate (TYPE: account, transfer,\n"
    "customer, invoice, invoice_book). --json: one event per line as the store's JSON.\n"
    "Exit: 0, 1 no such stream, 2 usage, 3 server error.\n";

typedef struct printer {
  bool json;
  int64_t last, count;
} printer_t;

/* `in` with each redacted personal value (a binary of the user subtype:
 * cqrs_event_to_bson never writes one in clear) shown as "[personal]". */
static void readable(const bson_t *in, bson_t *out) {
  bson_iter_t it;
  if (!bson_iter_init(&it, in)) return;
  while (bson_iter_next(&it)) {
    const char *k = bson_iter_key(&it);
    if (BSON_ITER_HOLDS_BINARY(&it)) {
      bson_subtype_t sub;
      uint32_t len;
      const uint8_t *b;
      bson_iter_binary(&it, &sub, &len, &b);
      if (sub == BSON_SUBTYPE_USER) {
        BSON_APPEND_UTF8(out, k, "[personal]");
        continue;
      }
    } else if (BSON_ITER_HOLDS_DOCUMENT(&it)) {
      uint32_t len;
      const uint8_t *d;
      bson_iter_document(&it, &len, &d);
      bson_t child_in, child;
      if (bson_init_static(&child_in, d, len) && BSON_APPEND_DOCUMENT_BEGIN(out, k, &child)) {
        readable(&child_in, &child);
        bson_append_document_end(out, &child);
        continue;
      }
    }
    bson_append_iter(out, k, -1, &it);
  }
}

static bool print_event(const cqrs_event_t *e, void *data) {
  printer_t *p = data;
  bson_t doc = BSON_INITIALIZER;
  cqrs_event_to_bson(e, &doc, NULL);
  if (p->json) {
    admin_print_json(stdout, &doc);
  } else {
    time_t secs = (time_t)(e->timestamp / 1000);
    struct tm tm;
    char when[32];
    gmtime_r(&secs, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    bson_iter_t it;
    char *payload = NULL;
    if (bson_iter_init_find(&it, &doc, "data") && BSON_ITER_HOLDS_DOCUMENT(&it)) {
      uint32_t len;
      const uint8_t *d;
      bson_iter_document(&it, &len, &d);
      bson_t data_doc, shown = BSON_INITIALIZER;
      if (bson_init_static(&data_doc, d, len)) {
        readable(&data_doc, &shown);
        payload = bson_as_relaxed_extended_json(&shown, NULL);
      }
      bson_destroy(&shown);
    }
    printf("%8lld %s.%03dZ %-22s %s/%s v%lld %s\n", (long long)e->position, when, (int)(e->timestamp % 1000),
           e->type->name, cqrs_event_aggregate_type(e), cqrs_event_aggregate_id(e), (long long)e->version,
           payload ? payload : "{}");
    bson_free(payload);
  }
  bson_destroy(&doc);
  p->last = e->position;
  p->count++;
  return true;
}

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

int admin_events(admin_t *a, int argc, char **argv) {
  static const char *const specs[] = {"n=", "follow", NULL};
  admin_args_t args;
  int rc = admin_parse(a, argc, argv, specs, usage, 1, 3, &args);
  if (rc) return rc < 0 ? ADMIN_OK : rc;
  printer_t p = {a->json, 0, 0};
  cqrs_error_t err;
  if (!strcmp(args.pos[0], "tail") && args.npos == 1) {
    long long n = 20;
    if (args.vals[0] && admin_int("-n", args.vals[0], 1, 1000000, &n)) return ADMIN_USAGE;
    if ((rc = admin_connect(a, NULL))) return rc;
    int64_t head;
    if (cqrs_store_head(a->store, &head, &err)) return admin_cqrs_error("read the head", &err);
    int64_t from = head - n + 1 > 1 ? head - n + 1 : 1;
    if (cqrs_store_read_all(a->store, from, (size_t)n, print_event, &p, &err)) return admin_cqrs_error("read the store", &err);
    if (!args.vals[1]) return ADMIN_OK;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (!p.last) p.last = head;
    while (!stop) {
      fflush(stdout);
      uv_sleep(500);
      if (cqrs_store_read_all(a->store, p.last + 1, 10000, print_event, &p, &err)) return admin_cqrs_error("read the store", &err);
    }
    return ADMIN_OK;
  }
  if (!strcmp(args.pos[0], "stream") && args.npos == 3) {
    if ((rc = admin_connect(a, NULL))) return rc;
    if (!cqrs_registry_aggregate(a->reg, args.pos[1])) {
      admin_err("events: unknown aggregate type '%s' (account, transfer, customer, invoice, invoice_book)", args.pos[1]);
      return ADMIN_USAGE;
    }
    if (cqrs_store_read_stream(a->store, args.pos[1], args.pos[2], 1, print_event, &p, &err))
      return admin_cqrs_error("read the stream", &err);
    if (!p.count && !a->json) printf("no events in %s/%s\n", args.pos[1], args.pos[2]);
    return p.count ? ADMIN_OK : ADMIN_PROBLEMS;
  }
  admin_err("events: expected `tail` or `stream TYPE ID` (see events --help)");
  return ADMIN_USAGE;
}
