import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { createMirror, type MirrorExport } from '../../../src/mirror/mirror.js';
import { CoreLog } from '../../../src/mirror/log/core.js';
import { DiskLog, LostSourceError } from '../../../src/mirror/log/disk.js';
import { ManualScheduler } from '../../../src/mirror/scheduler.js';
import type { SyncMode } from '../../../src/mirror/log/dirty-log.js';
import { MemLeg } from '../../sim/mem-leg.js';

const REGION = 64 * 1024;
const REGIONS = 8;
const SIZE = REGION * REGIONS;

const settle = async (n = 5) => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

interface Rig {
  m: MirrorExport;
  legs: MemLeg[];
  logDev: MemLeg | null;
  sched: ManualScheduler;
  events: { name: string; payload: any }[];
}

async function rig(opts: {
  sync?: SyncMode;
  disk?: boolean;
  legs?: MemLeg[];
  logDev?: MemLeg;
  handleErrors?: boolean;
  autoStart?: boolean;
  rate?: number;
} = {}): Promise<Rig> {
  const legs = opts.legs ?? [new MemLeg('/a', SIZE), new MemLeg('/b', SIZE)];
  const sched = new ManualScheduler();
  const logDev = opts.disk ? (opts.logDev ?? new MemLeg('/log', 8192)) : null;
  const log = logDev
    ? new DiskLog({ device: logDev, regionSizeBytes: REGION, lengthBytes: SIZE, sync: opts.sync ?? 'default' })
    : new CoreLog({ regionSizeBytes: REGION, lengthBytes: SIZE, sync: opts.sync ?? 'default' });
  const ee = new EventEmitter();
  const events: { name: string; payload: any }[] = [];
  const origEmit = ee.emit.bind(ee);
  ee.emit = (name: string | symbol, payload: unknown) => {
    events.push({ name: String(name), payload });
    return origEmit(name, payload);
  };
  const m = await createMirror({
    legs,
    log,
    regionSizeBytes: REGION,
    lengthBytes: SIZE,
    handleErrors: opts.handleErrors ?? false,
    keepLog: false,
    scheduler: sched,
    events: ee,
    resync: { autoStart: opts.autoStart ?? true, rateBytesPerSec: opts.rate ?? 0, chunkBytes: 16 * 1024, progressIntervalMs: 100 },
    limits: { cleanDelayMs: 50 },
  });
  return { m, legs, logDev, sched, events };
}

const fill = (n: number, v: number) => Buffer.alloc(n, v);

