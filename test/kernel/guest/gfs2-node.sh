# Guest side of the two-node GFS2 test: one script for both nodes (NODE_ID 1 or 2). Node 1 makes the
# filesystem; both mount it; each writes its own directory (/mnt/nodeN) and files in a shared directory
# (/mnt/shared, created by both at once, plus one file both write at interleaved offsets), records sha256 sums in a
# manifest on the filesystem, then verifies the other node's files through its own mount. The nodes signal
# each other over the private cluster link with busybox nc. Messages, in order (each one: sender -> waiter):
#   1 -> 2 mkfs-done;  2 -> 1 mounted;  (both write)  2 -> 1 written;  1 -> 2 written;  (both verify)
#   2 -> 1 verified;  1 -> 2 verified;  both unmount and detach.
# FAILOVER=1 (test 5): after 2 -> 1 verified, node 2 keeps writing and prints `step die` (the host kills it
# and its nbd-mirror node); node 1 waits for corosync to drop node 2, then writes and re-reads (DLM recovery,
# journal replay of jid 1), unmounts and detaches.
# env: NODE_ID, CLUSTER_MAC, BIG_FILE_KIB, SMALL_FILES, SHARED_BLOCKS, COROSYNC_TOKEN_MS, KNET_PING_TIMEOUT_MS,
#      SIGNAL_WAIT_S (how long a node waits for its peer at each rendezvous), FAILOVER, BUSY_S
peer=$((3 - NODE_ID))
my_ip=192.168.100.$NODE_ID
peer_ip=192.168.100.$peer
SIGNAL_PORT=7000
SIGNAL_WAIT_S=${SIGNAL_WAIT_S:-240}

# wait_for MESSAGE: block until the peer sends MESSAGE (one line) to our signal port.
wait_for() {
  echo "WAIT: $1"
  while :; do
    line=$(timeout "$SIGNAL_WAIT_S" nc -l -p "$SIGNAL_PORT") || fail "no '$1' from node $peer within ${SIGNAL_WAIT_S} s"
    case "$line" in "$1"*) return 0 ;; esac
  done
}
# block K: the 4 KiB written at block K of shared/blocks (by node K % 2 + 1).
block() { yes "node$(( $1 % 2 + 1 )) block $1" | head -c 4096; }

