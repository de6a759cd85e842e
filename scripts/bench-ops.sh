#!/usr/bin/env bash
# The operational figures of the performance issue, on the 3-node cluster of cluster.toml:
#   1. the Black Friday mix at 1/SCALE (default 1/100) end to end, and the full-scale estimate,
#      its product-page reads served from the client's Watch-fed stock cache (CACHE=0: from
#      stale reads, as before the cache), with the caches' lag behind the leader's commit;
#   2. RSS per node after ORDERS confirmed orders (default 5 000 000), and how long a node
#      holding them takes to restart (SIGKILL, start, caught up with the leader);
#   3. failover: the leader of shard 1 SIGKILLed under load; the outage is the longest gap
#      between successful writes from the kill until 8 s after it; KILLS times (default 5),
#      median. The killed node is restarted and caught up before the next kill.
#   4. snapshots: what snapshots of a big state cost the write path. On the state of part 2
#      (loaded first if part 2 did not run), the hot-SKU service benchmark (CLIENTS callers,
#      SNAPSHOT_SECS s) with snapshots off, then forced every SNAPSHOT_EVERY_OPS operations: the
#      throughput ratio, the worst write latency of each run, and the snapshots built meanwhile.
#   5. cache-lag: the hot-SKU service benchmark (CLIENTS callers, 10 s) with a stock cache of the
#      hot SKU's shard; how far the cache trails the leader's commit, p50/p99 (docs/benchmarks.md).
#   6. degradation: the process test that takes one shard's quorum away (ledger/tests/
#      degradation.rs), printing what writes, the cache, stale reads and the other shard did.
#   7. stability: whether the election timeouts are too short for this machine. The hot-SKU
#      benchmark at full load (CLIENTS callers, independent then service mode, STABILITY_SECS s
#      each, every append fdatasynced) on a fresh cluster, and every shard's term before and
#      after: a term that moved is an election no node failure called for.
#   8. reshape: scripts/reshape-demo.sh on its own 5-node cluster (other ports, real PostgreSQL):
#      nodes 4 and 5 added, a replica of each shard moved onto them, a leadership handed over,
#      node 1 drained and removed, under the hot and zipf load; how long each step took and the
#      throughput dip during it, with the end-state checks (docs/benchmarks.md).
# PARTS="black-friday orders failover snapshots cache-lag degradation stability reshape" selects parts
# (default: the first three).
# Results (JSON lines, Markdown, PNG, summary.md) go to target/bench-ops/<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE="${SCALE:-100}"
ORDERS="${ORDERS:-5000000}"
KILLS="${KILLS:-5}"
SNAPSHOT_SECS="${SNAPSHOT_SECS:-15}"
SNAPSHOT_EVERY_OPS="${SNAPSHOT_EVERY_OPS:-100000}"
STABILITY_SECS="${STABILITY_SECS:-30}"
PARTS="${PARTS:-black-friday orders failover}"
CLIENTS="${CLIENTS:-256}"
CACHE="${CACHE:-1}"
cache_flag=""
if [[ "$CACHE" == 1 ]]; then cache_flag="--cache"; fi
target="${CARGO_TARGET_DIR:-target}"
results="$target/bench-ops/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$results"
results="$(cd "$results" && pwd)"
summary="$results/summary.md"

if [[ " $PARTS " == *" degradation "* ]]; then
echo "==> 6. degradation: a shard loses its quorum (5 node processes, ledger/tests/degradation.rs)"
cargo test -p flashledger-ledger --test degradation -- --nocapture --test-threads 1 2>&1 \
  | grep -E "^(write to the shard|purchase on the healthy|test |test result)" | tee -a "$summary"
if [[ "$PARTS" == "degradation" ]]; then exit 0; fi
fi

if [[ " $PARTS " == *" reshape "* ]]; then
echo "==> 8. reshape: add, move, transfer, drain and remove under load (scripts/reshape-demo.sh)"
RESULTS="$results/reshape" scripts/reshape-demo.sh
{
  echo
  echo "Reshaping under load (scripts/reshape-demo.sh; $results/reshape):"
  cat "$results/reshape/summary.md"
} >>"$summary"
if [[ "$PARTS" == "reshape" ]]; then cat "$summary"; exit 0; fi
fi