describe('mirror write path', () => {
  it('in-sync writes land on every leg; reads return them', async () => {
    const { m, legs } = await rig({ sync: 'nosync' });
    await m.write(fill(1000, 7), 100, { fua: false });
    await m.write(fill(REGION, 9), REGION - 10, { fua: true }); // crosses a region edge
    for (const l of legs) {
      expect(l.durable.subarray(100, 1100).every((b) => b === 7)).toBe(true);
      expect(l.durable.subarray(REGION - 10, 2 * REGION - 10).every((b) => b === 9)).toBe(true);
    }
    const out = Buffer.alloc(20);
    await m.read(out, REGION - 20);
    expect([...out]).toEqual([...fill(10, 7).subarray(0, 0), ...Array(10).fill(0), ...Array(10).fill(9)]);
    expect(m.statusLine()).toBe('2 /a /b 8/8 1 AA 1 core');
  });

  it('group commit: one log write for a batch of marks, and it completes before any data write', async () => {
    const logDev = new MemLeg('/log', 8192);
    const { m, legs } = await rig({ sync: 'nosync', disk: true, logDev });
    const logWrites0 = logDev.ops.write;
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    logDev.gate = () => gate;
    const ws = [0, 1, 2, 3, 4].map((r) => m.write(fill(512, r + 1), r * REGION, { fua: false }));
    await settle();
    expect(legs[0]!.ops.write).toBe(0); // nothing issued while the mark is not durable
    expect(legs[1]!.ops.write).toBe(0);
    logDev.gate = null;
    open();
    await Promise.all(ws);
    expect(logDev.ops.write - logWrites0).toBe(1); // ONE log write for five marks
    expect([...logDev.durable.subarray(1024, 1025)]).toEqual([0xe0]); // regions 0-4 dirty
    // Fast path: the regions are dirty already, no further log I/O.
    await m.write(fill(512, 9), 2 * REGION + 4096, { fua: false });
    expect(logDev.ops.write - logWrites0).toBe(1);
  });

  it('writes arriving during a log flush join the next batch', async () => {
    const logDev = new MemLeg('/log', 8192);
    const { m } = await rig({ sync: 'nosync', disk: true, logDev });
    const w0 = logDev.ops.write;
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    logDev.gate = () => gate;
    const first = m.write(fill(10, 1), 0, { fua: false });
    await settle();
    const later = [1, 2, 3].map((r) => m.write(fill(10, 2), r * REGION, { fua: false }));
    await settle();
    logDev.gate = null;
    open();
    await Promise.all([first, ...later]);
    expect(logDev.ops.write - w0).toBe(2); // the three later marks shared the second flush
  });

  it('idle regions are cleared lazily: data legs flushed first, then the log written', async () => {
    const logDev = new MemLeg('/log', 8192);
    const { m, legs, sched } = await rig({ sync: 'nosync', disk: true, logDev });
    await m.write(fill(10, 1), 3 * REGION, { fua: false });
    expect(logDev.durable[1024]).toBe(0xf7);
    const dataFlushes = legs[0]!.ops.flush;
    sched.advance(10);
    await settle();
    expect(logDev.durable[1024]).toBe(0xf7); // not yet: cleanDelayMs is 50
    sched.advance(60);
    await settle();
    expect(logDev.durable[1024]).toBe(0xff);
    expect(legs[0]!.ops.flush).toBe(dataFlushes + 1);
  });

  it('nosync regions are written to the default leg only; FLUSH reaches every leg', async () => {
    const { m, legs } = await rig({ autoStart: false });
    await m.write(fill(100, 5), 0, { fua: false });
    expect(legs[0]!.durable[0]).toBe(5);
    expect(legs[1]!.durable[0]).toBe(0);
    await m.flush();
    expect(legs[0]!.ops.flush).toBeGreaterThan(0);
    expect(legs[1]!.ops.flush).toBeGreaterThan(0);
    await m.trim(0, 10, { fua: false });
    await m.zero(50, 10, { fua: true, mayTrim: false, fastZero: false });
    expect(legs[0]!.durable.subarray(0, 100).filter((b) => b === 5).length).toBe(80);
  });
});

describe('mirror reads', () => {
  it('balances in-sync reads over the legs; unsynced regions only from the default leg', async () => {
    const { m, legs } = await rig({ sync: 'nosync' });
    const buf = Buffer.alloc(512);
    for (let i = 0; i < 10; i++) await m.read(buf, 0);
    expect(legs[0]!.ops.read).toBe(5);
    expect(legs[1]!.ops.read).toBe(5);
    const r2 = await rig({ autoStart: false });
    for (let i = 0; i < 4; i++) await r2.m.read(buf, 0);
    expect(r2.legs[0]!.ops.read).toBe(4);
    expect(r2.legs[1]!.ops.read).toBe(0);
  });

  it('a read error fails that leg (R) and is retried on another leg', async () => {
    const { m, legs, events } = await rig({ sync: 'nosync' });
    await m.write(fill(512, 3), 0, { fua: false });
    legs[0]!.failReads = true;
    const buf = Buffer.alloc(512);
    for (let i = 0; i < 3; i++) {
      await m.read(buf, 0);
      expect(buf.every((b) => b === 3)).toBe(true);
    }
    expect(m.status().healthChars).toBe('RA');
    expect(events.filter((e) => e.name === 'leg-failed').length).toBe(1);
  });
});

