# Guest side of the bad-input check (runs under `set -e` with /lib/nbdm/lib.sh sourced):
# 1. a kernel request timeout: /dev/nbd0 attached with `-t REQUEST_TIMEOUT_S`; after a known pattern is
#    written with O_DIRECT (so it has reached the server), the host SIGSTOPs the server on the `stall` step
#    line; uncached O_DIRECT reads then hang until the kernel's request timeout fails them and shuts the
#    connection down (the server finds its requests' socket closed when it resumes). The host SIGCONTs the
#    server on the `timed-out` line.
# 2. a new connection (/dev/nbd1) reads the pattern back, starts more writes, then the host kills qemu
#    without `nbd-client -d`: the server sees the connection drop with requests possibly in flight and no
#    NBD_CMD_DISC. The host then checks the server still serves.
# env: PATTERN_OFFSET_KIB, PATTERN_KIB, BUSY_OFFSET_KIB, REQUEST_TIMEOUT_S, STALL_READ_OFFSET_KIB, STALL_WAIT_S
step attach
nbd_attach /dev/nbd0 -b 4096 -t "${REQUEST_TIMEOUT_S:-8}"

step write-pattern
yes NBDMIRROR | head -c $(( ${PATTERN_KIB:-4096} * 1024 )) > /tmp/pattern
dd if=/tmp/pattern of=/dev/nbd0 bs=64k seek=$(( ${PATTERN_OFFSET_KIB:-1024} / 64 )) oflag=direct conv=fsync 2>/dev/null
want=$(sha256sum < /tmp/pattern | cut -d' ' -f1)
echo "PATTERN: $want"

step stall
# Reads until one fails: they succeed until the host has stopped the server, then one hangs for the
# request timeout and fails with EIO.
i=0
start=$(cut -d. -f1 /proc/uptime)
while dd if=/dev/nbd0 of=/dev/null bs=4k count=1 skip=$(( ${STALL_READ_OFFSET_KIB:-16384} / 4 + i % 1024 )) iflag=direct 2>/dev/null; do
  i=$((i + 1))
  [ $(( $(cut -d. -f1 /proc/uptime) - start )) -lt "${STALL_WAIT_S:-120}" ] || fail "reads never failed: the server was not stopped?"
done
echo "TIMED-OUT: after $i reads, $(( $(cut -d. -f1 /proc/uptime) - start )) s"
dmesg | grep -i 'nbd0' | tail -n 3

step timed-out
# The host resumes the server on this line; a new connection must be served.
step reattach
nbd_attach /dev/nbd1 -b 4096

step read-back
got=$(dd if=/dev/nbd1 bs=64k skip=$(( ${PATTERN_OFFSET_KIB:-1024} / 64 )) count=$(( ${PATTERN_KIB:-4096} / 64 )) iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
expect_eq "pattern read back over a new connection after the timeout" "$got" "$want"

step writes-in-flight
dd if=/dev/urandom of=/dev/nbd1 bs=128k seek=$(( ${BUSY_OFFSET_KIB:-8192} / 128 )) count=128 oflag=direct 2>/dev/null &
sleep 0.3

step die-without-disc
# The host kills qemu (SIGKILL) on the next line: the client machine dies with writes in flight.
echo "TEST: PASS"
sleep 600
