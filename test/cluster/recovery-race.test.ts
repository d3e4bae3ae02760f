// recovery-race.test.ts — a node's departure reaches the survivors at different times. The survivor that
// has seen it recovers the departed node's region (copies leg a to leg b) while the other survivor, which
// has not seen it yet, still writes that region to both legs. Its write must never land between the copy's
// read of leg a and its write of leg b: leg b would keep the old bytes and the region would be set in sync.
// Three real engines (openTable) over shared memory legs on the in-memory bus; node 1's deliveries are held
// back to order the events, node 2's recovery copy is paused at its write of leg b.
import { afterEach, describe, expect, it } from 'vitest';
import { MemoryBus } from '../../src/cluster/memory-bus.js';
import { MemoryLeg } from '../../src/mirror/legs/memory.js';
import { HoldableTransport, LegWritePause, memoryNode, seededBytes, sharedLeg, until } from './memory-engines.js';
import { sleep } from '../helpers/time.js';

const SIZE_BYTES = 4 * 1024 * 1024;
const REGION_BYTES = 128 * 1024;
const R = 4; // the departed node's region
const R_OFF = R * REGION_BYTES;
const TABLE = `0 ${SIZE_BYTES / 512} mirror userspace 4 LVM-race clustered-core ${REGION_BYTES / 512} nosync 2 a 0 b 0`;


async function settles(p: Promise<unknown>, ms: number): Promise<boolean> {
  let done = false;
  void p.then(
    () => (done = true),
    () => (done = true),
  );
  const t0 = Date.now();
  while (!done && Date.now() - t0 < ms) await sleep(2);
  return done;
}

async function cluster() {
  const bus = new MemoryBus();
  const legs = new Map(['a', 'b'].map((d) => [d, new MemoryLeg({ device: d, sizeBytes: SIZE_BYTES })]));
  const pause = new LegWritePause(R_OFF, R_OFF + REGION_BYTES);
  let t1: HoldableTransport | undefined;
  const n1 = await memoryNode(bus, 1, TABLE, (d) => sharedLeg(legs.get(d)!), () => (t1 = new HoldableTransport(bus.connect(1))));
  const n2 = await memoryNode(bus, 2, TABLE, (d) => (d === 'b' ? pause.wrap(sharedLeg(legs.get(d)!)) : sharedLeg(legs.get(d)!)));
  const n3 = await memoryNode(bus, 3, TABLE, (d) => sharedLeg(legs.get(d)!));
  await until(() => [n1, n2, n3].every((n) => n.log.members.length === 3), 5000, 'three members');
  return { bus, legs, pause, t1: t1!, n1, n2, n3 };
}

type Cluster = Awaited<ReturnType<typeof cluster>>;
let open: Cluster | undefined;
afterEach(async () => {
  const c = open;
  open = undefined;
  if (!c) return;
  c.pause.letGo();
  c.t1.release();
  for (const n of [c.n1, c.n2, c.n3]) await n.exp.close().catch(() => undefined);
});

/** Every region in sync on both survivors, then both legs byte-identical and holding `expected` at R. */
async function expectConverged(c: Cluster, expected: Buffer): Promise<void> {
  await until(() => [c.n1, c.n2].every((n) => n.log.syncCount() === n.log.regionCount), 15_000, 'every region back in sync');
  await Promise.all([c.n1.exp.flush(), c.n2.exp.flush()]);
  const a = c.legs.get('a')!.bytes;
  const b = c.legs.get('b')!.bytes;
  expect(a.subarray(R_OFF, R_OFF + REGION_BYTES).equals(expected)).toBe(true);
  expect(b.subarray(R_OFF, R_OFF + REGION_BYTES).equals(expected), 'leg b holds the last write of region R').toBe(true);
  expect(a.equals(b)).toBe(true);
  for (const n of [c.n1, c.n2]) {
    const got = Buffer.alloc(REGION_BYTES);
    await n.exp.read(got, R_OFF);
    expect(got.equals(expected)).toBe(true);
  }
}

