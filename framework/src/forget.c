/* cqrs_forget: a command of the framework's own, whose handler forgets a
 * subject's key and records cqrs.forgotten on the subject's own stream
 * (cqrs.subject/<id>), under a reserved id derived from the subject.
 * Registered on every dispatcher through the command
 * port, like a process manager's input: it is in no registry. */
#include "forget-private.h"

static const cqrs_field_t forget_fields[] = {CQRS_STRING(cqrs_forgotten_t, subject, "subject", CQRS_F_REQUIRED),
                                             CQRS_FIELDS_END};
static const cqrs_command_type_t forget_type = {.name = "cqrs.forget",
                                                .payload_size = sizeof(cqrs_forgotten_t),
                                                .fields = forget_fields};

/* Forgetting a forgotten subject again deletes nothing more and records
 * nothing more: the stream says it was. */
static cqrs_code_t handle_forget(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  CQRS__UNUSED(data);
  const cqrs_forgotten_t *f = cqrs_command_payload(cmd);
  cqrs_aggregate_t *agg;
  cqrs_code_t rc = cqrs_context_load(ctx, &cqrs_subject_type, f->subject, &agg, err);
  if (!rc) rc = cqrs_context_forget(ctx, f->subject, err);
  if (rc || ((const cqrs_forgotten_t *)cqrs_aggregate_state_const(agg))->subject[0]) return rc;
  return cqrs_aggregate_raise(agg, &cqrs_forgotten_event_type, f, err);
}

cqrs_code_t cqrs__forget_start(cqrs__runtime_t *rt, cqrs_error_t *err) {
  return rt->command.handle(rt->command.self, &forget_type, handle_forget, NULL, 0, err);
}

cqrs_code_t cqrs_forget(cqrs_dispatcher_t *d, const char *subject, cqrs_done_cb done, void *data) {
  if (!d || cqrs__check_str(subject, CQRS_ID_MAX, "subject", NULL)) return CQRS_EINVAL;
  cqrs_forgotten_t f;
  memset(&f, 0, sizeof f);
  memcpy(f.subject, subject, strlen(subject) + 1);
  cqrs_command_t *cmd;
  char id[CQRS_ID_MAX];
  cqrs_code_t rc = cqrs_id_derive(id, "~cqrs.forget", subject, NULL);
  if (!rc) rc = cqrs_command_new(&forget_type, &f, &cmd, NULL);
  if (!rc && (rc = cqrs_command_set_id(cmd, id, NULL))) cqrs_command_destroy(cmd);
  return rc ? rc : d->command.send(d->command.self, cmd, done, data);
}
