# Shared by the bench/*/run.sh scripts (sourced, not run): prerequisites, the server process,
# and the network namespaces every benchmark creates for itself (and deletes on exit).

# need CMD PACKAGE: fail with what to install.
need() { command -v "$1" >/dev/null || { echo "$1 missing: apt-get install $2" >&2; exit 1; }; }

need_root() { [ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }; }

# The server under test runs in the background with its pid in SP; stop_server ends it
# (SIGTERM, a bounded wait for a clean exit, then SIGKILL).
SP=
stop_server() {
  if [ -n "$SP" ]; then
    kill -TERM "$SP" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SP" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SP" 2>/dev/null || true
    wait "$SP" 2>/dev/null || true
    SP=
  fi
}

# bridge_ns NS ADDR/PREFIX: a namespace with lo up and a bridge br0 holding ADDR.
bridge_ns() {
  ip netns add "$1"
  ip -n "$1" link set lo up
  ip -n "$1" link add br0 type bridge forward_delay 0 stp_state 0
  ip -n "$1" addr add "$2" dev br0
  ip -n "$1" link set br0 up
}

# client_ns SERVER_NS CLIENT_NS ADDR/PREFIX: a second namespace whose eth0 (ADDR) is joined to
# the server namespace's br0 by a veth.
client_ns() {
  ip netns add "$2"
  ip -n "$2" link set lo up
  ip -n "$1" link add h0 type veth peer name eth0 netns "$2"
  ip -n "$1" link set h0 master br0 up
  ip -n "$2" addr add "$3" dev eth0
  ip -n "$2" link set eth0 up
}

# machine_line: the box a figure was measured on (CPU model, cores, memory, load average),
# printed by every bench so a result never loses its context.
machine_line() {
  local cpu mem
  cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
  mem=$(awk '/^MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)
  echo "machine: ${cpu:-unknown CPU}, $(nproc) cores, $mem, load average $(cut -d' ' -f1-3 /proc/loadavg), $(uname -r)"
}
