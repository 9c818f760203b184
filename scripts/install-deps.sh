#!/usr/bin/env bash
# Installs the Debian packages libcqrs builds and tests with, when any is missing.
set -euo pipefail
pkgs=(cmake gcc make pkg-config libuv1-dev libbson-dev libmongoc-dev uthash-dev libcmocka-dev valgrind)
# --fuzz (scripts/fuzz.sh): clang and its libFuzzer runtime as well.
if [ "${1:-}" = "--fuzz" ]; then pkgs+=(clang libclang-rt-14-dev); fi
missing=()
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
