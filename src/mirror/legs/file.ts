// FileLeg: a Leg over a regular file or a block device, starting at a byte offset (the table offset).
// Owns: the open file handles, the device size probe (regular file: st_size; block device: sysfs), the
// read/write loops (short reads and writes are continued; a read past EOF of a file that shrank yields
// zeros), FUA (writes through a second O_DSYNC handle), flush (fdatasync), trim and zero.
//
// Trim is a no-op: Node has no fallocate(PUNCH_HOLE) without native code, and NBD allows a server to
// ignore TRIM (it is advisory; afterwards the content is unspecified). Doing nothing also keeps every leg
// of a mirror byte-identical after a trim, which a partial punch on only some legs would not.
// Zero writes zeros from one shared, never-written zero buffer in bounded chunks (it always allocates,
// so mayTrim=false is honoured trivially).
//
// Hot path: no copies, no per-call buffers; one pread/pwrite per request unless the kernel returns a
// short count. Callers (the mirror, LinearExport) validate ranges; we assert them. The synchronous
// reads and writes go through the fast-io addon when it is built (src/nbd/server/fast-io.ts: the same
// system call without fs.readSync/writeSync's ~0.8 us wrapper; errors become the Error fs would throw).
//
// Adaptive synchronous I/O (syncio below): libuv runs fs calls on its thread pool, which costs two thread
// switches and an event-loop wakeup per call (tens of microseconds, far more on a loaded machine), while a
// page-cache hit costs a few microseconds. So a small (<= SYNC_IO_BYTES_MAX) non-FUA read or write is done
// with readSync/writeSync on the main thread while that is cheap, and goes through the pool otherwise.
// The trade-off: a synchronous call blocks the event loop (every connection) for its duration, and loses
// concurrency on a device that is slow (cache misses on a disk). Hence the guard: each synchronous call is
// timed (one in SYNC_IO_SAMPLE_EVERY: a slow device makes most calls slow, a sample sees it); a window of
// SYNC_IO_WINDOW_CALLS timed calls of which over a quarter took more than SYNC_IO_SLOW_US,
// or a second call over SYNC_IO_STALL_US within SYNC_IO_WINDOW_CALLS timed calls of a first one, switches the
// leg to the thread pool for SYNC_IO_BACKOFF_MS, then it tries again. (One stall alone is not enough: on a
// loaded machine a call that was merely preempted measures as a stall; on the pool every request then
// costs several times the CPU, which made a busy machine much busier. A device that really stalls does
// so again at the next call.) (Not "only when nothing else is in flight": synchronous calls never stay in flight, and on
// a page-cached file they beat the pool at any queue depth; the slowness guard is what keeps concurrency
// for a slow device.) Worst case without a backoff: a client's queue of small requests that each just miss
// SYNC_IO_SLOW_US blocks the loop for queue depth x that long. FUA writes (O_DSYNC) and zero always use the
// pool: they wait for the device. NBD_MIRROR_SYNC_IO=0 turns the synchronous path off.
//
// Flush (fdatasync) is synchronous for a regular file on a memory file system (tmpfs, ramfs): there is no
// device under it, fdatasync returns at once, and a disk log flushes its device once per batch of new marks,
// so a pool hop there delays every write of the batch. Anywhere else flush waits for a device and uses the
// pool (a synchronous fdatasync could block the loop for seconds of writeback). As a safety net, a
// synchronous flush slower than SYNC_IO_SLOW_US sends flushes to the pool for SYNC_FLUSH_BACKOFF_MS,
// doubling (up to SYNC_FLUSH_BACKOFF_MAX_MS) while it stays slow.
//
// Rejected by measurement (session 4): a writer thread per leg (N-API addon, pthreads) taking a mirror's
// second-leg pwrite off the event loop, completions batched back through uv_async. On this 2-vCPU VM it
// raised the process CPU per 4 KiB write at QD32 from ~7.6-8.2 to ~9.6-11 us (in-process driver, two
// tmpfs legs) and did not raise IOPS: waking the sleeping thread (futex + IPI) cost ~30 us per kick,
// batching kicks per macrotask and completions per loop iteration still left ~2-3 us/op of overhead, and
// a thread that spins (sched_yield) instead of sleeping burns the CPU that the client needs. With the
// client and server sharing two CPUs the total CPU per write is the limit, and the second pwrite costs the
// same on any thread. io_uring is no better on tmpfs (writes are punted to io-wq).
//
// Mapped writes (writeMapped): a large (pool) non-FUA write to a regular file on a memory file system is a
// memcpy into a MAP_SHARED mapping of the file on libuv's thread pool (fast-io addon copyToMap), and a small
// synchronous one (writeSyncNow) the same copy on the main thread (copyToMapSync), instead of pwrite(2): the
// bytes land in the same page-cache pages, without the kernel's per-4-KiB-page lookup, lock and dirtying
// (C, 1 MiB into a 256 MiB tmpfs file: memcpy 125-150 us of CPU, pwrite 226-268; a 1 MiB mirrored write
// copies twice). The copy first maps its pages with read faults (fault-around: 16 pages per fault; 4 KiB
// write faults cost ~2.3 us each here, which made a fresh server's first pass over a file slower than
// pwrite). cpu.js, 2-leg mirror on /dev/shm, 6 paired rounds against the pwrite build (server CPU per request
// in brackets): write-1m-qd8 1.25x (0.74x), randwrite-4k-qd32 1.19x (0.79x), randwrite-4k-qd1 1.28x (0.74x).
// tmpfs has no writeback, so nothing else changes: reads (pread), flush (a no-op there), resync
// (copy_file_range) see the same pages. Errors: a page that cannot be had (the file was truncated
// under the mapping, tmpfs is full) raises SIGBUS, which the addon catches for that copy only and reports as
// EFAULT (-> ExportError EIO): the leg fails alone, as it would on a pwrite error. The mapping covers the leg's
// own range of the file, [offsetBytes, offsetBytes + sizeBytes) as at open (a slice of a pool file maps its
// slice only), is made at the first such write and released by close() after the writes in flight drained.
// Without the addon (NBD_MIRROR_FAST_IO=0 included), or when mmap fails, writes use pwrite as before.
//
// Resync between two FileLegs uses copyRangeTo (copy_file_range(2) through native/copy-range, one thread
// pool job per chunk, no user-space buffer) when the addon is built; errors there are never reported, the
// caller falls back to read + write, which attributes a failure to the right leg.

