#!/usr/bin/env python3
"""Checks the layout of framework/src (docs/architecture.md, "Layout").

Arrows are read from the build, not guessed: a file calls another when its
object file needs a symbol (nm -u) that the other's object file defines
(nm --defined-only), and it includes another when a line of it says
#include "folder/file.h". Then:

  - every arrow points to a folder the file's folder may use (LAYERS below:
    down, never up nor sideways to a folder not listed);
  - no files call each other in a circle, and no headers include each other
    in one (a strongly connected component of more than one file);
  - no source file is longer than MAX_LINES.

Usage: scripts/layers.py BUILD_DIR   (a configured and built tree; exit 1 on
a finding, with one line per finding).
"""
import os
import subprocess
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "framework", "src")
MAX_LINES = 600

# Each folder and the folders it may use. "." is framework/src itself (the
# public entry points that put components together).
BELOW = {
    "base": [],
    "model": ["base"],
    "store": ["model", "base"],
    "runtime": ["store", "model", "base"],
    "command": ["runtime", "store", "model", "base"],
    "lease": ["runtime", "store", "model", "base"],
    "query": ["runtime", "store", "model", "base"],
    "events": ["lease", "runtime", "store", "model", "base"],
    "process": ["events", "command", "lease", "runtime", "store", "model", "base"],
    "metrics": ["events", "command", "query", "lease", "runtime", "store", "model", "base"],
    ".": ["metrics", "process", "events", "query", "lease", "command", "runtime", "store", "model", "base"],
    "testing": [".", "metrics", "process", "events", "query", "lease", "command", "runtime", "store", "model", "base"],
    # Libraries of their own on the public API: the test helpers and the backend suites.
    "conformance": [".", "metrics", "process", "events", "query", "lease", "command", "runtime", "store", "model",
                    "base"],
}


# Arrows allowed for these names only. A process manager's input is a command:
# its handler uses the handler API every handler uses; it sends and registers
# through the runtime's command port, never through command/'s internals.
ONLY = {
    ("process", "command"): {"cqrs_context_load", "cqrs_context_command", "cqrs_context_set_value"},
}


def folder(rel):
    d = os.path.dirname(rel)
    return d if d else "."


def sources():
    out = []
    for dirpath, _, files in os.walk(SRC):
        for f in files:
            if f.endswith((".c", ".h")):
                out.append(os.path.relpath(os.path.join(dirpath, f), SRC))
    return sorted(out)


def includes(rel):
    found = []
    with open(os.path.join(SRC, rel), encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line.startswith("#include \"") and not line.startswith("#include \"cqrs/"):
                target = line.split('"')[1]
                if os.path.exists(os.path.join(SRC, target)):
                    found.append(target)
    return found


def objects(build):
    objs = {}
    for dirpath, _, files in os.walk(build):
        if "framework/CMakeFiles" not in dirpath or "/src" not in dirpath:
            continue
        for f in files:
            if not f.endswith(".c.o"):
                continue
            path = os.path.join(dirpath, f)
            rel = path.split("/src/", 1)[1][: -len(".o")]
            if os.path.exists(os.path.join(SRC, rel)):
                objs[rel] = path
    return objs


def symbols(obj):
    defined = subprocess.run(["nm", "--defined-only", "-g", obj], capture_output=True, text=True, check=True)
    undefined = subprocess.run(["nm", "-u", obj], capture_output=True, text=True, check=True)
    d = {line.split()[-1] for line in defined.stdout.splitlines() if line.strip()}
    u = {line.split()[-1] for line in undefined.stdout.splitlines() if line.strip()}
    return d, u


def circles(graph):
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-2], file=sys.stderr)
        return 2
    build = sys.argv[1]
    findings = []
    files = sources()
    for rel in files:
        if folder(rel) not in BELOW:
            findings.append(f"{rel}: folder '{folder(rel)}' is not in scripts/layers.py's LAYERS")

    inc = {rel: includes(rel) for rel in files}
    objs = objects(build)
    if not objs:
        print(f"layers: no object files of framework/src under {build}: build it first", file=sys.stderr)
        return 2
    owner = {}
    needs = {}
    for rel, obj in objs.items():
        d, u = symbols(obj)
        for s in d:
            owner[s] = rel
        needs[rel] = u
    calls = defaultdict(set)
    for rel, u in needs.items():
        for s in u:
            if s in owner and owner[s] != rel:
                calls[rel].add(owner[s])

    def allowed(a, b):
        fa, fb = folder(a), folder(b)
        return fa == fb or fb in BELOW.get(fa, [])

    for a in sorted(calls):
        for b in sorted(calls[a]):
            names = sorted(s for s in needs[a] if owner.get(s) == b)
            if not allowed(a, b):
                findings.append(f"{a} calls {b} ({', '.join(names[:4])}): '{folder(a)}' may not use '{folder(b)}'")
            elif (folder(a), folder(b)) in ONLY and not set(names) <= ONLY[(folder(a), folder(b))]:
                extra = sorted(set(names) - ONLY[(folder(a), folder(b))])
                findings.append(f"{a} calls {b} ({', '.join(extra[:4])}): '{folder(a)}' uses only "
                                f"{', '.join(sorted(ONLY[(folder(a), folder(b))]))} of '{folder(b)}'")
    for a in files:
        for b in inc[a]:
            if not allowed(a, b):
                findings.append(f"{a} includes {b}: '{folder(a)}' may not use '{folder(b)}'")
    for comp in circles(calls):
        findings.append("files that call each other in a circle: " + ", ".join(comp))
    for comp in circles({a: set(bs) for a, bs in inc.items()}):
        findings.append("headers that include each other in a circle: " + ", ".join(comp))
    for rel in files:
        if rel.endswith(".c"):
            with open(os.path.join(SRC, rel), encoding="utf-8") as fh:
                n = sum(1 for _ in fh)
            if n > MAX_LINES:
                findings.append(f"{rel}: {n} lines, more than {MAX_LINES}")

    for f in findings:
        print("layers: " + f)
    ncalls = sum(len(v) for v in calls.values())
    print(f"layers: {len(files)} files in {len({folder(r) for r in files})} folders, {ncalls} call arrows, "
          f"{sum(len(v) for v in inc.values())} include arrows: "
          + ("ok" if not findings else f"{len(findings)} finding(s)"))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
