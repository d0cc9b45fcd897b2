#!/usr/bin/env bash
# The long form of the history-checked suite (the short form is cluster/tests/history.rs,
# run by README's test command): many cases of list-append, bank and register workloads
# over 1-4 compute nodes and 1-2 storage nodes, lazy and eager locks, shm and tcp,
# embedded and as separate processes over gRPC, with faults (compute nodes crashing,
# leaving, killed, paused past their lease; storage node and GTM killed) and seeded
# delays at the engine's injection points; every other case runs while a thread writes
# and fsyncs a file in a loop. Each history is checked for the anomalies snapshot
# isolation forbids (G0, G1a, G1b, G1c, lost update, G-single, G-nonadjacent, stale
# reads) and for lost acknowledged commits; write skew (G2-item) is allowed and counted.
#
#   scripts/history-test.sh [--seeds N] [--minutes M] [--quick] [--seconds S] [--json FILE]
#
# --seeds N    run every case of the matrix N times, each time with a new seed (default 1)
# --minutes M  instead: keep cycling through the matrix until M minutes have passed
# --quick      only the embedded part of the matrix
# --seconds S  length of each embedded case (default 4; process cases take at least 8)
# --json FILE  also write one JSON object per case to FILE
#
# Prints a table (runs, attempts, commits, unknown outcomes, anomalies by type, lost
# commits) and exits 1 if any case found a forbidden anomaly; a failing case's history,
# report and replay command are saved under history-failures/.
set -euo pipefail
cd "$(dirname "$0")/.."

SEEDS=1; MINUTES=""; MATRIX=full; SECONDS_PER=4; JSON=""
while [ $# -gt 0 ]; do
  case $1 in
    --seeds) SEEDS=$2; shift ;;
    --minutes) MINUTES=$2; shift ;;
    --quick) MATRIX=quick ;;
    --seconds) SECONDS_PER=$2; shift ;;
    --json) JSON=$2; shift ;;
    *) echo "usage: $0 [--seeds N] [--minutes M] [--quick] [--seconds S] [--json FILE]" >&2; exit 2 ;;
  esac
  shift
done

# history-test (with the injection points compiled in) and the service binaries the
# process cases spawn, from one build. PROFILE=ci reuses CI's build (less optimised,
# quicker to compile); the default is release.
PROFILE=${PROFILE:-release}
cargo build --profile "$PROFILE" -q -p cluster --features failpoints --bin history-test \
  -p storage-node --bin storage-node -p gtm --bin gtm -p compute-server --bin compute-node
BIN="${CARGO_TARGET_DIR:-target}/$PROFILE"

args=(--matrix "$MATRIX" --seconds "$SECONDS_PER" --fsync-pressure mixed --out history-failures)
if [ -n "$MINUTES" ]; then args+=(--minutes "$MINUTES"); else args+=(--seeds "$SEEDS"); fi
if [ -n "$JSON" ]; then
  DSB_BIN_DIR="$BIN" "$BIN/history-test" "${args[@]}" --json > "$JSON"
else
  DSB_BIN_DIR="$BIN" "$BIN/history-test" "${args[@]}"
fi
