# shellcheck shell=bash
# Sourced by scripts/mongo-server.sh when CQRS_FERRETDB_BACKEND=postgresql:
# starts Debian's PostgreSQL (installing the package when missing) on
# 127.0.0.1, a free port, trust authentication, its data in a temporary
# directory, for FerretDB's PostgreSQL backend; exports CQRS_PG_URL.
# pg_server_stop stops it; it runs when the calling shell exits.

# shellcheck source=scripts/server-common.sh
source scripts/server-common.sh

pg_server_start() {
  local bindir port data as=()
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [ -z "$bindir" ]; then
    echo "== installing postgresql"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
    bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  data=$(mktemp -d "${TMPDIR:-/tmp}/libcqrs-pg.XXXXXX")
  # PostgreSQL refuses to run as root: run it as the package's user then.
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres "$data"
    as=(runuser -u postgres --)
  fi
  PG_SERVER_DATA=$data
  PG_SERVER_BIN=$bindir
  PG_SERVER_AS=("${as[@]}")
  at_exit pg_server_stop
  "${as[@]}" "$bindir/initdb" -D "$data/db" -A trust -U ferretdb >"$data/initdb.log" 2>&1 ||
    { cat "$data/initdb.log" >&2; return 1; }
  port=$(free_port 25100 25999) || { echo "no free port for PostgreSQL" >&2; return 1; }
  "${as[@]}" "$bindir/pg_ctl" -D "$data/db" -l "$data/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $data" start >/dev/null ||
    { cat "$data/log" >&2; return 1; }
  "${as[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$port" -U ferretdb ferretdb
  export CQRS_PG_URL="postgres://ferretdb@127.0.0.1:$port/ferretdb"
  echo "== PostgreSQL on 127.0.0.1:$port for FerretDB"
}

pg_server_stop() {
  [ -n "${PG_SERVER_DATA:-}" ] || return 0
  "${PG_SERVER_AS[@]}" "$PG_SERVER_BIN/pg_ctl" -D "$PG_SERVER_DATA/db" -m fast -w stop >/dev/null 2>&1
  rm -rf "$PG_SERVER_DATA"
  PG_SERVER_DATA=""
}