import { strict as assert } from 'node:assert';
import { constants as fsConstants, fdatasyncSync, promises as fsp, read as fsRead, readSync, write as fsWrite, writeSync, type Stats } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { basename } from 'node:path';
import type { FileHandle } from 'node:fs/promises';
import { ExportError, SETTLED_OK, type SplicePipe } from '../../nbd/export.js';
import type { Leg, LegWriteFlags } from './leg.js';
import { LegOpenError, toExportError } from './errors.js';
import { copyRange, copyRangeAvailable } from './copy-range.js';
import { fastIo, systemError, type FastIo } from '../../nbd/server/fast-io.js';
import { spliceIo } from '../../nbd/server/splice.js';

/** Largest single zero-fill write; the shared zero buffer has this size (allocated once, lazily). */
export const ZERO_CHUNK_BYTES = 1024 * 1024;

/** Completed before returning (export.ts: LinearExport passes it on, the server answers at once). */
const RESOLVED: Promise<void> = SETTLED_OK;
const RESOLVED_FALSE: Promise<boolean> = Promise.resolve(false);

function settled(err: Error | null): Promise<void> {
  return err === null ? RESOLVED : Promise.reject(err);
}

let zeroChunk: Buffer | undefined;
function sharedZeroChunk(): Buffer {
  // Only ever used as a write source, never as a read target, so it stays all zeros.
  zeroChunk ??= Buffer.alloc(ZERO_CHUNK_BYTES);
  return zeroChunk;
}

export interface FileLegOptions {
  /** Where the leg's data starts on the device (the table offset in bytes). */
  readonly offsetBytes: number;
  /** Open read-only (reads only; writes reject with EPERM). */
  readonly readOnly?: boolean;
}

