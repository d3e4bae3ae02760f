// Scenario, for real: a clustered pool on 2 corosync nodes (network namespaces, scripts/cluster/cluster.sh),
// `serve --pool` on each node over the same shared device files, and commands run inside each node's
// namespace (each joins the pool's CPG group and takes the cluster-wide metadata lock):
//  (a) both nodes convert the same volume at the same time: exactly one wins, the other waits for the lock,
//      then re-reads the metadata and is refused with a message naming the problem; the metadata is
//      consistent (one commit, no pending change) and BOTH servers serve the new table (the other node's
//      server followed the COMMITTED announcement);
//  (b) a command holding the lock: another node's command with a short timeout is refused naming the
//      holder (node, pid, operation, since); then the holder is killed -9 while holding it and a waiting
//      command on the other node gets the lock at once;
//  (c) a command killed -9 after its intent was written: the next command on the other node drops it;
//  (d) killed -9 after every server loaded the new table and suspended (PREPARE): the servers resume the
//      old table as soon as it leaves the group (I/O goes on), the next command drops the intent.
//  (e) both nodes write while node 1 converts the volume linear -> mirror: every acknowledged write reads
//      back through the other node and both legs end identical (every node had the new leg before any
//      resumed: no write bypassed it).
//  (f) growing a served clustered mirror is refused (its cluster log cannot change size online);
//  (g) pool move of a served mirror leg while both nodes write (temporary leg on every node, resync, source
//      dropped on every node): acked writes kept, legs identical.
//  Online changes go through PREPARE (load + suspend on every node) / commit / FINISH (resume everywhere).
// Skips where it cannot run (not root, no corosync) unless CI=true.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatTable, parseTable } from '../../src/mirror/table.js';
import { NbdClient } from '../../src/nbd/client/client.js';
import { CLI_PATH } from '../helpers/server.js';
import { ADDON, clusterUnavailableReason, Harness, now } from '../cluster/harness.js';
import { makeDevices, ok, type CliResult } from './pool-cli.js';
import { checkAcked, writer } from '../cluster/serve-node.js';
import { readRange } from '../helpers/crash.js';
import { sleep } from '../helpers/time.js';

const TOKEN_MS = 1000;
const unavailable = await clusterUnavailableReason();
if (unavailable && process.env.CI === 'true') throw new Error(`cluster lock tests cannot run under CI: ${unavailable}`);


