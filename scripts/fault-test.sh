#!/usr/bin/env bash
# Fault-injection suite: TPC-C keeps running while services die, and afterwards every
# acknowledged New-Order is still there and the consistency checks pass.
#
#   scripts/fault-test.sh [--quick] [--no-netns] [--out DIR]
#
# Scenarios (each one tpcc run on the same database; the first one loads it):
#   baseline       no fault
#   kill-compute   kill -9 compute-2 mid-run, restart it 1 s later
#   kill-storage   kill -9 the storage node, restart it 1 s later (redo recovery)
#   kill-gtm       kill -9 the GTM, restart it 1 s later
#   pause-compute  SIGSTOP compute-1 past its lease (it is fenced), SIGCONT: it rejoins
#   link-cut       (netns, root) compute-2's link down past its lease, then up; TPC-C
#                  drives the cluster from its own namespace (scripts/netns-cluster.sh)
# The first five run on `tpcc --cluster spawn` (processes on loopback); the harness
# kills and restarts the services itself (`--fault`). Terminals are spread over both
# compute nodes at random, so every fault hits running transactions.
#
# Per scenario the table shows tpmC, the longest time one transaction waited for an
# unavailable node (downtime seen by clients), the service's time to recover (fault to
# READY, or to SIGCONT / link up), acknowledged and lost New-Orders (lost must be 0) and
# the consistency checks. Exit status 1 if any scenario loses an order or fails a check.
#
# --quick: shm, 1 warehouse with 2,000 items (NOT SPEC), 12 s per scenario (~4 min).
# Default: tcp, 1 warehouse at spec scale, 30 s per scenario.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0; NETNS=1; OUT=""
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --no-netns) NETNS=0 ;;
    --out) OUT=$2; shift ;;
    *) echo "usage: $0 [--quick] [--no-netns] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done

if [ "$QUICK" = 1 ]; then
  TRANSPORT=shm; SCALE=(--scale-items 2000); DUR=12; AT=4
else
  TRANSPORT=tcp; SCALE=(); DUR=30; AT=10
fi
LEASE_MS=3000
PAUSE=$(( LEASE_MS / 1000 + 3 ))
OUT=${OUT:-$(mktemp -d /tmp/fault-test.XXXXXX)}
mkdir -p "$OUT"
RUN="$OUT/cluster"
SEED=${SEED:-4242}
BIN=${CARGO_TARGET_DIR:-target}/release
export BIN

echo "building (release) ..."
cargo build --release -q -p tpcc -p storage-node -p gtm -p compute-server

common=(--warehouses 1 "${SCALE[@]}" --nodes 2 --affinity random --seed "$SEED"
        --warmup 2 --duration "$DUR" --check --quiet --unavailable-patience 120)

run_spawn() { # name load? fault...
  local name=$1 load=$2; shift 2
  local args=(--cluster spawn --transport "$TRANSPORT" --lease-ms "$LEASE_MS" --run-dir "$RUN"
              "${common[@]}" --json "$OUT/$name.json" --ack-log "$OUT/$name.acks")
  [ "$load" = load ] || args+=(--skip-load)
  for f in "$@"; do args+=(--fault "$f"); done
  echo "== $name: tpcc ${args[*]}"
  if DSB_BIN_DIR=$BIN "$BIN/tpcc" "${args[@]}" >"$OUT/$name.out" 2>"$OUT/$name.err"; then
    echo "   ok"
  else
    echo "   FAILED (exit $?); see $OUT/$name.err"; tail -n 5 "$OUT/$name.err" | sed 's/^/   /'
  fi
}

run_spawn baseline load
run_spawn kill-compute skip "kill:compute-2@$AT+1"
run_spawn kill-storage skip "kill:storage-0@$AT+1"
run_spawn kill-gtm skip "kill:gtm@$AT+1"
run_spawn pause-compute skip "pause:compute-1@$AT+$PAUSE"

