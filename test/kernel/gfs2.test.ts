// Issue 8, test 4: GFS2 on one server. Two qemu guests (the kernel's nbd-client, corosync + dlm_controld
// over a private qemu socket link) attach the same export of `nbd-mirror serve` (2-leg mirror + disk log,
// tcp on 127.0.0.1); node 1 runs `mkfs.gfs2 -p lock_dlm`, both mount; each writes its own directory and
// files in a shared directory (created by both at once; one file both write at interleaved 4 KiB blocks),
// records sha256 sums on the filesystem and verifies the other node's files and the shared file through its
// own mount; both unmount and detach.
// Host side afterwards: the server exits cleanly, `fsck.gfs2 -n` on a leg is clean, the legs are identical,
// and the sums each node printed cover exactly its own files.
// Needs the server to give every connection the same view and honour FLUSH/FUA (GFS2 journals, DLM-guarded
// caches on two machines).
//
// Cost: both guests run at once and hold both machine-wide guest slots (scripts/vm/slots.js), i.e. both
// host cores, for the whole test; other kernel test files wait for the slots (and their timeouts do not
// count the wait). Timeouts are generous but bounded: a TCG guest on a 2-core host at load ~20 stalls for
// seconds at a time (corosync token 3000 ms / knet ping timeout 2000 ms for that reason).
import { cpus, loadavg } from 'node:os';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, test } from 'vitest';
import { acquireSlots } from '../../scripts/vm/slots.js';
import { MiB } from '../helpers/tmp.js';
import {
  bootGuest, describeGuest, fileSha256, freeUdpPort, gfs2FsckClean, peakRssMiB, prepareImage, requireKernelTestTools,
  startVolume, type GuestResult, type ServerKind,
} from './helpers.js';

const KIND = (process.env.NBDM_KERNEL_SERVER ?? 'mirror') as ServerKind;
const VOLUME_BYTES = 128 * MiB;
/** Per guest: boot + membership + mkfs + I/O; the pair took 148 s at load ~15 on 2 cores. */
const GUEST_TIMEOUT_MS = 420_000;
/** A node waits this long for its peer at each rendezvous before failing (bounded, below the guest limit). */
const SIGNAL_WAIT_S = 300;
/** Waiting for both guest slots behind the ext4 tests (or another worker's guests). */
const SLOT_WAIT_MS = 600_000;
const HOST_CHECKS_MS = 180_000;
const TEST_TIMEOUT_MS = SLOT_WAIT_MS + GUEST_TIMEOUT_MS + HOST_CHECKS_MS;
const IMAGE_BUILD_TIMEOUT_MS = 300_000;
const GUEST_MEM_MIB = 256;
const SMALL_FILES = 6;
const SHARED_BLOCKS = 16;
const BIG_FILE_KIB = 2048;
const script = readFileSync(join(import.meta.dirname, 'guest', 'gfs2-node.sh'), 'utf8');
const clusterMac = (id: number) => `52:54:00:00:01:0${id}`;
const load = () => loadavg().map((l) => l.toFixed(1)).join(' ');

const ok = requireKernelTestTools(KIND === 'nbdkit' ? ['nbdkit', 'fsck.gfs2'] : ['fsck.gfs2']);

/** `SUM: <sha256>  <path>` lines a node printed -> path -> hash. */
function nodeSums(log: string): Map<string, string> {
  const sums = new Map<string, string>();
  for (const m of log.matchAll(/SUM: ([0-9a-f]{64})\s+(\S+)/g)) sums.set(m[2]!, m[1]!);
  return sums;
}

