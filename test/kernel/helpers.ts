// Helpers for the kernel tests (test/kernel/*.test.ts): an NBD server on 127.0.0.1 that a qemu guest
// reaches at 10.0.2.2 (ours: `nbd-mirror serve` with a linear or 2-leg mirror table; or nbdkit's file
// plugin as a reference), readiness by a real NBD handshake, TCP connection counting, host-side checks of
// the leg files (e2fsck -fn, debugfs rdump), and booting a guest whose console is attached on failure.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, createReadStream, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { rm } from 'node:fs/promises';
import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { describeResult, runGuest, type GuestOptions, type GuestResult } from '../../scripts/vm/run-guest.js';
import { cacheDir, ensureHostTools, ensureImage } from '../../scripts/vm/build-image.js';
import { withSlots } from '../../scripts/vm/slots.js';
import { findTool, IN_CI, unmet } from '../helpers/tools.js';
import { run } from '../helpers/run.js';
import { createSparseFile, makeTempDir, removeTempDir, SECTOR_BYTES } from '../helpers/tmp.js';
import { startServer, type ServerHandle } from '../helpers/server.js';

export { IN_CI };
export const READY_TIMEOUT_MS = 15_000;
const READY_POLL_MS = 50;
/** Region size of the mirror table, in sectors (512 KiB). */
export const MIRROR_REGION_SECTORS = 1024;

export type { GuestOptions, GuestResult };
export const bootGuest: (opts: GuestOptions) => Promise<GuestResult> = runGuest;
export const describeGuest: (r: GuestResult) => string = describeResult;

/**
 * Builds (or finds) a guest image before any test runs: the build is synchronous and would otherwise
 * stall the event loop under a running test (first run: downloads + kernel unpack, tens of seconds).
 */
export function prepareImage(name: string): { kernelVersion: string; initrd: string } {
  return ensureImage(name);
}

/** Debian package of each host tool the kernel tests use. */
const TOOL_PACKAGES: Record<string, string> = {
  'fsck.gfs2': 'gfs2-utils', e2fsck: 'e2fsprogs', debugfs: 'e2fsprogs', nbdinfo: 'libnbd-bin', nbdcopy: 'libnbd-bin', nbdkit: 'nbdkit',
};

/** Tools the kernel tests need on the host; under CI=true a missing one fails the file. */
export function requireKernelTestTools(extra: string[] = []): boolean {
  // As root, install what is missing first (apt-get install only if missing), as the harness promises.
  try {
    ensureHostTools(Object.fromEntries(['e2fsck', 'debugfs', 'nbdinfo', ...extra].map((t) => [t, TOOL_PACKAGES[t] ?? t])));
  } catch (e) {
    return unmet('host packages for the kernel tests', (e as Error).message);
  }
  const needed = ['qemu-system-x86_64', 'depmod', 'dpkg-deb', 'apt-get', 'python3', 'e2fsck', 'debugfs', 'nbdinfo', ...extra];
  const missing = needed.filter((t) => findTool(t) === undefined);
  if (missing.length > 0) return unmet(`tools ${missing.join(', ')}`, 'run scripts/install-deps.sh as root');
  return true;
}

