# Starting and stopping a local flashledger cluster (the nodes of a cluster.toml as processes on
# this machine). Sourced by scripts/demo.sh and scripts/bench-vs-peers.sh; not run on its own.
#
#   cluster_start CONFIG DATA_ROOT   # fresh data, one `ledger serve` per node, waits for leaders
#   cluster_stop                     # SIGTERM, then SIGKILL after 10 s; leaves no process behind
#   cluster_pids                     # the node processes, one per line
#   cluster_insecure_copy CONFIG DEST  # CONFIG without TLS (insecure = true), for peer comparisons
#   cluster_kill_node ID / cluster_start_node ID   # SIGKILL one node / start it on its data
#
# Needs $LEDGER (the ledger binary). The caller sets `trap cluster_stop EXIT`.

cluster_node_pids=()
cluster_config=""
cluster_data_root=""

cluster_pids() {
  printf '%s\n' "${cluster_node_pids[@]}"
}

cluster_stop() {
  if [ "${#cluster_node_pids[@]}" -gt 0 ]; then
    echo "==> stopping the cluster"
    kill -TERM "${cluster_node_pids[@]}" 2>/dev/null || true
    for _ in $(seq 1 50); do
      local alive=0 pid
      for pid in "${cluster_node_pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
      [ "$alive" = 0 ] && break
      sleep 0.2
    done
    kill -KILL "${cluster_node_pids[@]}" 2>/dev/null || true
    wait "${cluster_node_pids[@]}" 2>/dev/null || true
    cluster_node_pids=()
  fi
}

# Exports FLASHLEDGER_TOKEN_FILE (the CLI's and flashbench's credential) and FLASHLEDGER_CA as the admin token scripts/certs.sh
# made next to the config's tokens file, unless the caller already chose a credential.
cluster_use_admin_token() {
  local tokens_file
  tokens_file=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb")).get("security", {}).get("tokens_file", ""))' "$1")
  if [ -n "$tokens_file" ] && [ -z "${FLASHLEDGER_TOKEN:-}${FLASHLEDGER_TOKEN_FILE:-}" ]; then
    export FLASHLEDGER_TOKEN_FILE="$(dirname "$tokens_file")/admin.token"
  fi
  # flashbench takes the CA from the environment (the CLI reads it from the config).
  local ca_file
  ca_file=$(python3 -c 'import sys, tomllib; s = tomllib.load(open(sys.argv[1], "rb")).get("security", {}); print("" if s.get("insecure") else s.get("ca_file", ""))' "$1")
  if [ -n "$ca_file" ] && [ -z "${FLASHLEDGER_CA:-}" ]; then
    export FLASHLEDGER_CA="$ca_file"
  fi
}

# Writes DEST: CONFIG with `[security] insecure = true` in place of its TLS material (for
# measuring against peers that run plaintext).
cluster_insecure_copy() {
  python3 - "$1" "$2" <<'PY'
import sys
lines, out, skipping = open(sys.argv[1]).read().splitlines(), ["[security]", "insecure = true", ""], False
for line in lines:
    stripped = line.strip()
    if stripped.startswith("["):
        skipping = stripped == "[security]"
    if skipping or stripped.split("=")[0].strip() in ("cert_file", "key_file"):
        continue
    out.append(line)
open(sys.argv[2], "w").write("\n".join(out) + "\n")
PY
}

# Blocks until every shard of the running cluster has a leader (at most 20 s).
cluster_wait_leaders() {
  local attempt
  for attempt in $(seq 1 100); do
    if "$LEDGER" status --config "$cluster_config" --json 2>/dev/null | python3 -c '
import json, sys
nodes = json.load(sys.stdin)["nodes"]
shards = [s for n in nodes for s in n.get("shards", [])]
sys.exit(0 if shards and all(n.get("shards") for n in nodes) and all(s["leader"] for s in shards) else 1)
'; then
      return 0
    fi
    sleep 0.2
  done
  echo "error: no leader after 20 s" >&2
  return 1
}

# The node process of node ID (nodes are started in config order, ids 1..N).
cluster_pid_of() {
  echo "${cluster_node_pids[$(($1 - 1))]}"
}

# Power-fails node ID (SIGKILL).
cluster_kill_node() {
  local pid
  pid=$(cluster_pid_of "$1")
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# Starts node ID again on its existing data.
cluster_start_node() {
  local id=$1
  RUST_LOG="${RUST_LOG:-info,openraft=warn}" "$LEDGER" serve --config "$cluster_config" --node "$id" \
    >>"$cluster_data_root/node$id.log" 2>&1 &
  cluster_node_pids[$((id - 1))]=$!
}

cluster_start() {
  local config="$1" data_root="$2" id addr port
  cluster_config="$config"
  cluster_data_root="$data_root"
  local node_ids
  node_ids=$(grep -E '^\s*id\s*=' "$config" | head -n "$(grep -c '^\[\[nodes\]\]' "$config")" | sed -E 's/[^0-9]//g')
  for addr in $(grep -E '^\s*addr\s*=' "$config" | sed -E 's/.*"(.*)".*/\1/'); do
    port="${addr##*:}"
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "error: port $port is already in use (is another cluster running?)" >&2
      return 1
    fi
  done
  echo "==> starting nodes $(echo $node_ids) from $config (fresh data in $data_root/)"
  # Fresh data, but TLS material (made once by scripts/certs.sh) stays.
  mkdir -p "$data_root"
  find "$data_root" -mindepth 1 -maxdepth 1 ! -name certs -exec rm -rf {} +
  scripts/certs.sh "$config"
  cluster_use_admin_token "$config"
  for id in $node_ids; do
    RUST_LOG="${RUST_LOG:-info,openraft=warn}" "$LEDGER" serve --config "$config" --node "$id" \
      >"$data_root/node$id.log" 2>&1 &
    cluster_node_pids+=("$!")
  done
  echo "==> waiting for every shard to elect a leader"
  cluster_wait_leaders || { echo "node logs are in $data_root/" >&2; return 1; }
}
