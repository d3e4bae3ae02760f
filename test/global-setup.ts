// Vitest global setup: compile src/ once for the e2e tests, which spawn the real CLI.
//
// The build goes to a PRIVATE, content-addressed directory, .cache/e2e/<hash of src + tsconfig>/
// ({dist/, bin/nbd-mirror.js}), not to dist/: other people (and other test runs) rebuild dist/ at any
// moment, and a test must never spawn a half-rewritten build. Same sources -> same hash -> no rebuild, so
// targeted unit runs stay fast. The path is handed to the tests in NBD_MIRROR_CLI (an existing
// NBD_MIRROR_CLI wins: point it at an installed copy to test that instead).
//
// Type errors: under CI=true they fail the run; locally tsc still emits, so they are printed loudly and
// the build is used anyway (a type error in one half-written file must not block everyone's tests).
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const CACHE = join(ROOT, '.cache', 'e2e');
/** Builds always kept (newest first), whatever their age. */
const BUILDS_KEPT = 4;
/** An older build unused for this long is removed (a test run lasts minutes, not hours). */
const BUILD_IDLE_MS_MAX = 3_600_000;

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir).sort()) {
    const p = join(dir, entry);
    if (statSync(p).isDirectory()) out.push(...sourceFiles(p));
    else out.push(p);
  }
  return out;
}

function sourceHash(): string {
  const h = createHash('sha256');
  for (const f of [join(ROOT, 'tsconfig.json'), join(ROOT, 'bin', 'nbd-mirror.js'), join(ROOT, 'scripts', 'build-cli.js'), ...sourceFiles(join(ROOT, 'src'))]) {
    h.update(relative(ROOT, f)).update('\0').update(readFileSync(f)).update('\0');
  }
  return h.digest('hex').slice(0, 16);
}

/**
 * Remove builds nobody used for BUILD_IDLE_MS_MAX (each run touches its build), beyond the newest
 * BUILDS_KEPT. Another run may still be spawning from an older build, so age, not count, decides.
 */
function prune(keep: string): void {
  // A tmp- dir is a build in progress (maybe another run's); one older than an hour was interrupted.
  for (const d of readdirSync(CACHE).filter((x) => x.startsWith('tmp-'))) {
    if (Date.now() - statSync(join(CACHE, d)).mtimeMs > BUILD_IDLE_MS_MAX) rmSync(join(CACHE, d), { recursive: true, force: true });
  }
  const builds = readdirSync(CACHE)
    .filter((d) => d !== keep && !d.startsWith('tmp-'))
    .map((d) => ({ d, mtimeMs: statSync(join(CACHE, d)).mtimeMs }))
    .sort((a, b) => b.mtimeMs - a.mtimeMs);
  for (const b of builds.slice(BUILDS_KEPT - 1)) {
    if (Date.now() - b.mtimeMs > BUILD_IDLE_MS_MAX) rmSync(join(CACHE, b.d), { recursive: true, force: true });
  }
}

export default function setup(): void {
  if (process.env.NBD_MIRROR_CLI !== undefined) return;
  mkdirSync(CACHE, { recursive: true });
  const hash = sourceHash();
  const buildDir = join(CACHE, hash);
  const cli = join(buildDir, 'bin', 'nbd-mirror.js');
  if (!existsSync(cli)) {
    const tmp = join(CACHE, `tmp-${hash}-${process.pid}`);
    rmSync(tmp, { recursive: true, force: true });
    const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
    const result = spawnSync(process.execPath, [tsc, '-p', join(ROOT, 'tsconfig.json'), '--outDir', join(tmp, 'dist')], { cwd: ROOT, encoding: 'utf8' });
    if (result.error) throw result.error;
    if (result.status !== 0) {
      const message = `global-setup: tsc reported errors (exit ${result.status}):\n${result.stdout}${result.stderr}`;
      if (process.env.CI === 'true') throw new Error(message);
      console.warn(`\n!!!!!!!!!!\n${message}\n!!! using what tsc emitted anyway (this FAILS under CI=true)\n!!!!!!!!!!\n`);
    }
    if (!existsSync(join(tmp, 'dist', 'control', 'cli', 'main.js'))) throw new Error('global-setup: tsc emitted no dist/control/cli/main.js');
    cpSync(join(ROOT, 'bin'), join(tmp, 'bin'), { recursive: true });
    // The bundle bin/nbd-mirror.js runs and its code cache, as `npm run build` makes them (what users run).
    const bundle = spawnSync(process.execPath, [join(ROOT, 'scripts', 'build-cli.js'), '--dist', join(tmp, 'dist')], { cwd: ROOT, encoding: 'utf8' });
    if (bundle.status !== 0) throw new Error(`global-setup: scripts/build-cli.js failed:\n${bundle.stdout}${bundle.stderr}`);
    writeFileSync(join(tmp, 'BUILT'), `${new Date().toISOString()} from ${hash}\n`);
    try {
      renameSync(tmp, buildDir); // atomic: a concurrent run either sees the whole build or none
    } catch {
      rmSync(tmp, { recursive: true, force: true }); // another run finished the same build first
    }
  }
  const now = new Date();
  utimesSync(buildDir, now, now); // mark it used, so a concurrent run does not prune it
  prune(hash);
  process.env.NBD_MIRROR_CLI = cli;
}
