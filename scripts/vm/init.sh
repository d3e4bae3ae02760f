#!/bin/busybox sh
# /init of the nbd-mirror test guests (busybox, PID 1). Owns guest bring-up: pseudo filesystems, kernel
# modules (list written at image build time), the user-mode NIC (10.0.2.15, host at 10.0.2.2), then either
# runs /test/test.sh and reports `TEST: PASS` / `TEST: FAIL reason` (+ last dmesg lines) on the serial
# console, or (NBDM_MODE=shell) attaches /dev/nbd0 and gives an interactive shell. Always ends in poweroff -f.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root
umask 022

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /tmp /run /mnt
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
ln -sfn /run /var/run

[ -f /test/env ] && . /test/env
NBDM_MODE=${NBDM_MODE:-test}
DMESG_LINES=${NBDM_DMESG_LINES:-40}

halt_now() { sync; poweroff -f; sleep 5; echo o > /proc/sysrq-trigger; }

# The kernel log since /init started (boot noise is never the interesting part), last DMESG_LINES lines.
print_dmesg() {
  echo "TEST: dmesg-begin"
  dmesg | sed -n '/Run \/init as init process/,$p' | tail -n "$DMESG_LINES"
  echo "TEST: dmesg-end"
}

early_fail() {
  echo "TEST: FAIL $*"
  print_dmesg
  halt_now
}

echo "TEST: boot $(cut -d' ' -f1 /proc/uptime)s"
while read -r mod; do
  [ -n "$mod" ] || continue
  insmod "/lib/modules/$(uname -r)/$mod" || early_fail "insmod $mod"
done < /etc/nbdm/modules

# iface_by_mac MAC: the interface with that address (the GFS2 guests have two NICs; pick by MAC).
iface_by_mac() {
  for a in /sys/class/net/*/address; do
    [ "$(cat "$a")" = "$1" ] && { basename "$(dirname "$a")"; return 0; }
  done
  return 1
}

ip link set lo up
if [ -n "$NBDM_USER_MAC" ]; then NBDM_IFACE=$(iface_by_mac "$NBDM_USER_MAC") || early_fail "no NIC with MAC $NBDM_USER_MAC"; fi
NBDM_IFACE=${NBDM_IFACE:-eth0}
ip link set "$NBDM_IFACE" up || early_fail "no network interface $NBDM_IFACE"
ip addr add "${NBDM_GUEST_ADDR:-10.0.2.15/24}" dev "$NBDM_IFACE"
ip route add default via "${NBDM_NBD_HOST:-10.0.2.2}"
echo "TEST: ready $(cut -d' ' -f1 /proc/uptime)s"

case "$NBDM_MODE" in
  probe)
    echo "TEST: PASS"
    ;;
  shell)
    if [ -n "$NBDM_NBD_PORT" ]; then
      if nbd-client "$NBDM_NBD_HOST" "$NBDM_NBD_PORT" /dev/nbd0 -N "$NBDM_NBD_EXPORT" -b 4096; then
        echo "nbd-mirror guest: /dev/nbd0 is nbd://$NBDM_NBD_HOST:$NBDM_NBD_PORT/$NBDM_NBD_EXPORT" \
             "($(blockdev --getsize64 /dev/nbd0) bytes)"
      else
        echo "nbd-mirror guest: nbd-client failed; the shell starts anyway"
      fi
    fi
    echo "nbd-mirror guest: 'nbd-client -d /dev/nbd0' detaches; 'poweroff -f' (or Ctrl-A x) leaves"
    setsid cttyhack sh -l
    ;;
  *)
    rm -f /tmp/nbdm-step /tmp/nbdm-fail
    ( set -e; . /lib/nbdm/lib.sh; . /test/test.sh )
    rc=$?
    if [ "$rc" = 0 ] && [ ! -f /tmp/nbdm-fail ]; then
      echo "TEST: PASS"
    else
      if [ -f /tmp/nbdm-fail ]; then reason=$(cat /tmp/nbdm-fail)
      else reason="exit status $rc in step '$(cat /tmp/nbdm-step 2>/dev/null)'"; fi
      echo "TEST: FAIL $reason"
      print_dmesg
    fi
    ;;
esac
halt_now
