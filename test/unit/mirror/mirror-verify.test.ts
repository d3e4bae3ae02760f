import { describe, expect, it } from 'vitest';
import { createMirror } from '../../../src/mirror/mirror.js';
import { CoreLog } from '../../../src/mirror/log/core.js';
import { verifyMirror } from '../../../src/mirror/verify.js';
import { ManualScheduler } from '../../../src/mirror/scheduler.js';
import { MemLeg } from '../../sim/mem-leg.js';

const REGION = 16 * 1024;
const SIZE = 8 * REGION;

describe('verify', () => {
  it('finds regions that differ while I/O runs, and repair makes the legs equal', async () => {
    const a = new MemLeg('/a', SIZE);
    const b = new MemLeg('/b', SIZE);
    const c = new MemLeg('/c', SIZE);
    const m = await createMirror({
      legs: [a, b, c],
      log: new CoreLog({ regionSizeBytes: REGION, lengthBytes: SIZE, sync: 'nosync' }),
      regionSizeBytes: REGION,
      lengthBytes: SIZE,
      handleErrors: false,
      keepLog: false,
      scheduler: new ManualScheduler(),
    });
    await m.write(Buffer.alloc(SIZE, 1), 0, { fua: false });
    // Silent corruption behind the mirror's back (nosync told it the legs were equal).
    b.durable[3 * REGION + 5] = 9;
    c.durable[6 * REGION] = 8;
    // Client I/O keeps running while verify walks the regions.
    const io = (async () => {
      for (let i = 0; i < 20; i++) await m.write(Buffer.alloc(512, 2), (i % 8) * REGION + 1024, { fua: false });
    })();
    const report = await verifyMirror(m, { chunkBytes: 4096 });
    await io;
    expect(report.regionsChecked).toBe(8);
    expect(report.mismatches.map((x) => [x.region, x.legIndexes])).toEqual([
      [3, [1]],
      [6, [2]],
    ]);
    const fixed = await verifyMirror(m, { repair: true });
    expect(fixed.mismatches.length).toBe(2);
    expect(a.durable.equals(b.durable)).toBe(true);
    expect(a.durable.equals(c.durable)).toBe(true);
    expect((await verifyMirror(m)).mismatches).toEqual([]);
  });
});
