// cluster-disk-log.test.ts — clustered-disk on the in-memory bus with one shared memory log device (each
// node reaches it through its own handle whose flush can be held): a FLUSH carrying marks resolves only
// after the server's log write is durable, a whole-cluster restart loads the dirty regions only (clears
// persisted lazily), and after the server dies the next one takes over writing (pending flushes included).
import { describe, expect, it } from 'vitest';
import { ClusterLog } from '../../src/cluster/cluster-log.js';
import { MemoryBus } from '../../src/cluster/memory-bus.js';
import type { Leg, LegWriteFlags } from '../../src/mirror/legs/leg.js';
import { MemoryLeg } from '../../src/mirror/legs/memory.js';
import { ClusterDiskArea } from '../../src/cluster/cluster-disk-area.js';
import { Bitmap } from '../../src/mirror/log/bitmap.js';
import { DISK_LOG_BITMAP_OFFSET_BYTES, DISK_LOG_MAGIC, diskLogAreaBytes } from '../../src/mirror/log/disk.js';
import type { LogActivation, SyncMode } from '../../src/mirror/log/dirty-log.js';

const REGION_BYTES = 4096;
const REGIONS = 64;
const activation: LogActivation = { legDevices: ['a', 'b'], flushDataLegs: async () => undefined };
const turn = () => new Promise<void>((r) => setImmediate(r));

/** One node's handle on the shared log device; `hold` makes its flushes wait (a slow / dying server). */
class Handle implements Leg {
  readonly device = 'shared-log';
  readonly sizeBytes: number;
  hold: Promise<void> | null = null;
  writes = 0;
  constructor(private readonly inner: MemoryLeg) {
    this.sizeBytes = inner.sizeBytes;
  }
  read(t: Buffer, o: number) {
    return this.inner.read(t, o);
  }
  async write(d: Buffer, o: number, f: LegWriteFlags) {
    this.writes++;
    await this.inner.write(d, o, f);
  }
  async flush() {
    if (this.hold) await this.hold;
    await this.inner.flush();
  }
  trim(o: number, l: number) {
    return this.inner.trim(o, l);
  }
  zero(o: number, l: number, f: { mayTrim: boolean }) {
    return this.inner.zero(o, l, f);
  }
  async close() {}
}

/** Clean bits as they would survive a crash of the log device. */
function durableClean(dev: MemoryLeg): Bitmap {
  const b = dev.durableBytes!;
  expect(b.readUInt32LE(0)).toBe(DISK_LOG_MAGIC);
  const bm = new Bitmap(REGIONS);
  bm.load(b.subarray(DISK_LOG_BITMAP_OFFSET_BYTES, DISK_LOG_BITMAP_OFFSET_BYTES + bm.bytes.length));
  return bm;
}

async function until(bus: MemoryBus, cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 20_000; i++) {
    if (cond()) return;
    bus.drain();
    await turn();
  }
  throw new Error(`timed out: ${what}`);
}

function tracked<T>(p: Promise<T>): { p: Promise<T>; done: () => boolean; failed: () => unknown } {
  let done = false;
  let err: unknown;
  p.then(
    () => (done = true),
    (e) => {
      done = true;
      err = e ?? new Error('rejected');
    },
  );
  return { p, done: () => done, failed: () => err };
}

interface Cluster {
  bus: MemoryBus;
  logs: Map<number, ClusterLog>;
  handles: Map<number, Handle>;
}

/** Node `nodeId`'s clustered-disk log on the bus, writing the shared device through `handle`. */
function diskLog(bus: MemoryBus, nodeId: number, handle: Handle, sync: SyncMode, diskLazyWriteMs = 5): ClusterLog {
  return new ClusterLog({
    transport: bus.connect(nodeId),
    uuid: 'disk-uuid',
    regionSizeBytes: REGION_BYTES,
    lengthBytes: REGIONS * REGION_BYTES,
    sync,
    logDevice: handle,
    limits: { diskLazyWriteMs },
  });
}

async function start(dev: MemoryLeg, nodes: number[], sync: SyncMode, act: LogActivation = activation, diskLazyWriteMs = 5): Promise<Cluster> {
  const bus = new MemoryBus({ delivery: 'manual' });
  const logs = new Map<number, ClusterLog>();
  const handles = new Map<number, Handle>();
  for (const n of nodes) {
    const h = new Handle(dev);
    handles.set(n, h);
    logs.set(n, diskLog(bus, n, h, sync, diskLazyWriteMs));
  }
  const all = tracked(Promise.all([...logs.values()].map((l) => l.resume(act))));
  await until(bus, all.done, 'resume');
  expect(all.failed()).toBeUndefined();
  return { bus, logs, handles };
}

async function flushOn(c: Cluster, node: number): Promise<void> {
  const f = tracked(c.logs.get(node)!.flush());
  await until(c.bus, f.done, `flush on ${node}`);
  expect(f.failed()).toBeUndefined();
}

async function stop(c: Cluster): Promise<void> {
  for (const l of c.logs.values()) await l.close();
}

