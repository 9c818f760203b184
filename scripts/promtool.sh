#!/usr/bin/env bash
# Prints the path of promtool (Prometheus's rule checker and rule unit-test
# runner), building it when it is not cached yet: from the Go module proxy,
# with the Go toolchain scripts/go-toolchain.sh finds or fetches, as
# scripts/mongo-server.sh builds FerretDB. Cached in
# ~/.cache/libcqrs/promtool-<version>; progress goes to stderr.
# github.com/prometheus/prometheus v0.54.1 is Prometheus 2.54.1.
set -euo pipefail
cd "$(dirname "$0")/.."
version=v0.54.1
cache=${XDG_CACHE_HOME:-$HOME/.cache}/libcqrs
bin=$cache/promtool-$version/promtool
if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi
go=$(scripts/go-toolchain.sh)
echo "building promtool $version from the Go module proxy (once; cached in $cache)" >&2
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/promtool-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# `go install module@version` refuses a module whose go.mod has replace
# directives, as Prometheus's has: its source is downloaded from the proxy
# and built as the main module, with the go.sum it ships.
module=github.com/prometheus/prometheus@$version
src=$(cd "$tmp" && GOTOOLCHAIN=local GO111MODULE=on "$go" mod download -json "$module" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
if [ -z "$src" ] || [ ! -d "$src/cmd/promtool" ]; then
  echo "error: the Go module proxy did not serve $module" >&2
  exit 1
fi
(cd "$src" && GOTOOLCHAIN=local GOFLAGS="-trimpath -mod=readonly" "$go" build -o "$tmp/promtool" ./cmd/promtool) >&2
mkdir -p "$(dirname "$bin")"
mv "$tmp/promtool" "$bin.tmp"
mv "$bin.tmp" "$bin"
echo "$bin"
