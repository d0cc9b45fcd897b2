#!/usr/bin/env bash
# The example cluster as separate hosts on this machine: every service in its own network
# namespace, joined by veth pairs to a bridge (10.77.0.0/24, transport tcp).
#
#   sudo scripts/netns-cluster.sh start [COMPUTE_NODES]   # default 2
#   sudo scripts/netns-cluster.sh status
#   sudo scripts/netns-cluster.sh stop
#   sudo scripts/netns-cluster.sh exec NAME CMD...          # run CMD inside a namespace
#   sudo scripts/netns-cluster.sh link NAME down|up         # cut / restore a host's link
#
# Hosts: dsb-storage 10.77.0.10, dsb-gtm 10.77.0.20, dsb-compute-N 10.77.0.(100+N),
# dsb-client 10.77.0.200 (for drivers). State and logs in ./run-netns (RUN_DIR overrides).
# The client API speaks TLS (a test CA in run-netns/certs) and wants the token in
# run-netns/client-tokens, e.g. from the client namespace:
#   sudo scripts/netns-cluster.sh exec client target/release/tpcc \
#       --connect 10.77.0.101:7500,10.77.0.102:7500 --token-file run-netns/client-tokens \
#       --tls-ca run-netns/certs/ca.pem --check
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-run-netns}
BIN=${BIN:-target/release}
BR=dsbbr0
NET=10.77.0

ip_of() {
  case $1 in
    storage) echo "$NET.10" ;;
    gtm) echo "$NET.20" ;;
    client) echo "$NET.200" ;;
    compute-*) echo "$NET.$((100 + ${1#compute-}))" ;;
  esac
}

add_host() {
  local name=$1 addr; addr=$(ip_of "$name")
  local ns=dsb-$name veth=v-$name
  ip netns add "$ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  ip link set "$veth" master "$BR" up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
}

alive() { [ -f "$RUN_DIR/$1.pid" ] && kill -0 "$(cat "$RUN_DIR/$1.pid")" 2>/dev/null; }

launch() {
  local name=$1; shift
  ip netns exec "dsb-$name" "$@" >"$RUN_DIR/$name.out" 2>"$RUN_DIR/$name.log" </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
  for _ in $(seq 1 300); do
    if grep -q '^READY' "$RUN_DIR/$name.out" 2>/dev/null; then
      echo "$name ($(ip_of "$name")): $(grep -m1 '^READY' "$RUN_DIR/$name.out")"; return
    fi
    alive "$name" || { echo "$name failed:" >&2; tail -n 20 "$RUN_DIR/$name.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "$name: not ready after 30 s" >&2; exit 1
}

hosts() { ls "$RUN_DIR"/*.pid 2>/dev/null | xargs -rn1 basename | sed 's/\.pid$//'; }

case "${1:-}" in
  start)
    n=${2:-2}
    if [ -z "${SKIP_BUILD:-}" ]; then cargo build --release -q -p storage-node -p gtm -p compute-server; fi
    mkdir -p "$RUN_DIR"
    [ -f "$RUN_DIR/cluster.key" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RUN_DIR/cluster.key"
    # Client token (tpcc --token-file) and a test CA: the client API speaks TLS across
    # the namespaces.
    [ -f "$RUN_DIR/client-tokens" ] || "$BIN/dsb-certs" token --out "$RUN_DIR/client-tokens" --name ops >/dev/null
    hosts_csv=$(for i in $(seq 1 "$n"); do printf '%s,' "$(ip_of "compute-$i")"; done)
    [ -f "$RUN_DIR/certs/server.pem" ] || "$BIN/dsb-certs" pki --dir "$RUN_DIR/certs" --hosts "localhost,${hosts_csv%,}"
    ip link show "$BR" >/dev/null 2>&1 || { ip link add "$BR" type bridge; ip addr add "$NET.1/24" dev "$BR"; ip link set "$BR" up; }
    for h in storage gtm client $(seq -f 'compute-%g' 1 "$n"); do
      ip netns list | grep -q "^dsb-$h\b" || add_host "$h"
    done
    key=$RUN_DIR/cluster.key
    launch storage "$BIN/storage-node" --transport tcp --listen "$(ip_of storage):7100" \
      --data-dir "$RUN_DIR/storage" --first-page 1 --key-file "$key"
    cat >"$RUN_DIR/gtm.toml" <<TOML
listen = ["tcp://$(ip_of gtm):7400"]
data_dir = "$RUN_DIR/gtm"
cluster_key_file = "$key"
storage_nodes = ["tcp://$(ip_of storage):7100"]
metrics_listen = "$(ip_of gtm):9400"
TOML
    launch gtm "$BIN/gtm" --config "$RUN_DIR/gtm.toml"
    for i in $(seq 1 "$n"); do
      cat >"$RUN_DIR/compute-$i.toml" <<TOML
listen = "$(ip_of compute-$i):7500"
metrics_listen = "$(ip_of compute-$i):9500"
client_tokens_file = "$RUN_DIR/client-tokens"
tls_cert_file = "$RUN_DIR/certs/server.pem"
tls_key_file = "$RUN_DIR/certs/server.key"
[node]
node_id = $i
gtm = "tcp://$(ip_of gtm):7400"
storage = ["tcp://$(ip_of storage):7100"]
key_file = "$key"
TOML
      launch "compute-$i" "$BIN/compute-node" --config "$RUN_DIR/compute-$i.toml"
    done
    ;;
  status)
    for h in $(hosts); do
      if alive "$h"; then echo "$h ($(ip_of "$h")): running, $(grep -m1 '^READY' "$RUN_DIR/$h.out" || true)"; else echo "$h: stopped"; fi
    done
    ;;
  stop)
    for h in $(hosts | sort -r); do   # compute nodes first, then gtm, then storage
      if alive "$h"; then
        pid=$(cat "$RUN_DIR/$h.pid"); kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
      fi
      rm -f "$RUN_DIR/$h.pid"
    done
    for ns in $(ip netns list | awk '/^dsb-/{print $1}'); do ip netns del "$ns"; done
    ip link del "$BR" 2>/dev/null || true
    echo stopped
    ;;
  exec)
    name=$2; shift 2; exec ip netns exec "dsb-$name" "$@" ;;
  link)
    ip link set "v-$2" "$3"; echo "link of $2 is $3" ;;
  *)
    echo "usage: $0 start [N]|status|stop|exec NAME CMD...|link NAME down|up" >&2; exit 2 ;;
esac
