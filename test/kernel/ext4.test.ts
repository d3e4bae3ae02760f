// The Linux kernel's own NBD client (nbd-client + nbd.ko in a qemu TCG guest) against our server:
// ext4 round trip over one connection and over four (`nbd-client -C 4`), checked inside the guest
// (sha256 after umount + mount, e2fsck -fn) and on the host (e2fsck -fn on the leg files, file contents
// read back with debugfs, legs identical for a mirror); and a guest that powers off without NBD_CMD_DISC
// while writes are in flight, after which the server must still serve another client.
// Server: NBDM_KERNEL_SERVER=mirror (default: `nbd-mirror serve` with a 2-leg mirror + disk log),
// linear, or nbdkit (the reference server, to tell our bugs from the harness's).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { run } from '../helpers/run.js';
import { MiB } from '../helpers/tmp.js';
import {
  bootGuest, describeGuest, e2fsckClean, fileSha256, guestSums, hostSums, requireKernelTestTools,
  serverConnections, startVolume, type GuestResult, type ServerKind, type TestVolume,
} from './helpers.js';

const KIND = (process.env.NBDM_KERNEL_SERVER ?? 'mirror') as ServerKind;
const VOLUME_BYTES = 64 * MiB;
const DROP_VOLUME_BYTES = 32 * MiB;
const GUEST_TIMEOUT_MS = 100_000;
const TEST_TIMEOUT_MS = 150_000;
const GUEST_DIR = join(import.meta.dirname, 'guest');
const script = (name: string) => readFileSync(join(GUEST_DIR, name), 'utf8');

const ok = requireKernelTestTools(KIND === 'nbdkit' ? ['nbdkit', 'nbdcopy'] : ['nbdcopy']);

let volume: TestVolume | undefined;
/** Host-side phase timings of the current test, printed with the guest's step times. */
let phases: string[] = [];
async function timed<T>(name: string, fn: () => Promise<T>): Promise<T> {
  const t0 = Date.now();
  try { return await fn(); } finally { phases.push(`${name}=${Date.now() - t0}`); }
}
afterEach(async () => {
  if (phases.length > 0) console.log(`[kernel] host phases (ms): ${phases.join(' ')}`);
  phases = [];
  await volume?.dispose();
  volume = undefined;
});

function report(label: string, r: GuestResult, extra = ''): void {
  const steps = r.steps.map((s) => `${s.name}=${s.durationMs}`).join(' ');
  console.log(`[kernel] ${label} (${KIND}): guest ${r.wallMs} ms, boot ${r.bootMs} ms, qemu RSS ${Math.round(r.peakRssKiB / 1024)} MiB; ${steps}${extra}`);
}

function assertPassed(r: GuestResult, v: TestVolume): void {
  if (!r.passed) throw new Error(`${describeGuest(r)}\n--- server output ---\n${v.output().slice(-4000)}`);
}

async function roundTrip(label: string, nbdClientArgs: string, expectConnections: number): Promise<void> {
  volume = await timed('server-start', () => startVolume(KIND, VOLUME_BYTES));
  const v = volume;
  let maxConnections = 0;
  const r = await timed('guest', () => bootGuest({
    script: script('ext4-roundtrip.sh'),
    env: { NBDM_NBD_PORT: v.port, NBDM_NBD_EXPORT: v.exportName, NBD_CLIENT_ARGS: nbdClientArgs },
    timeoutMs: GUEST_TIMEOUT_MS,
    onLine: (line) => {
      if (/TEST: step (write-tree|checksum|verify)/.test(line)) maxConnections = Math.max(maxConnections, serverConnections(v.port));
    },
  }));
  report(label, r, `; connections ${maxConnections}`);
  assertPassed(r, v);
  expect(r.steps.map((s) => s.name)).toEqual(
    ['attach', 'mkfs', 'mount', 'write-tree', 'checksum', 'umount', 'remount', 'verify', 'fsck-in-guest', 'detach'],
  );
  expect(r.log).toContain(`SIZE: ${VOLUME_BYTES}`);
  expect(maxConnections).toBe(expectConnections);
  const sumsInGuest = guestSums(r.log);
  expect(sumsInGuest.size).toBe(41);

  await timed('server-stop', () => v.stop());
  await timed('e2fsck', async () => { for (const leg of v.legs) await e2fsckClean(leg); });
  if (v.legs.length === 2) {
    const [a, b] = await timed('legs-sha256', () => Promise.all(v.legs.map(fileSha256)));
    expect(b).toBe(a);
  }
  // What the guest wrote is what is on the leg, byte for byte (read with debugfs, not through our server).
  const sumsOnHost = await timed('debugfs-rdump', () => hostSums(v.legs[0]!, '/tree', v.dir));
  expect(Object.fromEntries(sumsOnHost)).toEqual(Object.fromEntries(sumsInGuest));
}

describe.skipIf(!ok)(`kernel nbd client, ext4 (${KIND})`, () => {
  test('ext4 round trip over one connection', async () => {
    await roundTrip('ext4 -C 1', '', 1);
  }, TEST_TIMEOUT_MS);

  test('ext4 round trip over four connections (nbd-client -C 4)', async () => {
    await roundTrip('ext4 -C 4', '-C 4', 4);
  }, TEST_TIMEOUT_MS);

  test('guest powers off mid-write without NBD_CMD_DISC; the server keeps serving', async () => {
    volume = await timed('server-start', () => startVolume(KIND, DROP_VOLUME_BYTES));
    const v = volume;
    const patternKiB = 4096;
    const patternOffsetKiB = 1024;
    const r = await timed('guest', () => bootGuest({
      script: script('disconnect-without-disc.sh'),
      env: {
        NBDM_NBD_PORT: v.port, NBDM_NBD_EXPORT: v.exportName,
        PATTERN_KIB: patternKiB, PATTERN_OFFSET_KIB: patternOffsetKiB, BUSY_OFFSET_KIB: 8192,
      },
      timeoutMs: GUEST_TIMEOUT_MS,
    }));
    report('drop without DISC', r);
    assertPassed(r, v);
    expect(r.steps.at(-1)?.name).toBe('poweroff-without-disc');

    // The guest is gone; its connection must be gone too, and the server still alive and serving.
    const deadline = Date.now() + 5_000;
    await timed('conn-gone', async () => {
      while (serverConnections(v.port) > 0 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
    });
    expect(serverConnections(v.port)).toBe(0);
    expect(v.alive()).toBe(true);
    const copy = join(v.dir, 'copy.img');
    await timed('nbdcopy', () => run('nbdcopy', [`nbd://127.0.0.1:${v.port}/${v.exportName}`, copy], { timeoutMs: 60_000 }));
    const data = readFileSync(copy);
    expect(data.length).toBe(DROP_VOLUME_BYTES);
    const unit = Buffer.from('NBDMIRROR\n');
    const pattern = Buffer.alloc(patternKiB * 1024);
    for (let off = 0; off < pattern.length; off += unit.length) unit.copy(pattern, off);
    const got = data.subarray(patternOffsetKiB * 1024, (patternOffsetKiB + patternKiB) * 1024);
    expect(got.equals(pattern)).toBe(true);
    expect(data.subarray(0, patternOffsetKiB * 1024).every((b) => b === 0)).toBe(true);

    await timed('server-stop', () => v.stop()); // SIGTERM: ours must exit 0 after the abrupt disconnect
    if (v.legs.length === 2) {
      const [a, b] = await timed('legs-sha256', () => Promise.all(v.legs.map(fileSha256)));
      expect(b).toBe(a);
    }
  }, TEST_TIMEOUT_MS);
});
