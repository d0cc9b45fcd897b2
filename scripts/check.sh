#!/usr/bin/env bash
# The project's one check: formatting, lints (also with the rdma feature), the test
# command from README.md, and the quick soak. CI (.ci/run) calls this after installing
# system packages.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

# One clippy run for both: with the rdma feature on, common's rdma backend is type-checked
# (and rdma-sys's bindgen runs against libibverbs) along with everything else; only the
# two `cfg(not(feature = "rdma"))` refusals go unlinted, and the test build compiles them.
step "cargo clippy (workspace, all targets, common/rdma on)"
cargo clippy --workspace --all-targets --features common/rdma -- -D warnings

step "tests (README's test command)"
cargo test --workspace --profile ci

# A short soak: TPC-C on spawned processes with kill -9 / SIGSTOP of every service kind
# (the link-cut phase is left to full runs: it adds ~35 s), lost orders, checks and a
# plateau of disk and RSS (see the script's header). A fixed seed, so CI's fault
# schedule is the same every time (SEED=... to vary it).
step "soak test, quick (scripts/soak-test.sh --quick)"
# The binaries are the ones the test step just built (every service crate has
# integration tests, so `cargo test` builds its binaries too): building them again
# without the test-only features would cost about a minute of CI.
for b in tpcc storage-node gtm compute-node; do
  [ -x "target/ci/$b" ] || { echo "target/ci/$b missing after the tests" >&2; exit 1; }
done
soak_out=${SOAK_OUT:-target/soak-quick}
rm -rf "$soak_out"
PROFILE=ci SKIP_BUILD=1 SEED=${SEED:-1} scripts/soak-test.sh --quick --no-netns --out "$soak_out"
