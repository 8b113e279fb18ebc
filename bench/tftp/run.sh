#!/usr/bin/env bash
# TFTP under concurrency, side by side: N concurrent transfers of a 1 MiB file from the real
# `rackshare serve` (its boot services' TFTP) and from tftpd-hpa, one server at a time, over
# the same veth, with the same clients. Prints wall times, failures, CPU and the ratios.
#
# The headline client is pxe's `tftp_load` example: ONE process, one thread and one poll loop
# doing the N transfers concurrently (lock-step, windowsize 1 — what both servers and PXE ROMs
# speak), size-checked, its own CPU time measured so the figure says how much of the box the
# client took. Server CPU comes from a cgroup around the server (all its processes). It runs
# ROUNDS times per server, alternating servers, and the median is compared. The old client,
# N concurrent `curl` processes (SHA-256-checked), runs once per server as a second row: on
# two cores those N processes are most of the work, so that row measures the client. A third
# row is tftp_load at windowsize 8 (RFC 7440; tftpd-hpa does not implement it and answers 1).
#
# Usage (root, from the workspace root):
#   cargo build --release -p rackshare && cargo build -p pxe --release --example tftp_load
#   bench/tftp/run.sh            # N=200, ROUNDS=5
#   N=50 ROUNDS=5 bench/tftp/run.sh
# Env: BIN (rackshare binary), LOAD (tftp_load binary), N (clients), BLKSIZE (default 1468),
#      ROUNDS (default 5).
#
# Traffic stays inside two namespaces created here (removed on exit): server namespace with
# bridge br0 (10.77.0.1/24), client namespace (10.77.0.9/24), joined by a veth.
set -euo pipefail

BIN=${BIN:-target/release/rackshare}
LOAD=${LOAD:-target/release/examples/tftp_load}
N=${N:-200}
BLKSIZE=${BLKSIZE:-1468}
ROUNDS=${ROUNDS:-5}
SRV=10.77.0.1 CLI=10.77.0.9

. "$(dirname "$0")/../lib.sh"
need_root
need curl curl
need in.tftpd tftpd-hpa
need ip iproute2
need ss iproute2
[ -x "$BIN" ] || { echo "$BIN missing: cargo build --release" >&2; exit 1; }
BIN=$(realpath "$BIN")
[ -x "$LOAD" ] || { echo "$LOAD missing: cargo build -p pxe --release --example tftp_load" >&2; exit 1; }
LOAD=$(realpath "$LOAD")
need bc bc

S=rsb-tftp-$$-s C=rsb-tftp-$$-c
# Server CPU is read from a cgroup holding the server and everything it forks (tftpd-hpa
# runs a process per transfer): cgroup v2 cpu.stat, or v1 cpuacct.
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  CG=/sys/fs/cgroup/rsb-tftp-$$
  cg_usage() { awk '/^usage_usec/{printf "%.3f", $2 / 1e6}' "$CG/cpu.stat"; }
elif [ -d /sys/fs/cgroup/cpuacct ]; then
  CG=/sys/fs/cgroup/cpuacct/rsb-tftp-$$
  cg_usage() { awk '{printf "%.3f", $1 / 1e9}' "$CG/cpuacct.usage"; }
else
  echo "no cgroup filesystem at /sys/fs/cgroup: cannot account server CPU" >&2; exit 1
