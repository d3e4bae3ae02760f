// departures.test.ts — a dead node's dirty regions, exactly: the cluster log reports the regions that went
// out of sync because a node left (cluster-node-left) and, once every one of them was set in sync again,
// the regions recovered and by whom (cluster-node-resynced). Checked at two levels on the in-memory
// total-order bus:
//  1. ClusterLog state machine (3 logs): the reported set is the dead node's marks that were in sync,
//     including a region a survivor had marked too, excluding one already out of sync; every member
//     reports the same sets; the recovered set equals it, split between the recoverers.
//  2. Real mirror engines (openTable, 3 nodes over shared memory legs): node 2 writes some regions and
//     dies; the regions the survivors' resync actually copied (writes seen on the secondary leg after the
//     death) are exactly the reported set, and each survivor copied exactly its recoveredHere part.
import { describe, expect, it } from 'vitest';
import { ClusterLog, type ClusterLogEventMap, type NodeLeftEvent, type NodeResyncedEvent } from '../../src/cluster/cluster-log.js';
import { parseRangeText, rangeText } from '../../src/cluster/departures.js';
import { clusterLogOpener } from '../../src/cluster/log-opener.js';
import { MemoryBus } from '../../src/cluster/memory-bus.js';
import type { Export } from '../../src/nbd/export.js';
import type { Leg } from '../../src/mirror/legs/leg.js';
import { MemoryLeg } from '../../src/mirror/legs/memory.js';
import type { DirtyLog, LogActivation } from '../../src/mirror/log/dirty-log.js';
import { openTable } from '../../src/mirror/open.js';
import { parseTable } from '../../src/mirror/table.js';

const turn = () => new Promise<void>((r) => setImmediate(r));

async function quiesce(bus: MemoryBus, rounds = 5): Promise<void> {
  for (let i = 0; i < rounds; i++) {
    bus.drain();
    await turn();
  }
}

async function settle<T>(bus: MemoryBus, p: Promise<T>): Promise<T> {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  for (let i = 0; i < 10_000 && !done; i++) {
    bus.drain();
    await turn();
  }
  return p;
}

type Ev = { [K in keyof ClusterLogEventMap]: { name: K; payload: ClusterLogEventMap[K] } }[keyof ClusterLogEventMap];
const lefts = (evs: Ev[]) => evs.filter((e): e is Extract<Ev, { name: 'cluster-node-left' }> => e.name === 'cluster-node-left').map((e) => e.payload);
const resynceds = (evs: Ev[]) =>
  evs.filter((e): e is Extract<Ev, { name: 'cluster-node-resynced' }> => e.name === 'cluster-node-resynced').map((e) => e.payload);

