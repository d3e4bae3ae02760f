// cluster-log.test.ts — the clustered log as a replicated state machine on the in-memory total-order bus,
// checked with fast-check against a simple sequential model (marks per (region,node), sync bits, one
// cluster-wide recovery never of a region another node marks, priority for waiting writes, purge + release on node death, checkpoints for
// (re)joining nodes), plus a concurrent property: every live member ends with the identical state.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ClusterLog } from '../../src/cluster/cluster-log.js';
import { MemoryBus } from '../../src/cluster/memory-bus.js';
import type { LogActivation, SyncMode } from '../../src/mirror/log/dirty-log.js';

const REGION_BYTES = 4096;
const activation: LogActivation = { legDevices: ['a', 'b'], flushDataLegs: async () => undefined };

const turn = () => new Promise<void>((r) => setImmediate(r));

/** Drains the bus until p settles (manual delivery). */
async function settle<T>(bus: MemoryBus, p: Promise<T>): Promise<T> {
  let done = false;
  let failed = false;
  let value: T | undefined;
  let error: unknown;
  p.then(
    (v) => {
      done = true;
      value = v;
    },
    (e) => {
      done = true;
      failed = true;
      error = e;
    },
  );
  for (let i = 0; i < 10_000 && !done; i++) {
    bus.drain();
    await turn();
  }
  if (!done) throw new Error('did not settle');
  if (failed) throw error;
  return value as T;
}

async function quiesce(bus: MemoryBus): Promise<void> {
  for (let i = 0; i < 5; i++) {
    bus.drain();
    await turn();
  }
}

interface Node {
  nodeId: number;
  log: ClusterLog;
  handed: number | null;
}

function newLog(bus: MemoryBus, nodeId: number, regions: number, sync: SyncMode): ClusterLog {
  return new ClusterLog({
    transport: bus.connect(nodeId),
    uuid: 'test-uuid',
    regionSizeBytes: REGION_BYTES,
    lengthBytes: regions * REGION_BYTES,
    sync,
  });
}

type Op =
  | { kind: 'mark' | 'clear' | 'write-wait' | 'nosync'; node: number; region: number }
  | { kind: 'work' | 'kill' | 'restart'; node: number }
  | { kind: 'finish'; node: number; ok: boolean };

const opArb = (nodes: number, regions: number): fc.Arbitrary<Op> => {
  const node = fc.integer({ min: 1, max: nodes });
  const region = fc.integer({ min: 0, max: regions - 1 });
  return fc.oneof(
    { weight: 4, arbitrary: fc.record({ kind: fc.constantFrom('mark' as const, 'clear' as const), node, region }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('write-wait' as const), node, region }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('nosync' as const), node, region }) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('work' as const), node }) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('finish' as const), node, ok: fc.boolean() }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constantFrom('kill' as const, 'restart' as const), node }) },
  );
};

/** Runs one op against the live logs (no model): restart of a dead node, or an action on an initialized one. */
function applyOp(op: Op, bus: MemoryBus, logs: Map<number, ClusterLog>, handed: Map<number, number>, pending: Promise<unknown>[], mk: (n: number) => ClusterLog): void {
  const log = logs.get(op.node);
  if (op.kind === 'restart' && !log) {
    const l = mk(op.node);
    logs.set(op.node, l);
    pending.push(l.resume(activation).catch(() => undefined));
  } else if (log && log.initialized) {
    if (op.kind === 'mark') log.markRegion(op.region);
    if (op.kind === 'clear') log.clearRegion(op.region);
    if (op.kind === 'mark' || op.kind === 'clear') pending.push(log.flush().catch(() => undefined));
    if (op.kind === 'write-wait') log.isRemoteRecovering(op.region);
    if (op.kind === 'nosync') log.setRegionSync(op.region, false);
    if (op.kind === 'work') {
      const r = log.getResyncWork();
      if (r !== null) handed.set(op.node, r);
    }
    if (op.kind === 'finish' && handed.has(op.node)) {
      log.setRegionSync(handed.get(op.node)!, op.ok);
      handed.delete(op.node);
    }
    if (op.kind === 'kill' && logs.size > 1) {
      bus.killNode(op.node);
      logs.delete(op.node);
      handed.delete(op.node);
    }
  }
}

