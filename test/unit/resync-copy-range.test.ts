// The copy-range addon resync uses between file legs (native/copy-range): copy_file_range on a disk
// filesystem, pread + pwrite through a per-thread buffer into tmpfs (/dev/shm). Both copy the same bytes
// to the target offset, in pieces longer than the buffer and at unaligned offsets, stop short only at the
// source's end of file, and reject with the errno name. The addon is optional for the product, but CI
// builds it (scripts/build-native.sh): there its absence fails the test.
import { closeSync, existsSync, openSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { copyRange, copyRangeAvailable } from '../../src/mirror/legs/copy-range.js';

const MiB = 1024 * 1024;
const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (i * 131 + seed + (i >> 12)) & 0xff;
  return b;
}

it('the addon is built (required under CI)', () => {
  if (process.env.CI === 'true') expect(copyRangeAvailable()).toBe(true);
});

// /dev/shm is tmpfs on Linux (the buffered path); os.tmpdir() is whatever the machine has (here a disk).
const places = [{ name: 'os.tmpdir()', base: tmpdir() }, ...(existsSync('/dev/shm') ? [{ name: '/dev/shm (tmpfs: buffered)', base: '/dev/shm' }] : [])];

describe.each(places)('copyRange in $name', ({ base }) => {
  it('copies the bytes to the target offset, longer than one buffer, at unaligned offsets', async () => {
    if (!copyRangeAvailable()) return;
    const dir = await mkdtemp(join(base, 'nbdm-resync-copy-'));
    dirs.push(dir);
    const src = pattern(5 * MiB + 777, 3);
    await writeFile(join(dir, 'a'), src);
    await writeFile(join(dir, 'b'), Buffer.alloc(6 * MiB));
    const fa = openSync(join(dir, 'a'), 'r');
    const fb = openSync(join(dir, 'b'), 'r+');
    try {
      const length = 3 * MiB + 12345; // several buffer pieces, not a multiple of any
      expect(await copyRange(fa, 4099, fb, 65537, length)).toBe(length);
      const b = await readFile(join(dir, 'b'));
      expect(b.subarray(65537, 65537 + length).equals(src.subarray(4099, 4099 + length))).toBe(true);
      expect(b.subarray(0, 65537).every((x) => x === 0)).toBe(true);
      expect(b.subarray(65537 + length).every((x) => x === 0)).toBe(true);
      // The source ends: fewer bytes, the rest of the target untouched.
      const tail = src.length - 5 * MiB;
      expect(await copyRange(fa, 5 * MiB, fb, 0, 2 * MiB)).toBe(tail);
      const b2 = await readFile(join(dir, 'b'));
      expect(b2.subarray(0, tail).equals(src.subarray(5 * MiB))).toBe(true);
      expect(b2.subarray(tail, 65537).every((x) => x === 0)).toBe(true);
    } finally {
      closeSync(fa);
      closeSync(fb);
    }
  });

  it('rejects with the errno name (a target opened read-only: EBADF)', async () => {
    if (!copyRangeAvailable()) return;
    const dir = await mkdtemp(join(base, 'nbdm-resync-copy-'));
    dirs.push(dir);
    await writeFile(join(dir, 'a'), pattern(MiB, 5));
    await writeFile(join(dir, 'b'), Buffer.alloc(MiB));
    const fa = openSync(join(dir, 'a'), 'r');
    const fb = openSync(join(dir, 'b'), 'r');
    try {
      await expect(copyRange(fa, 0, fb, 0, MiB)).rejects.toMatchObject({ code: 'EBADF' });
    } finally {
      closeSync(fa);
      closeSync(fb);
    }
  });
});
