// The CLI's start-up: --version, help that still lists every command and option although commands are
// loaded on demand, and a plain `serve` that loads only what its options need (start-up time is resync
// time: a table that needs a resync starts copying when it opens). Which modules a real `serve` process
// loaded is read from node's own loader trace (NODE_DEBUG=esm,module), so the test sees what ran: for our
// own modules in the per-module build (NBD_MIRROR_BUNDLE=0: tsc's dist/), for packages also in the bundle
// bin/nbd-mirror.js normally runs (scripts/build-cli.js), which the last test checks is what ran.
import { spawn } from 'node:child_process';
import { cpSync, readdirSync, readFileSync, symlinkSync, utimesSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/e2e.js';
import { run } from '../helpers/run.js';
import { CLI_PATH, REPO_ROOT } from '../helpers/server.js';
import { mirrorTable } from '../helpers/tables.js';
import { createSparseFile, MiB } from '../helpers/tmp.js';

const dir = useTempDir('cli-startup');
const READY_TIMEOUT_MS = 30_000;
/** The loader trace of one serve start is a few hundred KiB; keep all of it, bounded. */
const TRACE_BYTES_MAX = 16 * MiB;

const cli = (args: string[]) => run(process.execPath, [CLI_PATH, ...args], { allowFailure: true, timeoutMs: 30_000 });

describe('--version and help', () => {
  it('--version and -V print package.json version and exit 0', async () => {
    const { version } = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
    for (const flag of ['--version', '-V']) {
      const r = await cli([flag]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toBe(`${version}\n`);
    }
  });

  it('--help lists every command; serve --help lists the options of every concern', async () => {
    const r = await cli(['--help']);
    expect(r.code).toBe(0);
    for (const c of ['serve', 'ls', 'status', 'table', 'info', 'suspend', 'resume', 'reload', 'clear', 'wait', 'message', 'repair', 'events', 'verify', 'pool', 'create', 'list', 'remove', 'resize', 'convert']) {
      expect(r.stdout).toMatch(new RegExp(`^  ${c} `, 'm'));
    }
    expect(r.stdout).toContain('--version');
    const s = await cli(['serve', '--help']);
    expect(s.code).toBe(0);
    for (const o of ['--table', '--control', '--repair-policy', '--dashboard', '--tls', '--allow', '--pool', '--devices', '--log-level']) expect(s.stdout).toContain(o);
    const h = await cli(['help', 'pool']);
    expect(h.code).toBe(0);
    expect(h.stdout).toContain('extend');
  });

  it('an unknown command or option still exits 2', async () => {
    expect((await cli(['frobnicate'])).code).toBe(2);
    expect((await cli(['--frobnicate'])).code).toBe(2);
    expect((await cli(['serve', '--frobnicate'])).code).toBe(2);
  });
});

/** Start serve with node's loader trace on; returns the traced module paths once it is ready, then stops it. */
async function servedModules(sub: string, extraArgs: string[], env: NodeJS.ProcessEnv = {}): Promise<string[]> {
  const d = join(dir(), sub);
  await mkdir(d);
  const legs = [await createSparseFile(join(d, 'a.img'), 8 * MiB), await createSparseFile(join(d, 'b.img'), 8 * MiB)];
  const pidFile = join(d, 'serve.pid');
  const args = [CLI_PATH, 'serve', '--quiet', '--log-level', 'warn', '--table', mirrorTable({ legs, sizeBytes: 8 * MiB, sync: 'nosync' })];
  args.push('--listen', `unix:${join(d, 'serve.sock')}`, '--pid-file', pidFile, '--control', join(d, 'serve.ctl'), ...extraArgs);
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env, NODE_DEBUG: 'esm,module' } });
  let trace = '';
  child.stderr.on('data', (c: Buffer) => {
    if (trace.length < TRACE_BYTES_MAX) trace += c.toString();
  });
  let exited: number | null | undefined;
  const exit = new Promise<void>((r) => child.on('exit', (code) => ((exited = code), r())));
  try {
    const deadline = Date.now() + READY_TIMEOUT_MS;
    while ((await readFile(pidFile, 'utf8').catch(() => '')).trim() !== String(child.pid)) {
      if (exited !== undefined) throw new Error(`serve exited (${exited}) before ready:\n${trace.slice(-4000)}`);
      if (Date.now() > deadline) throw new Error(`serve not ready after ${READY_TIMEOUT_MS} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  } finally {
    if (exited === undefined) child.kill('SIGTERM');
    await exit;
  }
  expect(exited).toBe(0);
  const modules = new Set<string>();
  for (const m of trace.matchAll(/Storing file:\/\/(\S+) /g)) modules.add(m[1]!);
  for (const m of trace.matchAll(/^MODULE \d+: load "([^"]+)"/gm)) modules.add(m[1]!);
  return [...modules];
}

const loaded = (modules: string[], pattern: RegExp) => modules.filter((m) => pattern.test(m));

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

const PER_MODULE = { NBD_MIRROR_BUNDLE: '0' };
/** Packages a plain serve must not load. */
const OPTIONAL_PACKAGES = ['prom-client', 'ws', 'pino-pretty', 'cli-progress', '@opentelemetry'];

describe('serve loads what its options need', () => {
  it('a local mirror without a dashboard: no metrics, WebSocket, pretty logs, progress bars, pool or cluster code', async () => {
    const modules = await servedModules('plain', ['--dashboard', '0'], PER_MODULE);
    // The trace works: the engine and the server were loaded.
    expect(loaded(modules, /\/mirror\/mirror\.js$/)).toHaveLength(1);
    expect(loaded(modules, /\/nbd\/server\/server\.js$/)).toHaveLength(1);
    for (const pkg of OPTIONAL_PACKAGES) expect(loaded(modules, new RegExp(`/node_modules/${pkg}/`)), pkg).toEqual([]);
    expect(loaded(modules, /\/dist\/pool\//), 'pool').toEqual([]);
    // repair-relay.js is the cluster's repair hook the control plane calls (no corosync behind it).
    expect(loaded(modules, /\/dist\/cluster\/(?!repair-relay\.js)/), 'cluster').toEqual([]);
    expect(loaded(modules, /\/cli\/commands\/(?!serve\.js|serve-pool\.js)/), 'other commands').toEqual([]);
    expect(loaded(modules, /\/control\/(metrics|dashboard\/dashboard)\.js$/), 'metrics, dashboard').toEqual([]);
  });

  it('with a dashboard: metrics and its WebSocket are loaded (once it starts)', async () => {
    const modules = await servedModules('dashboard', ['--dashboard', String(await freePort())], PER_MODULE);
    expect(loaded(modules, /\/node_modules\/prom-client\//).length).toBeGreaterThan(0);
    expect(loaded(modules, /\/node_modules\/ws\//).length).toBeGreaterThan(0);
    expect(loaded(modules, /\/control\/(metrics|dashboard\/dashboard)\.js$/)).toHaveLength(2);
  });
});

describe('the bundle', () => {
  it('serve runs from the bundle (no per-module dist/ file loaded) with its code cache, and loads no optional package', async () => {
    const modules = await servedModules('bundle', ['--dashboard', '0']);
    expect(loaded(modules, /\/bin\/nbd-mirror\.js$/)).toHaveLength(1);
    expect(loaded(modules, /\/dist\//), 'per-module files').toEqual([]);
    // commander and pino are inside the bundle; the optional packages stay outside and unloaded.
    expect(loaded(modules, /\/node_modules\/(commander|pino)\//), 'bundled packages').toEqual([]);
    for (const pkg of OPTIONAL_PACKAGES) expect(loaded(modules, new RegExp(`/node_modules/${pkg}/`)), pkg).toEqual([]);
    // The build stored the code cache beside the bundle (named by the bundle's build id).
    const bundleDir = join(dirname(CLI_PATH), '..', 'dist', 'bundle');
    const id = /^\/\/ nbd-mirror bundle ([0-9a-f]{16})\n/.exec(readFileSync(join(bundleDir, 'nbd-mirror.cjs'), 'utf8'))?.[1];
    expect(id).toBeDefined();
    expect(readdirSync(bundleDir)).toContain(`nbd-mirror.cjs.${id}.v8cache`);
  });

  it('a package loaded on demand works from the bundle (the dashboard: prom-client and ws)', async () => {
    const modules = await servedModules('bundle-dashboard', ['--dashboard', String(await freePort())]);
    expect(loaded(modules, /\/node_modules\/prom-client\//).length).toBeGreaterThan(0);
    expect(loaded(modules, /\/node_modules\/ws\//).length).toBeGreaterThan(0);
  });

  it('tsc run alone after a build (its dist/ newer than the bundle): the per-module build runs, never the stale bundle', async () => {
    const build = join(dirname(CLI_PATH), '..');
    const copy = join(dir(), 'stale-build');
    cpSync(join(build, 'bin'), join(copy, 'bin'), { recursive: true });
    cpSync(join(build, 'dist'), join(copy, 'dist'), { recursive: true, preserveTimestamps: true });
    cpSync(join(REPO_ROOT, 'package.json'), join(copy, 'package.json'));
    symlinkSync(join(REPO_ROOT, 'node_modules'), join(copy, 'node_modules'));
    const traced = async () => {
      const r = await run(process.execPath, [join(copy, 'bin', 'nbd-mirror.js'), '--version'], { env: { ...process.env, NODE_DEBUG: 'esm,module' }, timeoutMs: 30_000 });
      expect(r.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
      return /dist\/control\/cli\/main\.js/.test(r.stderr);
    };
    expect(await traced(), 'the bundle runs').toBe(false);
    const later = new Date(Date.now() + 10_000);
    utimesSync(join(copy, 'dist', 'control', 'cli', 'main.js'), later, later);
    expect(await traced(), 'the newer per-module build runs').toBe(true);
  });
});
