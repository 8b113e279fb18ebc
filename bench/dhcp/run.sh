#!/usr/bin/env bash
# DHCP DORA/s, side by side: the real `rackshare serve` (authoritative, leases durable in its
# SQLite inventory before the ACK) vs dnsmasq vs Kea memfile (single- and multi-threaded),
# all driven by perfdhcp over the same veth, with the same pool and the same ladder of rates.
#
# Usage (root, from the workspace root, after `cargo build --release`):
#   bench/dhcp/run.sh                      # ladder 250 ... 16000 (10 steps), 10 s each
#   RATES="2000 4000" DUR=5 bench/dhcp/run.sh
#   SERVERS="rackshare kea-mt" bench/dhcp/run.sh
#   BASE_BIN=/tmp/rackshare-old SERVERS="rackshare-base rackshare kea-mt" bench/dhcp/run.sh
# Env: BIN (rackshare binary), BASE_BIN (a second rackshare binary, server "rackshare-base",
#      to compare two builds in one run), RATES, DUR (seconds per step), MAXDROP (percent,
#      default 3), VERBOSE=1 to print perfdhcp's full output.
#
# Traffic stays inside two network namespaces created here (removed on exit): a server
# namespace with bridge br0 (10.80.0.1/12) and a client namespace (10.80.0.9/12) joined by a
# veth. perfdhcp acts as a relay (giaddr = its address), so every server sees relayed traffic.
set -euo pipefail

BIN=${BIN:-target/release/rackshare}
RATES=${RATES:-"250 500 1000 2000 3000 4000 5000 6000 8000 16000"}
DUR=${DUR:-10}
MAXDROP=${MAXDROP:-3}
SERVERS=${SERVERS:-"rackshare dnsmasq kea-st kea-mt"}

# A /12 so the pool (~980k addresses) is never exhausted: 16000/s x 10 s = 160k clients.
NET_SRV=10.80.0.1 NET_CLI=10.80.0.9 PREFIX=12 MASK=255.240.0.0 SUBNET=10.80.0.0/12
POOL_FIRST=10.81.0.0 POOL_LAST=10.95.255.250

. "$(dirname "$0")/../lib.sh"
need_root
need perfdhcp kea-admin
need ip iproute2
need ss iproute2
need sqlite3 sqlite3
case " $SERVERS " in *" dnsmasq "*) need dnsmasq dnsmasq-base ;; esac
case " $SERVERS " in *" kea-"*) need kea-dhcp4 kea-dhcp4-server ;; esac
[ -x "$BIN" ] || { echo "$BIN missing: cargo build --release" >&2; exit 1; }
BIN=$(realpath "$BIN")
case " $SERVERS " in *" rackshare-base "*)
  [ -x "${BASE_BIN:-}" ] || { echo "rackshare-base needs BASE_BIN=<binary>" >&2; exit 1; }
  BASE_BIN=$(realpath "$BASE_BIN") ;;
esac

