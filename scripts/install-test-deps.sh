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
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