if [ "$NETNS" = 1 ]; then
  if [ "$(id -u)" != 0 ] || ! ip netns list >/dev/null 2>&1; then
    echo "== link-cut: skipped (needs root and ip netns; --no-netns to silence)"
  else
    NRUN="$OUT/netns"
    export RUN_DIR="$NRUN" SKIP_BUILD=1
    scripts/netns-cluster.sh stop >/dev/null 2>&1 || true
    echo "== link-cut: netns cluster in $NRUN"
    if scripts/netns-cluster.sh start 2 >"$OUT/netns-start.out" 2>&1; then
      addrs="10.77.0.101:7500,10.77.0.102:7500"
      ( sleep_until_measuring=$(( AT + 2 ))
        # Wait for the load to finish (the driver prints the cluster line, then loads):
        # cut the link AT seconds into the run, as the other scenarios do.
        while ! grep -q "^\[" "$OUT/link-cut.err" 2>/dev/null; do sleep 0.5; done
        sleep "$sleep_until_measuring"
        scripts/netns-cluster.sh link compute-2 down
        date +%s.%N >"$OUT/link-cut.down"
        sleep "$PAUSE"
        scripts/netns-cluster.sh link compute-2 up
        date +%s.%N >"$OUT/link-cut.up" ) &
      cutter=$!
      if scripts/netns-cluster.sh exec client "$BIN/tpcc" --connect "$addrs" \
          --warehouses 1 "${SCALE[@]}" --affinity random --seed "$SEED" --warmup 2 \
          --duration "$DUR" --check --unavailable-patience 120 \
          --json "$OUT/link-cut.json" --ack-log "$OUT/link-cut.acks" \
          >"$OUT/link-cut.out" 2>"$OUT/link-cut.err"; then
        echo "   ok"
      else
        echo "   FAILED; see $OUT/link-cut.err"; tail -n 5 "$OUT/link-cut.err" | sed 's/^/   /'
      fi
      wait "$cutter" || true
    else
      echo "   netns cluster failed to start; see $OUT/netns-start.out"
    fi
    scripts/netns-cluster.sh stop >/dev/null 2>&1 || true
  fi
fi

python3 - "$OUT" "$PAUSE" <<'PY'
import json, os, sys
out, pause = sys.argv[1], float(sys.argv[2])
names = ["baseline", "kill-compute", "kill-storage", "kill-gtm", "pause-compute", "link-cut"]
print()
print(f"{'scenario':<14} {'tpmC':>7} {'client downtime s':>18} {'recover s':>10} {'acked':>7} {'lost':>5} {'checks':>8}")
bad = False
for n in names:
    p = os.path.join(out, n + ".json")
    if not os.path.exists(p):
        if n != "link-cut" or os.path.exists(os.path.join(out, n + ".err")):
            print(f"{n:<14} {'no report (run failed)':>40}")
            bad = True
        continue
    r = json.load(open(p))
    run = r["run"]
    checks = [c for c in r["checks"] if c["passed"] is not True and c["passed"] != "not_applicable"]
    faults = run.get("faults") or []
    if faults:
        rec = max(f["out_s"] for f in faults)
    elif n == "link-cut":
        try:
            rec = float(open(os.path.join(out, "link-cut.up")).read()) - float(open(os.path.join(out, "link-cut.down")).read())
        except OSError:
            rec = float("nan")
    else:
        rec = 0.0
    lost = run.get("lost_new_orders")
    ok = "pass" if not checks else "FAIL"
    if checks or lost != 0:
        bad = True
    print(f"{n:<14} {r['tpmC']:>7.0f} {run['client_downtime_s']:>18.2f} {rec:>10.2f} "
          f"{run['acknowledged_new_orders']:>7} {str(lost):>5} {ok:>8}")
print(f"\nreports, logs and acknowledged-order logs in {out}")
sys.exit(1 if bad else 0)
PY
