# shellcheck shell=bash
# Sourced (`source scripts/documentdb-server.sh`, like scripts/mongo-server.sh):
# provides MONGODB_URI for the MongoDB tests, the caller's if set; otherwise
# starts a MongoDB-compatible server that reads through its indexes: FerretDB
# 2.7 on the DocumentDB extension inside Debian 12's PostgreSQL 15, both on
# 127.0.0.1, free ports, data in a temporary directory, stopped when the
# calling shell exits (after, and without replacing, any EXIT trap already
# set). With CI=true a server is required; elsewhere its absence only skips
# those tests. `source scripts/documentdb-server.sh --no-start` only defines
# documentdb_server_start (which also exports the URI as CQRS_DOCUMENTDB_URI,
# and CQRS_DOCUMENTDB_LAUNCHER: a launcher for the tests that stop and start
# a server, like CQRS_FERRETDB_LAUNCHER of scripts/mongo-server.sh) and
# documentdb_server_stop.
#
# What it needs, each step one line (logs in build/logs/), each cached:
# - Debian packages (scripts/install-deps.sh --documentdb; apt as root or
#   with sudo);
# - the extensions pgvector, pg_cron, documentdb_core and documentdb, built
#   from three source tarballs checked against scripts/documentdb/SHA256SUMS:
#   from ../shared/vendor/ beside the checkout, or from the directory
#   CQRS_DOCUMENTDB_SOURCES names (which wins when set); docs/mongo.md says
#   how to make them from the upstream repositories. Built once into a staged
#   tree under ~/.cache/libcqrs/documentdb-ext-<key> (key: the checksums and
#   the recipe, scripts/documentdb/build-extensions.sh), then copied into
#   Debian's PostgreSQL 15 tree (scripts/documentdb/install-extensions.sh), where a
#   manifest of their checksums
#   (/usr/share/postgresql/15/extension/libcqrs-documentdb-<key>.sha256)
#   says they are in place; either can be missing and is made again;
# - FerretDB 2.7 (`go install` from the Go module proxy, with the Go
#   toolchain scripts/go-toolchain.sh fetches), the binary cached as
#   ~/.cache/libcqrs/ferretdb-v2.7.0-go1.27.3.

DOCUMENTDB_SERVER_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/phase.sh
type phase >/dev/null 2>&1 || source "$DOCUMENTDB_SERVER_ROOT/scripts/phase.sh"
# shellcheck source=scripts/server-common.sh
source "$DOCUMENTDB_SERVER_ROOT/scripts/server-common.sh"

DOCUMENTDB_SERVER_PG=15
DOCUMENTDB_SERVER_FERRETDB=v2.7.0
DOCUMENTDB_SERVER_GO=1.27.3 # FerretDB 2.7 needs Go >= 1.25

documentdb_server_fail() {
  if [ "${CI:-}" = "true" ]; then
    echo "error: $* (the MongoDB tests on DocumentDB are required in CI)" >&2
    exit 1
  fi
  echo "note: $*; the MongoDB tests on DocumentDB will be skipped" >&2
}

# The directory that holds the three tarballs, or fails.
documentdb_server_sources() {
  local d
  for d in "${CQRS_DOCUMENTDB_SOURCES:-}" "$DOCUMENTDB_SERVER_ROOT/../shared/vendor"; do
    if [ -n "$d" ] && [ -f "$d/documentdb.tar.gz" ] && [ -f "$d/pg_cron.tar.gz" ] && [ -f "$d/pgvector.tar.gz" ]; then
      (cd "$d" && pwd)
      return 0
    fi
  done
  return 1
}

