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
import { connect, type Socket } from 'node:net';
import { NbdClient } from '../../src/nbd/client/client.js';
import { acquireSlots } from '../../scripts/vm/slots.js';
import { run } from '../helpers/run.js';
import { MiB } from '../helpers/tmp.js';
import {
  bootGuest, describeGuest, e2fsckClean, fileSha256, guestScript, guestSums, hostSums, requireKernelTestTools,
  peakRssMiB, prepareImage, serverConnections, startVolume, type GuestResult, type ServerKind, type TestVolume,
} from './helpers.js';

const KIND = (process.env.NBDM_KERNEL_SERVER ?? 'mirror') as ServerKind;
const VOLUME_BYTES = 64 * MiB;
const DROP_VOLUME_BYTES = 32 * MiB;
/** Safety net against hangs; a guest on a 2-core host at load 20 took 50 s just to boot. */
const GUEST_TIMEOUT_MS = 200_000;
/**
 * Waiting for a machine-wide guest slot (scripts/vm/slots.js) behind other kernel tests, e.g. the GFS2 pair
 * holding both slots for a few minutes; bounded separately so a long wait is not mistaken for a hang.
 */
const SLOT_WAIT_MS = 600_000;
/** Host phases of one test (server start/stop, e2fsck, sha256 of legs, debugfs, nbdcopy) on a busy host. */
const HOST_PHASES_MS = 150_000;
const TEST_TIMEOUT_MS = SLOT_WAIT_MS + GUEST_TIMEOUT_MS + HOST_PHASES_MS;
/** First run: package downloads, kernel unpack and image build (~1 min on a busy 2-core machine). */
const IMAGE_BUILD_TIMEOUT_MS = 300_000;
/** nbd-client -t: the kernel fails a request (and shuts the connection) after this long without a reply. */
const REQUEST_TIMEOUT_S = 8;
/** Where the other (host) client of the bad-input test keeps its marker (past the guest's busy region). */
const MARKER_OFFSET_BYTES = 28 * MiB;
const TREE_FILES = 41; // 4 dirs x 5 files x 2 + the big file (see guest/ext4-roundtrip.sh)

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
  const tWait = Date.now();
  const release = await acquireSlots(1, { timeoutMs: SLOT_WAIT_MS });
  try {
    const t0 = Date.now();
    const r = new Run(label);
    r.phases.push(`slot-wait=${t0 - tWait}`);
    try { await body(r); } finally { await r.finish(t0); }
  } finally {
    release();
  }
}

