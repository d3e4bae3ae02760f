// Resync progress as the operator and the benchmark see it: a 'resync-progress' event when copying starts
// (from idle), runningMs counting the run on the engine's clock and frozen once it is idle, the rate window
// restarting with each run (idle time is not slowness), and the rate limit still changeable mid-run.
// Copies of contiguous regions go in runs (one offload call each) while the offload works.
// Real engine (createMirror, core log) over in-test memory legs, on a manual clock.
import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { CoreLog } from '../../src/mirror/log/core.js';
import { createMirror, type MirrorExport } from '../../src/mirror/mirror.js';
import type { Leg } from '../../src/mirror/legs/leg.js';
import { RUN_BYTES_MAX, type ResyncProgress } from '../../src/mirror/resync.js';
import { ManualScheduler } from '../../src/mirror/scheduler.js';
import { MemLeg } from '../sim/mem-leg.js';

const REGION = 64 * 1024;
const REGIONS = 8;
const SIZE = REGION * REGIONS;

const settle = async (n = 10) => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

async function rig(opts: { rate?: number; autoStart?: boolean } = {}) {
  const legs = [new MemLeg('/a', SIZE), new MemLeg('/b', SIZE)];
  legs[0]!.durable.fill(0x5a);
  const sched = new ManualScheduler();
  const events = new EventEmitter();
  const progress: ResyncProgress[] = [];
  let inSync = 0;
  events.on('resync-progress', (p: ResyncProgress) => progress.push(p));
  events.on('in-sync', () => inSync++);
  const log = new CoreLog({ regionSizeBytes: REGION, lengthBytes: SIZE, sync: 'sync' });
  const m: MirrorExport = await createMirror({
    legs,
    log,
    regionSizeBytes: REGION,
    lengthBytes: SIZE,
    handleErrors: false,
    keepLog: false,
    scheduler: sched,
    events,
    resync: { autoStart: opts.autoStart ?? true, rateBytesPerSec: opts.rate ?? 0, chunkBytes: 16 * 1024, progressIntervalMs: 100, regionsInFlightMax: 2 },
    limits: { cleanDelayMs: 50 },
  });
  return { m, log, legs, sched, progress, inSync: () => inSync };
}

describe('resync progress', () => {
  it('announces the start, counts runningMs on the engine clock, and freezes it when idle', async () => {
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const r = await rig({ autoStart: false });
    expect(r.progress).toEqual([]);
    r.legs[1]!.gate = () => gate; // park the copies' writes
    r.sched.advance(40);
    r.m.startResync();
    // Synchronously, as the first region is handed out: an event with nothing done yet.
    expect(r.progress).toHaveLength(1);
    expect(r.progress[0]).toMatchObject({ inSyncRegions: 0, regionCount: REGIONS, runningMs: 0 });
    r.sched.advance(250); // two periodic events while the copies are parked
    await settle();
    const periodic = r.progress.slice(1);
    expect(periodic.length).toBeGreaterThanOrEqual(2);
    expect(periodic.map((p) => p.runningMs)).toEqual(periodic.map((_p, i) => (i + 1) * 100));
    r.legs[1]!.gate = null;
    open();
    for (let i = 0; i < 20 && r.inSync() === 0; i++) await settle();
    expect(r.inSync()).toBe(1);
    await r.m.resyncIdle();
    const last = r.progress.at(-1)!;
    expect(last.inSyncRegions).toBe(REGIONS);
    expect(last.runningMs).toBe(250); // start at t=40, idle at t=290
    r.sched.advance(1000); // idle: the last run's length stays
    expect(r.m.resyncProgress().runningMs).toBe(250);
    expect(r.legs[1]!.view().equals(r.legs[0]!.view())).toBe(true);
  });

  it('a later run starts a new window: idle time does not count as slowness', async () => {
    const r = await rig();
    for (let i = 0; i < 20 && r.inSync() === 0; i++) await settle();
    await r.m.resyncIdle();
    expect(r.inSync()).toBe(1);
    // Region 3 goes out of sync again 5 s later (as when a leg comes back; here the log is told directly).
    r.sched.advance(5000);
    const before = r.progress.length;
    r.log.setRegionSync(3, false);
    r.m.startResync();
    await settle();
    await r.m.resyncIdle();
    const run = r.progress.slice(before);
    expect(run[0]).toMatchObject({ runningMs: 0 }); // announced afresh
    expect(run.at(-1)!.inSyncRegions).toBe(REGIONS);
    // The region copied in no time on the manual clock: the rate sample of this run is not diluted by 5 s idle.
    expect(run.at(-1)!.runningMs).toBe(0);
  });

  it('the rate limit applies mid-run and can be lifted while copies wait', async () => {
    const r = await rig({ rate: 64 * 1024 }); // one region per second
    await settle();
    r.sched.advance(1000);
    await settle();
    const early = r.m.resyncProgress().inSyncRegions;
    expect(early).toBeLessThan(REGIONS);
    r.m.setResyncRate(0);
    r.sched.advance(100); // wake the sleeping taker; unlimited from now on
    for (let i = 0; i < 20 && r.inSync() === 0; i++) await settle();
    expect(r.inSync()).toBe(1);
    expect(r.legs[1]!.view().equals(r.legs[0]!.view())).toBe(true);
  });
});

