#!/usr/bin/env bash
# The project's one check: formatting, lints (also with the rdma feature), the test
# command from README.md, and the quick soak. CI (.ci/run) calls this after installing
# system packages.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (workspace, all targets)"
cargo clippy --workspace --all-targets -- -D warnings

# Type-checks the rdma backend (and runs rdma-sys's bindgen against libibverbs) without a
# second debug build of its dependencies.
step "cargo clippy -p common --features rdma"
cargo clippy -p common --features rdma --all-targets -- -D warnings

step "tests (README's test command)"
cargo test --workspace --release

# A short soak: TPC-C on spawned processes with kill -9 / SIGSTOP of every service kind
# (the link-cut phase is left to full runs: it adds ~35 s), lost orders, checks and a
# plateau of disk and RSS (see the script's header). A fixed seed, so CI's fault
# schedule is the same every time (SEED=... to vary it).
step "soak test, quick (scripts/soak-test.sh --quick)"
# The binaries are the ones the test step just built (every service crate has
# integration tests, so `cargo test` builds its binaries too): building them again
# without the test-only features would cost about a minute of CI.
for b in tpcc storage-node gtm compute-node; do
  [ -x "target/release/$b" ] || { echo "target/release/$b missing after the tests" >&2; exit 1; }
done
soak_out=${SOAK_OUT:-target/soak-quick}
rm -rf "$soak_out"
SKIP_BUILD=1 SEED=${SEED:-1} scripts/soak-test.sh --quick --no-netns --out "$soak_out"
