#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 20 s each) with
# cargo-fuzz on the nightly toolchain. The committed seeds in fuzz/corpus
# are read-only inputs; new inputs go to a throwaway directory.
# Without a nightly toolchain this says so and exits 0: the seed corpus is
# still replayed on stable by the normal test suite (tests/it/corpus.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${FUZZ_SECONDS:-20}"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "== fuzz: no nightly toolchain; skipping libFuzzer runs (corpus replay runs in cargo test)"
  exit 0
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd fuzz
cargo +nightly fuzz build -O
for t in sip_message sdp rs_metadata recording_body rtp_stream srtp_unprotect codec_decode; do
  echo "== fuzz $t (${SECONDS_PER_TARGET}s)"
  mkdir -p "$work/$t"
  cargo +nightly fuzz run -O "$t" "$work/$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
    | grep -E "^(Done|stat::number_of_executed_units)|ERROR|panicked|SUMMARY" || true
  if [ -d artifacts/"$t" ] && [ -n "$(ls -A artifacts/"$t" 2>/dev/null)" ]; then
    echo "fuzz target $t found a crash: fuzz/artifacts/$t" >&2
    exit 1
  fi
done
