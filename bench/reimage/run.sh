#!/usr/bin/env bash
# bench/reimage: wall time and throughput of a deploy by rackshare's agent, against the
# baseline of `wget | dd` (busybox) of the same image inside the same VM (same kernel, same
# ramdisk, same virtio disk and NIC, same HTTP server: rackshare's /boot/), in one run.
#
#   sudo bench/reimage/run.sh [IMAGE_MIB]      (default 64)
#
# Everything runs in a network namespace this script creates (bridge br0 10.77.0.1/24, a tap
# for QEMU) and is removed on exit. QEMU runs with TCG (KVM does not work on these machines).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
MIB=${1:-64}
NS=rsbench-reimage-$$
MAC=52:54:00:be:0e:01
MACURL=52-54-00-be-0e-01
API=http://10.77.0.1:9090  # the member API; agents use the boot listener on :8080

. "$ROOT/bench/lib.sh"
need_root
need qemu-system-x86_64 qemu-system-x86
need curl curl
[ -f /usr/lib/ipxe/qemu/efi-virtio.rom ] || { echo "missing the iPXE ROM: apt-get install ipxe-qemu" >&2; exit 2; }

echo "==> building (release) rackshare and the static agent"
cargo build --release --locked -q
AGENT=$(scripts/build-agent)
BIN=$ROOT/target/release/rackshare

