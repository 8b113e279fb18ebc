#!/usr/bin/env bash
# HTTP boot throughput, side by side: C concurrent clients each download a 1 GiB file from the
# real `rackshare serve` (GET /boot/FILE, streamed from its --pxe-root) and from nginx
# (sendfile on) serving the same file, one server at a time. Prints wall time, throughput,
# the ratio rackshare/nginx, and rackshare's peak RSS sampled during the run (it should stay
# flat: the file is streamed, never buffered whole).
#
# Usage (root, from the workspace root, after `cargo build --release`):
#   bench/http/run.sh
#   CLIENTS=4 SIZE_MIB=256 bench/http/run.sh
#   CLIENTS=100 SIZE_MIB=256 bench/http/run.sh   # a reimage wave: 100 agents, one image
# Env: BIN (rackshare binary), CLIENTS (default 16), SIZE_MIB (default 1024),
#      SPARSE=1 to fallocate the file instead of filling it from /dev/urandom.
#
# Everything runs in one network namespace created here (removed on exit), on the address of
# its bridge br0 (10.78.0.1): rackshare only starts its boot services (and so /boot) with
# --pxe-interface, so it gets a bridge with nothing else on it and --pxe-mode proxy (its
# proxy DHCP never hands out addresses, and there is no one to answer anyway).
set -euo pipefail

BIN=${BIN:-target/release/rackshare}
CLIENTS=${CLIENTS:-16}
SIZE_MIB=${SIZE_MIB:-1024}
ADDR=10.78.0.1 RS_PORT=8080 NGX_PORT=8081

. "$(dirname "$0")/../lib.sh"
need_root
need curl curl
need nginx nginx-light
need ip iproute2
[ -x "$BIN" ] || { echo "$BIN missing: cargo build --release" >&2; exit 1; }
BIN=$(realpath "$BIN")