const newDevice = () => new MemoryLeg({ device: 'shared-log', sizeBytes: diskLogAreaBytes(REGIONS), volatileCache: true });

describe('clustered-disk log on the memory bus', () => {
  it('a mark is acknowledged only after the server made it durable on the log device', async () => {
    const dev = newDevice();
    const c = await start(dev, [1, 2], 'nosync');
    expect(c.logs.get(2)!.type).toBe('clustered-disk');
    expect(c.logs.get(1)!.status('table')).toContain('clustered-disk');
    await until(c.bus, () => dev.durableBytes!.readUInt32LE(0) === DISK_LOG_MAGIC, 'initial write');
    expect(durableClean(dev).population()).toBe(REGIONS);

    let release!: () => void;
    c.handles.get(1)!.hold = new Promise<void>((r) => (release = r));
    c.logs.get(2)!.markRegion(3);
    const f = tracked(c.logs.get(2)!.flush());
    for (let i = 0; i < 50; i++) {
      c.bus.drain();
      await turn();
    }
    expect(f.done()).toBe(false); // delivered and acknowledged by the group, but not durable yet
    expect(durableClean(dev).get(3)).toBe(true);
    c.handles.get(1)!.hold = null;
    release();
    await until(c.bus, f.done, 'flush after the log write');
    expect(f.failed()).toBeUndefined();
    expect(durableClean(dev).get(3)).toBe(false);
    // Only the server writes the device.
    expect(c.handles.get(2)!.writes).toBe(0);
    await stop(c);
  });

  it('a whole-cluster restart loads the dirty regions only (clears persisted lazily)', async () => {
    const dev = newDevice();
    let c = await start(dev, [1, 2, 3], 'nosync');
    for (const [node, region] of [[2, 1], [3, 5], [1, 7], [2, 9]] as const) {
      c.logs.get(node)!.markRegion(region);
      await flushOn(c, node);
    }
    c.logs.get(2)!.clearRegion(9);
    await flushOn(c, 2);
    c.logs.get(1)!.clearRegion(7);
    await flushOn(c, 1);
    // The clears reach the device lazily (diskLazyWriteMs); wait for it, then the whole cluster goes.
    await until(c.bus, () => durableClean(dev).get(9) && durableClean(dev).get(7), 'lazy clear write');
    await new Promise((r) => setTimeout(r, 20));
    c.bus.drain();
    await stop(c);
    dev.crash(); // the volatile cache is lost with the nodes

    c = await start(dev, [1, 2, 3], 'default');
    for (const l of c.logs.values()) {
      expect(l.syncCount()).toBe(REGIONS - 2);
      expect(l.inSync(1)).toBe(false);
      expect(l.inSync(5)).toBe(false);
      expect(l.inSync(7)).toBe(true);
      expect(l.inSync(9)).toBe(true);
    }
    await stop(c);

    // The table's sync mode still wins over the device: 'sync' resyncs everything.
    c = await start(dev, [1, 2], 'sync');
    expect(c.logs.get(1)!.syncCount()).toBe(0);
    await stop(c);
  });

  it('after the server dies the next member takes over writing, pending flushes included', async () => {
    const dev = newDevice();
    const c = await start(dev, [1, 2, 3], 'nosync');
    c.logs.get(3)!.markRegion(10);
    await flushOn(c, 3);
    expect(durableClean(dev).get(10)).toBe(false);

    // The server's log write never completes; node 3's flush must wait, then complete via node 2.
    c.handles.get(1)!.hold = new Promise<void>(() => undefined);
    c.logs.get(3)!.markRegion(11);
    const f = tracked(c.logs.get(3)!.flush());
    for (let i = 0; i < 50; i++) {
      c.bus.drain();
      await turn();
    }
    expect(f.done()).toBe(false);
    const before = c.handles.get(2)!.writes;
    c.bus.killNode(1);
    c.logs.delete(1);
    await until(c.bus, f.done, 'flush after failover');
    expect(f.failed()).toBeUndefined();
    expect(c.handles.get(2)!.writes).toBeGreaterThan(before);
    expect(durableClean(dev).get(11)).toBe(false);

    // New marks after the failover go through node 2's writes.
    c.logs.get(3)!.markRegion(12);
    await flushOn(c, 3);
    expect(durableClean(dev).get(12)).toBe(false);
    await stop(c);
  });

  it('a power loss right after a fresh start, before the legs were announced, finds leg records that let it start', async () => {
    const dev = newDevice();
    const bus = new MemoryBus({ delivery: 'manual' });
    const log = diskLog(bus, 1, new Handle(dev), 'default');
    const resumed = tracked(log.resume(activation));
    // Step until the first durable write of the state, while the first LEGS is not applied yet.
    let written = false;
    for (let i = 0; i < 2000 && !written && !resumed.done(); i++) {
      bus.step();
      await turn();
      written = dev.durableBytes!.readUInt32LE(0) === DISK_LOG_MAGIC && log.replicated?.legsSeeded === false;
    }
    expect(written, 'no durable write before the legs were announced').toBe(true);
    dev.crash(); // power lost now
    await log.close();
    const area = new ClusterDiskArea({ device: dev, regionSizeBytes: REGION_BYTES, lengthBytes: REGIONS * REGION_BYTES });
    const found = await area.readState(['a', 'b']);
    // A fresh log resyncs every region from the first leg: leg a up to date, leg b catching up.
    expect(found?.legs).toEqual([
      ['a', 'current'],
      ['b', 'catching'],
    ]);
    const c = await start(dev, [1, 2], 'default');
    expect(c.logs.get(1)!.syncCount()).toBe(0);
    await stop(c);
  });

  it('a recovered region is announced in sync only after the data legs were flushed (its clean bit covers no cached copy)', async () => {
    const dev = newDevice();
    let gate: Promise<void> | null = null;
    let fail = false;
    let flushes = 0;
    const act: LogActivation = {
      legDevices: ['a', 'b'],
      flushDataLegs: async () => {
        flushes++;
        if (gate) await gate;
        if (fail) throw new Error('leg flush failed');
      },
    };
    const c = await start(dev, [1, 2], 'default', act); // a fresh device: every region out of sync
    const a = c.logs.get(1)!;
    const b = c.logs.get(2)!;
    const region = async (): Promise<number> => {
      expect(a.getResyncWork()).toBeNull();
      await until(c.bus, () => a.replicated!.recovering !== null, 'a recovery claim');
      const r = a.getResyncWork();
      expect(r).not.toBeNull();
      return r!;
    };
    let open!: () => void;
    gate = new Promise<void>((res) => (open = res));
    const r1 = await region();
    const before = flushes;
    a.setRegionSync(r1, true);
    expect(a.inSync(r1)).toBe(true); // this node's own view at once
    for (let i = 0; i < 50; i++) {
      c.bus.drain();
      await turn();
    }
    expect(flushes).toBe(before + 1);
    expect(b.inSync(r1), 'announced before the copy was flushed').toBe(false);
    open();
    gate = null;
    await until(c.bus, () => b.inSync(r1), 'the result after the flush');
    // A flush that fails: the region stays out of sync everywhere (recovered again later).
    fail = true;
    const r2 = await region();
    a.setRegionSync(r2, true);
    await until(c.bus, () => a.replicated!.recovering === null, 'the claim ends');
    expect(b.inSync(r2)).toBe(false);
    expect(a.inSync(r2)).toBe(false);
    await stop(c);
  });

  it('a member that took over as log server by joining (lowest node id) and then died: the previous server writes again', async () => {
    const dev = newDevice();
    // Node 2 is the log server; lazy writes are off, so only a server's own decisions write.
    const c = await start(dev, [2, 3], 'nosync', activation, 3_600_000);
    // Node 1 joins: once it holds the state it is the lowest member, so the server.
    const h1 = new Handle(dev);
    h1.hold = new Promise<void>(() => undefined); // its log writes never complete
    const n1 = diskLog(c.bus, 1, h1, 'nosync', 3_600_000);
    const joined = tracked(n1.resume(activation));
    await until(c.bus, joined.done, 'node 1 joins');
    expect(c.logs.get(3)!.isLogServer).toBe(false);
    expect(n1.isLogServer).toBe(true);
    c.logs.get(3)!.markRegion(20);
    const f = tracked(c.logs.get(3)!.flush());
    for (let i = 0; i < 50; i++) {
      c.bus.drain();
      await turn();
    }
    expect(f.done()).toBe(false); // node 1's write hangs
    c.bus.killNode(1);
    await until(c.bus, f.done, 'flush after node 2 is the server again');
    expect(f.failed()).toBeUndefined();
    expect(durableClean(dev).get(20)).toBe(false);
    await stop(c);
  });

  it('a member that joins while a leg failure waits for its durable record does not hold it up (it takes a state that has it)', async () => {
    const dev = newDevice();
    const c = await start(dev, [1, 2], 'nosync');
    // The server's log writes wait: node 2's LEG_FAILED comes back and node 1 acknowledges it, but it is not
    // durable yet when node 3 joins.
    let letGo!: () => void;
    c.handles.get(1)!.hold = new Promise<void>((r) => (letGo = r));
    c.logs.get(2)!.setLegUpToDate(1, false);
    const f = tracked(c.logs.get(2)!.flush());
    for (let i = 0; i < 50; i++) {
      c.bus.drain();
      await turn();
    }
    expect(f.done()).toBe(false);
    const h3 = new Handle(dev);
    const n3 = diskLog(c.bus, 3, h3, 'nosync');
    c.logs.set(3, n3);
    const joined = tracked(n3.resume(activation));
    await until(c.bus, joined.done, 'node 3 joins');
    expect(joined.failed()).toBeUndefined();
    expect(n3.replicated!.staleLegs.get('b')).toBe('failed'); // the state it took has the failure
    letGo();
    c.handles.get(1)!.hold = null;
    await until(c.bus, f.done, 'the leg failure settles');
    expect(f.failed()).toBeUndefined();
    await stop(c);
  });
});
