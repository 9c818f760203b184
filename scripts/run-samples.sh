#!/usr/bin/env bash
# The main job: builds libcqrs and runs the billing samples (account transfer,
# then invoices) on the in-memory store. Pass --mongo URI to run them on
# MongoDB, and --reset to drop that database first: it is dropped once,
# before the transfer sample, and the invoice sample adds its data beside.
# Other arguments go to both samples: --cqs MODE sets the flag
# mongodb_cqs_enabled that the invoice sample reads through (docs/billing.md).
# One line per phase; the samples' reports are in build/logs/sample-*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/phase.sh
source scripts/phase.sh
phase "packages" -- scripts/install-deps.sh
build_release() {
  cmake -S . -B build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCQRS_TESTS=OFF
  cmake --build build/release -j"$(nproc 2>/dev/null || echo 2)"
}
phase "build (RelWithDebInfo)" -- build_release
args=("$@")
status=0
for s in transfer invoice; do
  phase --may-fail "sample $s" -- "build/release/samples/$s" "${args[@]}" || status=$?
  # --reset empties the database for the first sample only.
  rest=()
  for a in "${args[@]}"; do [ "$a" = --reset ] || rest+=("$a"); done
  args=("${rest[@]}")
done
[ "$status" -eq 0 ] && echo "== samples passed (their reports: build/logs/sample-transfer.log, build/logs/sample-invoice.log)"
exit $status
