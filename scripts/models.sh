#!/usr/bin/env bash
# Model-checks the Promela models in docs/models/ with spin (docs/models.md):
# each model is searched exhaustively within the bounds given here and must
# show no violation; each deliberately broken variant must still fail, on
# the property it breaks, with a counterexample trail that spin replays.
# Usage: scripts/models.sh [--deep] [--keep DIR]
#   --deep      also the larger bounds (minutes, about 1 GB; not run by test.sh)
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
cc_flags=(-O1 -w -DCOLLAPSE -DMEMLIM=3000)
failed=0

# build NAME MODEL "SPIN_FLAGS" "CC_FLAGS": generates and compiles pan in $work/NAME.
build() {
  local name=$1 model=$2 sflags=$3 cflags=$4
  rm -rf "${work:?}/$name"; mkdir -p "$work/$name"
  cp "$models/$model" "$work/$name/"
  # shellcheck disable=SC2086
  (cd "$work/$name" && spin $sflags -a "$model" >spin.out 2>&1 && gcc "${cc_flags[@]}" $cflags -o pan pan.c) ||
    { echo "FAIL $name: spin or gcc failed"; cat "$work/$name/spin.out"; return 1; }
}

# verify NAME MODEL "SPIN_FLAGS" "CC_FLAGS" "PAN_FLAGS": must be exhaustive and clean.
verify() {
  local name=$1 model=$2 t0=$SECONDS out=$work/$1/pan.out
  build "$name" "$model" "$3" "$4" || { failed=1; return; }
  # shellcheck disable=SC2086
  (cd "$work/$name" && ./pan $5 >pan.out 2>&1) || true
  if grep -q "errors: 0" "$out" && ! grep -qE "max search depth too small|reached -DMEMLIM|Search not completed" "$out"; then
    echo "ok   $name: $(awk '/states, stored/{print $1}' "$out") states, no violation ($((SECONDS - t0)) s)"
  else
    echo "FAIL $name ($3): not verified"; grep -E "^pan:|error|depth" "$out" | head -5; failed=1
  fi
}

# refute NAME MODEL "SPIN_FLAGS" "CC_FLAGS" "PAN_FLAGS" WHAT: must fail on WHAT
# (an assertion's name, or "acceptance cycle") with a trail, and spin must
# replay the trail to the same failure.
refute() {
  local name=$1 model=$2 what=$6 t0=$SECONDS dir=$work/$1
  build "$name" "$model" "$3" "$4" || { failed=1; return; }
  # shellcheck disable=SC2086
  (cd "$dir" && ./pan $5 >pan.out 2>&1) || true
  # shellcheck disable=SC2086
  if grep -qE "^pan:1: .*$what" "$dir/pan.out" && [ -f "$dir/$model.trail" ] &&
    (cd "$dir" && spin $3 -t -k "$model.trail" "$model" >replay.out 2>&1) &&
    grep -qE "$what|START OF CYCLE" "$dir/replay.out"; then
    echo "ok   $name: fails as it must ($what, trail of depth $(sed -n 's/.*at depth \([0-9]*\).*/\1/p' "$dir/pan.out" | head -1), $((SECONDS - t0)) s)"
  else
    echo "FAIL $name ($3): expected $what with a trail"; grep -E "^pan:|errors" "$dir/pan.out" | head -5
    failed=1
  fi
}

safety="-DSAFETY -DNOCLAIM"

echo "-- append path (docs/models/append.pml)"
p="-m200000"
# Default: every interleaving without a crash, and with one crash (at any
# step) of the lone writer's process; --deep: one crash of either process
# (the group's too), and a command re-sent after its answer.
verify append append.pml "-DMAXCRASH=0" "$safety" "$p"
verify append-crash append.pml "-DMAXCRASH=1 -DCRASH_PROCESS=1" "$safety" "$p"
# A head note raised before the insert may lead; find_head's probe of the
# noted commit makes that harmless (BUG_NOTE_LEADS drops the probe too).
verify append-note-early append.pml "-DMAXCRASH=1 -DCRASH_PROCESS=1 -DNOTE_EARLY" "$safety" "$p"
if [ $deep -eq 1 ]; then
  verify append-crash-any append.pml "-DMAXCRASH=1" "$safety" "$p"
  verify append-note-early-any append.pml "-DMAXCRASH=1 -DNOTE_EARLY" "$safety" "$p"
  verify append-resend append.pml "-DMAXCRASH=0 -DMAXRESEND=1" "$safety" "$p"
