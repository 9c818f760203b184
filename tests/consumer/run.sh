#!/usr/bin/env bash
# Builds and runs the consumer apps against libcqrs installed under PREFIX,
# once with find_package(cqrs) and once with pkg-config, in BUILD_DIR: the
# README's quick start (cqrs::cqrs), mongo_app (cqrs::mongo), testing_app
# (cqrs::testing) and backend_app, backends of its own that pass
# cqrs::conformance.
# Usage: tests/consumer/run.sh PREFIX BUILD_DIR
set -euo pipefail
prefix=$(realpath "$1")
out=$(mkdir -p "$2" && realpath "$2")
here=$(cd "$(dirname "$0")" && pwd)
readme=$here/../../README.md

# The README's quick start is the cqrs::cqrs app, so the README stays true.
sed -n '/^## Quick start/,/^```$/p' "$readme" | sed '1,/^```c$/d;/^```$/d' >"$out/quickstart.c"
[ -s "$out/quickstart.c" ] || { echo "no C block under '## Quick start' in README.md" >&2; exit 1; }

echo "-- find_package(cqrs)"
cmake -S "$here" -B "$out/cmake" -DCMAKE_PREFIX_PATH="$prefix" -DQUICKSTART="$out/quickstart.c"
cmake --build "$out/cmake"
for app in quickstart mongo_app testing_app backend_app; do
  echo "-- run $app (CMake)"
  "$out/cmake/$app"
done

echo "-- pkg-config"
pcdir=$(dirname "$(find "$prefix" -name cqrs.pc -print -quit)")
libdir=$(PKG_CONFIG_PATH=$pcdir pkg-config --variable=libdir cqrs)
build_pc() { # NAME SOURCE MODULE
  # shellcheck disable=SC2046
  cc -std=c11 -Wall -Wextra -Werror -o "$out/pc-$1" "$2" \
    $(PKG_CONFIG_PATH=$pcdir pkg-config --cflags --libs "$3") -Wl,-rpath,"$libdir"
  echo "-- run $1 (pkg-config $3)"
  "$out/pc-$1"
}
build_pc quickstart "$out/quickstart.c" cqrs
build_pc mongo_app "$here/mongo_app.c" cqrs-mongo
build_pc testing_app "$here/testing_app.c" cqrs-testing
build_pc backend_app "$here/backend_app.c" cqrs-conformance

# The backend API is cqrs/backend.h's: cqrs/cqrs.h alone does not declare it.
echo "-- cqrs/cqrs.h declares no backend API"
printf '#include <cqrs/%s.h>\nstatic cqrs_store_ops_t ops;\nint main(void) { return ops.blocking; }\n' backend >"$out/backend_api.c"
printf '#include <cqrs/%s.h>\nstatic cqrs_store_ops_t ops;\nint main(void) { return ops.blocking; }\n' cqrs >"$out/user_api.c"
# shellcheck disable=SC2046
cc -std=c11 -fsyntax-only $(PKG_CONFIG_PATH=$pcdir pkg-config --cflags cqrs) "$out/backend_api.c"
# shellcheck disable=SC2046
if cc -std=c11 -fsyntax-only $(PKG_CONFIG_PATH=$pcdir pkg-config --cflags cqrs) "$out/user_api.c" 2>/dev/null; then
  echo "cqrs/cqrs.h declares cqrs_store_ops_t: the backend API belongs to cqrs/backend.h" >&2
  exit 1
fi
echo "-- consumer: all apps built and ran"