async function roundTrip(t: Run, nbdClientArgs: string, expectConnections: number): Promise<void> {
  const v = (t.volume = await t.timed('server-start', () => startVolume(KIND, VOLUME_BYTES)));
  let maxConnections = 0;
  const r = await t.timed('guest', () => bootGuest({
    script: guestScript('ext4-roundtrip.sh', 'verify-tree.sh'),
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

/** Opens a connection to 127.0.0.1:port and hands it to `fn` once connected; resolves when it is closed. */
function rawConnection(port: number, fn: (s: Socket, greeting: Promise<Buffer>) => void): Promise<void> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    let got = Buffer.alloc(0);
    const greeting = new Promise<Buffer>((res) => {
      s.on('data', (c: Buffer) => { got = Buffer.concat([got, c]); if (got.length >= 18) res(got); });
    });
    s.on('error', () => { /* a reset is expected */ });
    s.on('close', () => resolve());
    s.once('connect', () => fn(s, greeting));
    setTimeout(() => s.destroy(), 10_000).unref();
  });
}

/** Clients that die mid-handshake: gone at once, reset after the greeting, gone halfway through NBD_OPT_GO. */
async function handshakeKills(port: number): Promise<void> {
  const optHeader = (opt: number, len: number) => {
    const b = Buffer.alloc(16);
    b.write('IHAVEOPT', 0, 'latin1');
    b.writeUInt32BE(opt, 8);
    b.writeUInt32BE(len, 12);
    return b;
  };
  const flags = Buffer.from([0, 0, 0, 3]); // FIXED_NEWSTYLE | NO_ZEROES
  const NBD_OPT_GO = 7;
  await rawConnection(port, (s) => s.destroy());
  await rawConnection(port, (s, g) => void g.then(() => s.resetAndDestroy()));
  await rawConnection(port, (s, g) => void g.then(() => { s.write(flags); s.write(optHeader(NBD_OPT_GO, 1000).subarray(0, 10)); setTimeout(() => s.resetAndDestroy(), 100); }));
  await rawConnection(port, (s, g) => void g.then(() => { s.write(flags); s.write(optHeader(NBD_OPT_GO, 1000)); s.end(Buffer.alloc(5)); }));
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

  test('bad input: kernel request timeout on a stalled server, guest killed mid-write without DISC, clients killed mid-handshake; the server keeps serving its other clients', async () => {
    await withRun('bad input', async (t) => {
      const v = (t.volume = await t.timed('server-start', () => startVolume(KIND, DROP_VOLUME_BYTES)));
      const patternKiB = 1024;
      const patternOffsetKiB = 1024;
      // Another client, connected before the guest and used again after everything the guest did.
      const other = await NbdClient.connect(`nbd://127.0.0.1:${v.port}/${v.exportName}`);
      const marker = Buffer.alloc(64 * 1024, 0x5a);
      await other.write(marker, MARKER_OFFSET_BYTES, { fua: true });
      let stopped = false;
      const resume = () => { if (stopped) { stopped = false; process.kill(v.pid, 'SIGCONT'); } };
      let r: GuestResult;
      try {
        r = await t.timed('guest', () => bootGuest({
          script: guestScript('disconnect-without-disc.sh'),
          env: {
            NBDM_NBD_PORT: v.port, NBDM_NBD_EXPORT: v.exportName,
            PATTERN_KIB: patternKiB, PATTERN_OFFSET_KIB: patternOffsetKiB, BUSY_OFFSET_KIB: 8192,
            REQUEST_TIMEOUT_S: REQUEST_TIMEOUT_S, STALL_READ_OFFSET_KIB: 16384,
          },
          timeoutMs: GUEST_TIMEOUT_MS,
          killOn: /TEST: PASS/,
          onLine: (line) => {
            // The server stalls (SIGSTOP) until the kernel's request timeout has failed a read and shut
            // the connection down; then it resumes and finds that connection's socket closed under it.
            if (/TEST: step stall/.test(line) && !stopped && v.alive()) { stopped = true; process.kill(v.pid, 'SIGSTOP'); }
            if (/TEST: step timed-out/.test(line)) resume();
          },
        }));
      } finally {
        resume();
      }
      t.report(r);
      t.assertPassed(r);
      expect(r.steps.map((s) => s.name)).toEqual(
        ['attach', 'write-pattern', 'stall', 'timed-out', 'reattach', 'read-back', 'writes-in-flight', 'die-without-disc'],
      );
      expect(r.log).toMatch(/TIMED-OUT: after \d+ reads/);

      // The guest is gone; so must its connections be, and the server still alive and serving.
      const deadline = Date.now() + 5_000;
      await t.timed('conn-gone', async () => {
        while (serverConnections(v.port) > 1 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
      });
      expect(serverConnections(v.port)).toBe(1); // the other client
      expect(v.alive()).toBe(true);

      // Clients that die mid-handshake (closed, reset, or gone halfway through an option).
      await t.timed('handshake-kills', () => handshakeKills(v.port));
      const deadline2 = Date.now() + 5_000;
      while (serverConnections(v.port) > 1 && Date.now() < deadline2) await new Promise((res) => setTimeout(res, 50));
      expect(serverConnections(v.port)).toBe(1);
      expect(v.alive()).toBe(true);

      // The client connected all along still works.
      const back = Buffer.alloc(marker.length);
      await other.read(back, MARKER_OFFSET_BYTES);
      expect(back.equals(marker)).toBe(true);
      await other.write(Buffer.alloc(4096, 0x33), MARKER_OFFSET_BYTES, { fua: false });
      await other.flush();
      await other.close();

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
      expect(data.subarray(MARKER_OFFSET_BYTES, MARKER_OFFSET_BYTES + 4096).every((b) => b === 0x33)).toBe(true);
      expect(data.subarray(MARKER_OFFSET_BYTES + 4096, MARKER_OFFSET_BYTES + marker.length).every((b) => b === 0x5a)).toBe(true);

      await t.timed('server-stop', () => v.stop()); // SIGTERM: ours must exit 0 after all of the above
      if (v.legs.length === 2) {
        const [a, b] = await t.timed('legs-sha256', () => Promise.all(v.legs.map(fileSha256)));
        expect(b).toBe(a);
      }
    });
  }, TEST_TIMEOUT_MS);
});
