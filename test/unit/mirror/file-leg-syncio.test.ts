// FileLeg's adaptive synchronous I/O (legs/file.ts header): small reads and writes run on the main thread
// (counted as sync calls), large ones and FUA writes go through the thread pool, and both paths give the
// same bytes, zero-fill past EOF and the same errors (a closed leg rejects, never throws).
import { afterEach, beforeEach, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, stat, statfs, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExportError } from '../../../src/nbd/export.js';
import { FileLeg, SYNC_IO_BYTES_MAX } from '../../../src/mirror/legs/file.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'nbd-mirror-syncio-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (i * 13 + seed) & 0xff;
  return b;
}

it('small requests take the synchronous path, large and FUA ones the pool; the bytes agree', async () => {
  const path = join(dir, 'leg');
  await writeFile(path, Buffer.alloc(0));
  await truncate(path, 1024 * 1024);
  const leg = await FileLeg.open(path, { offsetBytes: 4096 });
  const small = pattern(4096, 1);
  const large = pattern(SYNC_IO_BYTES_MAX + 4096, 2);
  const fua = pattern(512, 3);
  // Off the main thread: the pool's pwrite/pread, or on a memory file system a mapped write (file.ts header).
  const offThread = () => leg.syncStats.poolCalls + leg.syncStats.mappedCalls;
  await leg.write(small, 0, { fua: false });
  expect(leg.syncStats).toMatchObject({ syncCalls: 1 });
  expect(offThread()).toBe(0);
  await leg.write(large, 8192, { fua: false });
  expect(leg.syncStats).toMatchObject({ syncCalls: 1 });
  expect(offThread()).toBe(1);
  await leg.write(fua, 200_000, { fua: true });
  expect(leg.syncStats).toMatchObject({ syncCalls: 1 });
  expect(offThread()).toBe(2);
  const back = Buffer.alloc(4096);
  await leg.read(back, 0);
  expect(back.equals(small)).toBe(true);
  const backLarge = Buffer.alloc(large.length);
  await leg.read(backLarge, 8192);
  expect(backLarge.equals(large)).toBe(true);
  expect(leg.syncStats).toMatchObject({ syncCalls: 2 });
  expect(offThread()).toBe(3);
  const file = await readFile(path);
  expect(file.subarray(4096, 8192).equals(small)).toBe(true);
  expect(file.subarray(4096 + 200_000, 4096 + 200_512).equals(fua)).toBe(true);
  // Past EOF of a file that shrank: zeros, on the synchronous path too.
  await truncate(path, 4096 + 2048);
  const tail = Buffer.alloc(4096, 0xee);
  await leg.read(tail, 0);
  expect(tail.subarray(0, 2048).equals(small.subarray(0, 2048))).toBe(true);
  expect(tail.subarray(2048).every((b) => b === 0)).toBe(true);
  expect(leg.syncStats.backoffs).toBe(0);
  await leg.close();
  // A closed leg rejects (a returned promise, not a synchronous throw).
  let p: Promise<void> | undefined;
  expect(() => (p = leg.write(small, 0, { fua: false }))).not.toThrow();
  await expect(p).rejects.toBeInstanceOf(ExportError);
  expect(() => (p = leg.read(back, 0))).not.toThrow();
  await expect(p).rejects.toBeInstanceOf(ExportError);
});

it('flush is synchronous on a memory file system (fdatasync has no device to wait for), pooled elsewhere', async () => {
  const dirs = [dir];
  // /dev/shm is tmpfs on Linux: the synchronous case is exercised even when os.tmpdir() is on a disk.
  const shm = await stat('/dev/shm').then((s) => s.isDirectory(), () => false);
  if (shm) dirs.push(await mkdtemp('/dev/shm/nbd-mirror-syncio-'));
  try {
    for (const d of dirs) {
      const path = join(d, 'leg');
      await writeFile(path, Buffer.alloc(65536));
      const memory = [0x01021994, 0x858458f6].includes(Number((await statfs(path)).type));
      const leg = await FileLeg.open(path, { offsetBytes: 0 });
      expect(leg.memoryBacked).toBe(memory);
      await leg.write(pattern(4096, 9), 4096, { fua: false });
      await leg.flush();
      await leg.flush();
      expect(leg.flushStats).toMatchObject(memory ? { syncFlushes: 2, poolFlushes: 0 } : { syncFlushes: 0, poolFlushes: 2 });
      await leg.close();
      await expect(leg.flush()).rejects.toBeInstanceOf(ExportError);
    }
  } finally {
    if (dirs[1] !== undefined) await rm(dirs[1], { recursive: true, force: true });
  }
});
