// cluster-log-cpg.test.ts — the clustered log over real corosync CPG on 3 namespaced nodes: identical
// replicated state, purge of a dead member's marks, checkpoint for a restarted member, partition
// (minority cannot flush; after heal it re-takes the majority's state and re-sends its marks), and
// server failover when the server's corosync dies. Skips where it cannot run unless CI=true.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clusterUnavailableReason, Harness, now, type Member, type MemberEvent } from './harness.js';

const NODES = 3;
const TOKEN_MS = 1000;
const REGIONS = 64;
const UUID = 'LVM-cpgtest';
const WAIT_MS = 20_000;

const unavailable = await clusterUnavailableReason();
if (unavailable && process.env.CI === 'true') throw new Error(`cluster tests cannot run under CI: ${unavailable}`);

type State = MemberEvent & { digest: string; outOfSync: number[]; server: number; members: number[]; marks: Record<string, number[]> };

async function ask(m: Member, cmd: Record<string, unknown>, reply: string | string[]): Promise<MemberEvent> {
  const from = m.events.length;
  const names = Array.isArray(reply) ? reply : [reply];
  m.send(cmd);
  return m.waitFor((e) => names.includes(e.ev), WAIT_MS, from, `${names.join('|')} for ${JSON.stringify(cmd)}`);
}
const state = async (m: Member) => (await ask(m, { cmd: 'state' }, 'state')) as State;

/** Polls until every member reports the same digest and pred holds for it. */
async function converged(ms: Member[], pred: (s: State) => boolean, what: string): Promise<State> {
  const deadline = now() + WAIT_MS;
  let last: State[] = [];
  while (now() < deadline) {
    last = await Promise.all(ms.map(state));
    if (last.every((s) => s.digest === last[0]!.digest) && pred(last[0]!)) return last[0]!;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`not converged (${what}): ${JSON.stringify(last.map((s) => ({ server: s.server, members: s.members, marks: s.marks, out: s.outOfSync })))}`);
}

