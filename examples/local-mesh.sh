#!/usr/bin/env bash
# Builds webmesh and brings up a mesh on this machine, prints each node's status, and
# tears everything down on exit (Ctrl-C, an error, or the end).
#
#   examples/local-mesh.sh            # run, print, tear down
#   KEEP=1 examples/local-mesh.sh     # leave it running until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/webmesh-target}"
cargo build --bins --locked -q
BIN="$CARGO_TARGET_DIR/debug"

WORK=$(mktemp -d /tmp/webmesh-local.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

GRPC=127.0.0.1:18443
echo "== starting the bootstrap node (data in $WORK/boot, log in $WORK/boot.log)"
"$BIN/webmesh" --bootstrap --node-id boot --data-dir "$WORK/boot" \
  --grpc-listen "$GRPC" --raft-port 19443 >"$WORK/boot.log" 2>&1 &
PIDS+=($!)

for _ in $(seq 1 300); do
  if "$BIN/wmctl" -s "$GRPC" status >/dev/null 2>&1; then break; fi
  if ! kill -0 "${PIDS[0]}" 2>/dev/null; then cat "$WORK/boot.log"; exit 1; fi
  sleep 0.1
done

echo "== status of boot"
"$BIN/wmctl" -s "$GRPC" status
echo "== the node's log"
sed 's/^/  /' "$WORK/boot.log"

if [ -n "${KEEP:-}" ]; then
  echo "== running; Ctrl-C to stop"
  wait
fi
