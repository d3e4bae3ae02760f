// Randomised simulation of a clustered mirror (TigerBeetle-style, small): three real engines (openTable with
// a clustered-core log) over two shared memory legs, on the in-memory total-order bus. One fast-check seed
// decides the operations and the I/O timing; it is printed first and SIM_SEED=<n> replays it (the event
// loop's timers make a replay close, not exact).
//
// World: every node's path to a leg delays each operation by a random number of event-loop turns, so leg
// I/O of different nodes and recovery copies interleave. A node's deliveries can be held back for a while
// (a member that processes the group's events late: the cluster log must not rely on members seeing a
// change at the same moment). A node may die (power lost: its leg operations not yet landed never land,
// the group purges its marks and the survivors recover its regions) and come back (joins, gets the state
// from a checkpoint); never fewer than two nodes live. One node's path to leg b may break (every operation on
// it fails): the leg must fail on every node and no acknowledged write be lost.
// Two starts: legs identical (nosync), or leg b different and the whole volume resynced meanwhile (sync).
// Operations: writes of random 4 KiB-aligned pieces of a region (at most one write in flight per region,
// so the expected bytes are known), reads through any live node (checked against the expected bytes when
// no write to that region is in flight), holds and releases, deaths and restarts, a broken path, pauses.
// Checked: every read; at the end (everything released) every write of a live node completes, every region
// comes back in sync on every live node, the legs are byte-identical, and every region holds the expected
// bytes (except pieces a dead node was writing when it died: those may or may not have landed); after a
// leg failure, every live node has stopped using leg b and reads everything back from leg a.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MemoryBus } from '../../src/cluster/memory-bus.js';
import type { ClusterLog } from '../../src/cluster/cluster-log.js';
import type { Leg } from '../../src/mirror/legs/leg.js';
import { MemoryLeg } from '../../src/mirror/legs/memory.js';
import { ExportError } from '../../src/nbd/export.js';
import type { MirrorExport } from '../../src/mirror/mirror.js';
import { HoldableTransport, legThrough, memoryNode, seededBytes } from '../cluster/memory-engines.js';
import { within } from '../helpers/time.js';
import { xorshift32 } from '../helpers/xorshift.js';

const BLOCK = 4096;
const REGION_BYTES = 16 * BLOCK;
const REGIONS = 8;
const SIZE_BYTES = REGION_BYTES * REGIONS;
const NODES = 3;
type Mode = 'sync' | 'nosync' | 'disk';
const table = (mode: Mode) =>
  mode === 'disk'
    ? `0 ${SIZE_BYTES / 512} mirror userspace 4 LVM-sim clustered-disk log ${REGION_BYTES / 512} 2 a 0 b 0`
    : `0 ${SIZE_BYTES / 512} mirror userspace 4 LVM-sim clustered-core ${REGION_BYTES / 512} ${mode} 2 a 0 b 0`;
const END_WAIT_MS = 20_000;

type Op =
  | { kind: 'write'; node: number; region: number; firstBlock: number; blocks: number }
  | { kind: 'read'; node: number; region: number }
  | { kind: 'hold' | 'release'; node: number }
  | { kind: 'kill'; node: number }
  | { kind: 'restart' }
  | { kind: 'break'; node: number }
  | { kind: 'flush'; node: number }
  | { kind: 'crash' }
  | { kind: 'pause'; turns: number };

const opArb: fc.Arbitrary<Op> = (() => {
  const node = fc.integer({ min: 1, max: NODES });
  const region = fc.integer({ min: 0, max: REGIONS - 1 });
  const piece = fc.integer({ min: 0, max: 15 }).chain((firstBlock) => fc.record({ firstBlock: fc.constant(firstBlock), blocks: fc.integer({ min: 1, max: 16 - firstBlock }) }));
  return fc.oneof(
    { weight: 8, arbitrary: fc.record({ kind: fc.constant('write' as const), node, region, piece }).map(({ kind, node, region, piece }) => ({ kind, node, region, ...piece })) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('read' as const), node, region }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constantFrom('hold' as const, 'release' as const), node }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('kill' as const), node }) },
    { weight: 1, arbitrary: fc.constant({ kind: 'restart' as const }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('break' as const), node }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('flush' as const), node }) },
    { weight: 1, arbitrary: fc.constant({ kind: 'crash' as const }) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('pause' as const), turns: fc.integer({ min: 1, max: 12 }) }) },
  );
})();