describe('departed node: the regions it left out of sync, and their recovery', () => {
  it('range text round-trips and is bounded', () => {
    expect(rangeText([0, 1, 2, 5, 7, 8])).toBe('0-2,5,7-8');
    expect(parseRangeText('0-2,5,7-8')).toEqual([0, 1, 2, 5, 7, 8]);
    expect(parseRangeText('')).toEqual([]);
    expect(rangeText([1, 3, 5, 7], 2)).toBe('1,3,...');
    expect(() => parseRangeText('1,3,...')).toThrow(/bad region range/);
  });

  it('state machine: exactly the dead node marks that were in sync; same on every member; recovered set equal', async () => {
    const REGION_BYTES = 4096;
    const REGIONS = 64;
    const activation: LogActivation = { legDevices: ['a', 'b'], flushDataLegs: async () => undefined };
    const bus = new MemoryBus({ delivery: 'manual' });
    const logs = [1, 2, 3].map(
      (nodeId) => new ClusterLog({ transport: bus.connect(nodeId), uuid: 'dep', regionSizeBytes: REGION_BYTES, lengthBytes: REGIONS * REGION_BYTES - 100, sync: 'nosync' }),
    );
    const [a, b, c] = logs as [ClusterLog, ClusterLog, ClusterLog];
    const events = new Map<ClusterLog, Ev[]>(logs.map((l) => [l, []]));
    for (const l of logs) l.onEvent((e) => events.get(l)!.push(e));
    await settle(bus, Promise.all(logs.map((l) => l.resume(activation))));
    // Node 2 marks 3,4,5,20,63; node 1 marks 4 (shared with node 2) and 30; region 20 goes out of sync
    // (a write error on node 2) before the death: it is resynced anyway, not because node 2 left.
    for (const r of [3, 4, 5, 20, 63]) b.markRegion(r);
    for (const r of [4, 30]) a.markRegion(r);
    c.markRegion(40);
    await settle(bus, Promise.all([a.flush(), b.flush(), c.flush()]));
    b.setRegionSync(20, false);
    // Node 2 marks 50 but never flushes it: not durable, not in the replicated state.
    b.markRegion(50);
    await quiesce(bus);
    expect(a.inSync(20)).toBe(false);

    bus.killNode(2);
    await quiesce(bus);
    const expected: NodeLeftEvent = {
      uuid: 'dep',
      nodeId: 2,
      reason: 'NODEDOWN',
      regions: '3-5,63',
      regionCount: 4,
      bytes: 3 * REGION_BYTES + (REGION_BYTES - 100), // region 63 is short
      markedOutOfSyncCount: 1,
      released: null,
      serverNodeId: 1,
      outOfSyncRegions: 5,
    };
    expect(lefts(events.get(a)!)).toEqual([expected]);
    expect(lefts(events.get(c)!)).toEqual([expected]);
    expect(a.departuresPending()).toEqual(new Map([[2, [3, 4, 5, 63]]]));

    // Survivors recover cluster-wide, one region at a time, alternating between nodes 1 and 3.
    const recoveredBy = new Map<number, number[]>();
    for (let round = 0; round < 40 && a.syncCount() < a.regionCount; round++) {
      for (const [id, l] of [[1, a], [3, c]] as const) {
        const r = l.getResyncWork();
        await quiesce(bus, 2);
        const got = r ?? l.getResyncWork();
        if (got !== null) {
          l.setRegionSync(got, true);
          recoveredBy.set(id, [...(recoveredBy.get(id) ?? []), got]);
          await quiesce(bus, 2);
        }
      }
    }
    expect(a.syncCount()).toBe(a.regionCount);
    const ra = resynceds(events.get(a)!);
    const rc = resynceds(events.get(c)!);
    expect(ra).toHaveLength(1);
    expect(rc).toHaveLength(1);
    // The recovered set is exactly the purged set (region 20 was recovered too, but not counted for node 2).
    expect(ra[0]!.regions).toBe('3-5,63');
    expect(rc[0]!.regions).toBe('3-5,63');
    const here1 = parseRangeText(ra[0]!.recoveredHere);
    const here3 = parseRangeText(rc[0]!.recoveredHere);
    expect([...here1, ...here3].sort((x, y) => x - y)).toEqual([3, 4, 5, 63]);
    expect(here1).toEqual((recoveredBy.get(1) ?? []).filter((r) => r !== 20).sort((x, y) => x - y));
    expect(here3).toEqual((recoveredBy.get(3) ?? []).filter((r) => r !== 20).sort((x, y) => x - y));
    expect(ra[0]!.recoveredBy).toEqual(rc[0]!.recoveredBy);
    expect(ra[0]!.bytes).toBe(expected.bytes);
    expect(a.departuresPending().size).toBe(0);
    for (const l of [a, c]) await l.close();
  });

  it('a node that leaves with nothing marked reports 0 regions and is resynced at once; a dead recoverer releases its region', async () => {
    const bus = new MemoryBus({ delivery: 'manual' });
    const activation: LogActivation = { legDevices: ['a', 'b'], flushDataLegs: async () => undefined };
    const logs = [1, 2, 3].map((n) => new ClusterLog({ transport: bus.connect(n), uuid: 'd2', regionSizeBytes: 4096, lengthBytes: 8 * 4096, sync: 'nosync' }));
    const [a, b, c] = logs as [ClusterLog, ClusterLog, ClusterLog];
    const evs: Ev[] = [];
    a.onEvent((e) => evs.push(e));
    await settle(bus, Promise.all(logs.map((l) => l.resume(activation))));
    await settle(bus, c.close()); // graceful leave, no marks
    await quiesce(bus);
    expect(lefts(evs)).toMatchObject([{ nodeId: 3, reason: 'LEAVE', regions: '', regionCount: 0, bytes: 0 }]);
    expect(resynceds(evs)).toMatchObject([{ nodeId: 3, regionCount: 0, ms: 0 }]);
    b.setRegionSync(6, false);
    await quiesce(bus);
    expect(b.getResyncWork()).toBeNull();
    await quiesce(bus);
    expect(b.getResyncWork()).toBe(6);
    bus.killNode(2);
    await quiesce(bus);
    expect(lefts(evs)[1]).toMatchObject({ nodeId: 2, regionCount: 0, released: 6 });
    expect(a.getResyncWork()).toBeNull();
    await quiesce(bus);
    expect(a.getResyncWork()).toBe(6);
    a.setRegionSync(6, true);
    await quiesce(bus);
    expect(resynceds(evs)[1]).toMatchObject({ nodeId: 2, regions: '6', recoveredHere: '6', recoveredBy: { '1': 1 } });
    await a.close();
  });
});

