#!/usr/bin/env bash
# TPC-C side by side: the engine (embedded cluster) and PostgreSQL 15, with the same
# driver, the same seed (so the same data and the same transaction inputs), the same
# warehouses, terminals and duration, and the twelve consistency checks on both.
#
#   scripts/bench-vs-postgres.sh [--warehouses N] [--duration S] [--nodes N]
#                                [--multi] [--locking-compare] [--seed N] [--quick]
#                                [--json FILE]
#
# --multi: also runs the engine with 2 compute nodes, partitioned and random affinity
# (the figures README's TPC-C table gives), all against the same PostgreSQL run.
# --locking-compare: every run twice, with plain reads (the earlier mode: snapshot
# reads, first updater wins; PostgreSQL at REPEATABLE READ) and with locking reads (the
# default: SELECT ... FOR UPDATE semantics; PostgreSQL at READ COMMITTED). The summary
# gives the most retryable aborts per commit of any transaction type and whether all
# twelve checks passed.
#
# PostgreSQL 15 is installed from Debian's packages if missing. A private instance
# runs in a temporary directory, on a Unix socket only, and is stopped (and its
# directory removed) on exit. Its settings suit a 2-core, 24 GiB machine; commits are
# durable as ours are (fsync on, synchronous_commit on: the WAL is flushed at commit).
# Both sides get the same log budget before dirty pages must be written out:
# PostgreSQL's max_wal_size and the engine's redo_retain (--redo-retain-mb), WAL_MB.
#
# Prints both reports and tpmC(ours) / tpmC(PostgreSQL). With --json FILE, writes one
# JSON line per target ({"target": "engine"|"postgres", ...the report}) and a last
# line with the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."

warehouses=2
duration=30
nodes=1
seed=""
# The log budget of both sides, MiB (see above).
WAL_MB=${WAL_MB:-8192}
quick=0
multi=0
compare=0
json=""
usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --warehouses) warehouses="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --multi) multi=1; shift ;;
    --locking-compare) compare=1; shift ;;
    --json) json="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done
scale=()
if [ "$quick" = 1 ]; then
  warehouses=1
  duration=10
  scale=(--scale-items 10000)
  echo "WARNING: --quick loads 10,000 items instead of 100,000: NOT a spec-compliant database" >&2
fi
[ -n "$seed" ] || seed=$(( (RANDOM << 30) ^ (RANDOM << 15) ^ RANDOM ))

step() { printf '\n==> %s\n' "$*" >&2; }

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# --- PostgreSQL 15 -----------------------------------------------------------------
PGBIN=/usr/lib/postgresql/15/bin
if [ ! -x "$PGBIN/pg_ctl" ]; then
  step "installing PostgreSQL 15 from Debian packages"
  # Only the binaries are wanted: no system-wide cluster.
  if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    $SUDO mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null \
    || $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  [ -x "$PGBIN/pg_ctl" ] || { echo "PostgreSQL 15 is not in $PGBIN after installing" >&2; exit 1; }
fi

if ! command -v jq >/dev/null; then
  step "installing jq"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null \
    || { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null; }
fi

# initdb refuses to run as root: the instance belongs to `postgres` then.
as_pg() { "$@"; }
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
  as_pg() { runuser -u postgres -- "$@"; }
fi

