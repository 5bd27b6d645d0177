#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ once and runs each for SECONDS_PER_TARGET seconds
# (default 20), printing per target its executions, exec/s and corpus size from libFuzzer's
# final stats. Exits non-zero if any target crashes, panics, times out or runs out of memory,
# after printing the input that did it (under fuzz/artifacts/<target>/). See docs/fuzzing.md.
#
#   scripts/fuzz.sh                 # every target, 20 s each (the CI step)
#   scripts/fuzz.sh 300             # every target, 5 minutes each
#   scripts/fuzz.sh 300 handshake   # one target
#
# Environment: FUZZ_SANITIZER (default none; `address` for ASan), FUZZ_CODEGEN_UNITS (default
# 16; 1 runs about a quarter faster and builds twice as slow: use it for long runs),
# FUZZ_TARGET_DIR (default fuzz/target); cargo's own CARGO_BUILD_JOBS limits the build. The
# trade-offs are measured in docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-20}
shift || true
sanitizer=${FUZZ_SANITIZER:-none}
codegen_units=${FUZZ_CODEGEN_UNITS:-16}
target_dir=${FUZZ_TARGET_DIR:-fuzz/target}
cargo_fuzz_version=0.13.2

if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
  exit 2
fi

if ! command -v cargo-fuzz >/dev/null; then
  echo "installing cargo-fuzz ${cargo_fuzz_version}"
  cargo install cargo-fuzz --version "${cargo_fuzz_version}" --locked --quiet
fi

# cargo-fuzz wants nightly for sanitizers; without one (the default) the coverage flags it
# passes are stable rustc options, so a machine without nightly fuzzes on its stable toolchain.
if cargo +nightly --version >/dev/null 2>&1; then
  toolchain=(+nightly)
elif [ "$sanitizer" = none ]; then
  echo "no nightly toolchain: building with the default one (no sanitizer)"
  toolchain=()
else
  echo "FUZZ_SANITIZER=${sanitizer} needs a nightly toolchain, and there is none" >&2
  exit 1
fi

# One build of every target: the dependencies (SQLite, rustls, axum...) dominate, and the
# targets share them. Release with debug assertions and overflow checks; 16 codegen units
# build twice as fast on two cores as cargo-fuzz's default of 1, for about a quarter fewer
# executions per second: the right trade for a cold CI build and a short run.
build_flags=(-O --debug-assertions --sanitizer "$sanitizer" --codegen-units "$codegen_units" --target-dir "$target_dir")
started=$(date +%s)
cargo "${toolchain[@]}" fuzz build "${build_flags[@]}" 2>&1 | { grep -vE '^\s+(Compiling|Downloaded|Downloading) ' || true; } || {
  echo "building the fuzz targets failed" >&2
  exit 1
}
echo "built the fuzz targets in $(($(date +%s) - started)) s"

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi
bin_dir="$target_dir/x86_64-unknown-linux-gnu/release"
# One figure from libFuzzer's final stats (-print_final_stats=1) in a run's log.
final_stat() { grep -oE "^stat::$2: *[0-9]+" "$1" | grep -oE '[0-9]+$' | tail -n 1 || true; }

failed=()
printf '%-20s %12s %10s %8s %s\n' target executions exec/s corpus result
for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  artifacts="fuzz/artifacts/$target"
  log="$artifacts/last-run.log"
  mkdir -p "$corpus" "$artifacts"
  seeds=()
  [ -d "fuzz/seeds/$target" ] && seeds=("fuzz/seeds/$target")
  status=0
  # -timeout: one input taking 10 s is a finding (a denial of service), not patience.
  "$bin_dir/$target" "$corpus" "${seeds[@]}" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?
  runs=$(final_stat "$log" number_of_executed_units)
  rate=$(final_stat "$log" average_exec_per_sec)
  size=$(find "$corpus" -type f | wc -l)
  if [ "$status" -eq 0 ]; then
    result=ok
  else
    result="FAILED (exit $status)"
    failed+=("$target")
  fi
  printf '%-20s %12s %10s %8s %s\n' "$target" "${runs:-?}" "${rate:-?}" "$size" "$result"
  if [ "$status" -ne 0 ]; then
    # The panic message or sanitizer report, then the input that caused it.
    grep -E -A12 "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|==[0-9]+== ERROR" "$log" | head -n 40 | sed 's/^/    /'
    input=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n 1 | sed 's/^Test unit written to //')
    echo "    crashing input: ${input:-(none written; see $log)}"
    [ -n "$input" ] && echo "    reproduce: ${bin_dir}/${target} ${input}"
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found problems in: ${failed[*]} (logs in fuzz/artifacts/<target>/last-run.log)"
  exit 1
fi
echo "fuzzing: ${#targets[@]} targets ran ${seconds} s each without a finding"
