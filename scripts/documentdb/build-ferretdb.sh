#!/usr/bin/env bash
# Usage: scripts/documentdb/build-ferretdb.sh VERSION GO BIN
# Builds FerretDB VERSION (v2.x, from the Go module proxy) with Go GO (which
# scripts/go-toolchain.sh finds or fetches) into BIN; the modules and the
# build cache live in a temporary directory beside BIN, removed after.
set -euo pipefail
version=$1 goversion=$2 bin=$3
go=$("$(dirname "$0")/../go-toolchain.sh" "$goversion")
tmp=$(mktemp -d "$bin.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
GOTOOLCHAIN=local GOPATH=$tmp/go GOMODCACHE=$tmp/go/pkg/mod GOCACHE=$tmp/cache GOFLAGS=-modcacherw GOBIN=$tmp/bin \
  "$go" install -trimpath "github.com/FerretDB/FerretDB/v2/cmd/ferretdb@$version"
"$tmp/bin/ferretdb" --version
mv "$tmp/bin/ferretdb" "$bin"
