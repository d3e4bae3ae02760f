// cluster-disk-serve.test.ts — end to end: 3 namespaced corosync nodes serving a clustered-disk table (one
// shared log file, two shared leg files). After the initial full resync, every node writes its slice; then
// the WHOLE cluster is killed (-9) mid-write and restarted: only regions that were dirty are resynced (a
// few, not the volume), every acknowledged write reads back, legs identical. Skips unless CI=true.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../helpers/run.js';
import { now } from './harness.js';
import { checkAcked, Node, ServeCluster, serveTestUnavailable, sleep, waitAllInSync, writer } from './serve-node.js';

const NODES = 3;
const TOKEN_MS = 1000;
const MiB = 1024 * 1024;
const SLICE_BYTES = 8 * MiB;
const SIZE_BYTES = NODES * SLICE_BYTES;
const REGION_SECTORS = 256; // 128 KiB
const REGION_BYTES = REGION_SECTORS * 512;
const UUID = 'LVM-e2eclusterdisk';
const DASHBOARD_PORT = 18_378;

const unavailable = await serveTestUnavailable(['curl', 'cmp']);

describe.skipIf(unavailable !== undefined)(`clustered-disk on a 3-node corosync cluster${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  let c: ServeCluster;
  let legs: string[];
  let nodes: Node[] = [];
  const figures: Record<string, number> = {};

  beforeAll(async () => {
    c = await ServeCluster.start({ tag: 'd', nodes: NODES, tokenMs: TOKEN_MS, sizeBytes: SIZE_BYTES, legFiles: 2 });
    legs = c.files;
    const log = path.join(c.dir, 'log.img');
    await run('truncate', ['-s', String(MiB), log]);
    // No sync argument: the log device decides (a new one: everything out of sync once).
    const table = `0 ${SIZE_BYTES / 512} mirror userspace 4 ${UUID} clustered-disk ${log} ${REGION_SECTORS} 2 ${legs[0]} 0 ${legs[1]} 0 1 handle_errors`;
    nodes = await c.startNodes(NODES, table, DASHBOARD_PORT);
  }, 120_000);

  afterAll(async () => {
    console.log(`clustered-disk e2e figures: ${JSON.stringify(figures)}`);
    await c?.teardown();
  }, 60_000);

  it('a whole-cluster kill -9 and restart resyncs only the regions that were dirty', async () => {
    figures.initialSyncMs = await waitAllInSync(nodes, 60_000);
    figures.initialResyncBytes = (await Promise.all(nodes.map((n) => n.resyncBytes()))).reduce((a, b) => a + b, 0);
    expect(figures.initialResyncBytes).toBe(SIZE_BYTES); // new log device: one full resync

    const ws = nodes.map((n, i) => writer(n.uri, i * SLICE_BYTES, SLICE_BYTES, 50 + i));
    // A few acknowledged writes per node (each in a new region), then the whole cluster dies.
    const tw = now();
    while (ws.some((w) => w.acked.length < 3)) {
      if (now() - tw > 30_000) throw new Error(`writers stuck: ${ws.map((w) => w.acked.length)}`);
      await sleep(10);
    }
    await Promise.all(nodes.map((n) => n.kill9()));
    for (const w of ws) await w.stop();

    const t0 = now();
    for (const n of nodes) await n.start();
    figures.restartInSyncMs = (await waitAllInSync(nodes, 60_000)) + (now() - t0);
    const resynced = (await Promise.all(nodes.map((n) => n.resyncBytes()))).reduce((a, b) => a + b, 0);
    figures.restartResyncBytes = resynced;
    // Only regions the writers touched can be dirty (acked blocks, plus one in flight per writer); the rest
    // of the volume was recorded clean on the log device and is not copied.
    const touched = new Set<number>();
    ws.forEach((w, i) => w.acked.forEach((b) => touched.add(Math.floor((i * SLICE_BYTES + b * w.block) / REGION_BYTES))));
    figures.regionsTouched = touched.size;
    expect(resynced % REGION_BYTES).toBe(0);
    expect(resynced).toBeLessThanOrEqual((touched.size + NODES) * REGION_BYTES);
    expect(resynced).toBeLessThanOrEqual(SIZE_BYTES / 4);
    for (const [i, w] of ws.entries()) figures[`acked${i}`] = await checkAcked(nodes[0]!.uri, i * SLICE_BYTES, w.acked, w.block, 50 + i);
    await run('cmp', [legs[0]!, legs[1]!]);
  }, 180_000);
});
