// stale-legs.test.ts — stale-leg protection for cluster logs, with real mirror engines (openTable) over
// shared memory legs and ClusterLogs on the in-memory bus (the corosync versions are in
// stale-legs-cpg.test.ts).
//  1. A leg fails on ONE node's path only (no handle_errors). Before, only that node knew: the other one
//     kept balancing its reads over the leg and read data the failing node had written to the other leg
//     alone (acknowledged). Now the failure is cluster-wide: when the write that missed the leg is
//     acknowledged, the other node has failed the leg too; its reads all return the new data and it no
//     longer writes the leg either.
//  2. clustered-disk, whole-cluster crash and restart: leg a (the default source) failed on every node,
//     writes went on to b alone. The log device records a stale, b up to date (the same records the
//     single-node disk log reads: checked by activating a DiskLog on a copy); after the restart with a
//     healthy again, b is the source, a is never read, the whole volume is copied b -> a once, every
//     acknowledged write reads back, a = b, and a is recorded up to date again.
//  2b. The other way: a single-node disk log that recorded b stale is served clustered: b is not a source
//     there either and is resynced in full from a.
//  3. clustered-disk, the source fails while regions are out of sync (the first resync): b holds only the
//     regions in sync, so it is not recorded up to date either; a restart refuses (no leg of the table is up
//     to date) instead of serving b's stale regions; `sync` is the override (a full resync from leg 0).
//     The same for a single-node disk log's lost-source record read by the cluster log.
//  4. A heal of three sides where no side wins (every member re-takes a fresh state): a leg failed before
//     is announced again and stays failed, but is not judged a lost source now (every region is out of sync
//     after such a heal); the other leg is the source, the volume resyncs from it and reads back.
import { describe, expect, it } from 'vitest';
import { MemoryBus } from '../../src/cluster/memory-bus.js';
import { openTable } from '../../src/mirror/open.js';
import { parseTable } from '../../src/mirror/table.js';
import type { Leg } from '../../src/mirror/legs/leg.js';
import { MemoryLeg } from '../../src/mirror/legs/memory.js';
import { DiskLog, LostSourceError } from '../../src/mirror/log/disk.js';
import type { DirtyLog } from '../../src/mirror/log/dirty-log.js';
import type { MirrorExport } from '../../src/mirror/mirror.js';
import { memoryNode, sharedLeg, until } from './memory-engines.js';

const SIZE_BYTES = 4 * 1024 * 1024;
const REGION_SECTORS = 256; // 128 KiB -> 32 regions
const REGION_BYTES = REGION_SECTORS * 512;
const LOG_BYTES = 64 * 1024;

function pattern(seed: number, bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) b[i] = (seed * 131 + i * 7 + 1) & 0xff || 1; // never zero
  return b;
}

async function readsBack(exp: MirrorExport, offsetBytes: number, want: Buffer, times: number): Promise<void> {
  for (let i = 0; i < times; i++) {
    const got = Buffer.alloc(want.length);
    await exp.read(got, offsetBytes);
    expect(got.equals(want), `read ${i} at ${offsetBytes}`).toBe(true);
  }
}

