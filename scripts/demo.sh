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

LEDGER="$ledger"
source scripts/lib/cluster.sh
trap cluster_stop EXIT INT TERM
cluster_start "$config" "$data_root"
"$ledger" status --config "$config"

echo "==> flash sale"
"$ledger" flash-sale --config "$config" "$@"

echo "==> final cluster status"
"$ledger" status --config "$config"
survivors=$(cluster_pids)
cluster_stop
for pid in $survivors; do
  if kill -0 "$pid" 2>/dev/null; then
    echo "error: node process $pid is still running" >&2
    exit 1
  fi
done
echo "==> cluster stopped; no process left behind"
