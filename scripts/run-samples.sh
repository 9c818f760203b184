#!/usr/bin/env bash
# The main job: builds libcqrs and runs the billing samples (account transfer,
# invoices) on the in-memory store. Pass --mongo URI to run them on MongoDB.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCQRS_TESTS=OFF >/dev/null
cmake --build build/release -j"$(nproc 2>/dev/null || echo 2)" >/dev/null
status=0
for s in transfer invoice; do
  echo "== $s"
  build/release/samples/$s "$@" || status=$?
done
exit $status
