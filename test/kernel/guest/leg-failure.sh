# Guest side of the leg-failure test (runs under `set -e` with /lib/nbdm/lib.sh sourced): ext4 on a 2-leg
# mirror whose second leg dies while the guest writes. The kernel client must never see it.
# 1. write the first half of a tree of files (fsync each);
# 2. start a writer that keeps O_DIRECT writes in flight (files busy/b0..b7, rewritten in turn; it reports
#    its longest round, the kernel's view of the hold), then ask the
#    host to fail the leg: `fail-leg` to 10.0.2.2:ARM_PORT; the host arms nbdkit's error filter and answers
#    `armed` only after that, so the failure lands between the two halves, with writes in flight;
# 3. write the second half and the big file (held by the server until its repair reloads the table),
#    stop the writer (its writes must all have succeeded);
# 4. the kernel log must hold no I/O error and ext4 must still be mounted read-write (the host also checks
#    the KMSG lines printed here); then checksum, umount, remount, verify, e2fsck -fn, detach as in
#    ext4-roundtrip.sh.
# env: ARM_PORT, ARM_WAIT_S, REQUEST_TIMEOUT_S, TREE_DIRS, TREE_FILES_PER_DIR, BIG_FILE_KIB, BUSY_FILE_KIB,
# BUSY_ROUNDS_MAX.
step attach
nbd_attach /dev/nbd0 -b 4096 -t "${REQUEST_TIMEOUT_S:-30}"
echo "SIZE: $(blockdev --getsize64 /dev/nbd0)"

step mkfs
mkfs.ext4 -F -q -b 4096 /dev/nbd0

step mount
mount -t ext4 /dev/nbd0 /mnt

dirs=${TREE_DIRS:-4}
half=$(( dirs / 2 ))
# write_dirs FROM TO: files of 4 KiB .. 256 KiB in nested directories d FROM..TO, each written with fsync.
write_dirs() {
  for d in $(seq "$1" "$2"); do
    mkdir -p "/mnt/tree/d$d/sub"
    for n in $(seq 1 "${TREE_FILES_PER_DIR:-5}"); do
      i=$(( d * 100 + n ))
      dd if=/dev/urandom of="/mnt/tree/d$d/f$n" bs=4k count=$(( (i * 37) % 64 + 1 )) conv=fsync 2>/dev/null
      dd if=/dev/urandom of="/mnt/tree/d$d/sub/s$n" bs=512 count=$(( i % 7 + 1 )) conv=fsync 2>/dev/null
    done
  done
}

step write-before
write_dirs 1 "$half"

step writer-start
mkdir -p /mnt/tree/busy
rm -f /tmp/busy.stop /tmp/busy.rc /tmp/busy.rounds
# centiseconds since boot (/proc/uptime has 10 ms resolution)
now_cs() { read -r up _ < /proc/uptime; echo "${up%.*}${up#*.}"; }
(
  r=0
  max_cs=0
  while [ ! -f /tmp/busy.stop ] && [ "$r" -lt "${BUSY_ROUNDS_MAX:-4000}" ]; do
    t=$(now_cs)
    # One O_DIRECT write of the whole file: the kernel sends it as one or more requests at once.
    dd if=/dev/urandom of="/mnt/tree/busy/b$(( r % 8 ))" bs="${BUSY_FILE_KIB:-512}k" count=1 iflag=fullblock oflag=direct conv=fsync 2>/dev/null || { echo "$?" > /tmp/busy.rc; exit 1; }
    d=$(( $(now_cs) - t ))
    [ "$d" -le "$max_cs" ] || max_cs=$d
    r=$((r + 1))
    echo "$r" > /tmp/busy.rounds
    echo "$max_cs" > /tmp/busy.max
  done
  echo 0 > /tmp/busy.rc
) &
busy=$!
# The writer is under way before the leg fails.
n=0
until [ -s /tmp/busy.rounds ]; do n=$((n + 1)); [ "$n" -lt 600 ] || fail "the writer made no progress"; sleep 0.05; done

step fail-leg
reply=$(echo fail-leg | timeout "${ARM_WAIT_S:-60}" nc "$NBDM_NBD_HOST" "$ARM_PORT") || fail "no answer from the host's arm port $ARM_PORT"
expect_eq "host's answer" "$reply" armed
echo "WRITER: $(cat /tmp/busy.rounds) rounds before the leg failed"

step write-after
write_dirs $(( half + 1 )) "$dirs"
dd if=/dev/urandom of=/mnt/tree/big bs=64k count=$(( ${BIG_FILE_KIB:-4096} / 64 )) conv=fsync 2>/dev/null
touch /tmp/busy.stop
wait "$busy" || true
expect_eq "writer exit status" "$(cat /tmp/busy.rc 2>/dev/null)" 0
echo "WRITER: $(cat /tmp/busy.rounds) rounds in all, the longest $(( $(cat /tmp/busy.max) * 10 )) ms"
sync

step kernel-log
# Everything the kernel said since /init started, for the host to check too.
dmesg | sed -n '/Run \/init as init process/,$p' | sed 's/^/KMSG: /'
opts=$(awk '$2 == "/mnt" { print $4 }' /proc/mounts)
echo "MOUNT: $opts"
case "$opts" in rw,*|rw) ;; *) fail "ext4 is no longer mounted read-write: $opts" ;; esac
if dmesg | grep -E 'I/O error|EXT4-fs error|EXT4-fs warning|Buffer I/O|Aborting journal|timed out|Receive control failed'; then
  fail "the kernel saw an error"
fi

# continues with verify-tree.sh (appended by the test)