describe('mirror resync', () => {
  it('a core log resyncs everything from leg 0 at activation and raises in-sync', async () => {
    const a = new MemLeg('/a', SIZE);
    a.durable.fill(0x5a);
    const { m, legs, events } = await rig({ legs: [a, new MemLeg('/b', SIZE)] });
    await settle(20);
    await m.resyncIdle();
    expect(legs[1]!.durable.equals(a.durable)).toBe(true);
    expect(m.status().inSyncRegions).toBe(REGIONS);
    expect(events.some((e) => e.name === 'in-sync')).toBe(true);
    expect(m.status().legs.every((l) => l.upToDate)).toBe(true);
  });

  it('writes to a recovering region are parked until it is recovered, then reach both legs', async () => {
    const a = new MemLeg('/a', SIZE);
    const b = new MemLeg('/b', SIZE);
    const { m } = await rig({ legs: [a, b], autoStart: false });
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    b.gate = () => gate; // resync writes to /b stall
    m.startResync();
    await settle();
    expect(m.regionState(0)).toBe('recovering');
    let done = false;
    const w = m.write(fill(100, 8), 10, { fua: false }).then(() => (done = true));
    await settle();
    expect(done).toBe(false);
    b.gate = null;
    open();
    await w;
    await m.resyncIdle();
    expect(a.durable[10]).toBe(8);
    expect(b.durable[10]).toBe(8);
  });

  it('a write to a not-yet-synced region makes it the next region recovered', async () => {
    const b = new MemLeg('/b', SIZE);
    const order: number[] = [];
    const write = b.write.bind(b);
    b.write = (data, off, flags) => {
      const r = Math.floor(off / REGION);
      if (order[order.length - 1] !== r) order.push(r);
      return write(data, off, flags);
    };
    const { m, legs } = await rig({ legs: [new MemLeg('/a', SIZE), b], autoStart: false });
    await m.write(fill(10, 4), 6 * REGION, { fua: false }); // prioritises region 6
    m.startResync();
    await settle(20);
    await m.resyncIdle();
    // region 6 was handed out first although the search starts at 0
    expect(order.slice(0, 1)).toEqual([6]);
    expect(legs[1]!.durable[6 * REGION]).toBe(4);
  });

  it('rate limit: copies at most rate * time (token bucket on the injected clock)', async () => {
    const { m, sched } = await rig({ rate: 64 * 1024 }); // 64 KiB/s = one region per second
    await settle(10);
    // 4 regions in flight share the budget; count bytes. Tolerance: one 16 KiB chunk per worker of slack
    // (each worker may have taken its chunk before waiting) plus the 100 ms burst.
    expect(m.status().resync.bytesCopied).toBeLessThanOrEqual(4 * 16 * 1024);
    for (let i = 0; i < 30; i++) {
      sched.advance(100);
      await settle(3);
    }
    const after3s = m.status().resync.bytesCopied;
    expect(after3s).toBeGreaterThanOrEqual(2 * 64 * 1024);
    expect(after3s).toBeLessThanOrEqual(3 * 64 * 1024 + 4 * 16 * 1024 + 6554);
    expect(m.status().resync.rateBytesPerSec).toBe(64 * 1024);
    m.setResyncRate(0); // unlimited from now on
    for (let i = 0; i < 5; i++) {
      sched.advance(100);
      await settle(5);
    }
    await m.resyncIdle();
    expect(m.status().inSyncRegions).toBe(REGIONS);
  });
});

