#!/usr/bin/env bash
# Soak test: TPC-C for a long while on a cluster of separate processes (storage node,
# GTM, two compute nodes) with faults at random times, sampling every few seconds how
# much disk each service's data directory takes and how much memory (VmRSS) each
# process holds, to see that nothing grows without bound and nothing acknowledged is
# lost.
#
#   scripts/soak-test.sh [--minutes M] [--quick] [--out DIR] [--seed N] [--no-netns]
#                        [--ratio R] [--disk-floor BYTES] [--rss-floor BYTES]
#                        [--rel-floor F] [--sample S] [--tpcc-args "ARGS"]
#
# Phase `main`: `tpcc --cluster spawn` (1 warehouse, loaded first by a short tpcc run of
# its own with the checks after load; terminals on both compute nodes at random;
# storage memory and buffer pools smaller than the database so caches fill and evict
# early) for M minutes (default 30) of measurement, with faults from a seeded
# random schedule (`scripts/soak.py schedule`, printed; kinds in shuffled rounds):
# kill -9 of the storage node, of the GTM and of a compute node (each started again
# 0.5-2 s later), and SIGSTOP of a compute node past its lease (3 s) then SIGCONT (it is
# fenced and must rejoin); one fault every 40 s on average (--quick: each kind once).
# Phase `link-cut` (root and a working `ip netns` only; else skipped with a message): the
# same database (main's data directories, copied) on the cluster of
# scripts/netns-cluster.sh, TPC-C from the client namespace, a compute node's link cut
# past its lease and restored at seeded random times (M/10 minutes, at least 60 s, a cut
# per 30 s; --quick 18 s with one cut).
# Sampling (`scripts/soak.py sample`, every --sample seconds, default 5, --quick 2):
# per service the bytes on disk (allocated blocks) of its data directory, by top-level
# entry (the storage node's `pages`, `redo`, `meta`, `fences`; the GTM's `commit.log`,
# `tso.hwm`, ...), and the VmRSS of every process (the services and the tpcc driver),
# each found by its command line, so a restarted process is followed; tpmC per second
# and each compute node's pool occupancy (every 5 s) from `tpcc --events`.
#
# Output: a table on stdout (a row per 5 s, per minute from 10 minutes on: time, phase,
# tpmC, disk per service, RSS per process with (T) stopped / (down), faults that
# struck), and in DIR: soak.jsonl (the table's rows), samples.jsonl (every sample),
# soak.svg (tpmC, disk and RSS over time, faults marked), plateau.json, and per phase
# tpcc's report (main.json), event lines, acknowledged orders and logs.
#
# Exit status 1 if a phase loses an acknowledged New-Order (tpcc --ack-log: each order
# the driver saw committed is looked up after the run), a consistency check fails (after
# load and after the run), tpcc fails, or a series does not level off, by
#
# THE PLATEAU RULE (phase main, its measurement window minus a warm-up of
# max(10 s, 15% of the window)): split that span into its first two thirds A and its
# last third B. For each series (disk per service, RSS per process):
#   start   = the median of A's first three samples,
#   peak_A  = the largest sample in A,  peak_B = the largest sample in B,
#   rate_A  = (peak_A - start) / duration(A),
#   allowed = max(FLOOR, REL x peak_A, RATIO x rate_A x duration(B)),
#   the series levels off iff peak_B - peak_A <= allowed.
# An RSS series is a process's longest life in the span (a restarted process starts
# from nothing: its span begins a warm-up after its start). A compute node's series is
# its RSS less its buffer pool's page images (frames holding a page x 8 KiB, from
# tpcc's `pool` events every 5 s): a pool of 16,384 frames takes most of a 30-minute
# run to fill at one warehouse, and that climb is bounded by the configuration, while
# everything else (replaced images awaiting reclamation, sessions, the page table,
# the allocator's caches) is where a leak would be. A compute process outlives its
# incarnations: a rejoin (GTM restart, fenced after a pause) starts an empty pool while
# the old one is being freed, so each incarnation's first 30 s (--rss-life-warmup of
# soak.py) are left out and the rest of the process's life is one series (memory an
# old incarnation keeps shows as growth across rejoins); a sample taken between the
# last pool report of one epoch and the first of the next counts as the new one's. When
# a late rejoin leaves too few samples to judge the whole life, its longest incarnation
# is judged alone. A process restarted so often
# that no life holds 6 samples is reported as not judged, not failed. A leak slower than
# a life can show is out of any kill-faulted run's sight.
# The last third may climb above what the first two thirds reached by at most half
# (RATIO 0.5) of what the earlier rate would add, or a noise floor (FLOOR: 256 KiB of
# disk, 16 MiB of RSS; REL: 2% of the level). Peaks, not single samples: a process
# restarted in B (its RSS starting low again) and the sawtooth of redo segments deleted
# after checkpoints are not growth, while anything growing at a steady rate (a leak, a
# log never truncated) fails once B adds more than the floor. The storage node's page
# file (`pages`) is left out of its disk series: TPC-C's database grows by design
# (every New-Order inserts an order and its lines, every Payment a history row); its
# growth is reported per New-Order instead. The floors bound what a run can see: a
# steady growth below FLOOR / duration(B) passes (quick: B is ~13 s, so ~20 KiB/s of
# disk, and --quick raises the RSS floor to 32 MiB; 30 minutes: B is ~8.5 min, ~0.5 KiB/s
# of disk, ~32 KiB/s of RSS). The thresholds are options.
#
# --quick: shm, 1 warehouse with 2,000 items (NOT SPEC), 50 s of main phase with the
# four faults, 4 MiB redo segments (so segments are sealed and deleted within the run;
# the default 64 MiB take ~40 s per stream to fill), ~2 min in all. Default: tcp, spec
# scale, the storage node's default segments. The seed (--seed, or SEED=...; default
# random) fixes the fault and cut schedules and tpcc's --seed, and is printed: a run
# replays with it (the schedule's times; how long recovery takes is the machine's).
# --tpcc-args passes more options to phase main's tpcc (e.g. "--lock-mode eager").
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  sed -n '/^#   scripts\/soak/,/^#  *\[--rel-floor/p' "$0" | sed 's/^# *//' >&2
  exit 2
}
QUICK=0; NETNS=1; OUT=""; MINUTES=30; SEED=${SEED:-}; SAMPLE=""; EXTRA=()
PLATEAU=()
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --no-netns) NETNS=0 ;;
    --out) OUT=$2; shift ;;
    --minutes) MINUTES=$2; shift ;;
    --seed) SEED=$2; shift ;;
    --sample) SAMPLE=$2; shift ;;
    --tpcc-args) read -r -a EXTRA <<<"$2"; shift ;;
    --ratio|--disk-floor|--rss-floor|--rel-floor) PLATEAU+=("$1" "$2"); shift ;;
    *) usage ;;
  esac
  shift
