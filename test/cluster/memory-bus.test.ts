// memory-bus.test.ts — the in-memory total-order bus keeps CPG's guarantees (same order everywhere,
// self-delivery, per-sender FIFO, membership changes with reasons, departures ordered after the
// messages already sent).
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MemoryBus, type MemoryTransport } from '../../src/cluster/memory-bus.js';
import { ChangeReason, type ConfigChange, type Delivery } from '../../src/cluster/transport.js';

function record(t: MemoryTransport) {
  const log: string[] = [];
  const changes: ConfigChange[] = [];
  t.onDeliver((d: Delivery) => log.push(`${d.nodeId}/${d.payload.toString()}`));
  t.onConfigChange((c) => {
    changes.push(c);
    log.push(`conf:${c.members.map((m) => m.nodeId).join(',')}`);
  });
  return { log, changes };
}

describe('MemoryBus', () => {
  it('joins produce identical JOIN changes for every member, in order', async () => {
    const bus = new MemoryBus({ delivery: 'manual' });
    const a = bus.connect(1);
    const b = bus.connect(2);
    const ra = record(a);
    const rb = record(b);
    await a.join('g');
    await b.join('g');
    bus.drain();
    expect(ra.changes).toHaveLength(2);
    expect(ra.changes[1]).toEqual(rb.changes[0]);
    expect(rb.changes[0]!.joined).toEqual([{ nodeId: 2, pid: b.localPid, reason: ChangeReason.join }]);
    expect(rb.changes[0]!.members.map((m) => m.nodeId)).toEqual([1, 2]);
  });

  it('every member sees the same total order under random interleavings (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: 3 })), { minLength: 1, maxLength: 60 }),
        async (ops) => {
          const bus = new MemoryBus({ delivery: 'manual' });
          const ts = [1, 2, 3, 4].map((n) => bus.connect(n));
          const recs = ts.map(record);
          for (const t of ts) await t.join('g');
          bus.drain();
          const sent = [0, 0, 0, 0];
          for (const [who, steps] of ops) {
            await ts[who]!.mcast(Buffer.from(String(sent[who]!++)));
            for (let i = 0; i < steps; i++) bus.step();
          }
          bus.drain();
          const seqs = recs.map((r) => r.log.filter((l) => !l.startsWith('conf')));
          for (const s of seqs) expect(s).toEqual(seqs[0]);
          for (let n = 0; n < 4; n++) {
            const mine = seqs[0]!.filter((l) => l.startsWith(`${n + 1}/`)).map((l) => Number(l.split('/')[1]));
            expect(mine).toEqual(Array.from({ length: sent[n]! }, (_, i) => i));
          }
        },
      ),
      { numRuns: 100 },
    );
  });

  it('a killed process: messages it sent before dying are still delivered, then PROCDOWN', async () => {
    const bus = new MemoryBus({ delivery: 'manual' });
    const a = bus.connect(1);
    const b = bus.connect(2);
    const rb = record(b);
    let lost = 0;
    a.onLost(() => lost++);
    await a.join('g');
    await b.join('g');
    bus.drain();
    await a.mcast(Buffer.from('last words'));
    bus.killProcess(a);
    expect(lost).toBe(1);
    await expect(a.mcast(Buffer.from('x'))).rejects.toThrow(/dead/);
    bus.drain();
    expect(rb.log.slice(-2)).toEqual(['1/last words', 'conf:2']);
    expect(rb.changes.at(-1)!.left).toEqual([{ nodeId: 1, pid: a.localPid, reason: ChangeReason.procDown }]);
  });

  it('killNode takes every member on the node down with NODEDOWN; close() is LEAVE', async () => {
    const bus = new MemoryBus({ delivery: 'manual' });
    const [a1, a2, b, c] = [bus.connect(1), bus.connect(1), bus.connect(2), bus.connect(3)];
    const rc = record(c);
    for (const t of [a1, a2, b, c]) await t.join('g');
    bus.drain();
    bus.killNode(1);
    await b.close();
    bus.drain();
    const [down, leave] = rc.changes.slice(-2);
    expect(down!.left.map((l) => [l.nodeId, l.reason])).toEqual([
      [1, ChangeReason.nodeDown],
      [1, ChangeReason.nodeDown],
    ]);
    expect(leave!.left).toEqual([{ nodeId: 2, pid: b.localPid, reason: ChangeReason.leave }]);
    expect(leave!.members).toEqual([{ nodeId: 3, pid: c.localPid }]);
  });

  it('partition: each side sees the others leave (NODEDOWN) and orders alone; heal brings NODEUP', async () => {
    const bus = new MemoryBus({ delivery: 'manual' });
    const ts = [1, 2, 3].map((n) => bus.connect(n));
    const recs = ts.map(record);
    for (const t of ts) await t.join('g');
    bus.drain();
    bus.partition([[1, 2], [3]]);
    bus.drain();
    expect(bus.sideNodeCount(1)).toBe(2);
    expect(bus.sideNodeCount(3)).toBe(1);
    expect(recs[0]!.changes.at(-1)!.left).toEqual([{ nodeId: 3, pid: ts[2]!.localPid, reason: ChangeReason.nodeDown }]);
    expect(recs[2]!.changes.at(-1)!.left.map((l) => [l.nodeId, l.reason])).toEqual([
      [1, ChangeReason.nodeDown],
      [2, ChangeReason.nodeDown],
    ]);
    await ts[0]!.mcast(Buffer.from('majority'));
    await ts[2]!.mcast(Buffer.from('minority'));
    bus.drain();
    expect(recs[1]!.log.at(-1)).toBe('1/majority');
    expect(recs[2]!.log.at(-1)).toBe('3/minority');
    expect(recs[0]!.log).not.toContain('3/minority');
    bus.heal();
    bus.drain();
    const up1 = recs[0]!.changes.at(-1)!;
    const up3 = recs[2]!.changes.at(-1)!;
    expect(up1.joined.map((j) => [j.nodeId, j.reason])).toEqual([[3, ChangeReason.nodeUp]]);
    expect(up3.joined.map((j) => [j.nodeId, j.reason])).toEqual([
      [1, ChangeReason.nodeUp],
      [2, ChangeReason.nodeUp],
    ]);
    expect(up1.members).toEqual(up3.members);
  });

  it('auto delivery runs asynchronously and bounds message size', async () => {
    const bus = new MemoryBus({ messageBytesMax: 8 });
    const a = bus.connect(1);
    const ra = record(a);
    await a.join('g');
    await a.mcast(Buffer.from('hi'));
    expect(ra.log).toEqual([]); // nothing synchronous
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    expect(ra.log).toEqual(['conf:1', '1/hi']);
    await expect(a.mcast(Buffer.alloc(9))).rejects.toThrow(RangeError);
  });
});
