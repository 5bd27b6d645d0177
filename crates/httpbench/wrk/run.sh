#!/usr/bin/env bash
# Cross-check of meshsync-httpbench with wrk: starts a node on loopback, runs PUT then GET with
# C keep-alive connections (2 s unrecorded warm-up, then D s recorded), prints wrk's summary and
# one JSON line per phase, and stops the node. Usage:
#   crates/httpbench/wrk/run.sh [MESHSYNC_BIN] [CONNECTIONS] [SECONDS] [THREADS]
# Needs wrk (apt-get install -y wrk). Traffic goes to 127.0.0.1 only; every run is bounded.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-${CARGO_TARGET_DIR:-target}/release/meshsync}"
conns="${2:-16}"
secs="${3:-10}"
threads="${4:-1}"
dir="$(mktemp -d /tmp/meshsync-wrk-XXXXXX)"
out="$dir/node.out"
"$bin" run --data-dir "$dir/data" --api 127.0.0.1:0 --listen 127.0.0.1:0 --no-mdns --log warn >"$out" 2>&1 &
node=$!
trap 'kill -TERM $node 2>/dev/null; wait $node 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do grep -q 'API ' "$out" && break; sleep 0.1; done
url="$(grep -o 'http://127.0.0.1:[0-9]*' "$out" | head -1)"
export TOKEN="$(cat "$dir/data/api-token")"
prefix="w$(date +%s)"
echo "node $node at $url; wrk -t$threads -c$conns, 2 s warm-up + ${secs} s" >&2
wrk -t"$threads" -c"$conns" -d2s -s "$here/put.lua" "$url" -- "${prefix}warm" >/dev/null
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$node/stat"; }
c0=$(cpu)
wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -s "$here/put.lua" "$url" -- "$prefix"
c1=$(cpu)
echo "node CPU during PUT: $(( (c1 - c0) * 100 / ticks / secs ))% of one core" >&2
wrk -t"$threads" -c"$conns" -d2s -s "$here/get.lua" "$url" -- "$prefix" "$threads" 1000 >/dev/null
c0=$(cpu)
wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -s "$here/get.lua" "$url" -- "$prefix" "$threads" 1000
c1=$(cpu)
echo "node CPU during GET: $(( (c1 - c0) * 100 / ticks / secs ))% of one core" >&2
