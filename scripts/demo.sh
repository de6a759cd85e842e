#!/usr/bin/env bash
# The README's "run it" command: builds flashledger, starts the 3-node cluster of cluster.toml as
# three processes, runs a flash sale (default: 100 000 purchase attempts for 10 000 units by 256
# concurrent buyers), prints the summary and the cross-replica check, then stops the cluster and
# leaves no process behind. Extra arguments go to `ledger flash-sale` (e.g. --attempts 20000).
set -euo pipefail
cd "$(dirname "$0")/.."

config="${FLASHLEDGER_CONFIG:-cluster.toml}"
data_root=".flashledger"
ledger="${CARGO_TARGET_DIR:-target}/release/ledger"

echo "==> building (release)"
cargo build --release -p flashledger-ledger --bin ledger

pids=()
stop_cluster() {
  if [ "${#pids[@]}" -gt 0 ]; then
    echo "==> stopping the cluster"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 1 50); do
      alive=0
      for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
      [ "$alive" = 0 ] && break
      sleep 0.2
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
  fi
}
trap stop_cluster EXIT INT TERM

node_ids=$(grep -E '^\s*id\s*=' "$config" | head -n "$(grep -c '^\[\[nodes\]\]' "$config")" | sed -E 's/[^0-9]//g')
for addr in $(grep -E '^\s*addr\s*=' "$config" | sed -E 's/.*"(.*)".*/\1/'); do
  port="${addr##*:}"
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "error: port $port is already in use (is another cluster running?)" >&2
    exit 1
  fi
done

echo "==> starting nodes $(echo $node_ids) from $config (fresh data in $data_root/)"
rm -rf "$data_root"
mkdir -p "$data_root"
for id in $node_ids; do
  RUST_LOG="${RUST_LOG:-info,openraft=warn}" "$ledger" serve --config "$config" --node "$id" \
    >"$data_root/node$id.log" 2>&1 &
  pids+=("$!")
done

echo "==> waiting for every shard to elect a leader"
for attempt in $(seq 1 100); do
  if "$ledger" status --config "$config" --json 2>/dev/null | python3 -c '
import json, sys
nodes = json.load(sys.stdin)["nodes"]
shards = [s for n in nodes for s in n.get("shards", [])]
sys.exit(0 if shards and all(n.get("shards") for n in nodes) and all(s["leader"] for s in shards) else 1)
'; then
    break
  fi
  if [ "$attempt" = 100 ]; then
    echo "error: no leader after 20 s; node logs are in $data_root/" >&2
    exit 1
  fi
  sleep 0.2
done
"$ledger" status --config "$config"

echo "==> flash sale"
"$ledger" flash-sale --config "$config" "$@"

echo "==> final cluster status"
"$ledger" status --config "$config"
stop_cluster
for id in $node_ids; do
  if pgrep -f "ledger serve --config $config --node $id" >/dev/null; then
    echo "error: node $id is still running" >&2
    exit 1
  fi
done
echo "==> cluster stopped; no process left behind"
