#!/usr/bin/env bash
# Builds libcqrs with AddressSanitizer + UndefinedBehaviorSanitizer and
# warnings as errors, and runs the whole test suite; then runs it once more
# under valgrind on a plain build. Usage: scripts/test.sh [--no-valgrind]
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)

scripts/install-deps.sh


# A MongoDB-compatible test server unless MONGODB_URI is set; it exports
# MONGODB_URI for the Mongo tests and stops the server on exit.
# shellcheck source=scripts/mongo-server.sh
source scripts/mongo-server.sh

echo "== build (ASan + UBSan, -Werror)"
cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=Debug -DCQRS_SANITIZE=ON -DCQRS_WERROR=ON >/dev/null
cmake --build build/asan -j"$jobs"
echo "== tests (ASan + UBSan)"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build/asan --output-on-failure -j"$jobs"

echo "== fuzz smoke"
scripts/fuzz.sh 4

echo "== build (Release, -O3, -Werror, with the benchmarks)"
cmake -S . -B build/release-check -DCMAKE_BUILD_TYPE=Release -DCQRS_WERROR=ON -DCQRS_BENCH=ON -DCQRS_TESTS=OFF >/dev/null
cmake --build build/release-check -j"$jobs"
# The benchmarks still run (a smoke run: nothing here is timed or compared).
build/release-check/bench/cqrs-bench dispatch --n 20000 >/dev/null
build/release-check/bench/cqrs-bench pipeline --n 20000 >/dev/null

if [ "${1:-}" != "--no-valgrind" ]; then
  echo "== build (plain, for valgrind)"
  cmake -S . -B build/valgrind -DCMAKE_BUILD_TYPE=Debug -DCQRS_WERROR=ON -DCQRS_SAMPLES=ON \
    "-DCQRS_TEST_WRAPPER=valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect --track-origins=no -q" \
    >/dev/null
  cmake --build build/valgrind -j"$jobs"
  echo "== tests (valgrind)"
  ctest --test-dir build/valgrind --output-on-failure -j"$jobs"
fi
echo "== all tests passed"
