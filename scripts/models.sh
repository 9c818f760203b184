#!/usr/bin/env bash
# Model-checks the Promela models in docs/models/ with spin (docs/models.md):
# each model is searched exhaustively within the bounds given here and must
# show no violation; each deliberately broken variant must still fail, on
# the property it breaks, with a counterexample trail that spin replays.
# Usage: scripts/models.sh [--deep] [--keep DIR]
#   --deep      larger bounds (minutes and a few GB; not run by test.sh)
#   --keep DIR  keep the pan output and trails there (default: a temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
models=$PWD/docs/models
deep=0 keep=""
while [ $# -gt 0 ]; do
  case "$1" in
  --deep) deep=1 ;;
  --keep) keep=${2:?--keep needs a directory}; shift ;;
  *) echo "usage: scripts/models.sh [--deep] [--keep DIR]" >&2; exit 2 ;;
  esac
  shift
done
command -v spin >/dev/null || { echo "models.sh: spin is not installed (scripts/install-deps.sh)" >&2; exit 1; }
if [ -n "$keep" ]; then
  mkdir -p "$keep"; work=$(cd "$keep" && pwd)
else
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
fi
# pan stops, and fails, rather than take the machine: a search that hits
# the memory or depth bound is not exhaustive and counts as a failure.
cc_flags=(-O2 -w -DCOLLAPSE -DMEMLIM=3000)
failed=0

# build NAME MODEL SPIN_FLAGS... : generates and compiles pan in $work/NAME.
build() {
  local name=$1 model=$2; shift 2
  rm -rf "${work:?}/$name"; mkdir -p "$work/$name"
  cp "$models/$model" "$work/$name/"
  (cd "$work/$name" && spin "$@" -a "$model" >spin.out 2>&1 && gcc "${cc_flags[@]}" $PAN_CC -o pan pan.c) ||
    { echo "FAIL $name: spin or gcc failed"; cat "$work/$name/spin.out"; return 1; }
}

# verify NAME MODEL "SPIN_FLAGS" "PAN_FLAGS" : must be exhaustive and clean.
verify() {
  local name=$1 model=$2 sflags=$3 pflags=$4 t0=$SECONDS
  # shellcheck disable=SC2086
  build "$name" "$model" $sflags || { failed=1; return; }
  (cd "$work/$name" && ./pan $pflags >pan.out 2>&1) || true
  local out=$work/$name/pan.out
  if grep -q "errors: 0" "$out" && ! grep -qE "max search depth too small|reached -DMEMLIM|Search not completed" "$out"; then
    echo "ok   $name: $(awk '/states, stored/{print $1}' "$out") states, no violation ($((SECONDS - t0)) s)"
  else
    echo "FAIL $name ($sflags): not verified"; grep -E "^pan:|error|depth" "$out" | head -5; failed=1
  fi
}

# refute NAME MODEL "SPIN_FLAGS" "PAN_FLAGS" PROPERTY : must fail on PROPERTY
# with a trail, and spin must replay the trail to the same violation.
refute() {
  local name=$1 model=$2 sflags=$3 pflags=$4 prop=$5 t0=$SECONDS
  # shellcheck disable=SC2086
  build "$name" "$model" $sflags || { failed=1; return; }
  (cd "$work/$name" && ./pan $pflags >pan.out 2>&1) || true
  local dir=$work/$name
  # shellcheck disable=SC2086
  if grep -qE "^pan:1: .*$prop" "$dir/pan.out" && [ -f "$dir/$model.trail" ] &&
    (cd "$dir" && spin $sflags -t -k "$model.trail" "$model" >replay.out 2>&1) &&
    grep -qE "$prop" "$dir/replay.out"; then
    echo "ok   $name: fails as it must ($prop, trail of depth $(sed -n 's/.*at depth \([0-9]*\).*/\1/p' "$dir/pan.out" | head -1), $((SECONDS - t0)) s)"
  else
    echo "FAIL $name ($sflags): expected a violation of $prop with a trail"; grep -E "^pan:|errors" "$dir/pan.out" | head -5
    failed=1
  fi
}

echo "-- append path (docs/models/append.pml)"
if [ $deep -eq 1 ]; then b="-DMAXCRASH=2 -DMAXRESEND=1"; else b="-DMAXCRASH=1 -DMAXRESEND=0"; fi
PAN_CC=-DSAFETY
verify append append.pml "$b" "-m200000"
# Each broken variant checked against the one property it must break.
refute append-head-plus-2 append.pml "$b -DBUG_HEAD_PLUS_2 -DCHECKS=2" "-m200000" positions_gap_free
refute append-blind-next append.pml "$b -DBUG_BLIND_NEXT -DCHECKS=1" "-m200000" positions_unique
refute append-no-wait append.pml "$b -DBUG_NO_WAIT -DCHECKS=4" "-m200000" reader_never_skips
refute append-no-wait-late append.pml "$b -DBUG_NO_WAIT -DCHECKS=8" "-m200000" reader_read_all
refute append-dup-is-success append.pml "$b -DBUG_DUP_IS_SUCCESS -DCHECKS=16" "-m200000" no_commit_lost
refute append-no-command-index append.pml "$b -DBUG_NO_CMD_INDEX -DCHECKS=32" "-m200000" command_ids_unique
refute append-no-version-index append.pml "$b -DBUG_NO_VERSION_INDEX -DCHECKS=64" "-m200000" stream_versions_ok

if [ $failed -ne 0 ]; then
  echo "models.sh: FAILED (pan output and trails in $work${keep:+}; see docs/models.md)"
  [ -n "$keep" ] || { trap - EXIT; echo "kept $work"; }
  exit 1
fi
echo "models.sh: all models verified, all broken variants refuted"
