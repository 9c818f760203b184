# shellcheck shell=bash
# Sourced by scripts/test.sh and scripts/bench.sh. Provides MONGODB_URI for
# the MongoDB tests: the caller's if set; otherwise starts FerretDB v1.24.2
# (SQLite backend; with CQRS_FERRETDB_BACKEND=postgresql, the PostgreSQL
# backend on a PostgreSQL that scripts/pg-server.sh starts) on
# 127.0.0.1 through the launcher in scripts/ferretdb/, with telemetry off, no
# state or debug listener, data in a temporary directory, the build (and the
# Go toolchain it needs, see scripts/go-toolchain.sh) cached between runs in
# ~/.cache/libcqrs, and the server stopped when the calling shell exits. With
# CI=true a server is required; elsewhere its absence only skips those tests.
# Also exports CQRS_FERRETDB_LAUNCHER, which tests use to run servers of
# their own (to stop and restart them).

# shellcheck source=scripts/phase.sh
type phase >/dev/null 2>&1 || source scripts/phase.sh
# shellcheck source=scripts/server-common.sh
source scripts/server-common.sh

mongo_server_fail() {
  if [ "${CI:-}" = "true" ]; then
    echo "error: $1 (the MongoDB tests are required in CI)" >&2
    exit 1
  fi
  echo "note: $1; the MongoDB tests will be skipped (set MONGODB_URI to run them)" >&2
}

# Builds the launcher with a Go toolchain that scripts/go-toolchain.sh finds or
# fetches (Debian 12's own Go is too old for FerretDB).
mongo_server_build() {
  local go
  go=$(scripts/go-toolchain.sh)
  (cd "$1" && GOTOOLCHAIN=local "$go" build -trimpath -o "$2.tmp" .)
  mv "$2.tmp" "$2"
}

mongo_server_stop() {
  kill "$MONGO_SERVER_PID" 2>/dev/null
  wait "$MONGO_SERVER_PID" 2>/dev/null
  rm -rf "$MONGO_SERVER_DATA"
}

mongo_server_start() {
  local src=scripts/ferretdb cache bin hash port data pid
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/libcqrs
  hash=$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-16)
  bin=$cache/ferretdb-launcher-$hash
  if [ ! -x "$bin" ]; then
    mkdir -p "$cache"
    if ! phase --may-fail "FerretDB launcher (Go toolchain + build, cached)" -- mongo_server_build "$src" "$bin"; then
      mongo_server_fail "the FerretDB launcher did not build"
      return 0
    fi
  fi
  export CQRS_FERRETDB_LAUNCHER=$bin
  if ! port=$(free_port 27100 27999); then
    mongo_server_fail "no free port for FerretDB"
    return 0
  fi
  data=$(mktemp -d "${TMPDIR:-/tmp}/libcqrs-ferretdb.XXXXXX")
  local backend=(-dir "$data/db")
  if [ "${CQRS_FERRETDB_BACKEND:-sqlite}" = "postgresql" ]; then
    # shellcheck source=scripts/pg-server.sh
    source scripts/pg-server.sh
    pg_server_start || { mongo_server_fail "PostgreSQL did not start"; return 0; }
    backend=(-postgresql "$CQRS_PG_URL")
  fi
  "$bin" -listen "127.0.0.1:$port" "${backend[@]}" >"$data/log" 2>&1 &
  pid=$!
  MONGO_SERVER_PID=$pid
  MONGO_SERVER_DATA=$data
  # Before PostgreSQL's, if it started: what started last stops first.
  at_exit mongo_server_stop
  if wait_port "$port" "$pid" 100; then
    export MONGODB_URI="mongodb://127.0.0.1:$port"
    echo "== FerretDB (${CQRS_FERRETDB_BACKEND:-sqlite}) on $MONGODB_URI (pid $pid)"
    return 0
  fi
  cat "$data/log" >&2
  mongo_server_fail "FerretDB did not start"
}

if [ -n "${MONGODB_URI:-}" ]; then
  echo "== MongoDB tests on the server of MONGODB_URI"
else
  mongo_server_start
fi
