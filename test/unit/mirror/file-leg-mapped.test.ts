// Mapped writes (src/mirror/legs/file.ts, native/fast-io copyToMap): a large non-FUA write to a FileLeg on a
// memory file system is a copy into a shared mapping of the file on the thread pool. Checked here: the addon's
// calls (bytes, ERANGE outside the mapping, EBADF after unmap, and SIGBUS caught as EFAULT when the file was
// truncated under the mapping: the process lives on); which writes take the mapped path (large non-FUA on
// tmpfs; not small, FUA, or on a disk); a 2-leg mirror's legs byte-exact after mapped writes; a leg whose
// file was truncated under its mapping fails alone while the write succeeds on the other; without the addon
// the pool's pwrite path; close() waits for a copy in flight. /dev/shm (tmpfs) and the addon are optional
// for the product, but CI has both: there their absence fails.
import { closeSync, openSync, readSync, writeFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { FileLeg } from '../../../src/mirror/legs/file.js';
import { CoreLog } from '../../../src/mirror/log/core.js';
import { createMirror } from '../../../src/mirror/mirror.js';
import { fastIo, setFastIoForTests } from '../../../src/nbd/server/fast-io.js';

const MIB = 1024 * 1024;
const REGION = 512 * 1024;
const SIZE = 8 * MIB;

interface MappedIo {
  mapShared(fd: number, offsetBytes: number, lengthBytes: number): object | number;
  copyToMap(mapping: object, position: number, buf: Uint8Array, offset: number, length: number, callback: (result: number) => void): void;
  unmap(mapping: object): void;
}

function mappedIo(): MappedIo | null {
  const io = fastIo() as (Partial<MappedIo> & object) | null;
  if (io === null || io.mapShared === undefined || io.copyToMap === undefined || io.unmap === undefined) return null;
  return io as MappedIo;
}

let dir = '';
let shmDir = '';
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'nbd-mirror-mapped-'));
  const shm = await stat('/dev/shm').then((s) => s.isDirectory(), () => false);
  shmDir = shm ? await mkdtemp('/dev/shm/nbd-mirror-mapped-') : '';
});
afterEach(async () => {
  setFastIoForTests(undefined);
  await rm(dir, { recursive: true, force: true });
  if (shmDir) await rm(shmDir, { recursive: true, force: true });
});

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (i * 13 + seed * 7 + (i >> 12)) & 0xff;
  return b;
}

/** A tmpfs directory, or null where there is none (CI has one: there its absence fails). */
function memoryDir(): string | null {
  if (shmDir) return shmDir;
  if (process.env.CI === 'true') expect.fail('/dev/shm (tmpfs) is missing');
  return null;
}

it('the addon has the mapped writes (required under CI)', () => {
  if (process.env.CI === 'true') expect(mappedIo()).not.toBeNull();
});

it('addon: copyToMap writes the bytes, reports ERANGE outside the mapping, EFAULT after a truncate (SIGBUS caught), EBADF after unmap', async () => {
  const io = mappedIo();
  if (io === null) return; // not built here (CI requires it above)
  const path = join(dir, 'f');
  writeFileSync(path, Buffer.alloc(4 * MIB));
  const fd = openSync(path, 'r+');
  try {
    // From an offset that is not page-aligned (a slice of a pool file starts at any sector).
    const base = 4096 + 1000;
    const map = io.mapShared(fd, base, 3 * MIB);
    expect(typeof map).toBe('object');
    const m = map as object;
    const copy = (position: number, buf: Buffer, offset: number, length: number) =>
      new Promise<number>((resolve) => io.copyToMap(m, position, buf, offset, length, resolve));
    const data = pattern(MIB + 100, 1);
    expect(await copy(4096 + 3, data, 100, MIB)).toBe(MIB);
    const back = Buffer.alloc(MIB);
    expect(readSync(fd, back, 0, MIB, base + 4096 + 3)).toBe(MIB);
    expect(back.equals(data.subarray(100, 100 + MIB))).toBe(true);
    const before = Buffer.alloc(base + 4096 + 3);
    expect(readSync(fd, before, 0, before.length, 0)).toBe(before.length);
    expect(before.equals(Buffer.alloc(before.length))).toBe(true); // nothing before the range was touched
    expect(await copy(3 * MIB - 10, data, 0, 11)).toBe(-34); // ERANGE: past the mapped range, nothing written
    expect(await copy(3 * MIB - 10, data, 0, 10)).toBe(10);
    expect(() => io.copyToMap(m, 0, data, MIB, 200, () => {})).toThrow(RangeError);
    // The file shrinks under the mapping: the copy faults (SIGBUS), reported as EFAULT; the process lives on.
    await truncate(path, MIB);
    expect(await copy(2 * MIB, data, 0, 8192)).toBe(-14);
    expect(await copy(0, data, 0, 4096)).toBe(4096); // inside the file: fine again
    io.unmap(m);
    io.unmap(m); // idempotent
    expect(await copy(0, data, 0, 10)).toBe(-9); // EBADF
  } finally {
    closeSync(fd);
  }
});

