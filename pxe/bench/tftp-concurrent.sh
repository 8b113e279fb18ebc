#!/bin/sh
# N concurrent curl TFTP clients fetch a 1 MiB file from the pxe crate's server and from
# tftpd-hpa, over a veth between two namespaces. Prints wall time and failures for each.
# Usage: pxe/bench/tftp-concurrent.sh [N]   (root, from the workspace root)
set -eu
N=${1:-200}
BIN=${BIN:-target/release/examples/pxe_server}
command -v curl >/dev/null || { echo "curl missing: apt-get install curl" >&2; exit 1; }
command -v in.tftpd >/dev/null || { echo "in.tftpd missing: apt-get install tftpd-hpa" >&2; exit 1; }
[ -x "$BIN" ] || { echo "build first: cargo build -p pxe --release --example pxe_server" >&2; exit 1; }
S=rspxe-tbench-$$-srv C=rspxe-tbench-$$-cli
W=$(mktemp -d)
cleanup() {
  [ -n "${SP:-}" ] && kill "$SP" 2>/dev/null; sleep 0.3
  ip netns del $S 2>/dev/null || true; ip netns del $C 2>/dev/null || true; rm -rf "$W"
}
trap cleanup EXIT INT TERM
ip netns add $S; ip netns add $C
ip -n $S link add br0 type bridge forward_delay 0 stp_state 0
ip -n $S addr add 10.77.0.1/24 dev br0; ip -n $S link set br0 up; ip -n $S link set lo up
ip -n $S link add h0 type veth peer name eth0 netns $C
ip -n $S link set h0 master br0 up
ip -n $C addr add 10.77.0.9/24 dev eth0; ip -n $C link set eth0 up; ip -n $C link set lo up
mkdir -p "$W/tftp" "$W/out"; : > "$W/tftp/undionly.kpxe"; : > "$W/tftp/snponly.efi"
head -c 1048576 /dev/urandom > "$W/tftp/file.bin"
WANT=$(sha256sum < "$W/tftp/file.bin")
# Server CPU seconds (utime+stime+children's), to separate it from the 200 curl processes.
cpu() { awk -v t="$(getconf CLK_TCK)" '{printf "  server CPU: %.2f s\n", ($14+$15+$16+$17)/t}' /proc/$1/stat; }
fetch() {
  rm -f "$W"/out/*
  T0=$(date +%s.%N)
  ip netns exec $C sh -c "i=0; while [ \$i -lt $N ]; do (curl -sS --max-time 60 --tftp-blksize 1468 -o $W/out/\$i tftp://10.77.0.1/file.bin 2>$W/out/err\$i || echo \$? >> $W/out/err\$i) & i=\$((i+1)); done; wait"
  T1=$(date +%s.%N)
  BAD=0; for f in $(seq 0 $((N - 1))); do [ "$(sha256sum < "$W/out/$f" 2>/dev/null)" = "$WANT" ] || BAD=$((BAD+1)); done
  cat $W/out/err* 2>/dev/null | sort | uniq -c | head -5
  echo "$1: $N clients x 1 MiB in $(echo "$T1 - $T0" | bc) s, failures $BAD"
}
# One-process client (pxe/examples/tftp_load.rs), if built: compares servers without N curls.
LOAD=${LOAD:-target/release/examples/tftp_load}
light() {
  [ -x "$LOAD" ] || return 0
  echo "  light client, windowsize 1: $(ip netns exec $C "$LOAD" 10.77.0.1 file.bin "$N" --blksize 1468 --expect-size 1048576 2>&1 | tail -1)"
  echo "  light client, windowsize 8: $(ip netns exec $C "$LOAD" 10.77.0.1 file.bin "$N" --blksize 1468 --windowsize 8 --expect-size 1048576 2>&1 | tail -1)"
}
ip netns exec $S "$BIN" br0 "$W/tftp" > "$W/pxe.out" 2>&1 & SP=$!
sleep 0.5; fetch "rackshare pxe"; cpu $SP; light; kill -INT $SP; wait $SP 2>/dev/null || true; SP=
grep -E '^rackshare_tftp_(completed|timeouts|refused)' "$W/pxe.out" | tr '\n' ' '; echo
ip netns exec $S in.tftpd --listen --foreground --address 10.77.0.1:69 --secure "$W/tftp" & SP=$!
sleep 0.5; fetch "tftpd-hpa"; cpu $SP; light; kill $SP; wait $SP 2>/dev/null || true; SP=
