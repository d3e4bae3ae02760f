// cluster-mirror.test.ts — two nodes' mirrors (the real engine, via openTable) over the same shared
// memory legs, coordinated by ClusterLogs on one in-memory total-order bus. Checks that writes from both
// nodes complete and are visible to the other node, and that the cluster-wide resync finishes.
import { describe, expect, it } from 'vitest';
import { MemoryBus } from '../../src/cluster/memory-bus.js';
import type { ClusterLog } from '../../src/cluster/cluster-log.js';
import type { Export } from '../../src/nbd/export.js';
import { MemoryLeg } from '../../src/mirror/legs/memory.js';
import { memoryNode, sharedLeg } from './memory-engines.js';
import { within } from '../helpers/time.js';

const SIZE_BYTES = 4 * 1024 * 1024;
const REGION_SECTORS = 256; // 128 KiB regions -> 32 regions

async function node(bus: MemoryBus, nodeId: number, legs: Map<string, MemoryLeg>, sync: string): Promise<{ exp: Export; log: ClusterLog }> {
  const table = `0 ${SIZE_BYTES / 512} mirror userspace 4 LVM-sim clustered-core ${REGION_SECTORS} ${sync} 2 a 0 b 0`;
  return memoryNode(bus, nodeId, table, (device) => sharedLeg(legs.get(device)!));
}

function pattern(seed: number, bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) b[i] = (seed * 31 + i * 7) & 0xff;
  return b;
}

describe('two mirrors sharing legs, coordinated by the cluster log (memory bus)', () => {
  it('writes from both nodes complete and are seen by the other (nosync)', async () => {
    const bus = new MemoryBus();
    const legs = new Map(['a', 'b'].map((d) => [d, new MemoryLeg({ device: d, sizeBytes: SIZE_BYTES })]));
    const n1 = await node(bus, 1, legs, 'nosync');
    const n2 = await node(bus, 2, legs, 'nosync');
    expect(n1.log.members.map((m) => m.nodeId)).toEqual([1, 2]);
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 16; i++) {
      const who = i % 2 === 0 ? n1 : n2;
      writes.push(who.exp.write(pattern(i, 8192), i * 200 * 1024, { fua: false }));
    }
    await within(Promise.all(writes), 10_000, 'writes');
    await within(Promise.all([n1.exp.flush(), n2.exp.flush()]), 10_000, 'flush');
    for (let i = 0; i < 16; i++) {
      const other = i % 2 === 0 ? n2 : n1;
      const got = Buffer.alloc(8192);
      await within(other.exp.read(got, i * 200 * 1024), 10_000, 'read');
      expect(got.equals(pattern(i, 8192))).toBe(true);
    }
    // Both nodes' marks reached the replicated state identically.
    expect(n1.log.digest()).toBe(n2.log.digest());
    expect(n1.log.replicated!.marksByNode.size).toBeGreaterThan(0);
    await n1.exp.close();
    await n2.exp.close();
  });

  it('cluster-wide resync: one region at a time across both nodes, legs end identical (sync)', async () => {
    const bus = new MemoryBus();
    const legs = new Map(['a', 'b'].map((d) => [d, new MemoryLeg({ device: d, sizeBytes: SIZE_BYTES })]));
    legs.get('a')!.bytes.fill(0x5a); // leg b is stale until resynced
    const n1 = await node(bus, 1, legs, 'sync');
    const n2 = await node(bus, 2, legs, 'sync');
    // No manual kicks: the engine subscribes to the log's onWorkAvailable / onRegionsChanged itself.
    // Writes from both nodes to regions not yet in sync park until some node recovered them, then complete.
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 8; i++) {
      const who = i % 2 === 0 ? n1 : n2;
      writes.push(who.exp.write(pattern(100 + i, 4096), (SIZE_BYTES / 8) * i + 4096, { fua: false }));
    }
    const recoverers = new Set<number>();
    const deadline = Date.now() + 20_000;
    while ((n1.log.syncCount() < n1.log.regionCount || n2.log.syncCount() < n2.log.regionCount) && Date.now() < deadline) {
      const r = n1.log.replicated!.recovering;
      if (r) recoverers.add(r.nodeId);
      await new Promise((res) => setImmediate(res));
    }
    expect(n1.log.syncCount()).toBe(n1.log.regionCount);
    expect(n2.log.syncCount()).toBe(n2.log.regionCount);
    await within(Promise.all(writes), 10_000, 'writes parked on unsynced regions');
    await within(Promise.all([n1.exp.flush(), n2.exp.flush()]), 10_000, 'flush');
    expect(legs.get('a')!.bytes.equals(legs.get('b')!.bytes)).toBe(true);
    expect(recoverers.size).toBeGreaterThanOrEqual(1);
    for (let i = 0; i < 8; i++) {
      const got = Buffer.alloc(4096);
      legs.get('b')!.bytes.copy(got, 0, (SIZE_BYTES / 8) * i + 4096);
      expect(got.equals(pattern(100 + i, 4096))).toBe(true);
    }
    expect(n1.log.digest()).toBe(n2.log.digest());
    await n1.exp.close();
    await n2.exp.close();
  });
});
