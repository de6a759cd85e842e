#!/usr/bin/env bash
# flashledger and the systems a shop would use instead, one after another on this machine, with
# the same client counts, then one table: decisions/s, p50, p99 and flashledger's ratio to each.
#
#   scripts/bench-vs-peers.sh                 # CLIENTS="64 256" SECS=10 REPS=1
#   PEERS="redis" CLIENTS=64 scripts/bench-vs-peers.sh
#
# flashledger: the 3 nodes of cluster.toml (each append fdatasynced, a majority before an
# answer), one hot SKU whose stock never runs out, then a sold-out storm (stock 0), in two
# client modes: independent buyers (one connection each, one op per RPC) and the realistic
# deployment (2 service processes' worth of clients, coalescing their callers into Batch RPCs).
# Peers: the project's own runners, bench/peers/{redis,postgres,etcd}.sh (each installs what it
# lacks with apt-get, starts its own throwaway servers on 127.0.0.1 on other ports than a system
# Redis or PostgreSQL, and stops them by PID; Redis also answers the same sold-out storm).
# PEERS_DIR=../shared/bench/peers runs the team's earlier runners instead, as a cross-check: their
# lines are tagged with that directory as `runner`, and Redis's sold-out storm goes through their
# load generator. The table says which runner produced each row.
# flashledger runs plaintext without authentication, as the peers do (a copy of cluster.toml
# with `insecure = true`); BENCH_TLS=1 runs cluster.toml as shipped (mutual TLS, tokens) and
# tags flashledger's rows " tls".
# Results: target/bench-vs-peers/<time>/ (JSON lines, per-run Markdown + PNG, table.md).
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS="${CLIENTS:-64 256}"
SECS="${SECS:-10}"
REPS="${REPS:-1}"
PEERS="${PEERS:-redis postgres etcd}"
own_peers_dir="$(pwd)/bench/peers"
PEERS_DIR="$(cd "${PEERS_DIR:-bench/peers}" && pwd)"
target="${CARGO_TARGET_DIR:-target}"
results="$target/bench-vs-peers/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$results/peers"
results="$(cd "$results" && pwd)"

echo "==> building flashledger and flashbench (release)"
cargo build --release -p flashledger-ledger --bin ledger && cargo build --release -p flashbench --bin flashbench
if [ "$PEERS_DIR" = "$own_peers_dir" ]; then
  cargo build --release -p peer-loadgen
fi
LEDGER="$target/release/ledger"
flashbench="$target/release/flashbench"

source scripts/lib/cluster.sh
trap cluster_stop EXIT INT TERM

echo "==> flashledger"
if [ "${BENCH_TLS:-0}" = 1 ]; then
  bench_config=cluster.toml tls_tag=" tls"
else
  bench_config="$target/bench-cluster-insecure.toml" tls_tag=""
  cluster_insecure_copy cluster.toml "$bench_config"
fi
cluster_start "$bench_config" .flashledger
bench() { # bench LABEL CLIENTS flashbench-args...
  local label="$1$tls_tag" clients=$2
  shift 2
  for rep in $(seq 1 "$REPS"); do
    "$flashbench" run --clients "$clients" --secs "$SECS" --label "$label" --no-progress \
      --out-dir "$results" --jsonl "$results/flashledger.jsonl" "$@"
  done
}
for c in $CLIENTS; do
  bench "hot independent" "$c" --workload hot --mode independent
  bench "hot service" "$c" --workload hot --mode service --services 2
  bench "hot independent sold-out" "$c" --workload hot --mode independent --sold-out
  bench "hot service sold-out" "$c" --workload hot --mode service --services 2 --sold-out
done
cluster_stop

for peer in $PEERS; do
  echo "==> peer: $peer"
  RESULTS_DIR="$results/peers" REPS="$REPS" SECS="$SECS" CLIENTS="$CLIENTS" SKUS_LIST=1 \
    bash "$PEERS_DIR/$peer.sh"
done

# The earlier runners measure no sold-out storm: Redis answers it through their load generator.
if [ "$PEERS_DIR" != "$own_peers_dir" ] && [[ " $PEERS " == *" redis "* ]]; then
  echo "==> peer: redis (no AOF) answering a sold-out storm"
  loadgen="${PEERS_TARGET_DIR:-/tmp/peers-target}/release/loadgen"
  port=6391
  redis_dir="$(mktemp -d)"
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$redis_dir" \
    --daemonize no --logfile "$redis_dir/redis.log" &
  redis_pid=$!
  for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  for c in $CLIENTS; do
    "$loadgen" redis --addr "127.0.0.1:$port" --clients "$c" --skus 1 --stock 0 --secs "$SECS" \
      --label "noaof sold-out" | tee -a "$results/peers/redis-sold-out.jsonl"
  done
  kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true
  rm -rf "$redis_dir"
fi

# Lines from another runner directory carry no `runner`: name it by its path beside the repo.
if [ "$PEERS_DIR" != "$own_peers_dir" ]; then
  runner="$(realpath --relative-to="$(dirname "$(pwd)")" "$PEERS_DIR")"
  for file in "$results"/peers/*.jsonl; do
    sed -i -E '/"runner":/!s|^\{|{"runner":"'"$runner"'",|' "$file"
  done
fi

echo "==> table"
"$flashbench" compare "$results/flashledger.jsonl" "$results"/peers/*.jsonl | tee "$results/table.md"
echo "results in $results"
