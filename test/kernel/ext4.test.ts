// The Linux kernel's own NBD client (nbd-client + nbd.ko in a qemu TCG guest) against our server:
// ext4 round trip over one connection and over four (`nbd-client -C 4`), checked inside the guest
// (sha256 after umount + mount, e2fsck -fn) and on the host (e2fsck -fn on the leg files, file contents
// read back with debugfs, legs identical for a mirror); and a guest killed (qemu SIGKILL) without
// NBD_CMD_DISC while writes are in flight, after which the server must still serve another client.
// Server: NBDM_KERNEL_SERVER=mirror (default: `nbd-mirror serve` with a 2-leg mirror + disk log),
// linear, or nbdkit (the reference server, to tell our bugs from the harness's).
// Tests run concurrently; machine-wide guest slots (NBDM_VM_SLOTS, default 2) bound how many guests run.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, test } from 'vitest';
import { run } from '../helpers/run.js';
import { MiB } from '../helpers/tmp.js';
import {
  bootGuest, describeGuest, e2fsckClean, fileSha256, guestSums, hostSums, requireKernelTestTools,
  peakRssMiB, prepareImage, serverConnections, startVolume, withGuestSlots, type GuestResult, type ServerKind, type TestVolume,
} from './helpers.js';

const KIND = (process.env.NBDM_KERNEL_SERVER ?? 'mirror') as ServerKind;
const VOLUME_BYTES = 64 * MiB;
const DROP_VOLUME_BYTES = 32 * MiB;
/** Safety net against hangs; a guest on a 2-core host at load 20 took 50 s just to boot. */
const GUEST_TIMEOUT_MS = 200_000;
/** Includes waiting for a machine-wide guest slot (scripts/vm/slots.js) behind other kernel tests. */
const TEST_TIMEOUT_MS = 450_000;
/** First run: package downloads, kernel unpack and image build (~1 min on a busy 2-core machine). */
const IMAGE_BUILD_TIMEOUT_MS = 300_000;
const TREE_FILES = 41; // 4 dirs x 5 files x 2 + the big file (see guest/ext4-roundtrip.sh)
const GUEST_DIR = join(import.meta.dirname, 'guest');
const script = (name: string) => readFileSync(join(GUEST_DIR, name), 'utf8');

const ok = requireKernelTestTools(KIND === 'nbdkit' ? ['nbdkit', 'nbdcopy'] : ['nbdcopy']);

/** One test's volume and host-side phase timings (printed with the guest's step times). */
class Run {
  readonly phases: string[] = [];
  volume: TestVolume | undefined;
  constructor(readonly label: string) {}

  async timed<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const t0 = Date.now();
    try { return await fn(); } finally { this.phases.push(`${name}=${Date.now() - t0}`); }
  }

  report(r: GuestResult, extra = ''): void {
    if (this.volume) extra += `; server RSS ${peakRssMiB(this.volume.pid)} MiB`;
    const steps = r.steps.map((s) => `${s.name}=${s.durationMs}`).join(' ');
    console.log(`[kernel] ${this.label} (${KIND}): guest ${r.wallMs} ms, boot ${r.bootMs} ms, ` +
      `qemu RSS ${Math.round(r.peakRssKiB / 1024)} MiB; steps (ms): ${steps}${extra}`);
  }

  assertPassed(r: GuestResult): void {
    if (!r.passed) throw new Error(`${describeGuest(r)}\n--- server output ---\n${this.volume?.output().slice(-4000)}`);
  }

  async finish(t0: number): Promise<void> {
    await this.volume?.dispose();
    console.log(`[kernel] ${this.label}: wall ${Date.now() - t0} ms; host phases (ms): ${this.phases.join(' ')}`);
  }
}

async function withRun(label: string, body: (r: Run) => Promise<void>): Promise<void> {
  await withGuestSlots(1, async () => {
    const t0 = Date.now();
    const r = new Run(label);
    try { await body(r); } finally { await r.finish(t0); }
  });
}