// ------------------------------------------------------------------ real engines

const SIZE_BYTES = 4 * 1024 * 1024;
const REGION_SECTORS = 256; // 128 KiB regions -> 32 regions
const REGION_BYTES = REGION_SECTORS * 512;

interface Recorder {
  on: boolean;
  /** node id -> regions written on leg b while recording */
  byNode: Map<number, Set<number>>;
}

/** A node's view of a shared MemoryLeg (close leaves the bytes); on leg b, records which regions get written. */
function view(leg: MemoryLeg, nodeId: number, rec: Recorder | null): Leg {
  return {
    device: leg.device,
    sizeBytes: leg.sizeBytes,
    read: (t, o) => leg.read(t, o),
    write: (d, o, f) => {
      if (rec?.on) {
        const s = rec.byNode.get(nodeId) ?? new Set<number>();
        for (let r = Math.floor(o / REGION_BYTES); r * REGION_BYTES < o + d.length; r++) s.add(r);
        rec.byNode.set(nodeId, s);
      }
      return leg.write(d, o, f);
    },
    flush: () => leg.flush(),
    trim: (o, l) => leg.trim(o, l),
    zero: (o, l, f) => leg.zero(o, l, f),
    close: async () => undefined,
  } as Leg;
}

async function engineNode(bus: MemoryBus, nodeId: number, legs: Map<string, MemoryLeg>, rec: Recorder) {
  const spec = parseTable(`0 ${SIZE_BYTES / 512} mirror userspace 4 LVM-dep clustered-core ${REGION_SECTORS} nosync 2 a 0 b 0`);
  let log: DirtyLog | undefined;
  const events: Array<{ name: string; payload: unknown }> = [];
  const opener = clusterLogOpener({ transport: () => bus.connect(nodeId) });
  const exp: Export = await openTable(spec, {
    openLeg: async (device) => view(legs.get(device)!, nodeId, device === 'b' ? rec : null),
    openLog: async (s, ctx) => (log = await opener(s, ctx)),
    // Marks stay while the node lives (a long lazy-clear delay), as on a node that keeps writing.
    mirror: { events: { emit: (name, payload) => events.push({ name, payload }) }, limits: { cleanDelayMs: 60_000 } },
  });
  return { exp, log: log as ClusterLog, events };
}

function pattern(seed: number, bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) b[i] = (seed * 31 + i * 7) & 0xff;
  return b;
}