describe('stale legs in a cluster log', () => {
  it('a leg failing on one node is failed on every node before the write that missed it is acknowledged', async () => {
    const bus = new MemoryBus();
    const legs = new Map(['a', 'b'].map((d) => [d, new MemoryLeg({ device: d, sizeBytes: SIZE_BYTES })]));
    const table = `0 ${SIZE_BYTES / 512} mirror userspace 4 LVM-stale clustered-core ${REGION_SECTORS} nosync 2 a 0 b 0`;
    const bPath2 = { on: false };
    const n1 = await memoryNode(bus, 1, table, (d) => sharedLeg(legs.get(d)!));
    const n2 = await memoryNode(bus, 2, table, (d) => sharedLeg(legs.get(d)!, d === 'b' ? bPath2 : undefined));
    for (const r of [3, 7, 9]) await n1.exp.write(pattern(r, 8192), r * REGION_BYTES, { fua: false });

    bPath2.on = true; // node 2 loses its path to b; node 1 still reaches it
    await n2.exp.write(pattern(103, 8192), 3 * REGION_BYTES, { fua: false }); // fails on b: b is failed here
    expect(n2.exp.status().legs[1]!.health).not.toBe('A');
    // When node 2's write is acknowledged, node 1 has failed b too (it would balance reads onto it).
    expect(n1.exp.status().legs[1]!.health).toBe('D');
    expect(n1.exp.status().legs[1]!.upToDate).toBe(false);
    await readsBack(n1.exp, 3 * REGION_BYTES, pattern(103, 8192), 8);
    // A region in sync, written by node 2 to a alone: node 1 reads the new data every time.
    await n2.exp.write(pattern(107, 8192), 7 * REGION_BYTES, { fua: false });
    await readsBack(n1.exp, 7 * REGION_BYTES, pattern(107, 8192), 8);
    // Node 1 no longer writes b either (nothing may count b in sync behind node 2's back).
    await n1.exp.write(pattern(109, 8192), 9 * REGION_BYTES, { fua: false });
    expect(legs.get('b')!.bytes.subarray(9 * REGION_BYTES, 9 * REGION_BYTES + 8192).equals(pattern(9, 8192))).toBe(true);
    await readsBack(n2.exp, 9 * REGION_BYTES, pattern(109, 8192), 4);
    // Both nodes agree: b is stale cluster-wide.
    for (const n of [n1, n2]) expect(n.log.replicated!.staleLegs.get('b')).toBe('failed');
    expect(n1.log.digest()).toBe(n2.log.digest());
    for (const n of [n1, n2]) await n.exp.close();
  });

  it('a node joining a group where a leg failed fails it too (it stays failed while the group lives)', async () => {
    const bus = new MemoryBus();
    const legs = new Map(['a', 'b'].map((d) => [d, new MemoryLeg({ device: d, sizeBytes: SIZE_BYTES })]));
    const table = `0 ${SIZE_BYTES / 512} mirror userspace 4 LVM-stale2 clustered-core ${REGION_SECTORS} nosync 2 a 0 b 0`;
    const bPath1 = { on: false };
    const n1 = await memoryNode(bus, 1, table, (d) => sharedLeg(legs.get(d)!, d === 'b' ? bPath1 : undefined));
    bPath1.on = true;
    await n1.exp.write(pattern(1, 4096), 0, { fua: false });
    expect(n1.exp.status().legs[1]!.health).toBe('D');
    const n2 = await memoryNode(bus, 2, table, (d) => sharedLeg(legs.get(d)!));
    expect(n2.exp.status().legs.map((l) => [l.device, l.health, l.upToDate, l.isDefault])).toEqual([
      ['a', 'A', true, true],
      ['b', 'D', false, false],
    ]);
    await readsBack(n2.exp, 0, pattern(1, 4096), 4);
    for (const n of [n1, n2]) await n.exp.close();
  });

  it('clustered-disk: after a whole-cluster crash the leg that failed is never a source and is resynced in full', async () => {
    const legs = new Map(['a', 'b'].map((d) => [d, new MemoryLeg({ device: d, sizeBytes: SIZE_BYTES })]));
    const logDev = new MemoryLeg({ device: 'log', sizeBytes: LOG_BYTES, volatileCache: true });
    const table = `0 ${SIZE_BYTES / 512} mirror userspace 4 LVM-stale3 clustered-disk log ${REGION_SECTORS} 2 a 0 b 0`;
    const aBroken = { on: false }; // a fails for every node (the device itself)
    const open1 = (log: MemoryLeg) => (d: string) => (d === 'log' ? sharedLeg(log) : sharedLeg(legs.get(d)!, d === 'a' ? aBroken : undefined));
    const bus = new MemoryBus();
    const n1 = await memoryNode(bus, 1, table, open1(logDev));
    const n2 = await memoryNode(bus, 2, table, open1(logDev));
    await until(() => [n1, n2].every((n) => n.exp.status().inSyncRegions === n.exp.status().regionCount), 10_000, 'first sync');
    const written = new Map<number, number>();
    const w = async (n: typeof n1, seed: number, off: number) => {
      await n.exp.write(pattern(seed, 8192), off, { fua: false });
      written.set(off, seed);
    };
    for (let r = 0; r < SIZE_BYTES / REGION_BYTES; r++) await w(r % 2 ? n1 : n2, r, r * REGION_BYTES);

    aBroken.on = true;
    await w(n1, 1000, 2 * REGION_BYTES); // fails on a
    for (let r = 4; r < 20; r += 3) await w(r % 2 ? n1 : n2, 1000 + r, r * REGION_BYTES + 16384);
    await n2.exp.flush();
    // Crash of the whole cluster: only what is durable on the log device survives.
    const survived = Buffer.from(logDev.durableBytes!);
    for (const n of [n1, n2]) await n.exp.close();

    // The single-node disk log reads the same records: a stale, b up to date (activated on a copy).
    const single = new DiskLog({ device: new MemoryLeg({ device: 'copy', sizeBytes: LOG_BYTES, initial: survived }), regionSizeBytes: REGION_BYTES, lengthBytes: SIZE_BYTES, sync: 'default' });
    const states = await single.resume({ legDevices: ['a', 'b'], flushDataLegs: async () => undefined });
    expect(states.map((s) => [s.device, s.upToDate])).toEqual([['a', false], ['b', true]]);
    expect(single.syncCount()).toBe(0); // stale a: every region resynced

    aBroken.on = false;
    const logAfter = new MemoryLeg({ device: 'log', sizeBytes: LOG_BYTES, initial: survived, volatileCache: true });
    // Every read of a (by a resync copy or a client read) must be of a region in sync on the reading node.
    const staleReads: number[] = [];
    const open2 = (d: string, log: () => DirtyLog | undefined): Leg => {
      const leg = open1(logAfter)(d);
      if (d !== 'a') return leg;
      return {
        ...leg,
        read: (t: Buffer, o: number) => {
          for (let r = Math.floor(o / REGION_BYTES); r <= Math.floor((o + t.length - 1) / REGION_BYTES); r++) if (!log()?.inSync(r)) staleReads.push(r);
          return leg.read(t, o);
        },
      } as Leg;
    };
    const bus2 = new MemoryBus();
    const m1 = await memoryNode(bus2, 1, table, open2);
    const m2 = await memoryNode(bus2, 2, table, open2);
    for (const m of [m1, m2]) {
      expect(m.exp.status().legs.map((l) => [l.device, l.upToDate, l.isDefault])).toEqual([
        ['a', false, false],
        ['b', true, true],
      ]);
    }
    for (const [off, seed] of written) for (const m of [m1, m2]) await readsBack(m.exp, off, pattern(seed, 8192), 2);
    await until(() => [m1, m2].every((m) => m.exp.status().inSyncRegions === m.exp.status().regionCount), 10_000, 'resync');
    await Promise.all([m1.exp.resyncIdle(), m2.exp.resyncIdle()]);
    expect(staleReads, 'regions read from a while out of sync').toEqual([]); // never a source
    const copied = [m1, m2].map((m) => m.exp.status().resync.bytesCopied);
    expect(copied[0]! + copied[1]!).toBe(SIZE_BYTES);
    expect(legs.get('a')!.bytes.equals(legs.get('b')!.bytes)).toBe(true);
    for (const [off, seed] of written) await readsBack(m1.exp, off, pattern(seed, 8192), 2);
    for (const m of [m1, m2]) expect(m.log.replicated!.staleLegs.size).toBe(0);
    expect(m1.exp.status().legs.map((l) => l.upToDate)).toEqual([true, true]);
    for (const m of [m1, m2]) await m.exp.close();
    console.log(`stale leg after a whole-cluster crash (memory bus): resync bytes node 1 ${copied[0]}, node 2 ${copied[1]} (volume ${SIZE_BYTES})`);
  });

  it('clustered-disk: the source failing while out of sync leaves no leg up to date; a restart refuses unless `sync`', async () => {
    const legs = new Map(['a', 'b'].map((d) => [d, new MemoryLeg({ device: d, sizeBytes: SIZE_BYTES })]));
    legs.get('a')!.bytes.fill(7); // data only a holds (b never got it: the first resync never ran)
    const logDev = new MemoryLeg({ device: 'log', sizeBytes: LOG_BYTES, volatileCache: true });
    const table = (sync: string) => `0 ${SIZE_BYTES / 512} mirror userspace ${sync ? 5 : 4} LVM-stale4 clustered-disk log ${REGION_SECTORS}${sync} 2 a 0 b 0`;
    const aBroken = { on: true };
    const open = (log: MemoryLeg) => (d: string) => (d === 'log' ? sharedLeg(log) : sharedLeg(legs.get(d)!, d === 'a' ? aBroken : undefined));
    const n1 = await memoryNode(new MemoryBus(), 1, table(''), open(logDev)); // new log: all out of sync, a the source
    await until(() => n1.exp.status().legs[0]!.health !== 'A', 5_000, 'a failed');
    await n1.exp.flush();
    expect(n1.log.replicated!.recordedState('a')).toBe('failed');
    expect(n1.log.replicated!.recordedState('b')).toBe('catching');
    expect(n1.log.lostSource()).toBe('a'); // the mirror keeps the unsynced regions unreadable (no default leg)
    expect(n1.exp.status().legs.map((l) => l.isDefault)).toEqual([false, false]);
    const survived = Buffer.from(logDev.durableBytes!);
    await n1.exp.close();
    // The single-node disk log reads no leg up to date either.
    const single = new DiskLog({ device: new MemoryLeg({ device: 'copy', sizeBytes: LOG_BYTES, initial: survived }), regionSizeBytes: REGION_BYTES, lengthBytes: SIZE_BYTES, sync: 'default' });
    const states = await single.resume({ legDevices: ['a', 'b'], flushDataLegs: async () => undefined }).catch((e: Error) => e);
    if (!(states instanceof Error)) expect(states.map((x) => x.upToDate)).toEqual([false, false]);

    aBroken.on = false;
    const logAfter = new MemoryLeg({ device: 'log', sizeBytes: LOG_BYTES, initial: survived, volatileCache: true });
    await expect(memoryNode(new MemoryBus(), 1, table(''), open(logAfter))).rejects.toThrow(/no leg of the table is recorded up to date.*`sync`/s);
    // The override: resync everything from leg 0.
    const m = await memoryNode(new MemoryBus(), 1, table(' sync'), open(logAfter));
    await until(() => m.exp.status().inSyncRegions === m.exp.status().regionCount, 10_000, 'resync');
    await m.exp.resyncIdle();
    expect(legs.get('b')!.bytes.equals(legs.get('a')!.bytes)).toBe(true);
    await m.exp.close();
  });

  it('a single-node disk log that recorded a leg stale: served clustered, that leg is resynced in full, never a source', async () => {
    const legs = new Map(['a', 'b'].map((d) => [d, new MemoryLeg({ device: d, sizeBytes: SIZE_BYTES })]));
    const logDev = new MemoryLeg({ device: 'log', sizeBytes: LOG_BYTES, volatileCache: true });
    const bBroken = { on: false };
    const open = (log: MemoryLeg) => (d: string) => (d === 'log' ? sharedLeg(log) : sharedLeg(legs.get(d)!, d === 'b' ? bBroken : undefined));
    const single = (await openTable(parseTable(`0 ${SIZE_BYTES / 512} mirror disk 3 log ${REGION_SECTORS} nosync 2 a 0 b 0`), {
      openLeg: async (d) => open(logDev)(d),
    })) as MirrorExport;
    bBroken.on = true;
    await single.write(pattern(1, 8192), 5 * REGION_BYTES, { fua: false }); // b fails: recorded stale
    await single.flush();
    const survived = Buffer.from(logDev.durableBytes!);
    await single.close();

    bBroken.on = false;
    const logAfter = new MemoryLeg({ device: 'log', sizeBytes: LOG_BYTES, initial: survived, volatileCache: true });
    const n = await memoryNode(new MemoryBus(), 1, `0 ${SIZE_BYTES / 512} mirror userspace 4 LVM-stale5 clustered-disk log ${REGION_SECTORS} 2 a 0 b 0`, open(logAfter));
    expect(n.exp.status().legs.map((l) => [l.device, l.upToDate, l.isDefault])).toEqual([
      ['a', true, true],
      ['b', false, false],
    ]);
    await until(() => n.exp.status().inSyncRegions === n.exp.status().regionCount, 10_000, 'resync');
    await n.exp.resyncIdle();
    expect(n.exp.status().resync.bytesCopied).toBe(SIZE_BYTES);
    expect(legs.get('b')!.bytes.equals(legs.get('a')!.bytes)).toBe(true);
    await readsBack(n.exp, 5 * REGION_BYTES, pattern(1, 8192), 4);
    await n.exp.close();
  });

  it("a single-node disk log's lost-source record: served clustered, the start is refused unless `sync`", async () => {
    const legs = new Map(['a', 'b'].map((d) => [d, new MemoryLeg({ device: d, sizeBytes: SIZE_BYTES })]));
    const logDev = new MemoryLeg({ device: 'log', sizeBytes: LOG_BYTES, volatileCache: true });
    const aBroken = { on: true };
    const open = (log: MemoryLeg) => (d: string) => (d === 'log' ? sharedLeg(log) : sharedLeg(legs.get(d)!, d === 'a' ? aBroken : undefined));
    // New log: every region out of sync, a the source; a fails at the first resync copy.
    const single = (await openTable(parseTable(`0 ${SIZE_BYTES / 512} mirror disk 2 log ${REGION_SECTORS} 2 a 0 b 0`), {
      openLeg: async (d) => open(logDev)(d),
    })) as MirrorExport;
    await until(() => single.status().legs[0]!.health !== 'A', 5_000, 'a failed');
    await single.flush();
    const survived = Buffer.from(logDev.durableBytes!);
    await single.close();
    aBroken.on = false;
    const logAfter = new MemoryLeg({ device: 'log', sizeBytes: LOG_BYTES, initial: survived, volatileCache: true });
    const clustered = (sync: string) => `0 ${SIZE_BYTES / 512} mirror userspace ${sync ? 5 : 4} LVM-stale6 clustered-disk log ${REGION_SECTORS}${sync} 2 a 0 b 0`;
    const refused = await memoryNode(new MemoryBus(), 1, clustered(''), open(logAfter)).then(
      () => null,
      (e: unknown) => e,
    );
    // The single-node log's refusal, word for word: the holder, the dirty regions, the leg to list first.
    expect(refused).toBeInstanceOf(LostSourceError);
    const lost = refused as LostSourceError;
    expect(lost.message).toMatch(/^cluster log LVM-stale6: leg a was the mirror's source/);
    expect(lost.holder).toBe('a');
    expect(lost.regions.length).toBeGreaterThan(0);
    expect(lost.message).toContain(`${lost.regions.length} region(s) dirty in the log (${lost.regions[0]}`);
    expect(lost.suggestedSource).toBe('b');
    expect(lost.message).toMatch(/start once with the log argument 'sync' and b listed first/);
    const m = await memoryNode(new MemoryBus(), 1, clustered(' sync'), open(logAfter));
    await until(() => m.exp.status().inSyncRegions === m.exp.status().regionCount, 10_000, 'resync');
    await m.exp.close();
  });

  it('after a merge every side lost, a leg failed before stays failed and the other leg is the source', async () => {
    const bus = new MemoryBus();
    const legs = new Map(['a', 'b'].map((d) => [d, new MemoryLeg({ device: d, sizeBytes: SIZE_BYTES })]));
    const table = `0 ${SIZE_BYTES / 512} mirror userspace 4 LVM-stale7 clustered-core ${REGION_SECTORS} nosync 2 a 0 b 0`;
    const aBroken = { on: false };
    const ns = [];
    for (const id of [1, 2, 3]) ns.push(await memoryNode(bus, id, table, (d) => sharedLeg(legs.get(d)!, d === 'a' ? aBroken : undefined)));
    await ns[0]!.exp.write(pattern(1, 8192), 3 * REGION_BYTES, { fua: false });
    aBroken.on = true;
    await ns[1]!.exp.write(pattern(2, 8192), 6 * REGION_BYTES, { fua: false }); // a fails, cluster-wide
    for (const n of ns) expect(n.exp.status().legs[0]!.health).toBe('D');
    bus.partition([[1], [2], [3]]);
    await new Promise((r) => setTimeout(r, 20));
    bus.heal(); // three equal sides: every member starts over with every region out of sync
    await until(() => ns.every((n) => n.log.initialized && n.log.replicated!.recordedState('a') === 'failed'), 5_000, 'state re-taken');
    for (const n of ns) {
      expect(n.log.lostSource()).toBeNull();
      expect(n.log.replicated!.sourceLeg()).toBe('b');
    }
    await until(() => ns.every((n) => n.exp.status().inSyncRegions === n.exp.status().regionCount), 10_000, 'resync');
    for (const n of ns) {
      await readsBack(n.exp, 3 * REGION_BYTES, pattern(1, 8192), 2);
      await readsBack(n.exp, 6 * REGION_BYTES, pattern(2, 8192), 2);
    }
    await until(() => new Set(ns.map((n) => n.log.digest())).size === 1, 5_000, 'one replicated state');
    for (const n of ns) await n.exp.close();
  });
});
