#!/usr/bin/env bash
# The Debian package, tried as an operator would on a clean machine: build
# it, install it with dpkg in a fresh Debian chroot (maintainer scripts
# run: user, data directory, conffile), check the unit with
# `systemd-analyze verify` (systemd cannot run as PID 1 here), start the
# installed node as its own user with the installed configuration (only the
# listen addresses moved to loopback) and expect 200 to OPTIONS; then purge
# and check the recordings stay. Needs root (chroot, mount); uses the debug
# build the tests made, packaged the same way a release is.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
work="target/package-test"
base="$work/base-bookworm.tar"
root="$work/root"
mkdir -p "$work"

echo "-- building the package"
cargo build -p callvault --bin callvault --locked
rm -f "$work"/*.deb
cargo deb -p callvault --profile dev --no-build --fast -o "$work/" 2>&1 | grep -v "dev profile\|debug symbols\|custom profiles" || true
deb=$(ls "$work"/callvault_*.deb)
dpkg-deb -c "$deb" | awk '{print $6}' > "$work/contents"
for f in ./usr/bin/callvault ./usr/lib/systemd/system/callvault.service ./usr/lib/sysctl.d/60-callvault.conf \
         ./etc/callvault/callvault.toml ./usr/share/doc/callvault/copyright ./usr/share/callvault/prometheus/callvault-alerts.yml; do
    grep -qx "$f" "$work/contents" || { echo "package lacks $f"; exit 1; }
done

if [ ! -f "$base" ]; then
    echo "-- a clean Debian bookworm (debootstrap, once per machine)"
    mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    tmp="$work/debootstrap"
    $SUDO rm -rf "$tmp"
    $SUDO debootstrap --variant=minbase --include=systemd,procps bookworm "$tmp" "${mirror:-http://deb.debian.org/debian}" >"$work/debootstrap.log"
    $SUDO tar -C "$tmp" -cf "$base" .
    $SUDO rm -rf "$tmp"
fi

cleanup() {
    if [ -n "${pid:-}" ]; then $SUDO kill -9 "$pid" 2>/dev/null || true; fi
    $SUDO umount "$root/proc" 2>/dev/null || true
    $SUDO rm -rf "$root"
}
trap cleanup EXIT
$SUDO rm -rf "$root"
mkdir -p "$root"
$SUDO tar -C "$root" -xf "$base"

echo "-- dpkg -i in the chroot"
$SUDO cp "$deb" "$root/tmp/callvault.deb"
$SUDO chroot "$root" dpkg -i /tmp/callvault.deb
$SUDO chroot "$root" getent passwd callvault >/dev/null || { echo "no callvault user"; exit 1; }
[ "$($SUDO chroot "$root" stat -c '%U %a' /var/lib/callvault)" = "callvault 750" ] || { echo "data directory owner/mode"; exit 1; }
$SUDO chroot "$root" dpkg-query --showformat='${Conffiles}\n' --show callvault | grep -q /etc/callvault/callvault.toml \
    || { echo "configuration is not a conffile"; exit 1; }

echo "-- systemd-analyze verify"
$SUDO chroot "$root" systemd-analyze verify /usr/lib/systemd/system/callvault.service
# Hardening: systemd's exposure score (0 = locked down, 10 = none) at most 2.5.
$SUDO chroot "$root" systemd-analyze security --offline=true --threshold=25 /usr/lib/systemd/system/callvault.service \
    | tail -1

echo "-- the installed node answers OPTIONS"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
http=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
$SUDO mount -t proc proc "$root/proc"
$SUDO chroot --userspec=callvault:callvault "$root" /usr/bin/callvault serve --config /etc/callvault/callvault.toml \
    --sip-udp "127.0.0.1:$port" --sip-tcp "127.0.0.1:$port" --http "127.0.0.1:$http" --media-ports 41000-41099 \
    >"$work/node.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
    [ -f "$root/var/lib/callvault/listen.json" ] && break
    sleep 0.1
done
[ -f "$root/var/lib/callvault/listen.json" ] || { cat "$work/node.log"; echo "the installed node did not start"; exit 1; }
answer=$(python3 - "$port" <<'PY'
import socket, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
s.settimeout(5)
me = s.getsockname()[1]
msg = (f"OPTIONS sip:rec@127.0.0.1:{port} SIP/2.0\r\n"
       f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK-pkg-1\r\n"
       "Max-Forwards: 70\r\nFrom: <sip:test@127.0.0.1>;tag=pkg\r\nTo: <sip:rec@127.0.0.1>\r\n"
       "Call-ID: package-test@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
s.sendto(msg.encode(), ("127.0.0.1", port))
print(s.recv(65535).decode(errors="replace").split("\r\n")[0])
PY
)
echo "   $answer"
[ "$answer" = "SIP/2.0 200 OK" ] || { cat "$work/node.log"; exit 1; }
$SUDO kill -TERM "$pid"
wait "$pid" || true
pid=""
$SUDO umount "$root/proc"

echo "-- purge keeps the recordings"
$SUDO chroot "$root" dpkg --purge callvault
$SUDO chroot "$root" getent passwd callvault >/dev/null && { echo "user left after purge"; exit 1; }
[ -d "$root/var/lib/callvault" ] || { echo "purge removed the data directory"; exit 1; }
echo "-- package OK: $(basename "$deb")"