describe('mirror errors', () => {
  it('without handle_errors: a write that reached one leg succeeds; the leg is D; region out of sync', async () => {
    const { m, legs, events } = await rig({ sync: 'nosync', autoStart: false });
    legs[1]!.failWrites = true;
    await m.write(fill(100, 1), 0, { fua: false });
    expect(m.status().healthChars).toBe('AD');
    expect(m.status().inSyncRegions).toBe(REGIONS - 1);
    expect(m.statusLine()).toBe('2 /a /b 7/8 1 AD 1 core');
    // Resync among the healthy legs: with one healthy leg the region is trivially in sync again; the dead
    // leg stays D and not up to date (a reload that brings it back gives it a full catch-up).
    m.startResync();
    await settle(5);
    await m.resyncIdle();
    expect(m.status().inSyncRegions).toBe(REGIONS);
    expect(m.status().legs.map((l) => l.upToDate)).toEqual([true, false]);
    expect(events.find((e) => e.name === 'leg-failed')?.payload).toMatchObject({ legIndex: 1, kind: 'write' });
    legs[0]!.failWrites = true;
    await expect(m.write(fill(100, 1), 0, { fua: false })).rejects.toThrow(/every leg/);
  });

  it('handle_errors: the write is held until suspend(noflush) + reload + resume, then completes', async () => {
    const { m, legs } = await rig({ sync: 'nosync', handleErrors: true });
    legs[1]!.failWrites = true;
    let settled = false;
    const w = m.write(fill(100, 6), 0, { fua: false }).then(() => (settled = true));
    await settle();
    expect(settled).toBe(false);
    expect(m.status().heldWrites).toBe(1);
    await m.suspend({ noflush: true });
    m.reload({ legs: [legs[0]!] });
    await m.resume();
    await w;
    expect(settled).toBe(true);
    expect(m.statusLine()).toBe('1 /a 8/8 1 A 1 core');
  });

  it('handle_errors: a flushing suspend fails held writes with EIO', async () => {
    const { m, legs } = await rig({ sync: 'nosync', handleErrors: true });
    legs[0]!.failWrites = true;
    const w = m.write(fill(100, 6), 0, { fua: false });
    await settle();
    await m.suspend();
    await expect(w).rejects.toThrow(/suspend/);
    await m.resume();
  });

  it('stale-leg protection: after a crash the leg that missed writes is not the source', async () => {
    const logDev = new MemLeg('/log', 8192);
    const a = new MemLeg('/a', SIZE);
    const b = new MemLeg('/b', SIZE);
    const r1 = await rig({ sync: 'nosync', disk: true, logDev, legs: [a, b] });
    a.failWrites = true; // leg 0, the default, dies
    await r1.m.write(fill(100, 0x11), 0, { fua: true }); // acknowledged: only /b has it
    expect(r1.m.status().healthChars).toBe('DA');
    // crash: keep leg bytes and log bytes; /a "comes back"
    a.failWrites = false;
    const r2 = await rig({ disk: true, logDev, legs: [a, b] });
    const st = r2.m.status();
    expect(st.legs.map((l) => l.upToDate)).toEqual([false, true]);
    expect(st.legs[1]!.isDefault).toBe(true);
    await settle(20);
    await r2.m.resyncIdle();
    expect(a.durable[0]).toBe(0x11);
    expect(a.durable.equals(b.durable)).toBe(true);
    expect(r2.m.status().legs.every((l) => l.upToDate)).toBe(true);
  });

  it('log device failure: without handle_errors writes proceed and log-failed is raised; with it they are held', async () => {
    const logDev = new MemLeg('/log', 8192);
    const { m, events } = await rig({ sync: 'nosync', disk: true, logDev });
    logDev.failWrites = true;
    await m.write(fill(10, 1), 0, { fua: false }); // needs a mark: the log write fails
    expect(events.some((e) => e.name === 'log-failed')).toBe(true);
    expect(m.status().log.health).toBe('D');
    expect(m.statusLine()).toBe('2 /a /b 8/8 1 AA 3 disk /log D');

    const logDev2 = new MemLeg('/log2', 8192);
    const r2 = await rig({ sync: 'nosync', disk: true, logDev: logDev2, handleErrors: true });
    logDev2.failWrites = true;
    let done = false;
    const w = r2.m.write(fill(10, 1), 0, { fua: false }).then(() => (done = true));
    await settle();
    expect(done).toBe(false);
    expect(r2.legs[0]!.ops.write).toBe(0); // no data write without a durable mark
    expect(r2.m.status().heldWrites).toBe(1);
    // Replace the log (e.g. the lead's repair: log loss -> core log) and resume: the write completes.
    await r2.m.suspend({ noflush: true });
    r2.m.reload({ legs: r2.legs, log: new CoreLog({ regionSizeBytes: REGION, lengthBytes: SIZE, sync: 'nosync' }) });
    await r2.m.resume();
    await w;
    expect(r2.legs[0]!.durable[0]).toBe(1);
    expect(r2.legs[1]!.durable[0]).toBe(1);
  });

  it('keep_log: a leg failure does not hold writes', async () => {
    const legs = [new MemLeg('/a', SIZE), new MemLeg('/b', SIZE)];
    const m = await createMirror({
      legs,
      log: new CoreLog({ regionSizeBytes: REGION, lengthBytes: SIZE, sync: 'nosync' }),
      regionSizeBytes: REGION,
      lengthBytes: SIZE,
      handleErrors: true,
      keepLog: true,
      scheduler: new ManualScheduler(),
    });
    legs[1]!.failWrites = true;
    await m.write(fill(10, 1), 0, { fua: false });
    expect(m.status().heldWrites).toBe(0);
  });

  it('primary lost while out of sync: unsynced regions fail, in-sync regions stay readable', async () => {
    const { m, legs } = await rig({ autoStart: false });
    // region 0 recovered, the rest not
    m.startResync();
    await m.pauseResync();
    const syncedBefore = m.status().inSyncRegions;
    legs[0]!.failReads = true;
    legs[0]!.failWrites = true;
    const buf = Buffer.alloc(16);
    await expect(m.write(fill(16, 1), 7 * REGION, { fua: false })).rejects.toThrow();
    await expect(m.read(buf, 7 * REGION)).rejects.toThrow(/source leg has failed|no healthy/);
    if (syncedBefore > 0) {
      // some region is in sync: served by the surviving leg
      let r = 0;
      while (m.status().inSyncRegions > 0 && r < 8 && m.regionState(r) === 'nosync') r++;
      if (m.regionState(r) !== 'nosync') await m.read(buf, r * REGION);
    }
    expect(m.status().legs[0]!.isDefault).toBe(false);
  });
});