describe('recovery of a departed node\'s region while another survivor has not seen the departure yet', () => {
  it('a survivor\'s durable mark keeps the region from being handed out: its write never lands inside the copy', async () => {
    const c = (open = await cluster());
    // Node 3 dirties R (its mark goes out of sync with it); node 1 writes R too and keeps its mark (lazy clear).
    await c.n3.exp.write(seededBytes(3, REGION_BYTES), R_OFF, { fua: false });
    await c.n1.exp.write(seededBytes(1, REGION_BYTES), R_OFF, { fua: false });
    await until(() => c.n2.log.replicated!.marksByNode.get(1)?.has(R) === true, 2000, 'node 1 mark on R');
    c.pause.armed = true;
    c.t1.hold(); // node 1 will see node 3 leave only later
    c.bus.killNode(3);
    await until(() => !c.n2.log.inSync(R), 2000, 'node 2 sees R out of sync');
    // Give node 2 time to ask for work and, if the group hands R out, start copying.
    const t0 = Date.now();
    while (!c.pause.paused && Date.now() - t0 < 300) await sleep(2);
    const started = c.pause.paused;
    // Node 1 still sees R in sync with its mark durable: this write goes to both legs at once.
    const last = seededBytes(11, REGION_BYTES);
    const w = c.n1.exp.write(last, R_OFF, { fua: false });
    expect(await settles(w, 2000)).toBe(true);
    await w;
    expect(started, 'R was not handed out while node 1 held a mark on it').toBe(false);
    c.pause.letGo();
    c.t1.release();
    await expectConverged(c, last);
  });

  it('a write whose mark is delivered after the region was handed out waits for that recovery', async () => {
    const c = (open = await cluster());
    await c.n3.exp.write(seededBytes(3, REGION_BYTES), R_OFF, { fua: false });
    await until(() => c.n2.log.replicated!.marksByNode.get(3)?.has(R) === true, 2000, 'node 3 mark on R');
    c.pause.armed = true;
    c.t1.hold();
    c.bus.killNode(3);
    await until(() => c.pause.paused, 3000, 'node 2 copying R (read leg a, write leg b paused)');
    // Node 1 has not seen the departure: R is in sync for it, so it marks R and waits for that FLUSH,
    // which is ordered after node 2's GET_RESYNC_WORK.
    const last = seededBytes(21, REGION_BYTES);
    const w = c.n1.exp.write(last, R_OFF, { fua: false });
    c.t1.release();
    // The FLUSH came back: node 1 now knows node 2 recovers R, so the write must wait for it.
    expect(await settles(w, 300)).toBe(false);
    c.pause.letGo();
    await w;
    await expectConverged(c, last);
  });
});

describe('a node that lost a partition merge', () => {
  it('writes a region it had marked only once the group holds its mark again', async () => {
    const bus = new MemoryBus();
    const legs = new Map(['a', 'b'].map((d) => [d, new MemoryLeg({ device: d, sizeBytes: SIZE_BYTES })]));
    // Node 3's data writes into R record whether the group's state (as node 1 holds it) has node 3's mark.
    const seen: boolean[] = [];
    let n1: Awaited<ReturnType<typeof memoryNode>> | undefined;
    const watched = (leg: ReturnType<typeof sharedLeg>) => {
      const write = leg.write.bind(leg);
      leg.write = async (d, o, f) => {
        if (o < R_OFF + REGION_BYTES && o + d.length > R_OFF) seen.push(n1!.log.replicated?.marksByNode.get(3)?.has(R) === true);
        return write(d, o, f);
      };
      return leg;
    };
    n1 = await memoryNode(bus, 1, TABLE, (d) => sharedLeg(legs.get(d)!));
    const n2 = await memoryNode(bus, 2, TABLE, (d) => sharedLeg(legs.get(d)!));
    const n3 = await memoryNode(bus, 3, TABLE, (d) => watched(sharedLeg(legs.get(d)!)));
    const all = [n1, n2, n3];
    try {
      await until(() => all.every((n) => n.log.members.length === 3), 5000, 'three members');
      await n3.exp.write(seededBytes(1, REGION_BYTES), R_OFF, { fua: false });
      expect(seen).toEqual([true, true]);
      // Node 3 is cut off: the majority purges its mark (R out of sync, then recovered); node 3 keeps it.
      bus.partition([[1, 2], [3]]);
      await until(() => n1!.log.members.length === 2 && n3.log.members.length === 1, 5000, 'partitioned');
      await until(() => n1!.log.syncCount() === n1!.log.regionCount, 5000, 'majority recovered R');
      expect(n1.log.replicated!.marksByNode.get(3)).toBeUndefined();
      expect(n3.log.isClean(R)).toBe(false);
      // Heal: node 3's side is smaller, so it takes the majority's state, which lacks its mark on R. Node 3
      // writes R the moment it has taken that state (its log tells its listeners every region changed).
      seen.length = 0;
      const last = seededBytes(2, REGION_BYTES);
      let w: Promise<void> | undefined;
      const unsubscribe = n3.log.onRegionsChanged((r) => {
        if (r === 'all' && w === undefined && n3.log.initialized) w = n3.exp.write(last, R_OFF, { fua: false });
      });
      bus.heal();
      await until(() => w !== undefined, 5000, 'node 3 took the merged state');
      unsubscribe();
      await w;
      expect(seen.length).toBe(2);
      expect(seen, 'node 3 wrote R while the group held no mark of it').toEqual([true, true]);
      expect(legs.get('a')!.bytes.subarray(R_OFF, R_OFF + REGION_BYTES).equals(last)).toBe(true);
      expect(legs.get('b')!.bytes.subarray(R_OFF, R_OFF + REGION_BYTES).equals(last)).toBe(true);
    } finally {
      for (const n of all) await n.exp.close().catch(() => undefined);
    }
  });
});
