// leg-set-state.test.ts — the replicated state's leg-set rules (cluster-log-state.ts), pure: the first
// announcement is trusted; a device new to the log sets every region out of sync once and releases the
// claim in progress; recovery is handed out only while every initialized member announced the same legs;
// a sync result counts only from the claim holder; a device no present member runs is forgotten (named
// again, it resyncs again); checkpoints carry the leg sets. Stale legs: the first LEGS of a fresh state
// takes them from the log device's records (a leg recorded stale or never recorded puts every region out of
// sync once and catches up; nothing recorded up to date: leg 0 is the source); a catching-up leg is up to
// date once every region is in sync; LEG_FAILED makes a leg stale for good; checkpoints carry all of it.
import { describe, expect, it } from 'vitest';
import { ClusterLogCodecError } from '../../src/cluster/cluster-log-codec.js';
import { memberKey, ReplicatedLogState } from '../../src/cluster/cluster-log-state.js';
import { ChangeReason, type Member } from '../../src/cluster/transport.js';

const A: Member = { nodeId: 1, pid: 10 };
const B: Member = { nodeId: 2, pid: 20 };

function twoMembers(regions = 8): ReplicatedLogState {
  const s = ReplicatedLogState.fresh(regions, true);
  s.applyConfigChange({ members: [A, B], left: [], joined: [{ ...A, reason: ChangeReason.join }, { ...B, reason: ChangeReason.join }] });
  s.initialized.add(memberKey(A));
  s.initialized.add(memberKey(B));
  s.waiting.clear();
  return s;
}

