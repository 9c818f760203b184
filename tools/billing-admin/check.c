#include "admin.h"
int admin_check(admin_t *a, int argc, char **argv) { (void)a; (void)argc; (void)argv; admin_err("not yet"); return ADMIN_USAGE; }