describe.skipIf(unavailable !== undefined)(`clustered pool metadata lock on 2 corosync nodes${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  let h: Harness;
  let dir: string;
  const servers: { child: ChildProcess; out: string; exited: boolean }[] = [];
  const times: Record<string, number> = {};

  const nodeEnv = (n: number): NodeJS.ProcessEnv => ({
    ...process.env,
    NBD_MIRROR_DEVICES: dir,
    NBD_MIRROR_CPG_ADDON: ADDON,
    NBD_MIRROR_LOCK_DIR: path.join(dir, `locks-n${n}`), // each "host" has its own host lock directory
  });
  const ctl = (n: number) => path.join(dir, `n${n}.ctl`);

  /** Spawn the CLI inside node n's namespace. */
  function spawnCli(n: number, args: string[], env: NodeJS.ProcessEnv = {}): { child: ChildProcess; done: Promise<CliResult> } {
    const child = spawn('ip', ['netns', 'exec', `${h.prefix}-n${n}`, process.execPath, CLI_PATH, ...args], { env: { ...nodeEnv(n), ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    const done = new Promise<CliResult>((resolve) => child.on('exit', (code) => resolve({ code, stdout, stderr })));
    return { child, done };
  }
  const cliOn = (n: number, args: string[], env: NodeJS.ProcessEnv = {}) => spawnCli(n, args, env).done;

  async function startServer(n: number): Promise<void> {
    const pidFile = path.join(dir, `n${n}.pid`);
    const args = ['serve', '--pool', 'cp', '--listen', `unix:${path.join(dir, `n${n}.sock`)}`, '--control', ctl(n), '--pid-file', pidFile, '--dashboard', '0', '--quiet'];
    const child = spawn('ip', ['netns', 'exec', `${h.prefix}-n${n}`, process.execPath, CLI_PATH, ...args], { env: nodeEnv(n), stdio: ['ignore', 'pipe', 'pipe'] });
    const s = { child, out: '', exited: false };
    servers.push(s);
    child.stdout!.on('data', (b: Buffer) => (s.out = (s.out + b.toString()).slice(-16384)));
    child.stderr!.on('data', (b: Buffer) => (s.out = (s.out + b.toString()).slice(-16384)));
    child.on('exit', () => (s.exited = true));
    const t0 = now();
    while (!existsSync(pidFile) || (await readFile(pidFile, 'utf8')).trim() !== String(child.pid)) {
      if (s.exited) throw new Error(`node ${n} serve exited: ${s.out}`);
      if (now() - t0 > 30_000) throw new Error(`node ${n} serve not ready: ${s.out}`);
      await sleep(50);
    }
  }

  async function served(n: number): Promise<string> {
    return (await ok<{ table: string }>(['table', 'v', '--control', ctl(n), '--json'])).table;
  }
  /** Wait until both servers serve what the metadata says for v; returns the table and how long it took. */
  async function bothServeMetadata(ms: number): Promise<{ table: string; tookMs: number }> {
    const want = (await ok(['table', 'cp/v'], { NBD_MIRROR_DEVICES: dir })).trim();
    const t0 = now();
    for (;;) {
      const got = [await served(1), await served(2)];
      if (got.every((t) => t === want)) return { table: want, tookMs: now() - t0 };
      if (now() - t0 > ms) throw new Error(`servers do not serve the metadata's table\nwant ${want}\ngot  ${got.join('\n     ')}\n${servers.map((s) => s.out).join('\n')}`);
      await sleep(100);
    }
  }
  async function show(): Promise<{ seqno: number; metadata: { pending?: unknown; volumes: { name: string; legs: unknown[] }[] } }> {
    return ok(['pool', 'show', 'cp', '--json'], { NBD_MIRROR_DEVICES: dir });
  }

  beforeAll(async () => {
    h = new Harness('pl');
    dir = path.join(h.runDir, 'pool');
    mkdirSync(dir);
    for (const n of [1, 2]) mkdirSync(path.join(dir, `locks-n${n}`));
    times.clusterUpMs = await h.start(2, TOKEN_MS);
    const devs = await makeDevices(dir, ['a.img', 'b.img', 'c.img', 'd.img'], 32 * 1024 * 1024);
    const local = { NBD_MIRROR_DEVICES: dir, NBD_MIRROR_POOL_LOCK: 'local' }; // setup: nobody serves yet
    await ok(['pool', 'create', 'cp', '--clustered', ...devs], local);
    await ok(['create', 'cp/v', '--size', '8M', '--mirrors', '0'], local);
    await ok(['create', 'cp/spare', '--size', '4M', '--mirrors', '0'], local);
    await startServer(1);
    await startServer(2);
  }, 120_000);

  afterAll(async () => {
    for (const s of servers) if (!s.exited) s.child.kill('SIGKILL');
    await sleep(200);
    console.log(`cluster lock timings: ${JSON.stringify(times)}`);
    await h?.teardown();
  }, 60_000);

  it('(a) conflicting changes on two nodes at once: one wins, the other waits and is refused; both serve the new table', async () => {
    const before = await show();
    const t0 = now();
    const [r1, r2] = await Promise.all([1, 2].map((n) => cliOn(n, ['convert', 'cp/v', '--mirrors', '1', '--log', 'core', '--control', ctl(n), '--json'])));
    times.conflictMs = now() - t0;
    const results = [r1!, r2!];
    const winners = results.filter((r) => r.code === 0);
    const losers = results.filter((r) => r.code !== 0);
    expect(winners, results.map((r) => r.stderr).join('\n')).toHaveLength(1);
    expect(losers).toHaveLength(1);
    expect(losers[0]!.code).toBe(2);
    expect(losers[0]!.stderr).toContain('nbd-mirror: error: convert v: already 2 leg(s)');
    expect(winners[0]!.stdout).toContain('"legs"');

    const after = await show();
    expect(after.metadata.pending).toBeUndefined();
    expect(after.seqno).toBe(before.seqno + 2); // the winner's intent + commit; the loser wrote nothing
    expect(after.metadata.volumes.find((v) => v.name === 'v')!.legs).toHaveLength(2);
    const { table, tookMs } = await bothServeMetadata(15_000);
    times.otherNodeFollowedMs = tookMs;
    const spec = parseTable(table);
    expect(spec.kind === 'mirror' && spec.legs.length === 2 && spec.log.clustered).toBe(true);
  }, 90_000);

  it('(b) a held lock: a short wait is refused naming the holder; killing the holder -9 frees it at once', async () => {
    const holder = spawnCli(1, ['create', 'cp/w1', '--size', '4M', '--mirrors', '0'], { NBD_MIRROR_POOL_HOLD_MS: '60000' });
    // Wait until node 1's command holds its host lock (the cluster lock is taken right after), then node 2's
    // short request is refused naming it.
    const hostLock = path.join(dir, 'locks-n1', `${(await show() as unknown as { uuid: string }).uuid}.lock`);
    const t0 = now();
    while (!existsSync(hostLock)) {
      if (now() - t0 > 20_000) throw new Error('node 1 command never took its host lock');
      await sleep(50);
    }
    await sleep(1000);
    let refused: CliResult | undefined;
    for (;;) {
      const r = await cliOn(2, ['create', 'cp/w2', '--size', '4M', '--mirrors', '0'], { NBD_MIRROR_POOL_LOCK_TIMEOUT_MS: '1500' });
      if (r.code !== 0 && /is locked by/.test(r.stderr)) {
        refused = r;
        break;
      }
      expect(r.code, r.stderr).not.toBe(0);
      if (now() - t0 > 20_000) throw new Error(`node 1 never held the lock: ${r.stderr}`);
    }
    expect(refused.stderr).toMatch(
      new RegExp(`nbd-mirror: error: pool cp is locked by node 1 \\(pid ${holder.child.pid}\\) for "create cp/w1" since \\d{4}-\\d\\d-\\d\\dT[0-9:.]+Z \\(waited 1\\.5 s\\)`),
    );
    expect(refused.code).toBe(2);
    const seqBefore = (await show()).seqno;

    // A patient command on node 2 waits; the holder dies mid-change; node 2 gets the lock promptly.
    const waiter = spawnCli(2, ['create', 'cp/w2', '--size', '4M', '--mirrors', '0'], { NBD_MIRROR_POOL_LOCK_TIMEOUT_MS: '30000' });
    await sleep(1500);
    const killedAt = now();
    holder.child.kill('SIGKILL');
    const w = await waiter.done;
    times.lockFreedAfterKillMs = now() - killedAt;
    expect(w.code, w.stderr).toBe(0);
    expect(times.lockFreedAfterKillMs).toBeLessThan(10_000);
    const s = await show();
    expect(s.seqno).toBe(seqBefore + 1); // only node 2's create: the killed holder had written nothing
    expect(s.metadata.volumes.map((v) => v.name).sort()).toEqual(['spare', 'v', 'w2']);
  }, 90_000);

  it('(c) killed -9 after its intent: the next command on the other node drops it; both serve the old table', async () => {
    const before = await served(1);
    const r = await cliOn(1, ['convert', 'cp/v', '--mirrors', '0', '--control', ctl(1)], { NBD_MIRROR_POOL_CRASH_AT: 'after-intent' });
    expect(r.code).toBeNull(); // SIGKILL
    expect((await show()).metadata.pending).toBeDefined();
    const next = await cliOn(2, ['remove', 'cp/w2', '--control', ctl(2)]);
    expect(next.code, next.stderr).toBe(0);
    const s = await show();
    expect(s.metadata.pending).toBeUndefined();
    expect(s.metadata.volumes.find((v) => v.name === 'v')!.legs).toHaveLength(2); // before, never in between
    const { table } = await bothServeMetadata(15_000);
    expect(table).toBe(before);
  }, 90_000);

  it('(d) killed -9 after every server loaded the new table and suspended: they resume the old one at once', async () => {
    const before = await served(1);
    const t0 = now();
    const r = await cliOn(1, ['convert', 'cp/v', '--mirrors', '0', '--control', ctl(1)], { NBD_MIRROR_POOL_CRASH_AT: 'after-prepare' });
    expect(r.code).toBeNull();
    // I/O goes on through both nodes (nothing stays suspended behind the dead command).
    for (const n of [1, 2]) {
      const c = await NbdClient.connect(`nbd+unix:///v?socket=${path.join(dir, `n${n}.sock`)}`);
      const data = Buffer.alloc(65536, n);
      await c.write(data, n * 65536, { fua: true });
      const back = Buffer.alloc(65536);
      await c.read(back, n * 65536);
      expect(back.equals(data)).toBe(true);
      await c.close();
    }
    times.ioBackAfterHolderKilledMs = now() - t0;
    for (const n of [1, 2]) {
      const info = await ok<{ state: string; tablesPresent: { inactive: boolean } }>(['info', 'v', '--control', ctl(n), '--json']);
      expect(info.state).toBe('ACTIVE');
      expect(info.tablesPresent.inactive).toBe(false);
      expect(await served(n)).toBe(before);
    }
    const next = await cliOn(2, ['convert', 'cp/v', '--mirrors', '0', '--control', ctl(2)]); // drops the intent, then converts
    expect(next.code, next.stderr).toBe(0);
    expect((await show()).metadata.pending).toBeUndefined();
    const { table } = await bothServeMetadata(15_000);
    expect(parseTable(table).kind).toBe('linear');
  }, 90_000);
  it('(e) writes on both nodes while one node converts linear -> mirror: no acknowledged write lost, legs identical', async () => {
    expect(parseTable(await served(1)).kind).toBe('linear');
    const uri = (n: number) => `nbd+unix:///v?socket=${path.join(dir, `n${n}.sock`)}`;
    const half = 4 * 1024 * 1024;
    const writers = [writer(uri(1), 0, half, 11), writer(uri(2), half, half, 12)];
    await sleep(500);
    const t0 = now();
    const r = await cliOn(1, ['convert', 'cp/v', '--mirrors', '1', '--log', 'core', '--control', ctl(1)]);
    times.clusteredConvertMs = now() - t0;
    expect(r.code, r.stderr).toBe(0);
    await sleep(500);
    for (const w of writers) await w.stop();
    for (const w of writers) expect(w.error, String(w.error)).toBeUndefined();
    expect(writers.every((w) => w.acked.length > 0)).toBe(true);
    const { table } = await bothServeMetadata(15_000);
    const spec = parseTable(table);
    if (spec.kind !== 'mirror') throw new Error('not a mirror');
    // Both nodes report every region in sync, then the legs hold the same bytes and every acked write.
    const t1 = now();
    for (;;) {
      const st = await Promise.all([1, 2].map(async (n) => (await ok<{ status: string }>(['status', 'v', '--control', ctl(n), '--json'])).status));
      const synced = st.every((x) => {
        const t = x.trim().split(/\s+/);
        const [a, b] = t[4 + Number(t[3])]!.split('/');
        return a === b;
      });
      if (synced) break;
      if (now() - t1 > 60_000) throw new Error(`not in sync: ${st.join(' | ')}`);
      await sleep(200);
    }
    times.clusteredResyncMs = now() - t1;
    const legs = await Promise.all(spec.legs.map((l) => readRange(l.device, l.offsetSectors * 512, 2 * half)));
    expect(legs[0]!.equals(legs[1]!)).toBe(true);
    expect(await checkAcked(uri(2), 0, writers[0]!.acked, writers[0]!.block, 11)).toBeGreaterThan(0);
    expect(await checkAcked(uri(1), half, writers[1]!.acked, writers[1]!.block, 12)).toBeGreaterThan(0);
  }, 120_000);
  it('(f) growing a served clustered mirror is refused naming why; metadata and both servers untouched', async () => {
    const before = { seqno: (await show()).seqno, table: await served(1) };
    const r = await cliOn(2, ['resize', 'cp/v', '--size', '12M', '--control', ctl(2), '--json']);
    expect(r.code).toBe(2);
    expect(JSON.parse(r.stdout).error).toMatchObject({ code: 'EBUSY' });
    expect(r.stderr).toMatch(/resize v: a mirror of clustered pool cp cannot grow while it may be served \(this node serves it\): its cluster log cannot change its region count online/);
    expect((await show()).seqno).toBe(before.seqno);
    for (const n of [1, 2]) expect(await served(n)).toBe(before.table);
  }, 60_000);
  it('(g) pool move of a served clustered mirror leg while both nodes write: no acknowledged write lost, legs identical', async () => {
    // Both servers have followed every earlier change (on a loaded machine a reload can still be under way).
    await bothServeMetadata(15_000);
    const spec0 = parseTable(await served(1));
    if (spec0.kind !== 'mirror') throw new Error('not a mirror');
    const source = spec0.legs[1]!.device;
    const uri = (n: number) => `nbd+unix:///v?socket=${path.join(dir, `n${n}.sock`)}`;
    const half = 4 * 1024 * 1024;
    const writers = [writer(uri(1), 0, half, 21), writer(uri(2), half, half, 22)];
    await sleep(500);
    const t0 = now();
    const r = await cliOn(1, ['pool', 'move', 'cp', source, '--control', ctl(1)]);
    times.clusteredMoveMs = now() - t0;
    if (r.code !== 0) expect(r.code, `${r.stderr}\nserved on n1: ${await served(1)}\nserved on n2: ${await served(2)}\nbefore: ${formatTable(spec0)}`).toBe(0);
    expect(r.stdout).toContain('v (online)');
    await sleep(300);
    for (const w of writers) await w.stop();
    for (const w of writers) expect(w.error, String(w.error)).toBeUndefined();
    const { table } = await bothServeMetadata(15_000);
    expect(table).not.toContain(source);
    const spec = parseTable(table);
    if (spec.kind !== 'mirror') throw new Error('not a mirror');
    for (;;) {
      const st = await Promise.all([1, 2].map(async (n) => (await ok<{ status: string }>(['status', 'v', '--control', ctl(n), '--json'])).status));
      if (st.every((x) => { const t = x.trim().split(/\s+/); const [a, b] = t[4 + Number(t[3])]!.split('/'); return a === b; })) break;
      if (now() - t0 > 90_000) throw new Error(`not in sync: ${st.join(' | ')}`);
      await sleep(200);
    }
    const legs = await Promise.all(spec.legs.map((l) => readRange(l.device, l.offsetSectors * 512, 2 * half)));
    expect(legs[0]!.equals(legs[1]!)).toBe(true);
    expect(await checkAcked(uri(2), 0, writers[0]!.acked, writers[0]!.block, 21)).toBeGreaterThan(0);
    expect(await checkAcked(uri(1), half, writers[1]!.acked, writers[1]!.block, 22)).toBeGreaterThan(0);
  }, 150_000);
});
