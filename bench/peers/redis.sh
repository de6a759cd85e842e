#!/usr/bin/env bash
# Redis + Lua, the project's own runner: a throwaway redis-server on 127.0.0.1:$REDIS_PORT
# (default 6393), first without AOF, then with appendonly yes + appendfsync always (an fsync
# before every answer). For each: the hot SKU at each client count, a sold-out storm (stock 0:
# every purchase rejected), and an oversell check (20 000 units, 256 clients, until sold out).
#
#   bench/peers/redis.sh                      # CLIENTS="64 256" SECS=10 REPS=1
#   SECS=3 CLIENTS=64 bench/peers/redis.sh    # JSON lines in $RESULTS_DIR/redis.jsonl
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ensure_packages redis-server:redis-server redis-cli:redis-tools
build_peer_loadgen
port="${REDIS_PORT:-6393}"
out="$RESULTS_DIR/redis.jsonl"
: >"$out"
require_free_ports "$port"
log "$(redis-server --version)"

loadgen() { # loadgen SERVER_PID peer-loadgen-args...: one run, its JSON line appended to $out
  local pid=$1
  shift
  "$PEER_LOADGEN" redis --addr "127.0.0.1:$port" --pids "$pid" --threads "$LG_THREADS" \
    --runner "$RUNNER" "$@" | tee -a "$out"
}

for config in noaof aof_always; do
  case $config in
    noaof) persistence=(--appendonly no) ;;
    aof_always) persistence=(--appendonly yes --appendfsync always) ;;
  esac
  new_scratch_dir "redis-$config"
  dir=$SCRATCH_DIR
  redis-server --bind 127.0.0.1 --port "$port" --protected-mode yes --dir "$dir" --save '' \
    --daemonize no --logfile "$dir/redis.log" "${persistence[@]}" &
  pid=$!
  track_started "$pid"
  wait_port "$port"
  settings="$(redis-cli -p "$port" config get appendonly | paste -sd ' ')"
  settings+=", $(redis-cli -p "$port" config get appendfsync | paste -sd ' ')"
  log "redis $config (pid $pid, data in $dir): $settings"
  for clients in $CLIENTS; do
    for rep in $(seq 1 "$REPS"); do
      wait_quiet
      loadgen "$pid" --clients "$clients" --secs "$SECS" --label "$config rep$rep"
    done
  done
  for clients in $CLIENTS; do
    for rep in $(seq 1 "$REPS"); do
      wait_quiet
      loadgen "$pid" --clients "$clients" --secs "$SECS" --stock 0 --label "$config sold-out rep$rep"
    done
  done
  loadgen "$pid" --clients 256 --stock 20000 --until-sold-out --warmup-secs 0 --secs 60 \
    --label "$config oversell-check"
  stop_started
done
summarize "$out"
