#!/usr/bin/env bash
# Benchmark of billing-admin: generate N legacy documents (5 % malformed),
# migrate them, then check the result. Prints one line per step with the
# wall time and the rate. Usage: tools/billing-admin/bench.sh BILLING_ADMIN URI [N]
# URI names a fresh database of its own (the script writes into it).
set -euo pipefail
admin=$1
uri=$2
n=${3:-100000}
t() { date +%s.%N; }
run() {
  local label=$1 count=$2
  shift 2
  local s e
  s=$(t)
  "$admin" --uri "$uri" "$@" >/tmp/billing-admin-bench.out 2>/dev/null || true
  e=$(t)
  awk -v l="$label" -v s="$s" -v e="$e" -v n="$count" \
    'BEGIN { d = e - s; printf "%-12s %8d docs %8.1f s %10.0f docs/s\n", l, n, d, n / d }'
  tail -n 4 /tmp/billing-admin-bench.out
}
run gen-legacy "$n" gen-legacy "$n" --malformed 5 --drop
run migrate "$n" migrate --quiet
run check "$n" check
run check-one 1 check --invoice inv_00000042