describe('replicated leg sets', () => {
  it('new device: every region out of sync once, claim released; recovery waits for agreement', () => {
    const s = twoMembers();
    expect(s.applyLegs(memberKey(A), ['a', 'b'])).toEqual({ invalidated: false, released: null }); // first: trusted
    expect(s.legsAgreed()).toBe(false); // B has not told yet
    expect(s.applyGetResyncWork(1)).toBeNull();
    expect(s.applyLegs(memberKey(B), ['b', 'a'])).toEqual({ invalidated: false, released: null }); // same set, other order
    expect(s.legsAgreed()).toBe(true);
    s.applySetRegionSync(1, 3, false);
    expect(s.applyGetResyncWork(2)).toBe(3);
    // A reloads onto a spare: everything out of sync, B's claim on 3 released.
    expect(s.applyLegs(memberKey(A), ['a', 's'])).toEqual({ invalidated: true, released: { region: 3, nodeId: 2 } });
    expect(s.sync.population()).toBe(0);
    // B's copy of 3 (made on [a b]) finishes after that: ignored.
    expect(s.applySetRegionSync(2, 3, true)).toBeNull();
    expect(s.sync.get(3)).toBe(false);
    expect(s.applyGetResyncWork(2)).toBeNull(); // B still on [a b]
    expect(s.applyLegs(memberKey(B), ['a', 's'])).toEqual({ invalidated: false, released: null }); // s already known: once
    expect([...s.knownLegs].sort()).toEqual(['a', 's']); // b no longer used by anyone
    const r = s.applyGetResyncWork(2)!;
    expect(s.applySetRegionSync(1, r, true)).toBeNull(); // not A's claim
    expect(s.sync.get(r)).toBe(false);
    expect(s.applySetRegionSync(2, r, true)).toEqual({ region: r, nodeId: 2 });
    expect(s.sync.get(r)).toBe(true);
    // b comes back later: new again -> resync again.
    expect(s.applyLegs(memberKey(A), ['a', 's', 'b']).invalidated).toBe(true);
  });

  it('a departed member: its legs leave the agreement and the known set; checkpoints carry the leg sets', () => {
    const s = twoMembers();
    s.applyLegs(memberKey(A), ['a', 'b']);
    s.applyLegs(memberKey(B), ['a', 'b', 'c']); // B first ran on c: invalidates
    expect(s.sync.population()).toBe(0);
    expect(s.legsAgreed()).toBe(false);
    const copy = ReplicatedLogState.decode(s.encode(), 8);
    expect(copy.digest()).toBe(s.digest());
    expect([...copy.legsByMember]).toEqual([...s.legsByMember].sort(([x], [y]) => (x < y ? -1 : 1)));
    expect([...copy.knownLegs].sort()).toEqual(['a', 'b', 'c']);
    s.applyConfigChange({ members: [A], left: [{ ...B, reason: ChangeReason.nodeDown }], joined: [] });
    expect(s.legsAgreed()).toBe(true);
    expect([...s.knownLegs].sort()).toEqual(['a', 'b']);
    expect(s.applyGetResyncWork(1)).toBe(0);
    // A corrupt leg section is refused.
    const b = s.encode();
    const bad = Buffer.concat([b.subarray(0, b.length - 2), Buffer.from('}}')]);
    expect(() => ReplicatedLogState.decode(bad, 8)).toThrow(ClusterLogCodecError);
  });

  it('stale legs: seeded from records, caught up at full sync, failed for good; checkpoints carry them', () => {
    const s = twoMembers();
    s.legSeed = { mode: 'records', legs: [['a', 'failed'], ['b', 'current']] };
    expect(ReplicatedLogState.decode(s.encode(), 8).legSeed).toEqual(s.legSeed); // a joiner before the first LEGS
    expect(s.applyLegs(memberKey(A), ['a', 'b', 'c']).invalidated).toBe(true); // a stale, c never recorded
    expect([...s.staleLegs].sort()).toEqual([['a', 'catching'], ['c', 'catching']]);
    expect(s.recordedState('b')).toBe('current');
    s.applyLegs(memberKey(B), ['a', 'b', 'c']);
    for (let r = 0; r < 7; r++) s.applySetRegionSync(1, s.applyGetResyncWork(1)!, true);
    expect(s.staleLegs.size).toBe(2); // one region left
    const copy = ReplicatedLogState.decode(s.encode(), 8);
    expect(copy.digest()).toBe(s.digest());
    expect([...copy.staleLegs]).toEqual([...s.staleLegs].sort());
    s.applySetRegionSync(2, s.applyGetResyncWork(2)!, true);
    expect(s.staleLegs.size).toBe(0);
    // A failure is for good: full sync does not make the leg current again; a new LEGS naming it neither.
    expect(s.applyLegFailed(['b'])).toEqual(['b']);
    expect(s.applyLegFailed(['b'])).toEqual([]);
    s.applySetRegionSync(1, 0, false);
    s.applySetRegionSync(1, s.applyGetResyncWork(1)!, true);
    expect(s.applyLegs(memberKey(A), ['a', 'b', 'c']).invalidated).toBe(false);
    expect(s.recordedState('b')).toBe('failed');
    // Nothing recorded up to date: leg 0 is the source; without records, leg 0 is and the others catch up.
    const t = twoMembers();
    t.legSeed = { mode: 'records', legs: [['a', 'catching'], ['b', 'failed']] };
    expect(t.applyLegs(memberKey(A), ['a', 'b']).invalidated).toBe(true);
    expect([...t.staleLegs]).toEqual([['b', 'catching']]);
    const u = ReplicatedLogState.fresh(8, false);
    u.applyConfigChange({ members: [A], left: [], joined: [{ ...A, reason: ChangeReason.join }] });
    u.initialized.add(memberKey(A));
    expect(u.applyLegs(memberKey(A), ['a', 'b']).invalidated).toBe(false);
    expect([...u.staleLegs]).toEqual([['b', 'catching']]);
    // The source failing while regions are out of sync: no leg up to date, the lost source recorded (and
    // checkpointed) until no member runs on it any more.
    const w = twoMembers();
    w.applyLegs(memberKey(A), ['a', 'b']);
    w.applyLegs(memberKey(B), ['a', 'b']);
    w.applySetRegionSync(1, 4, false);
    expect(w.sourceLeg()).toBe('a');
    w.applyLegFailed(['a']);
    expect([w.lostSource, w.sourceLeg(), w.recordedState('b')]).toEqual(['a', undefined, 'catching']);
    expect(ReplicatedLogState.decode(w.encode(), 8).lostSource).toBe('a');
    w.applyLegs(memberKey(A), ['b']);
    w.applyLegs(memberKey(B), ['b']);
    expect(w.lostSource).toBeNull();
    // Recorded catching up, but every region in sync: up to date at the first announcement.
    const v = twoMembers();
    v.legSeed = { mode: 'records', legs: [['a', 'current'], ['b', 'catching']] };
    v.initialized.delete(memberKey(B)); // B joins later
    expect(v.applyLegs(memberKey(A), ['a', 'b']).invalidated).toBe(false);
    expect(v.staleLegs.size).toBe(0);
  });
});
