#!/usr/bin/env bash
# Builds webmesh and brings up a mesh of network namespaces on this machine: one
# bootstrap node and joiners, each host in its own namespace on a shared bridge. Prints
# each node's status and pings every pair over the mesh (IPv4 and IPv6), then tears
# everything down (also on Ctrl-C or an error). Needs root.
#
#   examples/local-mesh.sh            # 3 hosts
#   HOSTS=5 examples/local-mesh.sh    # more hosts
#   KEEP=1 examples/local-mesh.sh     # leave it running until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTS="${HOSTS:-3}"
if [ "$(id -u)" -ne 0 ]; then echo "local-mesh: needs root (network namespaces)" >&2; exit 1; fi
if [ "$HOSTS" -lt 2 ] || [ "$HOSTS" -gt 50 ]; then echo "local-mesh: HOSTS must be 2-50" >&2; exit 1; fi
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/webmesh-target}"
echo "== building"
cargo build --bins --locked -q
BIN="$CARGO_TARGET_DIR/debug"

P=wmdemo                      # prefix of every name this script creates
NET=10.199.0                  # the "underlay" LAN of the hosts
WORK=""
# A subshell body, so `set +e` here does not leak into the script.
cleanup() (
  set +e
  for i in $(seq 1 "$HOSTS"); do
    pids=$(ip netns pids "${P}$i" 2>/dev/null); [ -n "$pids" ] && kill $pids 2>/dev/null
  done
  sleep 0.5
  for i in $(seq 1 "$HOSTS"); do
    pids=$(ip netns pids "${P}$i" 2>/dev/null); [ -n "$pids" ] && kill -9 $pids 2>/dev/null
    ip netns del "${P}$i" 2>/dev/null
    ip link del "${P}v$i" 2>/dev/null
    rm -f "/var/run/wireguard/${P}w$i.sock"
  done
  ip link del "${P}br" 2>/dev/null
  if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
)
cleanup # leftovers of an earlier run that was killed
trap cleanup EXIT INT TERM
WORK=$(mktemp -d /tmp/webmesh-local.XXXXXX)

echo "== creating $HOSTS hosts (namespaces ${P}1..${P}$HOSTS on bridge ${P}br, $NET.0/24)"
ip link add "${P}br" type bridge && ip addr add "$NET.254/24" dev "${P}br" && ip link set "${P}br" up
for i in $(seq 1 "$HOSTS"); do
  ip netns add "${P}$i"
  ip link add "${P}v$i" type veth peer name "${P}p$i"
  ip link set "${P}p$i" netns "${P}$i"
  ip link set "${P}v$i" master "${P}br" up
  ip -n "${P}$i" link set "${P}p$i" name eth0
  ip -n "${P}$i" addr add "$NET.$i/24" dev eth0
  ip -n "${P}$i" link set eth0 up
  ip -n "${P}$i" link set lo up
done

start() { # host-number, extra args...
  local i=$1; shift
  ip netns exec "${P}$i" "$BIN/webmesh" --node-id "node$i" --data-dir "$WORK/node$i" \
    --interface "${P}w$i" --endpoint "$NET.$i" --admin-socket "$WORK/node$i.sock" "$@" \
    >"$WORK/node$i.log" 2>&1 &
}
# wmctl on a node's host talks to it through its admin socket (acting as that node).
ctl() { # host-number, wmctl args...
  local i=$1; shift
  "$BIN/wmctl" -s "unix://$WORK/node$i.sock" "$@"
}
wait_ready() { # host-number
  for _ in $(seq 1 600); do
    if ctl "$1" status 2>/dev/null | grep -q '^LEADER *[^ ]'; then return 0; fi
    sleep 0.1
  done
  echo "node$1 did not come up; its log:" >&2; cat "$WORK/node$1.log" >&2; return 1
}

echo "== node1 bootstraps the mesh (no AUTH plugin: joiners come in as plain members)"
start 1 --bootstrap
wait_ready 1
echo "== node2..node$HOSTS join through node1"
for i in $(seq 2 "$HOSTS"); do start "$i" --join "$NET.1:8443"; done
for i in $(seq 2 "$HOSTS"); do wait_ready "$i"; done
echo "== the admin (node1's socket) makes node2 and node3 Raft voters"
ctl 1 promote node2 node3

for i in $(seq 1 "$HOSTS"); do
  echo "== status of node$i"
  ctl "$i" status | sed 's/^/   /'
done

echo "== the log of node2 (a joiner)"
sed 's/^/   /' "$WORK/node2.log"

echo "== pings over the mesh"
addr_of() { # host-number -> "v4 v6" of its WireGuard interface
  ip -n "${P}$1" -o addr show dev "${P}w$1" | awk '$3=="inet"{split($4,a,"/");v4=a[1]} $3=="inet6" && $4 !~ /^fe80/ {split($4,b,"/");v6=b[1]} END{print v4, v6}'
}
fail=0
for i in $(seq 1 "$HOSTS"); do
  for j in $(seq 1 "$HOSTS"); do
    [ "$i" = "$j" ] && continue
    read -r v4 v6 <<<"$(addr_of "$j")"
    for a in $v4 $v6; do
      ok=""
      for _ in $(seq 1 20); do
        if out=$(ip netns exec "${P}$i" ping -c 1 -W 1 "$a" 2>/dev/null); then ok=1; break; fi
        sleep 0.2
      done
      if [ -n "$ok" ]; then
        rtt=$(echo "$out" | sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p')
        printf '   node%-3s -> node%-3s %-28s ok  %s ms\n' "$i" "$j" "$a" "$rtt"
      else
        printf '   node%-3s -> node%-3s %-28s FAILED\n' "$i" "$j" "$a"; fail=1
      fi
    done
  done
done

echo "== wg show on node1 (wireguard-tools reading our interface)"
ip netns exec "${P}1" wg show "${P}w1" | sed 's/^/   /'

if [ -n "${KEEP:-}" ]; then
  echo "== running; logs in $WORK; Ctrl-C to stop"
  while true; do sleep 3600; done
fi
exit $fail
