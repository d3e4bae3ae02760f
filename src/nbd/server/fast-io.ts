// Synchronous read/write system calls without fs.readSync/writeSync's wrapper, from the optional N-API
// addon in native/fast-io/ (built by scripts/build-native.sh). Owns: finding and loading the addon, and
// turning its -errno results into the Error fs would have thrown (same code, errno, syscall and message),
// so callers map failures exactly as before.
//
// Why: per 4 KiB write fs.writeSync spends ~0.8 us in JS and C++ around the pwrite(2) (validation, a
// context object, trace-event checks, libuv's request set-up); the addon's call costs ~0.1 us. The file
// legs' synchronous reads and writes (src/mirror/legs/file.ts) and the server's direct reply writes
// (transmission.ts) use it; the idle poll (idle-poll.ts) spins on a socket with it. Without the addon
// (not built, another OS) fastIo() is null and callers use fs as before (and there is no idle poll).
// NBD_MIRROR_FAST_IO=0 disables it; NBDM_FAST_IO_ADDON=PATH says where it is.
// Where the addon is looked for: src/native-addon.ts.

import { getSystemErrorMap } from 'node:util';
import { loadOptionalAddon } from '../../native-addon.js';

export interface FastIo {
  /** pwrite(2) (position >= 0) or write(2) (position -1) of buf[offset, offset + length): bytes written, or -errno. */
  write(fd: number, buf: Uint8Array, offset: number, length: number, position: number): number;
  /** pread(2) (position >= 0) or read(2) (position -1) into buf[offset, offset + length): bytes read, or -errno. */
  read(fd: number, buf: Uint8Array, offset: number, length: number, position: number): number;
  /**
   * read(2) into buf[offset, offset + length) of a non-blocking socket, read again while it is empty, for up
   * to spinNs: bytes read, 0 at end of stream, or -errno (-EAGAIN: nothing came). Absent from addons built
   * before it (the idle poll is then off).
   */
  spinRead?(fd: number, buf: Uint8Array, offset: number, length: number, spinNs: number): number;
  /**
   * setsockopt(SO_SNDBUF, bytes) on a socket: the size the kernel then keeps (getsockopt: capped at
   * net.core.wmem_max, doubled), or -errno. Absent from addons built before it.
   */
  setSendBuffer?(fd: number, bytes: number): number;
  /**
   * Mapped writes to a file on a memory file system (src/mirror/legs/file.ts): mapShared(fd, offsetBytes,
   * lengthBytes) -> a MAP_SHARED mapping of the file's [offsetBytes, offsetBytes + lengthBytes), or -errno;
   * copyToMap(mapping, position (from offsetBytes), buf, offset, length, callback) copies on the thread pool,
   * callback(length or -errno: -EFAULT when the copy hit SIGBUS, -ERANGE outside, -EBADF after unmap);
   * copyToMapSync the same on the calling thread (returns it); unmap(mapping). Absent from older addons.
   */
  mapShared?(fd: number, offsetBytes: number, lengthBytes: number): object | number;
  copyToMap?(mapping: object, position: number, buf: Uint8Array, offset: number, length: number, callback: (result: number) => void): void;
  copyToMapSync?(mapping: object, position: number, buf: Uint8Array, offset: number, length: number): number;
  unmap?(mapping: object): void;
}

let addon: FastIo | null | undefined;

/** The addon, or null when it is not available (callers then use node:fs). */
export function fastIo(): FastIo | null {
  if (addon !== undefined) return addon;
  addon = null;
  if (process.env.NBD_MIRROR_FAST_IO === '0' || process.platform !== 'linux') return addon;
  addon = loadOptionalAddon<FastIo>(import.meta.url, ['fast-io', 'build', 'Release', 'nbdm_fast_io.node'], process.env.NBDM_FAST_IO_ADDON);
  return addon;
}

/** Tests: use `a` (null: the node:fs fallback) from now on; undefined: load the addon again. */
export function setFastIoForTests(a: FastIo | null | undefined): void {
  addon = a;
}

let errorMap: Map<number, [string, string]> | undefined;

/**
 * The Error node:fs throws for `negErrno` (a negative errno, as the addon returns it) from `syscall`:
 * code 'EIO', errno -5, syscall 'write', message 'EIO: i/o error, write'. Built only on failure.
 */
export function systemError(negErrno: number, syscall: 'read' | 'write'): NodeJS.ErrnoException {
  errorMap ??= getSystemErrorMap();
  const [code, description] = errorMap.get(negErrno) ?? [`Unknown system error ${negErrno}`, `Unknown system error ${negErrno}`];
  const err: NodeJS.ErrnoException = new Error(`${code}: ${description}, ${syscall}`);
  err.errno = negErrno;
  err.code = code;
  err.syscall = syscall;
  return err;
}
