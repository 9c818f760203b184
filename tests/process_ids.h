/* Process managers' derived ids on a real store (memory, MongoDB): two inputs
 * never share an id, a step keeps its id across a restart, and no outside
 * document reaches the framework's internal command. */
#ifndef TEST_PROCESS_IDS_H
#define TEST_PROCESS_IDS_H

#include <cqrs/conformance.h>

/* Runs the scenarios as one cmocka group on stores from `f`; returns the
 * number of failures. */
int process_ids_run(const cqrs_store_factory_t *f);

#endif
