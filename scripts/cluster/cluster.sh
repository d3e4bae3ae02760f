#!/usr/bin/env bash
# cluster.sh — a corosync cluster of N "hosts" on one machine, each host a network namespace.
#
# Owns: the namespaces PREFIX-n1..PREFIX-nN and PREFIX-br (the bridge lives in its own namespace, so
# nothing is added to the root namespace), one veth per node (eth0 inside the node, vI on the bridge),
# node addresses 10.213.7.I/24 that exist only inside those namespaces, and one corosync daemon per node
# with a generated config, its own /run (bind-mounted in the daemon's private mount namespace because
# corosync hard-codes /var/run/corosync.pid) and its own state_dir. Run state (configs, logs, PIDs)
# lives in $NBDM_CLUSTER_DIR (default ${TMPDIR:-/tmp}/nbdm-cluster-PREFIX).
#
# Usage (PREFIX from --prefix P, else $NBDM_CLUSTER_PREFIX, else "nbdm"; keep it short, [a-z0-9]):
#   cluster.sh up N [--token MS] [--prefix P]   start (idempotent: starts what is missing), wait quorate
#   cluster.sh down [--prefix P]                stop daemons, delete namespaces and run state
#   cluster.sh exec NODE CMD...                 run CMD inside node NODE's namespace (exec, same PID)
#   cluster.sh kill-corosync NODE               SIGKILL node's corosync, remove its /dev/shm leftovers
#   cluster.sh start-corosync NODE              start node's corosync again (no waiting)
#   cluster.sh partition NODE...                cut each NODE off the bridge (each becomes an island)
#   cluster.sh heal                             reattach every node to the bridge
#   cluster.sh wait-quorate NODE [SECONDS]      wait until NODE reports quorate
#   cluster.sh status                           corosync-quorumtool -s of every running node
#   cluster.sh pid NODE                         print node's corosync PID (empty if not running)
# Requires root (ip netns), iproute2 and corosync. Exit status 0 on success.
set -euo pipefail

# ---- named limits -------------------------------------------------------------------------------
readonly NODES_MAX=16
readonly TOKEN_MS_DEFAULT=1000
readonly QUORATE_WAIT_S_DEFAULT=60
readonly STOP_WAIT_S=10
readonly SUBNET=10.213.7          # /24; exists only inside this cluster's namespaces

die() { echo "cluster.sh: $*" >&2; exit 1; }

PREFIX="${NBDM_CLUSTER_PREFIX:-nbdm}"
TOKEN_MS="$TOKEN_MS_DEFAULT"
ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --prefix) PREFIX="${2:?--prefix needs a value}"; shift 2 ;;
    --prefix=*) PREFIX="${1#*=}"; shift ;;
    --token) TOKEN_MS="${2:?--token needs a value}"; shift 2 ;;
    --token=*) TOKEN_MS="${1#*=}"; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
set -- "${ARGS[@]+"${ARGS[@]}"}"
[[ "$PREFIX" =~ ^[a-z0-9][a-z0-9-]{0,30}$ ]] || die "bad prefix '$PREFIX' (use [a-z0-9-], at most 31 chars)"
[[ "$TOKEN_MS" =~ ^[0-9]+$ ]] || die "bad --token '$TOKEN_MS'"

DIR="${NBDM_CLUSTER_DIR:-${TMPDIR:-/tmp}/nbdm-cluster-$PREFIX}"
BR_NS="$PREFIX-br"

node_ns() { echo "$PREFIX-n$1"; }
node_dir() { echo "$DIR/n$1"; }
check_node() {
  [[ "${1:-}" =~ ^[0-9]+$ ]] || die "bad node '${1:-}'"
  [[ -f "$DIR/nodes" ]] || die "no cluster '$PREFIX' (run up first)"
  local n; n=$(cat "$DIR/nodes")
  (( $1 >= 1 && $1 <= n )) || die "node $1 out of range 1..$n"
}
ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }

# PID of node I's corosync if it is alive and really corosync, else empty.
corosync_pid() {
  local f; f="$(node_dir "$1")/corosync.pid"
  [[ -f "$f" ]] || return 0
  local pid; pid=$(cat "$f")
  if [[ -n "$pid" && -d /proc/$pid ]] && [[ "$(cat /proc/$pid/comm 2>/dev/null)" == corosync ]]; then
    echo "$pid"
  fi
}

