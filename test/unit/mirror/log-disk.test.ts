import { describe, expect, it } from 'vitest';
import { DiskLog, diskLogAreaBytes, diskLogHeaderLayout, fnv1a32, LostSourceError } from '../../../src/mirror/log/disk.js';
import { CoreLog } from '../../../src/mirror/log/core.js';
import { MemLeg } from '../../sim/mem-leg.js';

const REGION = 64 * 1024;
const noFlush = { flushDataLegs: async () => {} };

function newLog(dev: MemLeg, regions: number, sync: 'default' | 'sync' | 'nosync' = 'default') {
  return new DiskLog({ device: dev, regionSizeBytes: REGION, lengthBytes: regions * REGION, sync });
}

describe('disk log byte layout', () => {
  it('writes magic, version, nr_regions, leg records and the clean bitmap at 1024 (exact bytes)', async () => {
    const dev = new MemLeg('/log', 8192);
    const log = newLog(dev, 10);
    expect(log.areaBytes).toBe(4096);
    const legs = await log.resume({ legDevices: ['/a', '/b'], ...noFlush });
    expect(legs).toEqual([
      { device: '/a', upToDate: true },
      { device: '/b', upToDate: false },
    ]);
    const d = dev.durable;
    // Independent expectations, built by hand from the spec (not through the layout code).
    expect([...d.subarray(0, 16)]).toEqual([0x72, 0x52, 0x69, 0x4d, 2, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0]);
    expect(d.subarray(16, 20).toString('latin1')).toBe('LEGS');
    expect(d.readUInt32LE(20)).toBe(2); // leg count
    expect(d.readUInt32LE(24)).toBe(1); // generation 1 (new log)
    expect(d.readUInt32LE(28)).toBe(0);
    // leg 0: flags=1, hash, gen 1, name
    expect(d.readUInt32LE(32)).toBe(1);
    expect(d.readUInt32LE(36)).toBe(fnv1a32('/a'));
    expect(d.readUInt32LE(40)).toBe(1);
    expect(d.subarray(48, 51).toString()).toBe('/a\0');
    // leg 1: not up to date but catching up (flags bit 1: a new log has every region dirty), generation 0
    expect(d.readUInt32LE(80)).toBe(2);
    expect(d.readUInt32LE(84)).toBe(fnv1a32('/b'));
    expect(d.readUInt32LE(88)).toBe(0);
    // new log without nosync: every region dirty (0 bits), nothing past the 8-byte-rounded bitmap
    expect([...d.subarray(1024, 1032)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    expect(log.syncCount()).toBe(0);

    // Clean regions 0, 1 and 9, flush: bits appear LSB first.
    for (const r of [0, 1, 9]) log.clearRegion(r);
    await log.flush();
    expect([...d.subarray(1024, 1032)]).toEqual([0x03, 0x02, 0, 0, 0, 0, 0, 0]);
    expect(d.subarray(1032, 4096).every((b) => b === 0)).toBe(true);
  });

  it('area is 1024 + bitmap rounded to 4096', () => {
    expect(diskLogAreaBytes(1)).toBe(4096);
    expect(diskLogAreaBytes(3072 * 8)).toBe(4096);
    expect(diskLogAreaBytes(3072 * 8 + 1)).toBe(8192);
  });

  it('nosync: all clean and in sync, all legs up to date', async () => {
    const dev = new MemLeg('/log', 8192);
    const log = newLog(dev, 12, 'nosync');
    const legs = await log.resume({ legDevices: ['/a', '/b'], ...noFlush });
    expect(legs.every((l) => l.upToDate)).toBe(true);
    expect(log.syncCount()).toBe(12);
    expect([...dev.durable.subarray(1024, 1026)]).toEqual([0xff, 0x0f]);
  });

  it('after a crash: dirty regions are out of sync, clean ones in sync; sync forces all out', async () => {
    const dev = new MemLeg('/log', 8192);
    const log = newLog(dev, 16, 'nosync');
    await log.resume({ legDevices: ['/a', '/b'], ...noFlush });
    log.markRegion(3);
    log.markRegion(7);
    await log.flush();
    // "crash": a new log object over the same bytes
    const again = newLog(dev, 16);
    await again.resume({ legDevices: ['/a', '/b'], ...noFlush });
    expect(again.syncCount()).toBe(14);
    expect(again.inSync(3)).toBe(false);
    expect(again.inSync(7)).toBe(false);
    expect(again.inSync(4)).toBe(true);
    expect(again.getResyncWork()).toBe(3);
    expect(again.getResyncWork()).toBe(7);
    expect(again.getResyncWork()).toBe(null);
    again.setRegionSync(3, true);
    expect(again.syncCount()).toBe(15);

    const forced = newLog(dev, 16, 'sync');
    await forced.resume({ legDevices: ['/a', '/b'], ...noFlush });
    expect(forced.syncCount()).toBe(0);
  });

  it('bad magic means a new log: full resync', async () => {
    const dev = new MemLeg('/log', 8192);
    dev.durable.fill(0xee);
    const log = newLog(dev, 5);
    await log.resume({ legDevices: ['/a', '/b'], ...noFlush });
    expect(log.syncCount()).toBe(0);
    expect(dev.durable.readUInt32LE(0)).toBe(0x4d695272);
  });

  it('a leg recorded stale makes every region out of sync and is never reported up to date', async () => {
    const dev = new MemLeg('/log', 8192);
    const log = newLog(dev, 8, 'nosync');
    await log.resume({ legDevices: ['/a', '/b'], ...noFlush });
    log.setLegUpToDate(0, false); // leg /a failed
    await log.flush();
    const again = newLog(dev, 8);
    const legs = await again.resume({ legDevices: ['/a', '/b'], ...noFlush });
    expect(legs).toEqual([
      { device: '/a', upToDate: false },
      { device: '/b', upToDate: true },
    ]);
    expect(again.syncCount()).toBe(0);
    // A leg the log has never seen is stale too.
    const third = newLog(dev, 8);
    const legs3 = await third.resume({ legDevices: ['/b', '/c'], ...noFlush });
    expect(legs3.map((l) => l.upToDate)).toEqual([true, false]);
    // generation increments per activation; /b's record keeps the current one
    expect(dev.durable.readUInt32LE(24)).toBe(3);
  });

  it('a stale leg catches up across restarts: regions recovered before a crash stay in sync', async () => {
    const dev = new MemLeg('/log', 8192);
    const log = newLog(dev, 8, 'nosync');
    await log.resume({ legDevices: ['/a', '/b'], ...noFlush });
    log.setLegUpToDate(1, false); // /b failed while running
    await log.flush();
    const again = newLog(dev, 8);
    await again.resume({ legDevices: ['/a', '/b'], ...noFlush }); // /b back: every region dirtied for it
    expect(dev.durable[1024]).toBe(0);
    expect(dev.durable.readUInt32LE(32 + 48)).toBe(2); // /b catching up
    for (const r of [0, 1, 2]) {
      expect(again.getResyncWork()).toBe(r);
      again.setRegionSync(r, true);
      again.clearRegion(r);
    }
    await again.flush();
    const third = newLog(dev, 8); // crash + restart mid catch-up
    const legs = await third.resume({ legDevices: ['/a', '/b'], ...noFlush });
    expect(legs.map((l) => l.upToDate)).toEqual([true, false]);
    expect(third.syncCount()).toBe(3);
    expect(third.getResyncWork()).toBe(3);
    // up to date again: flags 1, catching-up bit gone
    third.setLegUpToDate(1, true);
    await third.flush();
    expect(dev.durable.readUInt32LE(32 + 48)).toBe(1);
  });

  it('flush: data legs flushed before newly cleaned bits are written; log fsynced only when dirtied', async () => {
    const dev = new MemLeg('/log', 8192);
    const order: string[] = [];
    const log = newLog(dev, 8, 'nosync');
    await log.resume({ legDevices: ['/a'], flushDataLegs: async () => void order.push('data-flush') });
    const w0 = dev.ops.write;
    const f0 = dev.ops.flush;
    await log.flush(); // nothing changed: no I/O
    expect(dev.ops.write).toBe(w0);
    log.markRegion(2);
    await log.flush();
    expect(order).toEqual([]);
    expect(dev.ops.write).toBe(w0 + 1);
    expect(dev.ops.flush).toBe(f0 + 1);
    log.clearRegion(2);
    await log.flush();
    expect(order).toEqual(['data-flush']);
    expect(dev.ops.write).toBe(w0 + 2);
    expect(dev.ops.flush).toBe(f0 + 1); // a clear needs no log-device flush
  });

  it('a failed data flush records every region dirty; a failed write turns health D', async () => {
    const dev = new MemLeg('/log', 8192);
    const log = newLog(dev, 8, 'nosync');
    await log.resume({ legDevices: ['/a'], flushDataLegs: async () => { throw new Error('boom'); } });
    log.markRegion(1);
    log.clearRegion(1);
    await log.flush();
    expect([...dev.durable.subarray(1024, 1025)]).toEqual([0]);
    dev.failWrites = true;
    log.clearRegion(3); // any change forces a write
    await expect(log.flush()).rejects.toThrow(/write failed/);
    expect(log.health()).toBe('D');
    expect(log.status('info')).toEqual(['3', 'disk', '/log', 'D']);
  });
});

describe('disk log: lost-source record (the source failed while regions were out of sync)', () => {
  /** A log where /a was the source, regions 2 and 5 out of sync (written to /a only), then /a failed. */
  async function lostLog(dev: MemLeg) {
    const log = newLog(dev, 8, 'nosync');
    await log.resume({ legDevices: ['/a', '/b'], ...noFlush });
    log.markRegion(2);
    log.markRegion(5);
    log.setRegionSync(2, false);
    log.setRegionSync(5, false);
    log.setLegUpToDate(0, false);
    log.recordSourceLost(0);
    await log.flush();
    return log;
  }

  it('is a 48-byte record at byte 800 (flags 1, name hash, generation, name), zero when absent', async () => {
    const dev = new MemLeg('/log', 8192);
    const plain = newLog(dev, 8, 'nosync');
    await plain.resume({ legDevices: ['/a', '/b'], ...noFlush });
    expect(dev.durable.subarray(800, 1024).every((b) => b === 0)).toBe(true);
    expect(diskLogHeaderLayout.decode(dev.durable, 0).lostSource.flags).toBe(0);

    const log = await lostLog(dev);
    expect(log.lostSource()).toBe('/a');
    const d = dev.durable;
    expect(d.readUInt32LE(800)).toBe(1);
    expect(d.readUInt32LE(804)).toBe(fnv1a32('/a'));
    expect(d.readUInt32LE(808)).toBe(1); // generation of the activation it happened in (nosync: a new log)
    expect(d.subarray(816, 819).toString('latin1')).toBe('/a\0');
    expect(d.subarray(848, 1024).every((b) => b === 0)).toBe(true);
    // dm's fields and the bitmap are where they were: regions 2 and 5 dirty
    expect(d.readUInt32LE(0)).toBe(0x4d695272);
    expect(d.readUInt32LE(4)).toBe(2);
    expect(d[1024]).toBe(0xff & ~(1 << 2) & ~(1 << 5));
    // /a stale, /b up to date
    expect(d.readUInt32LE(32) & 1).toBe(0);
    expect(d.readUInt32LE(80) & 1).toBe(1);
  });

  it('a restart refuses to activate, naming the leg and the dirty regions; no byte is written', async () => {
    const dev = new MemLeg('/log', 8192);
    await lostLog(dev);
    const before = Buffer.from(dev.durable);
    for (const devices of [['/a', '/b'], ['/b'], ['/b', '/c'], ['/b', '/a'], ['/a', '/c']]) {
      const again = newLog(dev, 8);
      const err = await again.resume({ legDevices: devices, ...noFlush }).then(
        () => null,
        (e: unknown) => e,
      );
      expect(err, devices.join(' ')).toBeInstanceOf(LostSourceError);
      const e = err as LostSourceError;
      expect(e.errno).toBe('EIO');
      expect(e.holder).toBe('/a');
      expect(e.regions).toEqual([2, 5]);
      // The override's source: /b (recorded up to date), when the table has it.
      expect(e.suggestedSource).toBe(devices.includes('/b') ? '/b' : null);
      expect(e.message).toMatch(/leg \/a was the mirror's source when it failed while regions were out of sync/);
      expect(e.message).toContain('2 region(s) dirty in the log (2, 5)');
      expect(e.message).toContain("'sync'");
      if (devices.includes('/b')) expect(e.message).toContain("'sync' and /b listed first");
    }
    expect(dev.durable.equals(before)).toBe(true);
  });

  it("the override is dm's `sync`: a new log, full resync from the first leg, record gone", async () => {
    const dev = new MemLeg('/log', 8192);
    await lostLog(dev);
    const forced = newLog(dev, 8, 'sync');
    const legs = await forced.resume({ legDevices: ['/b', '/a'], ...noFlush });
    expect(legs.map((l) => l.upToDate)).toEqual([true, false]);
    expect(forced.syncCount()).toBe(0);
    expect(forced.lostSource()).toBe(null);
    expect(dev.durable.readUInt32LE(800)).toBe(0);
    const again = newLog(dev, 8);
    await again.resume({ legDevices: ['/b', '/a'], ...noFlush }); // activates
  });

  it('a resume within the process keeps the record while the leg is in the table, drops it without the leg', async () => {
    const dev = new MemLeg('/log', 8192);
    const log = await lostLog(dev);
    log.presuspend();
    await log.postsuspend();
    // Same table: the lost leg does not start catching up (that would overwrite the only copy).
    let legs = await log.resume({ legDevices: ['/a', '/b'], ...noFlush });
    expect(legs.map((l) => l.upToDate)).toEqual([false, true]);
    expect(log.lostSource()).toBe('/a');
    expect(log.inSync(2)).toBe(false);
    expect(log.inSync(3)).toBe(true); // not dirtied for a catch-up
    expect(dev.durable.readUInt32LE(32) & 2).toBe(0);
    // A table without it (repair --force): the loss is accepted, the record is cleared on disk.
    log.presuspend();
    await log.postsuspend();
    legs = await log.resume({ legDevices: ['/b', '/c'], ...noFlush });
    expect(log.lostSource()).toBe(null);
    expect(dev.durable.readUInt32LE(800)).toBe(0);
  });

  it('a restart refuses when no leg of the table is recorded up to date', async () => {
    const dev = new MemLeg('/log', 8192);
    const log = newLog(dev, 8, 'nosync');
    await log.resume({ legDevices: ['/a', '/b'], ...noFlush });
    log.setLegUpToDate(1, false); // /b failed while in sync: /a stays the source
    await log.flush();
    const err = await newLog(dev, 8)
      .resume({ legDevices: ['/b', '/c'], ...noFlush })
      .then(
        () => null,
        (e: unknown) => e,
      );
    expect(err).toBeInstanceOf(LostSourceError);
    expect((err as Error).message).toMatch(/no leg of the table is recorded up to date \(the log knows \/a as up to date\)/);
    expect((err as LostSourceError).suggestedSource).toBe(null); // /b failed, /c is unknown
    // A leg set with /a activates.
    await newLog(dev, 8).resume({ legDevices: ['/b', '/a'], ...noFlush });
  });

  it('a log written before the record (zeros at 800) activates as before', async () => {
    const dev = new MemLeg('/log', 8192);
    await lostLog(dev);
    dev.durable.fill(0, 800, 848);
    const legs = await newLog(dev, 8).resume({ legDevices: ['/a', '/b'], ...noFlush });
    expect(legs.map((l) => l.upToDate)).toEqual([false, true]);
  });
});

describe('core log', () => {
  it('full resync on activation unless nosync; status strings', async () => {
    const log = new CoreLog({ regionSizeBytes: REGION, lengthBytes: 10 * REGION - 1, sync: 'default' });
    expect(log.regionCount).toBe(10);
    const legs = await log.resume({ legDevices: ['/a', '/b'], ...noFlush });
    expect(legs.map((l) => l.upToDate)).toEqual([true, false]);
    expect(log.syncCount()).toBe(0);
    expect(log.status('info')).toEqual(['1', 'core']);
    expect(log.status('table')).toEqual(['core', '1', '128']);
    const ns = new CoreLog({ regionSizeBytes: REGION, lengthBytes: 10 * REGION, sync: 'nosync' });
    await ns.resume({ legDevices: ['/a', '/b'], ...noFlush });
    expect(ns.syncCount()).toBe(10);
    expect(ns.status('table')).toEqual(['core', '2', '128', 'nosync']);
  });
});
