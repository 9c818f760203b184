/* The customer aggregate: register, change e-mail, forget. A customer's
 * name and e-mail are personal data (docs/privacy.md): sealed with the
 * customer's own key, which customer.forget deletes. */
#include "billing-private.h"

bool billing_email_valid(const char *email) {
  if (!email) return false;
  size_t n = strnlen(email, BILLING_EMAIL_MAX);
  if (n == 0 || n >= BILLING_EMAIL_MAX) return false;
  const char *at = strchr(email, '@');
  if (!at || at == email || strchr(at + 1, '@')) return false;
  const char *dot = strrchr(at + 1, '.');
  if (!dot || dot == at + 1 || dot[1] == '\0') return false;
  for (const char *p = email; *p; p++) {
    if ((unsigned char)*p <= ' ' || *p == 0x7f) return false;
  }
  return true;
}

static const cqrs_field_t register_fields[] = {
    CQRS_STRING(billing_register_customer_t, customer_id, "customerId", CQRS_F_REQUIRED),
    CQRS_STRING(billing_register_customer_t, name, "name", CQRS_F_REQUIRED),
    CQRS_STRING(billing_register_customer_t, email, "email", CQRS_F_REQUIRED), CQRS_FIELDS_END};
static const cqrs_field_t forget_fields[] = {
    CQRS_STRING(billing_forget_customer_t, customer_id, "customerId", CQRS_F_REQUIRED), CQRS_FIELDS_END};
static const cqrs_field_t change_fields[] = {
    CQRS_STRING(billing_change_email_t, customer_id, "customerId", CQRS_F_REQUIRED),
    CQRS_STRING(billing_change_email_t, email, "email", CQRS_F_REQUIRED), CQRS_FIELDS_END};

/* The message does not quote the address: it is personal data, and errors
 * end up in logs. */
static cqrs_code_t check_email(const char *email, cqrs_error_t *err) {
  if (!billing_email_valid(email)) return cqrs_error_set(err, CQRS_EINVAL, "email is not an address");
  return CQRS_OK;
}

static cqrs_code_t validate_register(const void *payload, cqrs_error_t *err) {
  const billing_register_customer_t *c = payload;
  for (const char *p = c->name; *p; p++) {
    if ((unsigned char)*p < ' ') return cqrs_error_set(err, CQRS_EINVAL, "name holds a control character");
  }
  return check_email(c->email, err);
}

static cqrs_code_t validate_change(const void *payload, cqrs_error_t *err) {
  return check_email(((const billing_change_email_t *)payload)->email, err);
}

/* Each command runs on the loop owning its customer (dispatcher loops). */
static const char *registered_customer(const void *p) {
  return ((const billing_register_customer_t *)p)->customer_id;
}
static const char *changed_customer(const void *p) { return ((const billing_change_email_t *)p)->customer_id; }
static const char *forgotten_customer(const void *p) { return ((const billing_forget_customer_t *)p)->customer_id; }

const cqrs_command_type_t billing_register_customer = {.name = "customer.register",
                                                       .payload_size = sizeof(billing_register_customer_t),
                                                       .fields = register_fields,
                                                       .validate = validate_register,
                                                       .aggregate_id = registered_customer};
const cqrs_command_type_t billing_change_email = {.name = "customer.change_email",
                                                  .payload_size = sizeof(billing_change_email_t),
                                                  .fields = change_fields,
                                                  .validate = validate_change,
                                                  .aggregate_id = changed_customer};
const cqrs_command_type_t billing_forget_customer = {.name = "customer.forget",
                                                     .payload_size = sizeof(billing_forget_customer_t),
                                                     .fields = forget_fields,
                                                     .aggregate_id = forgotten_customer};


static const cqrs_field_t registered_fields[] = {
    CQRS_STRING(billing_customer_registered_t, name, "name", CQRS_F_REQUIRED | CQRS_F_PERSONAL),
    CQRS_STRING(billing_customer_registered_t, email, "email", CQRS_F_REQUIRED | CQRS_F_PERSONAL), CQRS_SUBJECT_OWNER,
    CQRS_FIELDS_END};
static const cqrs_field_t changed_fields[] = {
    CQRS_STRING(billing_email_changed_t, email, "email", CQRS_F_REQUIRED | CQRS_F_PERSONAL),
    CQRS_STRING(billing_email_changed_t, previous, "previous", CQRS_F_PERSONAL), CQRS_SUBJECT_OWNER, CQRS_FIELDS_END};
static const cqrs_field_t state_fields[] = {
    CQRS_BOOL(billing_customer_state_t, registered, "registered", 0),
    CQRS_STRING(billing_customer_state_t, name, "name", CQRS_F_PERSONAL),
    CQRS_STRING(billing_customer_state_t, email, "email", CQRS_F_PERSONAL),
    CQRS_BOOL(billing_customer_state_t, forgotten, "forgotten", 0), CQRS_SUBJECT_OWNER, CQRS_FIELDS_END};

const cqrs_event_type_t billing_customer_registered = {.name = "customer.registered", .schema_version = 1,
                                                       .payload_size = sizeof(billing_customer_registered_t),
                                                       .fields = registered_fields};
const cqrs_event_type_t billing_customer_email_changed = {.name = "customer.email_changed", .schema_version = 1,
                                                          .payload_size = sizeof(billing_email_changed_t),
                                                          .fields = changed_fields};

