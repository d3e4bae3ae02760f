// added-leg.test.ts — a leg added to a cluster-log mirror (repair with a spare, policy allocate, or a
// reload) holds none of the data: it must be resynced, once, cluster-wide, and not before every node runs
// on it. Real mirror engines (openTable) over shared memory legs, ClusterLogs on the in-memory bus.
//  1. One node: [a b] -> [a c] (c all zeros). Before the fix the log kept every region in sync, the
//     mirror declared c up to date and balanced reads onto it: half the reads returned zeros. Now every
//     region is copied onto c, no read returns anything but the data, c ends equal to a.
//  2. Two nodes: node 1 reloads [a b] -> [a s] while node 2 still runs [a b] and writes. Nothing is copied
//     onto s (no region set in sync) while node 2 has not reloaded; node 2's writes to regions out of sync
//     wait; once node 2 reloads too, each region is copied exactly once cluster-wide (resync bytes of both
//     nodes together = the volume), every acknowledged write reads back through both nodes, a = s.
//  3. Two nodes, a leg removed (repair remove): node 1 reloads [a b c] -> [a b] while node 2 still runs
//     [a b c] and balances its reads over c. A write through node 1 (to an in-sync region) is not
//     acknowledged until node 2 dropped c too: otherwise node 2 could read c, which missed it. Then it
//     completes and both nodes read it (a cluster-legs event reported the difference and its end).
//  4. A node joining with other legs than the running nodes (restarted with its old table) is refused
//     with a clear error; the running nodes go on unaffected.
import { describe, expect, it } from 'vitest';
import { MemoryBus } from '../../src/cluster/memory-bus.js';
import { MemoryLeg } from '../../src/mirror/legs/memory.js';
import { memoryNode, sharedLeg, until } from './memory-engines.js';

const SIZE_BYTES = 4 * 1024 * 1024;
const REGION_SECTORS = 256; // 128 KiB -> 32 regions
const REGION_BYTES = REGION_SECTORS * 512;

function pattern(seed: number, bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) b[i] = (seed * 131 + i * 7 + 1) & 0xff || 1; // never zero
  return b;
}

async function node(bus: MemoryBus, nodeId: number, legs: Map<string, MemoryLeg>, devices: string[]) {
  const table = `0 ${SIZE_BYTES / 512} mirror userspace 4 LVM-add clustered-core ${REGION_SECTORS} nosync ${devices.length} ${devices.map((d) => `${d} 0`).join(' ')}`;
  const { exp, log } = await memoryNode(bus, nodeId, table, (d) => sharedLeg(legs.get(d)!));
  const reload = async (to: string[]) => {
    await exp.suspend({ noflush: true });
    exp.reload({ legs: to.map((d) => sharedLeg(legs.get(d)!)) });
    await exp.resume();
  };
  return { exp, log, reload };
}

