// cluster-repair-msg.test.ts — the REPAIR request on a log's group (memory bus): codec round trip and
// limits, and delivery of one node's request to every member (own included, flagged fromMe).
import { describe, expect, it } from 'vitest';
import { ClusterLogRequest, decodeMessage, encodeMessage, REPAIR_DEVICES_MAX } from '../../src/cluster/cluster-log-codec.js';
import { ClusterLog } from '../../src/cluster/cluster-log.js';
import { MemoryBus } from '../../src/cluster/memory-bus.js';

const turn = () => new Promise<void>((r) => setImmediate(r));

describe('cluster REPAIR request', () => {
  it('round-trips device names and refuses oversized requests', () => {
    const m = { type: ClusterLogRequest.REPAIR, seq: 7, removed: ['/dev/vg/leg1', 'nbd://h/ü'] } as const;
    expect(decodeMessage(encodeMessage({ ...m, removed: [...m.removed] }), 4)).toEqual({ ...m, removed: [...m.removed] });
    expect(() => encodeMessage({ type: ClusterLogRequest.REPAIR, seq: 1, removed: Array(REPAIR_DEVICES_MAX + 1).fill('x') })).toThrow(/devices/);
    expect(() => encodeMessage({ type: ClusterLogRequest.REPAIR, seq: 1, removed: [''] })).toThrow(/name/);
    const b = encodeMessage({ type: ClusterLogRequest.REPAIR, seq: 1, removed: ['abc'] });
    expect(() => decodeMessage(b.subarray(0, b.length - 1), 4)).toThrow();
  });

  it('one node asks, every member hears it once', async () => {
    const bus = new MemoryBus({ delivery: 'auto' });
    const logs = [1, 2, 3].map(
      (n) => new ClusterLog({ transport: bus.connect(n), uuid: 'rep', regionSizeBytes: 4096, lengthBytes: 8 * 4096, sync: 'nosync' }),
    );
    await Promise.all(logs.map((l) => l.resume({ legDevices: ['a', 'b', 'c'], flushDataLegs: async () => undefined })));
    const heard: Array<{ node: number; removed: string[]; fromMe: boolean; from: number }> = [];
    logs.forEach((l, i) => l.onRepair((r) => heard.push({ node: i + 1, removed: r.removed, fromMe: r.fromMe, from: r.from.nodeId })));
    await logs[1]!.requestRepair(['b']);
    for (let i = 0; i < 20 && heard.length < 3; i++) await turn();
    expect(heard.sort((a, b) => a.node - b.node)).toEqual([
      { node: 1, removed: ['b'], fromMe: false, from: 2 },
      { node: 2, removed: ['b'], fromMe: true, from: 2 },
      { node: 3, removed: ['b'], fromMe: false, from: 2 },
    ]);
    for (const l of logs) await l.close();
  });
});
