# Guest-side tail shared by ext4-roundtrip.sh and leg-failure.sh (the test appends it to their text):
# checksum /mnt/tree, umount, drop caches, remount, verify the sums, e2fsck -fn, detach /dev/nbd0.
step checksum
cd /mnt/tree
find . -type f | sort | xargs sha256sum > /tmp/sums
cd /
sed 's/^/SUM: /' /tmp/sums
echo "FILES: $(wc -l < /tmp/sums)"

step umount
umount /mnt
blockdev --flushbufs /dev/nbd0
echo 3 > /proc/sys/vm/drop_caches

step remount
mount -t ext4 /dev/nbd0 /mnt

step verify
cd /mnt/tree
sha256sum -c -s /tmp/sums || fail "sha256 sums differ after umount + mount"
cd /
umount /mnt

step fsck-in-guest
e2fsck -fn /dev/nbd0 > /tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "e2fsck -fn in the guest found errors"; }

step detach
nbd_detach /dev/nbd0
