// The cluster metadata lock (src/cluster/metadata-lock.ts) on the in-memory total-order bus: queue order,
// a late joiner waits for a holder it never saw request, a killed holder releases, the timeout names who
// holds the lock for what since when, COMMITTED reaches every member, and a randomized run never has two
// holders at once. (The same class over real corosync: cluster-lock.test.ts.)
import { describe, expect, it } from 'vitest';
import { MemoryBus } from '../../src/cluster/memory-bus.js';
import { decodeLockMessage, encodeLockMessage, MetadataLockCodecError } from '../../src/cluster/metadata-lock-codec.js';
import { MetadataLock, MetadataLockError } from '../../src/cluster/metadata-lock.js';

const GROUP = 'nbdm-pool-test';
const open = (bus: MemoryBus, node: number) => MetadataLock.open({ transport: bus.connect(node), group: GROUP, poolName: 'p' });
const tick = () => new Promise((r) => setTimeout(r, 5));

describe('metadata lock codec', () => {
  it('round-trips and refuses bad input', () => {
    const msgs = [
      { t: 'req', reqId: 1, op: 'convert p/v', sinceMs: 5 },
      { t: 'ack', toNode: 2, toPid: 3, toReq: 1, ahead: { nodeId: 1, pid: 9, reqId: 4, op: 'x', sinceMs: 1 } },
      { t: 'ack', toNode: 2, toPid: 3, toReq: 1, ahead: null },
      { t: 'unlock', reqId: 1 },
      { t: 'committed', seqno: 7, volumes: ['v', 'w'] },
    ] as const;
    for (const m of msgs) expect(decodeLockMessage(encodeLockMessage(m))).toEqual(m);
    expect(() => decodeLockMessage(Buffer.from('NBDMLCK1{"t":"req","reqId":-1,"op":"x","sinceMs":1}'))).toThrow(MetadataLockCodecError);
    expect(() => decodeLockMessage(Buffer.from('garbage'))).toThrow(MetadataLockCodecError);
    expect(() => decodeLockMessage(Buffer.from('NBDMLCK1{"t":"committed","seqno":1,"volumes":[""]}'))).toThrow(/volume name/);
  });
});

