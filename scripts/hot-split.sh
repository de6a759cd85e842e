#!/usr/bin/env bash
# Two hot SKUs in one range, led by one node: does splitting the range and leading the halves
# from different nodes raise what the pair sells? (issue 15; docs/benchmarks.md, "Two hot SKUs:
# before and after a split"). One run, before and after measured in it:
#
#   1. builds the release binaries; starts 3 nodes on 127.0.0.1 (ports BASE_PORT+id, TLS and
#      tokens) with two shards, [.., m) and [m, ..), on all three; the placement scheduler only
#      splits hot ranges (`[placement] split_hot_ranges`, over HOT_OPS_PER_S; no leader or
#      replica balancing, so nothing else moves), its rounds SPLIT_AT_S / 2 apart: the first
#      round that sees load starts the count, the next one splits;
#   2. runs flashbench's zipf workload over 2 SKUs with equal popularity (`--skus 2 --zipf-s 0`:
#      "a<run>-0000" and "b<run>-0001", both in shard 1) for LOAD_SECS, closed loop, CLIENTS
#      callers in 2 service processes;
#   3. MODE=scheduler (default): waits for the scheduler to split shard 1 between the two SKUs
#      and to lead the new half from another node. MODE=operator: the scheduler is off; after
#      SPLIT_AT_S seconds the script runs `ledger shard split --shard 1 --at b --wait` and
#      hands the new shard's leadership to a node other than shard 1's leader if needed;
#   4. prints the pair's purchases per second before the split (seconds 5 .. split) and after it
#      (from SETTLE_SECS after the transfer to 2 s before the end), the change, how long the
#      split took, and the worst second during it; checks flashbench saw no error.
#
#   scripts/hot-split.sh                        # LOAD_SECS=60 SPLIT_AT_S=25 CLIENTS=64 HOT_OPS_PER_S=1000
#   MODE=operator scripts/hot-split.sh
#   LOAD_SECS=90 BASE_PORT=7700 scripts/hot-split.sh
#
# Results (config, node logs, flashbench JSON, summary.md) go to RESULTS (default
# target/hot-split/<time>/). Exits non-zero on a failed check.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_PORT="${BASE_PORT:-7600}"
MODE="${MODE:-scheduler}"
HOT_OPS_PER_S="${HOT_OPS_PER_S:-1000}"
case "$MODE" in scheduler|operator) ;; *) echo "MODE must be scheduler or operator" >&2; exit 2 ;; esac
LOAD_SECS="${LOAD_SECS:-60}"
SPLIT_AT_S="${SPLIT_AT_S:-25}"
SETTLE_SECS="${SETTLE_SECS:-5}"
CLIENTS="${CLIENTS:-64}"
STOCK="${STOCK:-100000000}"
target="${CARGO_TARGET_DIR:-target}"
results="${RESULTS:-$target/hot-split/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$results"
results="$(cd "$results" && pwd)"
data_root="$results/cluster"
config="$results/cluster.toml"
summary="$results/summary.md"

[ "$SPLIT_AT_S" -ge 10 ] && [ "$LOAD_SECS" -ge $((SPLIT_AT_S + SETTLE_SECS + 15)) ] \
  || { echo "need SPLIT_AT_S >= 10 and LOAD_SECS >= SPLIT_AT_S + SETTLE_SECS + 15" >&2; exit 2; }

echo "==> building flashledger and flashbench (release)"
cargo build --release -p flashledger-ledger -p flashbench
LEDGER="$target/release/ledger"
flashbench="$target/release/flashbench"
source scripts/lib/cluster.sh

addr_of() { echo "127.0.0.1:$((BASE_PORT + $1))"; }
seeds="$(addr_of 1),$(addr_of 2),$(addr_of 3)"
now_ms() { date +%s%3N; }
fail() { echo "FAILED: $*" >&2; exit 1; }