describe('a leg added to a cluster-log mirror', () => {
  it('one node: the new leg is resynced; no read ever returns its stale contents', async () => {
    const bus = new MemoryBus();
    const legs = new Map(['a', 'b', 'c'].map((d) => [d, new MemoryLeg({ device: d, sizeBytes: SIZE_BYTES })]));
    const n = await node(bus, 1, legs, ['a', 'b']);
    for (let r = 0; r < SIZE_BYTES / REGION_BYTES; r++) await n.exp.write(pattern(r, 8192), r * REGION_BYTES, { fua: false });
    await n.reload(['a', 'c']);
    expect(n.exp.status().legs.map((l) => [l.device, l.upToDate])).toEqual([['a', true], ['c', false]]);
    // Reads while the resync runs and after: never the new leg's zeros.
    for (let i = 0; i < 64; i++) {
      const r = i % (SIZE_BYTES / REGION_BYTES);
      const got = Buffer.alloc(8192);
      await n.exp.read(got, r * REGION_BYTES);
      expect(got.equals(pattern(r, 8192)), `read ${i} of region ${r}`).toBe(true);
    }
    await until(() => n.exp.status().inSyncRegions === n.exp.status().regionCount, 10_000, 'in sync');
    await n.exp.resyncIdle();
    expect(n.exp.status().resync.bytesCopied).toBe(SIZE_BYTES);
    expect(legs.get('c')!.bytes.equals(legs.get('a')!.bytes)).toBe(true);
    expect(n.exp.status().legs.map((l) => l.upToDate)).toEqual([true, true]);
    await n.exp.close();
  });

  it('two nodes: nothing is copied onto the spare until both run on it; then each region once', async () => {
    const bus = new MemoryBus();
    const legs = new Map(['a', 'b', 's'].map((d) => [d, new MemoryLeg({ device: d, sizeBytes: SIZE_BYTES })]));
    const n1 = await node(bus, 1, legs, ['a', 'b']);
    const n2 = await node(bus, 2, legs, ['a', 'b']);
    const written = new Map<number, number>(); // offset -> seed
    const w = async (n: typeof n1, seed: number, off: number) => {
      await n.exp.write(pattern(seed, 4096), off, { fua: false });
      written.set(off, seed);
    };
    await Promise.all([w(n1, 1, 0), w(n2, 2, 5 * REGION_BYTES), w(n1, 3, 9 * REGION_BYTES + 4096)]);

    await n1.reload(['a', 's']); // as a REPAIR (remove b, add s) applied on node 1 first
    // Node 2, still on [a b], writes: the regions are out of sync now and nobody may recover them yet.
    let done2 = 0;
    const pending = [4, 5, 20].map((r, i) => w(n2, 10 + i, r * REGION_BYTES + 65536).then(() => void done2++));
    await new Promise((r) => setTimeout(r, 300));
    expect(done2).toBe(0);
    expect(n1.exp.status().resync.bytesCopied + n2.exp.status().resync.bytesCopied).toBe(0);
    expect(legs.get('s')!.bytes.every((x) => x === 0)).toBe(true);
    expect(n1.log.replicated!.legsAgreed()).toBe(false);
    expect(n1.exp.status().inSyncRegions).toBe(0);

    await n2.reload(['a', 's']);
    await Promise.all(pending);
    await until(() => [n1, n2].every((n) => n.exp.status().inSyncRegions === n.exp.status().regionCount), 10_000, 'in sync');
    await Promise.all([n1.exp.resyncIdle(), n2.exp.resyncIdle()]);
    const copied = [n1, n2].map((n) => n.exp.status().resync.bytesCopied);
    expect(copied[0]! + copied[1]!).toBe(SIZE_BYTES); // every region once, cluster-wide
    expect(legs.get('s')!.bytes.equals(legs.get('a')!.bytes)).toBe(true);
    for (const [off, seed] of written) {
      for (const n of [n1, n2]) {
        const got = Buffer.alloc(4096);
        await n.exp.read(got, off);
        expect(got.equals(pattern(seed, 4096)), `offset ${off} via node ${n === n1 ? 1 : 2}`).toBe(true);
      }
    }
    expect(n1.log.digest()).toBe(n2.log.digest());
    console.log(`added leg, 2 nodes: resync bytes node 1 ${copied[0]}, node 2 ${copied[1]} (volume ${SIZE_BYTES})`);
    for (const n of [n1, n2]) await n.exp.close();
  });

  it('two nodes, a leg removed: writes wait until every node dropped it (no read of the dropped leg misses them)', async () => {
    const bus = new MemoryBus();
    const legs = new Map(['a', 'b', 'c'].map((d) => [d, new MemoryLeg({ device: d, sizeBytes: SIZE_BYTES })]));
    const n1 = await node(bus, 1, legs, ['a', 'b', 'c']);
    const n2 = await node(bus, 2, legs, ['a', 'b', 'c']);
    const events: string[] = [];
    n1.log.onEvent((e) => events.push(`${e.name}:${e.name === 'cluster-legs' ? e.payload.agreed : ''}`));
    await n1.exp.write(pattern(1, 4096), 7 * REGION_BYTES, { fua: false });
    await n1.reload(['a', 'b']);
    let acked = false;
    const w = n1.exp.write(pattern(2, 4096), 7 * REGION_BYTES, { fua: false }).then(() => void (acked = true));
    await new Promise((r) => setTimeout(r, 300));
    expect(acked).toBe(false);
    expect(legs.get('a')!.bytes.subarray(7 * REGION_BYTES, 7 * REGION_BYTES + 4096).equals(pattern(1, 4096))).toBe(true);
    await n2.reload(['a', 'b']);
    await w;
    for (const n of [n1, n2]) {
      for (let i = 0; i < 4; i++) {
        const got = Buffer.alloc(4096);
        await n.exp.read(got, 7 * REGION_BYTES);
        expect(got.equals(pattern(2, 4096))).toBe(true);
      }
    }
    expect(events).toEqual(['cluster-legs:false', 'cluster-legs:true']);
    expect(n1.exp.status().resync.bytesCopied + n2.exp.status().resync.bytesCopied).toBe(0); // nothing to resync
    for (const n of [n1, n2]) await n.exp.close();
  });

  it('a node joining with other legs than the running nodes is refused; the others go on', async () => {
    const bus = new MemoryBus();
    const legs = new Map(['a', 'b', 'c'].map((d) => [d, new MemoryLeg({ device: d, sizeBytes: SIZE_BYTES })]));
    const n1 = await node(bus, 1, legs, ['a', 'b']);
    const n2 = await node(bus, 2, legs, ['b', 'a']); // same legs, other order: fine
    await expect(node(bus, 3, legs, ['a', 'c'])).rejects.toThrow(/node's table has the legs a c, the running nodes use a b/);
    await n1.exp.write(pattern(5, 4096), 0, { fua: false });
    const got = Buffer.alloc(4096);
    await n2.exp.read(got, 0);
    expect(got.equals(pattern(5, 4096))).toBe(true);
    expect(n1.log.members.map((m) => m.nodeId)).toEqual([1, 2]);
    expect(n1.exp.status().inSyncRegions).toBe(n1.exp.status().regionCount);
    for (const n of [n1, n2]) await n.exp.close();
  });
});
