/* Handlers that call out (dispatcher.h, cqrs_dispatcher_register_call): a
 * request whose handler is a call is started on the loop thread and parked
 * (still pending, holding no thread); cqrs_call_complete or cqrs_call_fail,
 * from any thread, hands it back under the runtime's lock, and the drain
 * runs its decide as any handler runs, or finishes it in failure. */
#include "command/command-private.h"

/* A call is its request. */
static request_t *request_of(cqrs_call_t *call) { return (request_t *)call; }

bool cqrs__call_start(cqrs__commands_t *c, request_t *r) {
  cqrs_error_t *err = &r->result.error;
  r->call_state = CALL_OUT;
  if (c->calls_out++ == 0 && !c->keep_alive) uv_ref((uv_handle_t *)&c->async); /* until it comes back */
  cqrs_code_t rc = r->handler->start((cqrs_call_t *)r, r->cmd, r->handler->data, err);
  if (rc == CQRS_OK) return true;
  /* Refused at once: the call was not made, nothing will complete it. */
  uv_mutex_lock(&c->rt->lock);
  bool out = r->call_state == CALL_OUT; /* `start` may have completed it before failing */
  r->call_state = CALL_BACK;
  uv_mutex_unlock(&c->rt->lock);
  if (!out) return true; /* it comes back through the drain, which finishes it */
  c->calls_out--;
  if (err->code != rc) cqrs_error_set(err, rc, "call of %s refused: %s", r->cmd->type->name, cqrs_code_name(rc));
  cqrs__request_finish(r);
  return true;
}

/* Hands a call back to its loop: its reply or its failure is set. */
static cqrs_code_t hand_back(request_t *r, bson_t *reply, const cqrs_error_t *error) {
  cqrs__commands_t *c = r->c;
  cqrs__runtime_t *rt = c->rt;
  uv_mutex_lock(&rt->lock);
  if (r->call_state != CALL_OUT) {
    uv_mutex_unlock(&rt->lock);
    return CQRS_ESTATE;
  }
  r->call_state = CALL_BACK;
  r->reply = reply;
  if (error) {
    r->result.error = *error;
    if (r->result.error.code == CQRS_OK)
      cqrs_error_set(&r->result.error, CQRS_EHANDLER, "call of %s failed", r->cmd->type->name);
  }
  r->next = NULL;
  if (c->called_tail) {
    c->called_tail->next = r;
  } else {
    c->called_head = r;
  }
  c->called_tail = r;
  uv_async_send(&c->async);
  uv_mutex_unlock(&rt->lock);
  return CQRS_OK;
}

cqrs_code_t cqrs_call_complete(cqrs_call_t *call, const bson_t *reply) {
  if (!call) return CQRS_EINVAL;
  bson_t *copy = reply ? bson_copy(reply) : bson_new();
  if (!copy) return CQRS_ENOMEM;
  cqrs_code_t rc = hand_back(request_of(call), copy, NULL);
  if (rc) bson_destroy(copy);
  return rc;
}

cqrs_code_t cqrs_call_fail(cqrs_call_t *call, const cqrs_error_t *error) {
  if (!call) return CQRS_EINVAL;
  cqrs_error_t e;
  if (!error || error->code == CQRS_OK) {
    cqrs_error_set(&e, CQRS_EHANDLER, "call of %s failed", request_of(call)->cmd->type->name);
    error = &e;
  }
  return hand_back(request_of(call), NULL, error);
}

const cqrs_command_t *cqrs_call_command(const cqrs_call_t *call) {
  return call ? ((const request_t *)call)->cmd : NULL;
}

void cqrs__calls_drain(cqrs__commands_t *c, request_t *back) {
  while (back) {
    request_t *r = back;
    back = r->next;
    c->calls_out--;
    if (!r->reply) {
      cqrs__request_finish(r); /* failed: its error is set */
    } else {
      cqrs__request_run_here(c, r); /* decide, with the reply */
    }
  }
}
