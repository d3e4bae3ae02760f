// The fast-io addon (native/fast-io, loaded by src/nbd/server/fast-io.ts): its read/write calls move the
// same bytes as node:fs, report a system error as -errno (never a throw) and a bad range as a RangeError;
// systemError() rebuilds the Error fs would have thrown; and a FileLeg's synchronous I/O gives the same
// bytes and the same ExportError (code and message) with the addon and with the node:fs fallback. The
// addon is optional for the product, but CI builds it (scripts/build-native.sh): there its absence fails.
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { FileLeg } from '../../../src/mirror/legs/file.js';
import { ExportError } from '../../../src/nbd/export.js';
import { fastIo, setFastIoForTests, systemError, type FastIo } from '../../../src/nbd/server/fast-io.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'nbd-mirror-fastio-'));
});
afterEach(async () => {
  setFastIoForTests(undefined);
  await rm(dir, { recursive: true, force: true });
});

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (i * 7 + seed) & 0xff;
  return b;
}

/** What fs throws for this call (an Error with code/errno/syscall). */
function fsError(f: () => unknown): NodeJS.ErrnoException {
  try {
    f();
  } catch (err) {
    return err as NodeJS.ErrnoException;
  }
  throw new Error('expected a throw');
}

it('the addon is built (required under CI)', () => {
  if (process.env.CI === 'true') expect(fastIo()).not.toBeNull();
});

it('addon read/write: positioned and at the current position, short read at EOF, -errno, RangeError', async () => {
  const io = fastIo();
  if (io === null) return; // not built here (CI requires it above)
  const path = join(dir, 'f');
  await writeFile(path, Buffer.alloc(0));
  const fd = openSync(path, 'r+');
  const ro = openSync(path, 'r');
  try {
    const data = pattern(10000, 3);
    expect(io.write(fd, data, 100, 5000, 8192)).toBe(5000);
    expect(io.write(fd, data, 0, 0, 0)).toBe(0);
    const back = Buffer.alloc(6000);
    // 8192 + 5000 is the file's end: a short read.
    expect(io.read(fd, back, 1000, 5000, 8192)).toBe(5000);
    expect(back.subarray(1000, 6000).equals(data.subarray(100, 5100))).toBe(true);
    expect(io.read(fd, back, 0, 10, 8192 + 5000)).toBe(0);
    // position -1: the fd's own position (write(2)/read(2)), as fs does with a null position.
    expect(io.write(fd, data, 0, 3, -1)).toBe(3);
    const fsBack = Buffer.alloc(3);
    expect(readSync(ro, fsBack, 0, 3, 0)).toBe(3);
    expect(fsBack.equals(data.subarray(0, 3))).toBe(true);
    // A view (subarray) writes from its own start.
    expect(io.write(fd, data.subarray(50), 0, 2, 0)).toBe(2);
    expect((await readFile(path)).subarray(0, 2).equals(data.subarray(50, 52))).toBe(true);
    // System errors are results: writing a read-only fd is EBADF, as fs reports it.
    expect(io.write(ro, data, 0, 10, 0)).toBe(-9);
    expect(fsError(() => writeSync(ro, data, 0, 10, 0)).errno).toBe(-9);
    expect(io.read(-1, back, 0, 10, 0)).toBe(-9);
    // A range outside the buffer is a caller bug: thrown, nothing written.
    expect(() => io.write(fd, data, 9000, 2000, 0)).toThrow(RangeError);
    expect(() => io.read(fd, back, -1, 1, 0)).toThrow(RangeError);
    expect(() => io.write(fd, data, 0, 1, -2)).toThrow(RangeError);
    expect(() => (io.write as (...a: unknown[]) => number)(fd, 'not a buffer', 0, 1, 0)).toThrow(TypeError);
  } finally {
    closeSync(fd);
    closeSync(ro);
  }
});

