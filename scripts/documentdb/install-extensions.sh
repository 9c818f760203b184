#!/usr/bin/env bash
# Usage: scripts/documentdb/install-extensions.sh OUT MANIFEST
# Copies the staged tree OUT/stage (scripts/documentdb/build-extensions.sh)
# into / (as root or with sudo: PostgreSQL's tree is Debian's), checks every
# file against OUT/files.sha256, and copies that list to MANIFEST (in the
# same directory, the manifests of other builds are removed first), which
# then says that the extensions are in place.
set -euo pipefail
out=$1 manifest=$2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo rm -f "$(dirname "$manifest")"/libcqrs-documentdb-*.sha256
tar -C "$out/stage" -cf - . | $sudo tar -C / -xvf - --no-same-owner --no-overwrite-dir
sha256sum --strict -c "$out/files.sha256"
$sudo cp "$out/files.sha256" "$manifest"
