# Shared by the peer runners (redis.sh, postgres.sh, etcd.sh): settings, installing what is
# missing with apt-get, building peer-loadgen, and the bookkeeping of the servers a runner
# starts (127.0.0.1 only, each stopped by its PID on exit). Sourced, not run.
#
# Settings (environment): CLIENTS="64 256" SECS=10 REPS=1, RESULTS_DIR (default
# $CARGO_TARGET_DIR/peers, i.e. target/peers), PEERS_DATA_DIR (default /var/tmp), QUIET_MAX=20
# QUIET_PCT=25 (before each run, wait up to QUIET_MAX s for the machine to be under QUIET_PCT %
# busy), LG_THREADS=1 (load generator threads).
set -euo pipefail

PEERS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$PEERS_DIR/../.." && pwd)"
# The `runner` field of every JSON line: which scripts produced it (`flashbench compare` shows
# it, and prefers these rows when another runner measured the same configuration).
RUNNER="flashledger repo bench/peers"
CLIENTS="${CLIENTS:-64 256}"
SECS="${SECS:-10}"
REPS="${REPS:-1}"
LG_THREADS="${LG_THREADS:-1}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
RESULTS_DIR="${RESULTS_DIR:-$CARGO_TARGET_DIR/peers}"
PEER_LOADGEN="$CARGO_TARGET_DIR/release/peer-loadgen"
mkdir -p "$RESULTS_DIR"

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# install_packages PACKAGE...: apt-get install (with sudo unless root).
install_packages() {
  command -v apt-get >/dev/null || { echo "need $* and there is no apt-get to install them" >&2; exit 1; }
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  log "installing $*"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null
}
# ensure_packages COMMAND:PACKAGE ...: installs the packages whose command is missing.
ensure_packages() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
  done
  [ ${#missing[@]} -eq 0 ] || install_packages "${missing[@]}"
}

build_peer_loadgen() {
  command -v cargo >/dev/null || { echo "cargo not found (a Rust toolchain is needed)" >&2; exit 1; }
  log "building peer-loadgen (target dir $CARGO_TARGET_DIR)"
  (cd "$REPO_DIR" && cargo build --release -q -p peer-loadgen)
}

# The servers this runner started, as PID:SIGNAL; each stopped by its PID with its signal, then
# SIGKILL if it is still there after 10 s.
STARTED=()
track_started() { # track_started PID [SIGNAL (default TERM)]
  STARTED+=("$1:${2:-TERM}")
}
stop_started() {
  local entry pid
  for entry in "${STARTED[@]}"; do
    pid=${entry%%:*}
    kill -0 "$pid" 2>/dev/null || continue
    kill -s "${entry##*:}" "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  STARTED=()
}

# The servers' data directories, under PEERS_DATA_DIR (default /var/tmp: on disk, unlike a
# tmpfs /tmp, where an fsync would cost nothing), removed on exit after the servers stopped.
PEERS_DATA_DIR="${PEERS_DATA_DIR:-/var/tmp}"
if [ "$(stat -f -c %T "$PEERS_DATA_DIR")" = tmpfs ]; then
  log "warning: $PEERS_DATA_DIR is a tmpfs: fsyncs there are free; set PEERS_DATA_DIR to a disk"
fi
SCRATCH_DIRS=()
new_scratch_dir() { # new_scratch_dir NAME: a fresh directory in $SCRATCH_DIR (not in a $(...)
  # subshell, which would forget it)
  SCRATCH_DIR="$(mktemp -d "$PEERS_DATA_DIR/flashledger-peers-$1.XXXXXX")"
  SCRATCH_DIRS+=("$SCRATCH_DIR")
}
cleanup() {
  stop_started
  local dir
  for dir in "${SCRATCH_DIRS[@]}"; do rm -rf "$dir"; done
  SCRATCH_DIRS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
require_free_ports() {
  local port
  for port in "$@"; do
    port_free "$port" || { echo "port $port on 127.0.0.1 is in use; set the runner's port variable" >&2; exit 1; }
  done
}
wait_port() { # wait_port PORT [SECS]: until something listens on 127.0.0.1:PORT
  local port=$1 secs=${2:-30}
  for _ in $(seq 1 $((secs * 10))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$port after ${secs}s" >&2
  return 1
}

# Busy percent of all cores over one second, from /proc/stat.
machine_busy_pct() {
  local a b
  read -r -a a < <(head -n 1 /proc/stat)
  sleep 1
  read -r -a b < <(head -n 1 /proc/stat)
  local total=0 idle i
  for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
  idle=$((b[4] - a[4] + b[5] - a[5]))
  echo $(((total - idle) * 100 / (total > 0 ? total : 1)))
}
# Waits (at most QUIET_MAX s) for the machine to be nearly idle: other work on a small shared
# machine disturbs a measurement less.
QUIET_MAX="${QUIET_MAX:-20}"
QUIET_PCT="${QUIET_PCT:-25}"
wait_quiet() {
  local start=$SECONDS busy
  while :; do
    busy=$(machine_busy_pct)
    [ "$busy" -lt "$QUIET_PCT" ] && return 0
    if [ $((SECONDS - start)) -ge "$QUIET_MAX" ]; then
      log "machine still ${busy}% busy after ${QUIET_MAX}s; measuring anyway"
      return 0
    fi
    sleep 1
  done
}

# One line per JSON result: configuration, clients, rate, p50, p99, the oversell check.
summarize() { # summarize FILE
  python3 - "$1" <<'EOF'
import json, sys
print("| system | configuration | clients | purchases/s | rejections/s | p50 ms | p99 ms | server CPU % | ok total | final stock | consistent | oversold |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
ms = lambda v: "-" if v is None else f"{v / 1000:.2f}"
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    print(f"| {r['system']} | {r['label']} | {r['clients']} | {r['purchases_per_s']:.0f} | {r.get('rejections_per_s', 0):.0f} | "
          f"{ms(r.get('p50_us'))} | {ms(r.get('p99_us'))} | {r.get('server_cpu_pct', '-')} | {r['ok_total']} | "
          f"{r['final_stock_sum']} | {str(r['consistent']).lower()} | {str(r['oversold']).lower()} |")
EOF
}
