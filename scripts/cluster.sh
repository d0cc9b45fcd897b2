#!/usr/bin/env bash
# A local multi-process cluster: one storage node, the GTM, and compute nodes, each its
# own process on loopback (tcp), configured from config/*.toml.
#
#   scripts/cluster.sh start     # build (release), start everything, wait until ready
#   scripts/cluster.sh status    # which processes run, their endpoints
#   scripts/cluster.sh stop      # SIGTERM everything (clean shutdown), wait
#
# State, logs and pid files live in ./run (RUN_DIR overrides; the configs' relative paths
# are resolved from the repository root, so start it from there). Clients authenticate
# with the token in run/client-tokens (made at the first start), e.g.
#   cargo run --release -p tpcc -- --connect 127.0.0.1:7501,127.0.0.1:7502 \
#       --token-file run/client-tokens --check
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-run}
CONFIG_DIR=${CONFIG_DIR:-config}
BIN=${BIN:-target/release}
mkdir -p "$RUN_DIR"

services() {
  echo "storage-0 storage-node $CONFIG_DIR/storage-0.toml"
  echo "gtm gtm $CONFIG_DIR/gtm.toml"
  for f in "$CONFIG_DIR"/compute-*.toml; do
    local name; name=$(basename "$f" .toml)
    echo "$name compute-node $f"
  done
}

alive() { [ -f "$RUN_DIR/$1.pid" ] && kill -0 "$(cat "$RUN_DIR/$1.pid")" 2>/dev/null; }

start_one() {
  local name=$1 bin=$2 cfg=$3
  if alive "$name"; then echo "$name: already running (pid $(cat "$RUN_DIR/$name.pid"))"; return; fi
  "$BIN/$bin" --config "$cfg" >"$RUN_DIR/$name.out" 2>"$RUN_DIR/$name.log" </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
  for _ in $(seq 1 300); do
    if grep -q '^READY' "$RUN_DIR/$name.out" 2>/dev/null; then
      echo "$name: $(grep '^READY' "$RUN_DIR/$name.out" | head -1) (pid $(cat "$RUN_DIR/$name.pid"))"
      return
    fi
    if ! alive "$name"; then
      echo "$name: failed to start; last log lines:" >&2; tail -n 20 "$RUN_DIR/$name.log" >&2; exit 1
    fi
    sleep 0.1
  done
  echo "$name: not ready after 30 s; see $RUN_DIR/$name.log" >&2; exit 1
}

case "${1:-}" in
  start)
    if [ -z "${SKIP_BUILD:-}" ]; then cargo build --release -q -p storage-node -p gtm -p compute-server; fi
    if [ ! -f "$RUN_DIR/cluster.key" ]; then
      head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RUN_DIR/cluster.key"
      chmod 600 "$RUN_DIR/cluster.key"
    fi
    if [ ! -f "$RUN_DIR/client-tokens" ]; then
      "$BIN/dsb-certs" token --out "$RUN_DIR/client-tokens" --name ops >/dev/null
    fi
    services | while read -r name bin cfg; do start_one "$name" "$bin" "$cfg"; done
    ;;
  status)
    rc=0
    services | while read -r name _ _; do
      if alive "$name"; then echo "$name: running (pid $(cat "$RUN_DIR/$name.pid")) $(grep -m1 '^READY' "$RUN_DIR/$name.out" 2>/dev/null || true)"
      else echo "$name: stopped"; fi
    done
    ;;
  stop)
    # Compute nodes first (they write back), then the GTM, then storage.
    services | tac | while read -r name _ _; do
      if alive "$name"; then
        pid=$(cat "$RUN_DIR/$name.pid"); kill -TERM "$pid"
        for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then echo "$name: did not stop in 30 s; killing"; kill -9 "$pid"; fi
        echo "$name: stopped"
      fi
      rm -f "$RUN_DIR/$name.pid"
    done
    ;;
  *)
    echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac
