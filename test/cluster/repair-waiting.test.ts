// repair-waiting.test.ts — a repair that does not finish says what it waits for (Volumes with real mirror
// engines over shared memory legs, ClusterLogs on the in-memory bus delivering only while the test pumps).
//
// Node 1 has reloaded onto the spare; node 2's repair then stalls in its resume because the bus stops
// delivering: its leg announcement (LEGS) does not come back. While it waits, node 2 records
// repair-waiting events (logged as warnings by serve) naming the step, its requests and what its cluster log
// waits for: the LEGS message by sequence number, and the members' leg sets (which node runs on what).
// Once delivery resumes the repair finishes and the reports stop.
import { describe, expect, it } from 'vitest';
import { MemoryBus } from '../../src/cluster/memory-bus.js';
import { CLUSTER_TRIGGER, repairVolume } from '../../src/control/repair.js';
import type { Volume, VolumeEvent } from '../../src/control/volumes.js';
import { MemoryLeg } from '../../src/mirror/legs/memory.js';
import { memoryVolume, until } from './memory-engines.js';

const SIZE_BYTES = 1024 * 1024;
const REGION_SECTORS = 256;
const REPORT_MS = 100;

describe('a stalled cluster repair reports what it waits for', () => {
  it('repair-waiting names the step, the undelivered LEGS message and the leg sets per node; it stops when the repair ends', async () => {
    const bus = new MemoryBus({ delivery: 'manual' });
    let delivering = true;
    const pump = setInterval(() => delivering && bus.drain(), 1);
    try {
      const legs = new Map(['a', 'b', 's'].map((d) => [d, new MemoryLeg({ device: d, sizeBytes: SIZE_BYTES })]));
      const table = `0 ${SIZE_BYTES / 512} mirror userspace 4 LVM-waiting clustered-core ${REGION_SECTORS} nosync 2 a 0 b 0`;
      const n1 = await memoryVolume(bus, 1, table, legs);
      const n2 = await memoryVolume(bus, 2, table, legs);
      const repair = (v: Volume) =>
        repairVolume(v, { spares: ['s'], policy: 'allocate', trigger: `${CLUSTER_TRIGGER} node 3`, failed: new Set(['b']), waitReportMs: REPORT_MS });
      await repair(n1.v);
      await until(() => n2.log().replicated?.legsAgreed() === false, 2_000, 'node 2 sees node 1 on other legs');
      expect(n1.log().waitingFor(), 'node 1 waits for nothing from the group').toEqual([
        "the members' leg sets to agree (writes wait on every node until then): node 1 [a s], node 2 [a b]",
      ]);

      const events: VolumeEvent[] = [];
      n2.v.on('event', (e: VolumeEvent) => events.push(e));
      delivering = false;
      const repaired = repair(n2.v);
      await until(() => events.some((e) => e.kind === 'repair-waiting'), 3_000, 'a repair-waiting event');
      const waiting = events.find((e) => e.kind === 'repair-waiting')!.data;
      expect(waiting).toMatchObject({ trigger: 'cluster node 3', step: 'resume', inFlightRequests: 0, heldWrites: 0, clusterParkedWrites: 0 });
      const cluster = waiting.cluster as string[];
      expect(cluster).toHaveLength(2);
      expect(cluster[0]).toMatch(/^LEGS seq \d+ \(a s\), sent \d+ ms ago: not delivered back$/);
      expect(cluster[1]).toBe("the members' leg sets to agree (writes wait on every node until then): node 1 [a s], node 2 [a b]");
      expect(waiting.message).toMatch(/^resume still running after \d+ ms: 0 requests in flight \(0 held, 0 parked for the cluster\), 0 queued; the cluster log waits for: LEGS seq/);

      delivering = true;
      expect(await repaired).toMatchObject({ repaired: true, removed: ['b'], added: ['s'] });
      expect(n2.log().waitingFor()).toEqual([]);
      const reports = events.filter((e) => e.kind === 'repair-waiting').length;
      await new Promise((r) => setTimeout(r, 3 * REPORT_MS));
      expect(events.filter((e) => e.kind === 'repair-waiting').length, 'no report after the repair ended').toBe(reports);
      for (const n of [n1, n2]) await n.v.close();
    } finally {
      clearInterval(pump);
    }
  });
});
