#!/usr/bin/env node
// `npm start`: a 2-leg mirror with a disk log on sparse files in ./demo-data, served over NBD on a unix
// socket and on 127.0.0.1:10809, in the foreground until Ctrl-C.
//
// The files persist between runs, so the second `npm start` shows the disk log at work: only regions
// that were dirty when the previous run stopped are resynced. Delete ./demo-data to start over.
// Environment: NBD_MIRROR_DEMO_PORT (default 10809), NBD_MIRROR_DEMO_SIZE_MIB (default 1024),
// NBD_MIRROR_DEMO_DASHBOARD_PORT (web dashboard on 127.0.0.1, default 7390; 0 = none).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, openSync, closeSync, ftruncateSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const DATA = join(ROOT, 'demo-data');
const PORT = Number(process.env.NBD_MIRROR_DEMO_PORT ?? 10809);
const DASHBOARD_PORT = Number(process.env.NBD_MIRROR_DEMO_DASHBOARD_PORT ?? 7390);
const SIZE_MIB = Number(process.env.NBD_MIRROR_DEMO_SIZE_MIB ?? 1024);
const SIZE_BYTES = SIZE_MIB * 1024 * 1024;
const REGION_SECTORS = 1024; // 512 KiB, LVM's default mirror region size
const LOG_BYTES = 1024 * 1024;

function newestMtimeMs(path) {
  const st = statSync(path);
  if (!st.isDirectory()) return st.mtimeMs;
  return readdirSync(path).reduce((m, e) => Math.max(m, newestMtimeMs(join(path, e))), st.mtimeMs);
}

/** Build dist/ (and the CLI bundle) when missing or older than src/ (npm install builds both via `prepare`). */
function ensureBuilt() {
  const main = join(ROOT, 'dist', 'control', 'cli', 'main.js');
  if (existsSync(main) && statSync(main).mtimeMs >= newestMtimeMs(join(ROOT, 'src'))) return;
  console.log('demo: building (tsc, then the CLI bundle) ...');
  const r = spawnSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.json')], { stdio: 'inherit' });
  if (r.status !== 0 && !existsSync(main)) process.exit(r.status ?? 1);
  // Without a fresh bundle bin/nbd-mirror.js runs the per-module build (slower start, same behaviour).
  if (r.status === 0) spawnSync(process.execPath, [join(ROOT, 'scripts', 'build-cli.js')], { stdio: 'inherit' });
}

/** A sparse file of exactly `bytes`; an existing file of that size is kept (its data and the log persist). */
function sparseFile(path, bytes) {
  if (existsSync(path) && statSync(path).size === bytes) return false;
  const fd = openSync(path, 'w');
  ftruncateSync(fd, bytes);
  closeSync(fd);
  return true;
}

ensureBuilt();
mkdirSync(DATA, { recursive: true });
const legs = [join(DATA, 'leg0.img'), join(DATA, 'leg1.img')];
const logFile = join(DATA, 'mirror.log');
const created = legs.map((l) => sparseFile(l, SIZE_BYTES));
sparseFile(logFile, LOG_BYTES);
const sectors = SIZE_BYTES / 512;
const table = `0 ${sectors} mirror disk 2 ${logFile} ${REGION_SECTORS} 2 ${legs[0]} 0 ${legs[1]} 0`;
const socket = join(DATA, 'nbd.sock');
const control = join(DATA, 'control.sock');
const rel = (p) => relative(process.cwd(), p) || '.';

console.log(`nbd-mirror demo: a ${SIZE_MIB} MiB two-way mirror with a disk log, files in ${rel(DATA)}/ (sparse; delete the dir to start over)`);
console.log(`  table: ${table}`);
console.log(`  ${created.some(Boolean) ? 'new legs: the first activation resyncs them (fast: they are empty)' : 'existing legs and log: only regions dirty at the last stop are resynced'}`);
console.log('');

const child = spawn(
  process.execPath,
  [
    join(ROOT, 'bin', 'nbd-mirror.js'),
    'serve',
    '--table', table,
    '--name', 'demo',
    '--listen', `unix:${socket}`,
    '--listen', `tcp:127.0.0.1:${PORT}`,
    '--control', control,
    '--dashboard', String(DASHBOARD_PORT),
    '--log-level', process.env.NBD_MIRROR_LOG_LEVEL ?? 'warn',
  ],
  { stdio: ['ignore', 'pipe', 'inherit'] },
);
child.stdout.on('data', (chunk) => process.stdout.write(chunk));
let printedExtra = false;
child.stdout.on('data', () => {
  if (printedExtra) return;
  printedExtra = true;
  setTimeout(() => {
    console.log('');
    console.log('more to try:');
    console.log(`  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' 'nbd+unix:///demo?socket=${socket}'`);
    console.log(`  qemu-img convert -n -O raw some.img 'nbd+unix:///demo?socket=${socket}'`);
    console.log(`  node bin/nbd-mirror.js status demo --control ${rel(control)}     # dmsetup-style status (in_sync/regions, leg health)`);
    console.log(`  cmp ${rel(legs[0])} ${rel(legs[1])}     # after Ctrl-C: the legs are identical`);
    console.log('');
    console.log('Ctrl-C stops the server cleanly (flushes, closes the legs and the log).');
  }, 100);
});

// Ctrl-C reaches the whole foreground process group, so the server gets its own SIGINT; we only wait.
process.on('SIGINT', () => {});
process.on('SIGTERM', () => child.kill('SIGTERM'));
child.on('exit', (code, signal) => {
  if (code === 2) {
    console.error(
      `\ndemo: the server refused to start (see the error above). If port ${PORT} or ${DASHBOARD_PORT} is taken: ` +
        'NBD_MIRROR_DEMO_PORT=10810 NBD_MIRROR_DEMO_DASHBOARD_PORT=7391 npm start',
    );
  }
  process.exit(code ?? (signal ? 1 : 0));
});
