// Builds the CLI's bundle, the file bin/nbd-mirror.js runs: dist/bundle/nbd-mirror.cjs (+ .map) from src/
// with esbuild, then stores its V8 code cache by a training run (a `serve` of a tiny 2-region mirror that
// resyncs: the start-up and resync code gets compiled and cached). Part of `npm run build` (after tsc,
// which type-checks and emits the per-module dist/ that bin/ falls back to); test/global-setup.ts and
// scripts/bench/build.js build their private copies with it too.
//
// One file because start-up time is resync time: ~130 modules resolved, read and compiled one by one cost
// ~0.1 s more than one bundle with a code cache. CommonJS because only a vm.Script takes a code cache.
// What is not in the bundle: packages only some commands or options load (ws, prom-client, pino-pretty,
// cli-progress) and buffer-layout (required at run time), so serve still does not load them; the native
// addons (found from the bundle's directory upwards, as from dist/). import.meta.url is the bundle's URL
// (every use walks up to the package root, or is '../../native/...', the same depth as dist/<dir>/x.js).
//
//   node scripts/build-cli.js [--dist DIR (default dist/; trained through DIR/../bin/nbd-mirror.js)] [--no-train]
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
/** Packages left to run-time require: only some commands or options need them. */
const EXTERNAL_PACKAGES = ['ws', 'prom-client', 'pino-pretty', 'cli-progress', 'buffer-layout'];
/** Length of the build id (hex) on the bundle's first line; bin/nbd-mirror.js reads the same. */
const BUILD_ID_HEX = 16;
const ID_PLACEHOLDER = '0'.repeat(BUILD_ID_HEX);
/** The training run must have stored the cache by then, else the build goes on without one. */
const TRAIN_TIMEOUT_MS = 30_000;
/** After SIGTERM, the training server gets this long to exit before SIGKILL. */
const TRAIN_STOP_MS = 15_000;
const TRAIN_POLL_MS = 20;
/** The training mirror: 2 regions of 512 KiB, leg B empty, 'sync': it resyncs when it opens. */
const TRAIN_LEG_BYTES = 1024 * 1024;

/** The bundle's path under a dist directory. */
export function bundlePath(distDir) {
  return join(distDir, 'bundle', 'nbd-mirror.cjs');
}

/**
 * Bundles src/control/cli/main.ts into `distDir`/bundle/nbd-mirror.cjs, its first line naming the build
 * (a hash of the bundle), and removes code caches of older builds there. Returns the bundle's path.
 */
export async function bundleCli(distDir = join(ROOT, 'dist')) {
  const { build } = await import('esbuild');
  const outfile = bundlePath(distDir);
  mkdirSync(dirname(outfile), { recursive: true });
  await build({
    entryPoints: [join(ROOT, 'src', 'control', 'cli', 'main.ts')],
    outfile,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    sourcemap: true,
    external: EXTERNAL_PACKAGES,
    // import('ws') of an external package becomes a require(): a vm.Script has no module loader behind it.
    supported: { 'dynamic-import': false },
    define: { 'import.meta.url': '__nbdMirrorBundleUrl' },
    banner: { js: `// nbd-mirror bundle ${ID_PLACEHOLDER}\nvar __nbdMirrorBundleUrl = require("node:url").pathToFileURL(__filename).href;` },
    logLevel: 'warning',
  });
  const text = readFileSync(outfile, 'utf8');
  if (!text.startsWith(`// nbd-mirror bundle ${ID_PLACEHOLDER}\n`)) throw new Error(`build-cli: ${outfile} does not start with the build-id line`);
  if (/\bimport\(/.test(text)) throw new Error(`build-cli: ${outfile} has an import() left (a vm.Script cannot run it)`);
  // Same length as the placeholder: the source map's positions stay right.
  const id = createHash('sha256').update(text).digest('hex').slice(0, BUILD_ID_HEX);
  writeFileSync(outfile, text.replace(ID_PLACEHOLDER, id));
  for (const f of readdirSync(dirname(outfile))) {
    if (f.endsWith('.v8cache') || f.endsWith('.tmp')) rmSync(join(dirname(outfile), f), { force: true });
  }
  return outfile;
}

/**
 * Runs `serve` once through `cliPath` (a bin/nbd-mirror.js whose ../dist holds the bundle) on a tiny mirror
 * that resyncs, until the launcher has stored the code cache; then stops it. Resolves true when a cache
 * was stored; false (with a warning) otherwise: the CLI works without one, it only starts slower.
 */
export async function trainCodeCache(cliPath) {
  const bundleDir = dirname(bundlePath(join(dirname(cliPath), '..', 'dist')));
  const cached = () => readdirSync(bundleDir).some((f) => f.endsWith('.v8cache'));
  let dir;
  let child;
  let stderr = '';
  try {
    dir = mkdtempSync(join(tmpdir(), 'nbdm-train-'));
    const legs = ['a.img', 'b.img'].map((f) => join(dir, f));
    writeFileSync(legs[0], Buffer.alloc(TRAIN_LEG_BYTES, 0x5a));
    writeFileSync(legs[1], Buffer.alloc(TRAIN_LEG_BYTES));
    const table = `0 ${TRAIN_LEG_BYTES / 512} mirror core 2 1024 sync 2 ${legs[0]} 0 ${legs[1]} 0`;
    const args = [cliPath, 'serve', '--quiet', '--log-level', 'warn', '--table', table, '--listen', `unix:${join(dir, 's.sock')}`];
    args.push('--control', join(dir, 'c.sock'), '--pid-file', join(dir, 'serve.pid'), '--dashboard', '0');
    child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, NBD_MIRROR_BUNDLE: '1' } });
    child.stderr.on('data', (c) => (stderr = (stderr + c).slice(-4000)));
    let exited = false;
    const exit = new Promise((r) => {
      child.on('exit', () => ((exited = true), r()));
      child.on('error', (e) => ((exited = true), (stderr += String(e)), r()));
    });
    const deadline = Date.now() + TRAIN_TIMEOUT_MS;
    while (!cached() && !exited && Date.now() < deadline) await new Promise((r) => setTimeout(r, TRAIN_POLL_MS));
    if (!exited) {
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), TRAIN_STOP_MS);
      await exit;
      clearTimeout(killer);
    }
  } catch (e) {
    stderr += String(e);
  } finally {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  }
  if (!cached()) console.warn(`build-cli: no code cache stored (the CLI works, it starts slower)${stderr ? `:\n${stderr}` : ''}`);
  return cached();
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { dist: { type: 'string' }, 'no-train': { type: 'boolean', default: false } } });
  const distDir = resolve(values.dist ?? join(ROOT, 'dist'));
  const outfile = await bundleCli(distDir);
  if (!existsSync(outfile)) throw new Error(`build-cli: ${outfile} was not written`);
  if (!values['no-train']) await trainCodeCache(join(distDir, '..', 'bin', 'nbd-mirror.js'));
}
