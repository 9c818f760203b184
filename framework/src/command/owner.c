/* Which loop owns an aggregate (several loops), and which cache keeps its
 * state: a state is kept only where no commit can pass it unseen. */
#include "command/command-private.h"

/* The loop owning aggregate `id` (every aggregate of that id, whatever its
 * type, so that a command's payload names it): the home for a share of
 * home_share / 1024 of the hashes, else one of the members evenly. */
unsigned cqrs__owner_of(const cqrs__commands_t *c, const char *id) {
  uint32_t h = 2166136261u;
  for (const char *p = id; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
  h ^= h >> 15;
  if ((h & 1023u) < c->home_share) return 0;
  return 1 + (h >> 10) % (c->nloops - 1);
}

static const cqrs__commands_t *home_of(const cqrs__commands_t *c) { return c->home ? c->home : c; }

/* The command side of loop `m` of the home `home`. */
static cqrs__commands_t *loop_of(const cqrs__commands_t *home, unsigned m) {
  return m ? home->members[m].c : (cqrs__commands_t *)home;
}

/* A member keeps only the aggregates it owns: the others change on other
 * loops, unseen by it. The home sees every commit (they all come back to
 * its loop thread), so it keeps any, but on a pool thread only its own: a
 * state loaded there could be put after a member's commit was seen. */
cqrs__cache_t *cqrs__owner_cache(const cqrs__commands_t *c, bool on_loop, const char *id) {
  if (c->home) return cqrs__owner_of(c, id) == c->index ? c->cache : NULL;
  if (c->members && !on_loop && cqrs__owner_of(c, id)) return NULL;
  return c->cache;
}

/* A commit of an aggregate another loop owns (a command naming no
 * aggregate, or another) advances the owner's cached state at once, so that
 * a state the owner loads meanwhile cannot be put over it. */
void cqrs__owner_advance(const cqrs__commands_t *c, cqrs_aggregate_t *agg) {
  unsigned m = cqrs__owner_of(c, agg->id);
  if (m == c->index) return;
  cqrs__cache_put(loop_of(home_of(c), m)->cache, agg);
}

/* Home: before the caller hears of a commit, no member keeps a state older
 * than it, should cqrs__owner_advance have found no memory (the home's own
 * copy: loops.c, when the command comes back). */
void cqrs__owner_seen_commit(const cqrs__commands_t *c, const request_t *r) {
  for (size_t i = 0; i < r->committed.len; i++) {
    const cqrs_event_t *e = r->committed.items[i];
    if (!e->envelope) continue;
    unsigned m = cqrs__owner_of(c, cqrs_event_aggregate_id(e));
    if (m && m != r->runner->index) cqrs__cache_seen(c->members[m].c->cache, e);
  }
}

/* Home: a commit the feed read from the store (another writer's, or one
 * of ours read back) drops older states of its aggregate from the home's
 * cache and from its owner's, so a member answers no command from a state
 * another writer has moved past. */
void cqrs__owner_seen(void *self, const cqrs_event_t *e) {
  cqrs__commands_t *c = self;
  cqrs__cache_seen(c->cache, e);
  if (!c->members || !e->envelope) return;
  unsigned m = cqrs__owner_of(c, e->envelope->aggregate_id);
  if (m) cqrs__cache_seen(c->members[m].c->cache, e);
}
