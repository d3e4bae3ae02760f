// cluster-allocate.test.ts — policy `allocate` on a 3-node cluster mirror (issue 6, leg failure in a
// cluster, with a spare): every node serves a 2-leg clustered-core mirror (a file, and an nbdkit
// --filter=error leg) with `--repair-policy allocate --spare SPARE` (the same shared spare file on every
// node). The error leg fails under writes from all nodes. The log server's node allocates the spare and
// sends one REPAIR (drop the failed leg, add the spare) on the log's group; the other nodes defer to it
// and apply it: every node ends on [file, spare]. The spare is resynced once, cluster-wide (the resync
// bytes of all nodes together = the volume), the held writes complete, every acknowledged write reads back
// through another node, and file and spare are identical. Skips unless CI=true.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NbdkitLeg } from '../control/nbdkit-leg.js';
import { run } from '../helpers/run.js';
import { now } from './harness.js';
import { checkAcked, Node, ServeCluster, serveTestUnavailable, sleep, waitAllInSync, writer, type EventWatch } from './serve-node.js';

const NODES = 3;
const TOKEN_MS = 1000;
const MiB = 1024 * 1024;
const SLICE_BYTES = 2 * MiB;
const SIZE_BYTES = NODES * SLICE_BYTES;
const REGION_SECTORS = 256;
const UUID = 'LVM-e2eclalloc';
const DASHBOARD_PORT = 18_376;
const REPAIR_MS = 30_000;

const unavailable = await serveTestUnavailable(['nbdkit', 'cmp', 'curl']);

describe.skipIf(unavailable !== undefined)(`repair policy allocate on a 3-node cluster mirror${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  let c: ServeCluster;
  let file: string;
  let spare: string;
  let bad: NbdkitLeg;
  let nodes: Node[] = [];
  const watches: EventWatch[] = [];
  const times: Record<string, number> = {};

  beforeAll(async () => {
    c = await ServeCluster.start({ tag: 'a', nodes: NODES, tokenMs: TOKEN_MS, sizeBytes: SIZE_BYTES, legFiles: 1, errorLeg: true });
    [file, bad] = [c.files[0]!, c.bad!];
    spare = path.join(c.dir, 'spare.img');
    await run('truncate', ['-s', String(SIZE_BYTES), spare]);
    const table = `0 ${SIZE_BYTES / 512} mirror userspace 4 ${UUID} clustered-core ${REGION_SECTORS} nosync 2 ${file} 0 ${bad.uri} 0 1 handle_errors`;
    nodes = await c.startNodes(NODES, table, DASHBOARD_PORT, ['--repair-policy', 'allocate', '--spare', spare]); // node 1 first: the log server
    for (const n of nodes) watches.push(await n.watchEvents());
  }, 120_000);

  afterAll(async () => {
    console.log(`cluster allocate times (ms): ${JSON.stringify(times)}`);
    for (const w of watches) w.close();
    await c?.teardown();
  }, 60_000);

  it('the server allocates the spare for every node; it is resynced once cluster-wide; nothing acked is lost', async () => {
    const ws = nodes.map((n, i) => writer(n.uri, i * SLICE_BYTES, SLICE_BYTES, 60 + i));
    await sleep(800);
    for (const w of ws) expect(w.acked.length).toBeGreaterThan(0);
    const before = await Promise.all(nodes.map((n) => n.resyncBytes()));
    const tFail = now();
    await bad.arm();
    // Every node ends on [file, spare] (its own policy on node 1, node 1's REPAIR on the others).
    for (const n of nodes) {
      for (;;) {
        const raw = (await n.status().catch(() => ({ raw: '' }))).raw;
        if (raw.includes(spare) && !raw.includes(bad.uri)) break;
        if (now() - tFail > REPAIR_MS) throw new Error(`node ${n.n} not repaired: ${raw}\n${watches[n.n - 1]!.events.map((e) => `${e.kind} ${JSON.stringify(e.data)}`).join('\n')}`);
        await sleep(50);
      }
    }
    times.allNodesOnSpareMs = now() - tFail;
    // One allocation, by the log server; the others applied its REPAIR.
    const sent = watches.map((w) => w.events.filter((e) => e.kind === 'repair-cluster-sent'));
    expect(sent.map((s) => s.length)).toEqual([1, 0, 0]);
    expect(sent[0]![0]!.data).toMatchObject({ removed: [bad.uri], added: [spare] });
    for (const w of watches.slice(1)) {
      const done = await w.waitFor('repair-done', () => true, REPAIR_MS);
      expect(done).toMatchObject({ removed: [bad.uri], added: [spare], trigger: 'cluster node 1' });
    }
    const after = ws.map((w) => w.acked.length);
    await sleep(1000);
    ws.forEach((w, i) => expect(w.acked.length, `node ${i + 1} writes after the repair`).toBeGreaterThan(after[i]!));
    for (const w of ws) await w.stop();
    for (const w of ws) expect(w.error).toBeUndefined();
    times.inSyncAfterFailMs = (await waitAllInSync(nodes, 60_000)) + (now() - tFail);
    const copied = (await Promise.all(nodes.map((n) => n.resyncBytes()))).map((b, i) => b - before[i]!);
    times.resyncBytesTotal = copied.reduce((a, b) => a + b, 0);
    expect(times.resyncBytesTotal, `resync bytes per node ${copied.join(', ')}`).toBe(SIZE_BYTES); // the spare, once
    for (let i = 0; i < NODES; i++) await checkAcked(nodes[(i + 1) % NODES]!.uri, i * SLICE_BYTES, ws[i]!.acked, ws[i]!.block, 60 + i);
    await run('cmp', [file, spare]);
  });
});