it('FileLeg: large non-FUA writes on tmpfs are mapped; small, FUA and disk writes are not', async () => {
  const mem = memoryDir();
  if (mem === null || mappedIo() === null) return;
  const path = join(mem, 'leg');
  writeFileSync(path, Buffer.alloc(SIZE));
  const leg = await FileLeg.open(path, { offsetBytes: 4096 + 512 }); // a slice: not page-aligned
  try {
    expect(leg.memoryBacked).toBe(true);
    const big = pattern(MIB, 2);
    await leg.write(big, 3 * MIB, { fua: false });
    expect(leg.syncStats).toMatchObject({ mappedCalls: 1, poolCalls: 0 });
    await leg.write(pattern(4096, 3), 100, { fua: false }); // small: synchronous pwrite
    expect(leg.syncStats).toMatchObject({ mappedCalls: 1, poolCalls: 0, syncCalls: 1 });
    const fua = pattern(MIB, 4);
    await leg.write(fua, MIB, { fua: true }); // FUA: pwrite through the O_DSYNC handle
    expect(leg.syncStats).toMatchObject({ mappedCalls: 1, poolCalls: 1 });
    const file = await readFile(path);
    expect(file.subarray(4608 + 3 * MIB, 4608 + 4 * MIB).equals(big)).toBe(true);
    expect(file.subarray(4608 + MIB, 4608 + 2 * MIB).equals(fua)).toBe(true);
    expect(file.subarray(0, 4608).equals(Buffer.alloc(4608))).toBe(true);
    const back = Buffer.alloc(MIB);
    await leg.read(back, 3 * MIB);
    expect(back.equals(big)).toBe(true);
  } finally {
    await leg.close();
  }
  // Where os.tmpdir() is not a memory file system, writes are never mapped.
  const diskPath = join(dir, 'leg');
  writeFileSync(diskPath, Buffer.alloc(SIZE));
  const disk = await FileLeg.open(diskPath, { offsetBytes: 0 });
  try {
    await disk.write(pattern(MIB, 5), 0, { fua: false });
    expect(disk.syncStats.mappedCalls).toBe(disk.memoryBacked ? 1 : 0);
    expect((await readFile(diskPath)).subarray(0, MIB).equals(pattern(MIB, 5))).toBe(true);
  } finally {
    await disk.close();
  }
});

async function mirrorOn(base: string) {
  const paths = ['a', 'b'].map((n) => join(base, n));
  for (const p of paths) writeFileSync(p, Buffer.alloc(SIZE));
  const legs = await Promise.all(paths.map((p) => FileLeg.open(p, { offsetBytes: 0 })));
  const m = await createMirror({
    legs,
    log: new CoreLog({ regionSizeBytes: REGION, lengthBytes: SIZE, sync: 'nosync' }),
    regionSizeBytes: REGION,
    lengthBytes: SIZE,
    handleErrors: false,
    keepLog: false,
  });
  return { m, legs, paths };
}

it('mirror: 1 MiB writes (two region pieces each) are byte-exact on both legs through the mapped path', async () => {
  const mem = memoryDir();
  if (mem === null || mappedIo() === null) return;
  const { m, legs, paths } = await mirrorOn(mem);
  try {
    const model = Buffer.alloc(SIZE);
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 12; i++) {
      const off = ((i * 5) % 7) * MIB + (i % 3) * 4096; // unaligned to regions too: 2-3 pieces
      const data = pattern(MIB, 10 + i);
      writes.push(m.write(data, off, { fua: false }));
      if (i % 4 === 3) await Promise.all(writes.splice(0)); // overlapping writes in separate batches
      data.copy(model, off);
    }
    await Promise.all(writes);
    expect(m.status().healthChars).toBe('AA');
    for (const leg of legs) expect(leg.syncStats.mappedCalls).toBeGreaterThan(0);
    for (const p of paths) expect((await readFile(p)).equals(model)).toBe(true);
  } finally {
    await m.close();
  }
});

