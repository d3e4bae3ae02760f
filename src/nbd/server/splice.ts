// splice(2) for large READ replies, from the optional N-API addon in native/splice/ (built by
// scripts/build-native.sh). Owns: finding and loading the addon and its typed surface. Off unless
// NBD_MIRROR_SPLICE=1 (see below); without the addon (not built, another OS) spliceIo() is null and every
// READ reply is copied through a buffer. NBDM_SPLICE_ADDON=PATH says where the addon is.
//
// Why: a 1 MiB read reply costs a pread into a buffer (one copy) and a write of it to the socket (a second
// copy). splice(leg file -> pipe) takes page references and splice(pipe -> socket) hands them to the
// socket (MSG_SPLICE_PAGES): the server copies nothing, the client's recv is the only copy.
// Why off by default (measured 2026-11-26, kernel 6.18, AMD EPYC VM, unix socket): the client's recv copies
// straight from the page-cache pages, page by page, and the CPU's rep movsb is ~3.5x slower when the
// destination's offset in its page is 1-31 bytes past the source's (C: receiver 470-530 us/MiB at page
// offsets 8-24, 130-170 us at 0, 32, 48, 64, 512). fio's nbd engine reads into malloc'd buffers (page offset
// 16) unless mem_align is set: cpu.js read-1m-qd8, 4 paired rounds, splice vs main: 960 vs 1222 MB/s, fio
// CPU/op 772 vs 363 us, server 431 vs 635 us. With page-aligned client buffers (fio mem_align=4096; the
// kernel's nbd client reads into whole pages; qemu and nbdcopy not checked): 1938 vs 1318 MB/s (1.89x [1.83-2.43] vs 1.39x
// [1.19-1.53] nbdkit), server CPU/op 264 vs 490 us, fio 315 vs 375 us; 128 KiB reads 1.69x, 256 KiB 1.34x.
// The server cannot see the client's alignment, so this is the operator's choice.

import { loadOptionalAddon } from '../../native-addon.js';

export interface SpliceIo {
  /** A pipe (both ends O_NONBLOCK | O_CLOEXEC) of about capacityBytes: [readFd, writeFd, capacityBytes], or -errno. */
  pipe(capacityBytes: number): [number, number, number] | number;
  /** Moves up to `length` bytes of fileFd at `position` into the pipe (short at end of file or when it is full), or -errno. */
  fill(fileFd: number, position: number, pipeFd: number, length: number): number;
  /** Moves up to `length` bytes from the pipe to the socket until it would block (0: at once), or -errno. */
  send(pipeFd: number, sockFd: number, length: number): number;
  /** read(2) from the pipe into buf[offset, offset + length): bytes, or -errno. */
  read(pipeFd: number, buf: Uint8Array, offset: number, length: number): number;
  /** Bytes the pipe holds, or -errno. */
  pending(pipeFd: number): number;
}

let addon: SpliceIo | null | undefined;

/** The addon when splicing is on (NBD_MIRROR_SPLICE=1) and it is built, else null (READ replies are copied). */
export function spliceIo(): SpliceIo | null {
  if (addon !== undefined) return addon;
  addon = process.env.NBD_MIRROR_SPLICE === '1' ? loadSpliceIo() : null;
  return addon;
}

/** The addon whatever NBD_MIRROR_SPLICE says, or null when it is not built (tests). */
export function loadSpliceIo(): SpliceIo | null {
  if (process.platform !== 'linux') return null;
  return loadOptionalAddon<SpliceIo>(import.meta.url, ['splice', 'build', 'Release', 'nbdm_splice.node'], process.env.NBDM_SPLICE_ADDON);
}

/** Tests: use `a` (null: no splicing) from now on; undefined: load the addon again. */
export function setSpliceIoForTests(a: SpliceIo | null | undefined): void {
  addon = a;
}