# The builds and installs that are not done yet; fails after saying why.
documentdb_server_prepare() {
  local cache key ext manifest src
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/libcqrs
  if ! phase --may-fail "DocumentDB: packages" -- "$DOCUMENTDB_SERVER_ROOT/scripts/install-deps.sh" --documentdb; then
    documentdb_server_fail "the packages of the DocumentDB server did not install"
    return 1
  fi
  key=$({
    echo "PostgreSQL $DOCUMENTDB_SERVER_PG"
    cat "$DOCUMENTDB_SERVER_ROOT/scripts/documentdb/SHA256SUMS" "$DOCUMENTDB_SERVER_ROOT/scripts/documentdb/build-extensions.sh"
  } | sha256sum | cut -c1-16)
  ext=$cache/documentdb-ext-$key
  manifest=/usr/share/postgresql/$DOCUMENTDB_SERVER_PG/extension/libcqrs-documentdb-$key.sha256
  if ! { [ -f "$manifest" ] && sha256sum --status -c "$manifest" 2>/dev/null; }; then
    if [ ! -f "$ext/files.sha256" ]; then
      if ! src=$(documentdb_server_sources); then
        documentdb_server_fail "the DocumentDB sources were not found: neither ../shared/vendor/ beside the checkout" \
          "nor \$CQRS_DOCUMENTDB_SOURCES holds documentdb.tar.gz, pg_cron.tar.gz and pgvector.tar.gz" \
          "(docs/mongo.md says how to make them)"
        return 1
      fi
      if ! phase --may-fail "DocumentDB: extensions (build, cached)" -- \
        "$DOCUMENTDB_SERVER_ROOT/scripts/documentdb/build-extensions.sh" "$DOCUMENTDB_SERVER_PG" "$src" "$ext"; then
        documentdb_server_fail "the DocumentDB extensions did not build"
        return 1
      fi
    fi
    if ! phase --may-fail "DocumentDB: extensions (install into PostgreSQL $DOCUMENTDB_SERVER_PG)" -- \
      "$DOCUMENTDB_SERVER_ROOT/scripts/documentdb/install-extensions.sh" "$ext" "$manifest"; then
      documentdb_server_fail "the DocumentDB extensions did not install"
      return 1
    fi
  fi
  DOCUMENTDB_SERVER_BIN=$cache/ferretdb-$DOCUMENTDB_SERVER_FERRETDB-go$DOCUMENTDB_SERVER_GO
  if [ ! -x "$DOCUMENTDB_SERVER_BIN" ]; then
    if ! phase --may-fail "FerretDB $DOCUMENTDB_SERVER_FERRETDB (Go toolchain + build, cached)" -- \
      "$DOCUMENTDB_SERVER_ROOT/scripts/documentdb/build-ferretdb.sh" "$DOCUMENTDB_SERVER_FERRETDB" "$DOCUMENTDB_SERVER_GO" \
      "$DOCUMENTDB_SERVER_BIN"; then
      documentdb_server_fail "FerretDB $DOCUMENTDB_SERVER_FERRETDB did not build"
      return 1
    fi
  fi
}

