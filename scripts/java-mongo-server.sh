# shellcheck shell=bash
# Sourced by scripts/bench.sh --java (or by hand: `source
# scripts/java-mongo-server.sh` in a shell, then MONGODB_URI=... ctest).
# Starts mongo-java-server (in-memory backend), a MongoDB-compatible server
# that serves `_id` and unique-index equality look-ups from its indexes
# (FerretDB 1.24 scans for every look-up), on a free 127.0.0.1 port, and
# exports MONGODB_URI; the server stops when the calling shell exits. The
# launcher (scripts/java-mongo-server/: the dependencies in pom.xml, resolved
# by Maven, and Main.java) is built once and cached in ~/.cache/libcqrs.
# Needs java (17+) and mvn: scripts/install-deps.sh --java installs them.
# CQRS_JAVA_MONGO_HEAP sets the heap (default 4g: 500,000 commits take ~2 GB).

# shellcheck source=scripts/phase.sh
type phase >/dev/null 2>&1 || source scripts/phase.sh
# shellcheck source=scripts/server-common.sh
source scripts/server-common.sh

java_mongo_server_build() {
  local src=$1 dir=$2
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp/classes"
  mvn -q -B -f "$src/pom.xml" dependency:copy-dependencies -DoutputDirectory="$dir.tmp/lib"
  javac -d "$dir.tmp/classes" -cp "$dir.tmp/lib/*" "$src/Main.java"
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
}

# Java exits 143 on SIGTERM: at_exit goes on after it.
java_mongo_server_stop() {
  kill "$JAVA_MONGO_PID" 2>/dev/null
  wait "$JAVA_MONGO_PID" 2>/dev/null
  rm -f "$JAVA_MONGO_LOG"
}

java_mongo_server_start() {
  local src=scripts/java-mongo-server cache dir hash port pid
  for tool in java javac mvn; do
    if ! command -v "$tool" >/dev/null; then
      echo "error: $tool is missing (scripts/install-deps.sh --java)" >&2
      return 1
    fi
  done
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/libcqrs
  hash=$(cat "$src/pom.xml" "$src/Main.java" | sha256sum | cut -c1-16)
  dir=$cache/java-mongo-server-$hash
  if [ ! -d "$dir" ]; then
    mkdir -p "$cache"
    phase "mongo-java-server launcher (Maven, cached)" -- java_mongo_server_build "$src" "$dir"
  fi
  if ! port=$(free_port 27100 27999); then
    echo "error: no free port for mongo-java-server" >&2
    return 1
  fi
  JAVA_MONGO_LOG=$(mktemp "${TMPDIR:-/tmp}/libcqrs-java-mongo.XXXXXX")
  java -Xmx"${CQRS_JAVA_MONGO_HEAP:-4g}" -XX:+UseParallelGC -cp "$dir/classes:$dir/lib/*" Main "$port" \
    >"$JAVA_MONGO_LOG" 2>&1 &
  pid=$!
  JAVA_MONGO_PID=$pid
  at_exit java_mongo_server_stop
  if wait_port "$port" "$pid" 200; then
    export MONGODB_URI="mongodb://127.0.0.1:$port"
    echo "== mongo-java-server on $MONGODB_URI (pid $pid)"
    return 0
  fi
  cat "$JAVA_MONGO_LOG" >&2
  echo "error: mongo-java-server did not start" >&2
  return 1
}

java_mongo_server_start
