// cluster-log-codec.test.ts — wire messages and state snapshots round-trip; malformed input is rejected
// with ClusterLogCodecError (never a crash, never a silently wrong message).
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  ClusterLogCodecError,
  ClusterLogRequest as Req,
  decodeMessage,
  encodeMessage,
  type ClusterLogMessage,
} from '../../src/cluster/cluster-log-codec.js';
import { ReplicatedLogState } from '../../src/cluster/cluster-log-state.js';

const REGIONS = 1000;
const region = fc.integer({ min: 0, max: REGIONS - 1 });
const u32 = fc.integer({ min: 0, max: 0xffffffff });

const messageArb: fc.Arbitrary<ClusterLogMessage> = fc.oneof(
  fc.record({ type: fc.constant(Req.FLUSH), seq: u32, marks: fc.array(region, { maxLength: 50 }), clears: fc.array(region, { maxLength: 50 }) }),
  fc.record({ type: fc.constant(Req.GET_RESYNC_WORK), seq: u32 }),
  fc.record({ type: fc.constant(Req.MERGE_WAITING), seq: u32 }),
  fc.record({ type: fc.constant(Req.SET_REGION_SYNC), seq: u32, region, inSync: fc.boolean() }),
  fc.record({ type: fc.constant(Req.IS_REMOTE_RECOVERING), seq: u32, region }),
  fc.record({ type: fc.constant(Req.FLUSH_ACK), seq: u32, nodeId: u32, pid: u32, flushSeq: u32 }),
  fc.record({ type: fc.constant(Req.LEG_FAILED), seq: u32, devices: fc.array(fc.string({ minLength: 1, maxLength: 40 }), { minLength: 1, maxLength: 4 }) }),
  fc.record({ type: fc.constant(Req.LEG_FAILED), seq: u32, devices: fc.array(fc.string({ minLength: 1, maxLength: 40 }), { minLength: 1, maxLength: 4 }), again: fc.constant(true as const) }),
  fc
    .record({
      type: fc.constant(Req.CHECKPOINT),
      seq: u32,
      id: u32,
      parts: fc.integer({ min: 1, max: 20 }),
      part: fc.nat(),
      targets: fc.array(fc.record({ nodeId: u32, pid: u32, epoch: u32 }), { maxLength: 5 }),
      chunk: fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a)),
    })
    .map((m) => ({ ...m, part: m.part % m.parts })),
);

describe('cluster log codec', () => {
  it('round-trips every message', () => {
    fc.assert(
      fc.property(messageArb, (m) => {
        expect(decodeMessage(encodeMessage(m), REGIONS)).toEqual(m);
      }),
    );
  });

  it('rejects truncations, extensions and out-of-range regions with ClusterLogCodecError', () => {
    fc.assert(
      fc.property(messageArb, fc.nat(), (m, cut) => {
        const b = encodeMessage(m);
        const short = b.subarray(0, cut % b.length);
        expect(() => decodeMessage(short, REGIONS)).toThrow(ClusterLogCodecError);
        expect(() => decodeMessage(Buffer.concat([b, Buffer.from([0])]), REGIONS)).toThrow(ClusterLogCodecError);
      }),
    );
    const m = encodeMessage({ type: Req.SET_REGION_SYNC, seq: 1, region: 5, inSync: true });
    expect(() => decodeMessage(m, 5)).toThrow(/out of range/);
    const bad = Buffer.from(m);
    bad[1] = 99;
    expect(() => decodeMessage(bad, REGIONS)).toThrow(/unknown request type 99/);
    bad[0] = 2;
    expect(() => decodeMessage(bad, REGIONS)).toThrow(/version/);
  });

  it('never throws anything but ClusterLogCodecError on random bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 100 }), (a) => {
        try {
          decodeMessage(Buffer.from(a), REGIONS);
        } catch (e) {
          expect(e).toBeInstanceOf(ClusterLogCodecError);
        }
      }),
    );
  });

  it('state snapshots round-trip and a truncated one is rejected', () => {
    fc.assert(
      fc.property(
        fc.array(fc.boolean(), { minLength: 70, maxLength: 70 }),
        fc.array(fc.tuple(fc.integer({ min: 1, max: 5 }), fc.array(fc.integer({ min: 0, max: 69 }), { maxLength: 10 }))),
        fc.option(fc.record({ region: fc.integer({ min: 0, max: 69 }), nodeId: fc.integer({ min: 1, max: 5 }) }), { nil: null }),
        fc.uniqueArray(fc.integer({ min: 0, max: 69 }), { maxLength: 5 }),
        (bits, marks, recovering, prio) => {
          const s = new ReplicatedLogState(70);
          bits.forEach((v, i) => s.sync.set(i, v));
          for (const [n, rs] of marks) s.applyFlush(n, rs, []);
          s.recovering = recovering;
          for (const r of prio) {
            s.sync.set(r, false);
            s.applyPriority(r);
          }
          s.members = [
            { nodeId: 1, pid: 10 },
            { nodeId: 2, pid: 20 },
          ];
          s.initialized.add('1:10');
          s.waiting.set('2:20', 3);
          const b = s.encode();
          const back = ReplicatedLogState.decode(b, 70);
          expect(back.digest()).toBe(s.digest());
          expect(back.priority).toEqual(s.priority);
          expect(() => ReplicatedLogState.decode(b.subarray(0, b.length - 1), 70)).toThrow(ClusterLogCodecError);
          expect(() => ReplicatedLogState.decode(b, 71)).toThrow(ClusterLogCodecError);
        },
      ),
    );
  });
});
