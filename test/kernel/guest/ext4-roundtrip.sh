# Guest side of the ext4 round trip (runs under `set -e` with /lib/nbdm/lib.sh sourced).
# env: NBD_CLIENT_ARGS (extra nbd-client options, e.g. "-C 4"), TREE_DIRS, TREE_FILES_PER_DIR, BIG_FILE_KIB.
step attach
# shellcheck disable=SC2086
nbd_attach /dev/nbd0 -b 4096 $NBD_CLIENT_ARGS
echo "SIZE: $(blockdev --getsize64 /dev/nbd0)"

step mkfs
mkfs.ext4 -F -q -b 4096 /dev/nbd0

step mount
mount -t ext4 /dev/nbd0 /mnt

step write-tree
# Files of 4 KiB .. 256 KiB in nested directories plus one big file; each written with fsync.
i=0
for d in $(seq 1 "${TREE_DIRS:-4}"); do
  mkdir -p "/mnt/tree/d$d/sub"
  for n in $(seq 1 "${TREE_FILES_PER_DIR:-5}"); do
    i=$((i + 1))
    dd if=/dev/urandom of="/mnt/tree/d$d/f$n" bs=4k count=$(( (i * 37) % 64 + 1 )) conv=fsync 2>/dev/null
    dd if=/dev/urandom of="/mnt/tree/d$d/sub/s$n" bs=512 count=$(( i % 7 + 1 )) conv=fsync 2>/dev/null
  done
done
dd if=/dev/urandom of=/mnt/tree/big bs=64k count=$(( ${BIG_FILE_KIB:-4096} / 64 )) conv=fsync 2>/dev/null
sync

# continues with verify-tree.sh (appended by the test)
