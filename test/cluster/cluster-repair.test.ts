// cluster-repair.test.ts — cluster-wide repair: a leg fails under load on a 3-node cluster mirror with
// handle_errors (two files and one nbdkit --filter=error leg, as cluster-leg-failure.test.ts); every node
// holds its writes; `nbd-mirror repair` is run on ONE node only: its REPAIR on the log's group makes every
// other node drop the leg too (suspend --noflush, reload, resume), held writes complete on all nodes,
// nothing acknowledged is lost, the two remaining legs are identical. Skips unless CI=true.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NbdkitLeg } from '../control/nbdkit-leg.js';
import { run } from '../helpers/run.js';
import { CLI_PATH } from '../helpers/server.js';
import { now } from './harness.js';
import { expectRepairedTwoLegs, failLegExpectHeld, Node, ServeCluster, serveTestUnavailable, sleep, writer, type EventWatch } from './serve-node.js';

const NODES = 3;
const TOKEN_MS = 1000;
const MiB = 1024 * 1024;
const SLICE_BYTES = 4 * MiB;
const SIZE_BYTES = NODES * SLICE_BYTES;
const REGION_SECTORS = 256;
const UUID = 'LVM-e2eclrepair';
const DASHBOARD_PORT = 18_378;
const DETECT_MS = 20_000;

const unavailable = await serveTestUnavailable(['nbdkit', 'cmp']);

describe.skipIf(unavailable !== undefined)(`cluster-wide repair on a 3-node cluster mirror${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  let c: ServeCluster;
  let files: string[];
  let bad: NbdkitLeg;
  let nodes: Node[] = [];
  const times: Record<string, number> = {};

  beforeAll(async () => {
    c = await ServeCluster.start({ tag: 'r', nodes: NODES, tokenMs: TOKEN_MS, sizeBytes: SIZE_BYTES, legFiles: 2, errorLeg: true });
    [files, bad] = [c.files, c.bad!];
    nodes = await c.startNodes(NODES, `0 ${SIZE_BYTES / 512} mirror userspace 4 ${UUID} clustered-core ${REGION_SECTORS} nosync 3 ${files[0]} 0 ${files[1]} 0 ${bad.uri} 0 1 handle_errors`, DASHBOARD_PORT);
  }, 120_000);

  afterAll(async () => {
    console.log(`cluster-wide repair times (ms): ${JSON.stringify(times)}`);
    await c?.teardown();
  }, 60_000);

  it('`nbd-mirror repair` on ONE node repairs every node: held writes complete everywhere, legs equal', async () => {
    const watches: EventWatch[] = await Promise.all(nodes.map((n) => n.watchEvents()));
    const ws = nodes.map((n, i) => writer(n.uri, i * SLICE_BYTES, SLICE_BYTES, 40 + i));
    await sleep(1000);
    for (const w of ws) expect(w.acked.length).toBeGreaterThan(0);
    // Every node notices the third leg failing and holds its writes (no client error).
    times.dAllNodesDetectedMs = await failLegExpectHeld(nodes, ws, () => bad.arm(), 2, DETECT_MS);
    const tRepair = now();
    const r = await run(process.execPath, [CLI_PATH, 'repair', 'volume', '--control', nodes[1]!.ctl, '--json']);
    expect(JSON.parse(r.stdout)).toMatchObject({ repaired: true });
    // The other nodes apply the REPAIR sent on the log's group: their tables lose the failed leg too.
    for (const n of nodes) {
      for (;;) {
        const raw = (await n.status().catch(() => ({ raw: '' }))).raw;
        if (raw !== '' && !raw.includes(bad.uri)) break;
        if (now() - tRepair > DETECT_MS) throw new Error(`node ${n.n} not repaired: ${raw} ${n.output.slice(-2000)}`);
        await sleep(50);
      }
    }
    times.dRepairAllNodesMs = now() - tRepair;
    // Where the time went, per node (ms after the repair command started).
    for (const [i, w] of watches.entries()) {
      const steps = w.events
        .filter((e) => /^(repair|suspend|resume|cluster-legs)/.test(e.kind))
        .map((e) => `${e.kind}@${Math.round(Date.parse(e.time) - tRepair)}`);
      console.log(`node ${i + 1}: ${steps.join(' ')}`);
    }
    for (const w of watches) w.close();
    // Writes go on on every node after the repair; in sync on two legs, acked writes read back, legs equal.
    await expectRepairedTwoLegs(nodes, ws, SLICE_BYTES, 40, files);
  });
});
