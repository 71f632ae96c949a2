#!/usr/bin/env bash
# Installs the third-party programs the tests drive (idempotently).
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
command -v sipp >/dev/null 2>&1 || need_apt+=(sip-tester)
# Certificates for the cluster TLS test.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# promtool checks the shipped alert rules (tests/it/alerting.rs).
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# The Debian package is installed in a fresh chroot (scripts/test-package.sh).
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
command -v dpkg-deb >/dev/null 2>&1 || need_apt+=(dpkg)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# The web UI is tested in a real browser, driven over WebDriver (tests/it/browser.rs).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
# A third-party SIP UA as the recording source (Opus, G.722, SRTP, TLS).
command -v baresip >/dev/null 2>&1 || need_apt+=(baresip-core)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# Cargo tools, pinned: the package builder and the dependency policy check.
cargo_tool() {
  local bin=$1 crate=$2 version=$3
  if ! "$bin" --version 2>/dev/null | grep -q "$version"; then
    echo "== cargo install $crate $version"
    cargo install "$crate" --version "$version" --locked --quiet
  fi
}
cargo_tool cargo-deb cargo-deb 3.8.0
cargo_tool cargo-deny cargo-deny 0.20.2