fi
mkdir -p "$CG"
# Runs "$@" inside the cgroup, replacing the caller: only call it as `in_cg … &` (the
# background subshell becomes the server, so $! is the server's pid).
in_cg() { exec bash -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG" "$@"; }
W=$(mktemp -d /tmp/rsb-tftp.XXXXXX)
cleanup() {
  stop_server
  ip netns del "$S" 2>/dev/null || true
  ip netns del "$C" 2>/dev/null || true
  rmdir "$CG" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bridge_ns "$S" "$SRV/24"
client_ns "$S" "$C" "$CLI/24"

# One served directory for both servers. World-readable: tftpd-hpa drops to user tftp after
# chrooting into it (mktemp makes 0700 dirs).
ROOT=$W/root
mkdir -p "$ROOT" "$W/out" "$W/rs"
chmod 755 "$W" "$ROOT"
: > "$ROOT/undionly.kpxe"; : > "$ROOT/snponly.efi"   # rackshare wants its boot files present
head -c 1048576 /dev/urandom > "$ROOT/file.bin"
chmod 644 "$ROOT"/*
WANT=$(sha256sum < "$ROOT/file.bin")

wait_udp69() {
  for _ in $(seq 150); do
    ip netns exec "$S" ss -Hlun 'sport = :69' | grep -q . && return 0
    kill -0 "$SP" 2>/dev/null || { echo "server exited early:" >&2; tail -20 "$W/server.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "server never bound UDP 69" >&2; tail -20 "$W/server.log" >&2; exit 1
}

start_rackshare() {
  # Proxy mode: boot services (TFTP) start, but DHCP never hands out addresses.
  in_cg ip netns exec "$S" "$BIN" serve --data-dir "$W/rs" --listen "$SRV:9090" --no-tls \
    --pxe-interface br0 --pxe-mode proxy --pxe-root "$ROOT" \
    --energy-interval-secs 0 --log-level warn > "$W/server.log" 2>&1 &
  SP=$!
  for _ in $(seq 300); do
    grep -q 'rackshare API listening' "$W/server.log" && break
    kill -0 "$SP" 2>/dev/null || { echo "rackshare exited:" >&2; cat "$W/server.log" >&2; exit 1; }
    sleep 0.1
  done
  wait_udp69
  CG0=$(cg_usage)
}
start_tftpd() {
  # --secure: chroot to ROOT (the file is named relative to it); --foreground: stay our child.
  in_cg ip netns exec "$S" in.tftpd --listen --foreground --address "$SRV:69" --secure "$ROOT" > "$W/server.log" 2>&1 &
  SP=$!
  wait_udp69
  CG0=$(cg_usage)
}

# Server CPU seconds since the server was ready: the cgroup counts every process and thread
# of it (tftpd-hpa's per-transfer children included) and the softirq work charged to them.
cpu_secs() {
  awk -v a="$CG0" -v b="$(cg_usage)" 'BEGIN{printf "%.2f s", b - a}'
}

# N curl processes at once; each transfer bounded by --max-time. Prints "WALL FAILURES".
curl_fetch() {
  rm -f "$W"/out/*
  local t0 t1 bad=0
  t0=$(date +%s.%N)
  ip netns exec "$C" bash -c '
    for i in $(seq 0 $(('"$N"' - 1))); do
      curl -sS --max-time 60 --tftp-blksize '"$BLKSIZE"' -o "'"$W"'/out/$i" \
        "tftp://'"$SRV"'/file.bin" 2>"'"$W"'/out/err$i" &
    done
    wait' || true
  t1=$(date +%s.%N)
  for i in $(seq 0 $((N - 1))); do
    [ "$(sha256sum < "$W/out/$i" 2>/dev/null)" = "$WANT" ] || bad=$((bad + 1))
  done
  # Distinct curl errors, if any, to stderr (e.g. "Operation timed out").
  cat "$W"/out/err* 2>/dev/null | sed 's/after [0-9]* milliseconds/after N ms/' | sort | uniq -c | head -5 >&2
  echo "$(echo "$t1 - $t0" | bc) $bad"
}

# The one-process client (N concurrent transfers). Prints "WALL FAILURES CLIENT_CPU" and
# keeps its summary line in $W/light.out.
light() {
  local out
  out=$(ip netns exec "$C" /usr/bin/time -f 'CPU %U %S' -o "$W/light.time" timeout 300 "$LOAD" \
    "$SRV" file.bin "$N" --blksize "$BLKSIZE" --windowsize "$1" --expect-size 1048576 \
    2>"$W/light.err") || out="tftp_load failed (exit $?)"
  tail -1 <<<"$out" > "$W/light.out"
  sort "$W/light.err" | uniq -c | head -3 >&2
  local wall fail cpu
  wall=$(awk '/transfers in/{print $4}' "$W/light.out")
  fail=$(awk '/transfers in/{gsub(",", "", $7); print $7}' "$W/light.out")
  cpu=$(awk '/^CPU/{printf "%.2f", $2 + $3}' "$W/light.time" 2>/dev/null)
  echo "${wall:-nan} ${fail:-$N} ${cpu:-nan}"
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

declare -A WALL BAD CPU W1 F1 C1 SCPU1 W8
for srv in rackshare tftpd-hpa; do W1[$srv]= F1[$srv]=0 C1[$srv]= SCPU1[$srv]=; done
echo "tftp_load (one client process, $N concurrent transfers x 1 MiB, blksize $BLKSIZE, windowsize 1), $ROUNDS rounds:"
for round in $(seq "$ROUNDS"); do
  for srv in rackshare tftpd-hpa; do
    case $srv in rackshare) start_rackshare ;; tftpd-hpa) start_tftpd ;; esac
    read -r w f c < <(light 1)
    W1[$srv]+="$w " F1[$srv]=$(( ${F1[$srv]} + f )) C1[$srv]+="$c "
    sc=$(cpu_secs)
    SCPU1[$srv]+="${sc% s} "
    printf '  round %d %-10s wall %6s s  failures %s  client CPU %s s  server CPU %s  (%s)\n' \
      "$round" "$srv" "$w" "$f" "$c" "$sc" "$(cat "$W/light.out")"
    if [ "$round" = 1 ]; then
      # Second and third rows, once per server, on a fresh server process.
      stop_server
      case $srv in rackshare) start_rackshare ;; tftpd-hpa) start_tftpd ;; esac
      read -r WALL[$srv] BAD[$srv] < <(curl_fetch)
      CPU[$srv]=$(cpu_secs)
      if [ "$srv" = rackshare ]; then
        ip netns exec "$S" curl -s --max-time 5 "http://127.0.0.1:9100/metrics" \
          | grep -E '^rackshare_tftp_(transfers|completed|timeouts|refused|aborted_by_client)_total' \
          | tr '\n' ' ' | sed 's/^/  rackshare metrics after the curl row: /'; echo
      fi
      read -r w8 _ c8 < <(light 8)
      W8[$srv]="$(cat "$W/light.out") (client CPU $c8 s)"
    fi
    stop_server
  done
done

echo
echo "Summary, $N concurrent transfers x 1 MiB, blksize $BLKSIZE (box shared with other work: single runs are +-20 %):"
for srv in rackshare tftpd-hpa; do
  printf '  %-10s tftp_load ws1: median wall %6.2f s over [%s]  failures %s  client CPU [%s] s\n' "$srv" \
    "$(median <<<"${W1[$srv]}")" "${W1[$srv]% }" "${F1[$srv]}" "${C1[$srv]% }"
done
for srv in rackshare tftpd-hpa; do
  printf '  %-10s server CPU per ws1 round: [%s] s (median %.2f s)\n' "$srv" "${SCPU1[$srv]% }" \
    "$(median <<<"${SCPU1[$srv]}")"
done
awk -v r="$(median <<<"${W1[rackshare]}")" -v t="$(median <<<"${W1[tftpd-hpa]}")" 'BEGIN{
  printf "  speed ratio, one-process client, windowsize 1 (tftpd-hpa wall / rackshare wall) = %.2f\n", t / r }'
for srv in rackshare tftpd-hpa; do
  printf '  %-10s %s curl processes: wall %6.2f s  failures %s  server CPU %s\n' "$srv" "$N" "${WALL[$srv]}" "${BAD[$srv]}" "${CPU[$srv]}"
done
awk -v r="${WALL[rackshare]}" -v t="${WALL[tftpd-hpa]}" 'BEGIN{
  printf "  speed ratio, %s curl processes (client-bound) = %.2f\n", "'"$N"'", t / r }'
for srv in rackshare tftpd-hpa; do
  printf '  %-10s tftp_load windowsize 8: %s\n' "$srv" "${W8[$srv]}"
done