/** A free TCP port on 127.0.0.1 (bound and released; the server binds it right after). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      s.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

/** A free UDP port on 127.0.0.1 (bound and released; qemu binds it right after). */
export function freeUdpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createSocket('udp4');
    s.once('error', reject);
    s.bind(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Waits until an NBD handshake with nbd://127.0.0.1:port/name succeeds (nbdinfo --size). */
export async function waitForNbd(port: number, name: string, isDead: () => boolean, output: () => string): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    let why: string;
    try {
      const r = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${port}/${name}`], { allowFailure: true, timeoutMs: 5_000 });
      if (r.code === 0) return;
      why = r.stderr;
    } catch (e) {
      why = (e as Error).message; // nbdinfo itself timed out (a busy machine): try again until the deadline
    }
    if (isDead()) throw new Error(`NBD server exited before it was ready\n${output()}`);
    if (Date.now() > deadline) throw new Error(`no NBD handshake on 127.0.0.1:${port} after ${READY_TIMEOUT_MS} ms: ${why}\n${output()}`);
    await new Promise((res) => setTimeout(res, READY_POLL_MS));
  }
}

export type ServerKind = 'mirror' | 'linear' | 'nbdkit';

export interface TestVolume {
  kind: ServerKind;
  port: number;
  exportName: string;
  sizeBytes: number;
  dir: string;
  /** Files holding the data: one (linear, nbdkit) or the two legs (mirror). */
  legs: string[];
  logFile?: string;
  /** `nbd-mirror serve`'s control socket (events, status, table); undefined for nbdkit. */
  controlPath?: string;
  /** The server's output so far (for failure messages). */
  output(): string;
  alive(): boolean;
  pid: number;
  /** Stop the server (SIGTERM; ours must exit 0) and keep the files for inspection. */
  stop(): Promise<void>;
  /** Stop if running and remove the directory. */
  dispose(): Promise<void>;
}

/** Variations of the mirror volume (the leg-failure test). */
export interface VolumeOptions {
  /** The second leg served elsewhere (e.g. an nbdkit error-filter leg): its URI for the table, its file. */
  readonly secondLeg?: { readonly uri: string; readonly file: string };
  /** Table features after the legs, e.g. ['handle_errors']. */
  readonly features?: readonly string[];
  /** More `nbd-mirror serve` arguments, e.g. ['--repair-policy', 'remove']. */
  readonly serveArgs?: readonly string[];
}

/**
 * Starts a server for a fresh volume of sizeBytes on 127.0.0.1:<free port>.
 * mirror: `0 <sectors> mirror disk 2 LOG 1024 2 LEG1 0 LEG2 0 [N FEATURES...]` via `nbd-mirror serve`;
 * linear: `0 <sectors> linear FILE 0`; nbdkit: `nbdkit -f file FILE` (reference server).
 */
export async function startVolume(kind: ServerKind, sizeBytes: number, exportName = 'vol', opts: VolumeOptions = {}): Promise<TestVolume> {
  const dir = await makeTempDir('nbdm-kernel-');
  const port = await freePort();
  const sectors = sizeBytes / SECTOR_BYTES;
  try {
    if (kind === 'nbdkit') {
      const file = await createSparseFile(join(dir, 'disk.img'), sizeBytes);
      return await startNbdkit(dir, port, file, exportName, sizeBytes);
    }
    const legs = kind === 'mirror' ? [join(dir, 'leg1.img'), join(dir, 'leg2.img')] : [join(dir, 'disk.img')];
    if (kind === 'mirror' && opts.secondLeg) legs[1] = opts.secondLeg.file;
    for (const leg of legs) if (leg !== opts.secondLeg?.file) await createSparseFile(leg, sizeBytes);
    let logFile: string | undefined;
    let table: string;
    if (kind === 'mirror') {
      logFile = await createSparseFile(join(dir, 'log.img'), 1024 * 1024);
      const second = opts.secondLeg?.uri ?? legs[1];
      const features = opts.features?.length ? ` ${opts.features.length} ${opts.features.join(' ')}` : '';
      table = `0 ${sectors} mirror disk 2 ${logFile} ${MIRROR_REGION_SECTORS} 2 ${legs[0]} 0 ${second} 0${features}`;
    } else {
      table = `0 ${sectors} linear ${legs[0]} 0`;
    }
    const h: ServerHandle = await startServer({
      tables: [{ table, name: exportName }],
      extraArgs: ['--listen', `tcp:127.0.0.1:${port}`, ...(opts.serveArgs ?? [])],
      dir,
    });
    await waitForNbd(port, exportName, () => h.hasExited(), () => h.output());
    let stopped = false;
    const stop = async () => { if (!stopped) { stopped = true; await h.stop(); } };
    return {
      kind, port, exportName, sizeBytes, dir, legs, logFile, controlPath: h.controlPath, pid: h.pid,
      output: () => h.output(), alive: () => !h.hasExited(), stop,
      dispose: async () => { try { await stop(); } finally { await removeTempDir(dir); } },
    };
  } catch (e) {
    await removeTempDir(dir);
    throw e;
  }
}

async function startNbdkit(dir: string, port: number, file: string, exportName: string, sizeBytes: number): Promise<TestVolume> {
  const pidFile = join(dir, 'nbdkit.pid');
  const child: ChildProcess = spawn('nbdkit', ['-f', '-p', String(port), '-i', '127.0.0.1', '-P', pidFile, 'file', file], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (c: Buffer) => { out = (out + c.toString()).slice(-65536); });
  child.stderr!.on('data', (c: Buffer) => { out = (out + c.toString()).slice(-65536); });
  let exited = false;
  const exitedP = new Promise<void>((res) => child.on('exit', () => { exited = true; res(); }));
  await waitForNbd(port, exportName, () => exited, () => out);
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    if (!exited) child.kill('SIGTERM');
    await exitedP;
  };
  return {
    kind: 'nbdkit', port, exportName, sizeBytes, dir, legs: [file], pid: child.pid!,
    output: () => out, alive: () => !exited, stop,
    dispose: async () => { try { await stop(); } finally { await rm(dir, { recursive: true, force: true }); } },
  };
}

/** Established TCP connections whose local end is 127.0.0.1:port (the server side), from /proc/net/tcp. */
export function serverConnections(port: number): number {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  let n = 0;
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length > 3 && f[1] === `0100007F:${hexPort}` && f[3] === '01') n++;
  }
  return n;
}

/** `e2fsck -fn FILE`: throws with its output unless the filesystem is clean. */
export async function e2fsckClean(file: string): Promise<string> {
  const r = await run('e2fsck', ['-fn', file], { allowFailure: true, timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(`e2fsck -fn ${file} exit ${r.code}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/**
 * fsck.gfs2 calls sync(2), which waits for writeback on every block device of the machine: another test's
 * wedged loop device held it in D state for minutes. The leg is a private file whose writer has exited, so
 * a machine-wide sync adds nothing; an LD_PRELOAD shim makes it a no-op (built once with cc; without a C
 * compiler fsck.gfs2 runs as is).
 */
let noSyncShim: Promise<string | undefined> | undefined;
function noSyncPreload(): Promise<string | undefined> {
  noSyncShim ??= (async () => {
    const so = join(cacheDir(), 'nosync.so'); // kept in the VM cache, built once per machine
    if (existsSync(so)) return so;
    if (findTool('cc') === undefined) return undefined;
    const dir = mkdtempSync(join(tmpdir(), 'nbdm-nosync-'));
    try {
      writeFileSync(join(dir, 'nosync.c'), 'void sync(void) {}\n');
      const r = await run('cc', ['-shared', '-fPIC', '-o', join(dir, 'nosync.so'), join(dir, 'nosync.c')], { allowFailure: true, timeoutMs: 60_000 });
      if (r.code !== 0) return undefined;
      mkdirSync(cacheDir(), { recursive: true });
      copyFileSync(join(dir, 'nosync.so'), `${so}.${process.pid}`);
      renameSync(`${so}.${process.pid}`, so); // atomic: concurrent workers never load a half-written file
      return so;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  })();
  return noSyncShim;
}

/** `fsck.gfs2 -n FILE` (no changes; journals must be clean): throws with its output unless it exits 0. */
export async function gfs2FsckClean(file: string): Promise<string> {
  const preload = await noSyncPreload();
  const env = preload ? { ...process.env, LD_PRELOAD: preload } : process.env;
  const r = await run('fsck.gfs2', ['-n', file], { allowFailure: true, timeoutMs: 120_000, env });
  if (r.code !== 0) throw new Error(`fsck.gfs2 -n ${file} exit ${r.code}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout + r.stderr;
}

/** sha256 of every regular file under `root` of an ext4 image, read on the host with debugfs rdump. */
export async function hostSums(image: string, root: string, scratch: string): Promise<Map<string, string>> {
  const outDir = join(scratch, `rdump-${Date.now()}`);
  await run('mkdir', ['-p', outDir]);
  await run('debugfs', ['-R', `rdump ${root} ${outDir}`, image], { timeoutMs: 60_000 });
  const sums = new Map<string, string>();
  const base = join(outDir, root.split('/').filter(Boolean).pop() ?? '');
  const walk = (d: string, rel: string) => {
    for (const e of readdirSync(d)) {
      const p = join(d, e);
      const r = rel ? `${rel}/${e}` : e;
      if (statSync(p).isDirectory()) walk(p, r);
      else sums.set(r, createHash('sha256').update(readFileSync(p)).digest('hex'));
    }
  };
  walk(base, '');
  await rm(outDir, { recursive: true, force: true });
  return sums;
}

/** `SUM: <hash>  ./path` lines a guest printed -> path (without ./) -> hash. */
export function guestSums(log: string): Map<string, string> {
  const sums = new Map<string, string>();
  for (const line of log.split('\n')) {
    const m = /SUM: ([0-9a-f]{64})\s+\.\/(\S+)/.exec(line);
    if (m) sums.set(m[2], m[1]);
  }
  return sums;
}

/** sha256 of a whole file. */
export async function fileSha256(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

export function exists(p: string): boolean {
  return existsSync(p);
}

/**
 * Runs `body` holding `guests` machine-wide guest slots (scripts/vm/slots.js; NBDM_VM_SLOTS, default 2):
 * TCG guests are CPU-bound, and vitest runs test files in parallel workers, so this bounds CPU and memory
 * across all kernel test files, not just within one.
 */
export function withGuestSlots<T>(guests: number, body: () => Promise<T>): Promise<T> {
  return withSlots(guests, body);
}

/** Peak resident set (VmHWM) of a process in MiB, 0 when it is gone. */
export function peakRssMiB(pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Math.round(Number(m[1]) / 1024) : 0;
  } catch {
    return 0;
  }
}

/** The text of guest scripts under test/kernel/guest, joined in order (a script and the shared tails it ends with). */
export function guestScript(...names: string[]): string {
  return names.map((n) => readFileSync(join(import.meta.dirname, 'guest', n), 'utf8')).join('\n');
}
