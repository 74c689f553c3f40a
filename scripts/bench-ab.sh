#!/usr/bin/env bash
# Alternating before/after `ferry bench` on SQLite, so both binaries meet the same machine
# weather: RUNS rounds of (before, after), each on a fresh data dir with log = "warn", the same
# bench client (AFTER's binary) against each server.
# Usage: scripts/bench-ab.sh BEFORE_BIN AFTER_BIN [RUNS] ; PHASES (default e2e) and GREP
# (default "end to end") pick the phases and the lines printed.
set -u
before=$1 after=$2 runs=${3:-3} port=${PORT:-7790}
for i in $(seq 1 "$runs"); do
  for which in before after; do
    bin=$before; [ "$which" = after ] && bin=$after
    dir=$(mktemp -d); printf 'log = "warn"\n' > "$dir/ferry.toml"
    (cd "$dir" && exec "$bin" serve --listen 127.0.0.1:$port --data-dir "$dir" >/dev/null 2>&1) &
    pid=$!
    for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:$port/healthz && break; sleep 0.1; done
    out=$("$after" bench --url http://127.0.0.1:$port ${PHASES:-e2e} 2>&1 | grep "${GREP:-end to end}")
    echo "$which run $i: $out"
    kill "$pid"; wait "$pid" 2>/dev/null; rm -rf "$dir"
  done
done
