#!/usr/bin/env bash
# The ABI check (docs/versioning.md): the public ABI of each installed
# library, read by libabigail's abidw from its debug info and restricted to
# the installed headers, against the baseline kept in abi/<soname>.abi.
#
#   scripts/abi.sh PREFIX           check: an incompatible change fails, an
#                                   additive one passes (and is shown); a
#                                   soname without a baseline fails
#   scripts/abi.sh PREFIX --renew   write the baselines: a new soname's, or
#                                   an additive change to an existing one; an
#                                   incompatible change under the same soname
#                                   is refused (bump the version first)
#
# PREFIX is an install of a build with debug info (scripts/test.sh installs
# its Release build, made with -g, into build/install-check).
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:?usage: scripts/abi.sh PREFIX [--renew]}
renew=false
[ "${2:-}" = "--renew" ] && renew=true
headers=$prefix/include/cqrs
[ -d "$headers" ] || { echo "abi: no headers in $headers" >&2; exit 2; }
mkdir -p abi build/abi
failed=0
checked=0
for lib in cqrs cqrs-mongo cqrs-testing cqrs-http cqrs-conformance; do
  file=$(find "$prefix" -name "lib$lib.so.*.*.*" -type f | head -n 1)
  if [ -z "$file" ]; then
    echo "abi: lib$lib is not installed under $prefix: not checked"
    continue
  fi
  soname=$(objdump -p "$file" | awk '/SONAME/ {print $2}')
  base=abi/$soname.abi
  now=build/abi/$soname.abi
  abidw --headers-dir "$headers" --no-corpus-path --drop-undefined-syms --out-file "$now" "$file"
  checked=$((checked + 1))
  if [ ! -f "$base" ]; then
    if $renew; then
      cp "$now" "$base"
      echo "abi: $soname: baseline written ($base)"
    else
      echo "abi: $soname has no baseline: a new soname records one with 'scripts/abi.sh PREFIX --renew' (commit abi/)"
      failed=1
    fi
    continue
  fi
  set +e
  abidiff --suppressions abi/suppressions "$base" "$now" >"build/abi/$soname.diff" 2>&1
  rc=$?
  set -e
  # libabigail flags only some breaks as incompatible (a removed symbol);
  # a changed function or variable (a struct grown in the middle, a
  # parameter's type) is a break too. What is only added is not.
  if [ $((rc & 4)) -ne 0 ] && grep -Eq '[1-9][0-9]* (Removed|Changed)' "build/abi/$soname.diff"; then
    rc=$((rc | 8))
  fi
  if [ $((rc & 3)) -ne 0 ]; then
    echo "abi: $soname: abidiff failed (exit $rc):"
    cat "build/abi/$soname.diff"
    failed=1
  elif [ $((rc & 8)) -ne 0 ]; then
    echo "abi: $soname: an INCOMPATIBLE change to the ABI of its baseline ($base):"
    sed 's/^/   | /' "build/abi/$soname.diff"
    echo "abi: bump the version (0.x: the minor one, which changes the soname), then record the new soname's baseline"
    failed=1
  elif [ $((rc & 4)) -ne 0 ]; then
    if $renew; then
      cp "$now" "$base"
      echo "abi: $soname: an additive change, baseline renewed"
    else
      echo "abi: $soname: an additive change (compatible); 'scripts/abi.sh PREFIX --renew' records it"
    fi
  else
    echo "abi: $soname: as its baseline"
  fi
done
[ "$checked" -gt 0 ] || { echo "abi: no library found under $prefix" >&2; exit 2; }
exit $failed
