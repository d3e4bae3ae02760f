// The servers the benchmark compares, each started on a unix socket in the work dir and stopped by PID.
// Every server gets comparable settings: page cache on (nbdkit's file plugin default; qemu-nbd
// --cache=writeback, --aio=threads), persistent, several connections allowed.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** Set by run.js (a private build, see build.js); bin/nbd-mirror.js (dist/) otherwise. */
let CLI = join(ROOT, 'bin', 'nbd-mirror.js');
export function setCli(path) {
  CLI = path;
}
export const READY_TIMEOUT_MS = 20_000;
export const STOP_TIMEOUT_MS = 15_000;
/** LVM's default mirror region size: 512 KiB. */
export const REGION_SECTORS = 1024;

function sectors(bytes) {
  return bytes / 512;
}

/** Table lines for our server. `sync` decides whether the mirror resyncs at activation. */
export function linearTable(file, sizeBytes) {
  return `0 ${sectors(sizeBytes)} linear ${file} 0`;
}
export function mirrorTable({ legs, sizeBytes, logFile, sync }) {
  const log = logFile === undefined ? `core 2 ${REGION_SECTORS} ${sync}` : `disk 3 ${logFile} ${REGION_SECTORS} ${sync}`;
  return `0 ${sectors(sizeBytes)} mirror ${log} ${legs.length} ${legs.map((l) => `${l} 0`).join(' ')}`;
}

/**
 * Server definitions: name -> (ctx) => { command, args, pidFile, socket, description, tls? }.
 * ctx = { dir, files: { a, b, log, single }, sizeBytes, pki? } (pki: tls-pki.js, for the -tls servers).
 * The 2-leg servers (ours and qemu-quorum) serve legs A and B; the one-file servers serve S, a copy of A made
 * with B, so that only mirrors write A and B and the legs stay identical. qemu's quorum hashes (SHA-256) every
 * child's data on a read where children differ: with nbdkit writing A alone, as before, its reads were up to
 * ~40% slower (1M reads; measured here, 256 MiB files, children identical vs differing).
 */
export const SERVERS = {
  linear: (ctx) => ours(ctx, 'linear', linearTable(ctx.files.single, ctx.sizeBytes), 'nbd-mirror linear export of S'),
  // TLS rows (issue 12): the same two servers with TLS required, X.509 from ctx.pki (tls-pki.js).
  'linear-tls': (ctx) => ({
    ...ours(ctx, 'linear-tls', linearTable(ctx.files.single, ctx.sizeBytes), 'nbd-mirror linear export of S, --tls require (X.509)', ['--tls', 'require', '--tls-certificates', ctx.pki.server]),
    tls: true,
  }),
  'nbdkit-tls': (ctx) => {
    const socket = join(ctx.dir, 'nbdkit-tls.sock');
    const pidFile = join(ctx.dir, 'nbdkit-tls.pid');
    return {
      command: 'nbdkit',
      args: ['-f', '-U', socket, '-P', pidFile, '--tls=require', `--tls-certificates=${ctx.pki.server}`, 'file', ctx.files.single],
      socket,
      pidFile,
      description: 'nbdkit --tls=require file plugin on S (X.509)',
      tls: true,
    };
  },
  nbdkit: (ctx) => {
    const socket = join(ctx.dir, 'nbdkit.sock');
    const pidFile = join(ctx.dir, 'nbdkit.pid');
    return { command: 'nbdkit', args: ['-f', '-U', socket, '-P', pidFile, 'file', ctx.files.single], socket, pidFile, description: 'nbdkit file plugin on S' };
  },
  'qemu-nbd': (ctx) => {
    const socket = join(ctx.dir, 'qemu-nbd.sock');
    const pidFile = join(ctx.dir, 'qemu-nbd.pid');
    return {
      command: 'qemu-nbd',
      args: ['-k', socket, '--pid-file', pidFile, '-f', 'raw', '--cache=writeback', '--aio=threads', '-t', '-e', '16', ctx.files.single],
      socket,
      pidFile,
      description: 'qemu-nbd raw on S, cache=writeback, aio=threads',
    };
  },
  'mirror-core': (ctx) =>
    ours(ctx, 'mirror-core', mirrorTable({ legs: [ctx.files.a, ctx.files.b], sizeBytes: ctx.sizeBytes, sync: 'nosync' }), 'nbd-mirror 2-leg mirror, core log, nosync'),
  'mirror-disk': (ctx) =>
    ours(
      ctx,
      'mirror-disk',
      mirrorTable({ legs: [ctx.files.a, ctx.files.b], sizeBytes: ctx.sizeBytes, logFile: ctx.files.log, sync: 'nosync' }),
      'nbd-mirror 2-leg mirror, disk log (file in the same dir), nosync',
    ),
  'qemu-quorum': (ctx) => {
    const socket = join(ctx.dir, 'qemu-quorum.sock');
    const pidFile = join(ctx.dir, 'qemu-quorum.pid');
    const opts = [
      'driver=quorum',
      'vote-threshold=1',
      'children.0.driver=raw',
      `children.0.file.filename=${ctx.files.a}`,
      'children.1.driver=raw',
      `children.1.file.filename=${ctx.files.b}`,
    ].join(',');
    return {
      command: 'qemu-nbd',
      args: ['-k', socket, '--pid-file', pidFile, '--cache=writeback', '--aio=threads', '-t', '-e', '16', '--image-opts', opts],
      socket,
      pidFile,
      description: 'qemu-nbd 2-way quorum (vote-threshold=1) over A and B',
    };
  },
};

