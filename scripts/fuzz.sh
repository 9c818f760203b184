#!/usr/bin/env bash
# Builds the libFuzzer harnesses of fuzz/ with clang (AddressSanitizer +
# UndefinedBehaviorSanitizer), replays every input committed under
# fuzz/corpus/<harness>/ (seeds and the reproducers of fixed crashes, as
# regressions), then fuzzes each harness for SECONDS (default 60; 0: replay
# only). Usage: scripts/fuzz.sh [SECONDS] [HARNESS...]
# New inputs go to build/fuzz/corpus/<harness>/, crashes to
# build/fuzz/artifacts/<harness>/; libFuzzer's output to build/fuzz/<harness>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
[ $# -gt 0 ] && shift
scripts/install-deps.sh --fuzz

build=build/fuzz
mkdir -p "$build"
if ! { cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Fuzz -DCQRS_FUZZ=ON \
         -DCQRS_TESTS=OFF -DCQRS_SAMPLES=OFF -DCQRS_BENCH=OFF \
         "-DCMAKE_C_FLAGS=-O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined" \
         "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined" \
         "-DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=address,undefined" &&
       cmake --build "$build" -j2 --target fuzz_types &&
       cmake --build "$build" -j2 --target $(sed 's/\([^;]*\);*/fuzz_\1 /g' "$build/fuzz/harnesses.txt"); } \
     >"$build/build.log" 2>&1; then
  tail -n 40 "$build/build.log"
  echo "fuzz: the harnesses did not build (log: $build/build.log)" >&2
  exit 1
fi

harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || read -r -a harnesses <<<"$(tr ';' ' ' <"$build/fuzz/harnesses.txt")"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
status=0
for h in "${harnesses[@]}"; do
  bin=$build/fuzz/fuzz_$h
  log=$build/$h.log
  mkdir -p "$build/corpus/$h" "$build/artifacts/$h"
  # The committed inputs once each: a reproducer that crashes again is a regression.
  if ! "$bin" fuzz/corpus/"$h"/* >"$log" 2>&1 ||
     { [ "$secs" -gt 0 ] &&
       ! "$bin" -max_total_time="$secs" -max_len=4096 -timeout=10 -print_final_stats=1 \
          -artifact_prefix="$build/artifacts/$h/" "$build/corpus/$h" "fuzz/corpus/$h" >>"$log" 2>&1; }; then
    tail -n 30 "$log"
    echo "fuzz: $h failed (log: $log; a crashing input is in $build/artifacts/$h/: fix it, then" \
         "commit it under fuzz/corpus/$h/ as a regression)" >&2
    status=1
    continue
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  echo "fuzz: $h: ${runs:-?} runs in ${secs}s, $(find fuzz/corpus/"$h" -type f | wc -l) committed inputs replayed"
done
exit $status
