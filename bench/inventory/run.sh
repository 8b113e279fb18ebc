#!/usr/bin/env bash
# bench/inventory: 10,000 machines in rackshare, listed through the API and through a filtered
# query, beside nginx serving the very same JSON as a static file (the floor for "10,000
# machines over HTTP"), on SQLite and (with RACKSHARE_BENCH_POSTGRES_URL) on PostgreSQL.
# Prints medians, p95s, p99s, the service's CPU time per request (which does not depend on how
# loaded the box is) and its RSS; traffic stays on 127.0.0.1.
#
#   bash bench/inventory/run.sh [MACHINES] [RUNS]      (env BIN=PATH: that binary, no build)
#
# PostgreSQL: set RACKSHARE_BENCH_POSTGRES_URL to a server you own (e.g.
# postgres://postgres@localhost/postgres?host=/tmp/pg); a fresh database is created on it and
# dropped afterwards, as bench/api does.
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh
N=${1:-10000}
RUNS=${2:-30}
API_PORT=18181
NGINX_PORT=18182
command -v nginx >/dev/null || { echo "nginx is missing: apt-get install nginx-light" >&2; exit 2; }
command -v curl >/dev/null || { echo "curl is missing: apt-get install curl" >&2; exit 2; }

# BIN=PATH runs that binary as is (no build).
if [ -z "${BIN:-}" ]; then cargo build --release --quiet --bin rackshare; BIN=$PWD/target/release/rackshare; fi
TMP=$(mktemp -d /tmp/rackshare-bench.XXXXXX)
PIDS=()
PGDB=""
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$PGDB" ]; then psql "$RACKSHARE_BENCH_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $PGDB" >/dev/null 2>&1 || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

python3 - "$N" > "$TMP/coop.json" <<'PY'
import json, sys
n = int(sys.argv[1])
machines = []
for i in range(n):
    machines.append({
        "name": f"node-{i:05d}", "state": ["available", "deployed", "maintenance", "new"][i % 4],
        "state_reason": "", "arch": "x86_64" if i % 8 else "aarch64",
        "nics": [{"mac": "52:54:%02x:%02x:%02x:%02x" % (i >> 24 & 255, i >> 16 & 255, i >> 8 & 255, i & 255), "name": "eno1", "pxe": True}],
        "tags": ["gpu"] if i % 10 == 0 else ["standard"], "site": "hall", "rack": f"r{i % 50:02d}", "rack_unit": f"U{i % 42 + 1}",
        "serial": f"SN{i:08d}", "vendor": "Supermicro", "model": "X11", "cpu_count": 16 + (i % 4) * 16, "cpu_model": "Xeon",
        "ram_mib": 32768 * (1 + i % 4), "disks": [{"name": "sda", "size_bytes": 480_000_000_000}], "notes": "",
        "bmc": {"url": f"redfish+https://127.0.0.1:{10000 + i % 5000}", "username": "root"}, "created_at": 1764000000000 + i,
    })
doc = {"format": "rackshare-inventory", "version": 1, "sites": [{"name": "hall", "description": ""}],
       "racks": [{"site": "hall", "name": f"r{r:02d}", "position": ""} for r in range(50)], "groups": [], "users": [],
       "machines": machines}
json.dump(doc, sys.stdout)
PY


rss() { awk '/VmRSS/ {print int($2/1024)}' /proc/$1/status; }
# CPU time (user + system, all threads) the process has used, in milliseconds.
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) * 1000 / hz}' /proc/$1/stat; }
# Times RUNS GETs of URL and prints "median p95 p99" in milliseconds.
measure() {
  local url=$1; shift
  for _ in $(seq 1 "$RUNS"); do curl -s -o /dev/null -w '%{time_total}\n' "$@" "$url"; done |
    python3 -c 'import sys; v=sorted(float(x)*1000 for x in sys.stdin); print(f"{v[len(v)//2]:.1f} {v[int(len(v)*0.95)-1]:.1f} {v[max(0, -(-len(v)*99//100)-1)]:.1f}")'
}
per_run() { python3 -c "print(f'{($2 - $1) / $RUNS:.1f}')"; }
FILTER="state=available&tag=gpu&min_ram_mib=32768"

