// A private, content-addressed build of the CLI for the benchmark (tsc, then scripts/build-cli.js: the bundle
// bin/nbd-mirror.js runs and its code cache): .cache/e2e/<hash of src + tsconfig +
// bin>/ (the same scheme and directory as test/global-setup.ts, so the two share builds). dist/ is left
// alone: others rebuild it at any moment and a benchmark must not spawn a half-written build.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CACHE = join(ROOT, '.cache', 'e2e');

function sourceFiles(dir) {
  const out = [];
  for (const entry of readdirSync(dir).sort()) {
    const p = join(dir, entry);
    if (statSync(p).isDirectory()) out.push(...sourceFiles(p));
    else out.push(p);
  }
  return out;
}

function sourceHash() {
  const h = createHash('sha256');
  for (const f of [join(ROOT, 'tsconfig.json'), join(ROOT, 'bin', 'nbd-mirror.js'), join(ROOT, 'scripts', 'build-cli.js'), ...sourceFiles(join(ROOT, 'src'))]) {
    h.update(relative(ROOT, f)).update('\0').update(readFileSync(f)).update('\0');
  }
  return h.digest('hex').slice(0, 16);
}

/**
 * A build of the current sources copied into `intoDir` (with a node_modules link), so the benchmark
 * keeps working even if a test run prunes the shared cache meanwhile. Returns its bin/nbd-mirror.js.
 */
export function privateBuildCopy(intoDir) {
  const cli = privateBuild();
  const buildDir = dirname(dirname(cli));
  const copy = join(intoDir, 'build');
  // Timestamps kept: bin/nbd-mirror.js runs the bundle only when it is newer than tsc's output.
  cpSync(join(buildDir, 'dist'), join(copy, 'dist'), { recursive: true, preserveTimestamps: true });
  cpSync(join(buildDir, 'bin'), join(copy, 'bin'), { recursive: true });
  // package.json ("type": "module", the version): without one above it, node finds each .js file's module
  // type by first compiling it as CommonJS (syntax detection): slower start-up than an installed copy.
  cpSync(join(ROOT, 'package.json'), join(copy, 'package.json'));
  symlinkSync(join(ROOT, 'node_modules'), join(copy, 'node_modules'));
  return join(copy, 'bin', 'nbd-mirror.js');
}

/** Returns the path of bin/nbd-mirror.js in a complete private build of the current sources (tsc, bundle, code cache). */
export function privateBuild() {
  mkdirSync(CACHE, { recursive: true });
  const hash = sourceHash();
  const buildDir = join(CACHE, hash);
  const cli = join(buildDir, 'bin', 'nbd-mirror.js');
  if (existsSync(cli)) return cli;
  const tmp = join(CACHE, `tmp-${hash}-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  const r = spawnSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.json'), '--outDir', join(tmp, 'dist')], {
    cwd: ROOT,
    encoding: 'utf8',
  });
  if (r.status !== 0) console.warn(`bench: tsc reported errors; using what it emitted:\n${r.stdout}${r.stderr}`);
  if (!existsSync(join(tmp, 'dist', 'control', 'cli', 'main.js'))) throw new Error('bench: tsc emitted no dist/control/cli/main.js');
  cpSync(join(ROOT, 'bin'), join(tmp, 'bin'), { recursive: true });
  // The bundle bin/nbd-mirror.js runs, and its code cache (trained through tmp/bin).
  const b = spawnSync(process.execPath, [join(ROOT, 'scripts', 'build-cli.js'), '--dist', join(tmp, 'dist')], { cwd: ROOT, stdio: 'inherit' });
  if (b.status !== 0) throw new Error('bench: scripts/build-cli.js failed');
  writeFileSync(join(tmp, 'BUILT'), `${new Date().toISOString()} from ${hash}\n`);
  try {
    renameSync(tmp, buildDir);
  } catch {
    rmSync(tmp, { recursive: true, force: true });
  }
  return cli;
}
