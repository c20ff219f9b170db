#!/usr/bin/env bash
# The whole test suite: set-up, formatting, lints, unit and multi-host tests.
# Multi-host tests need root (network namespaces, TUN devices).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# One target dir outside the clone, shared by CI, scripts and developers: RocksDB's
# C++ build is by far the longest step and is done once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/webmesh-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== fmt";    cargo fmt --all -- --check
echo "== build";  cargo build --workspace --bins --locked
# WASM components the tests load (same debug profile, the wasm32-wasip2 target).
echo "== wasm";   cargo build --locked --target wasm32-wasip2 --lib -p auth-allowlist -p wasm-misbehave
echo "== clippy"; cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests";  cargo nextest run --workspace --locked --no-fail-fast "$@"
