#!/usr/bin/env bash
# The project's one test command (README "Run the tests"): installs what the
# tests need, then runs format, lint, the whole test suite and a bounded
# fuzzing pass. Idempotent: a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings (default build, then with the GPL-bound g729 feature)"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --workspace --all-targets --locked --features callvault/g729 -- -D warnings
echo "== cargo deny (licences, duplicates, sources)"
cargo deny --locked check licenses bans sources
echo "== cargo test (with G.729: the feature is off in the default build)"
cargo test --workspace --locked --features callvault/g729
echo "== Debian package (clean chroot, systemd-analyze, OPTIONS)"
bash scripts/test-package.sh
echo "== fuzz (bounded)"
bash scripts/fuzz.sh
echo "== all checks passed"