done
SEED=${SEED:-$(( (RANDOM << 15) | RANDOM ))}
LEASE_MS=3000

if [ "$QUICK" = 1 ]; then
  TRANSPORT=shm; SCALE=(--scale-items 2000); WINDOW=50; NFAULTS=4
  MEMORY=(--storage-memory-mb 160 --buffer-frames 4096 --redo-segment-mb 4)
  SAMPLE=${SAMPLE:-2}; CUT_WINDOW=18; NCUTS=1; TABLE_EVERY=5
  # B is ~13 s, and a compute node the faults restarted (or whose partner was paused)
  # is still warming up in it: replaced page images awaiting reclamation and the
  # allocator's caches grow with the pool (32 MiB flagged a healthy run at +35 MiB of
  # raw RSS, before the pool's images were left out of the series).
  PLATEAU=(--rss-floor $(( 48 << 20 )) "${PLATEAU[@]}")
  # A 50 s window has no room for 30 s per incarnation: 10 s, the window's own warm-up.
  PLATEAU=(--rss-life-warmup 10 "${PLATEAU[@]}")
  # Redo is deleted a whole 4 MiB segment at a time, and a stream keeps up to its
  # retained size (16 MiB here) plus the segments being sealed and deleted: in a 13 s
  # third, two segments above the earlier peak is that sawtooth, not growth (the 50 s
  # window is shorter than the time redo takes to reach its retained size).
  PLATEAU=(--disk-floor $(( 8 << 20 )) "${PLATEAU[@]}")