documentdb_server_start() {
  local start=$SECONDS bindir data pgport port pid lock rc=0
  # One build or install at a time on this machine (the cache and
  # PostgreSQL's tree are shared by every checkout).
  mkdir -p "${XDG_CACHE_HOME:-$HOME/.cache}/libcqrs"
  exec {lock}>"${XDG_CACHE_HOME:-$HOME/.cache}/libcqrs/documentdb.lock"
  flock "$lock"
  documentdb_server_prepare || rc=$?
  exec {lock}>&-
  [ "$rc" -eq 0 ] || return 0
  bindir=/usr/lib/postgresql/$DOCUMENTDB_SERVER_PG/bin
  data=$(mktemp -d "${TMPDIR:-/tmp}/libcqrs-documentdb.XXXXXX")
  DOCUMENTDB_SERVER_DATA=$data
  if [ -z "${DOCUMENTDB_SERVER_AT_EXIT:-}" ]; then
    at_exit documentdb_server_stop
    DOCUMENTDB_SERVER_AT_EXIT=1
  fi
  # PostgreSQL refuses to run as root: run it as the package's user then.
  DOCUMENTDB_SERVER_AS=()
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres "$data"
    DOCUMENTDB_SERVER_AS=(runuser -u postgres --)
  fi
  if ! "${DOCUMENTDB_SERVER_AS[@]}" "$bindir/initdb" -D "$data/db" -A trust -U postgres -E UTF8 --locale=C.UTF-8 \
    --no-sync >"$data/initdb.log" 2>&1; then
    cat "$data/initdb.log" >&2
    documentdb_server_fail "initdb failed"
    return 0
  fi
  if ! pgport=$(free_port 25100 25999) || ! port=$(free_port 27100 27999); then
    documentdb_server_fail "no free port for the DocumentDB server"
    return 0
  fi
  # The settings FerretDB 2.7 expects of DocumentDB; the last two (marked
  # experimental in this version) let a compound index serve equality on
  # several fields and sorts, as MongoDB's do. Each FerretDB keeps a pool of
  # connections, and the tests that stop and start servers run several
  # FerretDBs on this one cluster at once: 100 connections, the default,
  # ran out ("sorry, too many clients already").
  cat >>"$data/db/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
max_connections = 500
port = $pgport
unix_socket_directories = '$data'
shared_preload_libraries = 'pg_cron,pg_documentdb_core,pg_documentdb'
cron.database_name = 'postgres'
documentdb.enableCompact = true
documentdb.enableLetAndCollationForQueryMatch = true
documentdb.enableNowSystemVariable = true
documentdb.enableSchemaValidation = true
documentdb.enableBypassDocumentValidation = true
documentdb.enableUserCrud = true
documentdb.maxUserLimit = 100
documentdb.defaultUseCompositeOpClass = on
documentdb.enableIndexOrderbyPushdown = on
EOF
  if ! "${DOCUMENTDB_SERVER_AS[@]}" "$bindir/pg_ctl" -D "$data/db" -l "$data/postgresql.log" -w -t 120 start \
    >/dev/null ||
    ! "$bindir/psql" -h 127.0.0.1 -p "$pgport" -U postgres -d postgres -X -q -v ON_ERROR_STOP=1 \
      -c 'CREATE EXTENSION documentdb CASCADE' >>"$data/postgresql.log" 2>&1; then
    tail -n 40 "$data/postgresql.log" >&2
    documentdb_server_fail "PostgreSQL with DocumentDB did not start"
    return 0
  fi
  mkdir "$data/ferretdb"
  "$DOCUMENTDB_SERVER_BIN" --listen-addr="127.0.0.1:$port" \
    --postgresql-url="postgres://postgres@127.0.0.1:$pgport/postgres" --no-auth --debug-addr=- \
    --telemetry=disable --state-dir="$data/ferretdb" >"$data/ferretdb.log" 2>&1 &
  pid=$!
  DOCUMENTDB_SERVER_PID=$pid
  if ! wait_port "$port" "$pid" 600; then
    tail -n 40 "$data/ferretdb.log" >&2
    documentdb_server_fail "FerretDB $DOCUMENTDB_SERVER_FERRETDB did not start"
    return 0
  fi
  # For the tests that stop and start a server of their own: the interface
  # of scripts/ferretdb's launcher (-listen ADDR -dir DIR), FerretDB 2.7 on
  # this PostgreSQL (which keeps the data; DIR holds FerretDB's state).
  cat >"$data/launcher" <<EOF
#!/bin/sh
[ "\$#" -eq 4 ] && [ "\$1" = -listen ] && [ "\$3" = -dir ] || { echo "usage: \$0 -listen ADDR -dir DIR" >&2; exit 2; }
mkdir -p "\$4" || exit 1
exec '$DOCUMENTDB_SERVER_BIN' --listen-addr="\$2" --postgresql-url='postgres://postgres@127.0.0.1:$pgport/postgres' \\
  --no-auth --debug-addr=- --telemetry=disable --state-dir="\$4"
EOF
  chmod +x "$data/launcher"
  export CQRS_DOCUMENTDB_LAUNCHER=$data/launcher
  export MONGODB_URI="mongodb://127.0.0.1:$port"
  export CQRS_DOCUMENTDB_URI=$MONGODB_URI
  echo "== FerretDB $DOCUMENTDB_SERVER_FERRETDB on DocumentDB (PostgreSQL $DOCUMENTDB_SERVER_PG on 127.0.0.1:$pgport)" \
    "on $MONGODB_URI (pid $pid), started in $((SECONDS - start)) s"
}

# Stops FerretDB, then PostgreSQL; their logs go to build/logs/.
documentdb_server_stop() {
  if [ -n "${DOCUMENTDB_SERVER_PID:-}" ]; then
    kill "$DOCUMENTDB_SERVER_PID" 2>/dev/null
    wait "$DOCUMENTDB_SERVER_PID" 2>/dev/null
    DOCUMENTDB_SERVER_PID=""
  fi
  local data=${DOCUMENTDB_SERVER_DATA:-}
  [ -n "$data" ] || return 0
  if [ -f "$data/db/postmaster.pid" ]; then
    "${DOCUMENTDB_SERVER_AS[@]}" "/usr/lib/postgresql/$DOCUMENTDB_SERVER_PG/bin/pg_ctl" -D "$data/db" -m fast -w \
      stop >/dev/null 2>&1
  fi
  mkdir -p "$DOCUMENTDB_SERVER_ROOT/build/logs"
  local f
  for f in postgresql ferretdb; do
    [ ! -f "$data/$f.log" ] || cp "$data/$f.log" "$DOCUMENTDB_SERVER_ROOT/build/logs/documentdb-server-$f.log"
  done
  rm -rf "$data"
  DOCUMENTDB_SERVER_DATA=""
}

if [ "${1:-}" = "--no-start" ]; then
  :
elif [ -n "${MONGODB_URI:-}" ]; then
  echo "== MongoDB tests on the server of MONGODB_URI"
else
  documentdb_server_start
fi