load_pid=""
cleanup() {
  local status=$?
  trap - EXIT
  [ -n "$load_pid" ] && { kill -TERM "$load_pid" 2>/dev/null || true; wait "$load_pid" 2>/dev/null || true; }
  cluster_stop
  if [ "$status" != 0 ]; then echo "node logs and flashbench output: $results" >&2; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$data_root"
{
  echo "# Written by scripts/hot-split.sh."
  echo "[cluster]"
  echo "name = \"flashledger-hot-split\""
  for id in 1 2 3; do
    printf '\n[[nodes]]\nid = %d\naddr = "%s"\ndata_dir = "%s"\ncert_file = "%s"\nkey_file = "%s"\n' \
      "$id" "$(addr_of "$id")" "$data_root/node$id" "$data_root/certs/node$id.pem" "$data_root/certs/node$id.key"
  done
  printf '\n[[shards]]\nid = 1\nstart = ""\nend = "m"\nreplicas = [1, 2, 3]\n'
  printf '\n[[shards]]\nid = 2\nstart = "m"\nend = ""\nreplicas = [1, 2, 3]\n'
  if [ "$MODE" = scheduler ]; then
    printf '\n[placement]\nbalance_leaders = false\nbalance_replicas = false\nsplit_hot_ranges = true\nhot_range_ops_per_s = %d\ninterval_ms = %d\n' \
      "$HOT_OPS_PER_S" $((SPLIT_AT_S * 500))
  else
    printf '\n[placement]\nbalance_leaders = false\nbalance_replicas = false\nsplit_hot_ranges = false\n'
  fi
  printf '\n[security]\nca_file = "%s"\ntokens_file = "%s"\n' "$data_root/certs/ca.pem" "$data_root/certs/tokens.toml"
} >"$config"
cluster_start "$config" "$data_root"

leader_of() {
  "$LEDGER" shard list --config "$config" --seeds "$seeds" --json | python3 -c "
import json, sys
m = json.load(sys.stdin)
print(next(s['leader'] for s in m['shards'] if s['shard_id'] == $1))"
}

echo "==> load: 2 equally hot SKUs in shard 1, $CLIENTS callers, $LOAD_SECS s"
"$flashbench" run --seeds "$seeds" --workload zipf --skus 2 --zipf-s 0 --stock "$STOCK" \
  --mode service --services 2 --clients "$CLIENTS" --secs "$LOAD_SECS" --warmup-secs 0 \
  --label "hot pair" --no-progress --out-dir "$results" \
  >"$results/load.line.json" 2>"$results/load.stderr" &
load_pid=$!
load_started=$(now_ms)

# CPU seconds each node process used so far (utime + stime), as "id=seconds ..." with a time.
cpu_sample() {
  local id pid ticks out="$(now_ms)"
  for id in 1 2 3; do
    pid=$(cluster_pid_of "$id")
    ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    out+=" $id=$ticks"
  done
  echo "$out"
}
sleep 5
cpu_before_from=$(cpu_sample)
shard_count() {
  "$LEDGER" shard list --config "$config" --seeds "$seeds" --json | python3 -c "
import json, sys
print(len(json.load(sys.stdin)['shards']))"
}

if [ "$MODE" = operator ]; then
  sleep $((SPLIT_AT_S - 5))
  kill -0 "$load_pid" 2>/dev/null || fail "the load ended early (see $results/load.stderr)"
  echo "==> split shard 1 at \"b\" (shard 1 led by node $(leader_of 1))"
  cpu_before_to=$(cpu_sample)
  split_started=$(now_ms)
  "$LEDGER" shard split --shard 1 --at b --wait --config "$config" --seeds "$seeds" --json >"$results/split.json" \
    || fail "the split failed"
  split_ended=$(now_ms)
  new_shard=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["queued"][0]["new_shard_id"])' "$results/split.json")
