#!/usr/bin/env bash
# A real Prometheus against a real 3-node cluster: the alert rules and the Grafana dashboard in
# deploy/ use only metrics the nodes export, and those metrics move under load.
#
#   scripts/prometheus-check.sh
#
#   1. Installs Debian's `prometheus` (which brings `promtool`) with apt-get when missing. When it
#      cannot: skips, loudly (exit 0); under CI=true that is an error (exit 1).
#   2. `promtool check rules` and `promtool test rules` on deploy/prometheus/; every expression of
#      deploy/grafana/flashledger-dashboard.json must parse (checked as recording rules).
#   3. Starts 3 nodes (debug build, plaintext, own ports and data in a temp dir) with a tight
#      admission budget, a buyer rate limit and small snapshot intervals, so that shedding,
#      rate limiting and snapshots happen; starts Prometheus scraping their admin ports every
#      second with the rules loaded.
#   4. Every metric named by the rules or the dashboard must have a series; flashbench runs the
#      hot workload; then every counter/histogram used must have grown and every log index
#      advanced; a shard leader is SIGKILLed: `up` of its node drops to 0 and leader changes and
#      terms grow. The rules must have loaded without errors.
# Leaves no process behind. LEDGER / FLASHBENCH point at prebuilt binaries to skip the build.
set -euo pipefail
cd "$(dirname "$0")/.."

