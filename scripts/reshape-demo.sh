#!/usr/bin/env bash
# Reshapes a live cluster of real processes under load, checks nothing was lost or doubled, and
# measures what each step cost (issue 15; docs/benchmarks.md, "Reshaping under load").
#
#   1. builds the release binaries; writes a config of 5 nodes on 127.0.0.1 (ports BASE_PORT+id)
#      whose shards live on nodes 1-3 only (4 and 5 are listed in [[nodes]], in no [[shards]]),
#      with TLS and tokens (scripts/certs.sh) and confirmed orders shipped to 2 fresh PostgreSQL
#      databases (scripts/pg-env.sh finds or starts a server); starts nodes 1-3;
#   2. runs flashbench's hot and zipf workloads against nodes 1-3 in the background for LOAD_SECS
#      (closed loop, CLIENTS callers each, stock that does not sell out); the first step comes
#      after WARM_SECS of it, so the replicas moved carry a few hundred thousand orders;
#   3. adds nodes 4 and 5 (`ledger node add`, then starts them), moves a replica of shard 1 from
#      node 2 to node 4 and one of shard 2 from node 3 to node 5 (`ledger shard move --wait`),
#      hands shard 1's leadership to node 4, splits shard 1 at "f" (`ledger shard split --wait`:
#      a new shard on the same nodes takes the SKUs from "f" to "m", among them a quarter of
#      the zipf SKUs), merges the new shard back into shard 1 (`ledger shard merge --wait`),
#      drains node 1 (`--wait`), removes it and stops it;
#      SETTLE_SECS of undisturbed load precede every step (the step's throughput baseline);
#   4. checks, once the load is over: flashbench's callers saw no error and no shed request; every
#      replica's invariant holds (available + reserved + sold == total, so sold <= total) and
#      `ledger get` agrees for the busiest SKUs; every shard's replicas (as the final map lists
#      them) report the same state digest at the same applied index; shipping lag is zero and
#      PostgreSQL holds exactly the orders flashbench saw confirmed, and per busiest SKU exactly
#      the ledger's `sold`; node 1 is out of the map and no step is left queued;
#   5. prints, per step: how long it took (the CLI's --json `done_after_s` for moves and the
#      drain) and the throughput of the seconds it ran against the SETTLE_SECS before it; then
#      when each queued step (learner added, old replica removed) completed, from the node logs.
# Exits non-zero on any failed check; every process it started is stopped on exit (trap).
#
#   scripts/reshape-demo.sh                      # LOAD_SECS=150 CLIENTS=64 WARM_SECS=30 SETTLE_SECS=8
#   LOAD_SECS=240 BASE_PORT=7500 scripts/reshape-demo.sh
#
# Results (config, node logs, flashbench JSON, steps.jsonl, summary.md) go to
# RESULTS (default target/reshape-demo/<time>/).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_PORT="${BASE_PORT:-7400}"
LOAD_SECS="${LOAD_SECS:-150}"
CLIENTS="${CLIENTS:-64}"
SETTLE_SECS="${SETTLE_SECS:-8}"
# Load before the first step, so the replicas moved carry a state of some size.
WARM_SECS="${WARM_SECS:-30}"
ZIPF_SKUS="${ZIPF_SKUS:-1000}"
# Units per SKU: more than the load can buy in LOAD_SECS, so nothing sells out.
STOCK="${STOCK:-100000000}"
STEP_TIMEOUT_S="${STEP_TIMEOUT_S:-300}"
target="${CARGO_TARGET_DIR:-target}"
results="${RESULTS:-$target/reshape-demo/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$results"
results="$(cd "$results" && pwd)"
data_root="$results/cluster"
config="$results/cluster.toml"
summary="$results/summary.md"
steps="$results/steps.jsonl"
: >"$steps"

echo "==> building flashledger and flashbench (release)"
cargo build --release -p flashledger-ledger -p flashbench
LEDGER="$target/release/ledger"
flashbench="$target/release/flashbench"

source scripts/pg-env.sh
if [ -z "${DATABASE_URL:-}" ]; then
  echo "error: no PostgreSQL: this demo checks shipping, it cannot run without one" >&2
  exit 1
