#!/usr/bin/env bash
# Runs N seeds of the deterministic simulation (sim/) on every core and reports pass/fail counts,
# the seeds that failed (each with the command that replays it) and seeds per minute.
#
#   scripts/sim-sweep.sh N [FIRST_SEED] [-- extra flashledger-sim arguments]
#   scripts/sim-sweep.sh 100
#   scripts/sim-sweep.sh 200 1 -- --plant stale-leader-read
#
# SIM_JOBS sets the parallelism (default: every core); SIM_BIN runs a prebuilt binary instead of
# building one. Exits 1 when a seed failed.
set -euo pipefail
cd "$(dirname "$0")/.."

count="${1:?usage: scripts/sim-sweep.sh N [FIRST_SEED] [-- flashledger-sim args]}"
shift
first=1
if [[ $# -gt 0 && "$1" != "--" ]]; then
  first="$1"
  shift
fi
[[ "${1:-}" == "--" ]] && shift
extra=("$@")
[[ "$count" =~ ^[0-9]+$ && "$first" =~ ^[0-9]+$ ]] || { echo "N and FIRST_SEED must be numbers" >&2; exit 2; }

jobs="${SIM_JOBS:-$(nproc)}"
if [[ -n "${SIM_BIN:-}" ]]; then
  bin="$SIM_BIN" # a prebuilt flashledger-sim (e.g. a copy, so rebuilding meanwhile is safe)
else
  target_dir="${CARGO_TARGET_DIR:-target}-madsim"
  RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$target_dir" cargo build --release -q -p flashledger-sim
  bin="$target_dir/release/flashledger-sim"
fi

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
chunk=10
started=$(date +%s)
# One job per chunk of seeds, $jobs at a time; each chunk writes its own log.
seq "$first" "$chunk" $((first + count - 1)) | xargs -P "$jobs" -I{} sh -c '
  start={}; last=$(( start + '"$chunk"' - 1 )); end='"$((first + count - 1))"'
  [ "$last" -gt "$end" ] && last=$end
  "$0" --seed "$start" --count $(( last - start + 1 )) "$@" > "'"$logs"'/$start.log" 2>&1 || true
' "$bin" "${extra[@]}"
elapsed=$(( $(date +%s) - started ))

passed=$(cat "$logs"/*.log | grep -c '^seed [0-9]* PASS' || true)
failed_seeds=$(cat "$logs"/*.log | { grep '^seed [0-9]* FAIL' || true; } | awk '{print $2}' | sort -n | tr '\n' ' ')
failed=$(echo "$failed_seeds" | wc -w)
# Each failed seed: its verdict line, the checkers' findings and the replay command.
cat "$logs"/*.log | awk '/^seed [0-9]+ / { show = ($3 == "FAIL") } show && /^(seed|  \[|  replay)/' | cut -c1-400
missing=$(( count - passed - failed ))
inconclusive=$(cat "$logs"/*.log | grep -c '^seed [0-9]* PASS.*inconclusive' || true)
per_minute=$(awk -v n="$count" -v s="$elapsed" 'BEGIN { if (s == 0) s = 1; printf "%.1f", n * 60 / s }')
echo "sweep of $count seeds from $first (${extra[*]:-no extra arguments}): $passed passed ($inconclusive with a SKU whose linearizability search ran out of budget), $failed failed, $missing without a verdict; ${elapsed}s, $per_minute seeds/min on $jobs jobs"
[[ -n "$failed_seeds" ]] && echo "failed seeds: $failed_seeds"
[[ "$failed" -eq 0 && "$missing" -eq 0 ]]