fi
# Each broken variant checked against the one property it must break.
b="-DMAXCRASH=1"
refute append-head-plus-2 append.pml "$b -DBUG_HEAD_PLUS_2 -DCHECKS=2" "$safety" "$p" positions_gap_free
refute append-blind-next append.pml "-DMAXCRASH=0 -DBUG_BLIND_NEXT -DCHECKS=1" "$safety" "$p" positions_unique
refute append-unordered append.pml "$b -DBUG_UNORDERED -DCHECKS=4" "$safety" "$p" reader_never_skips
refute append-unordered-gap append.pml "$b -DBUG_UNORDERED -DCHECKS=2" "$safety" "$p" positions_gap_free
refute append-note-leads append.pml "$b -DBUG_NOTE_LEADS -DCHECKS=2" "$safety" "$p" positions_gap_free
refute append-fail-all append.pml "$b -DBUG_FAIL_ALL -DCHECKS=128" "$safety" "$p" outcomes_right
refute append-swap-outcomes append.pml "$b -DBUG_SWAP_OUTCOMES -DCHECKS=128" "$safety" "$p" outcomes_right
refute append-dup-is-success append.pml "-DMAXCRASH=0 -DBUG_DUP_IS_SUCCESS -DCHECKS=16" "$safety" "$p" no_commit_lost
refute append-no-command-index append.pml "$b -DBUG_NO_CMD_INDEX -DCHECKS=32" "$safety" "$p" command_ids_unique
refute append-no-version-index append.pml "-DMAXCRASH=0 -DBUG_NO_VERSION_INDEX -DCHECKS=64" "$safety" "$p" stream_versions_ok
# The cases the properties are about are reached.
for w in W_CONFLICT W_RECLAIM W_GROUP W_GROUP_SPLIT; do
  refute "append-witness-$w" append.pml "-DMAXCRASH=0 -DWITNESS=$w -DCHECKS=0" "$safety" "$p" witness_not_reached
done
for w in W_DUPLICATE W_CRASH_AFTER_INSERT W_NOTE; do
  refute "append-witness-$w" append.pml "$b -DWITNESS=$w -DCHECKS=0" "$safety" "$p" witness_not_reached
done

echo "-- process-manager steps (docs/models/process.pml)"
b="-DMAXCRASH=3 -DMAXERR=2"
verify process process.pml "$b" "$safety" "$p"
# Progress: the ltl claim, acceptance cycles under weak fairness.
verify process-progress process.pml "$b -DCHECKS=0" "" "-a -f $p"
if [ $deep -eq 1 ]; then
  verify process-deep process.pml "-DMAXCRASH=6 -DMAXERR=4" "$safety" "$p"
  verify process-deep-progress process.pml "-DMAXCRASH=6 -DMAXERR=4 -DCHECKS=0" "" "-a -f $p"
fi
refute process-resend-rejected process.pml "$b -DBUG_RESEND_REJECTED -DCHECKS=2" "$safety" "$p" rejected_not_resent
refute process-resend-rejected-record process.pml "$b -DBUG_RESEND_REJECTED -DBUG_REJECTION_UNRECORDED -DCHECKS=4" "$safety" "$p" record_agrees
refute process-route-by-payload process.pml "$b -DBUG_ROUTE_BY_PAYLOAD -DCHECKS=8" "$safety" "$p" money_conserved
refute process-send-before-commit process.pml "$b -DBUG_SEND_BEFORE_COMMIT -DBUG_REJECTION_UNRECORDED -DCHECKS=4" "$safety" "$p" record_agrees
refute process-send-before-commit-order process.pml "$b -DBUG_SEND_BEFORE_COMMIT -DCHECKS=16" "$safety" "$p" sent_after_commit
refute process-fresh-step-id process.pml "$b -DBUG_FRESH_STEP_ID -DCHECKS=1" "$safety" "$p" at_most_once
refute process-reserved-open process.pml "$b -DBUG_RESERVED_OPEN -DCHECKS=4" "$safety" "$p" record_agrees
refute process-checkpoint-past-open process.pml "$b -DBUG_CHECKPOINT_PAST_OPEN -DCHECKS=0" "" "-a -f $p" "acceptance cycle"
refute process-forget-duplicate process.pml "$b -DBUG_FORGET_DUPLICATE -DCHECKS=0" "" "-a -f $p" "acceptance cycle"
refute process-no-hold process.pml "$b -DBUG_NO_HOLD -DCHECKS=0" "" "-a -f $p" "acceptance cycle"
for w in W_COMPLETED W_REFUNDED W_FAILED W_DUPLICATE_STEP W_ENDS_AFTER_CRASHES; do
  refute "process-witness-$w" process.pml "$b -DWITNESS=$w -DCHECKS=0" "$safety" "$p" witness_not_reached
done
# Two OS processes running the same process manager. Without the refusal
# recorded under the step's id, one records a step's rejection while the
# other's send of the same step is accepted: money created.
refute process-two-nodes-unrecorded process.pml "-DNODES=2 -DBUG_REJECTION_UNRECORDED -DMAXCRASH=0 -DMAXERR=0 -DCHECKS=8" "$safety" "$p" money_conserved
# As the code does (cqrs__step_settle): every send of a step gets the answer
# of its first execution.
r="-DNODES=2"
verify process-two-nodes-rejection-recorded process.pml "$r -DMAXCRASH=1 -DMAXERR=1" "$safety" "$p"
if [ $deep -eq 1 ]; then
  verify process-two-nodes-rejection-recorded-deep process.pml "$r -DMAXCRASH=3 -DMAXERR=2" "$safety" "$p"
  verify process-two-nodes-rejection-recorded-progress process.pml "$r -DMAXCRASH=1 -DMAXERR=1 -DCHECKS=0" "-DNFAIR=3" "-a -f $p"
fi

if [ $failed -ne 0 ]; then
  echo "models.sh: FAILED (see docs/models.md to read a trail)"
  [ -n "$keep" ] || { trap - EXIT; echo "pan output and trails kept in $work"; }
  exit 1
fi
echo "models.sh: every model verified, every broken variant refuted, every witness reached"