fi
source scripts/lib/cluster.sh

addr_of() { echo "127.0.0.1:$((BASE_PORT + $1))"; }
seeds_of() { local id out=""; for id in "$@"; do out+="${out:+,}$(addr_of "$id")"; done; echo "$out"; }
now_ms() { date +%s%3N; }
fail() { echo "FAILED: $*" >&2; exit 1; }

load_pids=()
databases=()
database_urls=()
cleanup() {
  local status=$?
  trap - EXIT
  local pid
  for pid in "${load_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${load_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  cluster_stop
  local db
  for db in "${databases[@]}"; do
    psql "$DATABASE_URL" -qAtc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  done
  pg_env_stop
  if [ "$status" != 0 ]; then echo "node logs, flashbench output and steps: $results" >&2; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for id in 1 2 3 4 5; do
  for port in $((BASE_PORT + id)) $((BASE_PORT + id + 1000)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      fail "port $port is in use (another cluster? set BASE_PORT)"
    fi
  done
done

echo "==> PostgreSQL: two fresh databases for the shipped orders"
stamp="reshape_$(date +%s)_$$"
postgres_toml=""
for n in 0 1; do
  db="flashledger_${stamp}_$n"
  psql "$DATABASE_URL" -qAtc "CREATE DATABASE $db" >/dev/null
  databases+=("$db")
  url=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$DATABASE_URL" "$db")
  database_urls+=("$url")
  postgres_toml+=$'\n[[postgres]]\nurl = "'"$url"$'"\n'
done

echo "==> config: nodes 1-5 on $(addr_of 1)..$(addr_of 5), shards on nodes 1-3 ($config)"
mkdir -p "$data_root"
{
  echo "# Written by scripts/reshape-demo.sh: nodes 4 and 5 are in no shard until the map gives them one."
  echo "[cluster]"
  echo "name = \"flashledger-reshape-demo\""
  for id in 1 2 3 4 5; do
    printf '\n[[nodes]]\nid = %d\naddr = "%s"\ndata_dir = "%s"\ncert_file = "%s"\nkey_file = "%s"\n' \
      "$id" "$(addr_of "$id")" "$data_root/node$id" "$data_root/certs/node$id.pem" "$data_root/certs/node$id.key"
  done
  printf '\n[[shards]]\nid = 1\nstart = ""\nend = "m"\nreplicas = [1, 2, 3]\n'
  printf '\n[[shards]]\nid = 2\nstart = "m"\nend = ""\nreplicas = [1, 2, 3]\n'
  # The steps are this script's: the placement scheduler would move replicas onto nodes 4 and
  # 5 as soon as they join, before the script's own moves.
  printf '\n[placement]\nbalance_leaders = false\nbalance_replicas = false\n'
  printf '\n[security]\nca_file = "%s"\ntokens_file = "%s"\n' "$data_root/certs/ca.pem" "$data_root/certs/tokens.toml"
  echo "$postgres_toml"
} >"$config"
scripts/certs.sh "$config"
cluster_config="$config"
cluster_data_root="$data_root"
cluster_use_admin_token "$config"

# Every node in "$@" answers Status, every shard it reports has a leader, and the meta group has
# seeded the map (at most 30 s).
wait_serving() {
  local seeds attempt
  seeds=$(seeds_of "$@")
  for attempt in $(seq 1 150); do
    if "$LEDGER" status --config "$config" --seeds "$seeds" --json 2>/dev/null | python3 -c '
import json, sys
nodes = json.load(sys.stdin)["nodes"]
shards = [s for n in nodes for s in n.get("shards", [])]
sys.exit(0 if shards and all("shards" in n for n in nodes) and all(s["leader"] for s in shards) else 1)
' && "$LEDGER" shard list --config "$config" --seeds "$seeds" --json 2>/dev/null | python3 -c '
import json, sys
sys.exit(0 if json.load(sys.stdin)["shards"] else 1)'; then
      return 0
    fi
    sleep 0.2
  done
  return 1
}

echo "==> starting nodes 1-3"
for id in 1 2 3; do cluster_start_node "$id"; done
wait_serving 1 2 3 || fail "nodes 1-3 did not elect leaders and seed the map within 30 s"
"$LEDGER" shard list --config "$config" --seeds "$(seeds_of 1 2 3)"

echo "==> load: hot and zipf ($ZIPF_SKUS SKUs), $CLIENTS callers each, $LOAD_SECS s, stock $STOCK per SKU"
for workload in hot zipf; do
  "$flashbench" run --seeds "$(seeds_of 1 2 3)" --workload "$workload" --skus "$ZIPF_SKUS" --stock "$STOCK" \
    --mode service --services 2 --clients "$CLIENTS" --secs "$LOAD_SECS" --warmup-secs 0 \
    --label "reshape $workload" --no-progress --out-dir "$results" \
    >"$results/$workload.line.json" 2>"$results/$workload.stderr" &
  load_pids+=("$!")
done
load_started=$(now_ms)
sleep "$WARM_SECS"

# step NAME COMMAND...: runs one reshaping command after SETTLE_SECS of undisturbed load and
# records its wall-clock window and output (JSON) in steps.jsonl.
step() {
  local name=$1 started ended output
  shift
  sleep "$SETTLE_SECS"
  for pid in "${load_pids[@]}"; do kill -0 "$pid" 2>/dev/null || fail "the load ended before step '$name' (raise LOAD_SECS)"; done
  echo "==> $name: $*"
  started=$(now_ms)
  if ! output=$("$@" 2>"$results/step.stderr"); then
    cat "$results/step.stderr" >&2
    fail "step '$name' failed: $*"
  fi
  ended=$(now_ms)
  echo "$output"
  python3 - "$name" "$started" "$ended" "$output" >>"$steps" <<'PY'
import json, sys
name, started, ended, output = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
try:
    reply = json.loads(output)
except ValueError:
    reply = None
print(json.dumps({"step": name, "started_ms": started, "ended_ms": ended, "reply": reply}))
PY
}

# Starts node $1 and waits (at most 30 s) until it answers Status.
start_added_node() {
  local id=$1 attempt
  cluster_start_node "$id"
  for attempt in $(seq 1 150); do
    if "$LEDGER" status --config "$config" --seeds "$(addr_of "$id")" --json >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  fail "node $id did not answer within 30 s of its start (log: $data_root/node$id.log)"
}

# The current map's field, via a Python expression over `m` (the `shard list --json` object).
map_query() {
  "$LEDGER" shard list --config "$config" --seeds "$live_seeds" --json | python3 -c "
import json, sys
m = json.load(sys.stdin)
print($1)"
}

live_seeds=$(seeds_of 1 2 3)
timeout_flag=(--timeout-s "$STEP_TIMEOUT_S")
for id in 4 5; do
  step "add node $id" "$LEDGER" node add --id "$id" --addr "$(addr_of "$id")" --config "$config" --seeds "$live_seeds" --json
  start_added_node "$id"
done
live_seeds=$(seeds_of 1 2 3 4 5)
step "move shard 1: node 2 -> 4" "$LEDGER" shard move --shard 1 --from 2 --to 4 --wait "${timeout_flag[@]}" \
  --config "$config" --seeds "$live_seeds" --json
step "move shard 2: node 3 -> 5" "$LEDGER" shard move --shard 2 --from 3 --to 5 --wait "${timeout_flag[@]}" \
  --config "$config" --seeds "$live_seeds" --json
step "transfer shard 1's leadership to node 4" "$LEDGER" shard transfer-leader --shard 1 --to 4 \
  --config "$config" --seeds "$live_seeds" --json
for attempt in $(seq 1 50); do
  [ "$(map_query 'next(s["leader"] for s in m["shards"] if s["shard_id"] == 1)')" = 4 ] && break
  [ "$attempt" = 50 ] && fail "shard 1's leader is not node 4 10 s after the transfer"
  sleep 0.2
done
step "split shard 1 at f" "$LEDGER" shard split --shard 1 --at f --wait "${timeout_flag[@]}" \
  --config "$config" --seeds "$live_seeds" --json
split_shard=$(map_query 'next(s["shard_id"] for s in m["shards"] if s["start"] == "f")')
step "merge shard $split_shard back into shard 1" "$LEDGER" shard merge --left 1 --right "$split_shard" --wait \
  "${timeout_flag[@]}" --config "$config" --seeds "$live_seeds" --json
[ "$(map_query 'next(s["end"] for s in m["shards"] if s["shard_id"] == 1)')" = m ] \
  || fail "shard 1 does not end at m again after the merge"
step "drain node 1" "$LEDGER" node drain --id 1 --wait "${timeout_flag[@]}" --config "$config" --seeds "$live_seeds" --json
live_seeds=$(seeds_of 2 3 4 5)
step "remove node 1" "$LEDGER" node remove --id 1 --config "$config" --seeds "$live_seeds" --json
# Node 1 has retired every replica once the map's change reached it: then its process may go.
for attempt in $(seq 1 150); do
  if "$LEDGER" status --config "$config" --seeds "$(addr_of 1)" --json 2>/dev/null \
    | python3 -c 'import json, sys; sys.exit(0 if not json.load(sys.stdin)["nodes"][0].get("shards", [None]) else 1)'; then
    break
  fi
  [ "$attempt" = 150 ] && fail "node 1 still runs replicas 30 s after its removal"
  sleep 0.2
done
echo "==> stopping node 1's process"
node1_pid=$(cluster_pid_of 1)
kill -TERM "$node1_pid" 2>/dev/null || true
for attempt in $(seq 1 50); do kill -0 "$node1_pid" 2>/dev/null || break; sleep 0.2; done
kill -KILL "$node1_pid" 2>/dev/null || true
wait "$node1_pid" 2>/dev/null || true
unset 'cluster_node_pids[0]'
steps_ended=$(now_ms)

echo "==> waiting for the load to finish (started $(( (steps_ended - load_started) / 1000 )) s ago, runs $LOAD_SECS s)"
for pid in "${load_pids[@]}"; do
  for attempt in $(seq 1 $((LOAD_SECS * 5 + 600))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && fail "flashbench $pid still runs 120 s after its $LOAD_SECS s"
  wait "$pid" || fail "flashbench exited with an error (see $results/*.stderr)"
done
load_pids=()
for workload in hot zipf; do
  tail -n 1 "$results/$workload.line.json" | python3 -c 'import json, sys; json.load(sys.stdin)' \
    || fail "flashbench $workload wrote no result (see $results/$workload.stderr)"
done

echo "==> checks"
python3 - "$LEDGER" "$config" "$live_seeds" "$results" "${database_urls[@]}" <<'PY' | tee "$results/checks.txt"
import json, subprocess, sys, time
ledger, config, seeds, results, *databases = sys.argv[1:]
failures = []

def check(ok, what):
    print(("ok      " if ok else "FAILED  ") + what)
    if not ok:
        failures.append(what)

def cli(*args):
    out = subprocess.run([ledger, *args, "--config", config, "--seeds", seeds, "--json"], capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)

def psql(url, sql):
    out = subprocess.run(["psql", url, "-qAtc", sql], capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()

runs = {w: json.loads(open(f"{results}/{w}.line.json").read().strip().splitlines()[-1]) for w in ("hot", "zipf")}
for workload, run in runs.items():
    check(run["errors"] == 0, f"{workload}: callers saw {run['errors']} errors")
    check(run["shed_total"] == 0 and run["rate_limited_total"] == 0,
          f"{workload}: {run['shed_total']} shed and {run['rate_limited_total']} rate-limited answers")
    check(run["other_replies"] == 0, f"{workload}: {run['other_replies']} unexpected business answers")
    check(run["soldout_replies"] == 0, f"{workload}: {run['soldout_replies']} sold-out answers (stock must last the run)")
confirmed = sum(run["ok_total"] for run in runs.values())

shard_map = cli("shard", "list")
check(all(n["id"] != 1 for n in shard_map["nodes"]), f"node 1 is out of the map (nodes {[n['id'] for n in shard_map['nodes']]})")
check(not shard_map["steps"], f"no step left queued ({shard_map['steps']})")
groups = {s["shard_id"]: s["replicas"] for s in shard_map["shards"]}
meta_replicas = shard_map["meta"]["replicas"]
check(all(1 not in replicas for replicas in [meta_replicas, *groups.values()]),
      f"no shard on node 1 (meta group {meta_replicas}, data shards {groups})")
# The meta group's state is the map (Status reports data shards only): every live node must
# serve the same version of it, with the same replicas.
served = {}
for seed in seeds.split(","):
    one = json.loads(subprocess.run([ledger, "shard", "list", "--config", config, "--seeds", seed, "--json"],
                                    capture_output=True, text=True, timeout=60).stdout)
    served[seed] = (one["version"], one["meta"]["replicas"], [(s["shard_id"], s["replicas"]) for s in one["shards"]])
check(len(set(map(repr, served.values()))) == 1 and shard_map["version"] in {v[0] for v in served.values()},
      f"every live node serves the same map (versions {sorted({v[0] for v in served.values()})})")

# Replicas identical: one Status sweep in which every listed replica of a shard reports the same
# applied index; the digests at that index must agree. Periodic entries (expiry ticks, shipped
# marks) keep indexes moving, so sweeps are retried (at most 60 s) until one catches them level.
deadline, verdict = time.time() + 60, None
while time.time() < deadline:
    nodes = cli("status")["nodes"]
    by_shard = {}
    for node in nodes:
        for shard in node.get("shards", []):
            if node.get("node_id") in groups.get(shard["shard_id"], []):
                by_shard.setdefault(shard["shard_id"], {})[node["node_id"]] = shard
    complete = all(set(by_shard.get(s, {})) == set(r) for s, r in groups.items())
    level = complete and all(len({r["applied_index"] for r in reps.values()}) == 1 for reps in by_shard.values())
    lag = max((r["shipping_lag_events"] for s, reps in by_shard.items() if s != 0 for r in reps.values()), default=0)
    verdict = (by_shard, complete, level, lag)
    if level and lag == 0:
        break
    time.sleep(0.2)
by_shard, complete, level, lag = verdict
check(complete, "every replica the map lists answers Status")
check(all(r["invariant_ok"] for reps in by_shard.values() for r in reps.values()),
      "every replica's invariant holds (available + reserved + sold == total: no oversell)")
check(level, "each shard's replicas reached the same applied index in one sweep")
for shard_id, reps in sorted(by_shard.items()):
    digests = {f"node {n}": (r["applied_index"], r["state_digest"]) for n, r in sorted(reps.items())}
    check(level and len({d for _, d in digests.values()}) == 1, f"shard {shard_id} replicas identical: {digests}")
check(lag == 0, f"shipping lag is zero ({lag} events)")

rows = [psql(db, "SELECT count(*), coalesce(sum(qty), 0), count(DISTINCT order_id) FROM orders").split("|") for db in databases]
shipped = sum(int(r[0]) for r in rows)
check(shipped == confirmed, f"PostgreSQL holds {shipped} orders; flashbench saw {confirmed} confirmed")
check(all(r[0] == r[1] == r[2] for r in rows), f"one row of qty 1 per order id ({rows})")
top = {}
for db in databases:
    for line in psql(db, "SELECT convert_from(sku, 'UTF8'), sum(qty) FROM orders GROUP BY sku ORDER BY 2 DESC LIMIT 5").splitlines():
        sku, qty = line.split("|")
        top[sku] = top.get(sku, 0) + int(qty)
for sku, _ in sorted(top.items(), key=lambda kv: -kv[1])[:5]:
    in_postgres = sum(int(psql(db, f"SELECT coalesce(sum(qty), 0) FROM orders WHERE sku = convert_to('{sku}', 'UTF8')")) for db in databases)
    stock = cli("get", sku)
    check(stock["sold"] == in_postgres and stock["sold"] <= stock["total"],
          f"{sku}: ledger sold {stock['sold']} of {stock['total']}, PostgreSQL {in_postgres}")
print(json.dumps({"confirmed": confirmed, "shipped": shipped, "failures": failures}), file=open(f"{results}/checks.json", "w"))
sys.exit(1 if failures else 0)
PY

echo "==> figures"
python3 - "$results" "$SETTLE_SECS" <<'PY' | tee "$summary"
import datetime, glob, json, re, sys
results, settle = sys.argv[1], int(sys.argv[2])
runs = {w: json.load(open(f"{results}/reshape-{w}-c{json.loads(open(f'{results}/{w}.line.json').read().strip().splitlines()[-1])['clients']}.json")) for w in ("hot", "zipf")}
steps = [json.loads(l) for l in open(f"{results}/steps.jsonl") if l.strip()]

def seconds(run):
    anchor = run["measure_from_unix_ms"]
    return [(anchor + 1000 * s["t"], s["ops"]) for s in run["timeline"]]

def rate(run, lo, hi, whole):
    """Mean and worst ops/s of the run's seconds that lie wholly inside [lo, hi) (whole), or
    that overlap it (a step shorter than a second still gets the second it ran in)."""
    if whole:
        picked = [ops for start, ops in seconds(run) if lo <= start and start + 1000 <= hi]
    else:
        picked = [ops for start, ops in seconds(run) if start < hi and start + 1000 > lo]
    return (sum(picked) / len(picked), min(picked)) if picked else (None, None)

print("| step | orders confirmed before it | took | hot ops/s before -> during (worst second) | zipf ops/s before -> during (worst second) | both: change |")
print("|---|---|---|---|---|---|")
for step in steps:
    reply = step["reply"] or {}
    took = reply.get("done_after_s")
    if took is not None:
        took = f"{took:.1f} s (--wait)"
    else:
        took = f"{step['ended_ms'] - step['started_ms']} ms (command)"
    # What the moved replicas carry, roughly: the purchases confirmed before the step began.
    orders = sum(ops for run in runs.values() for start, ops in seconds(run) if start + 1000 <= step["started_ms"])
    cells, before_total, during_total = [], 0, 0
    for name, run in runs.items():
        before, _ = rate(run, step["started_ms"] - settle * 1000, step["started_ms"], True)
        during, worst = rate(run, step["started_ms"], step["ended_ms"], False)
        if before is None or during is None:
            cells.append("outside the load")
            continue
        before_total, during_total = before_total + before, during_total + during
        cells.append(f"{before:.0f} -> {during:.0f} ({worst})")
    change = f"{100 * (during_total / before_total - 1):+.0f} %" if before_total else "n/a"
    print(f"| {step['step']} | {orders:,} | {took} | {cells[0]} | {cells[1]} | {change} |")
# Each queued step as the meta leader logged its completion, timed from its command's start.
done_lines = []
for log in sorted(glob.glob(f"{results}/cluster/node*.log")):
    for line in open(log, errors="replace"):
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        found = re.match(r"(\S+Z) .*reshaping step done .*step=(step \d+: .*)$", line)
        if found:
            when = datetime.datetime.fromisoformat(found[1].replace("Z", "+00:00")).timestamp() * 1000
            done_lines.append((when, found[2].strip()))
print("\nSteps as the meta leader completed them (from the start of the command that queued them):")
for step in steps:
    for when, text in sorted(done_lines):
        if step["started_ms"] <= when <= step["ended_ms"] + 1000:
            print(f"- {step['step']}: {text} done after {(when - step['started_ms']) / 1000:.1f} s")
for name, run in runs.items():
    print(f"\n{name}: {run['ok_total']} purchases in {run['secs']:.0f} s ({run['purchases_per_s']:.0f}/s), "
          f"p50 {run['p50_us'] / 1000:.1f} ms, p99 {run['p99_us'] / 1000:.1f} ms, max {run['max_us'] / 1000:.0f} ms, "
          f"{run['errors']} errors")
checks = json.load(open(f"{results}/checks.json"))
print(f"\nPostgreSQL holds {checks['shipped']} orders = {checks['confirmed']} confirmed; every check passed.")
PY
echo "results in $results"
