#!/usr/bin/env bash
# Installs the Debian packages libcqrs builds and tests with, when any is missing.
# The Go toolchain for the MongoDB test server comes on demand, through
# scripts/go-toolchain.sh (Debian 12 ships no Go recent enough).
set -euo pipefail
pkgs=(cmake gcc make pkg-config libuv1-dev libbson-dev libmongoc-dev uthash-dev libcmocka-dev valgrind
  libmicrohttpd-dev libcurl4-openssl-dev python3 libsodium-dev)
# --fuzz (scripts/fuzz.sh): clang and its libFuzzer runtime as well.
if [ "${1:-}" = "--fuzz" ]; then pkgs+=(clang libclang-rt-14-dev); fi
# --java (scripts/java-mongo-server.sh): a JDK and Maven for mongo-java-server.
if [ "${1:-}" = "--java" ]; then pkgs+=(openjdk-17-jdk-headless maven); fi
missing=()
pkgs+=(spin) # model checking: scripts/models.sh
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