const turn = () => new Promise<void>((r) => setImmediate(r));
const never = <T>() => new Promise<T>(() => undefined);

/**
 * One node's path to a shared leg: each operation lands after 0-3 turns; nothing lands once the node died;
 * every operation fails with EIO while the path is broken (the leg itself stays fine for other nodes).
 */
function jitterLeg(leg: MemoryLeg, rand: () => number, dead: { on: boolean }, broken: { on: boolean; hit?: boolean }): Leg {
  return legThrough(leg, async (op) => {
    for (let k = Math.floor(rand() * 4); k > 0; k--) await turn();
    if (dead.on) return never();
    if (broken.on) {
      broken.hit = true;
      throw new ExportError('EIO', `${leg.device}: path failed`);
    }
    return op();
  });
}

interface Stats {
  writes: number;
  reads: number;
  kills: number;
  restarts: number;
  legHit: boolean;
  crashes: number;
}

interface SimNode {
  id: number;
  exp: MirrorExport;
  log: ClusterLog;
  transport: HoldableTransport;
  dead: { on: boolean };
  /** This node's path to leg b (hit: an operation failed on it). */
  brokenB: { on: boolean; hit?: boolean };
}

/**
 * nosync: the legs start identical. sync: leg b starts with other bytes and the whole volume is resynced
 * from leg a while the operations run. disk: a clustered-disk log on a shared log device; the legs and the
 * log device have volatile caches, and the whole cluster may lose power (crash) and start again.
 */
