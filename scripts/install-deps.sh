#!/usr/bin/env bash
# Installs the Debian packages the test suite drives (real clients, fault injection, kernel and cluster
# tests). Idempotent: only what is missing is installed. Needs root; without root it lists what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  nbdkit libnbd-bin qemu-utils fio fuse3 e2fsprogs util-linux file
  gnutls-bin iproute2 procps python3
  corosync libcpg-dev libcorosync-common-dev libqb-dev libquorum-dev
  qemu-system-x86 kmod cpio gfs2-utils
  chromium
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing Debian packages (run as root to install them): ${missing[*]}" >&2
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
