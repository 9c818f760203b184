/* BSON comparisons of the in-memory read model (store/bson.c). Not installed. */
#ifndef CQRS_BSON_PRIVATE_H
#define CQRS_BSON_PRIVATE_H

#include "base/cqrs-private.h"

/* <0, 0 or >0 as `a` sorts before, with or after `b`: numbers by value
 * whatever their BSON type, then strings, dates, booleans, ObjectIds and
 * null within their type. *comparable is false for values of two types, or
 * of a type without an order here (then the result only orders types). */
int cqrs__bson_compare(const bson_iter_t *a, const bson_iter_t *b, bool *comparable);
/* Whether `doc` has, at each (dotted) key of `filter`, a value equal to the
 * filter's; NULL `filter`: every document does. */
bool cqrs__bson_matches(const bson_t *doc, const bson_t *filter);

#endif
