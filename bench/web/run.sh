#!/usr/bin/env bash
# bench/web: the dashboard's page weight (every page's HTML + the CSS and JS it references,
# raw and as sent compressed) and the fleet page rendered with MACHINES machines by the real
# `rackshare serve` (release build, SQLite), timed over RUNS requests beside nginx serving the
# same HTML as a static file; prints median/p95/p99 and the ratio. Loopback only.
#
#   bash bench/web/run.sh [MACHINES] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh
N=${1:-10000}
RUNS=${2:-200}
PORT=18291
NGINX_PORT=18292
need curl curl
need nginx nginx

cargo build --release --quiet --bin rackshare --example bench-web-load
BIN=$PWD/target/release/rackshare
LOAD=$PWD/target/release/examples/bench-web-load
TMP=$(mktemp -d /tmp/rackshare-bench-web.XXXXXX)
NGINX_PID=
cleanup() {
  stop_server
  if [ -n "$NGINX_PID" ]; then kill "$NGINX_PID" 2>/dev/null || true; wait "$NGINX_PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

python3 - "$N" > "$TMP/coop.json" <<'PY'
import json, sys
n = int(sys.argv[1])
machines = [{
    "name": f"node-{i:05d}", "state": "available", "state_reason": "", "arch": "x86_64",
    "nics": [{"mac": "52:54:%02x:%02x:%02x:%02x" % (i >> 24 & 255, i >> 16 & 255, i >> 8 & 255, i & 255), "name": "eno1", "pxe": True}],
    "tags": ["standard"], "site": "hall", "rack": f"r{i % 50:02d}", "cpu_count": 32, "ram_mib": 65536,
    "disks": [{"name": "sda", "size_bytes": 480_000_000_000}], "notes": "", "created_at": 1764000000000 + i,
} for i in range(n)]
doc = {"format": "rackshare-inventory", "version": 1, "sites": [{"name": "hall", "description": ""}],
       "racks": [{"site": "hall", "name": f"r{r:02d}", "position": ""} for r in range(50)], "groups": [], "users": [],
       "machines": machines}
json.dump(doc, sys.stdout)
PY

"$BIN" serve --data-dir "$TMP/data" --listen 127.0.0.1:$PORT --log-level warn --energy-interval-secs 0 \
  > "$TMP/serve.out" 2> "$TMP/serve.log" &
SP=$!
for _ in $(seq 1 200); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.1; done
export RACKSHARE_URL=http://127.0.0.1:$PORT RACKSHARE_TOKEN=$(cat "$TMP/data/admin-token")
"$BIN" import "$TMP/coop.json" >/dev/null
"$BIN" group add coop >/dev/null
BASE=http://127.0.0.1:$PORT

echo "bench/web: $N machines, $RUNS runs, $(date -u +%FT%TZ)"
machine_line
echo
echo "page weight in bytes (sent: what a browser accepting 'br, gzip' receives; budget 100,000):"
PAGES=(/ /leases/new /ledger /images /keys /certificates /tokens /sessions /password
       /fleet /machines/node-00000/timeline /machines/node-00000 /machines/node-00000/console
       /users /dhcp-leases /groups /groups/coop /policy /bmc-health /energy /capacity /login)
"$LOAD" weight "$BASE" "$RACKSHARE_TOKEN" "$TMP" "${PAGES[@]}"

# The fleet page (index 9 above) as nginx would serve it.
mkdir -p "$TMP/www"
cp "$TMP/9.html" "$TMP/www/fleet.html"
cat > "$TMP/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx-body;
  proxy_temp_path $TMP/nginx-proxy;
  fastcgi_temp_path $TMP/nginx-fastcgi;
  uwsgi_temp_path $TMP/nginx-uwsgi;
  scgi_temp_path $TMP/nginx-scgi;
  server { listen 127.0.0.1:$NGINX_PORT; root $TMP/www; default_type text/html; }
}
CONF
nginx -c "$TMP/nginx.conf" -p "$TMP" &
NGINX_PID=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$NGINX_PORT/fleet.html >/dev/null && break; sleep 0.1; done

echo
echo "fleet page, first page of $N machines (one page of rows is rendered, not $N):"
R1=$("$LOAD" time rackshare "$BASE/fleet" "$TMP/cookie" "$RUNS"); echo "$R1"
R2=$("$LOAD" time rackshare "$BASE/fleet?state=available&site=hall&min_ram_gib=32&after=node-05000" "$TMP/cookie" "$RUNS")
echo "${R2/rackshare/filtered}"
R3=$("$LOAD" time nginx "http://127.0.0.1:$NGINX_PORT/fleet.html" "$TMP/cookie" "$RUNS"); echo "$R3"
med() { sed -E 's/.*median ([0-9.]+) ms.*/\1/' <<<"$1"; }
awk -v a="$(med "$R1")" -v b="$(med "$R3")" 'BEGIN { printf "ratio rackshare/nginx (median): %.1fx\n", a / b }'