describe.skipIf(!ok)(`kernel nbd client, GFS2 on two nodes over one server (${KIND})`, () => {
  beforeAll(() => {
    const t0 = Date.now();
    const image = prepareImage('gfs2');
    console.log(`[kernel] image gfs2 (kernel ${image.kernelVersion}) ready in ${Date.now() - t0} ms`);
  }, IMAGE_BUILD_TIMEOUT_MS);

  test('mkfs.gfs2 -p lock_dlm on node 1, both mount and write, each verifies the other; fsck.gfs2 -n clean, legs identical', async () => {
    const tWait = Date.now();
    const release = await acquireSlots(2, { timeoutMs: SLOT_WAIT_MS });
    const t0 = Date.now();
    const phases: string[] = [`slot-wait=${t0 - tWait}`];
    const loadStart = load();
    const timed = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
      const s = Date.now();
      try { return await fn(); } finally { phases.push(`${name}=${Date.now() - s}`); }
    };
    const v = await timed('server-start', () => startVolume(KIND, VOLUME_BYTES));
    try {
      // The cluster link: qemu's UDP socket netdev, point to point between two 127.0.0.1 ports, so neither
      // guest has to wait for the other's qemu to listen (both boot at once).
      const linkPorts = [await freeUdpPort(), await freeUdpPort()];
      const pairFailed = new AbortController();
      const progress = (id: number) => (line: string) => {
        const m = /TEST: (step \S+|PASS|FAIL.*)/.exec(line);
        if (m) console.log(`[kernel] gfs2 +${((Date.now() - t0) / 1000).toFixed(1)}s node${id} ${m[1]} (load ${load()})`);
      };
      const boot = (id: number) => bootGuest({
        image: 'gfs2',
        script,
        env: {
          NBDM_NBD_PORT: v.port, NBDM_NBD_EXPORT: v.exportName, NODE_ID: id, CLUSTER_MAC: clusterMac(id),
          SMALL_FILES, SHARED_BLOCKS, BIG_FILE_KIB, SIGNAL_WAIT_S,
        },
        timeoutMs: GUEST_TIMEOUT_MS,
        memMiB: GUEST_MEM_MIB,
        onLine: progress(id),
        abort: pairFailed.signal,
        extraArgs: [
          '-netdev', `socket,id=c0,udp=127.0.0.1:${linkPorts[2 - id]},localaddr=127.0.0.1:${linkPorts[id - 1]}`,
          '-device', `virtio-net-pci,netdev=c0,mac=${clusterMac(id)},romfile=`,
        ],
      }).then((r) => {
        if (!r.passed) pairFailed.abort(); // the peer would only wait for it until SIGNAL_WAIT_S
        return r;
      });
      const n1 = boot(1);
      const n2 = boot(2);
      const [r1, r2] = await timed('guests', () => Promise.all([n1, n2]));
      const show = (r: GuestResult) => `${r.outcome} ${r.wallMs} ms (boot ${r.bootMs}, RSS ${Math.round(r.peakRssKiB / 1024)} MiB) ` +
        r.steps.map((s) => `${s.name}=${s.durationMs}`).join(' ');
      console.log(`[kernel] gfs2 (${KIND}): node1 ${show(r1)}\n[kernel] gfs2 (${KIND}): node2 ${show(r2)}; ` +
        `server RSS ${peakRssMiB(v.pid)} MiB; load ${loadStart} -> ${load()} (${cpus().length} cpus)`);
      for (const [r, other] of [[r1, r2], [r2, r1]] as const) {
        if (!r.passed) {
          throw new Error(`node ${r === r1 ? 1 : 2}: ${describeGuest(r)}\n--- other node (${other.outcome}) ---\n` +
            `${other.log.slice(-3000)}\n--- server ---\n${v.output().slice(-3000)}`);
        }
      }
      const steps = (r: GuestResult) => r.steps.map((s) => s.name);
      expect(steps(r1)).toEqual(['cluster-net', 'attach', 'corosync', 'dlm', 'mkfs', 'mount', 'write', 'verify', 'leave']);
      expect(steps(r2)).toEqual(['cluster-net', 'attach', 'corosync', 'dlm', 'wait-mkfs', 'mount', 'write', 'verify', 'leave']);
      // Each node summed exactly its own files (SMALL_FILES in its directory + the big one, SMALL_FILES in
      // shared/), and verified the other's manifest file by file (VERIFIED line).
      const s1 = nodeSums(r1.log);
      const s2 = nodeSums(r2.log);
      for (const [id, s] of [[1, s1], [2, s2]] as const) {
        expect(s.size).toBe(2 * SMALL_FILES + 1);
        expect([...s.keys()].every((p) => p.startsWith(`node${id}/`) || p.startsWith(`shared/n${id}-`))).toBe(true);
      }
      expect(r1.log).toContain(`VERIFIED: ${s2.size} files of node 2`);
      expect(r2.log).toContain(`VERIFIED: ${s1.size} files of node 1`);

      await timed('server-stop', () => v.stop()); // SIGTERM: must exit 0 after two clean DISCs
      const fsck = await timed('fsck.gfs2', () => gfs2FsckClean(v.legs[0]!));
      expect(fsck).toMatch(/gfs2/i);
      if (v.legs.length === 2) {
        const [a, b] = await timed('legs-sha256', () => Promise.all(v.legs.map(fileSha256)));
        expect(b).toBe(a);
      }
    } finally {
      await v.dispose();
      release();
      console.log(`[kernel] gfs2: wall ${Date.now() - t0} ms (after slots); host phases (ms): ${phases.join(' ')}; load ${load()}`);
    }
  }, TEST_TIMEOUT_MS);
});
