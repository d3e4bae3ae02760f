# Guest side of the two-node GFS2 test: one script for both nodes (NODE_ID 1 or 2). Node 1 makes the
# filesystem; the nodes signal each other over the private cluster link with busybox nc.
# env: NODE_ID, CLUSTER_MAC, DATA_MIB
peer=$((3 - NODE_ID))
my_ip=192.168.100.$NODE_ID
peer_ip=192.168.100.$peer
SIGNAL_PORT=7000

# wait_for MESSAGE: block until the peer sends MESSAGE (one line) to our signal port; prints the rest.
wait_for() {
  while :; do
    line=$(nc -l -p "$SIGNAL_PORT") || fail "nc -l failed waiting for $1"
    case "$line" in "$1"*) echo "${line#"$1"}"; return 0 ;; esac
  done
}
# send MESSAGE: deliver MESSAGE to the peer's signal port (retries until it listens).
send() {
  n=0
  until echo "$1" | nc "$peer_ip" "$SIGNAL_PORT" 2>/dev/null; do
    n=$((n + 1)); [ "$n" -lt 600 ] || fail "peer never took '$1'"; sleep 0.1
  done
}

step cluster-net
cif=$(iface_by_mac "$CLUSTER_MAC") || fail "no cluster NIC $CLUSTER_MAC"
ip link set "$cif" up
ip addr add "$my_ip/24" dev "$cif"

step attach
nbd_attach /dev/nbd0 -b 4096

step corosync
# Token and knet timeouts: 1000 ms gives ~1.5 s membership on an idle host, but TCG guests on a loaded
# 2-core host stall for longer than that and the membership churns for a minute; 3000/2000 stays stable.
cat > /etc/corosync/corosync.conf <<EOC
totem {
version: 2
cluster_name: nbdm
transport: knet
token: ${COROSYNC_TOKEN_MS:-3000}
join: 50
crypto_cipher: none
crypto_hash: none
interface {
linknumber: 0
knet_ping_interval: 200
knet_ping_timeout: ${KNET_PING_TIMEOUT_MS:-2000}
knet_pong_count: 1
}
}
nodelist {
node {
ring0_addr: 192.168.100.1
nodeid: 1
name: n1
}
node {
ring0_addr: 192.168.100.2
nodeid: 2
name: n2
}
}
quorum {
provider: corosync_votequorum
two_node: 1
}
logging {
to_stderr: yes
to_syslog: no
to_logfile: no
timestamp: off
}
EOC
corosync > /tmp/corosync.log 2>&1 || { cat /tmp/corosync.log; fail "corosync did not start"; }
n=0
until corosync-quorumtool -s 2>/dev/null | grep -q 'Quorate: *Yes'; do
  n=$((n + 1)); [ "$n" -lt 600 ] || { corosync-quorumtool -s; cat /tmp/corosync.log; fail "no quorum"; }; sleep 0.1
done
echo "MEMBERSHIPS: $(grep -c 'A new membership' /tmp/corosync.log)"

step dlm
mount -t configfs none /sys/kernel/config
mkdir -p /dev/misc
for d in dlm-control dlm-monitor dlm_plock; do [ -e "/dev/$d" ] && ln -sf "/dev/$d" "/dev/misc/$d"; done
printf 'enable_fencing=0\nenable_startup_fencing=0\n' > /etc/dlm/dlm.conf
dlm_controld > /tmp/dlm.log 2>&1 || { cat /tmp/dlm.log; fail "dlm_controld did not start"; }
n=0
until [ -e "/sys/kernel/config/dlm/cluster/comms/$NODE_ID/local" ]; do
  n=$((n + 1)); [ "$n" -lt 300 ] || { dlm_tool status; cat /tmp/dlm.log; fail "dlm comms not configured"; }; sleep 0.1
done

if [ "$NODE_ID" = 1 ]; then
  step mkfs
  mkfs.gfs2 -O -p lock_dlm -t nbdm:fs -j 2 -J 16 /dev/nbd0 > /tmp/mkfs.log 2>&1 || { cat /tmp/mkfs.log; fail "mkfs.gfs2"; }
  send mkfs-done
  step mount
  mount -t gfs2 /dev/nbd0 /mnt
  wait_for mounted > /dev/null
  step write
  dd if=/dev/urandom of=/mnt/data bs=64k count=$(( ${DATA_MIB:-8} * 16 )) conv=fsync 2>/dev/null
  sum=$(sha256sum /mnt/data | cut -d' ' -f1)
  echo "SUM: $sum"
  send "written $sum"
  step leave
  wait_for verified > /dev/null
else
  step wait-mkfs
  wait_for mkfs-done > /dev/null
  step mount
  mount -t gfs2 /dev/nbd0 /mnt
  send mounted
  step verify
  want=$(wait_for written | tr -d ' ')
  got=$(sha256sum /mnt/data | cut -d' ' -f1)
  echo "SUM: $got"
  expect_eq "sha256 of the file node 1 wrote" "$got" "$want"
  step leave
fi
umount /mnt
[ "$NODE_ID" = 2 ] && send verified
nbd_detach /dev/nbd0