describe('departed node with real engines (memory bus, shared memory legs)', () => {
  it('the survivors copy exactly the regions the dead node left out of sync, each its recoveredHere part', async () => {
    const bus = new MemoryBus();
    const legs = new Map(['a', 'b'].map((d) => [d, new MemoryLeg({ device: d, sizeBytes: SIZE_BYTES })]));
    const rec: Recorder = { on: false, byNode: new Map() };
    const n = [await engineNode(bus, 1, legs, rec), await engineNode(bus, 2, legs, rec), await engineNode(bus, 3, legs, rec)];
    const [n1, n2, n3] = n as [(typeof n)[0], (typeof n)[0], (typeof n)[0]];
    // Node 2 writes regions 2, 3, 9 (two pieces), 17 and 31; node 1 writes 3 (shared) and 12; node 3 writes 20.
    const w2 = [2, 3, 9, 17, 31].map((r) => r * REGION_BYTES + 4096);
    await Promise.all([
      ...w2.map((off, i) => n2.exp.write(pattern(i, 8192), off, { fua: false })),
      n2.exp.write(pattern(9, 4096), 9 * REGION_BYTES + 65536, { fua: false }),
      n1.exp.write(pattern(50, 4096), 3 * REGION_BYTES, { fua: false }),
      n1.exp.write(pattern(51, 4096), 12 * REGION_BYTES, { fua: false }),
      n3.exp.write(pattern(52, 4096), 20 * REGION_BYTES, { fua: false }),
    ]);
    // Node 2 "half-wrote" region 17: leg b lacks its data (a node dying between its two leg writes).
    legs.get('b')!.bytes.fill(0xee, 17 * REGION_BYTES, 17 * REGION_BYTES + 4096);
    expect(n1.log.replicated!.marksByNode.get(2)).toEqual(new Set([2, 3, 9, 17, 31]));

    rec.on = true;
    const t0 = Date.now();
    bus.killNode(2);
    const deadline = Date.now() + 10_000;
    const done = () => [n1, n3].every((x) => x.events.some((e) => e.name === 'cluster-node-resynced'));
    while (!done() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    const ms = Date.now() - t0;
    expect(done()).toBe(true);

    const left = n1.events.find((e) => e.name === 'cluster-node-left')!.payload as NodeLeftEvent;
    expect(left).toMatchObject({ nodeId: 2, regions: '2-3,9,17,31', regionCount: 5, bytes: 5 * REGION_BYTES, markedOutOfSyncCount: 0, released: null });
    expect(n3.events.find((e) => e.name === 'cluster-node-left')!.payload).toEqual(left);
    const r1 = n1.events.find((e) => e.name === 'cluster-node-resynced')!.payload as NodeResyncedEvent;
    const r3 = n3.events.find((e) => e.name === 'cluster-node-resynced')!.payload as NodeResyncedEvent;
    expect(r1.regions).toBe(left.regions);
    expect(r3.regions).toBe(left.regions);
    // What the engines really copied onto leg b after the death (no client writes then): exactly that set.
    const copied1 = [...(rec.byNode.get(1) ?? [])].sort((x, y) => x - y);
    const copied3 = [...(rec.byNode.get(3) ?? [])].sort((x, y) => x - y);
    expect(rec.byNode.has(2)).toBe(false);
    expect(copied1).toEqual(parseRangeText(r1.recoveredHere));
    expect(copied3).toEqual(parseRangeText(r3.recoveredHere));
    expect([...copied1, ...copied3].sort((x, y) => x - y)).toEqual(parseRangeText(left.regions));
    expect(legs.get('a')!.bytes.equals(legs.get('b')!.bytes)).toBe(true);
    console.log(`departure resync (memory bus): ${left.regionCount} regions / ${left.bytes} bytes left by node 2; ` +
      `node 1 copied ${copied1.length}, node 3 copied ${copied3.length}; ${ms} ms`);
    for (const x of [n1, n3]) await x.exp.close();
    await n2.exp.close().catch(() => undefined);
  });
});
