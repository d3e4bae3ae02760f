#!/usr/bin/env node
// node scripts/bench/cluster.js [--runtime 10] [--nodes 3] [--dir /dev/shm] [--token 1000] [--cli PATH]
//
// Write latency of a cluster mirror vs a single-node mirror: fio 4k randwrite QD1 (and the same with an
// fsync after every write) through fio's nbd engine over a unix socket, against
//   single:  `nbd-mirror serve` of a 2-leg core-log mirror in the root namespace;
//   cluster: the same legs served as `userspace ... clustered-core` by N nodes (scripts/cluster/cluster.sh:
//            one network namespace + corosync per node); fio writes through node 1's export while the
//            other nodes serve the same table idle (they still apply and acknowledge every log flush).
// --size-mib: with a small volume every region stays marked (the write path's steady state: no log flush
// per write); with a large one most random writes dirty a clean region and wait for a cluster log flush.
// Needs root, corosync, the addon (npm run build:native) and fio. Cleans up what it started (by PID).
// Prints a table (median / p99 completion latency in µs, IOPS) and writes bench-results/cluster.json.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { privateBuildCopy } from './build.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CLUSTER_SH = join(ROOT, 'scripts', 'cluster', 'cluster.sh');
const ADDON = join(ROOT, 'native', 'build', 'Release', 'nbdm_cpg.node');
const REGION_SECTORS = 1024; // 512 KiB
const READY_MS = 60_000;

const { values: flags } = parseArgs({
  options: {
    runtime: { type: 'string', default: '10' },
    nodes: { type: 'string', default: '3' },
    dir: { type: 'string', default: '/dev/shm' },
    token: { type: 'string', default: '1000' },
    cli: { type: 'string' },
    out: { type: 'string', default: join(ROOT, 'bench-results', 'cluster.json') },
    /** Volume size: small = every region stays marked (steady state), large = most writes need a log flush. */
    'size-mib': { type: 'string', default: '256' },
  },
});
const NODES = Number(flags.nodes);
const SIZE_BYTES = Number(flags['size-mib']) * 1024 * 1024;
const prefix = `nbdmb${process.pid % 100000}`;
const work = mkdtempSync(join(flags.dir, 'nbdm-bench-cluster-'));
const clusterEnv = { ...process.env, NBDM_CLUSTER_PREFIX: prefix, NBDM_CLUSTER_DIR: join(work, 'cluster') };
const cli = flags.cli ?? privateBuildCopy(work);
const children = [];
let clusterUp = false;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function table(legs, clustered) {
  const log = clustered ? `userspace 4 LVM-bench clustered-core ${REGION_SECTORS} nosync` : `core 2 ${REGION_SECTORS} nosync`;
  return `0 ${SIZE_BYTES / 512} mirror ${log} 2 ${legs[0]} 0 ${legs[1]} 0 1 handle_errors`;
}

async function serve(label, tableLine, netns) {
  const sock = join(work, `${label}.sock`);
  const pidFile = join(work, `${label}.pid`);
  const args = ['serve', '--listen', `unix:${sock}`, '--pid-file', pidFile, '--control', join(work, `${label}.ctl`), '--dashboard', '0', '--quiet', '--log-level', 'warn', '--table', tableLine, '--name', 'v'];
  const cmd = netns ? ['ip', ['netns', 'exec', netns, process.execPath, cli, ...args]] : [process.execPath, [cli, ...args]];
  const child = spawn(cmd[0], cmd[1], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, NBD_MIRROR_CPG_ADDON: ADDON } });
  let err = '';
  child.stderr.on('data', (b) => (err = (err + b).slice(-4000)));
  let exited = false;
  child.on('exit', () => (exited = true));
  children.push(child);
  const t0 = Date.now();
  while (!existsSync(pidFile) || readFileSync(pidFile, 'utf8').trim() !== String(child.pid)) {
    if (exited) throw new Error(`${label}: serve exited: ${err}`);
    if (Date.now() - t0 > READY_MS) throw new Error(`${label}: not ready: ${err}`);
    await sleep(50);
  }
  return { uri: `nbd+unix:///v?socket=${sock}`, child };
}

function fio(label, uri, extra) {
  const out = join(work, `${label}.json`);
  execFileSync('fio', [
    '--name', label, '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=4k', '--iodepth=1', `--size=${SIZE_BYTES}`,
    '--time_based', `--runtime=${flags.runtime}`, '--ramp_time=1', '--output-format=json', `--output=${out}`, ...extra,
  ], { cwd: work, stdio: 'ignore' });
  const w = JSON.parse(readFileSync(out, 'utf8')).jobs[0].write;
  const pct = w.clat_ns.percentile ?? {};
  return { iops: Math.round(w.iops), medianUs: (pct['50.000000'] ?? 0) / 1000, p99Us: (pct['99.000000'] ?? 0) / 1000, meanUs: Math.round(w.clat_ns.mean) / 1000 };
}

async function stopAll() {
  for (const c of children.splice(0)) {
    if (c.exitCode !== null || c.signalCode !== null) continue;
    const gone = new Promise((r) => c.once('exit', r));
    c.kill('SIGTERM');
    await Promise.race([gone, sleep(15_000)]);
    if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }
}

const JOBS = { 'randwrite 4k QD1': [], 'randwrite 4k QD1 fsync=1': ['--fsync=1'] };

async function main() {
  const legs = [0, 1].map((i) => join(work, `leg${i}.img`));
  for (const l of legs) execFileSync('truncate', ['-s', String(SIZE_BYTES), l]);
  const results = {};
  // Single node.
  const single = await serve('single', table(legs, false), undefined);
  for (const [job, extra] of Object.entries(JOBS)) results[`single: ${job}`] = fio(`single-${job.replace(/\W+/g, '_')}`, single.uri, extra);
  await stopAll();
  // Cluster.
  execFileSync('bash', [CLUSTER_SH, 'up', String(NODES), '--token', flags.token], { env: clusterEnv, stdio: 'ignore' });
  clusterUp = true;
  const nodes = [];
  for (let i = 1; i <= NODES; i++) nodes.push(await serve(`n${i}`, table(legs, true), `${prefix}-n${i}`));
  for (const [job, extra] of Object.entries(JOBS)) results[`cluster x${NODES}: ${job}`] = fio(`cluster-${job.replace(/\W+/g, '_')}`, nodes[0].uri, extra);
  await stopAll();
  console.log(`load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}, runtime ${flags.runtime} s per job, ${flags['size-mib']} MiB volume, ${(REGION_SECTORS * 512) / 1024} KiB regions`);
  console.log('job'.padEnd(42) + 'IOPS'.padStart(8) + 'median µs'.padStart(12) + 'p99 µs'.padStart(10) + 'mean µs'.padStart(10));
  for (const [k, r] of Object.entries(results)) {
    console.log(k.padEnd(42) + String(r.iops).padStart(8) + r.medianUs.toFixed(1).padStart(12) + r.p99Us.toFixed(1).padStart(10) + r.meanUs.toFixed(1).padStart(10));
  }
  mkdirSync(dirname(flags.out), { recursive: true });
  writeFileSync(flags.out, JSON.stringify({ at: new Date().toISOString(), nodes: NODES, runtimeSec: Number(flags.runtime), loadavg: loadavg(), results }, null, 2));
}

try {
  await main();
} finally {
  await stopAll();
  if (clusterUp) {
    try {
      execFileSync('bash', [CLUSTER_SH, 'down'], { env: clusterEnv, stdio: 'ignore' });
    } catch (e) {
      console.error(`cluster down failed: ${e.message}`);
    }
  }
  rmSync(work, { recursive: true, force: true });
}
