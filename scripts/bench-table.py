#!/usr/bin/env python3
"""Renders the JSON lines of scripts/bench.sh as a Markdown table between the
markers of docs/benchmarks.md. Usage: bench-table.py RESULTS DOC COMMAND"""
import datetime
import json
import os
import platform
import sys

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
CORE = {"name", "operations", "seconds", "ops_per_s", "p50_us", "p99_us", "peak_rss_kib"}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    results, doc, command = sys.argv[1], sys.argv[2], sys.argv[3]
    rows = [json.loads(line) for line in open(results) if line.strip().startswith("{")]
    out = [
        f"Measured {datetime.datetime.utcfromtimestamp(os.path.getmtime(results)):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores ({cpu_model()}), "
        f"with `{command}`.",
        "",
        "| scenario | operations | seconds | ops/s | p50 µs | p99 µs | peak RSS MiB | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        notes = ", ".join(f"{k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in r.items() if k not in CORE)
        out.append(
            f"| {r['name']} | {r['operations']} | {r['seconds']:.3f} | {r['ops_per_s']:,.0f} | "
            f"{r['p50_us']:.3f} | {r['p99_us']:.3f} | {r['peak_rss_kib'] / 1024:.1f} | {notes} |"
        )
    text = open(doc).read()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    open(doc, "w").write(text[:start] + "\n" + "\n".join(out) + "\n" + text[end:])


if __name__ == "__main__":
    main()
