// WriteOrder (src/mirror/write-order.ts) against a plain model: a piece runs exactly when every piece
// admitted before it in the same region that overlaps it has completed. From that follow the three rules
// checked after every step: no two overlapping pieces ever run at once; overlapping pieces start in
// admission order (FIFO); a piece overlapping nothing before it never waits.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { WriteOrder } from '../../../src/mirror/write-order.js';

interface Op {
  readonly id: number;
  readonly region: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  /** Completes on the stack that starts it (the synchronous leg fast path). */
  readonly sync: boolean;
  started: boolean;
  done: boolean;
}

const overlap = (a: Op, b: Op) =>
  a.region === b.region && a.offsetBytes < b.offsetBytes + b.lengthBytes && b.offsetBytes < a.offsetBytes + a.lengthBytes;

type Admit = { kind: 'admit'; region: number; offsetBytes: number; lengthBytes: number; sync: boolean; nested: boolean };
type Cmd = Admit | { kind: 'done'; pick: number };

// Small ranges in two regions, so pieces overlap in chains (a waits on b waits on c) often.
const cmdArb: fc.Arbitrary<Cmd> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant('admit' as const),
      region: fc.integer({ min: 0, max: 1 }),
      offsetBytes: fc.integer({ min: 0, max: 9 }),
      lengthBytes: fc.integer({ min: 1, max: 5 }),
      sync: fc.integer({ min: 0, max: 3 }).map((v) => v === 0), // a quarter complete on the starting stack
      // The next admission happens while this piece is being issued (before issued()): reentrancy.
      nested: fc.integer({ min: 0, max: 4 }).map((v) => v === 0),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('done' as const), pick: fc.nat() }) },
);

