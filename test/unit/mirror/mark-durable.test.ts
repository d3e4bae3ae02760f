// mark-durable.test.ts — a log that says this node's mark is not (yet) in the group's state (the cluster
// log after a lost partition merge, until its marks are sent again) makes a write to a region already
// marked here wait for the next log flush instead of going straight to the legs.
import { describe, expect, it } from 'vitest';
import { createMirror } from '../../../src/mirror/mirror.js';
import { CoreLog } from '../../../src/mirror/log/core.js';
import { ManualScheduler } from '../../../src/mirror/scheduler.js';
import { MemLeg } from '../../sim/mem-leg.js';

const REGION = 64 * 1024;
const SIZE = REGION * 4;

/** A core log whose marks count as durable only after a flush that the test lets through. */
class GatedGroupLog extends CoreLog {
  durable = new Set<number>();
  flushes = 0;
  gate: Promise<void> | null = null;
  markDurable(region: number): boolean {
    return this.durable.has(region);
  }
  override async flush(): Promise<void> {
    this.flushes++;
    if (this.gate) await this.gate;
    await super.flush();
    for (let r = 0; r < this.regionCount; r++) if (!this.isClean(r)) this.durable.add(r);
  }
}

const settle = async (n = 10) => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

describe('a mark the log does not hold as durable', () => {
  it('a write to a region marked here waits for the next log flush', async () => {
    const log = new GatedGroupLog({ regionSizeBytes: REGION, lengthBytes: SIZE, sync: 'nosync' });
    const legs = [new MemLeg('/a', SIZE), new MemLeg('/b', SIZE)];
    const m = await createMirror({
      legs,
      log,
      regionSizeBytes: REGION,
      lengthBytes: SIZE,
      handleErrors: false,
      keepLog: false,
      scheduler: new ManualScheduler(),
      resync: { autoStart: false },
    });
    try {
      await m.write(Buffer.alloc(4096, 1), 0, { fua: false });
      expect(log.durable.has(0)).toBe(true);
      const flushes = log.flushes;
      // Marked here and durable: straight to the legs, no flush.
      await m.write(Buffer.alloc(4096, 2), 0, { fua: false });
      expect(log.flushes).toBe(flushes);
      // The group lost the mark (a re-taken state): the next write waits for a flush that carries it.
      log.durable.clear();
      let open!: () => void;
      log.gate = new Promise<void>((r) => (open = r));
      const w = m.write(Buffer.alloc(4096, 3), 0, { fua: false });
      await settle();
      expect(log.flushes).toBe(flushes + 1);
      const before = Buffer.alloc(1);
      await legs[0]!.read(before, 0);
      expect(before[0], 'the write reached a leg before the flush').toBe(2);
      open();
      await w;
      const after = Buffer.alloc(1);
      for (const leg of legs) {
        await leg.read(after, 0);
        expect(after[0]).toBe(3);
      }
    } finally {
      log.gate = null;
      await m.close();
    }
  });
});
