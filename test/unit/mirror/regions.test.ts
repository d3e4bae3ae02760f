import { describe, expect, it } from 'vitest';
import { RegionHash } from '../../../src/mirror/regions.js';
import { CoreLog } from '../../../src/mirror/log/core.js';

const REGION = 4096;

async function setup(sync: 'nosync' | 'default' = 'nosync') {
  const log = new CoreLog({ regionSizeBytes: REGION, lengthBytes: 10 * REGION + 100, sync });
  await log.resume({ legDevices: ['/a', '/b'], flushDataLegs: async () => {} });
  const released: string[][] = [];
  const rh = new RegionHash<string>({ log, regionSizeBytes: REGION, lengthBytes: 10 * REGION + 100, release: (p) => released.push(p), nowMs: () => 0 });
  return { log, rh, released };
}

describe('region hash', () => {
  it('region arithmetic: the last region is partial', async () => {
    const { rh } = await setup();
    expect(rh.regionCount).toBe(11);
    expect(rh.regionOf(REGION - 1)).toBe(0);
    expect(rh.regionOf(REGION)).toBe(1);
    expect(rh.regionLengthBytes(10)).toBe(100);
    expect(rh.regionLengthBytes(3)).toBe(REGION);
  });

  it('CLEAN -> DIRTY marks the log once; the mark waits for the next flush; zero pending -> lazy clear', async () => {
    const { log, rh } = await setup();
    expect(rh.state(2)).toBe('clean');
    expect(rh.inc(2, 1, 0)).toBe(1); // marked, durable after flush 1
    expect(log.isClean(2)).toBe(false);
    expect(rh.state(2)).toBe('dirty');
    expect(rh.inc(2, 1, 0)).toBe(1); // second write waits for the same flush
    expect(rh.inc(2, 2, 1)).toBe(0); // after flush 1: durable, no wait
    rh.dec(2, 1);
    rh.dec(2, 1);
    rh.dec(2, 1);
    expect(rh.state(2)).toBe('dirty'); // idle but not yet cleared
    expect(rh.idleDirtyCount()).toBe(1);
    expect(rh.clearIdle(10, 50, 1)).toBe(0); // not idle long enough
    expect(rh.clearIdle(60, 50, 1)).toBe(1);
    expect(log.isClean(2)).toBe(true);
    expect(rh.state(2)).toBe('clean');
    expect(rh.activeRegionCount()).toBe(0);
  });

  it('a write to an idle dirty region cancels its clear and needs no new mark', async () => {
    const { log, rh } = await setup();
    rh.inc(1, 1, 0);
    rh.dec(1, 1);
    expect(rh.inc(1, 2, 1)).toBe(0);
    expect(rh.idleDirtyCount()).toBe(0);
    expect(log.isClean(1)).toBe(false);
  });

  it('a region busy at a clear pass is skipped, and cleared at a later pass once idle long enough', async () => {
    const { log, rh } = await setup();
    let now = 0;
    const timed = new RegionHash<string>({ log, regionSizeBytes: REGION, lengthBytes: 10 * REGION + 100, release: () => {}, nowMs: () => now });
    timed.inc(3, 1, 0);
    timed.dec(3, 1); // idle since 0
    timed.inc(5, 1, 0);
    timed.dec(5, 1);
    now = 10;
    expect(timed.inc(3, 2, 1)).toBe(0); // busy again: not idle, whatever the pass finds
    expect(timed.idleDirtyCount()).toBe(1);
    expect(timed.clearIdle(100, 50, 1)).toBe(1); // region 5 only
    expect(log.isClean(3)).toBe(false);
    expect(log.isClean(5)).toBe(true);
    timed.dec(3, 1); // idle since 10
    expect(timed.idleDirtyCount()).toBe(1);
    expect(timed.clearIdle(40, 50, 1)).toBe(0); // idle 30 ms only
    for (let i = 0; i < 3; i++) {
      timed.inc(3, 2, 1); // busy and idle again between passes: still one idle region
      timed.dec(3, 1);
    }
    expect(timed.idleDirtyCount()).toBe(1);
    expect(timed.clearIdle(60, 50, 1)).toBe(1);
    expect(log.isClean(3)).toBe(true);
    expect(timed.idleDirtyCount()).toBe(0);
    expect(timed.activeRegionCount()).toBe(0);
  });

  it('NOSYNC regions are never cleared; recovery holds park writes and wait for pending to drain', async () => {
    const { log, rh, released } = await setup('default');
    // core log default: leg /b stale -> all out of sync
    expect(rh.state(4)).toBe('nosync');
    rh.inc(4, 1, 0);
    let drained = false;
    expect(log.getResyncWork()).toBe(0);
    const p = rh.acquire(4, 'recovery').then(() => (drained = true));
    expect(rh.state(4)).toBe('recovering');
    expect(rh.mustPark(4)).toBe(true);
    rh.park(4, 'w1');
    await Promise.resolve();
    expect(drained).toBe(false);
    rh.dec(4, 1);
    await p;
    expect(drained).toBe(true);
    expect(rh.idleDirtyCount()).toBe(0); // nosync: no lazy clear
    rh.releaseHold(4, true);
    expect(log.inSync(4)).toBe(true);
    expect(log.isClean(4)).toBe(true);
    expect(released).toEqual([['w1']]);
    expect(rh.state(4)).toBe('clean');
  });

  it('a failed recovery leaves the region out of sync; markNosync drops a pending clear', async () => {
    const { log, rh } = await setup();
    await rh.acquire(7, 'recovery');
    rh.releaseHold(7, false);
    expect(log.inSync(7)).toBe(false);
    rh.inc(3, 1, 0);
    rh.dec(3, 1);
    expect(rh.idleDirtyCount()).toBe(1);
    rh.markNosync(3);
    expect(rh.idleDirtyCount()).toBe(0);
    expect(rh.state(3)).toBe('nosync');
  });

  it('under a log that clears out of sync (cluster), an idle mark on a region out of sync is cleared; a local log keeps it', async () => {
    for (const clearsOutOfSync of [false, true]) {
      const log = new CoreLog({ regionSizeBytes: REGION, lengthBytes: 10 * REGION + 100, sync: 'nosync' });
      await log.resume({ legDevices: ['/a', '/b'], flushDataLegs: async () => {} });
      // The cluster log's flag on a core log: the region hash is blind to which log it is.
      const view = Object.assign(Object.create(log) as CoreLog, { clearsOutOfSync });
      const rh = new RegionHash<string>({ log: view, regionSizeBytes: REGION, lengthBytes: 10 * REGION + 100, release: () => {}, nowMs: () => 0 });
      // A write in flight when the region goes out of sync (another node left, a write error elsewhere).
      rh.inc(2, 1, 0);
      expect(log.isClean(2)).toBe(false);
      rh.markNosync(2);
      rh.dec(2, 1);
      expect(rh.idleDirtyCount()).toBe(clearsOutOfSync ? 1 : 0);
      // Idle and marked when it goes out of sync.
      rh.inc(5, 1, 0);
      rh.dec(5, 1);
      rh.markNosync(5);
      expect(rh.idleDirtyCount()).toBe(clearsOutOfSync ? 2 : 0);
      // An in-sync idle region waits out the lazy-clear delay; out-of-sync ones go at once (no write can
      // reach them before their recovery, which waits for the clear).
      rh.inc(8, 1, 0);
      rh.dec(8, 1);
      expect(rh.clearIdle(0, 1000, 1)).toBe(clearsOutOfSync ? 2 : 0);
      expect(log.isClean(8)).toBe(false);
      expect([log.isClean(2), log.isClean(5)]).toEqual([clearsOutOfSync, clearsOutOfSync]);
      expect([log.inSync(2), log.inSync(5)]).toEqual([false, false]); // only the mark goes
      // A failed recovery of a marked region: the mark goes too under a cluster log.
      rh.inc(7, 1, 0);
      rh.dec(7, 1);
      await rh.acquire(7, 'recovery');
      rh.releaseHold(7, false);
      expect(rh.clearIdle(0, 1000, 1)).toBe(clearsOutOfSync ? 1 : 0);
      expect(log.isClean(7)).toBe(clearsOutOfSync);
      expect(rh.clearIdle(1000, 1000, 1)).toBe(1); // region 8, idle long enough now
    }
  });
});
