#!/usr/bin/env bash
# Lists which of the given object files call (or use data of) which, and
# fails on any two that reference each other: A uses a symbol B defines and
# B one A defines. Reads the symbols with nm, so it sees every cross-file
# call the compiler left, macros and function pointers taken included.
#   scripts/call-circles.sh build/asan/framework/CMakeFiles/cqrs.dir/src/process/*.o
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 FILE.o FILE.o..." >&2
  exit 2
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for o in "$@"; do
  b=$(basename "$o" .o)
  b=$(basename "$(dirname "$o")").${b%.c} # folder.file: two testing.c stay apart
  nm --defined-only "$o" | awk '$2 ~ /^[TDRB]$/ {print $3}' | sort -u >"$tmp/$b.def"
  nm -u "$o" | awk '{print $2}' | sort -u >"$tmp/$b.und"
done
: >"$tmp/edges"
for u in "$tmp"/*.und; do
  a=$(basename "$u" .und)
  for d in "$tmp"/*.def; do
    b=$(basename "$d" .def)
    [ "$a" = "$b" ] && continue
    used=$(comm -12 "$u" "$d" | tr '\n' ' ')
    if [ -n "$used" ]; then
      echo "$a -> $b: $used"
      echo "$a $b" >>"$tmp/edges"
    fi
  done
done
status=0
while read -r a b; do
  if [[ "$a" < "$b" ]] && grep -qx "$b $a" "$tmp/edges"; then
    echo "circle: $a <-> $b"
    status=1
  fi
done <"$tmp/edges"
exit $status
