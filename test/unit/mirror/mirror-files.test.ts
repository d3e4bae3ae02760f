// End-to-end-ish: MirrorExport over real files (FileLeg) and a disk log on a file; random writes while
// the initial resync runs; then every leg file must be byte-identical and equal to what was written.
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createMirror } from '../../../src/mirror/mirror.js';
import { DiskLog } from '../../../src/mirror/log/disk.js';
import { FileLeg } from '../../../src/mirror/legs/file.js';
import { verifyMirror } from '../../../src/mirror/verify.js';
import { xorshift32 } from '../../helpers/xorshift.js';

const REGION = 64 * 1024;
const SIZE = 64 * REGION; // 4 MiB
let dir = '';

afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = '';
});

describe('mirror over file legs', () => {
  it('random writes during the initial resync; afterwards the leg files are identical and correct', async () => {
    dir = await mkdtemp(join(tmpdir(), 'nbd-mirror-files-'));
    const paths = ['a', 'b', 'c'].map((n) => join(dir, n));
    const seedBytes = Buffer.alloc(SIZE);
    const rand = xorshift32(20261125);
    for (let i = 0; i < SIZE; i++) seedBytes[i] = (rand() * 256) | 0;
    await writeFile(paths[0]!, seedBytes); // leg 0 has data; the others start as zeros
    await writeFile(paths[1]!, Buffer.alloc(SIZE));
    await writeFile(paths[2]!, Buffer.alloc(SIZE));
    await writeFile(join(dir, 'log'), Buffer.alloc(8192));
    const legs = await Promise.all(paths.map((p) => FileLeg.open(p, { offsetBytes: 0 })));
    const logDev = await FileLeg.open(join(dir, 'log'), { offsetBytes: 0 });
    const m = await createMirror({
      legs,
      log: new DiskLog({ device: logDev, regionSizeBytes: REGION, lengthBytes: SIZE, sync: 'default' }),
      regionSizeBytes: REGION,
      lengthBytes: SIZE,
      handleErrors: false,
      keepLog: false,
      resync: { chunkBytes: 32 * 1024 },
    });
    const model = Buffer.from(seedBytes);
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 200; i++) {
      // 16 concurrent non-overlapping writes per round (each in its own 256 KiB slot)
      const slot = i % 16;
      const len = 1 + Math.floor(rand() * 20000);
      const off = slot * (SIZE / 16) + Math.floor(rand() * (SIZE / 16 - len));
      const data = Buffer.alloc(len, (rand() * 255) | 1);
      data.copy(model, off);
      writes.push(m.write(data, off, { fua: rand() < 0.1 }));
      if (slot === 15) await Promise.all(writes.splice(0));
    }
    await Promise.all(writes);
    await m.flush();
    for (let i = 0; i < 200 && m.status().inSyncRegions < m.status().regionCount; i++) await new Promise((r) => setTimeout(r, 10));
    await m.resyncIdle();
    expect(m.status().line).toBe(`3 ${paths.join(' ')} 64/64 1 AAA 3 disk ${join(dir, 'log')} A`);
    const readBack = Buffer.alloc(SIZE);
    await m.read(readBack, 0);
    expect(readBack.equals(model)).toBe(true);
    expect((await verifyMirror(m)).mismatches).toEqual([]);
    await m.close();
    for (const p of paths) expect((await readFile(p)).equals(model)).toBe(true);
    // The log on disk: magic, 64 regions, all clean after close (postsuspend cleared idle regions).
    const logBytes = await readFile(join(dir, 'log'));
    expect(logBytes.readUInt32LE(0)).toBe(0x4d695272);
    expect(logBytes.readUInt32LE(8)).toBe(64);
    expect([...logBytes.subarray(1024, 1032)]).toEqual([255, 255, 255, 255, 255, 255, 255, 255]);
  });
});