/** Largest read/write done synchronously on the main thread (see the header). */
export const SYNC_IO_BYTES_MAX = 64 * 1024;
/** A synchronous call slower than this (microseconds) counts as slow: the device, not the page cache. */
export const SYNC_IO_SLOW_US = 1000;
/** One synchronous call in this many is timed; the guard below counts timed calls only. */
export const SYNC_IO_SAMPLE_EVERY = 4;
/** Timed synchronous calls per judgement window; more than a quarter slow in one window backs off. */
export const SYNC_IO_WINDOW_CALLS = 64;
/** Two synchronous calls slower than this (microseconds) within a window back off at once (the device stalls). */
export const SYNC_IO_STALL_US = 50_000;
/** How long a leg stays on the thread pool after a backoff before trying synchronous calls again. */
export const SYNC_IO_BACKOFF_MS = 1000;
/** Bytes per pipe slot when splicing page-cache pages (x86-64 pages; a larger page only makes a fill come up short). */
const SPLICE_PAGE_BYTES = 4096;
/** statfs f_type of memory file systems, where fdatasync has no device to wait for: tmpfs, ramfs. */
const MEMORY_FS_TYPES = new Set([0x01021994, 0x858458f6]);
/** First flush backoff after a slow synchronous flush; doubles while flushes stay slow, up to the max. */
export const SYNC_FLUSH_BACKOFF_MS = 1000;
export const SYNC_FLUSH_BACKOFF_MAX_MS = 60_000;
const SYNC_IO_ENABLED = process.env.NBD_MIRROR_SYNC_IO !== '0';

/** The mapped-write calls every addon with them has (copyToMapSync came later). */
type MappedIo = Required<Pick<FastIo, 'mapShared' | 'copyToMap' | 'unmap'>> & Pick<FastIo, 'copyToMapSync'>;

/** Linux dev_t -> major:minor (glibc gnu_dev_major/minor), exact for any 64-bit dev_t. */
export function deviceNumbers(rdev: number | bigint): { major: number; minor: number } {
  const dev = BigInt(rdev);
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  return { major: Number(major & 0xffffffffn), minor: Number(minor & 0xffffffffn) };
}

/** Size in bytes of the block device behind `st`, from sysfs (size is in 512-byte sectors). */
async function blockDeviceBytes(path: string, st: Stats): Promise<number> {
  const { major, minor } = deviceNumbers(st.rdev);
  const candidates = [`/sys/dev/block/${major}:${minor}/size`];
  try {
    candidates.push(`/sys/class/block/${basename(await fsp.realpath(path))}/size`);
  } catch {
    // realpath failing here is unusual (we just opened it); the first candidate may still work.
  }
  for (const file of candidates) {
    try {
      const text = await fsp.readFile(file, 'utf8');
      const sectors = Number(text.trim());
      if (Number.isSafeInteger(sectors) && sectors >= 0) return sectors * 512;
    } catch {
      // try the next one
    }
  }
  throw new LegOpenError(
    path,
    `cannot determine the size of block device '${path}' (${major}:${minor}): none of ${candidates.join(', ')} is readable`,
  );
}

function describeOpenError(device: string, err: unknown): LegOpenError {
  const code = (err as { code?: string } | null)?.code;
  const reason: Record<string, string> = {
    ENOENT: 'no such file or device',
    EACCES: 'permission denied',
    EPERM: 'operation not permitted',
    EBUSY: 'device is busy (in use or exclusively opened elsewhere)',
    EROFS: 'read-only file system',
    EISDIR: 'is a directory',
    ENXIO: 'no such device (is the block device present?)',
  };
  const text = (code && reason[code]) ?? (err instanceof Error ? err.message : String(err));
  return new LegOpenError(device, `cannot open leg device '${device}': ${text}${code ? ` (${code})` : ''}`, code);
}

/** `PATH@<sectors>s`: a slice of PATH starting at that sector (see FileLeg.open). */
export const SLICE_DEVICE = /^(.+)@([0-9]{1,15})s$/;

export class FileLeg implements Leg {
  readonly sizeBytes: number;
  private closed = false;

