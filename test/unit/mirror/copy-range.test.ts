// FileLeg.copyRangeTo (copy_file_range through the native/copy-range addon): the bytes land at the target
// leg's own table offset, a non-file target or an impossible copy answers false (the caller reads and
// writes instead), and a mirror's resync between file legs goes through it. The addon is optional for the
// product, but CI builds it (scripts/build-native.sh): there its absence fails the test.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { FileLeg } from '../../../src/mirror/legs/file.js';
import { MemoryLeg } from '../../../src/mirror/legs/memory.js';
import { copyRangeAvailable } from '../../../src/mirror/legs/copy-range.js';
import { createMirror } from '../../../src/mirror/mirror.js';
import { CoreLog } from '../../../src/mirror/log/core.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'nbd-mirror-copyrange-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (i * 31 + seed + (i >> 9)) & 0xff;
  return b;
}

it('the addon is built (required under CI)', () => {
  if (process.env.CI === 'true') expect(copyRangeAvailable()).toBe(true);
});

it('copies a range between file legs at each leg offset; refuses what it cannot do', async () => {
  const src = pattern(1024 * 1024, 7);
  await writeFile(join(dir, 'a'), src);
  await writeFile(join(dir, 'b'), Buffer.alloc(1024 * 1024 + 8192));
  const a = await FileLeg.open(join(dir, 'a'), { offsetBytes: 0 });
  const b = await FileLeg.open(join(dir, 'b'), { offsetBytes: 8192 });
  const copied = await a.copyRangeTo(b, 65536, 300_000);
  expect(copied).toBe(copyRangeAvailable());
  if (copied) {
    const out = await readFile(join(dir, 'b'));
    expect(out.subarray(8192 + 65536, 8192 + 65536 + 300_000).equals(src.subarray(65536, 65536 + 300_000))).toBe(true);
    expect(out.subarray(0, 8192 + 65536).every((x) => x === 0)).toBe(true);
    expect(out.subarray(8192 + 65536 + 300_000).every((x) => x === 0)).toBe(true);
  }
  // Not a file leg, the same leg, or a range beyond the leg: false (never a rejection).
  await expect(a.copyRangeTo(new MemoryLeg({ sizeBytes: 1024 * 1024 }), 0, 4096)).resolves.toBe(false);
  await expect(a.copyRangeTo(a, 0, 4096)).resolves.toBe(false);
  await expect(a.copyRangeTo(b, 1024 * 1024 - 4096, 8192)).resolves.toBe(false);
  await a.close();
  await expect(a.copyRangeTo(b, 0, 4096)).resolves.toBe(false);
  await b.close();
});

it('a resync between file legs copies every region (offload when available), legs end identical', async () => {
  const REGION = 64 * 1024;
  const SIZE = 40 * REGION + 12345; // a partial last region
  const src = pattern(SIZE, 3);
  await writeFile(join(dir, 'a'), src);
  await writeFile(join(dir, 'b'), Buffer.alloc(SIZE));
  const legs = [await FileLeg.open(join(dir, 'a'), { offsetBytes: 0 }), await FileLeg.open(join(dir, 'b'), { offsetBytes: 0 })];
  const m = await createMirror({
    legs,
    log: new CoreLog({ regionSizeBytes: REGION, lengthBytes: SIZE, sync: 'default' }),
    regionSizeBytes: REGION,
    lengthBytes: SIZE,
    handleErrors: false,
    keepLog: false,
    resync: { chunkBytes: 16 * 1024 },
  });
  for (let i = 0; i < 500 && m.status().inSyncRegions < m.status().regionCount; i++) await new Promise((r) => setTimeout(r, 5));
  await m.resyncIdle();
  expect(m.status().inSyncRegions).toBe(m.status().regionCount);
  expect(m.status().healthChars).toBe('AA');
  await m.close();
  expect((await readFile(join(dir, 'b'))).equals(src)).toBe(true);
});
