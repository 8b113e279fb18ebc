#!/usr/bin/env bash
# bench/scale: 10,000 machines, 1,000 of them with simulated Redfish BMCs served by one process
# (bench-scale-load bmcs: testkit's FakeRedfishFleet, one URL per machine), on one PostgreSQL
# database; one rackshare instance, then three on a fresh database (release build, loopback).
# For each: API p50/p99 of the whole list, a page of 100, one machine and a lease under CLIENTS
# concurrent clients spread over the instances; jobs started per minute (COUNT inspect jobs,
# each a boot-device PATCH and a power cycle on its simulated BMC); the instances' CPU while
# they hold those jobs, per 1,000 machines (from /proc/PID/stat).
#
#   RACKSHARE_BENCH_POSTGRES_URL=postgres://postgres@localhost/postgres?host=/tmp/pg \
#     flock /tmp/rackshare-heavy.lock bash bench/scale/run.sh [MACHINES] [BMCS] [CLIENTS] [SECONDS]
#
# A fresh database is created on that server per configuration and dropped afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh
N=${1:-10000}
BMCS=${2:-1000}
CLIENTS=${3:-100}
SECS=${4:-10}
PORT=18391        # instances: PORT, PORT+1, PORT+2
FLEET_PORT=18399
need curl curl
need psql postgresql-client
[ -n "${RACKSHARE_BENCH_POSTGRES_URL:-}" ] || { echo "set RACKSHARE_BENCH_POSTGRES_URL to a PostgreSQL server you own" >&2; exit 2; }

cargo build --release --quiet --bin rackshare --example bench-scale-load
BIN=$PWD/target/release/rackshare
LOAD=$PWD/target/release/examples/bench-scale-load
TMP=$(mktemp -d /tmp/rackshare-bench-scale.XXXXXX)
PIDS=()
PGDB=""
drop_db() {
  if [ -n "$PGDB" ]; then psql "$RACKSHARE_BENCH_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $PGDB" >/dev/null 2>&1 || true; PGDB=""; fi
}
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
FLEET=
cleanup() {
  stop_all
  [ -n "$FLEET" ] && { kill "$FLEET" 2>/dev/null || true; wait "$FLEET" 2>/dev/null || true; }
  drop_db
  rm -rf "$TMP"
}
trap cleanup EXIT

"$LOAD" bmcs "$BMCS" "$FLEET_PORT" > "$TMP/fleet.out" &
FLEET=$!
for _ in $(seq 50); do grep -q ready "$TMP/fleet.out" 2>/dev/null && break; sleep 0.1; done

python3 - "$N" "$BMCS" "$FLEET_PORT" > "$TMP/coop.json" <<'PY'
import json, sys
n, bmcs, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def machine(i):
    m = {"name": f"node-{i:05d}", "state": "available", "state_reason": "", "arch": "x86_64",
         "nics": [{"mac": "52:54:%02x:%02x:%02x:%02x" % (i >> 24 & 255, i >> 16 & 255, i >> 8 & 255, i & 255), "name": "eno1", "pxe": True}],
         "tags": ["bmc" if i < bmcs else "standard"], "site": "hall", "rack": f"r{i % 50:02d}", "cpu_count": 32, "ram_mib": 65536,
         "disks": [{"name": "sda", "size_bytes": 480_000_000_000}], "notes": "", "created_at": 1764000000000 + i}
    if i < bmcs:
        m["bmc"] = {"url": f"redfish+http://127.0.0.1:{port}/redfish/v1/Systems/bmc-{i}", "username": "bench",
                    "tls_ca_pem": None, "tls_fingerprint": None, "tls_insecure": False}
    return m
doc = {"format": "rackshare-inventory", "version": 1, "sites": [{"name": "hall", "description": ""}],
       "racks": [{"site": "hall", "name": f"r{r:02d}", "position": ""} for r in range(50)], "groups": [], "users": [],
       "machines": [machine(i) for i in range(n)]}
json.dump(doc, sys.stdout)
PY

# run LABEL INSTANCES
run() {
  local label=$1 count=$2
  PGDB="rs_bench_scale_$$_$count"
  psql "$RACKSHARE_BENCH_POSTGRES_URL" -qc "CREATE DATABASE $PGDB" >/dev/null
  local base=${RACKSHARE_BENCH_POSTGRES_URL%%\?*}
  local query=${RACKSHARE_BENCH_POSTGRES_URL#"$base"}
  local db="${base%/*}/$PGDB$query"
  local urls="" pids="" i
  for i in $(seq 0 $((count - 1))); do
    local data="$TMP/data-$label-$i"
    mkdir -p "$data"
    # One secret key for every instance (provisioned identically).
    [ "$i" -gt 0 ] && install -m 600 "$TMP/data-$label-0/secret.key" "$data/secret.key"
    # Every simulated BMC's jobs may run at once: --max-jobs is per instance.
    "$BIN" serve --data-dir "$data" --listen 127.0.0.1:$((PORT + i)) --database-url "$db" \
      --log-level warn --energy-interval-secs 0 --max-jobs "$BMCS" --metrics-listen 127.0.0.1:0 \
      > "$TMP/serve-$label-$i.out" 2> "$TMP/serve-$label-$i.log" &
    PIDS+=($!)
    pids="$pids${pids:+,}$!"
    urls="$urls${urls:+,}http://127.0.0.1:$((PORT + i))"
    for _ in $(seq 1 300); do curl -sf http://127.0.0.1:$((PORT + i))/healthz >/dev/null && break; sleep 0.1; done
    if [ "$i" = 0 ]; then
      export RACKSHARE_URL=http://127.0.0.1:$PORT RACKSHARE_TOKEN=$(cat "$data/admin-token")
      "$BIN" import "$TMP/coop.json" >/dev/null
      for g in $(seq 0 9); do "$BIN" group add "g$g" >/dev/null; done
    fi
  done
  echo "$label api $("$LOAD" api "$urls" "$RACKSHARE_TOKEN" "$CLIENTS" "$SECS" 10)"
  echo "$label jobs $("$LOAD" jobs "$urls" "$RACKSHARE_TOKEN" "$FLEET_PORT" "$BMCS" "$pids")"
  machine_line
  stop_all
  drop_db
}

echo "bench/scale: $N machines, $BMCS simulated BMCs (one process), $CLIENTS clients, ${SECS}s per operation, PostgreSQL, $(date -u +%FT%TZ)"
machine_line
run one 1
run three 3