describe('stale-leg protection: the source lost while out of sync, across restarts', () => {
  /** /a is the source with region 7 out of sync (a write failed on /c: written to /a only since), then /a fails. */
  async function lostSource() {
    const logDev = new MemLeg('/log', 8192);
    const legs = [new MemLeg('/a', SIZE), new MemLeg('/b', SIZE), new MemLeg('/c', SIZE)];
    const r = await rig({ sync: 'nosync', disk: true, logDev, legs, autoStart: false });
    legs[2]!.failWrites = true;
    await r.m.write(fill(16, 1), 7 * REGION, { fua: true }); // /c fails: region 7 out of sync
    expect(r.m.regionState(7)).toBe('nosync');
    await r.m.write(fill(16, 2), 7 * REGION, { fua: true }); // acknowledged: only /a holds it
    expect(legs[1]!.durable[7 * REGION]).toBe(1);
    legs[0]!.failWrites = true;
    legs[0]!.failReads = true;
    await r.m.write(fill(16, 3), 0, { fua: true }); // /a fails: written to /b only, acknowledged
    expect(r.m.status().lostSource).toBe('/a');
    expect(r.m.status().legs.map((l) => l.isDefault)).toEqual([false, false, false]);
    for (const l of legs) {
      l.failWrites = false;
      l.failReads = false;
    }
    return { ...r, logDev, legs };
  }

  it('a restart refuses to activate instead of resyncing region 7 from /b (stale)', async () => {
    const { logDev, legs } = await lostSource();
    const err = await rig({ disk: true, logDev, legs }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(LostSourceError);
    expect((err as LostSourceError).holder).toBe('/a');
    expect((err as LostSourceError).regions).toContain(7);
    expect((err as LostSourceError).suggestedSource).toBe('/b');
    expect(legs[1]!.durable[7 * REGION]).toBe(1); // nothing copied over /b
    expect(legs[0]!.durable[7 * REGION]).toBe(2); // nor over /a
    // The operator's override: /b first, `sync`: every region from /b (region 7's write is lost, knowingly).
    const forced = await rig({ disk: true, logDev, legs: [legs[1]!, legs[0]!, legs[2]!], sync: 'sync' });
    await settle(40);
    await forced.m.resyncIdle();
    expect(forced.m.status().inSyncRegions).toBe(REGIONS);
    await forced.m.flush();
    expect(legs[0]!.durable.equals(legs[1]!.durable)).toBe(true);
    expect(legs[2]!.durable.equals(legs[1]!.durable)).toBe(true);
    expect(legs[0]!.durable[0]).toBe(3);
    expect(legs[0]!.durable[7 * REGION]).toBe(1);
  });

  it('a reload keeping /a keeps region 7 unreadable (no catch-up over its only copy); a reload without /a accepts', async () => {
    const { m, legs } = await lostSource();
    const buf = Buffer.alloc(16);
    await m.suspend({ noflush: true });
    m.reload({ legs });
    await m.resume();
    await settle(20);
    expect(m.status().lostSource).toBe('/a');
    await expect(m.read(buf, 7 * REGION)).rejects.toThrow(/source leg has failed/);
    await m.write(fill(16, 4), 3 * REGION, { fua: true }); // in-sync regions work (on /b)
    await m.read(buf, 3 * REGION);
    expect(buf[0]).toBe(4);
    expect(legs[0]!.durable[7 * REGION]).toBe(2); // the only copy is untouched
    await m.suspend({ noflush: true });
    m.reload({ legs: [legs[1]!, legs[2]!] });
    await m.resume();
    expect(m.status().lostSource).toBe(null);
    await settle(20);
    await m.read(buf, 7 * REGION); // the loss was accepted: /b's data
    expect(buf[0]).toBe(1);
  });
});

describe('mirror suspend / reload / resume', () => {
  it('requests issued while suspended wait for resume', async () => {
    const { m, legs } = await rig({ sync: 'nosync' });
    await m.suspend();
    let done = false;
    const w = m.write(fill(10, 3), 0, { fua: false }).then(() => (done = true));
    const f = m.flush();
    await settle();
    expect(done).toBe(false);
    expect(legs[0]!.ops.write).toBe(0);
    await m.resume();
    await Promise.all([w, f]);
    expect(legs[1]!.durable[0]).toBe(3);
  });

  it('reload adding a new leg: the new leg is stale and catches up by a full resync from an up-to-date leg', async () => {
    const logDev = new MemLeg('/log', 8192);
    const { m, legs, events } = await rig({ sync: 'nosync', disk: true, logDev });
    await m.write(fill(3 * REGION, 4), REGION, { fua: false });
    const c = new MemLeg('/c', SIZE);
    await m.suspend({ noflush: true });
    m.reload({ legs: [legs[0]!, legs[1]!, c] });
    await m.resume();
    const st = m.status();
    expect(st.legs.map((l) => l.upToDate)).toEqual([true, true, false]);
    expect(st.inSyncRegions).toBe(0); // every region dirtied for the new leg
    await settle(30);
    await m.resyncIdle();
    expect(c.durable.equals(legs[0]!.durable)).toBe(true);
    expect(m.status().legs.every((l) => l.upToDate)).toBe(true);
    expect(events.filter((e) => e.name === 'in-sync').length).toBeGreaterThanOrEqual(2);
    // persisted: /c up to date in the disk log's leg records (flags at 32 + 2*48)
    await m.flush();
    await settle(5);
    expect(logDev.durable.readUInt32LE(32 + 2 * 48) & 1).toBe(1);
  });
});
