#!/bin/sh
# DORA/s of the pxe crate's authoritative server with durable leases (file store, fsync per
# batch), measured with perfdhcp (Debian `kea-admin`) over a veth between two namespaces.
# Usage: pxe/bench/dhcp-perfdhcp.sh [RATE ...]   (run as root from the workspace root)
set -eu
BIN=${BIN:-target/release/examples/pxe_server}
RATES=${*:-"2000 4000 6000 8000 12000 16000"}
DUR=${DUR:-10}
command -v perfdhcp >/dev/null || { echo "perfdhcp missing: apt-get install kea-admin" >&2; exit 1; }
[ -x "$BIN" ] || { echo "build first: cargo build -p pxe --release --example pxe_server" >&2; exit 1; }
S=rspxe-bench-$$-srv C=rspxe-bench-$$-cli
W=$(mktemp -d)
cleanup() {
  [ -n "${SP:-}" ] && kill "$SP" 2>/dev/null; sleep 0.3
  ip netns del $S 2>/dev/null || true; ip netns del $C 2>/dev/null || true; rm -rf "$W"
}
trap cleanup EXIT INT TERM
ip netns add $S; ip netns add $C
ip -n $S link add br0 type bridge forward_delay 0 stp_state 0
ip -n $S addr add 10.77.0.1/16 dev br0; ip -n $S link set br0 up; ip -n $S link set lo up
ip -n $S link add h0 type veth peer name eth0 netns $C
ip -n $S link set h0 master br0 up
ip -n $C addr add 10.77.0.9/16 dev eth0; ip -n $C link set eth0 up; ip -n $C link set lo up
mkdir -p "$W/tftp"; : > "$W/tftp/undionly.kpxe"; : > "$W/tftp/snponly.efi"
for R in $RATES; do
  rm -f "$W/leases.jsonl"
  ip netns exec $S "$BIN" br0 "$W/tftp" --authoritative 10.77.1.0-10.77.255.250 --leases "$W/leases.jsonl" ${EXTRA:-} > "$W/server.out" 2>&1 &
  SP=$!
  sleep 0.5
  OUT=$(ip netns exec $C timeout $((DUR + 15)) perfdhcp -4 -l eth0 -r "$R" -R 200000 -p "$DUR" 10.77.0.1 2>&1 || true)
  kill -INT $SP; wait $SP 2>/dev/null || true; SP=
  SENT=$(echo "$OUT" | awk '/sent packets/{print $3}' | head -1)
  RECV2=$(echo "$OUT" | awk '/received packets/{n++; if(n==2) print $3}')
  BATCH=$(awk '/^rackshare_lease_batches_total/{print $2}' "$W/server.out")
  WRITES=$(awk '/^rackshare_lease_writes_total/{print $2}' "$W/server.out")
  LINES=$(wc -l < "$W/leases.jsonl")
  [ -n "${VERBOSE:-}" ] && echo "$OUT"
  RATE=$(echo "$OUT" | awk '/^Rate:/{print $2}')
  echo "offered=$R/s  perfdhcp rate=${RATE:-?} DORA/s  ACKs=${RECV2:-?} in ${DUR}s  (discover sent ${SENT:-?}; lease batches $BATCH, writes $WRITES, file lines $LINES)"
done