WORK=$(mktemp -d /tmp/rsbench-reimage.XXXXXX)
SERVE_PID=""
QEMU_PID=""
cleanup() {
  [ -n "$QEMU_PID" ] && kill -9 "$QEMU_PID" 2>/dev/null || true
  [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null || true
  [ -f "$WORK/ra.pid" ] && kill "$(cat "$WORK/ra.pid")" 2>/dev/null || true
  sleep 0.5
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bridge_ns "$NS" 10.77.0.1/24
ip -n "$NS" tuntap add tap0 mode tap
ip -n "$NS" link set tap0 master br0 up
# A router advertisement, as real networks have: without one iPXE waits ~13 s (LAB-NOTES).
ip -n "$NS" addr add fd77::1/64 dev br0 nodad
ip netns exec "$NS" dnsmasq -k --port=0 --conf-file=/dev/null -u root --interface=br0 \
  --bind-interfaces --enable-ra --dhcp-range=::,constructor:br0,ra-only \
  --pid-file="$WORK/ra.pid" 2> "$WORK/ra.log" &

echo "==> rackshare agent build"
# Reuse the .debs the tests downloaded, if any.
if [ -d "$ROOT/target/agent-boot-cache/debs" ]; then
  mkdir -p "$WORK/data/cache" && ln -s "$ROOT/target/agent-boot-cache/debs" "$WORK/data/cache/agent"
fi
"$BIN" agent build --data-dir "$WORK/data" --agent-bin "$AGENT" | tail -1
head -c $((MIB << 20)) /dev/urandom > "$WORK/image.raw"
SHA=$(sha256sum "$WORK/image.raw" | cut -d' ' -f1)
cp "$WORK/image.raw" "$WORK/data/boot/bench.raw"

ip netns exec "$NS" "$BIN" serve --data-dir "$WORK/data" --listen 10.77.0.1:9090 --no-tls \
  --pxe-interface br0 --pxe-mode authoritative --pxe-pool 10.77.0.100-10.77.0.150 --pxe-force \
  --energy-interval-secs 0 > "$WORK/serve.out" 2> "$WORK/serve.log" &
SERVE_PID=$!
for _ in $(seq 1 100); do [ -s "$WORK/data/admin-token" ] && break; sleep 0.2; done
# The bench's own namespace: plain HTTP to a non-loopback address, knowingly.
export RACKSHARE_URL=$API RACKSHARE_TOKEN RACKSHARE_INSECURE_HTTP=1
RACKSHARE_TOKEN=$(cat "$WORK/data/admin-token")
rs() { ip netns exec "$NS" "$BIN" "$@"; }
for _ in $(seq 1 100); do rs whoami >/dev/null 2>&1 && break; sleep 0.2; done

# One VM definition for both runs; only the boot differs.
qemu() {
  local disk=$1; shift
  truncate -s $((MIB * 2 + 64))M "$disk"
  printf '\xf8\x03' > "$WORK/sercon"
  ip netns exec "$NS" qemu-system-x86_64 -accel tcg -m 512 -display none -no-reboot \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
    -device "virtio-net-pci,netdev=n0,mac=$MAC" \
    -drive "file=$disk,format=raw,if=virtio,cache=none" \
    -fw_cfg "name=etc/sercon-port,file=$WORK/sercon" "$@" &
  QEMU_PID=$!
}
wait_serial() { # file needle seconds
  for _ in $(seq 1 $(($3 * 5))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.2; done
  echo "timed out waiting for '$2' in $1:" >&2; tail -20 "$1" >&2; return 1
}

echo "==> baseline: wget | dd of ${MIB} MiB inside the VM"
qemu "$WORK/disk-baseline.raw" -serial "file:$WORK/serial-baseline.log" \
  -kernel "$WORK/data/boot/agent-vmlinuz" -initrd "$WORK/data/boot/agent-initrd.img" \
  -append "console=ttyS0 rackshare.baseline=$API/boot/bench.raw"
wait_serial "$WORK/serial-baseline.log" "rackshare baseline:" 300
wait "$QEMU_PID" 2>/dev/null || true; QEMU_PID=""
read -r B0 B1 < <(sed -n 's/.*rackshare baseline: wget|dd from \([0-9.]*\) to \([0-9.]*\).*/\1 \2/p' "$WORK/serial-baseline.log" | tail -1)
BSECS=$(echo "$B1 - $B0" | bc -l)
[ "$(head -c $((MIB << 20)) "$WORK/disk-baseline.raw" | sha256sum | cut -d' ' -f1)" = "$SHA" ] || { echo "baseline wrote the wrong bytes" >&2; exit 1; }

echo "==> rackshare: reimage (PXE -> agent -> write, fsync, read back, verify) of ${MIB} MiB"
rs machine add bench --mac "$MAC" >/dev/null
rs machine state bench available >/dev/null
rs image add bench "$WORK/image.raw" >/dev/null
T0=$(date +%s.%N)
JOB=$(rs reimage bench --image bench -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
qemu "$WORK/disk-agent.raw" -serial "file:$WORK/serial-agent.log" -boot n
# Poll the job until it ends.
for _ in $(seq 1 1500); do
  J=$(rs job show "$JOB" -o json)
  STATE=$(echo "$J" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
  # Without a BMC the agent reboots the VM itself; -no-reboot makes QEMU exit then.
  case "$STATE" in succeeded|failed|cancelled) break ;; esac
  sleep 0.2
done
T1=$(date +%s.%N)
[ "$STATE" = succeeded ] || { echo "job $JOB ended $STATE" >&2; rs job logs "$JOB" >&2; exit 1; }
[ "$(head -c $((MIB << 20)) "$WORK/disk-agent.raw" | sha256sum | cut -d' ' -f1)" = "$SHA" ] || { echo "the agent wrote the wrong bytes" >&2; exit 1; }
# The agent times its write (download, decode, write, fsync) and its read-back itself.
read -r WMS VMS < <(rs job show "$JOB" -o json | python3 -c 'import json,sys; d=json.load(sys.stdin)["result"]["deploy"]; print(d["write_ms"], d["verify_ms"])')
WSECS=$(echo "$WMS / 1000" | bc -l)
VSECS=$(echo "$VMS / 1000" | bc -l)
TOTAL=$(echo "$T1 - $T0" | bc -l)

printf '\n%-56s %8s %10s\n' "" "seconds" "MiB/s"
printf '%-56s %8.2f %10.1f\n' "baseline: busybox wget | dd conv=fsync" "$BSECS" "$(echo "$MIB / $BSECS" | bc -l)"
printf '%-56s %8.2f %10.1f\n' "rackshare agent: download + write + fsync" "$WSECS" "$(echo "$MIB / $WSECS" | bc -l)"
printf '%-56s %8.2f %10.1f\n' "rackshare agent: read back + sha256" "$VSECS" "$(echo "$MIB / $VSECS" | bc -l)"
printf '%-56s %8.2f\n' "rackshare reimage end to end (job created -> succeeded)" "$TOTAL"
printf '\nratio agent/baseline write throughput: %.2f (target >= 0.9); end to end %.1f s (target < 30 s)\n' \
  "$(echo "$BSECS / $WSECS" | bc -l)" "$TOTAL"
