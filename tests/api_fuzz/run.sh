#!/usr/bin/env bash
# Schema-driven fuzzing of the local HTTP API of a real `meshsync` node.
#
# Starts `meshsync run` on a temporary data dir with the API on a free loopback port, then lets
# schemathesis generate valid and invalid requests for every operation of the OpenAPI document
# the node serves (/v1/openapi.json), with the node's own token. Any 5xx answer, a node that dies
# or panics, or a node that does not stop cleanly on SIGTERM fails the run.
#
# Usage:   tests/api_fuzz/run.sh PATH/TO/meshsync
#          (build it first: cargo build --release -p meshsync-cli)
# Options: API_FUZZ_EXAMPLES  test cases per operation (default 100)
#          API_FUZZ_SEED      seed, to replay a failing run (default random; printed at the end)
#
# Not fuzzed, because they make the node dial whatever address is generated, and this
# machine's tests must only ever send traffic to loopback: POST /v1/peers (adds a peer to dial),
# POST /v1/peers/{device}/test (connects to it) and PUT /v1/config (could set peers or
# rendezvous URLs). crates/api/tests covers them, bad input included.
set -euo pipefail

bin=${1:?usage: tests/api_fuzz/run.sh PATH/TO/meshsync}
if [[ ! -x $bin ]]; then
  echo "api fuzz: $bin is not an executable; build it with: cargo build --release -p meshsync-cli" >&2
  exit 2
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
root=$(cd "$(dirname "$0")/../.." && pwd)

# schemathesis gets its own virtualenv under target/, with exact versions: the run then neither
# depends on nor disturbs the machine's Python packages (schemathesis 3.x, for one, breaks with
# current hypothesis releases).
schemathesis_version=4.32.5
hypothesis_version=6.170.15
venv=$root/target/api-fuzz-venv
st=$venv/bin/schemathesis
if ! "$st" --version 2>/dev/null | grep -qF "$schemathesis_version"; then
  echo "api fuzz: installing schemathesis $schemathesis_version into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "schemathesis==$schemathesis_version" "hypothesis==$hypothesis_version"
fi
# Keep schemathesis from reaching out to its service: this machine talks to loopback only.
export SCHEMATHESIS_TELEMETRY=false

work=$(mktemp -d "${TMPDIR:-/tmp}/meshsync-api-fuzz.XXXXXX")
node_pid=
cleanup() {
  if [[ -n $node_pid ]] && kill -0 "$node_pid" 2>/dev/null; then
    kill -KILL "$node_pid" 2>/dev/null || true
    wait "$node_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "api fuzz: $*" >&2
  echo "--- node log ($work/node.log) ---" >&2
  tail -n 60 "$work/node.log" >&2 || true
  exit 1
}

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
"$bin" run --data-dir "$work/data" --api "127.0.0.1:$port" --no-mdns --no-beacon --listen 127.0.0.1:0 >"$work/node.log" 2>&1 &
node_pid=$!

# Ready when the document is served (it needs no token) and the token file exists.
ready=
for _ in $(seq 1 150); do
  kill -0 "$node_pid" 2>/dev/null || fail "the node exited during startup"
  if [[ -s $work/data/api-token ]] && python3 - "$base/v1/openapi.json" <<'EOF' 2>/dev/null; then
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as response:
    sys.exit(0 if response.status == 200 else 1)
EOF
    ready=1
    break
  fi
  sleep 0.2
done
[[ -n $ready ]] || fail "the API did not answer on $base within 30 s"
token=$(tr -d '[:space:]' <"$work/data/api-token")

seed_args=()
if [[ -n ${API_FUZZ_SEED:-} ]]; then seed_args=(--seed "$API_FUZZ_SEED"); fi
echo "api fuzz: schemathesis against $base, ${API_FUZZ_EXAMPLES:-100} cases per operation"
status=0
"$st" run "$base/v1/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error \
  --mode all \
  --max-examples "${API_FUZZ_EXAMPLES:-100}" \
  "${seed_args[@]}" \
  --request-timeout 10 \
  --exclude-operation-id add_peer \
  --exclude-operation-id test_peer \
  --exclude-operation-id put_config \
  --no-color || status=$?

kill -0 "$node_pid" 2>/dev/null || fail "the node died during the run"
if grep -q "panicked" "$work/node.log"; then fail "the node panicked"; fi
[[ $status -eq 0 ]] || fail "schemathesis found failures (exit $status); replay with API_FUZZ_SEED and the seed above"

# A clean stop on SIGTERM, within 10 s, with every stream closed.
kill -TERM "$node_pid"
for _ in $(seq 1 100); do
  kill -0 "$node_pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$node_pid" 2>/dev/null; then fail "the node did not stop within 10 s of SIGTERM"; fi
wait "$node_pid" || fail "the node exited with status $? after SIGTERM"
node_pid=
echo "api fuzz: no server errors; the node stopped cleanly"
