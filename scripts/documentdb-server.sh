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
#   this build recipe), then copied into Debian's PostgreSQL 15 tree, where a
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

# documentdb_server_build_extensions SOURCES OUT: checks the tarballs, builds
# the four extensions with PGXS and installs them into OUT/stage (DESTDIR),
# with OUT/files.sha256 listing what goes where. Runs in a phase.
documentdb_server_build_extensions() {
  set -euo pipefail
  local src=$1 out=$2 tmp d
  local make_vars=(with_llvm=no "PG_CONFIG=/usr/lib/postgresql/$DOCUMENTDB_SERVER_PG/bin/pg_config")
  echo "== the sources in $src"
  (cd "$src" && sha256sum --strict -c "$DOCUMENTDB_SERVER_ROOT/scripts/documentdb/SHA256SUMS")
  tmp=$out.tmp
  rm -rf "$tmp"
  mkdir -p "$tmp/src" "$tmp/stage" "$tmp/pkgconfig"
  for d in pgvector pg_cron documentdb; do
    mkdir "$tmp/src/$d"
    tar -xzf "$src/$d.tar.gz" -C "$tmp/src/$d"
  done
  # Intel's decimal library from Debian (libintelrdfpmath-dev: libbidgcc000,
  # the call-by-value variant documentdb uses), in place of the download
  # script of documentdb's own build.
  printf '%s\n' "Name: intelmathlib" "Description: Intel Decimal Floating-Point Math Library (Debian)" \
    "Version: 2.0" "Cflags: -I/usr/include" "Libs: -lbidgcc000" >"$tmp/pkgconfig/intelmathlib.pc"
  export PKG_CONFIG_PATH=$tmp/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  for d in pgvector pg_cron documentdb/pg_documentdb_core documentdb/pg_documentdb; do
    local extra=()
    # Debian 12's libbson (1.23) lacks the sensitive binary subtype (1.24).
    [ "$d" != documentdb/pg_documentdb ] || extra=("COPT=-DBSON_SUBTYPE_SENSITIVE=0x08 -Wno-error=switch")
    echo "== $d"
    make -C "$tmp/src/$d" -j2 "${make_vars[@]}" "${extra[@]}"
    make -C "$tmp/src/$d" "${make_vars[@]}" "${extra[@]}" install DESTDIR="$tmp/stage"
  done
  (cd "$tmp/stage" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | sed 's|  \./|  /|' >"$tmp/files.sha256"
  cat "$tmp/files.sha256"
  rm -rf "$tmp/src" "$tmp/pkgconfig" "$out"
  mv "$tmp" "$out"
}

# documentdb_server_install_extensions OUT MANIFEST: copies the staged tree
# into / and records MANIFEST. Runs in a phase.
documentdb_server_install_extensions() {
  set -euo pipefail
  local out=$1 manifest=$2 sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo rm -f "$(dirname "$manifest")"/libcqrs-documentdb-*.sha256
  tar -C "$out/stage" -cf - . | $sudo tar -C / -xvf - --no-same-owner --no-overwrite-dir
  sha256sum --strict -c "$out/files.sha256"
  $sudo cp "$out/files.sha256" "$manifest"
}

# documentdb_server_build_ferretdb BIN: FerretDB 2.7 from the Go module proxy,
# its modules and build cache in a temporary directory. Runs in a phase.
documentdb_server_build_ferretdb() {
  set -euo pipefail
  local bin=$1 go tmp
  go=$("$DOCUMENTDB_SERVER_ROOT/scripts/go-toolchain.sh" "$DOCUMENTDB_SERVER_GO")
  tmp=$(mktemp -d "$bin.build.XXXXXX")
  # shellcheck disable=SC2064 # expanded now, on purpose
  trap "rm -rf '$tmp'" EXIT
  GOTOOLCHAIN=local GOPATH=$tmp/go GOMODCACHE=$tmp/go/pkg/mod GOCACHE=$tmp/cache GOFLAGS=-modcacherw \
    GOBIN=$tmp/bin "$go" install -trimpath "github.com/FerretDB/FerretDB/v2/cmd/ferretdb@$DOCUMENTDB_SERVER_FERRETDB"
  "$tmp/bin/ferretdb" --version
  mv "$tmp/bin/ferretdb" "$bin"
}

# The builds and installs that are not done yet; fails after saying why.
documentdb_server_prepare() {
  local cache key ext manifest src
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/libcqrs
  mkdir -p "$cache"
  if ! phase --may-fail "DocumentDB: packages" -- "$DOCUMENTDB_SERVER_ROOT/scripts/install-deps.sh" --documentdb; then
    documentdb_server_fail "the packages of the DocumentDB server did not install"
    return 1
  fi
  key=$({
    cat "$DOCUMENTDB_SERVER_ROOT/scripts/documentdb/SHA256SUMS"
    echo "PostgreSQL $DOCUMENTDB_SERVER_PG"
    declare -f documentdb_server_build_extensions
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
        documentdb_server_build_extensions "$src" "$ext"; then
        documentdb_server_fail "the DocumentDB extensions did not build"
        return 1
      fi
    fi
    if ! phase --may-fail "DocumentDB: extensions (install into PostgreSQL $DOCUMENTDB_SERVER_PG)" -- \
      documentdb_server_install_extensions "$ext" "$manifest"; then
      documentdb_server_fail "the DocumentDB extensions did not install"
      return 1
    fi
  fi
  DOCUMENTDB_SERVER_BIN=$cache/ferretdb-$DOCUMENTDB_SERVER_FERRETDB-go$DOCUMENTDB_SERVER_GO
  if [ ! -x "$DOCUMENTDB_SERVER_BIN" ]; then
    if ! phase --may-fail "FerretDB $DOCUMENTDB_SERVER_FERRETDB (Go toolchain + build, cached)" -- \
      documentdb_server_build_ferretdb "$DOCUMENTDB_SERVER_BIN"; then
      documentdb_server_fail "FerretDB $DOCUMENTDB_SERVER_FERRETDB did not build"
      return 1
    fi
  fi
}

documentdb_server_start() {
  local start=$SECONDS bindir data pgport port pid
  documentdb_server_prepare || return 0
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
  # several fields and sorts, as MongoDB's do.
  cat >>"$data/db/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
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
