/* A strict reader of the Prometheus text format 0.0.4, for tests: checks
 * the grammar and the histogram rules, and finds sample values. */
#ifndef TEST_PROM_CHECK_H
#define TEST_PROM_CHECK_H

#include <stdbool.h>
#include <stddef.h>

/* Returns true when `text` is valid; else false and why in `why`. */
bool prom_check(const char *text, char *why, size_t cap);

/* The value of the sample written exactly `series` (e.g.
 * `cqrs_commands_total{type="a",outcome="ok",reason=""}`); -1 when absent. */
double prom_value(const char *text, const char *series);

#endif