else
  TRANSPORT=tcp; SCALE=(); WINDOW=$(( MINUTES * 60 )); NFAULTS=$(( WINDOW / 40 ))
  MEMORY=(--storage-memory-mb 384 --buffer-frames 16384)
  [ "$NFAULTS" -ge 4 ] || NFAULTS=4
  SAMPLE=${SAMPLE:-5}
  CUT_WINDOW=$(( WINDOW / 10 )); [ "$CUT_WINDOW" -ge 60 ] || CUT_WINDOW=60
  NCUTS=$(( CUT_WINDOW / 30 ))
  if [ "$MINUTES" -ge 10 ]; then TABLE_EVERY=60; else TABLE_EVERY=5; fi
fi
OUT=${OUT:-$(mktemp -d /tmp/soak-test.XXXXXX)}
# The phases load a fresh database into $OUT/cluster: a directory left by an earlier
# run would be loaded on top of (and fail the checks after load).
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then
  echo "soak: output directory $OUT is not empty (an earlier run?); remove it or pick another --out" >&2
  exit 2
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RUN="$OUT/cluster"
# PROFILE=ci runs the binaries CI's test step built (scripts/check.sh); default release.
PROFILE=${PROFILE:-release}
BIN=$(cd "${CARGO_TARGET_DIR:-target}" 2>/dev/null && pwd)/$PROFILE
PY=scripts/soak.py

SAMPLER=""; TPCC=""; CUTTER=""; NETNS_UP=0
# Our processes only: the sampler, tpcc, the cutter, and any service whose command
# line names a file of this run's directory (a tpcc killed by a signal leaves its
# children behind).
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in $CUTTER $TPCC $SAMPLER; do kill "$p" 2>/dev/null || true; done
  for d in /proc/[0-9]*; do
    if { tr "\0" "\n" <"$d/cmdline"; } 2>/dev/null | grep -q "^$OUT/"; then
      kill -9 "${d#/proc/}" 2>/dev/null || true
    fi
  done
  if [ "$NETNS_UP" = 1 ]; then
    RUN_DIR="$OUT/netns" scripts/netns-cluster.sh stop >/dev/null 2>&1 || true
  fi
  wait 2>/dev/null || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "soak: seed $SEED (replay: scripts/soak-test.sh $([ "$QUICK" = 1 ] && echo --quick || echo --minutes "$MINUTES") --seed $SEED); output in $OUT"
if [ -z "${SKIP_BUILD:-}" ]; then
  echo "building ($PROFILE) ..."
  cargo build --profile "$PROFILE" -q -p tpcc -p storage-node -p gtm -p compute-server
fi

sched=$(python3 "$PY" schedule --seed "$SEED" --window "$WINDOW" --faults "$NFAULTS" \
  --nodes 2 --lease-ms "$LEASE_MS")
mapfile -t FAULTS <<<"$sched"
echo "fault schedule (seconds into the measurement window +down): ${FAULTS[*]}"

common=(--warehouses 1 "${SCALE[@]}" --affinity random --seed "$SEED" --check --quiet --unavailable-patience 120)

start_sampler() { # phase service...
  local phase=$1; shift
  local svc=()
  for s in "$@"; do svc+=(--service "$s"); done
  python3 "$PY" sample --out "$OUT/samples.jsonl" --interval "$SAMPLE" --phase "$phase" "${svc[@]}" &
  SAMPLER=$!
}
stop_sampler() {
  kill "$SAMPLER" 2>/dev/null || true
  wait "$SAMPLER" 2>/dev/null || true
  SAMPLER=""
}

