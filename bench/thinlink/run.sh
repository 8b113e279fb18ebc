#!/usr/bin/env bash
# A reimage wave at a site behind a 10 Mbit/s link: instance a (site-less, on the host side of
# a veth) holds an image; instance b (site b) runs in a network namespace whose veth is shaped
# with `tc … tbf rate 10mbit` on both ends; AGENTS scripted agents inside the namespace pull
# the image from b at once (GET …/content, retried while b answers 503 "fetching … %"). b
# fetches the blob once from a; everyone else waits on that transfer. Prints the bytes that
# crossed the link (the veth's counters) against the image size, the wave's time, and what the
# wave would take if every agent pulled across the link (AGENTS × the one transfer's time).
#
# Usage (root, from the workspace root, after `cargo build` or `cargo build --release`):
#   bench/thinlink/run.sh
#   AGENTS=20 SIZE_MIB=64 bench/thinlink/run.sh
# Env: BIN (default target/release/rackshare, else target/debug/rackshare), AGENTS (10),
#      SIZE_MIB (32), RATE (10mbit), PGURL (a PostgreSQL server; a database is made and
#      dropped here; default the dev server's unix socket /tmp/rackshare-devpg).
#
# Only addresses of the veth made here (10.79.0.1 host side, 10.79.0.2 in the namespace) and
# loopback are used; the namespace, the veth, the servers and the database go on exit.
set -euo pipefail

AGENTS=${AGENTS:-10}
SIZE_MIB=${SIZE_MIB:-32}
RATE=${RATE:-10mbit}
PGURL=${PGURL:-postgres://postgres@localhost/postgres?host=/tmp/rackshare-devpg}
HOST_IP=10.79.0.1 NS_IP=10.79.0.2 A_PORT=18480 B_PORT=18481

. "$(dirname "$0")/../lib.sh"
need_root
need curl curl
need ip iproute2
need tc iproute2
need psql postgresql-client
if [ -z "${BIN:-}" ]; then
  BIN=target/release/rackshare
  [ -x "$BIN" ] || BIN=target/debug/rackshare
fi
[ -x "$BIN" ] || { echo "$BIN missing: cargo build --release" >&2; exit 1; }
BIN=$(realpath "$BIN")

NS=rsb-thin-$$ VETH=rsthin$$
DB=rsb_thin_$$
W=$(mktemp -d /tmp/rsb-thin.XXXXXX)
AP= BP=
cleanup() {
  for p in $BP $AP; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in $BP $AP; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  ip link del "$VETH" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  psql "$PGURL" -qc "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

psql "$PGURL" -qc "CREATE DATABASE $DB" >/dev/null
DBURL=${PGURL/\/postgres\?/\/$DB?}

ip netns add "$NS"
ip -n "$NS" link set lo up
ip link add "$VETH" type veth peer name eth0 netns "$NS"
ip addr add "$HOST_IP/24" dev "$VETH"
ip link set "$VETH" up
ip -n "$NS" addr add "$NS_IP/24" dev eth0
ip -n "$NS" link set eth0 up
# The thin link: both directions shaped (LAB-NOTES: tbf on each side's veth).
tc qdisc add dev "$VETH" root tbf rate "$RATE" burst 32kbit latency 400ms
ip netns exec "$NS" tc qdisc add dev eth0 root tbf rate "$RATE" burst 32kbit latency 400ms

wait_up() {  # $1 = netns or "", $2 = URL; bounded 60 s
  for _ in $(seq 600); do
    if [ -n "$1" ]; then
      ip netns exec "$1" curl -s -o /dev/null --max-time 2 "$2" && return 0
    else
      curl -s -o /dev/null --max-time 2 "$2" && return 0
    fi
    sleep 0.1
  done
  echo "no answer from $2" >&2; exit 1
}

mkdir -p "$W/a" "$W/b"
"$BIN" serve --data-dir "$W/a" --listen "$HOST_IP:$A_PORT" --no-tls --database-url "$DBURL" \
  --metrics-listen 127.0.0.1:0 --energy-interval-secs 0 >"$W/a.out" 2>"$W/a.log" & AP=$!
wait_up "" "http://$HOST_IP:$A_PORT/healthz"
TOKEN=$(cat "$W/a/admin-token")
export RACKSHARE_TOKEN=$TOKEN RACKSHARE_INSECURE_HTTP=1
"$BIN" --url "http://$HOST_IP:$A_PORT" site add b >/dev/null
# b is provisioned with the same secret key, as every instance on one database is.
cp "$W/a/secret.key" "$W/b/secret.key"; chmod 600 "$W/b/secret.key"
ip netns exec "$NS" "$BIN" serve --data-dir "$W/b" --listen "$NS_IP:$B_PORT" --no-tls \
  --database-url "$DBURL" --site b --metrics-listen 127.0.0.1:0 --energy-interval-secs 0 \
  >"$W/b.out" 2>"$W/b.log" & BP=$!
wait_up "$NS" "http://$NS_IP:$B_PORT/healthz"

SIZE=$((SIZE_MIB * 1048576))
head -c "$SIZE" /dev/urandom > "$W/image.raw"
SHA=$(sha256sum "$W/image.raw" | cut -d' ' -f1)
"$BIN" --url "http://$HOST_IP:$A_PORT" image add wave "$W/image.raw" >/dev/null

tx() { cat "/sys/class/net/$VETH/statistics/tx_bytes"; }
rx() { cat "/sys/class/net/$VETH/statistics/rx_bytes"; }
TX0=$(tx) RX0=$(rx)
START=$(date +%s.%N)
pids=()
for i in $(seq "$AGENTS"); do
  ip netns exec "$NS" curl -sf --retry 60 --retry-delay 1 --retry-all-errors --max-time 1800 \
    -H "Authorization: Bearer $TOKEN" -o "$W/agent$i.raw" \
    "http://$NS_IP:$B_PORT/api/v1/images/wave/content" & pids+=($!)
done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=$((fail + 1)); done
END=$(date +%s.%N)
TX1=$(tx) RX1=$(rx)
bad=0
for i in $(seq "$AGENTS"); do
  [ "$(sha256sum "$W/agent$i.raw" | cut -d' ' -f1)" = "$SHA" ] || bad=$((bad + 1))
done
# The one transfer's own time, from b's log (fetch start to "fetched").
CROSSED=$((TX1 - TX0)) BACK=$((RX1 - RX0))
WAVE=$(echo "$END - $START" | bc)
LINK_BPS=$(echo "$RATE" | sed 's/mbit/*1000000/; s/kbit/*1000/' | bc)
ONE=$(echo "scale=1; $SIZE * 8 / $LINK_BPS" | bc)
echo "$(machine_line)"
echo "link: $RATE (tbf), image: $SIZE_MIB MiB ($SIZE bytes), agents at site b: $AGENTS (failed: $fail, wrong bytes: $bad)"
echo "bytes that crossed the link toward b: $CROSSED ($(echo "scale=3; $CROSSED / $SIZE" | bc) x the image); back: $BACK"
echo "wave time: ${WAVE} s; one image over the link at line rate: ${ONE} s"
echo "if every agent pulled across the link: $(echo "scale=1; $AGENTS * $SIZE * 8 / $LINK_BPS" | bc) s at line rate, $(echo "$AGENTS * $SIZE" | bc) bytes"
grep -h "fetched an image blob" "$W/b.log" | tail -1 | cut -c1-200 || true
[ "$fail" = 0 ] && [ "$bad" = 0 ]
