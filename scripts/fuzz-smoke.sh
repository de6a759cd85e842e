#!/usr/bin/env bash
# A short run of every fuzz target (fuzz/, docs/security.md "Fuzzing"): each replays its
# committed corpus, then fuzzes for SECONDS (default 10; 0 skips the run). scripts/test.sh runs it.
#
#   scripts/fuzz-smoke.sh [SECONDS]
#
# Needs the nightly toolchain and cargo-fuzz; without them it says so loudly and exits 0 (a fresh
# machine may have only stable). Builds in fuzz/target (the first build takes minutes; later ones
# rebuild only what changed). New inputs and crash files go to a temporary directory, so the
# committed corpora never change; a failing target's directory is kept and named. Exits 1 when
# a target fails.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-10}"
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "SECONDS must be a number" >&2; exit 2; }
if [[ "$seconds" -eq 0 ]]; then
  printf '\n!!!! SKIPPED: the fuzz smoke run (0 seconds asked)\n\n'
  exit 0
fi
if ! cargo +nightly --version >/dev/null 2>&1 || ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  printf '\n!!!! SKIPPED: the fuzz smoke run needs the nightly toolchain and cargo-fuzz\n'
  printf '!!!! (rustup toolchain install nightly && cargo install cargo-fuzz)\n\n'
  exit 0
fi

# The fuzz crate has its own target dir and flags; the workspace's must not leak in.
unset CARGO_TARGET_DIR RUSTFLAGS
# No sanitizer: the code under test is safe Rust (overflow checks and debug assertions stay
# on), and huge allocations are caught by the targets' own allocator. 16 codegen units: a
# faster build, a slightly slower run.
flags=(--sanitizer none --codegen-units 16)
cargo +nightly fuzz build "${flags[@]}"

scratch="$(mktemp -d)"
for target in $(cargo +nightly fuzz list); do
  mkdir -p "$scratch/$target"
  log="$scratch/$target.log"
  if ! cargo +nightly fuzz run "${flags[@]}" "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$scratch/$target-" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    printf '\nfuzz target %s FAILED; its input and log are in %s\n' "$target" "$scratch"
    printf 'replay: cd fuzz && cargo +nightly fuzz run -s none %s <input>\n' "$target"
    exit 1
  fi
  printf '%-14s %9s executions, no failure\n' "$target" \
    "$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
done
rm -rf "$scratch"
