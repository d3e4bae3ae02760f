// cluster-leg-failure.test.ts — (d) a leg fails under load on a 3-node cluster mirror with handle_errors:
// `nbd-mirror serve` in each node's namespace over the same 3 legs (two files and one nbdkit --filter=error
// leg on a unix socket, armed by a trigger file). Every node's writers keep going; when the leg fails, each
// node marks it failed and holds its writes (no client error); `nbd-mirror repair` on every node drops the
// leg (in-place reload: the cluster log is kept; the first repair also reaches the other nodes, see
// cluster-repair.test.ts), held writes complete, nothing acknowledged is lost and
// the two remaining legs are identical. Detection and repair times are printed.
// Skips where it cannot run unless CI=true.
import type { NbdkitLeg } from '../control/nbdkit-leg.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../helpers/run.js';
import { CLI_PATH } from '../helpers/server.js';
import { now } from './harness.js';
import { expectRepairedTwoLegs, failLegExpectHeld, Node, ServeCluster, serveTestUnavailable, sleep, writer } from './serve-node.js';

const NODES = 3;
const TOKEN_MS = 1000;
const MiB = 1024 * 1024;
const SLICE_BYTES = 4 * MiB;
const SIZE_BYTES = NODES * SLICE_BYTES;
const REGION_SECTORS = 256;
const UUID = 'LVM-e2elegfail';
const DASHBOARD_PORT = 18_378;
const DETECT_MS = 20_000;

const unavailable = await serveTestUnavailable(['nbdkit', 'cmp']);

describe.skipIf(unavailable !== undefined)(`leg failure on a 3-node cluster mirror${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  let c: ServeCluster;
  let files: string[];
  let bad: NbdkitLeg;
  let nodes: Node[] = [];
  const times: Record<string, number> = {};

  beforeAll(async () => {
    c = await ServeCluster.start({ tag: 'l', nodes: NODES, tokenMs: TOKEN_MS, sizeBytes: SIZE_BYTES, legFiles: 2, errorLeg: true });
    files = c.files;
    bad = c.bad!;
    const table = `0 ${SIZE_BYTES / 512} mirror userspace 4 ${UUID} clustered-core ${REGION_SECTORS} nosync 3 ${files[0]} 0 ${files[1]} 0 ${bad.uri} 0 1 handle_errors`;
    nodes = await c.startNodes(NODES, table, DASHBOARD_PORT);
  }, 120_000);

  afterAll(async () => {
    console.log(`cluster leg-failure times (ms): ${JSON.stringify(times)}`);
    await c?.teardown();
  }, 60_000);

  it('(d) every node holds writes on the failed leg; repair on each node completes them, no client error', async () => {
    const ws = nodes.map((n, i) => writer(n.uri, i * SLICE_BYTES, SLICE_BYTES, 40 + i));
    await sleep(1000);
    for (const w of ws) expect(w.acked.length).toBeGreaterThan(0);
    // Every node notices the third leg failing and holds its writes (no client error).
    times.dAllNodesDetectedMs = await failLegExpectHeld(nodes, ws, () => bad.arm(), 2, DETECT_MS);
    const tRepair = now();
    // The first repair is also sent to the other nodes (cluster-wide repair): by the time the repair runs
    // there, the leg may already be gone (nothing to repair); either way it must not be in the table after.
    for (const [i, n] of nodes.entries()) {
      const r = await run(process.execPath, [CLI_PATH, 'repair', 'volume', '--control', n.ctl, '--json']);
      const out = JSON.parse(r.stdout) as { repaired: boolean; reason?: string };
      if (i === 0 || out.repaired) expect(out).toMatchObject({ repaired: true });
      else expect(out.reason).toMatch(/no failed leg/);
      expect((await n.status()).raw).not.toContain(bad.uri);
    }
    times.dRepairAllNodesMs = now() - tRepair;
    // Writes go on on every node after the repair; in sync on two legs, acked writes read back, legs equal.
    await expectRepairedTwoLegs(nodes, ws, SLICE_BYTES, 40, files);
  });
});