describe('WriteOrder', () => {
  it('matches the model: overlapping pieces run one at a time in admission order, others at once', () => {
    fc.assert(
      fc.property(fc.array(cmdArb, { minLength: 1, maxLength: 40 }), (cmds) => {
        const ops: Op[] = [];
        const startOrder: number[] = [];
        const running = (): Op[] => ops.filter((o) => o.started && !o.done);
        const markStarted = (o: Op) => {
          if (o.started) throw new Error(`piece ${o.id} started twice`);
          // At start: every earlier overlapping piece is done, and nothing overlapping runs.
          for (const e of ops) {
            if (e.id < o.id && overlap(e, o) && !e.done) throw new Error(`piece ${o.id} started before earlier overlapping ${e.id} completed`);
            if (e.started && !e.done && overlap(e, o)) throw new Error(`pieces ${e.id} and ${o.id} overlap and run at once`);
          }
          o.started = true;
          startOrder.push(o.id);
        };
        const complete = (o: Op) => {
          o.done = true;
          wo.done(o);
        };
        const wo = new WriteOrder<Op>((o) => {
          markStarted(o);
          if (o.sync) complete(o);
        });
        const admit = (c: Admit, whileIssuing: (() => void) | null) => {
          const o: Op = { id: ops.length, region: c.region, offsetBytes: c.offsetBytes, lengthBytes: c.lengthBytes, sync: c.sync, started: false, done: false };
          ops.push(o);
          let blocked = false;
          for (const e of ops) if (e.id < o.id && overlap(e, o) && !e.done) blocked = true;
          const admitted = wo.admit(o);
          if (admitted === blocked) throw new Error(`piece ${o.id}: admitted=${admitted}, blocked=${blocked}`); // nothing unfinished before it: never waits
          if (admitted) {
            markStarted(o);
            if (o.sync) complete(o);
            whileIssuing?.();
            wo.issued(o);
          } else {
            whileIssuing?.();
          }
        };
        for (let i = 0; i < cmds.length; i++) {
          const c = cmds[i]!;
          if (c.kind === 'admit') {
            const next = cmds[i + 1];
            if (c.nested && next?.kind === 'admit') {
              i++;
              admit(c, () => admit(next, null));
            } else {
              admit(c, null);
            }
          } else {
            const r = running();
            if (r.length === 0) continue;
            complete(r[c.pick % r.length]!);
          }
          // Model: a piece runs (or ran) exactly when every earlier overlapping piece is done.
          for (const o of ops) {
            let mayRun = true;
            for (const e of ops) if (e.id < o.id && !e.done && overlap(e, o)) mayRun = false;
            if (o.started !== mayRun) throw new Error(`piece ${o.id}: started=${o.started}, model says ${mayRun}`);
          }
          expect(wo.inFlight).toBe(running().length);
          expect(wo.waiting).toBe(ops.filter((o) => !o.started).length);
        }
        // Drain: everything eventually runs, and the tracker forgets every region.
        for (let r = running(); r.length > 0; r = running()) complete(r[0]!);
        expect(ops.every((o) => o.done)).toBe(true);
        expect(wo.regionCount).toBe(0);
        expect(wo.inFlight + wo.waiting).toBe(0);
        // FIFO among overlapping pieces, as a property of the whole start order.
        const pos = new Map(startOrder.map((id, i) => [id, i]));
        for (const a of ops) for (const b of ops) if (a.id < b.id && overlap(a, b) && pos.get(a.id)! > pos.get(b.id)!) throw new Error(`FIFO: ${b.id} before ${a.id}`);
      }),
      { numRuns: 1000 },
    );
  });

  it('a waiter that overlaps only the completed piece still waits behind an earlier waiter it overlaps', () => {
    const started: string[] = [];
    const wo = new WriteOrder<Op & { name: string }>((o) => started.push(o.name));
    const mk = (name: string, off: number, len: number) => ({ name, id: 0, region: 0, offsetBytes: off, lengthBytes: len, sync: false, started: false, done: false });
    const a = mk('a', 0, 4);
    const e = mk('e', 4, 4);
    const y = mk('y', 2, 4); // waits on a and e
    const x = mk('x', 5, 3); // waits on e and y
    const admit = (o: typeof a) => {
      const ok = wo.admit(o);
      if (ok) wo.issued(o);
      return ok;
    };
    expect([admit(a), admit(e), admit(y), admit(x)]).toEqual([true, true, false, false]);
    wo.done(e);
    expect(started).toEqual([]); // y still waits on a; x must not overtake y
    wo.done(a);
    expect(started).toEqual(['y']);
    wo.done(y);
    expect(started).toEqual(['y', 'x']);
  });

  it('a long chain of overlapping pieces completing synchronously is released without recursion', () => {
    const N = 100_000;
    let started = 0;
    const wo = new WriteOrder<Op>((o) => {
      started++;
      wo.done(o); // synchronous completion on the releasing stack
    });
    const ops: Op[] = [];
    for (let i = 0; i < N; i++) ops.push({ id: i, region: 7, offsetBytes: 0, lengthBytes: 4096, sync: true, started: false, done: false });
    expect(wo.admit(ops[0]!)).toBe(true);
    wo.issued(ops[0]!);
    let admitted = 0;
    for (let i = 1; i < N; i++) if (wo.admit(ops[i]!)) admitted++;
    expect(admitted).toBe(0);
    expect(wo.waiting).toBe(N - 1);
    wo.done(ops[0]!); // would overflow the stack if each release started the next one recursively
    expect(started).toBe(N - 1);
    expect(wo.regionCount).toBe(0);
  });

  it('pieces in different regions or disjoint ranges never wait; touching ranges do not overlap', () => {
    const wo = new WriteOrder<Op>(() => {
      throw new Error('nothing should wait');
    });
    const mk = (id: number, region: number, off: number, len: number): Op => ({ id, region, offsetBytes: off, lengthBytes: len, sync: false, started: false, done: false });
    const a = mk(0, 0, 0, 4096);
    const b = mk(1, 1, 0, 4096);
    const c = mk(2, 0, 4096, 4096);
    for (const o of [a, b, c]) {
      expect(wo.admit(o)).toBe(true);
      wo.issued(o);
    }
    expect(wo.inFlight).toBe(3);
    wo.done(b);
    wo.done(a);
    wo.done(c);
    expect(wo.regionCount).toBe(0);
  });

  it('done() of a piece not in flight is a bug and says so', () => {
    const wo = new WriteOrder<Op>(() => undefined);
    const a: Op = { id: 0, region: 0, offsetBytes: 0, lengthBytes: 1, sync: false, started: false, done: false };
    expect(() => wo.done(a)).toThrow(/nothing in flight/);
    wo.admit(a);
    wo.issued(a);
    expect(() => wo.done({ ...a })).toThrow(/not in flight/);
  });
});