S=rsb-dhcp-$$-s C=rsb-dhcp-$$-c
W=$(mktemp -d /tmp/rsb-dhcp.XXXXXX)
cleanup() {
  stop_server
  ip netns del "$S" 2>/dev/null || true
  ip netns del "$C" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bridge_ns "$S" "$NET_SRV/$PREFIX"
client_ns "$S" "$C" "$NET_CLI/$PREFIX"

# Wait (bounded, 15 s) until something in the server namespace listens on UDP 67.
wait_dhcp_bound() {
  for _ in $(seq 150); do
    if ip netns exec "$S" ss -Hlun 'sport = :67' | grep -q .; then return 0; fi
    kill -0 "$SP" 2>/dev/null || { echo "server exited early:" >&2; tail -20 "$W/server.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "server never bound UDP 67:" >&2; tail -20 "$W/server.log" >&2; exit 1
}

# Each start_* begins from empty lease state, so every rate step is independent.
start_rackshare() {
  local bin=${1:-$BIN}
  rm -rf "$W/rs"; mkdir -p "$W/rs/data" "$W/rs/boot"
  # Boot files need only exist; the bench never fetches them.
  : > "$W/rs/boot/undionly.kpxe"; : > "$W/rs/boot/snponly.efi"
  ip netns exec "$S" "$bin" serve --data-dir "$W/rs/data" --listen "$NET_SRV:9090" --no-tls \
    --pxe-interface br0 --pxe-mode authoritative --pxe-pool "$POOL_FIRST-$POOL_LAST" \
    --pxe-router "$NET_SRV" --pxe-force --pxe-root "$W/rs/boot" \
    --energy-interval-secs 0 --log-level warn > "$W/server.log" 2>&1 &
  SP=$!
  for _ in $(seq 300); do
    grep -q 'rackshare API listening' "$W/server.log" && break
    kill -0 "$SP" 2>/dev/null || { echo "rackshare exited:" >&2; cat "$W/server.log" >&2; exit 1; }
    sleep 0.1
  done
  grep -q 'rackshare API listening' "$W/server.log" || { echo "rackshare not ready in 30 s" >&2; exit 1; }
  wait_dhcp_bound
}

start_dnsmasq() {
  rm -f "$W/dnsmasq.leases"
  # --port=0: DHCP only. --no-ping: no ICMP probe before offering (perfdhcp's addresses are
  # fictitious). --quiet-dhcp: no log line per packet. --dhcp-lease-max: the default is 1000.
  # dnsmasq rewrites its lease file on changes; that is its persistence.
  ip netns exec "$S" dnsmasq -d --conf-file=/dev/null --port=0 --no-ping --quiet-dhcp \
    --interface=br0 --bind-interfaces --dhcp-authoritative --user=root --group=root \
    --dhcp-range="$POOL_FIRST,$POOL_LAST,$MASK,1h" --dhcp-lease-max=1000000 \
    --dhcp-option=option:router,"$NET_SRV" \
    --dhcp-leasefile="$W/dnsmasq.leases" --pid-file="$W/dnsmasq.pid" > "$W/server.log" 2>&1 &
  SP=$!
  wait_dhcp_bound
}

# Kea memfile with lease-file persistence (appends every lease change to a CSV) and no
# lease-file cleanup during the run. $1 = true/false for multi-threading; $2 = log severity
# (WARN for runs: at INFO Kea logs every lease allocation).
write_kea_conf() {
  local mt=$1 sev=${2:-WARN}
  rm -f "$W"/kea-leases4.csv*
  cat > "$W/kea.json" <<EOF
{ "Dhcp4": {
    "interfaces-config": { "interfaces": [ "br0" ], "dhcp-socket-type": "udp" },
    "lease-database": { "type": "memfile", "persist": true, "lfc-interval": 0,
                        "name": "$W/kea-leases4.csv" },
    "multi-threading": { "enable-multi-threading": $mt, "thread-pool-size": 2,
                         "packet-queue-size": 64 },
    "valid-lifetime": 3600,
    "subnet4": [ { "id": 1, "subnet": "$SUBNET",
                   "pools": [ { "pool": "$POOL_FIRST - $POOL_LAST" } ],
                   "option-data": [ { "name": "routers", "data": "$NET_SRV" } ] } ],
    "loggers": [ { "name": "kea-dhcp4", "severity": "$sev",
                   "output_options": [ { "output": "stderr" } ] } ]
} }
EOF
}
start_kea() {
  write_kea_conf "$1" WARN
  # Kea wants a pid/lock directory; keep both in the temp dir.
  mkdir -p /run/kea
  KEA_PIDFILE_DIR=$W KEA_LOCKFILE_DIR=$W ip netns exec "$S" kea-dhcp4 -c "$W/kea.json" > "$W/server.log" 2>&1 &
  SP=$!
  wait_dhcp_bound
}

# Is multi-threaded Kea available? Start it once at INFO and look for its own statement
# "DHCP4_MULTI_THREADING_INFO enabled: yes" rather than assume.
kea_mt_ok() {
  write_kea_conf true INFO
  mkdir -p /run/kea
  KEA_PIDFILE_DIR=$W KEA_LOCKFILE_DIR=$W ip netns exec "$S" kea-dhcp4 -c "$W/kea.json" > "$W/kea-mt-check.log" 2>&1 &
  local pid=$! ok=1
  for _ in $(seq 50); do grep -q 'DHCP4_MULTI_THREADING_INFO' "$W/kea-mt-check.log" && break; sleep 0.1; done
  grep -q 'DHCP4_MULTI_THREADING_INFO enabled: yes' "$W/kea-mt-check.log" || ok=0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  [ $ok = 1 ] || sed -n '1,5p' "$W/kea-mt-check.log" >&2
  [ $ok = 1 ]
}

# UDP datagrams a namespace's kernel dropped because a socket's receive buffer was full
# (RcvbufErrors in /proc/net/snmp, which is per namespace). Read before and after each step
# on both sides, to tell "the server never answered" from "the answers overflowed perfdhcp".
rcvbuf_errors() {
  ip netns exec "$1" awk '/^Udp:/{ if (!h) { for (i = 1; i <= NF; i++) c[$i] = i; h = 1 }
                                   else print $c["RcvbufErrors"] }' /proc/net/snmp
}

# One ladder step: prints "ACKS DISCOVERS DORA_PER_S DROP_PCT NON_UNIQUE" (the last: ACKs
# perfdhcp received for an address it had already been given, i.e. duplicate leases).
step() {
  local rate=$1 out sent acks
  out=$(ip netns exec "$C" timeout $((DUR + 30)) perfdhcp -4 -l eth0 -r "$rate" \
        -R $((rate * DUR * 2)) -p "$DUR" "$NET_SRV" 2>&1) || true
  [ -n "${VERBOSE:-}" ] && echo "$out" >&2
  # perfdhcp prints a block per exchange: DISCOVER-OFFER first, then REQUEST-ACK.
  sent=$(awk '/Statistics for: DISCOVER-OFFER/{s=1} s&&/sent packets:/{print $NF; exit}' <<<"$out")
  acks=$(awk '/Statistics for: REQUEST-ACK/{s=1} s&&/received packets:/{print $NF; exit}' <<<"$out")
  dup=$(awk '/Statistics for: REQUEST-ACK/{s=1} s&&/non unique addresses:/{print $NF; exit}' <<<"$out")
  sent=${sent:-0} acks=${acks:-0}
  awk -v a="$acks" -v s="$sent" -v d="$DUR" -v u="${dup:-?}" 'BEGIN{
    drop = (s > 0) ? 100 * (s - a) / s : 100
    printf "%d %d %.0f %.1f %s\n", a, s, a / d, drop, u }'
}