# ---- phase main: spawned processes, kill -9 and SIGSTOP
rm -f "$OUT/samples.jsonl"
start_sampler main "storage:$RUN/storage-0:$RUN/storage-0.toml" "gtm:$RUN/gtm:$RUN/gtm.toml" \
  "compute-1:-:$RUN/compute-1.toml" "compute-2:-:$RUN/compute-2.toml" \
  "driver:-:$OUT/main.events.jsonl"
# The load first, in a run of its own with the services' default memory (a load into
# small caches takes twice as long), then the soak on the same run directory.
echo "== load: tpcc --cluster spawn ... --duration 1 (checks after load)"
if ! DSB_BIN_DIR=$BIN "$BIN/tpcc" --cluster spawn --transport "$TRANSPORT" --lease-ms "$LEASE_MS" \
    --run-dir "$RUN" --nodes 2 "${common[@]}" --warmup 0 --duration 1 --json "$OUT/load.json" \
    >"$OUT/load.out" 2>"$OUT/load.err"; then
  echo "   load FAILED; see $OUT/load.err"; tail -n 5 "$OUT/load.err" | sed 's/^/   /'; exit 1
fi
# Freeze sweeps due every 20,000 txns (and the GTM's 60 s), not its default million: the
# GTM's disk and memory must level off within the window, and each sweep meets faults.
args=(--cluster spawn --transport "$TRANSPORT" --lease-ms "$LEASE_MS" --run-dir "$RUN"
      --freeze-after-txns 20000 --nodes 2 "${MEMORY[@]}" "${common[@]}" "${EXTRA[@]}" --skip-load --warmup 2 --duration "$WINDOW"
      --json "$OUT/main.json" --ack-log "$OUT/main.acks" --events "$OUT/main.events.jsonl")
for f in "${FAULTS[@]}"; do args+=(--fault "$f"); done
echo "== main: tpcc ${args[*]}"
rm -f "$OUT/main.acks" "$OUT/main.json"
DSB_BIN_DIR=$BIN "$BIN/tpcc" "${args[@]}" >"$OUT/main.out" 2>"$OUT/main.err" &
TPCC=$!
MAIN_RC=0; wait "$TPCC" || MAIN_RC=$?
TPCC=""
stop_sampler
if [ "$MAIN_RC" = 0 ]; then echo "   tpcc ok"; else
  echo "   tpcc FAILED (exit $MAIN_RC); see $OUT/main.err"; tail -n 5 "$OUT/main.err" | sed 's/^/   /'
fi
PHASES=(--phase "load:-:$OUT/load.json:0" --phase "main:$OUT/main.events.jsonl:$OUT/main.json:$MAIN_RC")