dir=$(mktemp -d /tmp/tpcc-pg.XXXXXX)
chmod 755 "$dir"
[ "$(id -u)" = 0 ] && chown postgres "$dir"
data="$dir/data"
stop_pg() {
  if [ -f "$data/postmaster.pid" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}
trap stop_pg EXIT
trap 'exit 130' INT TERM

step "starting a private PostgreSQL 15 in $dir"
as_pg "$PGBIN/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C -N >/dev/null
cat >>"$data/postgresql.conf" <<EOF

# --- tpcc side-by-side (2 cores, 24 GiB) ---
listen_addresses = ''
unix_socket_directories = '$dir'
max_connections = 200
shared_buffers = 1GB
effective_cache_size = 8GB
work_mem = 16MB
maintenance_work_mem = 512MB
wal_buffers = 16MB
max_wal_size = ${WAL_MB}MB
min_wal_size = 1GB
checkpoint_timeout = 15min
checkpoint_completion_target = 0.9
random_page_cost = 1.1
# Durable commits, as the engine's (redo forced at commit).
fsync = on
synchronous_commit = on
full_page_writes = on
max_parallel_workers_per_gather = 0
EOF
as_pg "$PGBIN/pg_ctl" -D "$data" -l "$dir/postgres.log" -w start >/dev/null \
  || { cat "$dir/postgres.log" >&2; exit 1; }
as_pg "$PGBIN/createdb" -h "$dir" -U postgres tpcc
url="postgres://postgres@/tpcc?host=$dir"
version=$(as_pg "$PGBIN/psql" -h "$dir" -U postgres -d tpcc -Atc 'SHOW server_version')
echo "PostgreSQL $version on $dir" >&2

# --- the harness ---------------------------------------------------------------------
step "building tpcc (release)"
cargo build --release -q -p tpcc
bin="${CARGO_TARGET_DIR:-target}/release/tpcc"

common=(--warehouses "$warehouses" --duration "$duration" --seed "$seed" --check "${scale[@]}")
# The engine's side of the same log budget (PostgreSQL's is max_wal_size above).
ours_only=(--redo-retain-mb "$WAL_MB")

# Engine runs: label, then tpcc options.
runs=("ours:--nodes $nodes")
if [ "$multi" = 1 ]; then
  runs=("ours-1-node:--nodes 1" "ours-2-nodes-partitioned:--nodes 2 --affinity partitioned"
        "ours-2-nodes-random:--nodes 2 --affinity random")
fi
modes=(":")
[ "$compare" = 1 ] && modes=("-plain:--locking plain" "-for-update:--locking for-update")
set +e
ours_rc=0
labels=()
for m in "${modes[@]}"; do
  for r in "${runs[@]}"; do
    label=${r%%:*}${m%%:*}
    read -r -a opts <<<"${r#*:} ${m#*:}"
    labels+=("$label")
    step "$label: tpcc ${common[*]} ${ours_only[*]} ${opts[*]}"
    "$bin" "${common[@]}" "${ours_only[@]}" "${opts[@]}" --json "$dir/$label.json"
    rc=$?; [ "$rc" = 0 ] || ours_rc=$rc
  done
done
ours_json="$dir/${labels[0]}.json"
pg_labels=()
pg_rc=0
for m in "${modes[@]}"; do
  label=postgres${m%%:*}
  read -r -a opts <<<"${m#*:}"
  pg_labels+=("$label")
  step "$label: tpcc --target $url ${common[*]} ${opts[*]}"
  "$bin" "${common[@]}" "${opts[@]}" --target "$url" --json "$dir/$label.json"
  rc=$?; [ "$rc" = 0 ] || pg_rc=$rc
done
pg_json="$dir/${pg_labels[0]}.json"
set -e

as_pg "$PGBIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null

[ -s "$ours_json" ] || { echo "ours: no report (exit $ours_rc)" >&2; exit 1; }
[ -s "$pg_json" ] || { echo "PostgreSQL: no report (exit $pg_rc)" >&2; exit 1; }
ours=$(jq -r '.tpmC' "$ours_json")
pg=$(jq -r '.tpmC' "$pg_json")
ratio=$(awk -v a="$ours" -v b="$pg" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "inf" }')
spec=$([ "$quick" = 1 ] && echo false || echo true)

step "summary"
printf '%-38s %10s %8s %14s %8s %6s %14s  %s\n' target tpmC txn/s 'NO p50/p99 ms' 'ab/com' checks \
  'vs PostgreSQL' 'isolation / locking'
for label in "${labels[@]}" "${pg_labels[@]}"; do
  f="$dir/$label.json"
  [ -s "$f" ] || { printf '%-38s %10s\n' "$label" "no report"; continue; }
  t=$(jq -r '.tpmC' "$f")
  # The PostgreSQL run of the same mode.
  mode=${label#ours}; mode=${mode#-1-node}; mode=${mode#-2-nodes-partitioned}
  mode=${mode#-2-nodes-random}; [ "${label#postgres}" != "$label" ] && mode=${label#postgres}
  pgf="$dir/postgres$mode.json"
  pgt=$([ -s "$pgf" ] && jq -r '.tpmC' "$pgf" || echo 0)
  printf '%-38s %10.0f %8.1f %14s %8.3f %6s %14s  %s\n' "$label" "$t" "$(jq -r '.txn_per_s' "$f")" \
    "$(jq -r '"\(.transactions.new_order.p50_ms | floor)/\(.transactions.new_order.p99_ms | floor)"' "$f")" \
    "$(jq -r '[.transactions[] | .aborts_per_commit] | max' "$f")" \
    "$(jq -r 'if ([.checks[] | (.passed == true or .passed == "not_applicable")] | all) and (.checks | length) == 12 then "12/12" else "FAIL" end' "$f")" \
    "$(awk -v a="$t" -v b="$pgt" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "-" }')" \
    "$(jq -r '"\(.isolation) / \(.locking)"' "$f")"
done
printf 'warehouses %s, duration %ss, seed %s, PostgreSQL %s%s\n' \
  "$warehouses" "$duration" "$seed" "$version" \
  "$([ "$quick" = 1 ] && echo ', NOT SPEC (10,000 items)')"
printf 'tpmC ratio (%s / %s): %s\n' "${labels[0]}" "${pg_labels[0]}" "$ratio"

if [ -n "$json" ]; then
  {
    for label in "${labels[@]}"; do
      if [ -s "$dir/$label.json" ]; then
        jq -c --arg l "$label" '{target: "engine", label: $l} + .' "$dir/$label.json"
      fi
    done
    for label in "${pg_labels[@]}"; do
      if [ -s "$dir/$label.json" ]; then
        jq -c --arg l "$label" --arg v "$version" \
          '{target: "postgres", label: $l, server_version: $v} + .' "$dir/$label.json"
      fi
    done
    jq -nc --argjson a "$ours" --argjson b "$pg" --arg r "$ratio" \
      --argjson w "$warehouses" --argjson d "$duration" --argjson n "$nodes" \
      --argjson seed "$seed" --argjson spec "$spec" --arg v "$version" \
      '{ratio_tpmC: ($r | tonumber? // null), engine_tpmC: $a, postgres_tpmC: $b,
        warehouses: $w, duration_s: $d, nodes: $n, seed: $seed, spec_compliant: $spec,
        postgres_version: $v}'
  } >"$json"
  echo "wrote $json" >&2
fi

if [ "$ours_rc" != 0 ] || [ "$pg_rc" != 0 ]; then
  echo "FAILED: ours exited $ours_rc, PostgreSQL exited $pg_rc (see above)" >&2
  exit 1
fi
