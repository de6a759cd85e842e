#!/usr/bin/env bash
# Backup under load: a 3-node cluster (plaintext, ports picked free, data in a temporary
# directory) is filled with ORDERS confirmed orders, then the same flash sale runs twice, once
# alone and once with `ledger backup` taken while it runs; prints the sale's figures for both, how
# long the backup took, its size, and the leaders' fork times (the only pause of writes, from
# the node logs). docs/operations.md, "Backup and restore" records a run.
#
#   scripts/bench-backup.sh                  # LEDGER=target/release/ledger ORDERS=50000
set -euo pipefail
cd "$(dirname "$0")/.."
LEDGER=${LEDGER:-target/release/ledger}
ORDERS=${ORDERS:-50000}
SALE_ATTEMPTS=${SALE_ATTEMPTS:-20000}
[ -x "$LEDGER" ] || { echo "error: $LEDGER not built (cargo build --release, or set LEDGER)" >&2; exit 1; }
root=$(mktemp -d)
source scripts/lib/cluster.sh
trap 'cluster_stop; rm -rf "$root"' EXIT

read -r -a ports <<<"$(python3 -c '
import socket
sockets = [socket.socket() for _ in range(3)]
for s in sockets: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))')"
config="$root/cluster.toml"
{
  printf '[security]\ninsecure = true\n'
  for id in 1 2 3; do
    printf '[[nodes]]\nid = %s\naddr = "127.0.0.1:%s"\ndata_dir = "%s/data/node%s"\n' \
      "$id" "${ports[$((id - 1))]}" "$root" "$id"
  done
  printf '[[shards]]\nid = 1\nend = "m"\nreplicas = [1, 2, 3]\n'
  printf '[[shards]]\nid = 2\nstart = "m"\nreplicas = [1, 2, 3]\n'
} >"$config"
cluster_start "$config" "$root/data"

echo "==> filling: $ORDERS orders"
"$LEDGER" flash-sale --config "$config" --sku fill --stock "$ORDERS" --attempts "$ORDERS" --buyers 64 | grep -Ev "^  node"
echo "==> a sale alone"
"$LEDGER" flash-sale --config "$config" --sku alone --stock 1000000 --attempts "$SALE_ATTEMPTS" --buyers 64 | grep -Ev "^  node"
echo "==> the same sale with a backup taken while it runs"
"$LEDGER" flash-sale --config "$config" --sku during --stock 1000000 --attempts "$SALE_ATTEMPTS" --buyers 64 \
  >"$root/during.txt" &
sale=$!
sleep 2
started=$(date +%s%N)
"$LEDGER" backup --config "$config" --out "$root/backup"
echo "backup: $(( ($(date +%s%N) - started) / 1000000 )) ms, $(du -sh "$root/backup" | cut -f1)"
wait "$sale"
grep -Ev "^  node" "$root/during.txt"
echo "==> leaders' forks (fork_us) and backup times (total_ms) from the node logs"
cat "$root"/data/node*.log | sed -e 's/\x1b\[[0-9;]*m//g' | grep 'backup image taken' || true
