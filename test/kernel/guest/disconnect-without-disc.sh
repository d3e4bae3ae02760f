# Guest side of the bad-input check: write a known pattern with O_DIRECT (so it has reached the server),
# start more writes, then the host kills qemu without `nbd-client -d`: the server sees the connection drop with
# requests possibly in flight and no NBD_CMD_DISC. The host then checks the server still serves.
# env: PATTERN_OFFSET_KIB, PATTERN_KIB
step attach
nbd_attach /dev/nbd0 -b 4096

step write-pattern
yes NBDMIRROR | head -c $(( ${PATTERN_KIB:-4096} * 1024 )) > /tmp/pattern
dd if=/tmp/pattern of=/dev/nbd0 bs=64k seek=$(( ${PATTERN_OFFSET_KIB:-1024} / 64 )) oflag=direct conv=fsync 2>/dev/null
echo "PATTERN: $(sha256sum < /tmp/pattern)"

step writes-in-flight
dd if=/dev/urandom of=/dev/nbd0 bs=128k seek=$(( ${BUSY_OFFSET_KIB:-8192} / 128 )) count=128 oflag=direct 2>/dev/null &
sleep 0.3

step die-without-disc
# The host kills qemu (SIGKILL) on the next line: the client machine dies with writes in flight.
echo "TEST: PASS"
sleep 600
