#!/usr/bin/env bash
# bench/console: keystroke round-trip latency to a machine's serial port through rackshare's
# console broker (the WebSocket, and the SSH door) against `ipmitool -I lanplus … sol activate`
# straight to the BMC — the same OpenIPMI ipmi_sim BMC in one run. Its SOL payload is a TCP
# client of a serial endpoint the driver serves, which answers each byte upper-cased, so every
# keystroke comes back as the "machine"'s answer. N keystrokes one at a time per path;
# p50/p95/p99 and the broker/direct ratio printed, with the machine it ran on. Loopback only.
#
#   bash bench/console/run.sh [N]
#
# RACKSHARE_BENCH_PROFILE=debug uses the debug build (quicker to build; its broker is slower).
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh
N=${1:-300}
need ipmi_sim openipmi
need ipmitool ipmitool
need script bsdutils
need ssh openssh-client
need ssh-keygen openssh-client
need curl curl

PROFILE=${RACKSHARE_BENCH_PROFILE:-release}
case "$PROFILE" in
  release) cargo build --release --quiet --bin rackshare --example bench-console-rtt ;;
  debug) cargo build --quiet --bin rackshare --example bench-console-rtt ;;
  *) echo "RACKSHARE_BENCH_PROFILE must be release or debug" >&2; exit 2 ;;
esac
BIN=$PWD/target/$PROFILE/rackshare
RTT=$PWD/target/$PROFILE/examples/bench-console-rtt
TMP=$(mktemp -d /tmp/rackshare-bench-console.XXXXXX)
PIDS=()
SIM=
cleanup() {
  stop_server
  # ipmi_sim's `startcmd` child outlives it otherwise.
  [ -n "$SIM" ] && pkill -KILL -P "$SIM" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

SOL_PORT=18311
LAN_PORT=18312
API_PORT=18313
SSH_PORT=18314
PASSWORD=bench-sol-pw

"$RTT" serial $SOL_PORT & PIDS+=($!)
sleep 0.3
cat > "$TMP/lan.conf" <<EOF
name "rsbench"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 $LAN_PORT
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  sol "tcp:127.0.0.1:$SOL_PORT" 115200
  startcmd "sleep 86400"
  startnow true
  poweroff_wait 2
  kill_wait 2
  user 2 true  "admin" "$PASSWORD" admin 10 none md2 md5 straight
EOF
printf 'mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n' > "$TMP/cmds.emu"
mkdir -p "$TMP/sim-state"
ipmi_sim -c "$TMP/lan.conf" -f "$TMP/cmds.emu" -s "$TMP/sim-state" -n </dev/null >/dev/null 2>&1 &
SIM=$!
PIDS+=($SIM)
export IPMI_PASSWORD=$PASSWORD
IPMI=(ipmitool -I lanplus -H 127.0.0.1 -p $LAN_PORT -U admin -E -C 3)
for _ in $(seq 60); do
  "${IPMI[@]}" chassis power status 2>/dev/null | grep -q "is on" && break
  sleep 0.5
done

machine_line
echo "bench/console ($PROFILE build): $N keystrokes per path, one at a time, ipmi_sim SOL at 115200, $(date -u +%FT%TZ)"

# 1. ipmitool straight to the BMC (first: one SOL session at a time, and rackshare's lingers).
direct=$("$RTT" cmd "$N" script -qec "${IPMI[*]} sol activate" /dev/null)
echo "ipmitool sol activate (direct)  $direct"
"${IPMI[@]}" sol deactivate >/dev/null 2>&1 || true
sleep 1

# 2. The broker: rackshare serve on SQLite, the machine's BMC the same ipmi_sim.
"$BIN" serve --data-dir "$TMP/data" --listen 127.0.0.1:$API_PORT --metrics-listen off \
  --log-level warn --energy-interval-secs 0 --console-ssh-listen 127.0.0.1:$SSH_PORT \
  > "$TMP/serve.out" 2> "$TMP/serve.log" &
SP=$!
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$API_PORT/healthz" >/dev/null && break; sleep 0.1; done
export RACKSHARE_URL=http://127.0.0.1:$API_PORT RACKSHARE_TOKEN
RACKSHARE_TOKEN=$(cat "$TMP/data/admin-token")
printf '%s' "$PASSWORD" > "$TMP/bmc-pw"
"$BIN" machine add bench --mac 52:54:00:99:00:01 --bmc "ipmi://127.0.0.1:$LAN_PORT" \
  --bmc-user admin --bmc-password-file "$TMP/bmc-pw" >/dev/null
ssh-keygen -q -t ed25519 -N '' -C bench -f "$TMP/id_bench"
"$BIN" user ssh-key add admin --file "$TMP/id_bench.pub" >/dev/null

ws=$("$RTT" ws "$RACKSHARE_URL" "$RACKSHARE_TOKEN" bench "$N")
echo "rackshare WebSocket             $ws"
sshr=$("$RTT" cmd "$N" ssh -tt -p $SSH_PORT -i "$TMP/id_bench" -o StrictHostKeyChecking=no \
  -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o LogLevel=ERROR \
  bench@127.0.0.1)
echo "rackshare SSH door              $sshr"

p() { sed -E "s/.*\"$1\":([0-9.]+).*/\1/" <<<"$2"; }
for path in ws sshr; do
  v=${!path}
  awk -v n="$path" -v a50="$(p p50_ms "$v")" -v b50="$(p p50_ms "$direct")" \
      -v a99="$(p p99_ms "$v")" -v b99="$(p p99_ms "$direct")" \
    'BEGIN { label = (n == "ws") ? "WebSocket" : "SSH door"; \
             printf "%s/direct: p50 %.2f, p99 %.2f\n", label, a50 / b50, a99 / b99 }'
done
