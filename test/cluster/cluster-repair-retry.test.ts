// cluster-repair-retry.test.ts — another node's REPAIR that fails on this node is tried again (Volumes with
// real mirror engines over shared memory legs, ClusterLogs on the in-memory bus, this node's RepairPolicy).
//
// Node 1 has reloaded onto the spare and multicast the REPAIR. Node 2 cannot open the spare at first (its
// path is not there yet), so its reload is refused. Until node 2 runs on the same legs, writes wait on
// every node: a one-shot repair left them waiting for good. Now the policy tries again after a delay; once
// the spare is there the repair goes through. When every attempt fails, the last repair-failed says that
// it gave up and what that means.
import { describe, expect, it } from 'vitest';
import { MemoryBus } from '../../src/cluster/memory-bus.js';
import { CLUSTER_TRIGGER, REPAIR_ATTEMPTS_MAX, RepairPolicy, repairVolume } from '../../src/control/repair.js';
import { Volumes, type VolumeEvent } from '../../src/control/volumes.js';
import { MemoryLeg } from '../../src/mirror/legs/memory.js';
import { memoryVolume, until } from './memory-engines.js';

const SIZE_BYTES = 1024 * 1024;
const REGION_SECTORS = 256;
const RETRY_MS = 100;

async function twoNodes(uuid: string) {
  const bus = new MemoryBus();
  const shared = new Map(['a', 'b', 's'].map((d) => [d, new MemoryLeg({ device: d, sizeBytes: SIZE_BYTES })]));
  // Node 2 sees a and b; the spare's path appears later (or never).
  const node2Devices = new Map([...shared].filter(([d]) => d !== 's'));
  const table = `0 ${SIZE_BYTES / 512} mirror userspace 4 ${uuid} clustered-core ${REGION_SECTORS} nosync 2 a 0 b 0`;
  const n1 = await memoryVolume(bus, 1, table, shared);
  // Opened second: node 2's log is the process's live one for the uuid, so other nodes' REPAIRs reach its policy.
  const n2 = await memoryVolume(bus, 2, table, node2Devices);
  const volumes = new Volumes();
  volumes.add(n2.v);
  const policy = new RepairPolicy(volumes, 'none', [], RETRY_MS);
  const events: VolumeEvent[] = [];
  n2.v.on('event', (e: VolumeEvent) => events.push(e));
  // Node 1 repairs itself and tells the group (as its own policy would: suspend, reload onto s, resume).
  await repairVolume(n1.v, { spares: ['s'], policy: 'allocate', trigger: `${CLUSTER_TRIGGER} node 3`, failed: new Set(['b']) });
  await n1.log().requestRepair(['b'], ['s']);
  const close = async () => {
    policy.stop();
    await policy.idle();
    for (const n of [n1, n2]) await n.v.close();
  };
  return { n1, n2, shared, node2Devices, policy, events, close };
}

const kinds = (events: VolumeEvent[]) => events.map((e) => e.kind).filter((k) => k.startsWith('repair-'));

describe("another node's REPAIR that fails here", () => {
  it('is tried again after a delay and goes through once the spare can be opened', async () => {
    const c = await twoNodes('LVM-retry-ok');
    try {
      // The policy's record of an attempt carries its number (the volume's own, step reload, comes first).
      const attemptFailed = (e: VolumeEvent) => e.kind === 'repair-failed' && e.data.attempt !== undefined;
      await until(() => c.events.some(attemptFailed), 5_000, "node 2's first attempt fails");
      const failed = c.events.find(attemptFailed)!.data;
      expect(failed).toMatchObject({ trigger: 'cluster node 1', attempt: 1, retryInMs: RETRY_MS });
      expect(String(failed.message)).toMatch(/s: no such device on node 2/);
      expect(c.n2.log().replicated!.legsAgreed(), 'the nodes run on different legs meanwhile').toBe(false);
      expect(c.n2.v.legs().map((l) => l.device)).toEqual(['a', 'b']);

      c.node2Devices.set('s', c.shared.get('s')!);
      await c.policy.idle();
      expect(kinds(c.events)).toEqual(['repair-start', 'repair-failed', 'repair-failed', 'repair-start', 'repair-done']);
      expect(c.n2.v.legs().map((l) => l.device)).toEqual(['a', 's']);
      await until(() => c.n2.log().replicated!.legsAgreed(), 2_000, 'the leg sets agree');
      // A write on node 2 completes (it waited while the leg sets differed) and reads back through node 1.
      const data = Buffer.alloc(4096, 0x5a);
      await c.n2.v.proxy.write(data, 8192, { fua: false });
      const got = Buffer.alloc(4096);
      await c.n1.v.proxy.read(got, 8192);
      expect(got.equals(data)).toBe(true);
    } finally {
      await c.close();
    }
  });

  it(`gives up after ${REPAIR_ATTEMPTS_MAX} attempts, saying so and what it leaves`, async () => {
    const c = await twoNodes('LVM-retry-fail');
    try {
      await until(() => c.events.filter((e) => e.kind === 'repair-failed').length >= REPAIR_ATTEMPTS_MAX, 5_000, 'every attempt fails');
      await c.policy.idle();
      const failures = c.events.filter((e) => e.kind === 'repair-failed').map((e) => e.data);
      // The volume's own record of the refused reload (step reload) comes before each of the policy's.
      const policyFailures = failures.filter((d) => d.attempt !== undefined);
      expect(policyFailures.map((d) => d.attempt)).toEqual([1, 2, 3]);
      expect(policyFailures.slice(0, -1).every((d) => d.retryInMs === RETRY_MS)).toBe(true);
      const last = policyFailures.at(-1)!;
      expect(last.retryInMs).toBeUndefined();
      expect(String(last.message)).toMatch(/gave up after 3 attempt\(s\): this node keeps its legs, and writes wait on every node/);
      expect(c.n2.v.legs().map((l) => l.device)).toEqual(['a', 'b']);
      await new Promise((r) => setTimeout(r, 3 * RETRY_MS));
      expect(c.events.filter((e) => e.kind === 'repair-failed')).toHaveLength(failures.length);
    } finally {
      await c.close();
    }
  });
});
