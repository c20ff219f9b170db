#!/usr/bin/env bash
# Installs what building and testing webmesh needs on a fresh Debian machine.
# Idempotent: installs only what is missing. Needs root (or sudo) for apt.
set -euo pipefail

APT_PACKAGES=(
  libclang-dev      # bindgen for RocksDB's C API
  iproute2          # ip netns / veth: test hosts
  iputils-ping      # pings over the mesh
  wireguard-tools   # wg: an independent reader of our interfaces
  iperf3            # tunnel throughput benchmarks
  sqlite3           # inspecting plugin databases
  procps            # pgrep/ps in scripts
  nftables          # nft: the packet filter for port-level network ACLs
  python3           # TCP probes in tests
  graphviz          # dot: wmctl get graph --svg
  bind9-dnsutils    # dig: reading mesh DNS in tests
  dnsmasq-base      # a stub upstream resolver in tests, the DNS benchmark's reference
  dnsperf           # the DNS benchmark
  prometheus        # a real Prometheus server (and promtool) scraping nodes in tests
  curl              # fetching a node's metrics page in tests
  coturn            # turnutils_uclient/_peer: an independent TURN client against the node's server
  conntrack         # flushing NAT mappings in the NAT traversal tests
)
PIP_MODULES=(grpc grpc_reflection google.protobuf)   # the independent gRPC test client
PIP_PACKAGES=(grpcio grpcio-reflection protobuf)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  # --no-install-recommends: wireguard-tools would otherwise pull a kernel image.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

for m in "${PIP_MODULES[@]}"; do
  if ! python3 -c "import $m" 2>/dev/null; then
    echo "setup: installing Python packages ${PIP_PACKAGES[*]}"
    python3 -m pip install -q "${PIP_PACKAGES[@]}"
    break
  fi
done

# WASM plugins (the auth-allowlist component, the sandbox tests) build for wasm32-wasip2.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "setup: adding the rustup target wasm32-wasip2"
  rustup target add wasm32-wasip2
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install --locked -q cargo-nextest
fi
