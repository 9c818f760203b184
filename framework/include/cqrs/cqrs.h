/* libcqrs: in-process CQRS and event-sourced aggregates for C on libuv. */
#ifndef CQRS_H
#define CQRS_H

#include "cqrs/common.h"
#include "cqrs/clock.h"
#include "cqrs/fields.h"
#include "cqrs/event.h"
#include "cqrs/command.h"
#include "cqrs/aggregate.h"
#include "cqrs/registry.h"
#include "cqrs/store.h"
#include "cqrs/repository.h"
#include "cqrs/dispatcher.h"
#include "cqrs/projection.h"
#include "cqrs/readmodel.h"
#include "cqrs/query.h"
#include "cqrs/metrics.h"
#include "cqrs/process.h"
#include "cqrs/lease.h"
#include "cqrs/personal.h"

#define CQRS_VERSION_MAJOR 0
#define CQRS_VERSION_MINOR 2
#define CQRS_VERSION_PATCH 0

#endif
