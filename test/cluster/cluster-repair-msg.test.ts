// cluster-repair-msg.test.ts — the REPAIR request on a log's group (memory bus): codec round trip and
// limits (with and without spares added; the LEGS announcement shares the device-list format), and
// delivery of one node's request to every member (own included, flagged fromMe).
import { describe, expect, it } from 'vitest';
import { ClusterLogRequest, decodeMessage, encodeMessage, REPAIR_DEVICES_MAX } from '../../src/cluster/cluster-log-codec.js';
import { ClusterLog } from '../../src/cluster/cluster-log.js';
import { MemoryBus } from '../../src/cluster/memory-bus.js';

const turn = () => new Promise<void>((r) => setImmediate(r));

describe('cluster REPAIR request', () => {
  it('round-trips device names and refuses oversized requests', () => {
    const m = { type: ClusterLogRequest.REPAIR, seq: 7, removed: ['/dev/vg/leg1', 'nbd://h/ü'], added: [] as string[] };
    expect(decodeMessage(encodeMessage(m), 4)).toEqual(m);
    const withSpare = { ...m, added: ['/dev/vg/spare'] };
    expect(decodeMessage(encodeMessage(withSpare), 4)).toEqual(withSpare);
    expect(() => encodeMessage({ type: ClusterLogRequest.REPAIR, seq: 1, removed: Array(REPAIR_DEVICES_MAX + 1).fill('x'), added: [] })).toThrow(/devices/);
    expect(() => encodeMessage({ type: ClusterLogRequest.REPAIR, seq: 1, removed: ['a'], added: Array(REPAIR_DEVICES_MAX + 1).fill('x') })).toThrow(/devices/);
    expect(() => encodeMessage({ type: ClusterLogRequest.REPAIR, seq: 1, removed: [''], added: [] })).toThrow(/name/);
    for (const b of [encodeMessage({ type: ClusterLogRequest.REPAIR, seq: 1, removed: ['abc'], added: [] }), encodeMessage(withSpare)]) {
      expect(() => decodeMessage(b.subarray(0, b.length - 1), 4)).toThrow();
      expect(() => decodeMessage(Buffer.concat([b, Buffer.alloc(4, 1)]), 4)).toThrow();
    }
    const legs = { type: ClusterLogRequest.LEGS, seq: 3, devices: ['/a', '/b', 'nbd://x/y'] };
    expect(decodeMessage(encodeMessage(legs), 4)).toEqual(legs);
    expect(() => encodeMessage({ ...legs, devices: ['/a', ''] })).toThrow(/name/);
  });

  it('one node asks, every member hears it once', async () => {
    const bus = new MemoryBus({ delivery: 'auto' });
    const logs = [1, 2, 3].map(
      (n) => new ClusterLog({ transport: bus.connect(n), uuid: 'rep', regionSizeBytes: 4096, lengthBytes: 8 * 4096, sync: 'nosync' }),
    );
    await Promise.all(logs.map((l) => l.resume({ legDevices: ['a', 'b', 'c'], flushDataLegs: async () => undefined })));
    const heard: Array<{ node: number; removed: string[]; added: string[]; fromMe: boolean; from: number }> = [];
    logs.forEach((l, i) => l.onRepair((r) => heard.push({ node: i + 1, removed: r.removed, added: r.added, fromMe: r.fromMe, from: r.from.nodeId })));
    await logs[1]!.requestRepair(['b'], ['s']);
    for (let i = 0; i < 20 && heard.length < 3; i++) await turn();
    expect(heard.sort((a, b) => a.node - b.node)).toEqual([
      { node: 1, removed: ['b'], added: ['s'], fromMe: false, from: 2 },
      { node: 2, removed: ['b'], added: ['s'], fromMe: true, from: 2 },
      { node: 3, removed: ['b'], added: ['s'], fromMe: false, from: 2 },
    ]);
    for (const l of logs) await l.close();
  });
});
