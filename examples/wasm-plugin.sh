#!/usr/bin/env bash
# The WASM plugin example: builds auth-allowlist as a wasm32-wasip2 component and runs a
# node with it in a network namespace, then calls the node from outside with a right
# token, a wrong one and none. Tears everything down on exit. Needs root.
#
#   examples/wasm-plugin.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then echo "wasm-plugin: needs root (network namespaces)" >&2; exit 1; fi
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/webmesh-target}"
echo "== building the node and the component"
cargo build --locked -q --bins
cargo build --locked -q --target wasm32-wasip2 --lib -p auth-allowlist
BIN="$CARGO_TARGET_DIR/debug"
WASM="$CARGO_TARGET_DIR/wasm32-wasip2/debug/auth_allowlist.wasm"
ls -l "$WASM"

NS=wmwasm; WORK=""
cleanup() (
  set +e
  pids=$(ip netns pids "$NS" 2>/dev/null); [ -n "$pids" ] && kill $pids 2>/dev/null && sleep 0.5
  pids=$(ip netns pids "$NS" 2>/dev/null); [ -n "$pids" ] && kill -9 $pids 2>/dev/null
  ip netns del "$NS" 2>/dev/null; ip link del wmwasmv 2>/dev/null
  if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
)
cleanup
trap cleanup EXIT INT TERM
WORK=$(mktemp -d /tmp/webmesh-wasm.XXXXXX)
ip netns add "$NS"
ip link add wmwasmv type veth peer name wmwasmp
ip link set wmwasmp netns "$NS"
ip addr add 10.198.0.254/24 dev wmwasmv && ip link set wmwasmv up
ip -n "$NS" addr add 10.198.0.1/24 dev wmwasmp && ip -n "$NS" link set wmwasmp up && ip -n "$NS" link set lo up

echo "== a node with --plugin auth=$(basename "$WASM")"
ip netns exec "$NS" "$BIN/webmesh" --bootstrap --no-wireguard --node-id wasm1 --data-dir "$WORK/data" \
  --grpc-listen 10.198.0.1:8443 --endpoint 10.198.0.1 \
  --plugin "auth=$WASM" --plugin-config auth.tokens=alice:s3cret,bob:hunter2 \
  --plugin-config auth.wasm.memory-mb=32 >"$WORK/node.log" 2>&1 &
for _ in $(seq 1 300); do
  if "$BIN/wmctl" -s 10.198.0.1:8443 -H "authorization=Bearer s3cret" status >/dev/null 2>&1; then break; fi
  sleep 0.1
done
grep "plugin ready" "$WORK/node.log" | sed 's/^/   /'

echo "== as alice (Bearer s3cret)"
"$BIN/wmctl" -s 10.198.0.1:8443 -H "authorization=Bearer s3cret" status | sed 's/^/   /'
echo "== with a wrong token, then with none (both refused)"
"$BIN/wmctl" -s 10.198.0.1:8443 -H "authorization=Bearer guess" status 2>&1 | sed 's/^/   /' || true
"$BIN/wmctl" -s 10.198.0.1:8443 status 2>&1 | sed 's/^/   /' || true
