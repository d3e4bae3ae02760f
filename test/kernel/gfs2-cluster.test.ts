// Issue 8, test 5: GFS2 on the cluster mirror. Three `nbd-mirror serve` nodes (each in its own network
// namespace with its own corosync, scripts/cluster/cluster.sh; the third keeps the nbd-mirror cluster
// quorate when one dies) serve the same userspace clustered-core mirror over the same two leg files. Two
// qemu guests form a GFS2 cluster of their own (corosync + dlm_controld over a point-to-point link) and
// each attaches to a different nbd-mirror node (a TCP port on 127.0.0.1 piped to that node's unix socket).
// Node 1 makes the filesystem, both mount, write and verify each other's files (as in gfs2.test.ts); then
// guest 2 and its nbd-mirror node are killed together (SIGKILL) while guest 2 writes. Guest 1 must see it
// leave, get its DLM recovered (fencing disabled in dlm.conf) and node 2's journal replayed, and keep
// working (new files, node 2's earlier files intact). Host: the survivors resync exactly node 2's dirty
// regions: nbd-mirror nodes 1 and 3 both report (cluster-node-left on their control event streams) the
// same set of regions that went out of sync because node 2 left — every region node 2 held a mark on that
// was in sync, including regions node 1 had marked too (node 2 may have written them on one leg only) —
// and (cluster-node-resynced) the same set recovered since; their recoveredHere parts are disjoint and
// cover it, and each engine's resync byte counter grew by exactly its part: nothing else was copied.
// Then all in sync; legs identical; fsck.gfs2 -n clean.
import { cpus, loadavg } from 'node:os';
import { mkdirSync, readFileSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { acquireSlots } from '../../scripts/vm/slots.js';
import { run } from '../helpers/run.js';
import { MiB } from '../helpers/tmp.js';
import { clusterUnavailableReason, Harness } from '../cluster/harness.js';
import { expectDepartureResynced, Node, waitAllInSync, type EventWatch } from '../cluster/serve-node.js';
import {
  bootGuest, describeGuest, fileSha256, freeUdpPort, gfs2FsckClean, prepareImage, requireKernelTestTools,
  type GuestResult,
} from './helpers.js';

const MIRROR_NODES = 3;
const TOKEN_MS = 2000;
const VOLUME_BYTES = 128 * MiB;
const REGION_SECTORS = 1024;
const REGION_BYTES = REGION_SECTORS * 512;
const UUID = 'LVM-kernelgfs2';
const DASHBOARD_PORT = 18_379;
const GUEST_TIMEOUT_MS = 480_000;
const SIGNAL_WAIT_S = 300;
const SLOT_WAIT_MS = 600_000;
const TEST_TIMEOUT_MS = SLOT_WAIT_MS + GUEST_TIMEOUT_MS + 180_000;
/** 256 MiB: corosync (~185 MB with knet buffers) was OOM-killed in guest 1 when node 2 left. */
const GUEST_MEM_MIB = 448;
const script = readFileSync(join(import.meta.dirname, 'guest', 'gfs2-node.sh'), 'utf8');
const clusterMac = (id: number) => `52:54:00:00:01:0${id}`;
const load = () => loadavg().map((l) => l.toFixed(1)).join(' ');

const toolsOk = requireKernelTestTools(['fsck.gfs2']);
const unavailable = await clusterUnavailableReason();
if (unavailable && process.env.CI === 'true') throw new Error(`GFS2 cluster test cannot run under CI: ${unavailable}`);

/** TCP 127.0.0.1:<free port> piped to a unix socket (the guest reaches the node through qemu user net). */
async function tcpToUnix(socketPath: string): Promise<{ server: Server; port: number }> {
  const server = createServer((c) => {
    const u = connect({ path: socketPath });
    c.pipe(u);
    u.pipe(c);
    const drop = () => { c.destroy(); u.destroy(); };
    c.on('error', drop); u.on('error', drop); c.on('close', drop); u.on('close', drop);
  });
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
  const a = server.address();
  return { server, port: typeof a === 'object' && a ? a.port : 0 };
}

describe.skipIf(!toolsOk || unavailable !== undefined)(
  `kernel nbd client, GFS2 on the cluster mirror (two guests on two nbd-mirror nodes)${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
    let h: Harness | undefined;
    const nodes: Node[] = [];
    const proxies: Server[] = [];
    const watches: EventWatch[] = [];

    beforeAll(() => { prepareImage('gfs2'); }, 300_000);
    afterAll(async () => {
      for (const p of proxies) p.close();
      for (const w of watches) w.close();
      for (const n of nodes) await n.kill9().catch(() => undefined);
      await h?.teardown();
    }, 120_000);

    test('both nodes write; guest 2 and its nbd-mirror node killed together; guest 1 recovers and goes on; survivors resync, legs identical, fsck.gfs2 -n clean', async () => {
      const tWait = Date.now();
      const release = await acquireSlots(2, { timeoutMs: SLOT_WAIT_MS });
      const t0 = Date.now();
      const phases: string[] = [`slot-wait=${t0 - tWait}`];
      const timed = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
        const s = Date.now();
        try { return await fn(); } finally { phases.push(`${name}=${Date.now() - s}`); }
      };
      try {
        h = new Harness('k');
        const dir = join(h.runDir, 'data');
        mkdirSync(dir);
        const legs = [0, 1].map((i) => join(dir, `leg${i}.img`));
        for (const l of legs) await run('truncate', ['-s', String(VOLUME_BYTES), l]);
        await timed('corosync-up', () => h!.start(MIRROR_NODES, TOKEN_MS));
        const table = `0 ${VOLUME_BYTES / 512} mirror userspace 4 ${UUID} clustered-core ${REGION_SECTORS} nosync 2 ${legs[0]} 0 ${legs[1]} 0 1 handle_errors`;
        for (let i = 1; i <= MIRROR_NODES; i++) nodes.push(new Node(h, i, dir, table, DASHBOARD_PORT));
        await timed('serve-up', async () => { for (const n of nodes) await n.start(); });
        const ports: number[] = [];
        for (const n of nodes.slice(0, 2)) {
          const p = await tcpToUnix(n.sock);
          proxies.push(p.server);
          ports.push(p.port);
        }
        const survivorBefore = await Promise.all([nodes[0]!.resyncBytes(), nodes[2]!.resyncBytes()]);
        const resyncBefore = survivorBefore.reduce((a, b) => a + b, 0);
        for (const n of [nodes[0]!, nodes[2]!]) watches.push(await n.watchEvents());

        const linkPorts = [await freeUdpPort(), await freeUdpPort()];
        const pairFailed = new AbortController();
        let killedAt = 0;
        const progress = (id: number) => (line: string) => {
          const m = /TEST: (step \S+|PASS|FAIL.*)/.exec(line);
          if (m) console.log(`[kernel] gfs2-cluster +${((Date.now() - t0) / 1000).toFixed(1)}s node${id} ${m[1]} (load ${load()})`);
          if (id === 2 && /TEST: step die/.test(line) && !killedAt) {
            killedAt = Date.now();
            void nodes[1]!.kill9(); // its qemu is SIGKILLed by killOn on the next line
          }
        };
        const boot = (id: number) => bootGuest({
          image: 'gfs2',
          script,
          env: {
            NBDM_NBD_PORT: ports[id - 1]!, NBDM_NBD_EXPORT: 'volume', NODE_ID: id, CLUSTER_MAC: clusterMac(id),
            SMALL_FILES: 4, SHARED_BLOCKS: 8, BIG_FILE_KIB: 1024, SIGNAL_WAIT_S, FAILOVER: 1, BUSY_S: 3,
          },
          timeoutMs: GUEST_TIMEOUT_MS,
          memMiB: GUEST_MEM_MIB,
          onLine: progress(id),
          abort: pairFailed.signal,
          killOn: id === 2 ? /TEST: PASS/ : undefined,
          extraArgs: [
            '-netdev', `socket,id=c0,udp=127.0.0.1:${linkPorts[2 - id]},localaddr=127.0.0.1:${linkPorts[id - 1]}`,
            '-device', `virtio-net-pci,netdev=c0,mac=${clusterMac(id)},romfile=`,
          ],
        }).then((r) => {
          if (!r.passed) pairFailed.abort();
          return r;
        });
        const [r1, r2] = await timed('guests', () => Promise.all([boot(1), boot(2)]));
        const show = (r: GuestResult) => `${r.outcome} ${r.wallMs} ms (boot ${r.bootMs}) ` + r.steps.map((s) => `${s.name}=${s.durationMs}`).join(' ');
        console.log(`[kernel] gfs2-cluster: node1 ${show(r1)}\n[kernel] gfs2-cluster: node2 ${show(r2)}; load ${load()} (${cpus().length} cpus)`);
        for (const [r, other] of [[r1, r2], [r2, r1]] as const) {
          if (!r.passed) {
            throw new Error(`node ${r === r1 ? 1 : 2}: ${describeGuest(r)}\n--- other node (${other.outcome}) ---\n${other.log.slice(-3000)}\n` +
              `--- nbd-mirror nodes ---\n${nodes.map((n) => `node ${n.n}: ${n.output.slice(-1500)}`).join('\n')}`);
          }
        }
        expect(r2.steps.map((s) => s.name).slice(-2)).toEqual(['doomed', 'die']);
        expect(r1.steps.map((s) => s.name).slice(-4)).toEqual(['verify', 'peer-gone', 'recovery', 'leave']);
        const recovery = r1.steps.find((s) => s.name === 'recovery')!;
        const peerGone = r1.steps.find((s) => s.name === 'peer-gone')!;
        console.log(`[kernel] gfs2-cluster: peer-gone ${peerGone.durationMs} ms, recovery ${recovery.durationMs} ms after the kill`);
        expect(r1.log).toMatch(/jid=1/); // node 1 took node 2's journal

        // The survivors resync what node 2 had marked dirty (whole regions), then everything is in sync.
        const syncMs = await timed('in-sync', () => waitAllInSync([nodes[0]!, nodes[2]!], 120_000));
        const resynced = (await Promise.all([nodes[0]!.resyncBytes(), nodes[2]!.resyncBytes()])).reduce((a, b) => a + b, 0) - resyncBefore;
        console.log(`[kernel] gfs2-cluster: resynced ${resynced} bytes (${resynced / REGION_BYTES} regions) in ${Math.round(syncMs)} ms after guest 1 left`);
        expect(resynced).toBeGreaterThan(0);
        expect(resynced % REGION_BYTES).toBe(0);
        expect(resynced).toBeLessThan(VOLUME_BYTES);
        // Exactly node 2's dirty regions (see the header): same sets on both survivors, copied once.
        const dep = await expectDepartureResynced(
          [{ node: nodes[0]!, watch: watches[0]!, resyncBefore: survivorBefore[0]! }, { node: nodes[2]!, watch: watches[1]!, resyncBefore: survivorBefore[1]! }],
          2,
        );
        expect(dep.bytes).toBe(resynced);
        expect(dep.regions.length).toBeGreaterThan(0);
        console.log(`[kernel] gfs2-cluster: node 2 left ${dep.regions.length} regions / ${dep.bytes} bytes out of sync ` +
          `(regions ${dep.left.regions}; ${dep.left.markedOutOfSyncCount} marked already out of sync; released ${dep.left.released}); ` +
          `recovered: ${[...dep.copiedBytes].map(([n, b]) => `node ${n} ${b} bytes`).join(', ')}; ${dep.resyncMs} ms from the membership change`);

        await timed('serve-stop', async () => { await nodes[0]!.stop(); await nodes[2]!.stop(); });
        const [a, b] = await timed('legs-sha256', () => Promise.all(legs.map(fileSha256)));
        expect(b).toBe(a);
        await timed('fsck.gfs2', () => gfs2FsckClean(legs[0]!));
      } finally {
        release();
        console.log(`[kernel] gfs2-cluster: wall ${Date.now() - t0} ms (after slots); phases (ms): ${phases.join(' ')}; load ${load()}`);
      }
    }, TEST_TIMEOUT_MS);
  },
);