it('systemError builds the Error fs throws (code, errno, syscall, message)', async () => {
  const path = join(dir, 'f');
  await writeFile(path, Buffer.alloc(16));
  const ro = openSync(path, 'r');
  try {
    const fromFs = fsError(() => writeSync(ro, Buffer.alloc(4), 0, 4, 0));
    const ours = systemError(-9, 'write');
    expect({ code: ours.code, errno: ours.errno, syscall: ours.syscall, message: ours.message }).toEqual({
      code: fromFs.code,
      errno: fromFs.errno,
      syscall: fromFs.syscall,
      message: fromFs.message,
    });
  } finally {
    closeSync(ro);
  }
  expect(systemError(-28, 'write').code).toBe('ENOSPC');
  expect(systemError(-5, 'read').message).toBe('EIO: i/o error, read');
});

/** Replace the leg's data fd (a private field) for the duration of f: errors without touching the file. */
async function withFd<T>(leg: FileLeg, fd: number, f: () => T | Promise<T>): Promise<T> {
  const l = leg as unknown as { fh: { fd: number } };
  const real = l.fh;
  l.fh = { fd };
  try {
    return await f();
  } finally {
    l.fh = real;
  }
}

async function legOutcomes(path: string, io: FastIo | null): Promise<{ bytes: Buffer; writeErr: ExportError; readErr: ExportError; asyncWriteErr: unknown }> {
  // read/write only: on a memory file system (os.tmpdir() may be one) writes would otherwise go to the file's
  // mapping (file.ts, mapped writes), which never sees the fd this test swaps in to provoke errors.
  setFastIoForTests(io === null ? null : { read: io.read.bind(io), write: io.write.bind(io) });
  const leg = await FileLeg.open(path, { offsetBytes: 4096 });
  const ro = openSync(path, 'r');
  const wo = openSync(path, 'w');
  try {
    expect(leg.writeNow(pattern(4096, 9), 8192)).toBeNull();
    await leg.write(pattern(512, 4), 100, { fua: false });
    const bytes = Buffer.alloc(8192);
    expect(leg.readNow(bytes, 4096)).toBeNull();
    const writeErr = await withFd(leg, ro, () => leg.writeNow(pattern(4096, 1), 0));
    const asyncWriteErr = await withFd(leg, ro, () => leg.write(pattern(4096, 1), 0, { fua: false }).then(() => null, (e: unknown) => e));
    const readErr = await withFd(leg, wo, () => leg.readNow(Buffer.alloc(4096), 0));
    expect(writeErr).toBeInstanceOf(ExportError);
    expect(readErr).toBeInstanceOf(ExportError);
    return { bytes, writeErr: writeErr as ExportError, readErr: readErr as ExportError, asyncWriteErr };
  } finally {
    closeSync(ro);
    closeSync(wo);
    await leg.close();
  }
}

it('a FileLeg gives the same bytes and the same errors with the addon and with node:fs', async () => {
  const path = join(dir, 'leg');
  await writeFile(path, Buffer.alloc(0));
  await truncate(path, 64 * 1024);
  const viaFs = await legOutcomes(path, null);
  expect(viaFs.writeErr.errno).toBe('EIO'); // EBADF is no NBD errno: EIO, as for any unknown code
  expect(viaFs.writeErr.message).toBe(`${path}: write of 4096 bytes at 0: EBADF: bad file descriptor, write`);
  expect(viaFs.readErr.message).toBe(`${path}: read of 4096 bytes at 0: EBADF: bad file descriptor, read`);
  expect((viaFs.asyncWriteErr as ExportError).message).toBe(viaFs.writeErr.message);
  setFastIoForTests(undefined);
  const io = fastIo();
  if (io === null) return; // not built here (CI requires it)
  await writeFile(path, Buffer.alloc(0));
  await truncate(path, 64 * 1024);
  const viaAddon = await legOutcomes(path, io);
  expect(viaAddon.bytes.equals(viaFs.bytes)).toBe(true);
  expect(viaAddon.bytes.subarray(4096).equals(pattern(4096, 9))).toBe(true);
  for (const k of ['writeErr', 'readErr'] as const) {
    expect({ errno: viaAddon[k].errno, message: viaAddon[k].message }).toEqual({ errno: viaFs[k].errno, message: viaFs[k].message });
  }
  expect((viaAddon.asyncWriteErr as ExportError).message).toBe(viaFs.writeErr.message);
});
