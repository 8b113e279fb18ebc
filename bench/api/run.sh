#!/usr/bin/env bash
# bench/api: 10,000 available machines, 100 concurrent clients each asking for a one-machine
# lease and releasing it, for SECONDS, against the real `rackshare serve` (release build) on
# SQLite and on PostgreSQL. Prints throughput and p50/p99 latencies per backend. Loopback only.
#
#   bash bench/api/run.sh [MACHINES] [CLIENTS] [SECONDS]      (env BIN=PATH: that binary, no build)
#
# PostgreSQL: set RACKSHARE_BENCH_POSTGRES_URL to a server you own (e.g.
# postgres://postgres@localhost/postgres?host=/tmp/pg); a fresh database is created on it and
# dropped afterwards. Without it only SQLite runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh
N=${1:-10000}
CLIENTS=${2:-100}
SECS=${3:-20}
NGROUPS=10  # not GROUPS: bash reserves that name
PORT=18191
command -v curl >/dev/null || { echo "curl is missing: apt-get install curl" >&2; exit 2; }

# BIN=PATH runs that binary as is (the load driver is still built if missing).
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin rackshare --example bench-api-load
  BIN=$PWD/target/release/rackshare
fi
LOAD=$PWD/target/release/examples/bench-api-load
[ -x "$LOAD" ] || cargo build --release --quiet --example bench-api-load
TMP=$(mktemp -d /tmp/rackshare-bench-api.XXXXXX)
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

# run LABEL [--database-url URL]
run() {
  local label=$1; shift
  local data="$TMP/data-$label"
  "$BIN" serve --data-dir "$data" --listen 127.0.0.1:$PORT --log-level warn --energy-interval-secs 0 "$@" \
    > "$TMP/serve-$label.out" 2> "$TMP/serve-$label.log" &
  local pid=$!
  PIDS+=($pid)
  for _ in $(seq 1 200); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.1; done
  export RACKSHARE_URL=http://127.0.0.1:$PORT RACKSHARE_TOKEN=$(cat "$data/admin-token")
  "$BIN" import "$TMP/coop.json" >/dev/null
  for g in $(seq 0 $((NGROUPS - 1))); do "$BIN" group add "g$g" >/dev/null; done
  local result
  result=$("$LOAD" "http://127.0.0.1:$PORT" "$RACKSHARE_TOKEN" "$CLIENTS" "$SECS" "$NGROUPS")
  echo "$label $result"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "bench/api: $N machines, $CLIENTS clients, ${SECS}s per backend, $(date -u +%FT%TZ), binary $BIN"
machine_line
run sqlite
if [ -n "${RACKSHARE_BENCH_POSTGRES_URL:-}" ]; then
  command -v psql >/dev/null || { echo "psql is missing: apt-get install postgresql-client" >&2; exit 2; }
  PGDB="rs_bench_api_$$"
  psql "$RACKSHARE_BENCH_POSTGRES_URL" -qc "CREATE DATABASE $PGDB" >/dev/null
  base=${RACKSHARE_BENCH_POSTGRES_URL%%\?*}
  query=${RACKSHARE_BENCH_POSTGRES_URL#"$base"}
  run postgres --database-url "${base%/*}/$PGDB$query"
fi