# Remove what a killed corosync left in the host-wide /dev/shm: its blackbox and per-client dirs.
clean_shm() {
  local pid="$1"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  rm -rf /dev/shm/qb-corosync-"$pid"-* /dev/shm/qb-"$pid"-* 2>/dev/null || true
}

write_conf() {
  local n="$1" i="$2" d; d="$(node_dir "$i")"
  mkdir -p "$d/run" "$d/state"
  {
    echo "totem {"
    echo "  version: 2"
    echo "  cluster_name: $PREFIX"
    echo "  transport: knet"
    echo "  token: $TOKEN_MS"
    echo "  crypto_cipher: none"
    echo "  crypto_hash: none"
    echo "}"
    echo "nodelist {"
    local j
    for ((j = 1; j <= n; j++)); do
      echo "  node {"
      echo "    ring0_addr: $SUBNET.$j"
      echo "    nodeid: $j"
      echo "    name: n$j"
      echo "  }"
    done
    echo "}"
    echo "quorum {"
    echo "  provider: corosync_votequorum"
    if (( n == 2 )); then echo "  two_node: 1"; fi
    echo "}"
    echo "logging {"
    echo "  to_stderr: no"
    echo "  to_syslog: no"
    echo "  to_logfile: yes"
    echo "  logfile: $d/corosync.log"
    echo "  timestamp: on"
    echo "}"
    echo "system {"
    echo "  state_dir: $d/state"
    echo "}"
  } >"$d/corosync.conf"
}

start_corosync() {
  local i="$1" d; d="$(node_dir "$i")"
  [[ -n "$(corosync_pid "$i")" ]] && return 0
  # `ip netns exec` gives the command a private (slave) mount namespace; the bind mount of the node's
  # own /run stays inside it. setsid does not fork here (we are not a group leader), and sh execs
  # corosync, so $! is corosync's PID.
  setsid ip netns exec "$(node_ns "$i")" sh -c \
    'mount --bind "$1/run" /run && exec corosync -f -c "$1/corosync.conf"' corosync-wrap "$d" \
    </dev/null >>"$d/stdout.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$d/corosync.pid"
  # Wait until the exec happened (comm becomes corosync) or the process died.
  local k
  for ((k = 0; k < 100; k++)); do
    [[ -d /proc/$pid ]] || die "corosync on node $i exited at once; see $d/stdout.log and $d/corosync.log"
    [[ "$(cat /proc/$pid/comm 2>/dev/null)" == corosync ]] && return 0
    sleep 0.05
  done
  die "corosync on node $i did not start"
}

quorate() {  # 0 if node I's corosync answers and reports quorate with all expected votes present
  local i="$1" want="${2:-0}" out
  out=$(ip netns exec "$(node_ns "$i")" corosync-quorumtool -s 2>/dev/null) || return 1
  grep -Eq '^Quorate: +Yes' <<<"$out" || return 1
  if (( want > 0 )); then
    grep -Eq "^Total votes: +$want\$" <<<"$out" || return 1
  fi
}

wait_quorate() {
  local i="$1" secs="${2:-$QUORATE_WAIT_S_DEFAULT}" want="${3:-0}" deadline
  deadline=$((SECONDS + secs))
  until quorate "$i" "$want"; do
    (( SECONDS < deadline )) || die "node $i not quorate after ${secs}s (see $(node_dir "$i")/corosync.log)"
    sleep 0.1
  done
}

cmd_up() {
  local n="${1:-}"
  [[ "$n" =~ ^[0-9]+$ ]] && (( n >= 1 && n <= NODES_MAX )) || die "up N: N must be 1..$NODES_MAX"
  command -v corosync >/dev/null || die "corosync is not installed (apt-get install corosync)"
  if [[ -f "$DIR/nodes" && "$(cat "$DIR/nodes")" != "$n" ]]; then
    die "cluster '$PREFIX' already has $(cat "$DIR/nodes") nodes; run down first"
  fi
  mkdir -p "$DIR"
  echo "$n" >"$DIR/nodes"
  ns_exists "$BR_NS" || ip netns add "$BR_NS"
  ip -n "$BR_NS" link set lo up
  ip -n "$BR_NS" link show br0 >/dev/null 2>&1 || ip -n "$BR_NS" link add br0 type bridge
  ip -n "$BR_NS" link set br0 up
  local i ns
  for ((i = 1; i <= n; i++)); do
    ns=$(node_ns "$i")
    ns_exists "$ns" || ip netns add "$ns"
    ip -n "$ns" link set lo up
    if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
      ip -n "$ns" link add eth0 type veth peer name "v$i" netns "$BR_NS"
      ip -n "$ns" addr add "$SUBNET.$i/24" dev eth0
    fi
    ip -n "$BR_NS" link set "v$i" master br0
    ip -n "$BR_NS" link set "v$i" up
    ip -n "$ns" link set eth0 up
    write_conf "$n" "$i"
  done
  for ((i = 1; i <= n; i++)); do start_corosync "$i"; done
  local want=$n; (( n == 2 )) && want=2
  for ((i = 1; i <= n; i++)); do wait_quorate "$i" "$QUORATE_WAIT_S_DEFAULT" "$want"; done
}