skip_or_fail() {
  if [ "${CI:-}" = true ]; then
    echo "prometheus-check: ERROR: $* (CI must not skip this check)" >&2
    exit 1
  fi
  echo "prometheus-check: WARNING: SKIPPED: $*" >&2
  exit 0
}

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  command -v apt-get >/dev/null || skip_or_fail "prometheus is not installed and there is no apt-get"
  sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo)
  echo "==> installing prometheus (Debian package; brings promtool)"
  { "${sudo[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq prometheus >/dev/null; } ||
    skip_or_fail "apt-get could not install prometheus"
  # The package starts a service where an init system runs one; this check runs its own.
fi

rules=deploy/prometheus/flashledger-rules.yml
rule_tests=deploy/prometheus/flashledger-rules.test.yml
dashboard=deploy/grafana/flashledger-dashboard.json
work=$(mktemp -d /tmp/flashledger-promcheck.XXXXXX)
prom_pid=""

echo "==> promtool check rules / test rules"
promtool check rules "$rules"
promtool test rules "$rule_tests"

echo "==> the dashboard's expressions parse"
python3 - "$dashboard" "$work/dashboard-exprs.yml" <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
if not exprs:
    sys.exit("the dashboard has no expressions")
with open(sys.argv[2], "w") as out:
    out.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, expr in enumerate(exprs):
        out.write(f"      - record: dashboard_expr_{i}\n        expr: {json.dumps(expr)}\n")
print(f"{len(exprs)} expressions in {len(dash['panels'])} panels")
PY
promtool check rules "$work/dashboard-exprs.yml" >/dev/null

# The metric names the rules and the dashboard use (identifiers of our metric families).
python3 - "$rules" "$dashboard" >"$work/used-metrics" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
exprs = [line for line in text.splitlines() if not line.strip().startswith("#")]
dash = json.load(open(sys.argv[2]))
exprs += [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
names = set()
for expr in exprs:
    names.update(re.findall(r"\b((?:flashledger|process)_[a-zA-Z0-9_]+)\b", expr))
    if re.search(r"\bup\{", expr):
        names.add("up")
names -= {"flashledger_shard", "flashledger_node"}  # prose in annotations, not metrics
print("\n".join(sorted(names)))
PY
echo "    $(wc -l <"$work/used-metrics") metric names used by the rules and the dashboard"

echo "==> building ledger and flashbench (debug)"
if [ -z "${LEDGER:-}" ] || [ -z "${FLASHBENCH:-}" ]; then
  cargo build -q -p flashledger-ledger --bin ledger -p flashbench --bin flashbench
fi
LEDGER="${LEDGER:-${CARGO_TARGET_DIR:-target}/debug/ledger}"
FLASHBENCH="${FLASHBENCH:-${CARGO_TARGET_DIR:-target}/debug/flashbench}"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

config="$work/cluster.toml"
seeds=()
admin_targets=()
{
  echo '[cluster]'
  echo 'name = "flashledger-promcheck"'
  for id in 1 2 3; do
    port=$(free_port); admin=$(free_port)
    seeds+=("127.0.0.1:$port"); admin_targets+=("127.0.0.1:$admin")
    printf '\n[[nodes]]\nid = %s\naddr = "127.0.0.1:%s"\nadmin_addr = "127.0.0.1:%s"\ndata_dir = "%s/data/node%s"\n' \
      "$id" "$port" "$admin" "$work" "$id"
  done
  cat <<'TOML'

[[shards]]
id = 1
start = ""
end = "m"
replicas = [1, 2, 3]

[[shards]]
id = 2
start = "m"
end = ""
replicas = [1, 2, 3]

[raft]
snapshot_ops_since_last = 1000
snapshot_growth_percent = 0

# Tight on purpose: the load below must be shed, a buyer rate limited, snapshots taken.
[admission]
node_ops_inflight_max = 64
shard_ops_inflight_max = 48
buyer_ops_per_s = 1
buyer_burst_ops = 2

[security]
insecure = true
TOML
} >"$config"

cleanup() {
  [ -n "$prom_pid" ] && kill -TERM "$prom_pid" 2>/dev/null || true
  cluster_stop
  [ -n "$prom_pid" ] && wait "$prom_pid" 2>/dev/null || true
  rm -rf "$work"
}
source scripts/lib/cluster.sh
trap cleanup EXIT INT TERM
cluster_start "$config" "$work/data"

prom_port=$(free_port)
{
  echo 'global:'
  echo '  scrape_interval: 1s'
  echo '  evaluation_interval: 1s'
  echo 'rule_files:'
  echo "  - $PWD/$rules"
  echo 'scrape_configs:'
  echo '  - job_name: flashledger'
  echo '    static_configs:'
  echo "      - targets: [$(printf '"%s",' "${admin_targets[@]}" | sed 's/,$//')]"
} >"$work/prometheus.yml"
echo "==> starting prometheus on 127.0.0.1:$prom_port"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$work/prometheus.log" 2>&1 &
prom_pid=$!

# query EXPR -> one number (the sum over the result vector; empty vector: nothing printed)
query() {
  curl -sf --get "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=$1" | python3 -c '
import json, sys
result = json.load(sys.stdin)["data"]["result"]
if result:
    print(sum(float(r["value"][1]) for r in result))'
}
wait_for() { # DESCRIPTION EXPR: until EXPR (a PromQL comparison) has a result, at most 30 s
  for _ in $(seq 1 60); do
    [ -n "$(query "$2" 2>/dev/null)" ] && return 0
    sleep 0.5
  done
  echo "prometheus-check: FAILED: $1 (no result for: $2)" >&2
  tail -n 20 "$work/prometheus.log" >&2
  return 1
}

wait_for "prometheus scrapes all 3 nodes" 'count(up{job="flashledger"} == 1) == 3'
wait_for "every shard has a leader in the metrics" 'count(max by (shard) (flashledger_shard_is_leader) == 1) == 2'

failures=0
fail() { echo "prometheus-check: FAILED: $*" >&2; failures=$((failures + 1)); }

echo "==> every metric the rules and the dashboard use has a series"
while read -r name; do
  [ -n "$(query "count({__name__=\"$name\"})")" ] || fail "no series of $name"
done <"$work/used-metrics"

# Counters and histograms must grow under load, log indexes must advance.
moving=$(grep -E '_(total|bucket|count|sum)$|_index$' "$work/used-metrics" | grep -v leader_changes_total || true)
declare -A before
for name in $moving; do before[$name]=$(query "sum({__name__=\"$name\"})"); done

echo "==> load: flashbench hot workload, 256 callers, 8 s, against a budget of 64 ops per node"
"$FLASHBENCH" run --seeds "$(IFS=,; echo "${seeds[*]}")" --workload hot --clients 256 --secs 8 \
  --warmup-secs 1 --no-progress --out-dir "$work/flashbench" | tail -n 15
echo "==> one buyer tries 6 purchases in a row against a buyer limit of 1/s (burst 2)"
"$LEDGER" put-sku promcheck-limited --total 100 --config "$config" >/dev/null
for attempt in 1 2 3 4 5 6; do
  "$LEDGER" purchase promcheck-limited 1 --user promcheck-buyer --order "promcheck-$attempt" \
    --config "$config" 2>&1 | tail -n 1 | sed 's/^/    /' || true
done
sleep 3 # two scrapes after the load

echo "==> counters and histograms grew, log indexes advanced"
for name in $moving; do
  after=$(query "sum({__name__=\"$name\"})")
  if python3 -c 'import sys; sys.exit(0 if float(sys.argv[2] or 0) > float(sys.argv[1] or 0) else 1)' "${before[$name]}" "$after"; then
    printf '    %-60s %s -> %s\n' "$name" "${before[$name]}" "$after"
  else
    fail "$name did not move under load (${before[$name]} -> $after)"
  fi
done

echo "==> a shard leader is SIGKILLed: its node goes down, the others elect a new leader"
term_before=$(query 'max(flashledger_shard_term{shard="1"})')
leader=$(query 'max(flashledger_shard_leader_id{shard="1"} * on (instance, shard) flashledger_shard_is_leader{shard="1"})')
leader=${leader%.*}
# The survivors' counters: the dead node's series go stale, so a sum over every instance can
# shrink (the placement scheduler hands leaderships around, so the dead node counted many).
leader_instance=$(curl -sf --get "http://127.0.0.1:$prom_port/api/v1/query" \
  --data-urlencode 'query=flashledger_shard_is_leader{shard="1"} == 1' | python3 -c '
import json, sys
result = json.load(sys.stdin)["data"]["result"]
print(result[0]["metric"]["instance"] if result else "")')
survivors="flashledger_shard_leader_changes_total{instance!=\"$leader_instance\"}"
changes_before=$(query "sum($survivors)")
echo "    shard 1's leader is node $leader (term $term_before)"
cluster_kill_node "$leader"
wait_for "prometheus sees node $leader down" 'count(up{job="flashledger"} == 0) == 1' || failures=$((failures + 1))
wait_for "shard 1 has a new leader" "max(flashledger_shard_is_leader{shard=\"1\"}) == 1 and max(flashledger_shard_term{shard=\"1\"}) > $term_before" ||
  failures=$((failures + 1))
sleep 2
changes_after=$(query "sum($survivors)")
python3 -c 'import sys; sys.exit(0 if float(sys.argv[2]) > float(sys.argv[1]) else 1)' "$changes_before" "$changes_after" ||
  fail "flashledger_shard_leader_changes_total did not grow after a leader died ($changes_before -> $changes_after)"
echo "    leader changes seen by the survivors: $changes_before -> $changes_after"

echo "==> the rules loaded and evaluate without errors"
curl -sf "http://127.0.0.1:$prom_port/api/v1/rules" | python3 -c '
import json, sys
groups = json.load(sys.stdin)["data"]["groups"]
rules = [r for g in groups for r in g["rules"]]
bad = [r["name"] for r in rules if r.get("health") != "ok"]
print(f"    {len(rules)} rules loaded")
sys.exit(f"rules with errors: {bad}" if bad or not rules else 0)' || fail "the alert rules did not load cleanly"

if [ "$failures" -gt 0 ]; then
  echo "prometheus-check: $failures check(s) failed; node logs: $work/data (kept)" >&2
  trap - EXIT; cluster_stop; kill "$prom_pid" 2>/dev/null || true
  exit 1
fi
echo "==> prometheus-check passed"
