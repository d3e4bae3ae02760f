// Overlapping writes in flight at once must leave every leg the same (src/mirror/write-order.ts).
//
// World: a 2-leg mirror over memory legs behind DelayedLeg filters on a manual clock, so the test decides
// in which order each leg completes the writes it was given. Without the write-order hook, leg A applying
// two overlapping writes in issue order and leg B in reverse ends with A != B while the region counts as
// in sync, and balanced reads return either version (silent divergence). With it, the second write reaches
// the legs only after the first completed on both, and both legs hold the later write.
//
// The randomised part: batches of writes / zeroes / trims (trim zeroes on these legs) with overlapping
// ranges, some crossing region edges, all in flight at once, each leg completing them in its own seeded
// random order. Afterwards both legs must equal a plain model that applies the requests one after another
// in submission order, and every region must still be in sync.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { createMirror, type MirrorExport } from '../../src/mirror/mirror.js';
import { CoreLog } from '../../src/mirror/log/core.js';
import { ManualScheduler } from '../../src/mirror/scheduler.js';
import { MemoryLeg } from '../../src/mirror/legs/memory.js';
import { DelayedLeg, type Latency } from '../../src/mirror/legs/delayed.js';
import { FaultyLeg } from '../../src/mirror/legs/faulty.js';
import type { Leg } from '../../src/mirror/legs/leg.js';

const REGION = 64 * 1024;
const REGIONS = 4;
const SIZE = REGION * REGIONS;

const turn = () => new Promise<void>((r) => setImmediate(r));

interface World {
  m: MirrorExport;
  mem: MemoryLeg[];
  /** The legs as the mirror got them (filters over mem). */
  legs: Leg[];
  sched: ManualScheduler;
}

async function world(latencies: Latency[], opts: { wrap?: (leg: Leg, i: number) => Leg; handleErrors?: boolean } = {}): Promise<World> {
  const sched = new ManualScheduler();
  const mem = latencies.map((_, i) => new MemoryLeg({ device: `/leg${i}`, sizeBytes: SIZE, trimZeroes: true }));
  const legs = mem.map((l, i) => {
    const d: Leg = new DelayedLeg(l, { scheduler: sched, latencyMs: latencies[i]! });
    return opts.wrap ? opts.wrap(d, i) : d;
  });
  const m = await createMirror({
    legs,
    log: new CoreLog({ regionSizeBytes: REGION, lengthBytes: SIZE, sync: 'nosync' }),
    regionSizeBytes: REGION,
    lengthBytes: SIZE,
    handleErrors: opts.handleErrors ?? false,
    keepLog: false,
    scheduler: sched,
    resync: { autoStart: true, rateBytesPerSec: 0, chunkBytes: 16 * 1024, progressIntervalMs: 1000 },
    limits: { cleanDelayMs: 50 },
  });
  return { m, mem, legs, sched };
}

/** Run the clock (1 ms steps) and the event loop until every promise settled. */
async function runUntil(w: World, promises: Promise<unknown>[], maxSteps = 5000): Promise<PromiseSettledResult<unknown>[]> {
  let settled = false;
  const all = Promise.allSettled(promises).then((r) => {
    settled = true;
    return r;
  });
  for (let i = 0; i < maxSteps && !settled; i++) {
    await turn();
    w.sched.advance(1);
  }
  expect(settled).toBe(true);
  return all;
}

/** Latency per leg write: leg 0 completes writes in issue order, leg 1 in reverse issue order. */
function orderedLatencies(): Latency[] {
  let a = 0;
  let b = 0;
  return [(op) => (op === 'read' || op === 'flush' ? 0 : 10 + a++), (op) => (op === 'read' || op === 'flush' ? 0 : Math.max(1, 100 - b++))];
}