# ---- phase link-cut: the netns cluster, a compute node's link down past its lease
: >"$OUT/cuts.jsonl"
if [ "$NETNS" = 1 ]; then
  if [ "$(id -u)" != 0 ] || ! ip netns list >/dev/null 2>&1; then
    echo "== link-cut: skipped (needs root and ip netns; --no-netns to silence)"
  elif [ "$MAIN_RC" != 0 ]; then
    echo "== link-cut: skipped (phase main failed; it continues main's database)"
  elif ip netns list | grep -q '^dsb-' || ip link show dsbbr0 >/dev/null 2>&1; then
    echo "== link-cut: skipped (a netns cluster is already up on this machine: dsb-* namespaces)"
  else
    NRUN="$OUT/netns"
    rm -rf "$NRUN"; mkdir -p "$NRUN"
    # The same database: main's data directories and key (main's services are stopped).
    cp -a "$RUN/storage-0" "$NRUN/storage"; cp -a "$RUN/gtm" "$NRUN/gtm"
    cp "$RUN/cluster.key" "$NRUN/cluster.key"
    NETNS_UP=1
    if RUN_DIR="$NRUN" SKIP_BUILD=1 BIN="$BIN" scripts/netns-cluster.sh start 2 >"$OUT/netns-start.out" 2>&1; then
      cuts=$(python3 "$PY" cuts --seed "$SEED" --window "$CUT_WINDOW" --count "$NCUTS" \
        --nodes 2 --lease-ms "$LEASE_MS")
      mapfile -t CUTS <<<"$cuts"
      echo "== link-cut: netns cluster in $NRUN; cuts (at down node): ${CUTS[*]}"
      start_sampler link-cut "storage:$NRUN/storage:$NRUN/storage" "gtm:$NRUN/gtm:$NRUN/gtm.toml" \
        "compute-1:-:$NRUN/compute-1.toml" "compute-2:-:$NRUN/compute-2.toml" \
        "driver:-:$OUT/link-cut.events.jsonl"
      ( # The cuts are timed from the first measured second, as tpcc times its faults.
        ev="$OUT/link-cut.events.jsonl"
        until grep -q '"phase":"run"' "$ev" 2>/dev/null; do sleep 0.2; done
        t0=$(date +%s.%N)
        for c in "${CUTS[@]}"; do
          read -r at down node <<<"$c"
          sleep "$(python3 -c "import sys,time; print(max(0, $t0 + $at - time.time()))")"
          scripts/netns-cluster.sh link "$node" down >/dev/null
          printf '{"event":"fault","state":"struck","fault":"cut:%s@%s+%s","unix_s":%s}\n' "$node" "$at" "$down" "$(date +%s.%N)" >>"$OUT/cuts.jsonl"
          sleep "$down"
          scripts/netns-cluster.sh link "$node" up >/dev/null
          printf '{"event":"fault","state":"back","fault":"cut:%s@%s+%s","unix_s":%s}\n' "$node" "$at" "$down" "$(date +%s.%N)" >>"$OUT/cuts.jsonl"
        done ) &
      CUTTER=$!
      rm -f "$OUT/link-cut.acks" "$OUT/link-cut.json"
      LC_RC=0
      scripts/netns-cluster.sh exec client "$BIN/tpcc" \
        --connect 10.77.0.101:7500,10.77.0.102:7500 --token-file "$NRUN/client-tokens" \
        --tls-ca "$NRUN/certs/ca.pem" "${common[@]}" --skip-load --warmup 2 --duration "$CUT_WINDOW" \
        --json "$OUT/link-cut.json" --ack-log "$OUT/link-cut.acks" \
        --events "$OUT/link-cut.events.jsonl" >"$OUT/link-cut.out" 2>"$OUT/link-cut.err" || LC_RC=$?
      # Done by now unless tpcc ended early (then it may still wait for the window).
      kill "$CUTTER" 2>/dev/null || true
      wait "$CUTTER" 2>/dev/null || true
      CUTTER=""
      stop_sampler
      if [ "$LC_RC" = 0 ]; then echo "   tpcc ok"; else
        echo "   tpcc FAILED (exit $LC_RC); see $OUT/link-cut.err"; tail -n 5 "$OUT/link-cut.err" | sed 's/^/   /'
      fi
      PHASES+=(--phase "link-cut:$OUT/link-cut.events.jsonl:$OUT/link-cut.json:$LC_RC")
    else
      echo "   netns cluster failed to start; see $OUT/netns-start.out"
      PHASES+=(--phase "link-cut:-:-:1")
    fi
    RUN_DIR="$NRUN" scripts/netns-cluster.sh stop >/dev/null 2>&1 || true
    NETNS_UP=0
  fi
fi

echo
python3 "$PY" report --out "$OUT" "${PHASES[@]}" --cut-events "$OUT/cuts.jsonl" \
  --table-every "$TABLE_EVERY" --exclude-part storage:pages --exclude-part storage:slots "${PLATEAU[@]}" \
  --title "soak: seed $SEED, $([ "$QUICK" = 1 ] && echo quick || echo "$MINUTES min"), faults: ${FAULTS[*]}"
