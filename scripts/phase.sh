# shellcheck shell=bash
# Sourced by the scripts: `phase NAME -- COMMAND...` runs COMMAND with its
# output in build/logs/<name>.log and prints one line, `== NAME ... 41 s`;
# on failure it shows the log's tail and exits with COMMAND's status.
# `phase --summary NAME -- ctest ...` also prints ctest's closing lines
# (CI reads them). `phase --may-fail NAME -- ...` returns the status instead
# of exiting. PHASE_VERBOSE=1 shows everything as it runs. COMMAND may
# be a shell function: it runs in a background subshell so that `set -e`
# still holds inside it -- but not when phase itself is called as a
# condition (`if phase --may-fail ...`, `phase ... || ...`): bash then
# ignores `set -e` in everything it runs, so such a COMMAND is a script of
# its own (or checks each step).

phase() {
  local summary=0 may_fail=0 name log start rc=0
  while :; do
    case $1 in
      --summary) summary=1; shift ;;
      --may-fail) may_fail=1; shift ;;
      *) break ;;
    esac
  done
  name=$1; shift
  [ "${1:-}" = -- ] && shift
  mkdir -p build/logs
  log=build/logs/$(printf '%s' "$name" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-//;s/-$//').log
  start=$SECONDS
  if [ "${PHASE_VERBOSE:-}" = 1 ]; then
    echo "== $name"
    { "$@" 2>&1 | tee "$log"; } &
    wait $! || rc=$?
  else
    printf '== %s ... ' "$name"
    "$@" >"$log" 2>&1 </dev/null &
    wait $! || rc=$?
  fi
  if [ "$rc" -ne 0 ]; then
    echo "FAILED after $((SECONDS - start)) s (exit $rc); the end of $log:"
    tail -n 60 "$log" | sed 's/^/   | /'
    [ "$may_fail" = 1 ] && return "$rc"
    exit "$rc"
  fi
  echo "$((SECONDS - start)) s"
  if [ "$summary" = 1 ] && [ "${PHASE_VERBOSE:-}" != 1 ]; then
    sed -n '/tests passed\|tests failed/,$p' "$log"
  fi
  return 0
}