/**
 * Every live log holds the identical state, which names only live nodes (marks, recoverer, members) and
 * has nobody waiting for a checkpoint.
 */
function expectOneState(live: readonly ClusterLog[], logs: Map<number, ClusterLog>) {
  expect(new Set(live.map((l) => l.digest())).size).toBe(1);
  const s = live[0]!.replicated!;
  const liveNodes = new Set(logs.keys());
  for (const n of s.marksByNode.keys()) expect(liveNodes.has(n)).toBe(true);
  if (s.recovering) expect(liveNodes.has(s.recovering.nodeId)).toBe(true);
  expect(s.members.map((m) => m.nodeId).sort()).toEqual([...liveNodes].sort());
  expect(s.waiting.size).toBe(0);
  return { s, liveNodes };
}

class Model {
  sync: boolean[];
  marks = new Map<number, Set<number>>();
  recovering: { region: number; nodeId: number } | null = null;
  priority: number[] = [];
  live = new Set<number>();
  constructor(regions: number, nosync: boolean) {
    this.sync = Array.from({ length: regions }, () => nosync);
  }
  marksOf(n: number): Set<number> {
    let s = this.marks.get(n);
    if (!s) this.marks.set(n, (s = new Set()));
    return s;
  }
  kill(n: number): void {
    this.live.delete(n);
    for (const r of this.marksOf(n)) this.sync[r] = false;
    this.marks.delete(n);
    if (this.recovering?.nodeId === n) this.recovering = null;
  }
}