# send MESSAGE: deliver MESSAGE to the peer's signal port (retries until it listens).
send() {
  n=0
  until echo "$1" | nc "$peer_ip" "$SIGNAL_PORT" 2>/dev/null; do
    n=$((n + 1)); [ "$n" -lt $((SIGNAL_WAIT_S * 10)) ] || fail "node $peer never took '$1'"; sleep 0.1
  done
  echo "SENT: $1"
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
# two_node is quorate alone; wait until the peer is a member too (the DLM lockspace needs both).
n=0
until corosync-quorumtool -s 2>/dev/null | grep -q 'Total votes: *2'; do
  n=$((n + 1)); [ "$n" -lt $((SIGNAL_WAIT_S * 10)) ] || { corosync-quorumtool -s; cat /tmp/corosync.log; fail "peer never joined the membership"; }; sleep 0.1
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
  n=$((n + 1)); [ "$n" -lt 600 ] || { dlm_tool status; cat /tmp/dlm.log; fail "dlm comms not configured"; }; sleep 0.1
done

if [ "$NODE_ID" = 1 ]; then
  step mkfs
  mkfs.gfs2 -O -p lock_dlm -t nbdm:fs -j 2 -J 16 /dev/nbd0 > /tmp/mkfs.log 2>&1 || { cat /tmp/mkfs.log; fail "mkfs.gfs2"; }
  send mkfs-done
  step mount
  mount -t gfs2 /dev/nbd0 /mnt || fail "mount -t gfs2 on node 1"
  wait_for mounted
else
  step wait-mkfs
  wait_for mkfs-done
  step mount
  mount -t gfs2 /dev/nbd0 /mnt || fail "mount -t gfs2 on node 2"
  send mounted
fi

step write
# Both nodes at once: mkdir -p of the shared directory races on purpose (GFS2 + DLM must settle it).
mkdir -p "/mnt/node$NODE_ID" /mnt/shared
i=0
while [ "$i" -lt "${SMALL_FILES:-6}" ]; do
  i=$((i + 1))
  dd if=/dev/urandom of="/mnt/node$NODE_ID/f$i" bs=4k count=$(( (i * 13 + NODE_ID * 7) % 32 + 1 )) conv=fsync 2>/dev/null
  dd if=/dev/urandom of="/mnt/shared/n$NODE_ID-f$i" bs=512 count=$(( (i + NODE_ID) % 9 + 1 )) conv=fsync 2>/dev/null
done
# One shared file written by both nodes at once, 4 KiB blocks interleaved (node 1 the even ones, node 2 the
# odd ones, each past the other's end of file): the inode's glock moves between the nodes on every write.
# (Not O_APPEND: GFS2 drops the glock between reading i_size and writing, so concurrent appends from two
# nodes can overwrite each other -- fs/gfs2/file.c gfs2_file_write_iter.)
k=$((NODE_ID - 1))
while [ "$k" -lt "${SHARED_BLOCKS:-16}" ]; do
  block "$k" > /tmp/blk
  dd if=/tmp/blk of=/mnt/shared/blocks bs=4096 seek="$k" conv=notrunc,fsync 2>/dev/null
  k=$((k + 2))
done
dd if=/dev/urandom of="/mnt/node$NODE_ID/big" bs=64k count=$(( ${BIG_FILE_KIB:-4096} / 64 )) conv=fsync 2>/dev/null
cd /mnt
find "node$NODE_ID" shared -type f ! -name blocks | grep -v "^shared/n$peer-" | sort | xargs sha256sum > "/tmp/sums$NODE_ID"
cd /
cp "/tmp/sums$NODE_ID" "/mnt/node$NODE_ID.sums"
sync
sed 's/^/SUM: /' "/tmp/sums$NODE_ID"
echo "FILES: $(wc -l < "/tmp/sums$NODE_ID")"

if [ "$NODE_ID" = 1 ]; then wait_for written; send written; else send written; wait_for written; fi

step verify
cd /mnt
# The peer's manifest as the peer wrote it, then every file it names, read through this node's mount.
[ -s "node$peer.sums" ] || fail "manifest of node $peer missing or empty"
sha256sum -c -s "node$peer.sums" || { sha256sum -c "node$peer.sums"; fail "node $peer's files differ on node $NODE_ID"; }
echo "VERIFIED: $(wc -l < "node$peer.sums") files of node $peer"
k=0
while [ "$k" -lt "${SHARED_BLOCKS:-16}" ]; do
  got=$(dd if=shared/blocks bs=4096 skip="$k" count=1 2>/dev/null | sha256sum | cut -d' ' -f1)
  expect_eq "block $k of shared/blocks (written by node $((k % 2 + 1)))" "$got" "$(block "$k" | sha256sum | cut -d' ' -f1)"
  k=$((k + 1))
done
expect_eq "size of shared/blocks" "$(stat -c %s shared/blocks)" "$(( ${SHARED_BLOCKS:-16} * 4096 ))"
expect_eq "files in shared/" "$(ls shared | wc -l)" "$(( ${SMALL_FILES:-6} * 2 + 1 ))"
cd /

if [ "${FAILOVER:-0}" = 1 ]; then
  # Test 5: node 2 dies (the host SIGKILLs its qemu and its nbd-mirror node together) while writing;
  # node 1 must see it leave, let the DLM recover and replay node 2's journal, and go on working.
  if [ "$NODE_ID" = 2 ]; then
    send verified
    step doomed
    ( i=0; while :; do i=$((i + 1)); dd if=/dev/urandom of="/mnt/node2/busy$((i % 4))" bs=64k count=4 conv=fsync 2>/dev/null; done ) &
    sleep "${BUSY_S:-3}"
    step die
    echo "TEST: PASS"
    sleep 600
  fi
  wait_for verified
  step peer-gone
  n=0
  until corosync-quorumtool -s 2>/dev/null | grep -q 'Total votes: *1'; do
    n=$((n + 1)); [ "$n" -lt $((SIGNAL_WAIT_S * 10)) ] || { corosync-quorumtool -s; fail "node 2 never left the membership"; }; sleep 0.1
  done
  step recovery
  # Any glock node 2 held blocks until the DLM has recovered and node 2's journal is replayed.
  mkdir -p /mnt/node1/after
  i=0
  while [ "$i" -lt 4 ]; do
    i=$((i + 1))
    dd if=/dev/urandom of="/mnt/node1/after/f$i" bs=64k count=4 conv=fsync 2>/dev/null
  done
  ls -l /mnt/node2 > /dev/null
  cd /mnt
  sha256sum -c -s node2.sums || { sha256sum -c node2.sums; fail "node 2's files differ after its death"; }
  find node1/after -type f | sort | xargs sha256sum > /tmp/after
  sha256sum -c -s /tmp/after || fail "node 1's new files unreadable"
  cd /
  echo "RECOVERY: $(dmesg | grep -c 'jid=1: Done' || true) journal replays of jid 1"
  dmesg | grep -E 'jid=1|dlm: fs: (remove member|dlm_recover [0-9]+ generation)' | tail -n 6
  step leave
  umount /mnt || fail "umount on node 1"
  nbd_detach /dev/nbd0
  exit 0
fi

if [ "$NODE_ID" = 1 ]; then wait_for verified; send verified; else send verified; wait_for verified; fi

step leave
umount /mnt || fail "umount on node $NODE_ID"
nbd_detach /dev/nbd0