describe('overlapping writes in flight (write order)', () => {
  it('two overlapping writes: legs completing them in opposite orders still end identical, with the later write', async () => {
    const w = await world(orderedLatencies());
    const off = REGION + 4096;
    const first = Buffer.alloc(REGION, 0x11);
    const second = Buffer.alloc(REGION, 0x22);
    // Both in flight at once (a pipelining NBD client); the second crosses into the next region too.
    const p1 = w.m.write(first, off, { fua: false });
    const p2 = w.m.write(second, off, { fua: false });
    const res = await runUntil(w, [p1, p2]);
    expect(res.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled']);
    expect(w.m.status().inSyncRegions).toBe(REGIONS);
    const a = w.mem[0]!.bytes.subarray(off, off + REGION);
    const b = w.mem[1]!.bytes.subarray(off, off + REGION);
    expect(a.equals(b)).toBe(true); // without write-order.ts: leg 0 holds 0x22, leg 1 holds 0x11
    expect(a.equals(second)).toBe(true);
    // Balanced reads (alternating legs) all see the same bytes.
    for (let i = 0; i < 4; i++) {
      const out = Buffer.alloc(REGION);
      const rp = w.m.read(out, off);
      await runUntil(w, [rp]);
      expect(out.equals(second)).toBe(true);
    }
    await w.m.close();
  });

  it('a write overlapping a zero and a trim in flight: issued after them, on both legs', async () => {
    const w = await world(orderedLatencies());
    const data = Buffer.alloc(8192, 0x5a);
    const ps = [
      w.m.write(Buffer.alloc(3 * 8192, 0x33), 0, { fua: false }),
      w.m.zero(4096, 8192, { fua: true, mayTrim: false, fastZero: false }),
      w.m.trim(8192, 8192, { fua: false }),
      w.m.write(data, 6000, { fua: false }),
    ];
    await runUntil(w, ps);
    expect(w.mem[0]!.bytes.equals(w.mem[1]!.bytes)).toBe(true);
    const model = Buffer.alloc(SIZE);
    model.fill(0x33, 0, 3 * 8192);
    model.fill(0, 4096, 4096 + 8192);
    model.fill(0, 8192, 8192 + 8192);
    data.copy(model, 6000);
    expect(w.mem[0]!.bytes.equals(model)).toBe(true);
    await w.m.close();
  });

  it('non-overlapping writes are not delayed by each other', async () => {
    // Leg 1 is slow for the first write only: the second (disjoint, same region) completes meanwhile.
    let n = 0;
    const w = await world([0, (op) => (op === 'write' && n++ === 0 ? 1000 : 1)]);
    let secondDone = false;
    const p1 = w.m.write(Buffer.alloc(4096, 1), 0, { fua: false });
    const p2 = w.m.write(Buffer.alloc(4096, 2), 8192, { fua: false }).then(() => void (secondDone = true));
    for (let i = 0; i < 50 && !secondDone; i++) {
      await turn();
      w.sched.advance(1);
    }
    expect(secondDone).toBe(true);
    await runUntil(w, [p1, p2]);
    await w.m.close();
  });

  it('random batches of overlapping writes / zeroes / trims, each leg completing in its own order: legs equal the model', async () => {
    const opArb = fc.record({
      kind: fc.constantFrom('write', 'write', 'write', 'zero', 'trim'),
      // A few hot spots so requests overlap often; lengths up to 1.5 regions so some cross region edges.
      offsetBytes: fc.integer({ min: 0, max: 15 }).map((k) => k * 12288 + 512),
      lengthBytes: fc.integer({ min: 1, max: 24 }).map((k) => k * 4096),
      fua: fc.boolean(),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(fc.array(opArb, { minLength: 2, maxLength: 12 }), { minLength: 1, maxLength: 3 }), fc.integer({ min: 1, max: 2 ** 31 - 1 }), async (batches, seed) => {
        let x = seed;
        const rand = () => {
          x ^= x << 13;
          x ^= x >>> 17;
          x ^= x << 5;
          return (x >>> 0) / 2 ** 32;
        };
        const lat: Latency = (op) => (op === 'read' || op === 'flush' ? 0 : 1 + Math.floor(rand() * 40));
        const w = await world([lat, lat]);
        const model = Buffer.alloc(SIZE);
        let tag = 1;
        for (const batch of batches) {
          const ps: Promise<void>[] = [];
          for (const op of batch) {
            const len = Math.min(op.lengthBytes, SIZE - op.offsetBytes);
            if (op.kind === 'write') {
              const data = Buffer.alloc(len, tag++ & 0xff || 1);
              data.copy(model, op.offsetBytes);
              ps.push(w.m.write(data, op.offsetBytes, { fua: op.fua }));
            } else {
              model.fill(0, op.offsetBytes, op.offsetBytes + len);
              ps.push(op.kind === 'zero' ? w.m.zero(op.offsetBytes, len, { fua: op.fua, mayTrim: false, fastZero: false }) : w.m.trim(op.offsetBytes, len, { fua: op.fua }));
            }
          }
          const res = await runUntil(w, ps);
          expect(res.every((r) => r.status === 'fulfilled')).toBe(true);
          expect(w.mem[0]!.bytes.equals(w.mem[1]!.bytes)).toBe(true);
          expect(w.mem[0]!.bytes.equals(model)).toBe(true);
          expect(w.m.status().inSyncRegions).toBe(REGIONS);
        }
        await w.m.close();
      }),
      { numRuns: 60 },
    );
  });

  it('handle_errors: overlapping writes, the first held after a leg failure and re-issued after a reload: legs equal once resynced', async () => {
    // Leg 1 fails the first write. The overlapping second write waits for the first to finish on both legs,
    // then goes to the default leg only (the region is out of sync now) and is acknowledged; the first is
    // held, re-issued after the reload onto [leg 0, new leg 2], and lands last; the resync copies leg 0 to
    // leg 2. Every leg of the new table then holds one whole write, the same one.
    const faulty: FaultyLeg[] = [];
    const w = await world(orderedLatencies(), {
      handleErrors: true,
      wrap: (leg, i) => {
        if (i !== 1) return leg;
        const f: FaultyLeg = new FaultyLeg(leg, { rules: { write: {} }, onFault: () => f.disarm('write') });
        faulty.push(f);
        return f;
      },
    });
    const off = 4096;
    const first = Buffer.alloc(3 * 4096, 0x11);
    const second = Buffer.alloc(3 * 4096, 0x22);
    let firstDone = false;
    const p1 = w.m.write(first, off, { fua: false }).then(() => void (firstDone = true));
    const p2 = w.m.write(second, off, { fua: false });
    await runUntil(w, [p2]);
    expect(faulty[0]!.injectedCount).toBe(1);
    expect(firstDone).toBe(false);
    expect(w.m.status().heldWrites).toBe(1);
    // Repair: suspend --noflush, reload with a new leg in place of the failed one, resume.
    await runUntil(w, [w.m.suspend({ noflush: true })]);
    const spare = new MemoryLeg({ device: '/leg2', sizeBytes: SIZE, trimZeroes: true });
    w.mem.push(spare);
    w.m.reload({ legs: [w.legs[0]!, new DelayedLeg(spare, { scheduler: w.sched, latencyMs: 5 })] });
    await runUntil(w, [w.m.resume(), p1]);
    expect(firstDone).toBe(true);
    for (let i = 0; i < 2000 && w.m.status().inSyncRegions < REGIONS; i++) {
      await turn();
      w.sched.advance(1);
    }
    expect(w.m.status().inSyncRegions).toBe(REGIONS);
    await runUntil(w, [w.m.resyncIdle()]);
    expect(w.mem[0]!.bytes.equals(spare.bytes)).toBe(true);
    expect(w.mem[0]!.bytes.subarray(off, off + first.length).equals(first)).toBe(true); // re-issued, so last
    await w.m.close();
  });
});