NS=rsb-http-$$
W=$(mktemp -d /tmp/rsb-http.XXXXXX)
cleanup() {
  stop_server
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bridge_ns "$NS" "$ADDR/24"

ROOT=$W/root
mkdir -p "$ROOT" "$W/rs" "$W/nginx"
: > "$ROOT/undionly.kpxe"; : > "$ROOT/snponly.efi"   # rackshare wants its boot files present
SIZE=$((SIZE_MIB * 1048576))
if [ -n "${SPARSE:-}" ]; then
  fallocate -l "$SIZE" "$ROOT/big.bin"
else
  # Real bytes, made once; both servers then read it from the page cache.
  head -c "$SIZE" /dev/urandom > "$ROOT/big.bin"
fi
cat "$ROOT/big.bin" > /dev/null   # warm the page cache for whichever server goes first

wait_http() {  # $1 = URL; bounded 30 s
  for _ in $(seq 300); do
    ip netns exec "$NS" curl -s -o /dev/null --max-time 2 -r 0-0 "$1" && return 0
    kill -0 "$SP" 2>/dev/null || { echo "server exited early:" >&2; tail -20 "$W/server.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "server not answering $1" >&2; tail -20 "$W/server.log" >&2; exit 1
}

start_rackshare() {
  ip netns exec "$NS" "$BIN" serve --data-dir "$W/rs" --listen "$ADDR:9090" --no-tls --boot-http-port "$RS_PORT" \
    --pxe-interface br0 --pxe-mode proxy --pxe-root "$ROOT" \
    --energy-interval-secs 0 --log-level warn > "$W/server.log" 2>&1 &
  SP=$!
  URL=http://$ADDR:$RS_PORT/boot/big.bin
  wait_http "$URL"
}
start_nginx() {
  # A minimal, comparable nginx: sendfile on, no access log, one worker per core.
  cat > "$W/nginx/nginx.conf" <<EOF
user root;
worker_processes auto;
daemon off;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path $W/nginx/body;
  proxy_temp_path $W/nginx/proxy;
  fastcgi_temp_path $W/nginx/fastcgi;
  uwsgi_temp_path $W/nginx/uwsgi;
  scgi_temp_path $W/nginx/scgi;
  default_type application/octet-stream;
  server {
    listen $ADDR:$NGX_PORT;
    location /boot/ { alias $ROOT/; }
  }
}
EOF
  ip netns exec "$NS" nginx -c "$W/nginx/nginx.conf" -e "$W/nginx/error.log" > "$W/server.log" 2>&1 &
  SP=$!
  URL=http://$ADDR:$NGX_PORT/boot/big.bin
  wait_http "$URL"
}

# KiB of resident memory of a process (nginx: the master plus its workers).
rss_kib() {
  local total=0 p
  for p in "$@"; do
    total=$((total + $(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo $total
}

# CLIENTS parallel curls; samples the server's RSS every 0.1 s while they run.
# Prints "WALL FAILURES PEAK_RSS_KIB".
fetch_all() {
  local pids="$SP $(pgrep -P "$SP" || true)" peak=0 r t0 t1 bad=0 cp
  t0=$(date +%s.%N)
  ip netns exec "$NS" bash -c '
    for i in $(seq 1 '"$CLIENTS"'); do
      curl -s --max-time 600 -o /dev/null -w "%{size_download}\n" "'"$URL"'" > "'"$W"'/size.$i" &
    done
    wait' &
  cp=$!
  while kill -0 "$cp" 2>/dev/null; do   # bounded by curl --max-time
    r=$(rss_kib $pids); [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.1
  done
  wait "$cp" || true
  t1=$(date +%s.%N)
  for i in $(seq 1 "$CLIENTS"); do
    [ "$(cat "$W/size.$i" 2>/dev/null)" = "$SIZE" ] || bad=$((bad + 1))
  done
  rm -f "$W"/size.*
  echo "$(echo "$t1 - $t0" | bc) $bad $peak"
}

echo "bench/http: $CLIENTS clients x $SIZE_MIB MiB (one file), $(date -u +%FT%TZ)"
machine_line
declare -A WALL BAD PEAK IDLE
for srv in ${ORDER:-rackshare nginx}; do   # ORDER="nginx rackshare": the peer first
  case $srv in rackshare) start_rackshare ;; nginx) start_nginx ;; esac
  sleep 0.5
  IDLE[$srv]=$(rss_kib $SP $(pgrep -P "$SP" || true))
  read -r WALL[$srv] BAD[$srv] PEAK[$srv] < <(fetch_all)
  stop_server
  awk -v w="${WALL[$srv]}" -v n="$CLIENTS" -v s="$SIZE" -v b="${BAD[$srv]}" \
      -v i="${IDLE[$srv]}" -v p="${PEAK[$srv]}" -v name="$srv" 'BEGIN{
    printf "%s: %d x %d MiB in %.2f s = %.2f GB/s, failures %d, RSS idle %.1f MiB, peak %.1f MiB\n",
      name, n, s / 1048576, w, n * s / w / 1e9, b, i / 1024, p / 1024 }'
done

echo
awk -v r="${WALL[rackshare]}" -v x="${WALL[nginx]}" -v n="$CLIENTS" -v s="$SIZE" 'BEGIN{
  printf "Throughput ratio rackshare/nginx = %.2f  (rackshare %.2f GB/s, nginx %.2f GB/s)\n",
    x / r, n * s / r / 1e9, n * s / x / 1e9 }'
awk -v i="${IDLE[rackshare]}" -v p="${PEAK[rackshare]}" -v s="$SIZE" -v n="$CLIENTS" 'BEGIN{
  printf "rackshare RSS: idle %.1f MiB, peak during the run %.1f MiB (+%.1f MiB while streaming %d x %d MiB)\n",
    i / 1024, p / 1024, (p - i) / 1024, n, s / 1048576 }'
