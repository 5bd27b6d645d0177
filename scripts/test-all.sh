#!/usr/bin/env bash
# Runs the whole meshsync test suite on a fresh machine, installing what it needs first.
# Used by CI (.ci/run) and by developers: `./scripts/test-all.sh`. The API fuzzing step installs
# its own pinned schemathesis into target/api-fuzz-venv; the cargo-fuzz step installs cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s ===\n' "$*"; }
export CARGO_TERM_COLOR=never
export PROPTEST_CASES_MULTIPLIER=${PROPTEST_CASES_MULTIPLIER:-1}

step "tools the tests need"
# The multi-host discovery tests (crates/cli/tests/netns.rs) build network namespaces with
# iproute2 and drop multicast with nftables.
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v nft >/dev/null || missing+=(nftables)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q "${missing[@]}" >/dev/null \
    || { DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get update -q >/dev/null && \
         DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q "${missing[@]}" >/dev/null; }
fi

step "build"
cargo build --workspace --all-targets --locked 2>&1 | tail -n 3
cargo build --release -p meshsync-cli -p meshsync-bench --locked 2>&1 | tail -n 3

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings 2>&1 | tail -n 3

step "unit, property, integration and kill -9 tests"
# Dependencies and the merge core are compiled with optimizations (see [profile.dev.package] in
# Cargo.toml) so that the 10,000+ property cases per run stay quick.
cargo test --workspace --locked 2>&1 | tee target/test-output.txt | grep -E '^(test result|running|error|failures:|---- )' || true
if grep -qE '^test result: FAILED|^error' target/test-output.txt; then
  grep -A30 -E '^failures:' target/test-output.txt | head -120
  echo "cargo test failed"; exit 1
fi

step "API fuzzing with schemathesis against a real node"
bash tests/api_fuzz/run.sh target/release/meshsync

step "dashboard in headless Chromium"
# Installs Debian's chromium and the pinned playwright-core when missing (see the script).
bash tests/dashboard/run.sh target/release/meshsync | tee target/dashboard-output.txt

step "benchmark smoke run (figures come from the full run, see BENCHMARKS.md)"
target/release/meshsync-bench --sizes 1000

step "fuzzing every decoder of outside input (bounded)"
# Builds the cargo-fuzz targets in fuzz/ (installing cargo-fuzz if missing) and runs each for
# 20 s; longer runs and their results are in docs/fuzzing.md.
bash scripts/fuzz.sh 20

passed=$(grep -oE 'test result: ok\. [0-9]+ passed' target/test-output.txt | awk '{s+=$4} END {print s+0}')
passed=$((passed + $(grep -oE '^ℹ pass [0-9]+' target/dashboard-output.txt | awk '{s+=$3} END {print s+0}')))
echo
echo "${passed} passed, 0 failed"
