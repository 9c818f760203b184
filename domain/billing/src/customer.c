/* The customer aggregate: register, change e-mail. */
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
static const cqrs_field_t change_fields[] = {
    CQRS_STRING(billing_change_email_t, customer_id, "customerId", CQRS_F_REQUIRED),
    CQRS_STRING(billing_change_email_t, email, "email", CQRS_F_REQUIRED), CQRS_FIELDS_END};

static cqrs_code_t check_email(const char *email, cqrs_error_t *err) {
  if (!billing_email_valid(email)) return cqrs_error_set(err, CQRS_EINVAL, "email '%.64s' is not an address", email);
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

static const cqrs_field_t registered_fields[] = {
    CQRS_STRING(billing_customer_registered_t, name, "name", CQRS_F_REQUIRED),
    CQRS_STRING(billing_customer_registered_t, email, "email", CQRS_F_REQUIRED), CQRS_FIELDS_END};
static const cqrs_field_t changed_fields[] = {
    CQRS_STRING(billing_email_changed_t, email, "email", CQRS_F_REQUIRED),
    CQRS_STRING(billing_email_changed_t, previous, "previous", 0), CQRS_FIELDS_END};

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

static const cqrs_apply_entry_t customer_apply[] = {
    {&billing_customer_registered, on_registered}, {&billing_customer_email_changed, on_email_changed}, {NULL, NULL}};

const cqrs_aggregate_type_t billing_customer = {
    .name = "customer", .state_size = sizeof(billing_customer_state_t), .apply = customer_apply};

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
  if (!strcmp(s->email, c->email))
    return cqrs_reject(err, "customer.email_unchanged", "customer %s already uses %s", c->customer_id, c->email);
  billing_email_changed_t e;
  memset(&e, 0, sizeof e);
  memcpy(e.email, c->email, sizeof e.email);
  memcpy(e.previous, s->email, sizeof e.previous);
  return cqrs_aggregate_raise(agg, &billing_customer_email_changed, &e, err);
}

cqrs_code_t billing__customer_handlers(cqrs_dispatcher_t *d, cqrs_error_t *err) {
  cqrs_code_t rc = cqrs_dispatcher_register(d, &billing_register_customer, handle_register, NULL, 0, err);
  if (!rc) rc = cqrs_dispatcher_register(d, &billing_change_email, handle_change, NULL, 0, err);
  return rc;
}
