// PROTOTYPE, not collected by vitest (not *.test.ts): the GFS2 pair for issue 8 tests 4/5. It passed
// once against `nbd-mirror serve` (mirror, 2 legs + disk log) in 148 s wall on a 2-core host at load ~15
// (membership alone took up to a minute there); a second run at load ~23 timed out in corosync. To run it:
// `cp test/kernel/gfs2-pair.prototype.ts test/kernel/gfs2.test.ts && npx vitest run test/kernel/gfs2.test.ts`.
// Before it joins the suite: budget (two guests at ~400 MB RSS each hold both guest slots), and a
// quieter host or longer timeouts.
//
// Two GFS2 nodes (two qemu guests, each with the kernel's nbd-client on the same export of our server,
// corosync + dlm_controld over a private qemu socket link): node 1 makes the filesystem, both mount it,
// node 1 writes a file with fsync, node 2 reads it and compares its sha256, both leave cleanly.
// Needs the server to give every connection the same view and honour FLUSH/FUA.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, test } from 'vitest';
import { MiB } from '../helpers/tmp.js';
import {
  bootGuest, describeGuest, fileSha256, freePort, peakRssMiB, prepareImage, requireKernelTestTools,
  startVolume, withGuestSlots, type GuestResult, type ServerKind,
} from './helpers.js';

const KIND = (process.env.NBDM_KERNEL_SERVER ?? 'mirror') as ServerKind;
const VOLUME_BYTES = 128 * MiB;
const GUEST_TIMEOUT_MS = 150_000;
const TEST_TIMEOUT_MS = 240_000;
const IMAGE_BUILD_TIMEOUT_MS = 300_000;
const GUEST_MEM_MIB = 256;
const script = readFileSync(join(import.meta.dirname, 'guest', 'gfs2-node.sh'), 'utf8');
const clusterMac = (id: number) => `52:54:00:00:01:0${id}`;

const ok = requireKernelTestTools(KIND === 'nbdkit' ? ['nbdkit'] : []);

describe.skipIf(!ok)(`kernel nbd client, GFS2 on two nodes (${KIND})`, () => {
  beforeAll(() => {
    prepareImage('gfs2');
  }, IMAGE_BUILD_TIMEOUT_MS);

  test('mkfs on node 1, both mount, node 1 writes, node 2 reads the same bytes', () => withGuestSlots(2, async () => {
    const t0 = Date.now();
    const v = await startVolume(KIND, VOLUME_BYTES);
    try {
      const linkPort = await freePort();
      let node1Started!: () => void;
      const node1Up = new Promise<void>((res) => (node1Started = res));
      const boot = (id: number, onLine?: (l: string) => void) => bootGuest({
        image: 'gfs2',
        script,
        env: { NBDM_NBD_PORT: v.port, NBDM_NBD_EXPORT: v.exportName, NODE_ID: id, CLUSTER_MAC: clusterMac(id), DATA_MIB: 8 },
        timeoutMs: GUEST_TIMEOUT_MS,
        memMiB: GUEST_MEM_MIB,
        onLine,
        extraArgs: [
          '-netdev', `socket,id=c0,${id === 1 ? 'listen' : 'connect'}=127.0.0.1:${linkPort}`,
          '-device', `virtio-net-pci,netdev=c0,mac=${clusterMac(id)},romfile=`,
        ],
      });
      // qemu listens on the link before the guest prints anything: node 2 connects after node 1's first line.
      const n1 = boot(1, () => node1Started());
      await node1Up;
      const n2 = boot(2);
      const [r1, r2] = await Promise.all([n1, n2]);
      const show = (r: GuestResult) => `${r.wallMs} ms (boot ${r.bootMs}, RSS ${Math.round(r.peakRssKiB / 1024)} MiB) ` +
        r.steps.map((s) => `${s.name}=${s.durationMs}`).join(' ');
      console.log(`[kernel] gfs2 (${KIND}): node1 ${show(r1)}\n[kernel] gfs2 (${KIND}): node2 ${show(r2)}; server RSS ${peakRssMiB(v.pid)} MiB`);
      for (const r of [r1, r2]) {
        if (!r.passed) throw new Error(`node ${r === r1 ? 1 : 2}: ${describeGuest(r)}\n--- other node ---\n${(r === r1 ? r2 : r1).log.slice(-3000)}\n--- server ---\n${v.output().slice(-3000)}`);
      }
      const sum1 = /SUM: ([0-9a-f]{64})/.exec(r1.log)?.[1];
      const sum2 = /SUM: ([0-9a-f]{64})/.exec(r2.log)?.[1];
      expect(sum1).toBeDefined();
      expect(sum2).toBe(sum1);
      await v.stop();
      if (v.legs.length === 2) {
        const [a, b] = await Promise.all(v.legs.map(fileSha256));
        expect(b).toBe(a);
      }
    } finally {
      await v.dispose();
      console.log(`[kernel] gfs2: wall ${Date.now() - t0} ms`);
    }
  }), TEST_TIMEOUT_MS);
});
