#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60): coverage-guided (libFuzzer
# through cargo-fuzz), starting from seeds/ and the corpus kept from earlier runs.
# An input that makes a target panic is copied into regressions/<target>/, which the
# unit test `fuzzing::tests::inputs_fuzzing_found_stay_harmless` replays on every build.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]
#
# cargo-fuzz passes the compiler options of nightly Rust; RUSTC_BOOTSTRAP lets this
# machine's stable toolchain take them. The instrumented build has its own target dir
# (RocksDB's C++ is compiled once more there, ~20 min the first time).
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
shift || true
command -v cargo-fuzz >/dev/null || cargo install --locked -q cargo-fuzz
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-/var/tmp/webmesh-fuzz-target}"
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
cargo fuzz build --sanitizer none "${targets[@]/#/}" >/dev/null 2>&1 || cargo fuzz build --sanitizer none
failed=0
printf '%-18s %10s %8s %s\n' target runs corpus result
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "regressions/$t"
  cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
  log=$(mktemp)
  if cargo fuzz run --sanitizer none "$t" "corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    failed=1
    cp artifacts/"$t"/* "regressions/$t/" 2>/dev/null || true
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  [ -n "$runs" ] || runs=$(grep -o '#[0-9]*' "$log" | tail -1 | tr -d '#')
  printf '%-18s %10s %8s %s\n' "$t" "${runs:-?}" "$(ls "corpus/$t" | wc -l)" "$result"
  [ "$result" = ok ] || tail -30 "$log"
  rm -f "$log"
done
exit "$failed"