# bench_backend LABEL [serve flags]: one service on a fresh database, the import, the lists,
# the CPU per list and the RSS; the full list is kept as $TMP/machines-LABEL.json.
bench_backend() {
  local label=$1; shift
  "$BIN" serve --data-dir "$TMP/data-$label" --listen 127.0.0.1:$API_PORT --metrics-listen off --log-level warn "$@" \
    > "$TMP/serve-$label.out" 2> "$TMP/serve-$label.log" &
  local pid=$!
  PIDS+=($pid)
  for _ in $(seq 1 200); do curl -sf http://127.0.0.1:$API_PORT/healthz >/dev/null && break; sleep 0.1; done
  export RACKSHARE_URL=http://127.0.0.1:$API_PORT RACKSHARE_TOKEN=$(cat "$TMP/data-$label/admin-token")
  local auth=(-H "Authorization: Bearer $RACKSHARE_TOKEN") rss_empty t0 t1 import_s count size_kb c0 c1 c2
  rss_empty=$(rss $pid)
  t0=$(date +%s.%N)
  "$BIN" import "$TMP/coop.json" >/dev/null
  t1=$(date +%s.%N)
  import_s=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
  curl -s "${auth[@]}" http://127.0.0.1:$API_PORT/api/v1/machines -o "$TMP/machines-$label.json"
  count=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))))" "$TMP/machines-$label.json")
  [ "$count" = "$N" ] || { echo "$label: expected $N machines in the listing, got $count" >&2; exit 1; }
  size_kb=$(( $(stat -c %s "$TMP/machines-$label.json") / 1024 ))
  c0=$(cpu_ms $pid)
  read -r list_med list_p95 list_p99 < <(measure http://127.0.0.1:$API_PORT/api/v1/machines "${auth[@]}")
  c1=$(cpu_ms $pid)
  local filter_count
  filter_count=$(curl -s "${auth[@]}" "http://127.0.0.1:$API_PORT/api/v1/machines?$FILTER" | python3 -c "import json,sys; print(len(json.load(sys.stdin)))")
  read -r filt_med filt_p95 _ < <(measure "http://127.0.0.1:$API_PORT/api/v1/machines?$FILTER" "${auth[@]}")
  c2=$(cpu_ms $pid)
  read -r show_med show_p95 _ < <(measure http://127.0.0.1:$API_PORT/api/v1/machines/node-04242 "${auth[@]}")
  # A member-sized page too: every kind of listing has run before the idle RSS is read.
  curl -s -o /dev/null "${auth[@]}" "http://127.0.0.1:$API_PORT/api/v1/machines?limit=1000"
  local rss_loaded rss_idle
  rss_loaded=$(rss $pid)
  sleep 2
  rss_idle=$(rss $pid)
  cat <<OUT
[$label] import of $N machines (one transaction):   ${import_s} s
[$label] list all ($count machines, ${size_kb} KiB JSON): median ${list_med} ms  p95 ${list_p95} ms  p99 ${list_p99} ms   (target p99 < 100 ms)
[$label]   service CPU per list-all:                  $(per_run "$c0" "$c1") ms (user+system, all threads)
[$label] filtered list ($filter_count machines: $FILTER): median ${filt_med} ms  p95 ${filt_p95} ms  CPU $(per_run "$c1" "$c2") ms
[$label] show one machine:                            median ${show_med} ms  p95 ${show_p95} ms
[$label] RSS: idle empty ${rss_empty} MB, after listing ${rss_loaded} MB, idle again ${rss_idle} MB   (target idle < 50 MB)
OUT
  LAST_LIST_MED=$list_med
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "bench/inventory: $N machines, $RUNS runs each, $(date -u +%FT%TZ), binary $BIN"
machine_line
bench_backend sqlite
if [ -n "${RACKSHARE_BENCH_POSTGRES_URL:-}" ]; then
  command -v psql >/dev/null || { echo "psql is missing: apt-get install postgresql-client" >&2; exit 2; }
  PGDB="rs_bench_inv_$$"
  psql "$RACKSHARE_BENCH_POSTGRES_URL" -qc "CREATE DATABASE $PGDB" >/dev/null
  base=${RACKSHARE_BENCH_POSTGRES_URL%%\?*}
  query=${RACKSHARE_BENCH_POSTGRES_URL#"$base"}
  bench_backend postgres --database-url "${base%/*}/$PGDB$query"
  # Both engines must give the same machines (the byte layout is each engine's own JSON text).
  python3 -c 'import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:]); print("[postgres] list-all: the same machines as on SQLite" if a==b else "[postgres] list-all: DIFFERENT machines than on SQLite")' \
    "$TMP/machines-sqlite.json" "$TMP/machines-postgres.json"
fi
echo "[sqlite] list-all md5 $(md5sum < "$TMP/machines-sqlite.json" | cut -d' ' -f1)"

mkdir -p "$TMP/www" "$TMP/nginx"
cp "$TMP/machines-sqlite.json" "$TMP/www/machines.json"
cat > "$TMP/nginx/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  client_body_temp_path $TMP/nginx; proxy_temp_path $TMP/nginx; fastcgi_temp_path $TMP/nginx; uwsgi_temp_path $TMP/nginx; scgi_temp_path $TMP/nginx;
  server { listen 127.0.0.1:$NGINX_PORT; root $TMP/www; }
}
NGX
nginx -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" &
PIDS+=($!)
for _ in $(seq 1 50); do curl -sf -o /dev/null http://127.0.0.1:$NGINX_PORT/machines.json && break; sleep 0.1; done
read -r NGX_MED NGX_P95 _ < <(measure http://127.0.0.1:$NGINX_PORT/machines.json)

echo "nginx, same JSON as a static file:             median ${NGX_MED} ms  p95 ${NGX_P95} ms"
echo "ratio list-all rackshare (last backend) / nginx static: $(python3 -c "print(f'{$LAST_LIST_MED/$NGX_MED:.1f}')")x"
