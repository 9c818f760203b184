#!/usr/bin/env bash
# Usage: scripts/go-toolchain.sh [VERSION]
# Prints the path of a Go toolchain of VERSION (default 1.24.4, which builds
# scripts/ferretdb; scripts/documentdb-server.sh asks for the one FerretDB 2
# needs; Debian 12 ships neither), obtaining it when it is not cached yet:
# Debian's golang-go (installed if no `go` is on PATH; any version that can
# download modules will do) fetches the toolchain from the Go module proxy,
# which serves it as the module golang.org/toolchain. Cached in
# ~/.cache/libcqrs/go<version>; progress goes to stderr.
set -euo pipefail
version=${1:-1.24.4}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/libcqrs
root=$cache/go$version
if [ -x "$root/bin/go" ] && "$root/bin/go" version >/dev/null 2>&1; then
  echo "$root/bin/go"
  exit 0
fi

boot=$(command -v go || true)
if [ -z "$boot" ]; then
  echo "installing Debian's golang-go to download Go $version" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq golang-go ca-certificates >&2
  boot=/usr/bin/go
fi
echo "downloading Go $version with $("$boot" version)" >&2
module=golang.org/toolchain@v0.0.1-go$version.$("$boot" env GOOS)-$("$boot" env GOARCH)
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/go-download.XXXXXX")
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
# A module cache of its own, writable, so the tree can be moved out of it.
dir=$(cd "$tmp" && GOMODCACHE=$tmp/mod GOFLAGS=-modcacherw GO111MODULE=on GOTOOLCHAIN=local \
  "$boot" mod download -json "$module" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
if [ -z "$dir" ] || [ ! -f "$dir/bin/go" ]; then
  echo "error: the Go module proxy did not serve $module" >&2
  exit 1
fi
# Module zips keep no file modes: the programs need theirs back.
chmod +x "$dir"/bin/* "$dir"/pkg/tool/*/*
rm -rf "$root.partial"
mv "$dir" "$root.partial"
"$root.partial/bin/go" version >&2
rm -rf "$root"
mv "$root.partial" "$root"
echo "$root/bin/go"