echo "==> building flashledger and flashbench (release)"
cargo build --release -p flashledger-ledger --bin ledger && cargo build --release -p flashbench --bin flashbench
LEDGER="$target/release/ledger"
flashbench="$target/release/flashbench"
source scripts/lib/cluster.sh
trap cluster_stop EXIT INT TERM
cluster_start cluster.toml .flashledger

# `ledger status` exits 2 while some node does not answer; the JSON says which, and the callers
# read it (under pipefail the exit status would fail their pipeline).
status_json() { "$LEDGER" status --config cluster.toml --json 2>/dev/null || true; }
# The node leading shard 1; retried for up to 30 s (a node busy building a snapshot of millions
# of orders can be slow to answer Status, and an election may be under way).
leader_of_shard1() {
  local attempt
  for attempt in $(seq 1 60); do
    if status_json | python3 -c '
import json, sys
for node in json.load(sys.stdin)["nodes"]:
    for shard in node.get("shards", []):
        if shard["shard_id"] == 1 and shard["role"] == "leader":
            print(node["node_id"]); sys.exit(0)
sys.exit(1)'; then
      return 0
    fi
    sleep 0.5
  done
  echo "error: shard 1 has no leader that answers Status" >&2
  return 1
}

# Blocks until node $1 answers Status and has applied, in every shard, what the shard's leader
# had logged when this was called (a fixed target: under load the leader's log keeps growing).
wait_caught_up() {
  python3 - "$LEDGER" "$1" <<'PY'
import json, subprocess, sys, time
ledger, victim = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 600
target = None
while time.time() < deadline:
    out = subprocess.run([ledger, "status", "--config", "cluster.toml", "--json"], capture_output=True, text=True)
    try:
        nodes = json.loads(out.stdout)["nodes"]
    except Exception:
        time.sleep(0.05); continue
    leaders = {s["shard_id"]: s["last_log_index"] for n in nodes for s in n.get("shards", []) if s["role"] == "leader"}
    if target is None or any(shard not in target for shard in leaders):
        target = {**leaders, **(target or {})}
    mine = next((n for n in nodes if n.get("node_id") == victim and "shards" in n), None)
    if mine and all(s["shard_id"] in target and s["applied_index"] >= target[s["shard_id"]] for s in mine["shards"]):
        sys.exit(0)
    time.sleep(0.05)
sys.exit("the restarted node did not catch up within 600 s")
PY
}

if [[ " $PARTS " == *" black-friday "* ]]; then
echo "==> 1. Black Friday at 1/$SCALE"
"$flashbench" run --workload black-friday --scale "$SCALE" --mode service --services 2 --clients "$CLIENTS" $cache_flag \
  --label "black-friday 1/$SCALE${cache_flag:+ cached}" --no-progress --out-dir "$results" --jsonl "$results/ops.jsonl" | tail -n 1
python3 - "$results/ops.jsonl" >>"$summary" <<'PY'
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])][-1]
bf = r["black_friday"]
plan = bf["plan"]
print(f"Black Friday at 1/{bf['scale']}: {plan['orders']} orders + {plan['reads']} reads by {plan['users']} users, "
      f"{plan['burst_orders']} orders as the opening burst: {bf['elapsed_secs']:.1f} s "
      f"({r['attempts_per_s']:.0f} ops/s, p50 {r['p50_us']/1000:.2f} ms, p99 {r['p99_us']/1000:.2f} ms, "
      f"{r['errors']} errors); the full-scale mix would take {bf['full_scale_estimate_secs']/3600:.2f} h at this rate.")
if "cache" in r:
    c = r["cache"]
    print(f"- product-page reads from the stock cache: {c['reads_from_cache']}; its lag behind the leader's commit "
          f"p50 {c['lag_p50_ms']:.0f} ms, p99 {c['lag_p99_ms']:.0f} ms, max {c['lag_max_ms']:.0f} ms; {c['reconnects']} reconnects")
PY
fi

if [[ " $PARTS " == *" cache-lag "* ]]; then
echo "==> 5. stock cache lag under the hot benchmark"
"$flashbench" run --workload hot --mode service --services 2 --clients "$CLIENTS" --secs 10 --cache \
  --label "cache lag hot" --no-progress --out-dir "$results" --jsonl "$results/cache.jsonl" | tail -n 1