function ours(ctx, label, table, description, extraArgs = []) {
  const socket = join(ctx.dir, `${label}.sock`);
  const pidFile = join(ctx.dir, `${label}.pid`);
  return {
    command: process.execPath,
    args: [CLI, 'serve', '--quiet', '--log-level', 'warn', '--table', table, '--listen', `unix:${socket}`, '--pid-file', pidFile, '--control', join(dirname(socket), `${label}.ctl`), '--dashboard', '0', ...extraArgs],
    socket,
    pidFile,
    description,
    table,
  };
}

/**
 * The order `names` run in for row `row` (run.js: row = round + job index): row r of a Williams design,
 * base sequence 0, 1, n-1, 2, n-2, ... plus r (mod n). Over n consecutive rows each server runs once in every
 * position; for an even n, each server also follows every other one exactly once (for an odd n, the rows
 * are still a Latin square). So no server always goes first, last, or right after the same other server.
 */
export function runOrder(names, row) {
  const n = names.length;
  const base = [0];
  for (let k = 1; k < n; k++) base.push(k % 2 === 1 ? (k + 1) / 2 : n - k / 2);
  const shift = ((row % n) + n) % n;
  return base.map((i) => names[(i + shift) % n]);
}

/** Starts a server definition; resolves once its pid file names it and its socket exists. */
export async function startServer(def, { onStderr } = {}) {
  await rm(def.pidFile, { force: true });
  await rm(def.socket, { force: true });
  const child = spawn(def.command, def.args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (c) => {
    stderr = (stderr + c).slice(-65536);
    onStderr?.(String(c));
  });
  let exit;
  const exited = new Promise((r) => child.on('exit', (code, signal) => r((exit = { code, signal }))));
  const startedMs = Date.now();
  for (;;) {
    if (exit !== undefined) throw new Error(`${def.command} exited before ready (${exit.code ?? exit.signal}):\n${stderr}`);
    const pid = await readFile(def.pidFile, 'utf8').catch(() => '');
    if (pid.trim() !== '' && existsSync(def.socket)) break;
    if (Date.now() - startedMs > READY_TIMEOUT_MS) {
      child.kill('SIGKILL');
      throw new Error(`${def.command} not ready after ${READY_TIMEOUT_MS} ms:\n${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    pid: child.pid,
    startedMs,
    /** When the pid file and socket were first seen (polled every 20 ms). */
    readyMs: Date.now(),
    stderr: () => stderr,
    stop: async () => {
      if (exit !== undefined) return exit;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
      const status = await exited;
      clearTimeout(timer);
      return status;
    },
  };
}
