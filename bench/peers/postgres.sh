#!/usr/bin/env bash
# PostgreSQL, the project's own runner: a throwaway cluster (initdb) on 127.0.0.1:$PG_PORT
# (default 5435) with synchronous_commit on and fsync on (a commit is answered after its WAL is
# fsynced), measured by pgbench running a hot-row
# `UPDATE stock SET qty = qty - 1 WHERE sku = 1 AND qty >= 1` at each client count, then an
# oversell check (20 000 units, 256 clients, each sale recorded in an orders table).
#
#   bench/peers/postgres.sh                      # CLIENTS="64 256" SECS=10 REPS=1
#   SECS=3 CLIENTS=64 bench/peers/postgres.sh    # JSON lines in $RESULTS_DIR/postgres.jsonl
#
# PG_BIN picks the server's bin directory (default: the newest /usr/lib/postgresql/*/bin). As
# root, the server runs as the `postgres` user (the package creates it); otherwise as you.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

newest_pg_bin() { compgen -G '/usr/lib/postgresql/*/bin/pgbench' | sort -V | tail -n 1 | xargs -r dirname; }
[ -n "${PG_BIN:-}" ] || [ -n "$(newest_pg_bin)" ] || install_packages postgresql
bin="${PG_BIN:-$(newest_pg_bin)}"
build_peer_loadgen
port="${PG_PORT:-5435}"
out="$RESULTS_DIR/postgres.jsonl"
: >"$out"
require_free_ports "$port"
log "$("$bin/postgres" --version)"

# As root the server runs as `postgres`; setpriv execs it, so $! below is the postmaster (a shell
# function run with & would be a subshell, and $! its PID).
server_user=()
[ "$(id -u)" = 0 ] && server_user=(setpriv --reuid=postgres --regid=postgres --clear-groups)
new_scratch_dir postgres
dir=$SCRATCH_DIR
[ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
"${server_user[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
"${server_user[@]}" "$bin/postgres" -D "$dir/data" -p "$port" -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories="$dir" -c max_connections=300 -c synchronous_commit=on -c fsync=on \
  >"$dir/server.log" 2>&1 &
pid=$!
track_started "$pid" INT # the fast shutdown
wait_port "$port"
psql=("$bin/psql" -X -q -A -t -h 127.0.0.1 -p "$port" -U postgres -d postgres)
for _ in $(seq 1 100); do "${psql[@]}" -c 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.2; done
log "postgres (pid $pid, data in $dir/data): synchronous_commit=$("${psql[@]}" -c 'SHOW synchronous_commit')," \
  "fsync=$("${psql[@]}" -c 'SHOW fsync'), wal_sync_method=$("${psql[@]}" -c 'SHOW wal_sync_method')"

loadgen() { # loadgen peer-loadgen-args...: one run, its JSON line appended to $out
  "$PEER_LOADGEN" postgres --bin-dir "$bin" --port "$port" --work-dir "$dir/pgbench" --pids "$pid" \
    --runner "$RUNNER" "$@" | tee -a "$out"
}
for clients in $CLIENTS; do
  for rep in $(seq 1 "$REPS"); do
    wait_quiet
    loadgen --clients "$clients" --secs "$SECS" --label "sync_commit=on rep$rep"
  done
done
loadgen --clients 256 --stock 20000 --until-sold-out --secs 120 --label "sync_commit=on oversell-check"
stop_started
summarize "$out"