describe.skipIf(unavailable !== undefined)(`cluster log over corosync CPG${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  let h: Harness;
  const times: Record<string, string> = {};
  const m: Member[] = [];

  beforeAll(async () => {
    h = new Harness('l');
    await h.start(NODES, TOKEN_MS);
  });
  afterAll(async () => {
    await h?.teardown();
    console.log(`[cluster log timings, token ${TOKEN_MS} ms]\n` + Object.entries(times).map(([k, v]) => `  ${k}: ${v}`).join('\n'));
  });

  it('three members start with the identical state; server is node 1', async () => {
    for (let n = 1; n <= NODES; n++) {
      const x = h.spawnMember(n, 'log-member', [UUID, String(REGIONS)]);
      m.push(x);
      const ready = await x.waitFor((e) => e.ev === 'ready', WAIT_MS, 0, 'ready');
      times[`member ${n} resume (join + state)`] = `${(ready.ms as number).toFixed(1)} ms`;
    }
    const s = await converged(m, (s) => s.members.length === NODES, 'start');
    expect(s.server).toBe(1);
    expect(s.outOfSync).toEqual([]);
  });

  it('marks from several nodes are replicated everywhere', async () => {
    expect((await ask(m[1]!, { cmd: 'mark', regions: [1, 2, 3] }, ['flushed', 'flush-error'])).ev).toBe('flushed');
    expect((await ask(m[2]!, { cmd: 'mark', regions: [10] }, ['flushed', 'flush-error'])).ev).toBe('flushed');
    const t0 = now();
    const s = await converged(m, (s) => s.marks['2']?.length === 3 && s.marks['3']?.length === 1, 'marks');
    times['marks visible on all nodes (poll)'] = `${(now() - t0).toFixed(0)} ms`;
    expect(s.marks).toEqual({ 2: [1, 2, 3], 3: [10] });
  });

  it('a killed member: its marks are purged and its regions go out of sync; a restarted member gets the state', async () => {
    const t0 = now();
    m[1]!.kill9();
    const s = await converged([m[0]!, m[2]!], (s) => s.members.length === 2, 'after kill');
    times['member kill -9 -> purge applied (poll)'] = `${(now() - t0).toFixed(0)} ms`;
    expect(s.outOfSync).toEqual([1, 2, 3]);
    expect(s.marks).toEqual({ 3: [10] });
    const again = h.spawnMember(2, 'log-member', [UUID, String(REGIONS)]);
    const ready = await again.waitFor((e) => e.ev === 'ready', WAIT_MS, 0, 'ready');
    times['restarted member resume (checkpoint)'] = `${(ready.ms as number).toFixed(1)} ms`;
    m[1] = again;
    const s2 = await converged(m, (s) => s.members.length === NODES, 'after restart');
    expect(s2.outOfSync).toEqual([1, 2, 3]);
    // One recovery at a time, cluster-wide: node 2 gets region 1, node 3 gets nothing meanwhile.
    const w = await ask(m[1]!, { cmd: 'work' }, 'work');
    expect(w.region).toBe(1);
    const st = await state(m[2]!);
    expect(st.recovering).toEqual({ region: 1, nodeId: 2 });
    await ask(m[1]!, { cmd: 'finish', region: 1, ok: true }, 'finished');
    await converged(m, (s) => s.outOfSync.join() === '2,3' && s.recovering === null, 'after recovery');
  });

  it('partition: the minority cannot flush; after heal it takes the majority state and re-sends its marks', async () => {
    const from3 = m[2]!.events.length;
    const t0 = now();
    await h.sh('partition', '3');
    await m[2]!.waitFor((e) => e.ev === 'quorum' && e.quorate === false, WAIT_MS, from3, 'inquorate');
    times['partition -> minority inquorate'] = `${(now() - t0).toFixed(0)} ms`;
    const refused = await ask(m[2]!, { cmd: 'mark', regions: [20] }, ['flushed', 'flush-error']);
    expect(refused.ev).toBe('flush-error');
    expect(refused.errno).toBe('EIO');
    // The majority purges node 3's marks (region 10) and goes on.
    const maj = await converged([m[0]!, m[1]!], (s) => s.members.length === 2, 'majority');
    expect(maj.outOfSync).toEqual([2, 3, 10]);
    expect((await ask(m[0]!, { cmd: 'mark', regions: [30] }, ['flushed', 'flush-error'])).ev).toBe('flushed');

    const t1 = now();
    await h.sh('heal');
    const healed = await converged(m, (s) => s.members.length === NODES, 'heal');
    times['heal -> identical state on all 3 (poll)'] = `${(now() - t1).toFixed(0)} ms`;
    expect(healed.outOfSync).toEqual([2, 3, 10]); // the majority's view won
    expect(healed.marks['1']).toEqual([30]);
    // Node 3's still-held local marks (10, and 20 whose flush failed) are re-sent with its next flush.
    expect((await ask(m[2]!, { cmd: 'mark', regions: [] }, ['flushed', 'flush-error'])).ev).toBe('flushed');
    const s = await converged(m, (s) => (s.marks['3'] ?? []).length === 2, 'node 3 marks again');
    expect(s.marks['3']).toEqual([10, 20]);
  });

  it("the server's corosync dies: its member fails closed, node 2 becomes the server", async () => {
    const t0 = now();
    await h.sh('kill-corosync', '1');
    await m[0]!.waitFor((e) => e.ev === 'lost', WAIT_MS, 0, 'lost on node 1');
    const refused = await ask(m[0]!, { cmd: 'mark', regions: [40] }, ['flushed', 'flush-error']);
    expect(refused.ev).toBe('flush-error');
    const s = await converged([m[1]!, m[2]!], (s) => s.members.length === 2, 'failover');
    times['server corosync kill -9 -> new server everywhere (poll)'] = `${(now() - t0).toFixed(0)} ms`;
    expect(s.server).toBe(2);
    expect(s.marks['1']).toBeUndefined();
    expect(s.outOfSync).toEqual([2, 3, 10, 30]);
  });
});
