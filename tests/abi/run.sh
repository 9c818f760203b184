#!/usr/bin/env bash
# The package across versions (docs/versioning.md): libcqrs 0.1.0, built from
# this repository's history, installed beside this build's install PREFIX:
#   - find_package(cqrs 0.2) refuses 0.1.0, find_package(cqrs 0.1) refuses
#     0.2 (0.x: SameMinorVersion), each accepts its own;
#   - an application built against 0.1.0 does not load 0.2's library (its
#     soname is libcqrs.so.0, 0.2's libcqrs.so.0.2): the loader refuses it,
#     where it used to load the new ABI and crash.
# 0.1.0's install is built once and cached in ~/.cache/libcqrs.
# Usage: tests/abi/run.sh PREFIX BUILD_DIR
set -euo pipefail
prefix=$(realpath "$1")
out=$(mkdir -p "$2" && realpath "$2")
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
v01=555e530d93fdc516073afec629348e8f51047057 # the last commit of 0.1.0
want=$(git -C "$top" rev-parse "${v01:0:7}" 2>/dev/null || true)
if [ "$want" != "$v01" ]; then
  echo "0.1.0 ($v01) is not in this clone's history: cannot build it" >&2
  exit 1
fi
cache=${XDG_CACHE_HOME:-$HOME/.cache}/libcqrs/cqrs-0.1.0-${v01:0:12}
if [ ! -f "$cache/done" ]; then
  echo "-- building libcqrs 0.1.0 from $v01 (cached in $cache)"
  rm -rf "$cache" "$out/src-0.1.0" "$out/build-0.1.0"
  mkdir -p "$out/src-0.1.0"
  git -C "$top" archive "$v01" | tar -x -C "$out/src-0.1.0"
  cmake -S "$out/src-0.1.0" -B "$out/build-0.1.0" -DCMAKE_BUILD_TYPE=Release -DCQRS_MONGO=OFF -DCQRS_TESTS=OFF \
    -DCQRS_SAMPLES=OFF >/dev/null
  cmake --build "$out/build-0.1.0" -j"$(nproc 2>/dev/null || echo 2)" >/dev/null
  cmake --install "$out/build-0.1.0" --prefix "$cache" >/dev/null
  [ -f "$(find "$cache" -name cqrsConfigVersion.cmake -print -quit)" ] || { echo "0.1.0 did not install" >&2; exit 1; }
  touch "$cache/done"
fi

# find_package: each version accepts its own, refuses the other.
check() { # WANT PREFIX EXPECT(ok|refused)
  local dir=$out/findpkg-$1-$3 got
  rm -rf "$dir"
  if cmake -S "$here/findpkg" -B "$dir" -DWANT="$1" -DCMAKE_PREFIX_PATH="$2" >"$dir.log" 2>&1; then got=ok; else got=refused; fi
  echo "-- find_package(cqrs $1) against $(basename "$2"): $got"
  [ "$got" = "$3" ] || { cat "$dir.log" >&2; echo "expected $3" >&2; exit 1; }
}
check 0.1 "$cache" ok
check 0.2 "$cache" refused
check 0.2 "$prefix" ok
check 0.1 "$prefix" refused

# An application built against 0.1.0 runs against it, and is refused by
# the loader against 0.2 alone.
lib01=$(dirname "$(find "$cache" -name 'libcqrs.so*' -print -quit)")
lib02=$(dirname "$(find "$prefix" -name 'libcqrs.so.0.2*' -print -quit)")
cc -std=c11 -D_DEFAULT_SOURCE -o "$out/old_app" "$here/old_app.c" -I"$cache/include" \
  $(pkg-config --cflags libuv libbson-1.0) -L"$lib01" -lcqrs
LD_LIBRARY_PATH=$lib01 "$out/old_app"
set +e
LD_LIBRARY_PATH=$lib02 "$out/old_app" >"$out/old_app.out" 2>&1
rc=$?
set -e
echo "-- 0.1.0's application against 0.2 alone: exit $rc: $(head -c 200 "$out/old_app.out")"
if [ "$rc" -ne 127 ] || ! grep -q "libcqrs.so.0:" "$out/old_app.out"; then
  echo "expected the loader to refuse it (exit 127, libcqrs.so.0 not found)" >&2
  exit 1
fi
echo "-- the versions keep apart"