stop_corosync() {  # SIGTERM, wait, then SIGKILL; always clean its shm leftovers by PID
  local i="$1" pid k
  pid=$(corosync_pid "$i")
  if [[ -n "$pid" ]]; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((k = 0; k < STOP_WAIT_S * 10; k++)); do
      [[ -d /proc/$pid ]] || break
      sleep 0.1
    done
    [[ -d /proc/$pid ]] && kill -KILL "$pid" 2>/dev/null || true
  fi
  local f; f="$(node_dir "$i")/corosync.pid"
  # Every PID this node's corosync ever had (restarts) is remembered in killed.pids or corosync.pid.
  for f in "$(node_dir "$i")/corosync.pid" "$(node_dir "$i")/killed.pids"; do
    [[ -f "$f" ]] || continue
    while read -r pid; do
      [[ -n "$pid" && -d /proc/$pid ]] && continue
      clean_shm "$pid"
    done <"$f"
  done
}

cmd_down() {
  local n=0 i
  [[ -f "$DIR/nodes" ]] && n=$(cat "$DIR/nodes")
  for ((i = 1; i <= n; i++)); do stop_corosync "$i"; done
  # Namespaces of this prefix, even if the run dir is gone.
  local ns
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^$PREFIX-(n[0-9]+|br)\$" || true); do
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$DIR"
}

cmd_exec() {
  local i="${1:-}"; shift || true
  check_node "$i"
  [[ $# -gt 0 ]] || die "exec NODE CMD..."
  exec ip netns exec "$(node_ns "$i")" "$@"
}

cmd_kill_corosync() {
  local i="${1:-}" pid k
  check_node "$i"
  pid=$(corosync_pid "$i")
  [[ -n "$pid" ]] || die "corosync on node $i is not running"
  kill -KILL "$pid"
  for ((k = 0; k < 100; k++)); do [[ -d /proc/$pid ]] || break; sleep 0.02; done
  echo "$pid" >>"$(node_dir "$i")/killed.pids"
  clean_shm "$pid"
}

cmd_partition() {
  [[ $# -gt 0 ]] || die "partition NODE..."
  local i
  for i in "$@"; do
    check_node "$i"
    ip -n "$BR_NS" link set "v$i" nomaster
  done
}

cmd_heal() {
  [[ -f "$DIR/nodes" ]] || die "no cluster '$PREFIX'"
  local n i; n=$(cat "$DIR/nodes")
  for ((i = 1; i <= n; i++)); do ip -n "$BR_NS" link set "v$i" master br0; done
}

cmd_status() {
  [[ -f "$DIR/nodes" ]] || die "no cluster '$PREFIX'"
  local n i; n=$(cat "$DIR/nodes")
  for ((i = 1; i <= n; i++)); do
    echo "== node $i (pid $(corosync_pid "$i"))"
    ip netns exec "$(node_ns "$i")" corosync-quorumtool -s 2>&1 || true
  done
}

verb="${1:-}"; shift || true
case "$verb" in
  up) cmd_up "$@" ;;
  down) cmd_down ;;
  exec) cmd_exec "$@" ;;
  kill-corosync) cmd_kill_corosync "$@" ;;
  start-corosync) check_node "${1:-}"; start_corosync "$1" ;;
  partition) cmd_partition "$@" ;;
  heal) cmd_heal ;;
  wait-quorate) check_node "${1:-}"; wait_quorate "$1" "${2:-$QUORATE_WAIT_S_DEFAULT}" ;;
  status) cmd_status ;;
  pid) check_node "${1:-}"; corosync_pid "$1" ;;
  *) die "usage: cluster.sh up N [--token MS] | down | exec NODE CMD... | kill-corosync NODE | start-corosync NODE | partition NODE... | heal | wait-quorate NODE [S] | status | pid NODE   (prefix: --prefix P or NBDM_CLUSTER_PREFIX)" ;;
esac
