#!/usr/bin/env bash
# Installs the Debian packages libcqrs builds and tests with, when any is missing.
# The Go toolchain for the MongoDB test server comes on demand, through
# scripts/go-toolchain.sh (Debian 12 ships no Go recent enough).
set -euo pipefail
unwanted=()
pkgs=(cmake gcc make pkg-config libuv1-dev libbson-dev libmongoc-dev uthash-dev libcmocka-dev valgrind
  libmicrohttpd-dev libcurl4-openssl-dev python3 libsodium-dev)
for opt in "$@"; do
  case $opt in
    # scripts/fuzz.sh: clang and its libFuzzer runtime as well.
    --fuzz) pkgs+=(clang libclang-rt-14-dev) ;;
    # scripts/java-mongo-server.sh: a JDK and Maven for mongo-java-server.
    --java) pkgs+=(openjdk-17-jdk-headless maven) ;;
    # scripts/documentdb-server.sh: PostgreSQL 15, what the DocumentDB
    # extension is built with (its server headers include gssapi/gssapi.h:
    # libkrb5-dev; Intel's decimal library), and the extensions it requires
    # that Debian packages for PostgreSQL 15 (PostGIS, RUM).
    --documentdb)
      pkgs+=(postgresql-15 postgresql-server-dev-15 postgresql-15-postgis-3 postgresql-15-rum libkrb5-dev
        libpcre2-dev libintelrdfpmath-dev)
      # Debian's pg_cron 1.4.2 lacks the second-level schedules DocumentDB
      # needs: the 1.6 built from the vendored sources takes its place.
      unwanted+=(postgresql-15-cron) ;;
    *) echo "usage: $0 [--fuzz] [--java] [--documentdb]" >&2; exit 2 ;;
  esac
done
pkgs+=(spin) # model checking: scripts/models.sh
pkgs+=(stress-ng) # scripts/test.sh --stress: the load beside the tests
pkgs+=(abigail-tools) # the ABI check: scripts/abi.sh
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=() present=()
for p in "${pkgs[@]}"; do installed "$p" || missing+=("$p"); done
for p in "${unwanted[@]}"; do if installed "$p"; then present+=("$p"); fi; done
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ ${#present[@]} -gt 0 ]; then
  echo "removing: ${present[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get remove -y -qq "${present[@]}"
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
