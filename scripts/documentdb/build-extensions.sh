#!/usr/bin/env bash
# Usage: scripts/documentdb/build-extensions.sh PG SOURCES OUT
# Checks the three tarballs in SOURCES against SHA256SUMS beside this script,
# builds pgvector, pg_cron, documentdb_core and documentdb with PGXS for
# Debian's PostgreSQL PG, and installs them into OUT/stage (DESTDIR), with
# OUT/files.sha256 listing the checksum of each file at its place in /.
# OUT appears only when all of that succeeded. Run by
# scripts/documentdb-server.sh, whose cache key covers this file.
set -euo pipefail
pg=$1 src=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)
make_vars=(with_llvm=no "PG_CONFIG=/usr/lib/postgresql/$pg/bin/pg_config")
echo "== the sources in $src"
(cd "$src" && sha256sum --strict -c "$here/SHA256SUMS")
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
# In this order: documentdb links documentdb_core; its control file
# requires vector and pg_cron (and postgis, rum, tsm_system_rows: Debian's).
for d in pgvector pg_cron documentdb/pg_documentdb_core documentdb/pg_documentdb; do
  extra=()
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