  private constructor(
    readonly device: string,
    /** The device's total size in bytes (before the offset). */
    readonly deviceBytes: number,
    readonly offsetBytes: number,
    readonly isBlockDevice: boolean,
    private readonly fh: FileHandle,
    /** Same file opened with O_DSYNC: a write through it is durable when it completes (FUA). */
    private readonly fhSync: FileHandle | null,
    /** A regular file on tmpfs/ramfs: nothing under it to flush, fdatasync is a no-op (synchronous flush). */
    readonly memoryBacked: boolean,
  ) {
    this.sizeBytes = Math.max(0, deviceBytes - offsetBytes);
  }

  /**
   * Open `device` (a path) for I/O at `offsetBytes`. Rejects with LegOpenError naming the device when it
   * cannot be opened or is neither a regular file nor a block device. Never leaves a handle open on error.
   */
  static async open(device: string, opts: FileLegOptions): Promise<FileLeg> {
    assert(Number.isSafeInteger(opts.offsetBytes) && opts.offsetBytes >= 0, 'offsetBytes');
    // A slice `PATH@<N>s` is PATH from sector N on (pools put a volume's disk log in an extent this way,
    // where dm would use a small linear LV). `device` stays as written, for status and table output.
    const slice = SLICE_DEVICE.exec(device);
    if (slice !== null) {
      const leg = await FileLeg.open(slice[1] as string, { ...opts, offsetBytes: opts.offsetBytes + Number(slice[2]) * 512 });
      return new FileLeg(device, leg.deviceBytes, leg.offsetBytes, leg.isBlockDevice, leg.fh, leg.fhSync, leg.memoryBacked);
    }
    const readOnly = opts.readOnly ?? false;
    let fh = null as FileHandle | null;
    let fhSync = null as FileHandle | null;
    try {
      try {
        fh = await fsp.open(device, readOnly ? fsConstants.O_RDONLY : fsConstants.O_RDWR);
      } catch (err) {
        throw describeOpenError(device, err);
      }
      const st = await fh.stat();
      let deviceBytes: number;
      if (st.isFile()) deviceBytes = st.size;
      else if (st.isBlockDevice()) deviceBytes = await blockDeviceBytes(device, st);
      else throw new LegOpenError(device, `leg device '${device}' is neither a regular file nor a block device`);
      if (!readOnly) {
        try {
          fhSync = await fsp.open(device, fsConstants.O_RDWR | fsConstants.O_DSYNC);
        } catch (err) {
          throw describeOpenError(device, err);
        }
      }
      const memoryBacked = st.isFile() && (await fsp.statfs(device).then((f) => MEMORY_FS_TYPES.has(Number(f.type)), () => false));
      return new FileLeg(device, deviceBytes, opts.offsetBytes, st.isBlockDevice(), fh, fhSync, memoryBacked);
    } catch (err) {
      await fhSync?.close().catch(() => {});
      await fh?.close().catch(() => {});
      if (err instanceof LegOpenError) throw err;
      throw new LegOpenError(device, `cannot use leg device '${device}': ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  private checkRange(offsetBytes: number, lengthBytes: number): void {
    if (this.closed) throw new ExportError('EIO', `${this.device}: leg is closed`);
    assert(Number.isSafeInteger(offsetBytes) && offsetBytes >= 0, 'offsetBytes');
    assert(Number.isSafeInteger(lengthBytes) && lengthBytes >= 0, 'lengthBytes');
    // The message is built only on failure: a template string per call was ~0.7% of the CPU at 4K QD32.
    if (offsetBytes + lengthBytes > this.sizeBytes) assert(false, `range ${offsetBytes}+${lengthBytes} beyond leg size ${this.sizeBytes}`);
  }

  // The hot path uses the callback fs.read/fs.write on the raw fds: measured ~1.4x the operations per
  // second of FileHandle.read/write for 4 KiB requests (FileHandle adds its own promise and ref-counting).
  // Because FileHandle does not see these calls, close() waits for `inFlight` to drain before closing.
  private inFlight = 0;
  private drained: (() => void) | null = null;

  private begin(): void {
    this.inFlight++;
  }

  private end(): void {
    this.inFlight--;
    if (this.inFlight === 0 && this.drained !== null) this.drained();
  }

  private pread(target: Buffer, at: number, length: number, position: number): Promise<number> {
    return new Promise((resolve, reject) => {
      fsRead(this.fh.fd, target, at, length, position, (err, n) => (err ? reject(err) : resolve(n)));
    });
  }

  private pwrite(fd: number, data: Buffer, at: number, length: number, position: number): Promise<number> {
    return new Promise((resolve, reject) => {
      fsWrite(fd, data, at, length, position, (err, n) => (err ? reject(err) : resolve(n)));
    });
  }

  // ---- adaptive synchronous I/O (see the header) ------------------------------------------------------
  /** Untimed synchronous calls left before the next timed one. */
  private sampleCountdown = 0;
  private windowCalls = 0;
  private windowSlow = 0;
  /** Synchronous calls since the last stall (a second stall within a window backs off). */
  private callsSinceStall = Infinity;
  /** performance.now() before which the leg uses the thread pool only (backoff after slow sync calls). */
  private poolOnlyUntilMs = 0;
  /** Synchronous and pool calls so far, and backoffs (diagnostics and tests). */
  readonly syncStats = { syncCalls: 0, poolCalls: 0, backoffs: 0, mappedCalls: 0 };

  private useSync(length: number): boolean {
    return SYNC_IO_ENABLED && length <= SYNC_IO_BYTES_MAX && (this.poolOnlyUntilMs === 0 || this.backoffOver());
  }

  private backoffOver(): boolean {
    if (performance.now() < this.poolOnlyUntilMs) return false;
    this.poolOnlyUntilMs = 0;
    return true;
  }

  /**
   * Account one synchronous call that started at `startMs`. A lone slow call may be the process being
   * preempted (a busy machine), so only a window with many slow calls, or one stall, means the device is slow.
   */
  /**
   * Counts a synchronous call and returns its start time when it is one to time, else -1: every
   * SYNC_IO_SAMPLE_EVERY-th call is timed (a clock read costs ~0.1 us in a VM; two per call added up).
   */
  private syncCallStart(): number {
    this.syncStats.syncCalls++;
    return this.sampleCountdown-- <= 0 ? performance.now() : -1;
  }

  private timed(startMs: number): void {
    const nowMs = performance.now();
    const us = (nowMs - startMs) * 1000;
    this.sampleCountdown = SYNC_IO_SAMPLE_EVERY - 1;
    this.windowCalls++;
    if (us > SYNC_IO_SLOW_US) this.windowSlow++;
    this.callsSinceStall++;
    let stalledTwice = false;
    if (us > SYNC_IO_STALL_US) {
      stalledTwice = this.callsSinceStall <= SYNC_IO_WINDOW_CALLS;
      this.callsSinceStall = 0;
    }
    if (stalledTwice || (this.windowCalls >= SYNC_IO_WINDOW_CALLS && this.windowSlow * 4 > this.windowCalls)) {
      this.callsSinceStall = Infinity;
      this.poolOnlyUntilMs = nowMs + SYNC_IO_BACKOFF_MS;
      this.syncStats.backoffs++;
    }
    if (this.windowCalls >= SYNC_IO_WINDOW_CALLS || this.poolOnlyUntilMs !== 0) {
      this.windowCalls = 0;
      this.windowSlow = 0;
    }
  }

  /** Synchronous read of the whole range; null when done, else the error (never throws). */
  private readSyncNow(target: Buffer, offsetBytes: number): Error | null {
    const length = target.length;
    const base = this.offsetBytes + offsetBytes;
    const startMs = this.syncCallStart();
    let done = 0;
    // The addon's read costs ~0.1 us instead of readSync's ~0.8 us of wrapper (fast-io.ts); null: node:fs.
    const io = fastIo();
    try {
      while (done < length) {
        const n = io !== null ? io.read(this.fh.fd, target, done, length - done, base + done) : readSync(this.fh.fd, target, done, length - done, base + done);
        if (n < 0) throw systemError(n, 'read');
        if (n === 0) {
          target.fill(0, done); // EOF inside sizeBytes: the file shrank
          break;
        }
        done += n;
      }
    } catch (err) {
      return toExportError(err, this.device, `read of ${length} bytes at ${offsetBytes}`);
    } finally {
      if (startMs >= 0) this.timed(startMs);
    }
    return null;
  }

  /** Synchronous write of the whole range; null when done, else the error (never throws). */
  private writeSyncNow(data: Buffer, offsetBytes: number): Error | null {
    const length = data.length;
    const position = this.offsetBytes + offsetBytes;
    const startMs = this.syncCallStart();
    let done = 0;
    // The addon's write costs ~0.1 us instead of writeSync's ~0.8 us of wrapper (fast-io.ts); null: node:fs.
    const io = fastIo();
    try {
      // On a memory file system: a copy into the file's mapping (see the header): ~1.2 us for a random 4 KiB
      // write against ~2.6 us for pwrite.
      const mapping = this.memoryBacked && length > 0 ? this.mapping() : null;
      if (mapping !== null && mapping.io.copyToMapSync !== undefined) {
        const n = mapping.io.copyToMapSync(mapping.map, offsetBytes, data, 0, length);
        if (n !== length) throw systemError(n < 0 ? n : -5, 'write');
        return null;
      }
      while (done < length) {
        const n = io !== null ? io.write(this.fh.fd, data, done, length - done, position + done) : writeSync(this.fh.fd, data, done, length - done, position + done);
        if (n < 0) throw systemError(n, 'write');
        if (n === 0) return new ExportError('ENOSPC', `${this.device}: write made no progress at ${position + done}`);
        done += n;
      }
    } catch (err) {
      return toExportError(err, this.device, `write of ${length} bytes at ${offsetBytes}`);
    } finally {
      if (startMs >= 0) this.timed(startMs);
    }
    return null;
  }

  /** Leg.readNow: the synchronous read when this read qualifies (see the header), else undefined. */
  readNow(target: Buffer, offsetBytes: number): Error | null | undefined {
    if (this.closed || !this.useSync(target.length) || !this.rangeOk(offsetBytes, target.length)) return undefined;
    return this.readSyncNow(target, offsetBytes);
  }

  /** Leg.writeNow: the synchronous (non-FUA) write when this write qualifies, else undefined. */
  writeNow(data: Buffer, offsetBytes: number): Error | null | undefined {
    if (this.closed || this.fhSync === null || !this.useSync(data.length) || !this.rangeOk(offsetBytes, data.length)) return undefined;
    return this.writeSyncNow(data, offsetBytes);
  }

  /**
   * Leg.spliceNow: on a memory file system only, where the fill takes page references at once (elsewhere it
   * could wait for the device with the event loop blocked). Short (end of a shrunk file) or failed: false,
   * and read() reads the range (zero-filling past the end, reporting errors).
   */
  spliceNow(pipe: SplicePipe, offsetBytes: number, lengthBytes: number): boolean {
    const io = spliceIo();
    if (io === null || !this.memoryBacked || !SYNC_IO_ENABLED || this.closed || !this.rangeOk(offsetBytes, lengthBytes)) return false;
    const position = this.offsetBytes + offsetBytes;
    // One page per pipe slot: an unaligned range spans a page more than its length.
    if ((position % SPLICE_PAGE_BYTES) + lengthBytes > pipe.capacityBytes) return false;
    return io.fill(this.fh.fd, position, pipe.writeFd, lengthBytes) === lengthBytes;
  }

  /** The range check without asserting (the *Now paths leave a bad range to read()/write() to report). */
  private rangeOk(offsetBytes: number, lengthBytes: number): boolean {
    return offsetBytes >= 0 && lengthBytes >= 0 && offsetBytes + lengthBytes <= this.sizeBytes && Number.isSafeInteger(offsetBytes + lengthBytes);
  }

  // read/write are not `async` so the synchronous path costs no extra promise; they never throw.
  read(target: Buffer, offsetBytes: number): Promise<void> {
    try {
      this.checkRange(offsetBytes, target.length);
    } catch (err) {
      return Promise.reject(err);
    }
    if (this.useSync(target.length)) return settled(this.readSyncNow(target, offsetBytes));
    return this.readPool(target, offsetBytes);
  }

  private async readPool(target: Buffer, offsetBytes: number): Promise<void> {
    const length = target.length;
    const base = this.offsetBytes + offsetBytes;
    let done = 0;
    this.syncStats.poolCalls++;
    this.begin();
    try {
      while (done < length) {
        const n = await this.pread(target, done, length - done, base + done);
        if (n === 0) {
          // EOF inside sizeBytes: the file is shorter than when it was opened.
          target.fill(0, done);
          return;
        }
        done += n;
      }
    } catch (err) {
      throw toExportError(err, this.device, `read of ${length} bytes at ${offsetBytes}`);
    } finally {
      this.end();
    }
  }

  write(data: Buffer, offsetBytes: number, flags: LegWriteFlags): Promise<void> {
    try {
      this.checkRange(offsetBytes, data.length);
    } catch (err) {
      return Promise.reject(err);
    }
    const fh = flags.fua ? this.fhSync : this.fh;
    if (this.fhSync === null || fh === null) return Promise.reject(new ExportError('EPERM', `${this.device}: leg is read-only`));
    if (!flags.fua && this.useSync(data.length)) return settled(this.writeSyncNow(data, offsetBytes));
    if (!flags.fua && this.memoryBacked && data.length > 0) {
      const mapping = this.mapping();
      if (mapping !== null) return this.writeMapped(mapping.io, mapping.map, data, offsetBytes);
    }
    return this.writePool(fh.fd, data, offsetBytes);
  }

  // ---- mapped writes (see the header) -------------------------------------------------------------------
  /** The file's shared mapping once made; null: not made yet; false: not available (no addon, mmap failed). */
  private mapped: { io: MappedIo; map: object } | null | false = null;

  private mapping(): { io: MappedIo; map: object } | null {
    if (this.mapped !== null) return this.mapped === false ? null : this.mapped;
    this.mapped = false;
    const io = fastIo();
    if (io === null || io.mapShared === undefined || io.copyToMap === undefined || io.unmap === undefined) return null;
    if (this.isBlockDevice || this.sizeBytes <= 0 || this.closed) return null;
    const map = io.mapShared(this.fh.fd, this.offsetBytes, this.sizeBytes);
    if (typeof map === 'number') return null; // -errno: pwrite as before
    this.mapped = { io: io as MappedIo, map };
    return this.mapped;
  }

  private writeMapped(io: MappedIo, map: object, data: Buffer, offsetBytes: number): Promise<void> {
    this.syncStats.mappedCalls++;
    this.begin();
    return new Promise((resolve, reject) => {
      try {
        io.copyToMap(map, offsetBytes, data, 0, data.length, (n) => {
          this.end();
          if (n === data.length) resolve();
          else reject(toExportError(systemError(n < 0 ? n : -5, 'write'), this.device, `write of ${data.length} bytes at ${offsetBytes}`));
        });
      } catch (err) {
        this.end();
        reject(toExportError(err, this.device, `write of ${data.length} bytes at ${offsetBytes}`));
      }
    });
  }

  private async writePool(fd: number, data: Buffer, offsetBytes: number): Promise<void> {
    this.syncStats.poolCalls++;
    this.begin();
    try {
      await this.writeAll(fd, data, this.offsetBytes + offsetBytes, 'write');
    } finally {
      this.end();
    }
  }

  private async writeAll(fd: number, data: Buffer, position: number, what: string): Promise<void> {
    const length = data.length;
    let done = 0;
    try {
      while (done < length) {
        const n = await this.pwrite(fd, data, done, length - done, position + done);
        // A zero-byte write for a non-empty request would loop forever; the kernel reports ENOSPC instead.
        if (n === 0) throw new ExportError('ENOSPC', `${this.device}: ${what} made no progress at ${position + done}`);
        done += n;
      }
    } catch (err) {
      throw toExportError(err, this.device, `${what} of ${length} bytes at ${position - this.offsetBytes}`);
    }
  }

  /** errno names that mean copy_file_range cannot work between these two files (stop trying). */
  private static readonly COPY_RANGE_UNSUPPORTED = new Set(['EXDEV', 'ENOSYS', 'EOPNOTSUPP', 'EINVAL', 'EBADF', 'EUNKNOWN']);
  /** Targets copy_file_range refused (per source leg); resync reads and writes for them. */
  private copyRangeRefused: WeakSet<FileLeg> | null = null;

  copyRangeTo(target: Leg, offsetBytes: number, lengthBytes: number): Promise<boolean> {
    if (!(target instanceof FileLeg) || target === this || !copyRangeAvailable()) return RESOLVED_FALSE;
    if (this.closed || target.closed || target.fhSync === null || this.copyRangeRefused?.has(target)) return RESOLVED_FALSE;
    try {
      this.checkRange(offsetBytes, lengthBytes);
      target.checkRange(offsetBytes, lengthBytes);
    } catch {
      return RESOLVED_FALSE; // the read + write path reports it
    }
    this.begin();
    target.begin();
    return copyRange(this.fh.fd, this.offsetBytes + offsetBytes, target.fh.fd, target.offsetBytes + offsetBytes, lengthBytes).then(
      (n) => {
        this.end();
        target.end();
        return n === lengthBytes; // short: the source file shrank; read + write fills the rest with zeros
      },
      (err: unknown) => {
        this.end();
        target.end();
        const code = (err as { code?: unknown } | null)?.code;
        if (typeof code === 'string' && FileLeg.COPY_RANGE_UNSUPPORTED.has(code)) (this.copyRangeRefused ??= new WeakSet()).add(target);
        return false;
      },
    );
  }

  // ---- adaptive synchronous flush (see the header) ----------------------------------------------------
  /** performance.now() before which flushes use the thread pool; 0: try synchronously. */
  private flushPoolUntilMs = 0;
  private flushBackoffMs = SYNC_FLUSH_BACKOFF_MS;
  /** Synchronous and pool flushes so far, and flush backoffs (diagnostics and tests). */
  readonly flushStats = { syncFlushes: 0, poolFlushes: 0, backoffs: 0 };

  flush(): Promise<void> {
    if (this.closed) return Promise.reject(new ExportError('EIO', `${this.device}: leg is closed`));
    if (this.memoryBacked && SYNC_IO_ENABLED && (this.flushPoolUntilMs === 0 || performance.now() >= this.flushPoolUntilMs)) {
      const startMs = performance.now();
      let err: Error | null = null;
      try {
        fdatasyncSync(this.fh.fd);
      } catch (e) {
        err = toExportError(e, this.device, 'flush');
      }
      const nowMs = performance.now();
      this.flushStats.syncFlushes++;
      if ((nowMs - startMs) * 1000 > SYNC_IO_SLOW_US) {
        // Slow: the device drains a cache. Pool for a while, longer each time this repeats.
        this.flushPoolUntilMs = nowMs + this.flushBackoffMs;
        this.flushBackoffMs = Math.min(SYNC_FLUSH_BACKOFF_MAX_MS, this.flushBackoffMs * 2);
        this.flushStats.backoffs++;
      } else {
        this.flushPoolUntilMs = 0;
        this.flushBackoffMs = SYNC_FLUSH_BACKOFF_MS;
      }
      return err === null ? RESOLVED : Promise.reject(err);
    }
    return this.flushPool();
  }

  private async flushPool(): Promise<void> {
    this.flushStats.poolFlushes++;
    this.begin();
    try {
      await this.fh.datasync();
    } catch (err) {
      throw toExportError(err, this.device, 'flush');
    } finally {
      this.end();
    }
  }

  /** Advisory: a no-op (see the header). */
  async trim(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.checkRange(offsetBytes, lengthBytes);
  }

  async zero(offsetBytes: number, lengthBytes: number, _opts: { mayTrim: boolean }): Promise<void> {
    this.checkRange(offsetBytes, lengthBytes);
    if (this.fhSync === null) throw new ExportError('EPERM', `${this.device}: leg is read-only`);
    const zeros = sharedZeroChunk();
    let done = 0;
    this.begin();
    try {
      while (done < lengthBytes) {
        const n = Math.min(zeros.length, lengthBytes - done);
        await this.writeAll(this.fh.fd, n === zeros.length ? zeros : zeros.subarray(0, n), this.offsetBytes + offsetBytes + done, 'zero');
        done += n;
      }
    } finally {
      this.end();
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.inFlight > 0) await new Promise<void>((resolve) => (this.drained = resolve));
    if (this.mapped) this.mapped.io.unmap(this.mapped.map); // no copy in flight any more (drained)
    this.mapped = false;
    const results = await Promise.allSettled([this.fh.close(), this.fhSync?.close()]);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw toExportError(failed.reason, this.device, 'close');
  }
}