static void on_registered(void *state, const cqrs_event_t *e) {
  billing_customer_state_t *s = state;
  const billing_customer_registered_t *p = e->payload;
  s->registered = true;
  memcpy(s->name, p->name, sizeof s->name);
  memcpy(s->email, p->email, sizeof s->email);
}

static void on_email_changed(void *state, const cqrs_event_t *e) {
  billing_customer_state_t *s = state;
  memcpy(s->email, ((const billing_email_changed_t *)e->payload)->email, sizeof s->email);
}

/* What the customer's state held of them goes with the key. */
static void on_forgotten(void *state, const cqrs_event_t *e) {
  BILLING_UNUSED(e);
  billing_customer_state_t *s = state;
  s->forgotten = true;
  snprintf(s->name, sizeof s->name, "%s", CQRS_FORGOTTEN);
  snprintf(s->email, sizeof s->email, "%s", CQRS_FORGOTTEN);
}

static const cqrs_apply_entry_t customer_apply[] = {{&billing_customer_registered, on_registered},
                                                    {&billing_customer_email_changed, on_email_changed},
                                                    {&cqrs_forgotten_event_type, on_forgotten},
                                                    {NULL, NULL}};

/* A snapshot every 8 events: a customer who changes address often loads
 * from it; a forget replaces it at once. */
const cqrs_aggregate_type_t billing_customer = {.name = "customer",
                                                .state_size = sizeof(billing_customer_state_t),
                                                .apply = customer_apply,
                                                .snapshot_fields = state_fields,
                                                .snapshot_version = 1,
                                                .snapshot_every = 8};

static cqrs_code_t handle_register(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  BILLING_UNUSED(data);
  const billing_register_customer_t *c = cqrs_command_payload(cmd);
  cqrs_aggregate_t *agg;
  cqrs_code_t rc = cqrs_context_load(ctx, &billing_customer, c->customer_id, &agg, err);
  if (rc) return rc;
  if (((const billing_customer_state_t *)cqrs_aggregate_state_const(agg))->registered)
    return cqrs_reject(err, "customer.already_registered", "customer %s exists", c->customer_id);
  billing_customer_registered_t e;
  memset(&e, 0, sizeof e);
  memcpy(e.name, c->name, sizeof e.name);
  memcpy(e.email, c->email, sizeof e.email);
  return cqrs_aggregate_raise(agg, &billing_customer_registered, &e, err);
}

static cqrs_code_t handle_change(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  BILLING_UNUSED(data);
  const billing_change_email_t *c = cqrs_command_payload(cmd);
  cqrs_aggregate_t *agg;
  cqrs_code_t rc = cqrs_context_load(ctx, &billing_customer, c->customer_id, &agg, err);
  if (rc) return rc;
  const billing_customer_state_t *s = cqrs_aggregate_state_const(agg);
  if (!s->registered) return cqrs_reject(err, "customer.unknown", "customer %s does not exist", c->customer_id);
  if (s->forgotten) return cqrs_reject(err, "customer.forgotten", "customer %s was forgotten", c->customer_id);
  if (!strcmp(s->email, c->email))
    return cqrs_reject(err, "customer.email_unchanged", "customer %s already uses that address", c->customer_id);
  billing_email_changed_t e;
  memset(&e, 0, sizeof e);
  memcpy(e.email, c->email, sizeof e.email);
  memcpy(e.previous, s->email, sizeof e.previous);
  return cqrs_aggregate_raise(agg, &billing_customer_email_changed, &e, err);
}

/* The key goes when the command commits, just before customer's
 * cqrs.forgotten is appended; forgetting twice records it once. Invoices
 * and their sums stay: they hold the customer's id, not their data. */
static cqrs_code_t handle_forget(cqrs_context_t *ctx, const cqrs_command_t *cmd, void *data, cqrs_error_t *err) {
  BILLING_UNUSED(data);
  const billing_forget_customer_t *c = cqrs_command_payload(cmd);
  cqrs_aggregate_t *agg;
  cqrs_code_t rc = cqrs_context_load(ctx, &billing_customer, c->customer_id, &agg, err);
  if (rc) return rc;
  const billing_customer_state_t *s = cqrs_aggregate_state_const(agg);
  if (!s->registered) return cqrs_reject(err, "customer.unknown", "customer %s does not exist", c->customer_id);
  if (s->forgotten) return CQRS_OK;
  cqrs_forgotten_t f;
  memset(&f, 0, sizeof f);
  memcpy(f.subject, c->customer_id, sizeof f.subject);
  if ((rc = cqrs_context_forget(ctx, c->customer_id, err))) return rc;
  return cqrs_aggregate_raise(agg, &cqrs_forgotten_event_type, &f, err);
}

cqrs_code_t billing__customer_handlers(cqrs_dispatcher_t *d, cqrs_error_t *err) {
  cqrs_code_t rc = cqrs_dispatcher_register(d, &billing_register_customer, handle_register, NULL, 0, err);
  if (!rc) rc = cqrs_dispatcher_register(d, &billing_change_email, handle_change, NULL, 0, err);
  if (!rc) rc = cqrs_dispatcher_register(d, &billing_forget_customer, handle_forget, NULL, 0, err);
  return rc;
}