async function runScenario(ops: Op[], nodes: number, regions: number, sync: SyncMode, messageBytesMax: number): Promise<void> {
  const bus = new MemoryBus({ delivery: 'manual', messageBytesMax });
  const model = new Model(regions, sync === 'nosync');
  const byNode = new Map<number, Node>();
  for (let n = 1; n <= nodes; n++) {
    const log = newLog(bus, n, regions, sync);
    byNode.set(n, { nodeId: n, log, handed: null });
    model.live.add(n);
  }
  await settle(bus, Promise.all([...byNode.values()].map((x) => x.log.resume(activation))));

  const check = (op: Op | null) => {
    const live = [...byNode.values()];
    const digests = new Set(live.map((x) => x.log.digest()));
    expect(digests.size, `states differ after ${JSON.stringify(op)}`).toBe(1);
    for (const x of live) {
      const s = x.log.replicated!;
      for (let r = 0; r < regions; r++) expect(x.log.inSync(r), `inSync(${r}) on ${x.nodeId} after ${JSON.stringify(op)}`).toBe(model.sync[r]);
      expect(s.recovering).toEqual(model.recovering);
      const marks = new Map([...model.marks].filter(([, v]) => v.size > 0).map(([k, v]) => [k, [...v].sort()]));
      expect(new Map([...s.marksByNode].map(([k, v]) => [k, [...v].sort()]))).toEqual(marks);
      expect(x.log.syncCount()).toBe(model.sync.filter(Boolean).length);
      expect(s.members.map((m) => m.nodeId).sort()).toEqual([...model.live].sort());
      expect(s.server()?.nodeId).toBe(Math.min(...model.live));
    }
  };
  check(null);

  for (const op of ops) {
    const x = byNode.get(op.node);
    switch (op.kind) {
      case 'mark':
      case 'clear': {
        if (!x) continue;
        const wasMarked = model.marksOf(op.node).has(op.region);
        if (op.kind === 'mark') {
          x.log.markRegion(op.region);
          model.marksOf(op.node).add(op.region);
        } else {
          x.log.clearRegion(op.region);
          model.marksOf(op.node).delete(op.region);
        }
        expect(x.log.isClean(op.region)).toBe(op.kind === 'clear');
        expect(x.log.hasUnflushedChanges()).toBe(op.kind === 'mark' ? !wasMarked : wasMarked);
        await settle(bus, x.log.flush());
        expect(x.log.hasUnflushedChanges()).toBe(false);
        break;
      }
      case 'write-wait': {
        if (!x) continue;
        const ours = model.recovering?.region === op.region && model.recovering.nodeId === op.node;
        expect(x.log.isRemoteRecovering(op.region)).toBe(!model.sync[op.region] && !ours);
        if (!model.sync[op.region] && !ours && model.recovering?.region !== op.region && !model.priority.includes(op.region)) {
          model.priority.push(op.region);
        }
        break;
      }
      case 'nosync': {
        if (!x) continue;
        x.log.setRegionSync(op.region, false);
        expect(x.log.inSync(op.region)).toBe(false); // local overlay answers at once
        model.sync[op.region] = false;
        if (model.recovering?.region === op.region && model.recovering.nodeId === op.node) model.recovering = null;
        if (x.handed === op.region) x.handed = null;
        break;
      }
      case 'work': {
        if (!x) continue;
        const first = x.log.getResyncWork();
        if (first !== null) {
          // Handed out an assignment made earlier and not yet taken.
          expect(model.recovering).toEqual({ region: first, nodeId: op.node });
          expect(x.handed).toBeNull();
          x.handed = first;
          break;
        }
        await quiesce(bus);
        const got = x.log.getResyncWork();
        if (model.recovering === null) {
          // A region another node holds a mark on is never handed out (that node may still write it).
          const markedByOther = (r: number) => [...model.marks].some(([n, set]) => n !== op.node && set.has(r));
          const candidates = model.sync.map((v, i) => (v || markedByOther(i) ? -1 : i)).filter((i) => i >= 0);
          if (candidates.length === 0) {
            expect(got).toBeNull();
          } else {
            // Priority regions (writes waiting) first, in request order; marked ones keep their place.
            let want: number | undefined;
            for (let i = 0; i < model.priority.length; ) {
              const r = model.priority[i]!;
              if (model.sync[r]) model.priority.splice(i, 1);
              else if (markedByOther(r)) i++;
              else {
                want = model.priority.splice(i, 1)[0];
                break;
              }
            }
            expect(got).not.toBeNull();
            if (want !== undefined) expect(got).toBe(want);
            expect(model.sync[got!]).toBe(false);
            expect(markedByOther(got!), `region ${got} handed to node ${op.node} while another node marks it`).toBe(false);
            model.recovering = { region: got!, nodeId: op.node };
            x.handed = got;
          }
        } else {
          expect(got).toBeNull();
        }
        break;
      }
      case 'finish': {
        if (!x || x.handed === null) continue;
        const r = x.handed;
        x.log.setRegionSync(r, op.ok);
        x.handed = null;
        model.sync[r] = op.ok;
        if (op.ok) model.priority = model.priority.filter((p) => p !== r);
        model.recovering = null;
        break;
      }
      case 'kill': {
        if (!x || byNode.size === 1) continue;
        bus.killNode(op.node);
        byNode.delete(op.node);
        model.kill(op.node);
        break;
      }
      case 'restart': {
        if (x) continue;
        const log = newLog(bus, op.node, regions, sync);
        byNode.set(op.node, { nodeId: op.node, log, handed: null });
        model.live.add(op.node);
        await settle(bus, log.resume(activation));
        break;
      }
    }
    await quiesce(bus);
    check(op);
  }
  for (const x of byNode.values()) await x.log.close();
}

