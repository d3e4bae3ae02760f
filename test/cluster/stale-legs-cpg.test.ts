// stale-legs-cpg.test.ts — stale-leg protection with `nbd-mirror serve` on 3 namespaced corosync nodes
// (no handle_errors: writes go on when a leg fails).
//  (a) A leg fails on ONE node's path: the leg is an nbdkit (error filter) that each node runs inside its
//      own namespace on 127.0.0.1 over the same file, so the same leg name reaches a per-node path; only
//      node 2's is armed. Node 2's writes that missed the leg are acknowledged only once every node failed
//      it: right after each acknowledgement, reads through nodes 1 and 3 (balanced over the legs where a
//      region is in sync) return the new data every time, every node shows the leg failed (D), and node 1's
//      own writes no longer reach it. Before, only node 2 knew, and the others read the stale leg.
//  (b) clustered-disk, whole-cluster crash: the source leg (leg 0, an nbdkit error leg shared by all nodes)
//      fails on every node while writers on all 3 nodes go on; then every node is killed -9. The log file
//      records leg 0 stale and leg 1 up to date (disk.ts's records: a single-node DiskLog activated on a
//      copy reads the same), the restart with leg 0 healthy again copies the WHOLE volume from leg 1 onto
//      leg 0 (never the other way), every acknowledged write reads back through two nodes, the legs end
//      identical and both are recorded up to date again.
// Skips where it cannot run unless CI=true.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { copyFile, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/nbd/client/client.js';
import { FileLeg } from '../../src/mirror/legs/file.js';
import { DISK_LOG_LEGS_MAGIC, DiskLog, diskLogHeaderLayout, fnv1a32 } from '../../src/mirror/log/disk.js';
import { run } from '../helpers/run.js';
import { startNbdkitErrorLeg, type NbdkitLeg } from '../control/nbdkit-leg.js';
import { Harness, now } from './harness.js';
import { checkAcked, Node, pattern, serveTestUnavailable, sleep, waitAllInSync, within, writer } from './serve-node.js';

const NODES = 3;
const TOKEN_MS = 1000;
const KiB = 1024;
const MiB = 1024 * KiB;
const SLICE_BYTES = 2 * MiB;
const SIZE_BYTES = NODES * SLICE_BYTES;
const REGION_SECTORS = 256; // 128 KiB
const REGION_BYTES = REGION_SECTORS * 512;
const DASHBOARD_PORT = 18_379;
const NBDKIT_PORT = 10_809; // inside each node's namespace (its own loopback)
const DETECT_MS = 20_000;

const unavailable = await serveTestUnavailable(['nbdkit', 'cmp', 'curl']);

/** nbdkit (error filter over `file`) inside node n's namespace on 127.0.0.1:NBDKIT_PORT; errors while trigger exists. */
async function startNodeNbdkit(h: Harness, n: number, file: string, dir: string): Promise<{ trigger: string; stop: () => Promise<void> }> {
  const pidFile = path.join(dir, `nbdkit-n${n}.pid`);
  const trigger = path.join(dir, `nbdkit-n${n}.TRIGGER`);
  const args = ['netns', 'exec', `${h.prefix}-n${n}`, 'nbdkit', '-f', '-i', '127.0.0.1', '-p', String(NBDKIT_PORT), '-P', pidFile, '--filter=error'];
  args.push('file', file, 'error-rate=100%', `error-file=${trigger}`, 'error=EIO');
  const child: ChildProcess = spawn('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-4096)));
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  const t0 = now();
  while (!(existsSync(pidFile) && (await readFile(pidFile, 'utf8')).trim() === String(child.pid))) {
    if (child.exitCode !== null || now() - t0 > 10_000) {
      child.kill('SIGKILL');
      throw new Error(`nbdkit in node ${n} did not start: ${stderr}`);
    }
    await sleep(20);
  }
  return {
    trigger,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await within(exited, 5_000, `nbdkit node ${n}`).catch(() => child.kill('SIGKILL'));
      }
    },
  };
}

/** The health char of leg i in a dm status line. */
function legHealth(raw: string, i: number): string {
  const t = raw.trim().split(/\s+/);
  return t[6 + Number(t[3])]![i]!;
}

async function readVia(uri: string, offsetBytes: number, bytes: number, times: number): Promise<Buffer[]> {
  const c = await NbdClient.connect(uri);
  try {
    const out: Buffer[] = [];
    for (let i = 0; i < times; i++) {
      const b = Buffer.alloc(bytes);
      await c.read(b, offsetBytes);
      out.push(b);
    }
    return out;
  } finally {
    await c.close();
  }
}

