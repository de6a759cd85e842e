#!/usr/bin/env bash
# The README's test command: the one gate a reviewer would run. It changes no files.
#   formatting, clippy (warnings are errors), the whole test suite (with real PostgreSQL, see
#   scripts/pg-env.sh), a real Prometheus scraping a cluster (scripts/prometheus-check.sh), the deterministic simulation (RUSTFLAGS="--cfg madsim", own target
#   dir): its tests and a sweep of SIM_SEEDS (default 100) seeds, and a fuzz smoke run of
#   FUZZ_SECONDS (default 10) per target (skipped, loudly, without nightly and cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
export CARGO_TARGET_DIR="$target_dir"

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "tests"
# Real PostgreSQL for the shipping tests: DATABASE_URL, the local server, or a throwaway one.
source scripts/pg-env.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  # nextest does not run doctests.
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi

step "Prometheus against a live cluster: alert rules (promtool check/test), dashboard, metrics under load"
# Installs Debian's prometheus when missing; skips loudly when it cannot (under CI=true: fails).
scripts/prometheus-check.sh

step "deterministic simulation (RUSTFLAGS=--cfg madsim, release): build, its tests, a seed sweep"
# The whole workspace must build for the simulator; then the simulator's own tests (pinned
# regression seeds, determinism, planted bugs caught) and a sweep of SIM_SEEDS seeds (CI: 100).
export RUSTFLAGS="--cfg madsim"
CARGO_TARGET_DIR="${target_dir}-madsim" cargo build --release --workspace --all-targets
if cargo nextest --version >/dev/null 2>&1; then
  CARGO_TARGET_DIR="${target_dir}-madsim" cargo nextest run --release -p flashledger-sim --no-fail-fast
else
  CARGO_TARGET_DIR="${target_dir}-madsim" cargo test --release -p flashledger-sim
fi
CARGO_TARGET_DIR="$target_dir" scripts/sim-sweep.sh "${SIM_SEEDS:-100}"
unset RUSTFLAGS

step "fuzz smoke run (nightly, cargo-fuzz): every target over its corpus, then ${FUZZ_SECONDS:-10} s each"
scripts/fuzz-smoke.sh "${FUZZ_SECONDS:-10}"

step "all checks passed"
