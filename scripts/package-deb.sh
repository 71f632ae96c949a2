#!/usr/bin/env bash
# Builds the Debian package of a release build: target/debian/callvault_<version>_<arch>.deb.
# Needs cargo-deb (scripts/install-test-deps.sh installs the pinned version).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo deb -p callvault --locked "$@"
