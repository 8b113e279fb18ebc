#!/usr/bin/env bash
# bench/inventory: 10,000 machines in rackshare (SQLite), listed through the API and through a
# filtered query, beside nginx serving the very same JSON as a static file (the floor for
# "10,000 machines over HTTP"). Prints medians, p95s and the ratios; traffic stays on 127.0.0.1.
#
#   bash bench/inventory/run.sh [MACHINES] [RUNS]      (env BIN=PATH: that binary, no build)
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
if [ -z "${BIN:-}" ]; then cargo build --release --quiet; BIN=$PWD/target/release/rackshare; fi
TMP=$(mktemp -d /tmp/rackshare-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
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

"$BIN" serve --data-dir "$TMP/data" --listen 127.0.0.1:$API_PORT --metrics-listen off --log-level warn > "$TMP/serve.out" 2> "$TMP/serve.log" &
PIDS+=($!)
API_PID=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$API_PORT/healthz >/dev/null && break; sleep 0.1; done
export RACKSHARE_URL=http://127.0.0.1:$API_PORT RACKSHARE_TOKEN=$(cat "$TMP/data/admin-token")
rss() { awk '/VmRSS/ {print int($2/1024)}' /proc/$1/status; }
RSS_IDLE_EMPTY=$(rss $API_PID)

t0=$(date +%s.%N)
"$BIN" import "$TMP/coop.json" >/dev/null
t1=$(date +%s.%N)
IMPORT_S=$(echo "$t1 - $t0" | bc -l 2>/dev/null || python3 -c "print($t1-$t0)")

# Times RUNS GETs of URL and prints "median p95" in milliseconds.
measure() {
  local url=$1; shift
  for _ in $(seq 1 "$RUNS"); do curl -s -o /dev/null -w '%{time_total}\n' "$@" "$url"; done |
    python3 -c 'import sys; v=sorted(float(x)*1000 for x in sys.stdin); print(f"{v[len(v)//2]:.1f} {v[int(len(v)*0.95)-1]:.1f} {v[max(0, -(-len(v)*99//100)-1)]:.1f}")'
}
AUTH=(-H "Authorization: Bearer $RACKSHARE_TOKEN")
curl -s "${AUTH[@]}" http://127.0.0.1:$API_PORT/api/v1/machines -o "$TMP/machines.json"
COUNT=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))))" "$TMP/machines.json")
[ "$COUNT" = "$N" ] || { echo "expected $N machines in the listing, got $COUNT" >&2; exit 1; }
SIZE_KB=$(( $(stat -c %s "$TMP/machines.json") / 1024 ))
read -r LIST_MED LIST_P95 LIST_P99 < <(measure http://127.0.0.1:$API_PORT/api/v1/machines "${AUTH[@]}")
FILTER="state=available&tag=gpu&min_ram_mib=32768"
FILTER_COUNT=$(curl -s "${AUTH[@]}" "http://127.0.0.1:$API_PORT/api/v1/machines?$FILTER" | python3 -c "import json,sys; print(len(json.load(sys.stdin)))")
read -r FILT_MED FILT_P95 _ < <(measure "http://127.0.0.1:$API_PORT/api/v1/machines?$FILTER" "${AUTH[@]}")
read -r SHOW_MED SHOW_P95 _ < <(measure http://127.0.0.1:$API_PORT/api/v1/machines/node-04242 "${AUTH[@]}")
RSS_LOADED=$(rss $API_PID)
sleep 2
RSS_IDLE=$(rss $API_PID)

mkdir -p "$TMP/www" "$TMP/nginx"
cp "$TMP/machines.json" "$TMP/www/machines.json"
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

ratio() { python3 -c "print(f'{$1/$2:.1f}')"; }
cat <<OUT
bench/inventory: $N machines, SQLite, $RUNS runs each, $(date -u +%FT%TZ)
$(machine_line)
import of $N machines (one transaction):     ${IMPORT_S}s
list all ($COUNT machines, ${SIZE_KB} KiB JSON):   median ${LIST_MED} ms  p95 ${LIST_P95} ms  p99 ${LIST_P99} ms   (target p99 < 100 ms)
filtered list ($FILTER_COUNT machines: $FILTER): median ${FILT_MED} ms  p95 ${FILT_P95} ms
show one machine:                             median ${SHOW_MED} ms  p95 ${SHOW_P95} ms
nginx, same JSON as a static file:            median ${NGX_MED} ms  p95 ${NGX_P95} ms
ratio list-all rackshare / nginx static:      $(ratio "$LIST_MED" "$NGX_MED")x
RSS: idle empty ${RSS_IDLE_EMPTY} MB, after listing ${RSS_LOADED} MB, idle again ${RSS_IDLE} MB   (target idle < 50 MB)
OUT
