// repair-parked-write.test.ts — a cluster repair reaching a node that has a write parked for the cluster
// (Volumes with real mirror engines over shared memory legs, ClusterLogs on the in-memory bus).
//
// Node 1 has already reloaded onto the spare, node 2 still runs on the old legs: the leg sets differ, so
// every write waits on every node until they agree (cluster-log.ts). A write reaching node 2 in that window
// parks in its engine. Node 2's noflush suspend used to wait for that write to complete or be held, while
// the write waited for node 2's reload: the repair hung until the suspend timeout (30 s in serve), then
// failed, and the cluster's writes stayed parked (cluster-allocate.test.ts's flake). A noflush suspend now
// keeps such a write as it keeps held writes: the repair finishes and the write completes on the new legs.
import { describe, expect, it } from 'vitest';
import { MemoryBus } from '../../src/cluster/memory-bus.js';
import { CLUSTER_TRIGGER, repairVolume } from '../../src/control/repair.js';
import type { Volume, VolumeEvent } from '../../src/control/volumes.js';
import { MemoryLeg } from '../../src/mirror/legs/memory.js';
import { memoryVolume, until } from './memory-engines.js';

const SIZE_BYTES = 4 * 1024 * 1024;
const REGION_SECTORS = 256;
/** Far below serve's 30 s; the repair must finish well within it, not by giving up. */
const SUSPEND_TIMEOUT_MS = 3_000;

function pattern(seed: number, bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) b[i] = (seed * 31 + i * 7 + 1) & 0xff;
  return b;
}

describe('cluster repair while a write waits for the leg sets to agree', () => {
  it("a node's noflush suspend keeps the parked write: the repair finishes, the write completes on the new legs", async () => {
    const bus = new MemoryBus();
    const legs = new Map(['a', 'b', 's'].map((d) => [d, new MemoryLeg({ device: d, sizeBytes: SIZE_BYTES })]));
    const table = `0 ${SIZE_BYTES / 512} mirror userspace 4 LVM-parked clustered-core ${REGION_SECTORS} nosync 2 a 0 b 0`;
    const n1 = await memoryVolume(bus, 1, table, legs, { suspendTimeoutMs: SUSPEND_TIMEOUT_MS });
    const n2 = await memoryVolume(bus, 2, table, legs, { suspendTimeoutMs: SUSPEND_TIMEOUT_MS });
    await n2.v.proxy.write(pattern(1, 8192), 0, { fua: false });
    // The repair as a REPAIR from another node applies it (trigger `cluster ...`: not sent again).
    const repair = (v: Volume) => repairVolume(v, { spares: ['s'], policy: 'allocate', trigger: `${CLUSTER_TRIGGER} node 3`, failed: new Set(['b']) });

    await repair(n1.v);
    await until(() => n2.log().replicated?.legsAgreed() === false, 2_000, 'node 2 sees node 1 on other legs');
    const write = n2.v.proxy.write(pattern(2, 8192), 3 * REGION_SECTORS * 512, { fua: false });
    let settled = false;
    void write.then(() => (settled = true), () => (settled = true));
    await new Promise((r) => setTimeout(r, 50));
    expect(settled, 'the write waits while the leg sets differ').toBe(false);
    expect(n2.v.proxy.inFlightCount).toBe(1);

    const suspends: Record<string, unknown>[] = [];
    n2.v.on('event', (e: VolumeEvent) => e.kind === 'suspend' && suspends.push(e.data));
    const t0 = Date.now();
    const r = await repair(n2.v);
    const repairMs = Date.now() - t0;
    expect(r).toMatchObject({ repaired: true, removed: ['b'], added: ['s'] });
    expect(repairMs, 'the repair did not wait for the suspend to give up').toBeLessThan(SUSPEND_TIMEOUT_MS / 2);
    expect(suspends).toEqual([{ noflush: true, heldWrites: 0, clusterParkedWrites: 1 }]);
    await write;
    expect(n2.log().replicated!.legsAgreed()).toBe(true);
    const got = Buffer.alloc(8192);
    await n1.v.proxy.read(got, 3 * REGION_SECTORS * 512);
    expect(got.equals(pattern(2, 8192)), 'the parked write reads back through node 1').toBe(true);
    for (const n of [n1, n2]) await n.v.close();
  });
});