describe('ClusterLog on the memory bus', () => {
  it('matches a sequential model (3 nodes, kills, restarts with checkpoints)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb(3, 12), { minLength: 1, maxLength: 40 }), fc.constantFrom<SyncMode>('default', 'nosync'), async (ops, sync) => {
        await runScenario(ops, 3, 12, sync, 1024 * 1024);
      }),
      { numRuns: 60 },
    );
  });

  it('matches the model with tiny messages (checkpoints and flushes split into many parts)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb(3, 40), { minLength: 1, maxLength: 30 }), async (ops) => {
        await runScenario(ops, 3, 40, 'default', 64);
      }),
      { numRuns: 25 },
    );
  });

  it('concurrent requests from every node: all live members end with the identical state', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb(4, 16), { minLength: 1, maxLength: 60 }), fc.integer({ min: 0, max: 5 }), async (ops, stepsBetween) => {
        const bus = new MemoryBus({ delivery: 'manual' });
        const logs = new Map<number, ClusterLog>();
        for (let n = 1; n <= 4; n++) logs.set(n, newLog(bus, n, 16, 'default'));
        await settle(bus, Promise.all([...logs.values()].map((l) => l.resume(activation))));
        const pending: Promise<unknown>[] = [];
        const handed = new Map<number, number>();
        for (const op of ops) {
          applyOp(op, bus, logs, handed, pending, (n) => newLog(bus, n, 16, 'default'));
          for (let i = 0; i < stepsBetween; i++) bus.step();
        }
        await settle(bus, Promise.allSettled(pending));
        await quiesce(bus);
        const live = [...logs.values()].filter((l) => l.initialized);
        expect(live.length).toBe(logs.size);
        expectOneState(live, logs);
      }),
      { numRuns: 60 },
    );
  });

  it('partitions and heals (with a quorum gate): after the last heal every member holds the identical state', async () => {
    const NODES = 4;
    const REGIONS = 16;
    type PartOp = Op | { kind: 'partition'; sideOf: number[] } | { kind: 'heal' };
    const partOp: fc.Arbitrary<PartOp> = fc.oneof(
      { weight: 6, arbitrary: opArb(NODES, REGIONS) },
      {
        weight: 1,
        arbitrary: fc.record({
          kind: fc.constant('partition' as const),
          sideOf: fc.array(fc.integer({ min: 0, max: 2 }), { minLength: NODES, maxLength: NODES }),
        }),
      },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('heal' as const) }) },
    );
    await fc.assert(
      fc.asyncProperty(fc.array(partOp, { minLength: 1, maxLength: 50 }), fc.integer({ min: 0, max: 4 }), async (ops, stepsBetween) => {
        const bus = new MemoryBus({ delivery: 'manual' });
        const logs = new Map<number, ClusterLog>();
        const mk = (n: number) =>
          new ClusterLog({
            transport: bus.connect(n),
            uuid: 'p',
            regionSizeBytes: REGION_BYTES,
            lengthBytes: REGIONS * REGION_BYTES,
            sync: 'nosync',
            isQuorate: () => bus.sideNodeCount(n) * 2 > NODES,
          });
        for (let n = 1; n <= NODES; n++) logs.set(n, mk(n));
        await settle(bus, Promise.all([...logs.values()].map((l) => l.resume(activation))));
        const pending: Promise<unknown>[] = [];
        const handed = new Map<number, number>();
        for (const op of ops) {
          if (op.kind === 'partition') {
            // Up to three sides at once: heals may merge three sides in one change.
            bus.partition([0, 1, 2].map((side) => op.sideOf.map((v, i) => (v === side ? i + 1 : 0)).filter((n) => n > 0)));
          } else if (op.kind === 'heal') {
            bus.heal();
          } else {
            applyOp(op, bus, logs, handed, pending, mk);
          }
          for (let i = 0; i < stepsBetween; i++) bus.step();
        }
        bus.heal();
        await quiesce(bus);
        await settle(bus, Promise.allSettled(pending));
        // Local marks re-sent after a lost merge travel with the next flush.
        for (const l of logs.values()) if (l.initialized) await settle(bus, l.flush().catch(() => undefined));
        await quiesce(bus);
        const live = [...logs.values()];
        for (const l of live) expect(l.initialized).toBe(true);
        const { s, liveNodes } = expectOneState(live, logs);
        expect(s.initialized.size).toBe(liveNodes.size);
      }),
      { numRuns: 80 },
    );
  });

  it('heal of three sides: a larger side keeps its state; with no larger side all start over out of sync', async () => {
    for (const [sides, winner] of [
      [[[1], [2], [3, 4, 5]], 3],
      [[[1, 2], [3, 4], [5]], null],
    ] as const) {
      const bus = new MemoryBus({ delivery: 'manual' });
      const logs = [1, 2, 3, 4, 5].map((n) => newLog(bus, n, 8, 'nosync'));
      await settle(bus, Promise.all(logs.map((l) => l.resume(activation))));
      bus.partition(sides.map((x) => [...x]));
      await quiesce(bus);
      // Each side diverges: its first node marks a region of its own.
      for (const side of sides) {
        const l = logs[side[0]! - 1]!;
        l.markRegion(side[0]!);
        await settle(bus, l.flush());
      }
      bus.heal();
      await quiesce(bus);
      for (const l of logs) expect(l.initialized).toBe(true);
      expect(new Set(logs.map((l) => l.digest())).size).toBe(1);
      const s = logs[0]!.replicated!;
      if (winner !== null) {
        // Side {3,4,5}'s state: node 3's mark, regions of the nodes it lost (1, 2 held none) untouched.
        expect([...(s.marksByNode.get(3) ?? [])]).toEqual([3]);
        expect(logs[0]!.syncCount()).toBe(8);
      } else {
        expect(logs[0]!.syncCount()).toBe(0); // nobody kept a state: everything is resynced
      }
      expect(s.server()?.nodeId).toBe(1);
      for (const l of logs) await l.close();
    }
  });

  it('a dead node: its marked regions go out of sync and its recovery claim is released', async () => {
    const bus = new MemoryBus({ delivery: 'manual' });
    const a = newLog(bus, 1, 8, 'nosync');
    const b = newLog(bus, 2, 8, 'nosync');
    await settle(bus, Promise.all([a.resume(activation), b.resume(activation)]));
    expect(a.syncCount()).toBe(8);
    b.markRegion(3);
    b.markRegion(5);
    await settle(bus, b.flush());
    expect(a.isClean(3)).toBe(true); // a holds no mark itself
    expect(a.isCleanClusterWide(3)).toBe(false);
    b.setRegionSync(6, false); // a write error on b
    await quiesce(bus);
    expect(b.getResyncWork()).toBeNull();
    await quiesce(bus);
    expect(b.getResyncWork()).toBe(6);
    expect(a.isRemoteRecovering(6)).toBe(true);
    let work = 0;
    const changed: number[] = [];
    a.onWorkAvailable(() => work++);
    a.onRegionsChanged((r) => {
      if (r !== 'all') changed.push(...r);
    });
    bus.killNode(2);
    await quiesce(bus);
    expect([3, 5, 6].map((r) => a.inSync(r))).toEqual([false, false, false]);
    expect(a.replicated!.recovering).toBeNull();
    expect(changed.sort()).toEqual([3, 5, 6]);
    expect(work).toBeGreaterThan(0);
    expect(a.server?.nodeId).toBe(1);
    await a.close();
  });

  it('a region another node marks is not handed out for recovery; the FLUSH clearing that mark announces it', async () => {
    const bus = new MemoryBus({ delivery: 'manual' });
    const a = newLog(bus, 1, 8, 'nosync');
    const b = newLog(bus, 2, 8, 'nosync');
    await settle(bus, Promise.all([a.resume(activation), b.resume(activation)]));
    a.markRegion(2);
    a.markRegion(4);
    await settle(bus, a.flush());
    for (const r of [2, 4]) b.setRegionSync(r, false); // out of sync while a still holds its marks
    await quiesce(bus);
    a.isRemoteRecovering(4); // a write on a waits for region 4: first in line
    await quiesce(bus);
    expect(b.getResyncWork()).toBeNull();
    await quiesce(bus);
    expect(b.getResyncWork()).toBeNull(); // both marked by a: nothing to hand b
    expect(b.replicated!.priority).toEqual([4]); // kept in line, not dropped
    // a itself may recover a region only it marks (its own writes drain under its local hold).
    let workOnA = 0;
    let workOnB = 0;
    a.onWorkAvailable(() => workOnA++);
    b.onWorkAvailable(() => workOnB++);
    a.clearRegion(4); // a's writes to 4 are done: the clear frees it
    await settle(bus, a.flush());
    expect(workOnA).toBeGreaterThan(0);
    expect(workOnB).toBeGreaterThan(0);
    expect(b.getResyncWork()).toBeNull();
    await quiesce(bus);
    expect(b.getResyncWork()).toBe(4);
    b.setRegionSync(4, true);
    await quiesce(bus);
    expect(a.getResyncWork()).toBeNull();
    await quiesce(bus);
    expect(a.getResyncWork()).toBe(2); // marked by a only
    await a.close();
    await b.close();
  });

  it('a node that leaves while marking a region already out of sync frees it: the others are told work is there', async () => {
    const bus = new MemoryBus({ delivery: 'manual' });
    const a = newLog(bus, 1, 8, 'nosync');
    const b = newLog(bus, 2, 8, 'nosync');
    const c = newLog(bus, 3, 8, 'nosync');
    await settle(bus, Promise.all([a, b, c].map((l) => l.resume(activation))));
    c.markRegion(6);
    await settle(bus, c.flush());
    a.setRegionSync(6, false);
    await quiesce(bus);
    expect(a.getResyncWork()).toBeNull();
    await quiesce(bus);
    expect(a.getResyncWork()).toBeNull(); // c marks it
    let work = 0;
    a.onWorkAvailable(() => work++);
    bus.killNode(3);
    await quiesce(bus);
    expect(work).toBeGreaterThan(0);
    expect(a.getResyncWork()).toBeNull();
    await quiesce(bus);
    expect(a.getResyncWork()).toBe(6);
    await a.close();
    await b.close();
  });

  it('flush fails with EIO once the transport is lost, and when not quorate', async () => {
    const bus = new MemoryBus({ delivery: 'manual' });
    let quorate = true;
    const log = new ClusterLog({
      transport: bus.connect(1),
      uuid: 'q',
      regionSizeBytes: REGION_BYTES,
      lengthBytes: 4 * REGION_BYTES,
      sync: 'nosync',
      isQuorate: () => quorate,
    });
    await settle(bus, log.resume(activation));
    log.markRegion(1);
    quorate = false;
    await expect(settle(bus, log.flush())).rejects.toMatchObject({ errno: 'EIO' });
    quorate = true;
    log.markRegion(2);
    bus.killNode(1);
    await expect(settle(bus, log.flush())).rejects.toMatchObject({ errno: 'EIO' });
    expect(log.health()).toBe('D');
  });

  it('status and table output', async () => {
    const bus = new MemoryBus();
    const log = new ClusterLog({
      transport: bus.connect(1),
      uuid: 'LVM-abc',
      regionSizeBytes: 512 * 1024,
      lengthBytes: 8 * 1024 * 1024,
      sync: 'nosync',
      integratedFlush: true,
    });
    await log.resume(activation);
    expect(log.status('info')).toEqual(['3', 'clustered-core', 'LVM-abc', 'A']);
    expect(log.status('table')).toEqual(['userspace', '5', 'LVM-abc', 'integrated_flush', 'clustered-core', '1024', 'nosync']);
    await log.close();
  });
});