/** Leg record flags (disk.ts: bit 0 up to date, bit 1 catching up) for each device, from the log file. */
async function recordedFlags(logFile: string, devices: readonly string[]): Promise<(number | undefined)[]> {
  const h = diskLogHeaderLayout.decode(await readFile(logFile), 0);
  expect(h.legsMagic).toBe(DISK_LOG_LEGS_MAGIC);
  return devices.map((d) => h.legs.slice(0, h.legCount).find((l) => l.nameHash === fnv1a32(d))?.flags);
}

describe.skipIf(unavailable !== undefined)(`stale legs on a 3-node cluster mirror${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  let h: Harness;
  const nodes: Node[] = [];
  const stops: Array<() => Promise<void>> = [];
  const figures: Record<string, number> = {};

  beforeAll(async () => {
    h = new Harness('sl');
    await h.start(NODES, TOKEN_MS);
  }, 120_000);

  afterEach(async () => {
    // Each case's servers and nbdkits go (the next case reuses the namespaces and the dashboard port).
    for (const n of nodes.splice(0)) await n.kill9().catch(() => undefined);
    for (const s of stops.splice(0)) await s().catch(() => undefined);
  }, 60_000);

  afterAll(async () => {
    console.log(`stale-leg figures: ${JSON.stringify(figures)}`);
    await h?.teardown();
  }, 60_000);

  it('(a) a leg failing on one node path is failed on every node before the write that missed it is acknowledged', async () => {
    const dir = path.join(h.runDir, 'a');
    mkdirSync(dir);
    const leg0 = path.join(dir, 'leg0.img');
    const leg1 = path.join(dir, 'leg1.img');
    for (const f of [leg0, leg1]) await run('truncate', ['-s', String(SIZE_BYTES), f]);
    const paths = [];
    for (let n = 1; n <= NODES; n++) {
      const p = await startNodeNbdkit(h, n, leg1, dir);
      stops.push(p.stop);
      paths.push(p);
    }
    const uri1 = `nbd://127.0.0.1:${NBDKIT_PORT}/`;
    const table = `0 ${SIZE_BYTES / 512} mirror userspace 4 LVM-e2estalepath clustered-core ${REGION_SECTORS} nosync 2 ${leg0} 0 ${uri1} 0`;
    const ns = [1, 2, 3].map((i) => new Node(h, i, dir, table, DASHBOARD_PORT));
    nodes.push(...ns);
    for (const n of ns) await n.start();
    const [n1, n2, n3] = ns as [Node, Node, Node];
    const BLOCK = 64 * KiB;
    const at = (r: number) => r * REGION_BYTES;
    const write = async (n: Node, tag: number, off: number) => {
      const c = await NbdClient.connect(n.uri);
      try {
        await c.write(pattern(tag, BLOCK), off, { fua: false });
      } finally {
        await c.close();
      }
    };
    for (const r of [3, 7, 9, 11]) await write(n1, r, at(r));

    await writeFile(paths[1]!.trigger, ''); // node 2 loses its path to leg 1
    const t0 = now();
    await write(n2, 103, at(3)); // fails on leg 1 there
    figures.aWriteMissingLegAckMs = now() - t0;
    // Acknowledged: every node has failed leg 1 already (the others would balance reads onto it).
    for (const n of ns) expect(legHealth((await n.status()).raw, 1), `node ${n.n}`).toBe('D');
    for (const n of [n1, n3]) for (const b of await readVia(n.uri, at(3), BLOCK, 8)) expect(b.equals(pattern(103, BLOCK))).toBe(true);
    // In-sync regions written by node 2 to leg 0 alone: nodes 1 and 3 read the new data every time.
    for (const r of [7, 11]) {
      await write(n2, 100 + r, at(r));
      for (const n of [n1, n3]) for (const b of await readVia(n.uri, at(r), BLOCK, 8)) expect(b.equals(pattern(100 + r, BLOCK)), `region ${r} via node ${n.n}`).toBe(true);
    }
    // Node 1 no longer writes leg 1 either (its path works: nothing but the failure stops it).
    await write(n1, 109, at(9));
    const onLeg1 = Buffer.alloc(BLOCK);
    const fd = await import('node:fs/promises').then((f) => f.open(leg1, 'r'));
    await fd.read(onLeg1, 0, BLOCK, at(9));
    await fd.close();
    expect(onLeg1.equals(pattern(9, BLOCK))).toBe(true);
    for (const b of await readVia(n3.uri, at(9), BLOCK, 4)) expect(b.equals(pattern(109, BLOCK))).toBe(true);
  }, 120_000);

  it('(b) clustered-disk: after a whole-cluster crash the failed source leg is resynced in full from the other one', async () => {
    const dir = path.join(h.runDir, 'b');
    mkdirSync(dir);
    const bad: NbdkitLeg = await startNbdkitErrorLeg(dir, 'bad', SIZE_BYTES);
    stops.push(() => bad.stop());
    const good = path.join(dir, 'good.img');
    const log = path.join(dir, 'log.img');
    await run('truncate', ['-s', String(SIZE_BYTES), good]);
    await run('truncate', ['-s', String(MiB), log]);
    const devices = [bad.uri, good];
    const table = `0 ${SIZE_BYTES / 512} mirror userspace 4 LVM-e2estaledisk clustered-disk ${log} ${REGION_SECTORS} 2 ${bad.uri} 0 ${good} 0`;
    const ns = [1, 2, 3].map((i) => new Node(h, i, dir, table, DASHBOARD_PORT));
    nodes.push(...ns);
    for (const n of ns) await n.start();
    await waitAllInSync(ns, 60_000); // new log device: one full resync, leg 0 the source
    const resyncBefore = (await Promise.all(ns.map((n) => n.resyncBytes()))).reduce((a, b) => a + b, 0);
    expect(resyncBefore).toBe(SIZE_BYTES);

    const ws = ns.map((n, i) => writer(n.uri, i * SLICE_BYTES, SLICE_BYTES, 70 + i));
    await sleep(500);
    const tFail = now();
    await bad.arm();
    for (const n of ns) {
      while (legHealth((await n.status()).raw, 0) === 'A') {
        if (now() - tFail > DETECT_MS) throw new Error(`node ${n.n} did not fail leg 0`);
        await sleep(50);
      }
    }
    figures.bAllNodesFailedMs = now() - tFail;
    const afterFail = ws.map((w) => w.acked.length);
    const tw = now();
    while (ws.some((w, i) => w.acked.length < afterFail[i]! + 5)) {
      if (now() - tw > 30_000) throw new Error(`writers stuck after the failure: ${ws.map((w) => w.acked.length)}`);
      await sleep(20);
    }
    await Promise.all(ns.map((n) => n.kill9()));
    for (const w of ws) await w.stop();
    figures.bAckedAfterFailure = ws.reduce((a, w, i) => a + w.acked.length - afterFail[i]!, 0);

    // On the log file: leg 0 stale (not up to date, not catching up), leg 1 up to date; the single-node log
    // reads the same (activated on a copy, which it rewrites).
    expect(await recordedFlags(log, devices)).toEqual([0, 1]);
    const copy = path.join(dir, 'log-copy.img');
    await copyFile(log, copy);
    const single = new DiskLog({ device: await FileLeg.open(copy, { offsetBytes: 0 }), regionSizeBytes: REGION_BYTES, lengthBytes: SIZE_BYTES, sync: 'default' });
    const states = await single.resume({ legDevices: devices, flushDataLegs: async () => undefined });
    expect(states.map((s) => s.upToDate)).toEqual([false, true]);
    await single.close();
    await rm(copy);

    await bad.disarm();
    const t0 = now();
    for (const n of ns) await n.start();
    figures.bRestartInSyncMs = (await waitAllInSync(ns, 60_000)) + (now() - t0);
    const resynced = (await Promise.all(ns.map((n) => n.resyncBytes()))).reduce((a, b) => a + b, 0);
    figures.bRestartResyncBytes = resynced;
    expect(resynced).toBe(SIZE_BYTES); // every region once, onto the stale leg
    for (const [i, w] of ws.entries()) {
      figures[`bAcked${i}`] = await checkAcked(ns[(i + 1) % NODES]!.uri, i * SLICE_BYTES, w.acked, w.block, 70 + i);
      await checkAcked(ns[(i + 2) % NODES]!.uri, i * SLICE_BYTES, w.acked, w.block, 70 + i);
    }
    await run('cmp', [bad.file, good]);
    // Both legs up to date again on the log file (written lazily by the log server).
    const t1 = now();
    while (JSON.stringify(await recordedFlags(log, devices)) !== '[1,1]') {
      if (now() - t1 > 10_000) throw new Error(`leg records not up to date: ${JSON.stringify(await recordedFlags(log, devices))}`);
      await sleep(100);
    }
  }, 180_000);
});
