# Shell helpers sourced by every guest test script (/test/test.sh runs under `set -e` after this file).
# Owns the marked console protocol: `TEST: step NAME` per step, failures recorded for /init to report.

# step NAME...: start a named step (the host times steps by these lines).
step() { echo "$*" > /tmp/nbdm-step; echo "TEST: step $*"; }

# fail REASON...: record why the test failed and stop it.
fail() { echo "$*" > /tmp/nbdm-fail; exit 1; }

# expect_eq WHAT ACTUAL EXPECTED
expect_eq() { [ "$2" = "$3" ] || fail "$1: got '$2', expected '$3'"; }

# nbd_attach DEV [nbd-client options...]: attach DEV to the test's export, wait until it has its size.
nbd_attach() {
  dev=$1; shift
  nbd-client "$NBDM_NBD_HOST" "$NBDM_NBD_PORT" "$dev" -N "$NBDM_NBD_EXPORT" "$@" || fail "nbd-client $dev failed"
  n=0
  while [ "$(blockdev --getsize64 "$dev" 2>/dev/null || echo 0)" = 0 ]; do
    n=$((n + 1)); [ "$n" -lt 50 ] || fail "$dev has no size after attach"; sleep 0.1
  done
}

# nbd_detach DEV: disconnect cleanly (sends NBD_CMD_DISC).
nbd_detach() { nbd-client -d "$1" || fail "nbd-client -d $1 failed"; }

# iface_by_mac MAC: the interface with that address (e.g. the cluster NIC of a GFS2 guest).
iface_by_mac() {
  for a in /sys/class/net/*/address; do
    [ "$(cat "$a")" = "$1" ] && { basename "$(dirname "$a")"; return 0; }
  done
  return 1
}
