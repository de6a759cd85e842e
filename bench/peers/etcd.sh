#!/usr/bin/env bash
# etcd, the project's own runner: a throwaway 3-member cluster on 127.0.0.1 (client ports
# $ETCD_CLIENT_PORTS, default "23811 23812 23813"; peer ports $ETCD_PEER_PORTS, default
# "23821 23822 23823"); each purchase is a compare-and-swap decrement in one Txn (a Raft entry
# committed by 2 of 3 members, fsynced), retried with the fresh value on a conflict. The hot SKU
# at each client count, then an oversell check (1 000 units, 256 clients, until sold out).
#
#   bench/peers/etcd.sh                      # CLIENTS="64 256" SECS=10 REPS=1
#   SECS=3 CLIENTS=64 bench/peers/etcd.sh    # JSON lines in $RESULTS_DIR/etcd.jsonl
#
# ETCD_CONNECTIONS (default 6): gRPC connections the clients share, spread over the members.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ensure_packages etcd:etcd-server etcdctl:etcd-client
build_peer_loadgen
read -r -a client_ports <<<"${ETCD_CLIENT_PORTS:-23811 23812 23813}"
read -r -a peer_ports <<<"${ETCD_PEER_PORTS:-23821 23822 23823}"
[ ${#client_ports[@]} = 3 ] && [ ${#peer_ports[@]} = 3 ] || { echo "3 client and 3 peer ports, please" >&2; exit 1; }
out="$RESULTS_DIR/etcd.jsonl"
: >"$out"
require_free_ports "${client_ports[@]}" "${peer_ports[@]}"
log "$(etcd --version | head -n 1)"

new_scratch_dir etcd
dir=$SCRATCH_DIR
cluster=""
endpoints=""
for i in 0 1 2; do
  cluster+="m$i=http://127.0.0.1:${peer_ports[$i]},"
  endpoints+="http://127.0.0.1:${client_ports[$i]},"
done
cluster=${cluster%,}
endpoints=${endpoints%,}
pids=()
for i in 0 1 2; do
  etcd --name "m$i" --data-dir "$dir/m$i" \
    --listen-client-urls "http://127.0.0.1:${client_ports[$i]}" \
    --advertise-client-urls "http://127.0.0.1:${client_ports[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${peer_ports[$i]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${peer_ports[$i]}" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token flashledger-peers \
    >"$dir/m$i.log" 2>&1 &
  pids+=($!)
  track_started "$!"
done
for port in "${client_ports[@]}"; do wait_port "$port"; done
healthy=0
for _ in $(seq 1 100); do
  if ETCDCTL_API=3 etcdctl --endpoints="$endpoints" endpoint health >/dev/null 2>&1; then healthy=1; break; fi
  sleep 0.2
done
[ $healthy = 1 ] || { echo "the etcd cluster is not healthy after 20 s; logs in $dir" >&2; exit 1; }
log "etcd cluster (pids ${pids[*]}, data in $dir): $endpoints"

loadgen() { # loadgen peer-loadgen-args...: one run, its JSON line appended to $out
  "$PEER_LOADGEN" etcd --endpoints "$endpoints" --connections "${ETCD_CONNECTIONS:-6}" \
    --pids "$(IFS=,; echo "${pids[*]}")" --threads "$LG_THREADS" --runner "$RUNNER" "$@" | tee -a "$out"
}
for clients in $CLIENTS; do
  for rep in $(seq 1 "$REPS"); do
    wait_quiet
    loadgen --clients "$clients" --secs "$SECS" --label "3 members, CAS txn rep$rep"
  done
done
loadgen --clients 256 --stock 1000 --until-sold-out --warmup-secs 0 --secs 120 --label "3 members oversell-check"
stop_started
summarize "$out"