async function roundTrip(t: Run, nbdClientArgs: string, expectConnections: number): Promise<void> {
  const v = (t.volume = await t.timed('server-start', () => startVolume(KIND, VOLUME_BYTES)));
  let maxConnections = 0;
  const r = await t.timed('guest', () => bootGuest({
    script: script('ext4-roundtrip.sh'),
    env: { NBDM_NBD_PORT: v.port, NBDM_NBD_EXPORT: v.exportName, NBD_CLIENT_ARGS: nbdClientArgs },
    timeoutMs: GUEST_TIMEOUT_MS,
    onLine: (line) => {
      if (/TEST: step (write-tree|checksum|verify)/.test(line)) maxConnections = Math.max(maxConnections, serverConnections(v.port));
    },
  }));
  t.report(r, `; server connections ${maxConnections}`);
  t.assertPassed(r);
  expect(r.steps.map((s) => s.name)).toEqual(
    ['attach', 'mkfs', 'mount', 'write-tree', 'checksum', 'umount', 'remount', 'verify', 'fsck-in-guest', 'detach'],
  );
  expect(r.log).toContain(`SIZE: ${VOLUME_BYTES}`);
  expect(maxConnections).toBe(expectConnections);
  const sumsInGuest = guestSums(r.log);
  expect(sumsInGuest.size).toBe(TREE_FILES);

  await t.timed('server-stop', () => v.stop());
  await t.timed('e2fsck', async () => { for (const leg of v.legs) await e2fsckClean(leg); });
  if (v.legs.length === 2) {
    const [a, b] = await t.timed('legs-sha256', () => Promise.all(v.legs.map(fileSha256)));
    expect(b).toBe(a);
  }
  // What the guest wrote is what is on the leg, byte for byte (read with debugfs, not through our server).
  const sumsOnHost = await t.timed('debugfs-rdump', () => hostSums(v.legs[0]!, '/tree', v.dir));
  expect(Object.fromEntries(sumsOnHost)).toEqual(Object.fromEntries(sumsInGuest));
}

describe.skipIf(!ok).concurrent(`kernel nbd client, ext4 (${KIND})`, () => {
  beforeAll(() => {
    const t0 = Date.now();
    const image = prepareImage('ext4');
    console.log(`[kernel] image ext4 (kernel ${image.kernelVersion}) ready in ${Date.now() - t0} ms`);
  }, IMAGE_BUILD_TIMEOUT_MS);

  test('ext4 round trip over one connection', async () => {
    await withRun('ext4 -C 1', (t) => roundTrip(t, '', 1));
  }, TEST_TIMEOUT_MS);

  test('ext4 round trip over four connections (nbd-client -C 4)', async () => {
    await withRun('ext4 -C 4', (t) => roundTrip(t, '-C 4', 4));
  }, TEST_TIMEOUT_MS);

  test('guest killed mid-write without NBD_CMD_DISC; the server keeps serving', async () => {
    await withRun('drop without DISC', async (t) => {
      const v = (t.volume = await t.timed('server-start', () => startVolume(KIND, DROP_VOLUME_BYTES)));
      const patternKiB = 1024;
      const patternOffsetKiB = 1024;
      const r = await t.timed('guest', () => bootGuest({
        script: script('disconnect-without-disc.sh'),
        env: {
          NBDM_NBD_PORT: v.port, NBDM_NBD_EXPORT: v.exportName,
          PATTERN_KIB: patternKiB, PATTERN_OFFSET_KIB: patternOffsetKiB, BUSY_OFFSET_KIB: 8192,
        },
        timeoutMs: GUEST_TIMEOUT_MS,
        killOn: /TEST: PASS/,
      }));
      t.report(r);
      t.assertPassed(r);
      expect(r.steps.at(-1)?.name).toBe('die-without-disc');

      // The guest is gone; so must its connection be, and the server still alive and serving.
      const deadline = Date.now() + 5_000;
      await t.timed('conn-gone', async () => {
        while (serverConnections(v.port) > 0 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
      });
      expect(serverConnections(v.port)).toBe(0);
      expect(v.alive()).toBe(true);
      const copy = join(v.dir, 'copy.img');
      await t.timed('nbdcopy', () => run('nbdcopy', [`nbd://127.0.0.1:${v.port}/${v.exportName}`, copy], { timeoutMs: 60_000 }));
      const data = readFileSync(copy);
      expect(data.length).toBe(DROP_VOLUME_BYTES);
      const unit = Buffer.from('NBDMIRROR\n');
      const pattern = Buffer.alloc(patternKiB * 1024);
      for (let off = 0; off < pattern.length; off += unit.length) unit.copy(pattern, off);
      const got = data.subarray(patternOffsetKiB * 1024, (patternOffsetKiB + patternKiB) * 1024);
      expect(got.equals(pattern)).toBe(true);
      expect(data.subarray(0, patternOffsetKiB * 1024).every((b) => b === 0)).toBe(true);

      await t.timed('server-stop', () => v.stop()); // SIGTERM: ours must exit 0 after the abrupt disconnect
      if (v.legs.length === 2) {
        const [a, b] = await t.timed('legs-sha256', () => Promise.all(v.legs.map(fileSha256)));
        expect(b).toBe(a);
      }
    });
  }, TEST_TIMEOUT_MS);
});
