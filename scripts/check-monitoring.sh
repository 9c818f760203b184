#!/usr/bin/env bash
# Checks what tools/monitoring ships for operators: the Prometheus rules
# (promtool check rules), their unit tests (promtool test rules), and the
# Grafana dashboard: valid JSON, the seed's panels (commands/s, queries/s,
# sync lag, error rate, write and read latency), and every panel's query
# valid PromQL (each becomes a recording rule that promtool checks).
# promtool comes from scripts/promtool.sh (built once from the Go module
# proxy). Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
promtool=$(scripts/promtool.sh)
dir=tools/monitoring
"$promtool" check rules "$dir/billing-rules.yml"
(cd "$dir" && "$promtool" test rules billing-rules.test.yml)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$dir/billing-dashboard.json" "$tmp/dashboard-rules.yml" <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
titles = [p["title"] for p in dash["panels"]]
for want in ("Commands/s", "Queries/s", "Sync lag", "Error rate", "Write latency p99", "Read latency p99"):
    if want not in titles:
        sys.exit(f"the dashboard has no panel '{want}'")
with open(sys.argv[2], "w") as out:
    out.write("groups:\n  - name: dashboard\n    rules:\n")
    for p in dash["panels"]:
        for t in p["targets"]:
            expr = t["expr"].replace("'", "''")
            out.write(f"      - record: dashboard:panel_{p['id']}_{t['refId']}\n        expr: '{expr}'\n")
print(f"{len(titles)} panels")
PY
"$promtool" check rules "$tmp/dashboard-rules.yml"