async function runScenario(ops: readonly Op[], ioSeed: number, mode: Mode): Promise<Stats> {
  const rand = xorshift32(ioSeed);
  const bus = new MemoryBus();
  const disk = mode === 'disk';
  const legs = new Map(
    [['a', SIZE_BYTES], ['b', SIZE_BYTES], ['log', 64 * 1024]].map(([d, bytes]) => [d as string, new MemoryLeg({ device: d as string, sizeBytes: bytes as number, volatileCache: disk })]),
  );
  if (mode === 'sync') legs.get('b')!.bytes.fill(0xee);
  const nodes = new Map<number, SimNode>();
  /** The members the bus has (a restarted node is a new member), closed at the end. */
  const all: SimNode[] = [];
  const start = async (id: number): Promise<void> => {
    const dead = { on: false };
    const brokenB: SimNode['brokenB'] = { on: false };
    let transport: HoldableTransport | undefined;
    const { exp, log } = await memoryNode(
      bus,
      id,
      table(mode),
      (d) => jitterLeg(legs.get(d)!, rand, dead, d === 'b' ? brokenB : { on: false }),
      () => (transport = new HoldableTransport(bus.connect(id))),
    );
    const n = { id, exp, log, transport: transport!, dead, brokenB };
    nodes.set(id, n);
    all.push(n);
  };
  for (let id = 1; id <= NODES; id++) await start(id);
  for (let i = 0; i < 1000 && [...nodes.values()].some((n) => n.log.members.length < NODES); i++) await turn();

  const expected = Buffer.alloc(SIZE_BYTES);
  // What a block may hold after a power loss: one of the writes issued to it since the last one a completed
  // FLUSH covered (hist[block][floor[block]..]; seq 0 = the initial zeros). A block's writes are issued one
  // at a time (one write in flight per region), so issue order is completion order.
  const blocks = SIZE_BYTES / BLOCK;
  const hist: number[][] = Array.from({ length: blocks }, () => [0]);
  const floor = new Array<number>(blocks).fill(0);
  const dataOf = new Map<number, { off: number; data: Buffer }>();
  const acked = new Set<number>([0]);
  const blockBytes = (seq: number, block: number): Buffer => {
    if (seq === 0) return Buffer.alloc(BLOCK);
    const w = dataOf.get(seq)!;
    const at = block * BLOCK - w.off;
    return w.data.subarray(at, at + BLOCK);
  };
  /** Blocks whose bytes are unknown: a dead node was writing them. */
  const unknown = new Set<number>();
  /** region -> the write or read in flight on it (one at a time, so the expected bytes stay known). */
  const busy = new Map<number, { node: number; p: Promise<void> }>();
  const failures: string[] = [];
  let kills = 0;
  let restarts = 0;
  let legBroken = false;
  let crashes = 0;
  let writes = 0;
  let reads = 0;
  let seq = 0;

  const live = () => [...nodes.values()].filter((n) => !n.dead.on);
  const blockOf = (off: number) => off / BLOCK;
  const checkRead = (what: string, got: Buffer, off: number) => {
    for (let b = 0; b < got.length / BLOCK; b++) {
      if (unknown.has(blockOf(off) + b)) continue;
      const at = off + b * BLOCK;
      if (!got.subarray(b * BLOCK, (b + 1) * BLOCK).equals(expected.subarray(at, at + BLOCK))) {
        failures.push(`${what}: block ${blockOf(at)} (region ${Math.floor(at / REGION_BYTES)}) differs from the last write`);
        return;
      }
    }
  };

  for (const op of ops) {
    const n = 'node' in op ? nodes.get(op.node) : undefined;
    switch (op.kind) {
      case 'write': {
        if (!n || n.dead.on || busy.has(op.region)) break;
        const off = op.region * REGION_BYTES + op.firstBlock * BLOCK;
        const data = seededBytes(++seq, op.blocks * BLOCK);
        const mySeq = seq;
        data.copy(expected, off);
        dataOf.set(mySeq, { off, data });
        for (let b = 0; b < op.blocks; b++) {
          unknown.delete(blockOf(off) + b);
          hist[blockOf(off) + b]!.push(mySeq);
        }
        writes++;
        const p = n.exp.write(data, off, { fua: false }).then(
          () => void acked.add(mySeq),
          (e: unknown) => {
            if (!n.dead.on) failures.push(`write on node ${n.id} failed: ${(e as Error).message}`);
          },
        );
        busy.set(op.region, { node: n.id, p });
        void p.then(() => {
          if (busy.get(op.region)?.p === p) busy.delete(op.region);
        });
        break;
      }
      case 'read': {
        if (!n || n.dead.on || busy.has(op.region)) break;
        const off = op.region * REGION_BYTES;
        const got = Buffer.alloc(REGION_BYTES);
        reads++;
        const p = n.exp.read(got, off).then(
          // A dead node's read may still complete (its leg read landed before it died): not a client's read.
          () => void (n.dead.on || checkRead(`read of region ${op.region} via node ${n.id}`, got, off)),
          (e: unknown) => void failures.push(`read on node ${n.id} failed: ${(e as Error).message}`),
        );
        busy.set(op.region, { node: n.id, p });
        void p.then(() => {
          if (busy.get(op.region)?.p === p) busy.delete(op.region);
        });
        break;
      }
      case 'hold':
        if (n && !n.dead.on) n.transport.hold();
        break;
      case 'release':
        if (n && !n.dead.on) n.transport.release();
        break;
      case 'kill': {
        if (!n || n.dead.on || live().length < NODES) break; // never fewer than two live nodes
        kills++;
        n.dead.on = true;
        n.transport.release();
        // Its writes in flight may have landed on any subset of the legs, in part.
        for (const [region, b] of busy) {
          if (b.node !== n.id) continue;
          for (let k = 0; k < REGION_BYTES / BLOCK; k++) unknown.add(region * (REGION_BYTES / BLOCK) + k);
          busy.delete(region);
        }
        bus.killNode(n.id);
        break;
      }
      case 'restart': {
        const down = [...nodes.values()].find((x) => x.dead.on);
        if (!down) break;
        // Joining needs the log server's checkpoint: let every member go first.
        for (const x of live()) x.transport.release();
        restarts++;
        try {
          await within(start(down.id), END_WAIT_MS, `restart of node ${down.id}`);
        } catch (e) {
          failures.push((e as Error).message);
        }
        break;
      }
      case 'break':
        // One node loses its path to leg b: the leg fails on every node, no acknowledged write is lost.
        if (!n || n.dead.on || legBroken) break;
        legBroken = true;
        n.brokenB.on = true;
        break;
      case 'flush': {
        if (!n || n.dead.on) break;
        // Writes acknowledged before the FLUSH was sent must survive a power loss once it completed.
        const covered = new Set(acked);
        void n.exp.flush().then(
          () => {
            for (let b = 0; b < blocks; b++) {
              const h = hist[b]!;
              for (let i = h.length - 1; i > floor[b]!; i--) {
                if (covered.has(h[i]!)) {
                  floor[b] = i;
                  break;
                }
              }
            }
          },
          () => undefined, // a node that died meanwhile, or a failed leg path: no promise made
        );
        break;
      }
      case 'crash': {
        if (!disk) break;
        // Power lost everywhere at once: no leg operation in flight lands, unflushed caches are gone.
        crashes++;
        for (const x of nodes.values()) {
          x.transport.release();
          x.dead.on = true;
        }
        for (const x of nodes.values()) bus.killNode(x.id);
        busy.clear();
        for (const leg of legs.values()) leg.crash();
        try {
          for (let id = 1; id <= NODES; id++) await within(start(id), END_WAIT_MS, `after crash ${crashes}: node ${id} start`);
        } catch (e) {
          failures.push((e as Error).message);
          break;
        }
        // The whole cluster resyncs what the log device says was dirty: then every block holds one of the
        // values allowed, the same on both legs, and that value is what every read returns from now on.
        const deadline = Date.now() + END_WAIT_MS;
        while (live().some((x) => x.log.syncCount() < x.log.regionCount) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
        if (live().some((x) => x.log.syncCount() < x.log.regionCount)) {
          failures.push(`after crash ${crashes}: regions not in sync after ${END_WAIT_MS} ms`);
          break;
        }
        const a = legs.get('a')!.bytes;
        const b = legs.get('b')!.bytes;
        for (let k = 0; k < blocks; k++) {
          const got = a.subarray(k * BLOCK, (k + 1) * BLOCK);
          if (!got.equals(b.subarray(k * BLOCK, (k + 1) * BLOCK))) {
            failures.push(`after crash ${crashes}: block ${k} (region ${Math.floor((k * BLOCK) / REGION_BYTES)}) differs between the legs`);
            break;
          }
          const h = hist[k]!;
          const i = h.findIndex((q, j) => j >= floor[k]! && blockBytes(q, k).equals(got));
          if (i < 0) {
            failures.push(`after crash ${crashes}: block ${k} (region ${Math.floor((k * BLOCK) / REGION_BYTES)}) lost a write a completed FLUSH covered`);
            break;
          }
          hist[k] = [h[i]!];
          floor[k] = 0;
          got.copy(expected, k * BLOCK);
          unknown.delete(k);
        }
        break;
      }
      case 'pause':
        for (let k = 0; k < op.turns; k++) await turn();
        break;
    }
    if (failures.length > 0) break;
  }

  // The end: everything let go; every live node's writes complete and every region is recovered.
  for (const n of live()) n.transport.release();
  const outstanding = [...busy.values()].filter((b) => !nodes.get(b.node)!.dead.on).map((b) => b.p);
  const deadline = Date.now() + END_WAIT_MS;
  let settled = false;
  void Promise.all(outstanding).then(() => (settled = true));
  while (!settled && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
  if (!settled) {
    const what = [...busy].map(([r, b]) => `region ${r} on node ${b.node}`).join(', ');
    const waits = live().map((n) => `node ${n.id} waits for: ${n.log.waitingFor().join('; ') || 'nothing'}`).join(' / ');
    failures.push(`writes or reads still in flight after ${END_WAIT_MS} ms (${what}; ${waits})`);
  }
  while (live().some((n) => n.log.syncCount() < n.log.regionCount) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
  for (const n of live()) {
    if (n.log.syncCount() < n.log.regionCount) failures.push(`node ${n.id}: ${n.log.regionCount - n.log.syncCount()} regions not in sync after ${END_WAIT_MS} ms`);
  }
  if (failures.length === 0) {
    await within(Promise.all(live().map((n) => n.exp.flush())), END_WAIT_MS, 'the final flush').catch(
      (e: Error) => void failures.push(`${e.message} (${live().map((n) => `node ${n.id} waits for: ${n.log.waitingFor().join('; ') || 'nothing'}`).join(' / ')})`),
    );
    const a = legs.get('a')!.bytes;
    const b = legs.get('b')!.bytes;
    checkRead('leg a at the end', a, 0);
    for (const n of live()) {
      const got = Buffer.alloc(SIZE_BYTES);
      await n.exp.read(got, 0).then(
        () => checkRead(`read of everything via node ${n.id} at the end`, got, 0),
        (e: unknown) => void failures.push(`read on node ${n.id} at the end failed: ${(e as Error).message}`),
      );
    }
    if (legBroken) {
      // Once the node with the broken path ran into it, every live node stops using leg b (not 'A').
      const hit = live().some((n) => n.brokenB.hit === true);
      const usingB = () => live().filter((n) => n.exp.status().legs[1]!.health === 'A');
      while (hit && usingB().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
      for (const n of hit ? usingB() : []) failures.push(`node ${n.id} still uses leg b after it failed on another node`);
    } else {
      for (let r = 0; r < REGIONS; r++) {
        const s = r * REGION_BYTES;
        if (!a.subarray(s, s + REGION_BYTES).equals(b.subarray(s, s + REGION_BYTES))) failures.push(`region ${r}: legs differ while in sync`);
      }
      checkRead('leg b at the end', b, 0);
    }
  }
  for (const n of all) {
    n.transport.release();
    // A dead node's leg operations never land: its close would wait for them forever.
    if (n.dead.on) void n.exp.close().catch(() => undefined);
    else await within(n.exp.close(), END_WAIT_MS, `close of node ${n.id}`).catch((e: Error) => void failures.push(e.message));
  }
  expect(failures, failures.join('; ')).toEqual([]);
  const legHit = all.some((n) => n.brokenB.hit === true);
  return { writes, reads, kills, restarts, legHit, crashes };
}

const envSeed = process.env.SIM_SEED ? Number(process.env.SIM_SEED) : undefined;
const seed = envSeed ?? 0x5eed0c15;

describe('clustered mirror simulation: three engines, late deliveries, deaths and restarts, jittered leg I/O', () => {
  const modes: Mode[] = ['nosync', 'sync', 'disk'];
  for (const mode of modes) {
    const title =
      mode === 'disk'
        ? 'disk: a whole-cluster power loss keeps every write a completed FLUSH covered, and the legs end identical'
        : `${mode}: reads always return the last write; at the end every region is in sync and the legs are identical`;
    it(title, async () => {
      const s0 = seed + modes.indexOf(mode);
      console.log(`cluster-sim ${mode} seed ${s0} (replay: SIM_SEED=${seed})`);
      const total = { writes: 0, reads: 0, kills: 0, restarts: 0, legFailures: 0, crashes: 0 };
      await fc.assert(
        fc.asyncProperty(fc.array(opArb, { minLength: 20, maxLength: 80 }), fc.integer({ min: 1, max: 0x7fffffff }), async (ops, ioSeed) => {
          const s = await runScenario(ops, ioSeed, mode);
          total.writes += s.writes;
          total.reads += s.reads;
          total.kills += s.kills;
          total.restarts += s.restarts;
          total.crashes += s.crashes;
          if (s.legHit) total.legFailures++;
        }),
        { seed: s0, numRuns: Number(process.env.SIM_RUNS ?? 150), endOnFailure: true },
      );
      // The runs exercised what they are for.
      expect(total.writes).toBeGreaterThan(100);
      expect(total.reads).toBeGreaterThan(20);
      expect(total.kills).toBeGreaterThan(10);
      expect(total.restarts).toBeGreaterThan(5);
      expect(total.legFailures, 'runs where a node ran into its broken path').toBeGreaterThan(10);
      if (mode === 'disk') expect(total.crashes).toBeGreaterThan(10);
    }, 180_000);
  }
});