it('mirror: a leg whose file was truncated under its mapping fails alone; the write succeeds on the other leg', async () => {
  const mem = memoryDir();
  if (mem === null || mappedIo() === null) return;
  const { m, legs, paths } = await mirrorOn(mem);
  try {
    await m.write(pattern(MIB, 20), 0, { fua: false }); // maps both legs
    expect(legs[1]!.syncStats.mappedCalls).toBeGreaterThan(0);
    await truncate(paths[1]!, 0);
    const data = pattern(MIB, 21);
    await m.write(data, 4 * MIB, { fua: false });
    expect(m.status().healthChars).toBe('AD');
    const a = await readFile(paths[0]!);
    expect(a.subarray(4 * MIB, 5 * MIB).equals(data)).toBe(true);
    expect(a.subarray(0, MIB).equals(pattern(MIB, 20))).toBe(true);
    const back = Buffer.alloc(MIB);
    await m.read(back, 4 * MIB); // served by the healthy leg
    expect(back.equals(data)).toBe(true);
  } finally {
    await m.close();
  }
});

it('mirror without the addon: large writes take the pool pwrite path, byte-exact', async () => {
  const mem = memoryDir();
  if (mem === null) return;
  setFastIoForTests(null);
  const { m, legs, paths } = await mirrorOn(mem);
  try {
    const data = pattern(MIB, 30);
    await m.write(data, MIB + 4096, { fua: false });
    for (const leg of legs) expect(leg.syncStats).toMatchObject({ mappedCalls: 0 });
    for (const leg of legs) expect(leg.syncStats.poolCalls).toBeGreaterThan(0);
    for (const p of paths) expect((await readFile(p)).subarray(MIB + 4096, 2 * MIB + 4096).equals(data)).toBe(true);
  } finally {
    await m.close();
  }
});

it('close() waits for a mapped copy in flight; a write after close is refused', async () => {
  const mem = memoryDir();
  if (mem === null || mappedIo() === null) return;
  const path = join(mem, 'leg');
  writeFileSync(path, Buffer.alloc(SIZE));
  const leg = await FileLeg.open(path, { offsetBytes: 0 });
  const data = pattern(4 * MIB, 40);
  const written = leg.write(data, 2 * MIB, { fua: false });
  const closed = leg.close();
  await expect(written).resolves.toBeUndefined();
  await closed;
  expect(leg.syncStats.mappedCalls).toBe(1);
  expect((await readFile(path)).subarray(2 * MIB, 6 * MIB).equals(data)).toBe(true);
  await expect(leg.write(data, 0, { fua: false })).rejects.toMatchObject({ errno: 'EIO' });
});

it('small synchronous writes on tmpfs go through the mapping too: byte-exact, and a truncated file fails the write (EIO), never the process', async () => {
  const mem = memoryDir();
  if (mem === null || mappedIo() === null) return;
  const path = join(mem, 'leg');
  writeFileSync(path, Buffer.alloc(SIZE));
  const leg = await FileLeg.open(path, { offsetBytes: 512 });
  try {
    const a = pattern(4096, 50);
    expect(leg.writeNow(a, 3 * MIB + 100)).toBeNull();
    await leg.write(pattern(512, 51), 7 * MIB, { fua: false });
    expect(leg.syncStats).toMatchObject({ syncCalls: 2, poolCalls: 0, mappedCalls: 0 });
    const file = await readFile(path);
    expect(file.subarray(512 + 3 * MIB + 100, 512 + 3 * MIB + 4196).equals(a)).toBe(true);
    expect(file.subarray(512 + 7 * MIB, 512 + 7 * MIB + 512).equals(pattern(512, 51))).toBe(true);
    // The same call through pwrite would have extended the file; through the mapping it faults: an error, not a crash.
    await truncate(path, MIB);
    const err = leg.writeNow(a, 4 * MIB);
    expect(err).toMatchObject({ errno: 'EIO' });
    expect(String((err as Error).message)).toContain('EFAULT');
    await expect(leg.write(pattern(100, 52), 5 * MIB, { fua: false })).rejects.toMatchObject({ errno: 'EIO' });
    expect(leg.writeNow(a, 4096)).toBeNull(); // inside the file: fine
  } finally {
    await leg.close();
  }
});

it('mirror: 4 KiB writes on tmpfs legs (synchronous, mapped) are byte-exact on both legs; a truncated leg fails alone', async () => {
  const mem = memoryDir();
  if (mem === null || mappedIo() === null) return;
  const { m, paths } = await mirrorOn(mem);
  try {
    const model = Buffer.alloc(SIZE);
    for (let i = 0; i < 64; i++) {
      const off = ((i * 37) % 2048) * 4096;
      const data = pattern(4096, 60 + i);
      await m.write(data, off, { fua: false });
      data.copy(model, off);
    }
    for (const p of paths) expect((await readFile(p)).equals(model)).toBe(true);
    await truncate(paths[0]!, 0);
    const data = pattern(4096, 99);
    await m.write(data, 6 * MIB, { fua: false });
    expect(m.status().healthChars).toBe('DA');
    expect((await readFile(paths[1]!)).subarray(6 * MIB, 6 * MIB + 4096).equals(data)).toBe(true);
  } finally {
    await m.close();
  }
});