python3 - "$results/cache.jsonl" >>"$summary" <<'PY'
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])][-1]
c = r["cache"]
print(f"\nStock cache under the hot benchmark ({r['purchases_per_s']:.0f} purchases/s): lag behind the leader's commit "
      f"p50 {c['lag_p50_ms']:.0f} ms, p99 {c['lag_p99_ms']:.0f} ms, max {c['lag_max_ms']:.0f} ms "
      f"({c['lag_samples']} samples, every 5 ms); {c['reconnects']} reconnects")
PY
fi

if [[ " $PARTS " == *" orders "* ]]; then
echo "==> 2. $ORDERS orders, then RSS per node and a restart"
"$flashbench" run --workload zipf --skus 1000 --ops "$ORDERS" --mode service --services 2 --clients "$CLIENTS" \
  --label "load $ORDERS orders" --no-progress --out-dir "$results" --jsonl "$results/ops.jsonl" | tail -n 1
sleep 2
{
  echo
  echo "RSS after $ORDERS orders (zipf over 1 000 SKUs, all confirmed):"
  for id in 1 2 3; do
    echo "- node $id: $(awk '/VmRSS/ { printf "%.0f MiB", $2 / 1024 } /VmHWM/ { peak = $2 } END { printf " (peak %.0f MiB)", peak / 1024 }' "/proc/$(cluster_pid_of "$id")/status")"
  done
  echo "- data directories: $(du -sh .flashledger | cut -f1)"
} >>"$summary"
leader=$(leader_of_shard1)
victim=$(( leader % 3 + 1 ))
cluster_kill_node "$victim"
started=$(date +%s%N)
cluster_start_node "$victim"
# Restarted = the node answers Status and every shard it hosts has applied what the leader had.
wait_caught_up "$victim"
restart_ms=$(( ($(date +%s%N) - started) / 1000000 ))
echo "- restart of node $victim (SIGKILL, start, caught up with every leader): ${restart_ms} ms" >>"$summary"
fi

if [[ " $PARTS " == *" snapshots "* ]]; then
echo "==> 4. snapshots of a big state: service $CLIENTS callers, snapshots off, then every $SNAPSHOT_EVERY_OPS operations"
if [[ " $PARTS " != *" orders "* ]]; then
  "$flashbench" run --workload zipf --skus 1000 --ops "$ORDERS" --mode service --services 2 --clients "$CLIENTS" \
    --label "load $ORDERS orders" --no-progress --out-dir "$results" --jsonl "$results/ops.jsonl" | tail -n 1
fi
# Restarts every node on a copy of cluster.toml with the snapshot interval `$2` operations (no
# growth rule), then runs the benchmark labelled `$1`; counts the snapshots built meanwhile.
snapshot_run() {
  local label=$1 every=$2 config=".flashledger/cluster-snapshots-$1.toml" id before after
  sed -E "s/^snapshot_ops_since_last = .*/snapshot_ops_since_last = $every/; s/^snapshot_growth_percent = .*/snapshot_growth_percent = 0/" \
    cluster.toml >"$config"
  for id in 1 2 3; do cluster_kill_node "$id"; done
  cluster_config="$config"
  for id in 1 2 3; do cluster_start_node "$id"; done
  cluster_wait_leaders
  for id in 1 2 3; do wait_caught_up "$id"; done
  before=$(cat .flashledger/node*.log | grep -c "built snapshot" || true)
  "$flashbench" run --workload hot --mode service --services 2 --clients "$CLIENTS" --secs "$SNAPSHOT_SECS" \
    --label "snapshots $label" --no-progress --out-dir "$results" --jsonl "$results/snapshots.jsonl" | tail -n 1
  after=$(cat .flashledger/node*.log | grep -c "built snapshot" || true)
  echo "$label $((after - before))" >>"$results/snapshots-built.txt"
}
snapshot_run off 1000000000000
snapshot_run forced "$SNAPSHOT_EVERY_OPS"
cluster_config=cluster.toml
python3 - "$results/snapshots.jsonl" "$results/snapshots-built.txt" >>"$summary" <<'PY'
import json, sys
runs = {json.loads(l)["label"].split()[-1]: json.loads(l) for l in open(sys.argv[1]) if l.strip()}
built = dict(l.split() for l in open(sys.argv[2]) if l.strip())
off, forced = runs["off"], runs["forced"]
print(f"\nSnapshots of the state above, hot SKU service {off['clients']} callers, {off['secs']:.0f} s each:")
for name, run in (("off", off), ("forced", forced)):
    print(f"- snapshots {name}: {run['purchases_per_s']:.0f} purchases/s, p99 {run['p99_us']/1000:.1f} ms, "
          f"p99.9 {run['p999_us']/1000:.1f} ms, worst {run['max_us']/1000:.1f} ms; {built.get(name, '0')} snapshots built")
