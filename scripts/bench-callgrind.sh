#!/usr/bin/env bash
# Instructions per command of `cqrs-bench pipeline`, counted by callgrind, so
# that a change to the command path is measured without the noise of a shared
# machine. Two runs, N commands and 1,000 commands: the difference divided by
# N - 1,000 cancels the setup (10,000 accounts opened, the teardown). Prints
# the whole program's figure and the timed path's (cqrs_dispatcher_send plus
# uv_run, what the benchmark's clock sees), then the stages of the timed path.
# Usage: scripts/bench-callgrind.sh [N] (default 500000; about 3 minutes).
# Uses the Release build of scripts/bench.sh (build/bench), building it if
# needed.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-500000}
bin=build/bench/bench/cqrs-bench
if [ ! -x "$bin" ]; then
  cmake -S . -B build/bench -DCMAKE_BUILD_TYPE=Release -DCQRS_BENCH=ON -DCQRS_TESTS=OFF >/dev/null
  cmake --build build/bench -j"$(nproc 2>/dev/null || echo 2)" >/dev/null
fi
out=build/bench/callgrind
mkdir -p "$out"
for k in 1000 "$n"; do
  valgrind --tool=callgrind --callgrind-out-file="$out/pipeline-$k.out" "$bin" pipeline --n "$k" >/dev/null 2>"$out/pipeline-$k.log"
  callgrind_annotate --inclusive=yes --threshold=100 "$out/pipeline-$k.out" >"$out/pipeline-$k.txt" 2>/dev/null
done
python3 - "$out/pipeline-1000.txt" "$out/pipeline-$n.txt" "$n" <<'EOF'
import re, sys
def load(path):
    costs = {}
    for line in open(path):
        m = re.match(r'\s*([\d,]+)\s+\([^)]*\)\s+(?:\*\s+)?\S*?:(\S+) \[', line)
        if m and m.group(2) not in costs:
            costs[m.group(2)] = int(m.group(1).replace(',', ''))
        t = re.match(r'\s*([\d,]+)\s+\([^)]*\)\s+PROGRAM TOTALS', line)
        if t:
            costs['TOTAL'] = int(t.group(1).replace(',', ''))
    return costs
a, b, n = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
per = lambda f: (b.get(f, 0) - a.get(f, 0)) / (n - 1000)
print(f"pipeline, {n} commands: {per('TOTAL'):,.0f} instructions per command (whole program), "
      f"{per('uv_run') + per('cqrs_dispatcher_send'):,.0f} on the timed path")
for f in ['cqrs__request_execute', 'cqrs_context_load', 'cqrs_aggregate_raise', 'cqrs__repository_save_cached',
          'mem_append', 'cqrs__request_finish', 'billing_project_balances', 'cqrs_readmodel_set_int64', 'malloc', 'free']:
    print(f"  {f:32s} {per(f):8,.0f}")
EOF
