#!/usr/bin/env bash
# Runs every benchmark scenario (a Release build with -DCQRS_BENCH=ON), prints
# one JSON line per scenario, and writes the table into docs/benchmarks.md.
# The MongoDB scenarios use MONGODB_URI, else the FerretDB test server.
# Environment: QUERY_INVOICES (default 100000), QUERY_COUNT (default 10),
# OPS_COMMITS (mongo-ops' largest store: 1000, 50000 or 500000; default 50000).
# Usage: scripts/bench.sh [--postgresql] (FerretDB on its PostgreSQL backend)
# or [--java] (mongo-java-server, which serves key look-ups from its indexes:
# scripts/java-mongo-server.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--postgresql" ]; then export CQRS_FERRETDB_BACKEND=postgresql; fi
jobs=$(nproc 2>/dev/null || echo 2)
if [ "${1:-}" = "--java" ]; then
  scripts/install-deps.sh --java
  # shellcheck source=scripts/java-mongo-server.sh
  source scripts/java-mongo-server.sh
else
  scripts/install-deps.sh
  # shellcheck source=scripts/mongo-server.sh
  source scripts/mongo-server.sh
fi
cmake -S . -B build/bench -DCMAKE_BUILD_TYPE=Release -DCQRS_BENCH=ON -DCQRS_TESTS=OFF >/dev/null
cmake --build build/bench -j"$jobs" >/dev/null
bin=build/bench/bench/cqrs-bench
out=build/bench/results.jsonl
: >"$out"
run() { "$bin" "$@" | tee -a "$out"; }
run dispatch --batch 1000
run dispatch --batch 10000
run pipeline
run pipeline --loops 2 --home 30
run pipeline-2threads
run pipeline-2threads --loops 2 --home 30
run rehydrate
run memory-overhead
run personal
run projection-lag
if [ -n "${MONGODB_URI:-}" ]; then
  run mongo-append --n 2000
  run mongo-ops --n "${OPS_COMMITS:-50000}"
  run projection-lag-mongo --n 300
  run query-mongo --n "${QUERY_INVOICES:-100000}" --queries "${QUERY_COUNT:-10}"
else
  echo "note: no MongoDB server: the MongoDB scenarios were not run" >&2
fi
python3 scripts/bench-table.py "$out" docs/benchmarks.md "scripts/bench.sh"
echo "== table written to docs/benchmarks.md"
