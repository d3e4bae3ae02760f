// cluster-serve.test.ts — end to end: 3 namespaced corosync nodes, the real `nbd-mirror serve` CLI in
// each node's namespace serving the same cluster table (userspace clustered-core) over the same shared
// leg files, each node's export on its own unix socket (filesystem sockets work across net namespaces).
// Each node writes its own slice (disjoint regions). Checks, in order on one cluster:
//  (a) kill -9 of a node that is not the log server mid-write: the other nodes' fio verify passes, the
//      dead node's dirty regions, exactly, are resynced: both survivors report the same regions left out of
//      sync (cluster-node-left on their event streams, all inside its slice), the same regions recovered
//      (cluster-node-resynced), and their engines copied exactly those bytes between them; every write it
//      had acknowledged is read back through another node, legs identical (cmp);
//  (b) kill -9 of the log server: I/O through the survivors resumes (takeover time recorded), legs equal;
//  (c) a node restarts and rejoins: it gets the state (in sync) and its writes are seen by others;
//  (e) a partition isolates one node: it stops acknowledging writes to new regions; the majority goes on.
// Times are printed (detection/takeover/resync). Skips where it cannot run unless CI=true.
import { writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/nbd/client/client.js';
import { run } from '../helpers/run.js';
import { type Harness, now } from './harness.js';
import { checkAcked, expectDepartureResynced, Node, pattern, ServeCluster, serveTestUnavailable, sleep, waitAllInSync, within, writer } from './serve-node.js';

const NODES = 3;
const TOKEN_MS = 1000;
const MiB = 1024 * 1024;
const SLICE_BYTES = 8 * MiB;
const SIZE_BYTES = NODES * SLICE_BYTES;
const REGION_SECTORS = 256; // 128 KiB
const REGION_BYTES = REGION_SECTORS * 512;
const UUID = 'LVM-e2ecluster';
/** Each node's dashboard (/metrics) on 127.0.0.1 inside its own namespace (namespaces do not share it). */
const DASHBOARD_PORT = 18_377;

const unavailable = await serveTestUnavailable(['fio', 'curl', 'cmp']);

function fioJob(uri: string, offsetBytes: number, extra: string[] = []): string {
  return [
    '[global]',
    'ioengine=nbd',
    `uri=${uri}`,
    'rw=randwrite',
    'bs=4k-64k',
    'iodepth=8',
    `offset=${offsetBytes}`,
    `size=${SLICE_BYTES}`,
    'verify=crc32c',
    'verify_fatal=1',
    'verify_state_save=0',
    'do_verify=1',
    ...extra,
    '',
    '[verify]',
    '',
  ].join('\n');
}

async function fioVerify(dir: string, label: string, uri: string, offsetBytes: number): Promise<{ errors: number; written: number; read: number }> {
  const job = path.join(dir, `${label}.fio`);
  writeFileSync(job, fioJob(uri, offsetBytes));
  await run('fio', ['--output-format=json', `--output=${job}.json`, job], { timeoutMs: 90_000, cwd: dir });
  const rep = JSON.parse(await readFile(`${job}.json`, 'utf8')) as { jobs: { error: number; write: { io_bytes: number }; read: { io_bytes: number } }[] };
  const j = rep.jobs[0]!;
  return { errors: j.error, written: j.write.io_bytes, read: j.read.io_bytes };
}

describe.skipIf(unavailable !== undefined)(`nbd-mirror serve on a 3-node corosync cluster${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  let c: ServeCluster;
  let h: Harness;
  let dir: string;
  let legs: string[];
  let nodes: Node[] = [];
  const times: Record<string, number> = {};

  beforeAll(async () => {
    c = await ServeCluster.start({ tag: 's', nodes: NODES, tokenMs: TOKEN_MS, sizeBytes: SIZE_BYTES, legFiles: 2 });
    [h, dir, legs] = [c.h, c.dir, c.files];
    times.corosyncUpMs = c.corosyncUpMs;
    const table = `0 ${SIZE_BYTES / 512} mirror userspace 4 ${UUID} clustered-core ${REGION_SECTORS} nosync 2 ${legs[0]} 0 ${legs[1]} 0 1 handle_errors`;
    nodes = c.addNodes(NODES, table, DASHBOARD_PORT);
    // Node 1 first (it becomes the log server: lowest node id), then the others join and get a checkpoint.
    times.serveReadyMs = await nodes[0]!.start();
    for (const n of nodes.slice(1)) await n.start();
  }, 120_000);

  afterAll(async () => {
    console.log(`cluster e2e times (ms): ${JSON.stringify(times)}`);
    await c?.teardown();
  }, 60_000);

  it('(a) kill -9 of a non-server node mid-write: only its dirty regions are resynced, nothing acked is lost, legs equal', async () => {
    const n3 = nodes[2]!;
    const w3 = writer(n3.uri, 2 * SLICE_BYTES, SLICE_BYTES, 3);
    const fio1 = fioVerify(dir, 'a1', nodes[0]!.uri, 0);
    const fio2 = fioVerify(dir, 'a2', nodes[1]!.uri, SLICE_BYTES);
    await sleep(1500);
    expect(w3.acked.length).toBeGreaterThan(0);
    const befores = await Promise.all(nodes.slice(0, 2).map((n) => n.resyncBytes()));
    const before = befores.reduce((a, b) => a + b, 0);
    const watches = await Promise.all(nodes.slice(0, 2).map((n) => n.watchEvents()));
    const tKill = now();
    await n3.kill9();
    await w3.stop();
    const [r1, r2] = await Promise.all([fio1, fio2]);
    expect(r1.errors).toBe(0);
    expect(r2.errors).toBe(0);
    expect(r1.read).toBe(r1.written);
    expect(r2.read).toBe(r2.written);
    times.aResyncDoneAfterKillMs = (await waitAllInSync(nodes.slice(0, 2), 30_000)) + (now() - tKill);
    const after = (await Promise.all(nodes.slice(0, 2).map((n) => n.resyncBytes()))).reduce((a, b) => a + b, 0);
    const resynced = after - before;
    times.aResyncBytes = resynced;
    // The dead node's marks were purged and those regions recovered: some, a whole number of regions, at
    // most its slice (the survivors' own regions stay in sync, nosync table: nothing else is out of sync).
    expect(resynced).toBeGreaterThan(0);
    expect(resynced % REGION_BYTES).toBe(0);
    expect(resynced).toBeLessThanOrEqual(SLICE_BYTES);
    // Exactly node 3's marks: the same set on both survivors, recovered once, copied byte for byte.
    try {
      const dep = await expectDepartureResynced(
        nodes.slice(0, 2).map((node, i) => ({ node, watch: watches[i]!, resyncBefore: befores[i]! })),
        3,
      );
      expect(dep.bytes).toBe(resynced);
      for (const r of dep.regions) expect(Math.floor((r * REGION_BYTES) / SLICE_BYTES), `region ${r} in node 3's slice`).toBe(2);
      times.aDepartureRegions = dep.regions.length;
      times.aDepartureResyncMs = dep.resyncMs;
    } finally {
      for (const w of watches) w.close();
    }
    times.aAckedBlocksChecked = await checkAcked(nodes[0]!.uri, 2 * SLICE_BYTES, w3.acked, w3.block, 3);
    await run('cmp', [legs[0]!, legs[1]!]);
  });

  it('(b) kill -9 of the log server: I/O through the survivors resumes, legs equal', async () => {
    const [n1, n2] = nodes;
    const w2 = writer(n2!.uri, SLICE_BYTES, SLICE_BYTES, 22);
    await sleep(800);
    const tKill = now();
    await n1!.kill9();
    // Takeover = first write+flush to a region not marked before, through node 2, after the kill.
    const c = await NbdClient.connect(n2!.uri);
    let fresh = 0;
    for (;;) {
      const off = 2 * SLICE_BYTES + (fresh++ % 64) * REGION_BYTES;
      try {
        await within(
          (async () => {
            await c.write(pattern(999, 4096), off, { fua: false });
            await c.flush();
          })(),
          5000,
          'write after server kill',
        );
        break;
      } catch (e) {
        if (now() - tKill > 20_000) throw e;
      }
    }
    times.bTakeoverWriteMs = now() - tKill;
    await c.close();
    await w2.stop();
    expect(w2.error).toBeUndefined();
    times.bInSyncAfterKillMs = (await waitAllInSync([n2!], 30_000)) + (now() - tKill);
    await checkAcked(n2!.uri, SLICE_BYTES, w2.acked, w2.block, 22);
    await run('cmp', [legs[0]!, legs[1]!]);
  });

  it('(c) restarted nodes rejoin, get the state and serve consistent data', async () => {
    const [n1, n2, n3] = nodes;
    times.cRejoinReadyMs = await n1!.start();
    await n3!.start();
    await waitAllInSync(nodes, 30_000);
    const c1 = await NbdClient.connect(n1!.uri);
    await c1.write(pattern(4242, 65536), 3 * MiB, { fua: true });
    await c1.close();
    const c3 = await NbdClient.connect(n3!.uri);
    const got = Buffer.alloc(65536);
    await c3.read(got, 3 * MiB);
    await c3.close();
    expect(got.equals(pattern(4242, 65536))).toBe(true);
    const r = await fioVerify(dir, 'c2', n2!.uri, SLICE_BYTES);
    expect(r.errors).toBe(0);
    await run('cmp', [legs[0]!, legs[1]!]);
  });

  it('(e) a partition isolates a node: it stops acknowledging writes, the majority goes on', async () => {
    const [n1, n2, n3] = nodes;
    const c3 = await NbdClient.connect(n3!.uri);
    // A hot region on node 3: written continuously from before the split, so its mark stays durable and
    // its writes take the fast path (no log flush per write).
    const markedOff = 2 * SLICE_BYTES + 20 * REGION_BYTES;
    const hotAcks: number[] = [];
    let hotStop = false;
    const hot = (async () => {
      const c = await NbdClient.connect(n3!.uri);
      while (!hotStop) {
        await c.write(pattern(76, 4096), markedOff, { fua: false });
        hotAcks.push(now());
        await sleep(20);
      }
    })().catch(() => undefined);
    await sleep(300);
    expect(hotAcks.length).toBeGreaterThan(0);
    const tCut = now();
    await h.sh('partition', '3');
    try {
      // Writes to regions node 3 has not marked need a log flush, which the inquorate node refuses (or
      // cannot complete): none may be acknowledged.
      let acked = 0;
      const attempts = [0, 1, 2, 3].map(async (k) => {
        const off = 2 * SLICE_BYTES + (32 + k * 8) * REGION_BYTES;
        await c3.write(pattern(77 + k, 4096), off, { fua: true });
        acked++;
      });
      const settled = await Promise.race([Promise.allSettled(attempts), sleep(6 * TOKEN_MS)]);
      expect(acked).toBe(0);
      if (settled) times.eMinorityRejectedMs = now() - tCut;
      // Once node 3 knows it is cut off (corosync detection: token + consensus, ~3.6 s at token 1000), not
      // even a write to the region it keeps dirty is acknowledged: the majority purged its marks and may be
      // recovering that region.
      await sleep(Math.max(0, tCut + 8 * TOKEN_MS - now()));
      const lastHotAck = hotAcks.at(-1)!;
      times.eMinorityLastAckAfterCutMs = lastHotAck - tCut;
      expect(lastHotAck - tCut).toBeLessThan(6 * TOKEN_MS);
      hotStop = true;
      void hot;
      // The majority keeps acknowledging (after corosync noticed the loss of node 3).
      const c1 = await NbdClient.connect(n1!.uri);
      const t1 = now();
      await within(c1.write(pattern(5, 4096), 40 * REGION_BYTES, { fua: true }), 20_000, 'majority write');
      times.eMajorityWriteMs = now() - t1;
      await c1.close();
      void n2;
    } finally {
      await h.sh('heal');
      c3.close().catch(() => undefined);
    }
  });
});
