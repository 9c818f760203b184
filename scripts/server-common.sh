# shellcheck shell=bash
# Sourced by the scripts that start a test server (mongo-server.sh,
# documentdb-server.sh, java-mongo-server.sh, pg-server.sh).

# at_exit COMMAND: runs COMMAND when the shell exits. Each call keeps the
# EXIT trap already set (by an earlier call, or by anything else) and runs it
# after COMMAND: what started last stops first. A failing COMMAND (a server
# that exits 143 on SIGTERM, under `set -e`) does not cut the later ones
# short, and the shell's exit status stays its own.
at_exit() {
  local cmd=$1 prev
  prev=$(trap -p EXIT)
  if [ -n "$prev" ]; then
    # `trap -p` prints `trap -- 'COMMANDS' EXIT`, quoted for reuse.
    eval "set -- $prev"
    cmd="$cmd; $3"
  fi
  # shellcheck disable=SC2064 # expanded now, on purpose
  trap "{ $cmd; } || true" EXIT
}

# free_port LOW HIGH: prints a loopback port in [LOW, HIGH] where nothing
# answers, or fails.
free_port() {
  local p
  for p in $(shuf -i "$1-$2" -n 50); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

# wait_port PORT PID TENTHS: waits until something answers on 127.0.0.1:PORT
# (then succeeds), PID has exited, or TENTHS tenths of a second have passed.
wait_port() {
  local _
  for _ in $(seq 1 "$3"); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