declare -A BEST PEAK
printf '%-10s %8s %10s %10s %9s %7s  %s\n' server offered discovers acks 'DORA/s' 'drop%' note
for srv in $SERVERS; do
  if [ "$srv" = kea-mt ] && ! kea_mt_ok; then
    echo "kea-mt: this kea-dhcp4 build refuses multi-threading; skipped"; continue
  fi
  BEST[$srv]=0 PEAK[$srv]=0
  for rate in $RATES; do
    case $srv in
      rackshare) start_rackshare ;;
      rackshare-base) start_rackshare "$BASE_BIN" ;;
      dnsmasq) start_dnsmasq ;;
      kea-st) start_kea false ;;
      kea-mt) start_kea true ;;
      *) echo "unknown server $srv" >&2; exit 2 ;;
    esac
    s0=$(rcvbuf_errors "$S") c0=$(rcvbuf_errors "$C")
    read -r acks sent dps drop dup < <(step "$rate")
    # Let the server drain what is still queued before reading its counters.
    sleep 2
    ovf="rcvbuf drops srv $(( $(rcvbuf_errors "$S") - s0 )) cli $(( $(rcvbuf_errors "$C") - c0 ))"
    note=
    if [ "${srv%-base}" = rackshare ]; then
      # Evidence the leases are durable: rows in the inventory's dhcp_leases table, and the
      # server's own lease-batch counters (GET /metrics), read before stopping it.
      m=$(ip netns exec "$S" curl -s --max-time 5 "http://127.0.0.1:9100/metrics" || true)
      bat=$(awk '/^rackshare_lease_batches_total/{print $2}' <<<"$m")
      err=$(awk '/^rackshare_lease_store_errors_total/{print $2}' <<<"$m")
      acked=$(awk '/^rackshare_dhcp_acks_total/{print $2}' <<<"$m")
    fi
    stop_server
    if [ "${srv%-base}" = rackshare ]; then
      # Rows counted after a clean stop, so no commit is still in flight.
      rows=$(sqlite3 "$W/rs/data/rackshare.db" 'SELECT count(*) FROM dhcp_leases' 2>/dev/null || echo '?')
      note="acks sent ${acked:-?}, db rows $rows, lease batches ${bat:-?}, store errors ${err:-?}"
    fi
    case $srv in
      dnsmasq) note="lease file lines $(wc -l < "$W/dnsmasq.leases" 2>/dev/null || echo '?')" ;;
      kea-*) note="lease file lines $(cat "$W"/kea-leases4.csv* 2>/dev/null | wc -l)" ;;
    esac
    sustained=no
    if awk -v d="$drop" -v m="$MAXDROP" 'BEGIN{exit !(d < m)}'; then
      sustained=yes
      [ "$dps" -gt "${BEST[$srv]}" ] && BEST[$srv]=$dps
    fi
    [ "$dps" -gt "${PEAK[$srv]}" ] && PEAK[$srv]=$dps
    printf '%-10s %8s %10s %10s %9s %7s  %s\n' "$srv" "$rate" "$sent" "$acks" "$dps" "$drop" \
      "$( [ $sustained = yes ] && echo sustained || echo "drops>=$MAXDROP%" ); dup addr $dup; $ovf; $note"
  done
done

echo
echo "Best sustained DORA/s (drops < $MAXDROP%) over the ladder [$RATES], ${DUR}s per step:"
for srv in $SERVERS; do
  [ -n "${BEST[$srv]+x}" ] && printf '  %-10s %7s   (peak ACK rate at any drop level: %s)\n' "$srv" "${BEST[$srv]}" "${PEAK[$srv]}"
done
ratio() {
  [ -n "${BEST[$1]+x}" ] && [ -n "${BEST[$2]+x}" ] || return 0
  awk -v a="${BEST[$1]}" -v b="${BEST[$2]}" -v n="$1/$2" 'BEGIN{
    if (b > 0) printf "  %s = %.2f\n", n, a / b; else printf "  %s = n/a (zero)\n", n }'
}
echo "Ratios:"
ratio rackshare kea-mt
ratio rackshare kea-st
ratio rackshare dnsmasq
ratio rackshare rackshare-base
ratio rackshare-base kea-mt