print(f"- forced / off: {forced['purchases_per_s'] / off['purchases_per_s']:.2f}")
PY
fi

# Every shard's term as "shard:term" words, from the first node that answers for it.
shard_terms() {
  status_json | python3 -c '
import json, sys
terms = {}
for node in json.load(sys.stdin)["nodes"]:
    for shard in node.get("shards", []):
        terms.setdefault(shard["shard_id"], max(shard["term"], terms.get(shard["shard_id"], 0)))
print(" ".join(f"{s}:{t}" for s, t in sorted(terms.items())))'
}

if [[ " $PARTS " == *" stability "* ]]; then
echo "==> 7. stability: hot SKU at full load, $CLIENTS callers, terms before and after"
for mode in independent service; do
  before=$(shard_terms)
  "$flashbench" run --workload hot --mode "$mode" --services 2 --clients "$CLIENTS" --secs "$STABILITY_SECS" \
    --label "stability $mode" --no-progress --out-dir "$results" --jsonl "$results/stability.jsonl" | tail -n 1
  after=$(shard_terms)
  echo "$mode|$before|$after" >>"$results/terms.txt"
done
python3 - "$results/stability.jsonl" "$results/terms.txt" >>"$summary" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
terms = [l.strip().split("|") for l in open(sys.argv[2]) if l.strip()]
print(f"\nStability (hot SKU, {runs[0]['clients']} callers, {runs[0]['secs']:.0f} s per mode; each shard's term before -> after):")
for run, (mode, before, after) in zip(runs, terms):
    pairs = zip(before.split(), after.split())
    moved = [f"shard {b.split(':')[0]}: {b.split(':')[1]} -> {a.split(':')[1]}" for b, a in pairs if b != a]
    print(f"- {mode}: {run['attempts_per_s']:.0f} ops/s, p99 {run['p99_us']/1000:.1f} ms, max {run['max_us']/1000:.1f} ms; "
          + (("elections: " + ", ".join(moved)) if moved else f"no election (terms {after})"))
PY
fi

if [[ " $PARTS " == *" failover "* ]]; then
echo "==> 3. failover: SIGKILL the leader of shard 1 under load, $KILLS times"
: >"$results/kills.txt"
window=$(( KILLS * 10 + 10 ))
"$flashbench" run --workload hot --mode service --services 2 --clients 64 --secs "$window" --warmup-secs 0 \
  --label "failover load" --no-progress --out-dir "$results" --success-log "$results/successes.txt" \
  >"$results/failover-load.json" &
load=$!
sleep 3
for kill in $(seq 1 "$KILLS"); do
  leader=$(leader_of_shard1)
  date +%s%3N >>"$results/kills.txt"
  cluster_kill_node "$leader"
  sleep 3
  cluster_start_node "$leader"
  wait_caught_up "$leader"
  sleep 2
done
wait "$load"
python3 - "$results/kills.txt" "$results/successes.txt" >>"$summary" <<'PY'
import bisect, statistics, sys
kills = [int(l) for l in open(sys.argv[1]) if l.strip()]
successes = sorted(int(l) for l in open(sys.argv[2]) if l.strip())
gaps = []
for n, k in enumerate(kills):
    # The outage: the longest gap between successful writes from the kill to 8 s after it, or to
    # the next kill if that comes first (the next outage is not this one's).
    end = min([k + 8000] + kills[n + 1:n + 2])
    lo, hi = bisect.bisect_right(successes, k), bisect.bisect_right(successes, end)
    times = [k] + successes[lo:hi] + [min(successes[hi], end) if hi < len(successes) else end]
    gaps.append(max(b - a for a, b in zip(times, times[1:])))
print(f"\nFailover (leader of shard 1 SIGKILLed under load; the longest gap between successful writes in the 8 s after), {len(gaps)} kills: "
      + ", ".join(f"{g:.0f} ms" for g in gaps) + f"; median {statistics.median(gaps):.0f} ms, max {max(gaps):.0f} ms")
PY
fi
cluster_stop
echo
cat "$summary"
echo "results in $results"
