/* Process managers: an instance's state as its stream rebuilds it. */
#include <stdio.h>

#include "process/process-private.h"

int cqrs__process_step_index(const pm_type_t *pm, const char *name) {
  for (size_t i = 0; i < pm->nsteps; i++) {
    if (!strcmp(pm->def->steps[i].name, name)) return (int)i;
  }
  return -1;
}

static void deadline_put(pm_deadline_t *list, const char *name, int64_t at) {
  pm_deadline_t *slot = NULL;
  for (size_t i = 0; i < CQRS_PROCESS_DEADLINES_MAX; i++) {
    if (list[i].at && !strcmp(list[i].name, name)) {
      slot = &list[i];
      break;
    }
    if (!list[i].at && !slot) slot = &list[i];
  }
  if (!slot) return; /* full: refused when decided */
  if (!at) {
    if (!strcmp(slot->name, name)) memset(slot, 0, sizeof *slot);
    return;
  }
  snprintf(slot->name, sizeof slot->name, "%s", name);
  slot->at = at;
}

const pm_deadline_t *cqrs__process_deadline_find(const pm_deadline_t *list, const char *name) {
  for (size_t i = 0; i < CQRS_PROCESS_DEADLINES_MAX; i++) {
    if (list[i].at && !strcmp(list[i].name, name)) return &list[i];
  }
  return NULL;
}

void cqrs__process_apply(void *state, const cqrs_event_t *e) {
  const pm_event_type_t *t = (const pm_event_type_t *)e->type;
  pm_instance_t *in = state;
  switch (t->kind) {
    case KIND_RECEIVED: {
      const pm_received_t *r = e->payload;
      if (r->kind == IN_EVENT) {
        if (!in->started) {
          in->started = true;
          in->first_position = r->position;
          memcpy(in->correlation, r->correlation, sizeof in->correlation);
        }
        if (r->position > in->last_position) in->last_position = r->position;
      } else if (r->kind == IN_STEP) {
        int i = cqrs__process_step_index(t->pm, r->key);
        if (i >= 0 && in->steps[i].count == r->occurrence) in->steps[i].status = r->status;
      } else if (r->kind == IN_DEADLINE) {
        deadline_put(in->deadlines, r->key, 0);
      }
      break;
    }
    case KIND_STATE:
      memcpy(in->user, e->payload, t->pm->def->state_size);
      break;
    case KIND_DEADLINE: {
      const pm_deadline_t *dl = e->payload;
      deadline_put(in->deadlines, dl->name, dl->at);
      break;
    }
    case KIND_ENDED:
      in->ended = true;
      break;
    default: {
      pm_step_state_t *st = &in->steps[t->step];
      st->count++;
      st->status = STEP_SENT;
      cqrs_event_unref(st->sent);
      st->sent = cqrs_event_ref(e);
    }
  }
}

void cqrs__process_state_cleanup(void *state) {
  pm_instance_t *in = state;
  for (size_t i = 0; i < CQRS_PROCESS_STEPS_MAX; i++) cqrs_event_unref(in->steps[i].sent);
}