/** A memory leg with a copy offload (as FileLeg's copy_file_range): counts calls, can be switched off. */
class OffloadLeg extends MemLeg {
  offloadCalls: { off: number; len: number }[] = [];
  offloadWorks = true;
  copyRangeTo(target: Leg, offsetBytes: number, lengthBytes: number): Promise<boolean> {
    if (!this.offloadWorks || !(target instanceof OffloadLeg)) return Promise.resolve(false);
    this.offloadCalls.push({ off: offsetBytes, len: lengthBytes });
    this.view().copy(target.durable, offsetBytes, offsetBytes, offsetBytes + lengthBytes);
    return Promise.resolve(true);
  }
}

describe('runs of contiguous regions', () => {
  const RUN_REGION = 512 * 1024;
  const RUN_REGIONS = 40; // 20 MiB: 5 runs of RUN_BYTES_MAX / 512 KiB = 8 regions
  async function offloadRig(offloadWorks: boolean) {
    const size = RUN_REGION * RUN_REGIONS;
    const legs = [new OffloadLeg('/a', size), new OffloadLeg('/b', size)];
    legs[0]!.durable.fill(0x5a);
    legs[0]!.offloadWorks = offloadWorks;
    const events = new EventEmitter();
    let inSync = 0;
    events.on('in-sync', () => inSync++);
    const m = await createMirror({
      legs,
      log: new CoreLog({ regionSizeBytes: RUN_REGION, lengthBytes: size, sync: 'sync' }),
      regionSizeBytes: RUN_REGION,
      lengthBytes: size,
      handleErrors: false,
      keepLog: false,
      scheduler: new ManualScheduler(),
      events,
      resync: { autoStart: true, rateBytesPerSec: 0, chunkBytes: 1024 * 1024, progressIntervalMs: 0, regionsInFlightMax: 2 },
      limits: { cleanDelayMs: 50 },
    });
    for (let i = 0; i < 50 && inSync === 0; i++) await settle();
    await m.resyncIdle();
    return { m, legs, inSync };
  }

  it('with the copy offload working, contiguous regions go in runs (one call each, up to RUN_BYTES_MAX); every region in sync', async () => {
    const r = await offloadRig(true);
    expect(r.inSync).toBe(1);
    expect(r.m.resyncProgress().inSyncRegions).toBe(RUN_REGIONS);
    expect(r.legs[1]!.view().equals(r.legs[0]!.view())).toBe(true);
    const calls = r.legs[0]!.offloadCalls;
    // The first copy is one region (the offload is not known to work yet); the rest are runs.
    expect(calls[0]!.len).toBe(RUN_REGION);
    expect(Math.max(...calls.map((c) => c.len))).toBe(RUN_BYTES_MAX);
    expect(calls.length).toBeLessThan(RUN_REGIONS / 4);
    expect(calls.reduce((n, c) => n + c.len, 0)).toBe(RUN_REGION * RUN_REGIONS);
  });

  it('without the offload (read + write), every copy is one region', async () => {
    const r = await offloadRig(false);
    expect(r.inSync).toBe(1);
    expect(r.legs[1]!.view().equals(r.legs[0]!.view())).toBe(true);
    expect(r.legs[0]!.offloadCalls).toEqual([]);
  });
});
