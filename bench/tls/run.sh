#!/usr/bin/env bash
# bench/tls: the cost of HTTPS on the member API. One run starts the real `rackshare serve`
# (release build, SQLite) twice on loopback: plain HTTP, and HTTPS with a certificate from a
# throwaway CA (TLS 1.3, ring). CLIENTS concurrent clients GET /api/v1/whoami for SECONDS,
# first over kept-alive connections, then with a new connection per request (a TLS handshake
# each time). Prints requests/s and latencies of both and the HTTPS/HTTP ratio. Loopback only.
#
#   bash bench/tls/run.sh [CLIENTS] [SECONDS]
#
# RACKSHARE_BENCH_PROFILE=debug uses the debug build instead (quicker to build, slower to run:
# only its ratio means anything).
set -euo pipefail
cd "$(dirname "$0")/../.."
CLIENTS=${1:-32}
SECS=${2:-15}
PLAIN_PORT=18201
TLS_PORT=18202
command -v curl >/dev/null || { echo "curl is missing: apt-get install curl" >&2; exit 2; }

PROFILE=${RACKSHARE_BENCH_PROFILE:-release}
case "$PROFILE" in
  release) cargo build --release --quiet --bin rackshare --example bench-tls-load ;;
  debug) cargo build --quiet --bin rackshare --example bench-tls-load ;;
  *) echo "RACKSHARE_BENCH_PROFILE must be release or debug" >&2; exit 2 ;;
esac
BIN=$PWD/target/$PROFILE/rackshare
LOAD=$PWD/target/$PROFILE/examples/bench-tls-load
TMP=$(mktemp -d /tmp/rackshare-bench-tls.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
"$LOAD" cert "$TMP"

# start LABEL PORT [serve flags…]: a service with its own data dir; sets TOKEN_<LABEL>.
start() {
  local label=$1 port=$2; shift 2
  "$BIN" serve --data-dir "$TMP/data-$label" --listen 127.0.0.1:$port --metrics-listen off \
    --log-level warn --energy-interval-secs 0 "$@" > "$TMP/serve-$label.out" 2> "$TMP/serve-$label.log" &
  PIDS+=($!)
  for _ in $(seq 1 200); do
    curl -sfk "$( [ "$label" = https ] && echo https || echo http )://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 0.1
  done
}
start http $PLAIN_PORT
start https $TLS_PORT --tls-cert "$TMP/server.pem" --tls-key "$TMP/server.key"
PLAIN_TOKEN=$(cat "$TMP/data-http/admin-token")
TLS_TOKEN=$(cat "$TMP/data-https/admin-token")

rate() { sed -E 's/.*"req_per_s":([0-9.]+).*/\1/' <<<"$1"; }
echo "bench/tls ($PROFILE build): $CLIENTS clients, ${SECS}s per row, GET /api/v1/whoami, $(nproc) cores, $(date -u +%FT%TZ)"
for mode in reuse fresh; do
  plain=$("$LOAD" load "http://127.0.0.1:$PLAIN_PORT" "$PLAIN_TOKEN" "$CLIENTS" "$SECS" $mode)
  tls=$("$LOAD" load "https://127.0.0.1:$TLS_PORT" "$TLS_TOKEN" "$CLIENTS" "$SECS" $mode "$TMP/ca.pem")
  echo "$mode http  $plain"
  echo "$mode https $tls"
  awk -v a="$(rate "$tls")" -v b="$(rate "$plain")" -v m=$mode \
    'BEGIN { if (b > 0) printf "%s: https/http throughput ratio %.2f\n", m, a / b }'
done