describe('metadata lock on the memory bus', () => {
  it('two requests at once: one holds, the other gets it on release, in request order', async () => {
    const bus = new MemoryBus();
    const [a, b, watcher] = [await open(bus, 1), await open(bus, 2), await open(bus, 3)];
    const order: string[] = [];
    const pa = a.acquire('op a').then(() => order.push('a'));
    const pb = b.acquire('op b').then(() => order.push('b'));
    await pa;
    await tick();
    expect(order).toEqual(['a']);
    expect(a.held && !b.held).toBe(true);
    await a.release();
    await pb;
    expect(order).toEqual(['a', 'b']);
    await b.release();
    for (const l of [a, b, watcher]) await l.close();
  });

  it('a member joining after the holder took the lock still waits for it', async () => {
    const bus = new MemoryBus();
    const a = await open(bus, 1);
    await a.acquire('first');
    const late = await open(bus, 2);
    let got = false;
    const p = late.acquire('second').then(() => (got = true));
    await tick();
    expect(got).toBe(false);
    await a.release();
    await p;
    expect(late.held).toBe(true);
    await late.close();
    await a.close();
  });

  it('a holder killed -9 leaves the group and its lock goes with it', async () => {
    const bus = new MemoryBus();
    const ta = bus.connect(1);
    const a = await MetadataLock.open({ transport: ta, group: GROUP, poolName: 'p' });
    const b = await open(bus, 2);
    await a.acquire('doomed');
    const p = b.acquire('next');
    await tick();
    expect(b.held).toBe(false);
    bus.killProcess(ta);
    await p;
    expect(b.held).toBe(true);
    await b.close();
  });

  it('times out with who holds it, for what, since when; the withdrawn request blocks nobody', async () => {
    const bus = new MemoryBus();
    const a = await open(bus, 1);
    const b = await open(bus, 2);
    const c = await open(bus, 3);
    await a.acquire('convert p/v --mirrors 1');
    const err = await b.acquire('resize p/v', 50).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MetadataLockError);
    expect((err as Error).message).toMatch(/^pool p is locked by node 1 \(pid \d+\) for "convert p\/v --mirrors 1" since \d{4}-\d\d-\d\dT.*Z \(waited 0\.1 s\)$/);
    await a.release();
    await c.acquire('after'); // b's withdrawn request is not ahead of c
    expect(c.held).toBe(true);
    for (const l of [a, b, c]) await l.close();
  });

  it('COMMITTED reaches every member, the sender included', async () => {
    const bus = new MemoryBus();
    const locks = [await open(bus, 1), await open(bus, 2), await open(bus, 2)];
    const seen = locks.map(() => [] as number[]);
    locks.forEach((l, i) => l.onCommitted((c) => seen[i]!.push(c.seqno)));
    await locks[0]!.announce(42, ['v']);
    await tick();
    expect(seen).toEqual([[42], [42], [42]]);
    for (const l of locks) await l.close();
  });

  it('PREPARE reaches every member: servers answer after their handler, commands at once; FINISH and departures are seen', async () => {
    const bus = new MemoryBus();
    const holder = await open(bus, 1);
    const server = await open(bus, 2);
    const command = await open(bus, 3);
    const seen: string[] = [];
    server.onPrepare(async (p) => {
      seen.push(`prepare ${p.seqno} ${p.volume}`);
      await tick();
      return p.volume === 'bad' ? { serving: true, error: 'cannot open x' } : { serving: true };
    });
    server.onFinish((f) => seen.push(`finish ${f.seqno} ${f.commit}`));
    server.onLeft((m) => seen.push(`left ${m.nodeId}`));
    await holder.acquire('convert');
    const r = await holder.prepareAll(7, 'v');
    expect(r.map((x) => [x.member.nodeId, x.ok, x.serving]).sort()).toEqual([[2, true, true], [3, true, false]]);
    const bad = await holder.prepareAll(8, 'bad');
    expect(bad.find((x) => x.member.nodeId === 2)).toMatchObject({ ok: false, error: 'cannot open x' });
    await holder.finish(7, true);
    await tick();
    await holder.close();
    await tick();
    expect(seen).toEqual(['prepare 7 v', 'prepare 8 bad', 'finish 7 true', 'left 1']);
    await expect(command.prepareAll(9, 'v')).rejects.toThrow(/without holding the lock/);
    await server.close();
    await command.close();
  });

  it('randomized: never two holders, every live request is eventually granted', async () => {
    for (let seed = 1; seed <= 20; seed++) {
      let s = seed;
      const rand = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648);
      const bus = new MemoryBus();
      const members: { lock: MetadataLock; t: ReturnType<MemoryBus['connect']>; alive: boolean; granted: number }[] = [];
      const add = async () => {
        const t = bus.connect(1 + Math.floor(rand() * 3));
        members.push({ lock: await MetadataLock.open({ transport: t, group: GROUP, poolName: 'p' }), t, alive: true, granted: 0 });
      };
      for (let i = 0; i < 3; i++) await add();
      let holders = 0;
      let maxHolders = 0;
      let timeouts = 0;
      const work: Promise<void>[] = [];
      for (let step = 0; step < 30; step++) {
        const r = rand();
        if (r < 0.15) await add();
        else if (r < 0.25) {
          const m = members.filter((x) => x.alive)[Math.floor(rand() * members.length)];
          if (m && !m.lock.held) {
            m.alive = false;
            bus.killProcess(m.t);
          }
        } else {
          const m = members[Math.floor(rand() * members.length)]!;
          if (!m.alive) continue;
          work.push(
            (async () => {
              try {
                await m.lock.acquire(`step ${step}`, 5000);
              } catch (e) {
                if (e instanceof MetadataLockError && m.alive) timeouts++;
                return; // already requesting, or killed meanwhile
              }
              if (!m.alive) return;
              holders++;
              maxHolders = Math.max(maxHolders, holders);
              m.granted++;
              await tick();
              holders--;
              await m.lock.release();
            })(),
          );
        }
        if (rand() < 0.5) await tick();
      }
      await Promise.all(work);
      expect(maxHolders, `seed ${seed}`).toBe(1);
      expect(timeouts, `seed ${seed}`).toBe(0);
      for (const m of members) if (m.alive) await m.lock.close();
    }
  });
});
