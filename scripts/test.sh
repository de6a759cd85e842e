#!/usr/bin/env bash
# The README's test command: the one gate a reviewer would run. It changes no files.
#   formatting, clippy (warnings are errors), the whole test suite (with real PostgreSQL, see
#   scripts/pg-env.sh), and a build of the
#   workspace for the deterministic simulator (RUSTFLAGS="--cfg madsim", own target dir).
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

step "simulator build (RUSTFLAGS=--cfg madsim)"
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="${target_dir}-madsim" cargo build --workspace --all-targets

step "all checks passed"
