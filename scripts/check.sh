#!/usr/bin/env bash
# The project's one check: formatting, lints (also with the rdma feature), and the test
# command from README.md. CI (.ci/run) calls this after installing system packages.
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