else
  echo "==> waiting for the scheduler to split shard 1 (led by node $(leader_of 1))"
  split_started=""
  for attempt in $(seq 1 $((LOAD_SECS * 10))); do
    kill -0 "$load_pid" 2>/dev/null || fail "the load ended and the scheduler split nothing (see the node logs)"
    if [ "$(shard_count)" -gt 2 ]; then split_started=$(now_ms); cpu_before_to=$(cpu_sample); break; fi
    sleep 0.1
  done
  [ -n "$split_started" ] || fail "the scheduler split nothing"
  split_ended=$split_started
  grep -h "split a hot range" "$data_root"/node*.log | tail -n 1 || true
  new_shard=$("$LEDGER" shard list --config "$config" --seeds "$seeds" --json | python3 -c "
import json, sys
print(max(s['shard_id'] for s in json.load(sys.stdin)['shards']))")
fi
for attempt in $(seq 1 100); do
  new_leader=$(leader_of "$new_shard")
  [ "$new_leader" != 0 ] && [ "$MODE" = operator -o "$new_leader" != "$(leader_of 1)" ] && break
  sleep 0.1
done
old_leader=$(leader_of 1)
to=$new_leader
if [ "$new_leader" = "$old_leader" ]; then
  [ "$MODE" = scheduler ] && fail "node $old_leader still leads both halves 10 s after the scheduler's split"
  to=$(( old_leader % 3 + 1 ))
  echo "==> hand shard $new_shard's leadership from node $new_leader to node $to"
  "$LEDGER" shard transfer-leader --shard "$new_shard" --to "$to" --config "$config" --seeds "$seeds" \
    || fail "the leader transfer failed"
  for attempt in $(seq 1 100); do [ "$(leader_of "$new_shard")" = "$to" ] && break; sleep 0.1; done
fi
spread_ms=$(now_ms)
sleep "$SETTLE_SECS"
cpu_after_from=$(cpu_sample)
# Until 2 s before the load ends.
until_end_ms=$(( load_started + (LOAD_SECS - 2) * 1000 - $(now_ms) ))
[ "$until_end_ms" -gt 0 ] && sleep "$(python3 -c "print($until_end_ms / 1000)")"
cpu_after_to=$(cpu_sample)
echo "==> shard 1 led by node $(leader_of 1), shard $new_shard by node $(leader_of "$new_shard")"

wait "$load_pid" || fail "flashbench exited with an error (see $results/load.stderr)"
load_pid=""

echo "==> checks and figures"
python3 - "$results" "$split_started" "$split_ended" "$spread_ms" "$SETTLE_SECS" \
  "$cpu_before_from" "$cpu_before_to" "$cpu_after_from" "$cpu_after_to" "$(getconf CLK_TCK)" <<'PY' | tee "$summary"
import glob, json, sys
results = sys.argv[1]
split_started, split_ended, spread_ms, settle = map(int, sys.argv[2:6])
samples = [dict([("t", int(s.split()[0]))] + [(int(k), int(v)) for k, v in (p.split("=") for p in s.split()[1:])])
           for s in sys.argv[6:10]]
ticks_per_s = int(sys.argv[10])

def cpu_percent(a, b):
    secs = (b["t"] - a["t"]) / 1000
    return {node: 100 * (b[node] - a[node]) / ticks_per_s / secs for node in (1, 2, 3)}
line = json.loads(open(f"{results}/load.line.json").read().strip().splitlines()[-1])
run = json.load(open(glob.glob(f"{results}/hot-pair-*.json")[0]))
anchor = run["measure_from_unix_ms"]
seconds = [(anchor + 1000 * s["t"], s["ops"]) for s in run["timeline"]]
end = seconds[-1][0] + 1000

def mean(lo, hi):
    picked = [ops for start, ops in seconds if lo <= start and start + 1000 <= hi]
    return sum(picked) / len(picked), len(picked)

before, n_before = mean(anchor + 5000, split_started)
after, n_after = mean(spread_ms + settle * 1000, end - 2000)
during = [ops for start, ops in seconds if start < max(split_ended, split_started + 1000) and start + 1000 > split_started - 1000]
failures = []
if line["errors"]:
    failures.append(f"flashbench callers saw {line['errors']} errors")
print("| | purchases/s of the pair | seconds averaged |")
print("|---|---|---|")
print(f"| before: both SKUs in shard 1, one leader | {before:.0f} | {n_before} |")
print(f"| after: split at \"b\", the halves led by different nodes | {after:.0f} | {n_after} |")
print(f"\nchange: {100 * (after / before - 1):+.0f} %; the split took {(split_ended - split_started) / 1000:.1f} s "
      f"(--wait; 0 when the scheduler split: seen once done), worst second around it {min(during) if during else 'n/a'} ops; "
      f"{line['ok_total']} purchases, {line['errors']} errors")
before_cpu, after_cpu = cpu_percent(samples[0], samples[1]), cpu_percent(samples[2], samples[3])
print("\nCPU of each node process (% of one core), before -> after:",
      ", ".join(f"node {n} {before_cpu[n]:.0f} -> {after_cpu[n]:.0f}" for n in (1, 2, 3)),
      f"(total {sum(before_cpu.values()):.0f} -> {sum(after_cpu.values()):.0f} of {100 * __import__('os').cpu_count()})")
for failure in failures:
    print(f"FAILED  {failure}")
sys.exit(1 if failures else 0)
PY
echo "results in $results"
