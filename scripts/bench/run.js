#!/usr/bin/env node
// npm run bench [-- --servers linear,nbdkit --runtime 3 --dir /dev/shm --no-resync]
//
// One run of the same fio job file (fio's nbd engine over a unix socket) against each server on the same
// backing file(s), then a table of IOPS / MB/s with ratios to `nbdkit file`, and bench-results/latest.json.
//   single file:  linear (ours) vs nbdkit file vs qemu-nbd
//   2-leg mirror: mirror-core, mirror-disk (ours) vs nbdkit file on one leg (the ceiling) vs qemu-nbd quorum
//   resync:       full resync of a 2-leg core-log mirror (unthrottled) vs nbdcopy copying leg A to leg B
//   TLS:          linear-tls (ours, --tls require, X.509) vs nbdkit-tls (--tls=require), same file, on the
//                 TLS_JOBS of issue 12 (fio finds its client certificate through HOME, see tls-pki.js)
// Backing files live in --dir (default /dev/shm, tmpfs), so the figures measure the servers, not a disk.
import { execFileSync, spawn } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { cpus, hostname, loadavg, release, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { JOBS, runFio } from './fio.js';
import { privateBuildCopy } from './build.js';
import { writeBenchChart } from './chart.js';
import { mirrorTable, SERVERS, setCli, startServer } from './servers.js';
import { makePki } from './tls-pki.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const ALL_SERVERS = ['linear', 'nbdkit', 'qemu-nbd', 'mirror-core', 'mirror-disk', 'qemu-quorum', 'linear-tls', 'nbdkit-tls'];
const SINGLE_GROUP = ['linear', 'nbdkit', 'qemu-nbd'];
const MIRROR_GROUP = ['mirror-core', 'mirror-disk', 'nbdkit', 'qemu-quorum'];
const TLS_GROUP = ['linear-tls', 'nbdkit-tls'];
/** The TLS rows measure issue 12's jobs only (the others are the same code paths as without TLS). */
const TLS_JOBS = ['read-1m-qd8', 'write-1m-qd8', 'randwrite-4k-qd32'];
const DEFAULT_OUT = join(ROOT, 'bench-results', 'latest.json');
const FILL_CHUNK_BYTES = 8 * 1024 * 1024;
/** A resync that has not finished by then is reported as failed rather than waited for. */
const RESYNC_TIMEOUT_MS = 120_000;

const { values: flags } = parseArgs({
  options: {
    servers: { type: 'string', default: ALL_SERVERS.join(',') },
    jobs: { type: 'string', default: Object.keys(JOBS).join(',') },
    runtime: { type: 'string', default: '3' },
    size: { type: 'string', default: String(1024 * 1024 * 1024) },
    dir: { type: 'string', default: '/dev/shm' },
    'no-resync': { type: 'boolean', default: false },
    'only-resync': { type: 'boolean', default: false },
    'no-tls': { type: 'boolean', default: false },
    out: { type: 'string' },
    cli: { type: 'string' },
    repeat: { type: 'string', default: '1' },
    help: { type: 'boolean', default: false },
  },
});
if (flags.help) {
  console.log(`usage: npm run bench -- [--servers ${ALL_SERVERS.join(',')}] [--jobs ${Object.keys(JOBS).join(',')}]
       [--runtime SEC per job] [--size BYTES] [--dir DIR for backing files] [--no-resync] [--no-tls] [--out FILE]
       [--only-resync: just the resync comparison (with --repeat N: N interleaved rounds, medians)]
       [--cli PATH to bin/nbd-mirror.js; default: a private build of src/ in .cache/e2e/]
       [--repeat N: N interleaved rounds over the servers, the median per job is reported (noisy machines)]`);
  process.exit(0);
}
// --only-resync writes its own report (the full run's latest.json and the README chart stay as they are).
flags.out ??= flags['only-resync'] ? join(ROOT, 'bench-results', 'resync-latest.json') : DEFAULT_OUT;
const servers = flags['only-resync'] ? [] : flags.servers.split(',').filter(Boolean).filter((s) => !(flags['no-tls'] && TLS_GROUP.includes(s)));
for (const s of servers) if (!ALL_SERVERS.includes(s)) throw new Error(`unknown server ${s}; known: ${ALL_SERVERS.join(', ')}`);
const jobs = flags.jobs.split(',').filter(Boolean);
const runtimeSec = Number(flags.runtime);
const repeat = Number(flags.repeat);
if (!(Number.isInteger(repeat) && repeat >= 1)) throw new Error('--repeat must be a positive integer');
const sizeBytes = Number(flags.size);
if (!(sizeBytes > 0 && sizeBytes % (1024 * 1024) === 0)) throw new Error('--size must be a positive multiple of 1 MiB');

async function fillRandom(path, bytes) {
  const fh = await open(path, 'w');
  const chunk = Buffer.alloc(FILL_CHUNK_BYTES);
  for (let off = 0; off < bytes; off += chunk.length) {
    randomFillSync(chunk);
    await fh.write(chunk, 0, Math.min(chunk.length, bytes - off), off);
  }
  await fh.close();
}

async function sparse(path, bytes) {
  await rm(path, { force: true });
  const fh = await open(path, 'w');
  await fh.truncate(bytes);
  await fh.close();
}

function timeCommand(command, args) {
  return new Promise((resolvePromise, reject) => {
    const started = process.hrtime.bigint();
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c) => (stderr += c));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0 ? resolvePromise(Number(process.hrtime.bigint() - started) / 1e9) : reject(new Error(`${command} failed: ${stderr}`)),
    );
  });
}

function machine() {
  const cpu = cpus();
  return {
    host: hostname(),
    cpuModel: cpu[0]?.model ?? 'unknown',
    cpuCount: cpu.length,
    memGiB: Math.round(totalmem() / 2 ** 30),
    kernel: release(),
    loadavgAtStart: loadavg().map((x) => Number(x.toFixed(2))),
    node: process.version,
    fio: execFileSync('fio', ['--version']).toString().trim(),
    nbdkit: execFileSync('nbdkit', ['--version']).toString().trim(),
    qemuNbd: execFileSync('qemu-nbd', ['--version']).toString().split('\n')[0].trim(),
  };
}

async function benchServer(name, ctx) {
  const def = SERVERS[name](ctx);
  process.stdout.write(`  ${name.padEnd(12)} ${def.description} ... `);
  const server = await startServer(def);
  try {
    const uri = `${def.tls ? 'nbds+unix' : 'nbd+unix'}:///?socket=${def.socket}`;
    const env = def.tls ? { ...process.env, HOME: ctx.pki.home } : undefined;
    const serverJobs = def.tls ? jobs.filter((j) => TLS_JOBS.includes(j)) : jobs;
    const results = await runFio({ workDir: ctx.dir, label: name, uri, sizeBytes: ctx.sizeBytes, runtimeSec, jobs: serverJobs, env });
    process.stdout.write('done\n');
    return { description: def.description, table: def.table, jobs: results };
  } finally {
    const status = await server.stop();
    if (status.code !== 0 && name !== 'qemu-nbd' && name !== 'qemu-quorum') {
      console.warn(`  warning: ${name} exited with ${status.code ?? status.signal} on SIGTERM`);
    }
  }
}

/** One full resync by our server: spawn, wait for in-sync, stop; times from its own events. */
async function resyncOnce(ctx) {
  // Leg A holds random data, leg B is empty: a core log with `sync` resyncs every region at activation.
  await sparse(ctx.files.b, ctx.sizeBytes);
  const table = mirrorTable({ legs: [ctx.files.a, ctx.files.b], sizeBytes: ctx.sizeBytes, sync: 'sync' });
  const def = SERVERS['mirror-core'](ctx);
  // debug: the control plane logs resync-progress events at debug level.
  const args = def.args.map((a) => (a === def.table ? table : a)).map((a) => (a === 'warn' ? 'debug' : a));
  // The resync's start: a progress event's time minus its runningMs (how long the run has been copying;
  // the engine's first event, as it hands out the first region, is emitted before the control plane listens).
  let startMs;
  let inSyncMs;
  let engineBytesPerSec;
  let pending = '';
  const spawnedMs = Date.now();
  const server = await startServer(
    { ...def, args, table },
    {
      // pino JSON lines: the engine's events, as the control plane logs them ("event": "in-sync", ...).
      onStderr: (text) => {
        pending += text;
        const lines = pending.split('\n');
        pending = lines.pop() ?? '';
        for (const line of lines) {
          let rec;
          try {
            rec = JSON.parse(line);
          } catch {
            continue;
          }
          const at = typeof rec.time === 'number' ? rec.time : Date.now();
          if (rec.event === 'resync-progress') {
            if (typeof rec.runningMs === 'number') startMs ??= at - rec.runningMs;
            if (typeof rec.bytesPerSec === 'number' && rec.bytesPerSec > 0) engineBytesPerSec = rec.bytesPerSec;
          }
          if (rec.event === 'in-sync' && inSyncMs === undefined) inSyncMs = at;
        }
      },
    },
  );
  const readyMs = server.readyMs;
  while (inSyncMs === undefined && Date.now() - spawnedMs < RESYNC_TIMEOUT_MS) await new Promise((r) => setTimeout(r, 20));
  await server.stop();
  if (inSyncMs === undefined) return { error: `no in-sync event within ${RESYNC_TIMEOUT_MS} ms`, stderrTail: server.stderr().slice(-2000) };
  const identical = await timeCommand('cmp', [ctx.files.a, ctx.files.b]).then(() => true, () => false);
  return {
    endToEndSec: (inSyncMs - spawnedMs) / 1000,
    engineSec: startMs !== undefined ? (inSyncMs - startMs) / 1000 : null,
    startupSec: startMs !== undefined ? (startMs - spawnedMs) / 1000 : null,
    readySec: (readyMs - spawnedMs) / 1000,
    engineReportedMBps: engineBytesPerSec !== undefined ? engineBytesPerSec / 1e6 : null,
    identical,
  };
}

async function benchResync(ctx, rounds) {
  // Interleaved: ours then nbdcopy in every round, so load elsewhere hits both alike; medians reported.
  const ours = [];
  const nbdcopy = [];
  for (let i = 0; i < rounds; i++) {
    const r = await resyncOnce(ctx);
    if (r.error) return r;
    ours.push(r);
    await sparse(ctx.files.b, ctx.sizeBytes);
    nbdcopy.push(await timeCommand('nbdcopy', [ctx.files.a, ctx.files.b]));
  }
  const med = (k) => {
    const v = ours.map((r) => r[k]).filter((x) => x !== null);
    return v.length === 0 ? null : median(v);
  };
  const endToEndSec = med('endToEndSec');
  const engineSec = med('engineSec');
  const nbdcopySec = median(nbdcopy);
  const mbps = (sec) => (sec === null ? null : ctx.sizeBytes / 1e6 / sec);
  return {
    bytes: ctx.sizeBytes,
    rounds,
    // End to end: from spawning `nbd-mirror serve` to its in-sync event (node start-up, module loading,
    // opening the table, then the copy).
    oursSec: endToEndSec,
    oursMBps: mbps(endToEndSec),
    endToEndRatio: nbdcopySec / endToEndSec,
    // Engine: from the resync's start (the table opens and hands out its first region) to in-sync.
    engineSec,
    engineMBps: mbps(engineSec),
    engineRatio: engineSec === null ? null : nbdcopySec / engineSec,
    startupSec: med('startupSec'),
    readySec: med('readySec'),
    engineReportedMBps: med('engineReportedMBps'),
    legsIdenticalAfter: ours.every((r) => r.identical),
    nbdcopySec,
    nbdcopyMBps: mbps(nbdcopySec),
    perRound: ours.map((r, i) => ({ ...r, nbdcopySec: nbdcopy[i] })),
    note:
      'end to end (oursSec, endToEndRatio): spawn of `nbd-mirror serve` to its in-sync event, node start-up included; ' +
      'engine (engineSec, engineRatio): the resync start (the table opened and handed out its first region; from the runningMs of its resync-progress events) to in-sync; ' +
      'startupSec: spawn to resync start; readySec: spawn to the pid file (every address listening); ' +
      'engineReportedMBps: the rate in the last resync-progress event; nbdcopy: local file to file, same files; ratio = nbdcopy time / ours',
  };
}

function median(values) {
  const v = [...values].sort((a, b) => a - b);
  const mid = Math.floor(v.length / 2);
  return v.length % 2 === 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

function medianResult(runs) {
  const jobsOut = {};
  for (const job of Object.keys(runs[0].jobs)) {
    const of = (k) => median(runs.map((r) => r.jobs[job][k]).filter((x) => x !== null));
    jobsOut[job] = {
      iops: Math.round(of('iops')),
      bwBytesPerSec: Math.round(of('bwBytesPerSec')),
      clatP50Us: of('clatP50Us') ?? null,
      clatP99Us: of('clatP99Us') ?? null,
      ...(runs.length > 1 ? { iopsPerRound: runs.map((r) => r.jobs[job].iops) } : {}),
    };
  }
  return { description: runs[0].description, table: runs[0].table, rounds: runs.length, jobs: jobsOut };
}

function fmt(n) {
  return n >= 100 ? String(Math.round(n)) : n.toFixed(1);
}

function printTable(title, names, results, baseName = 'nbdkit') {
  const present = names.filter((n) => results[n] !== undefined);
  if (present.every((n) => n === baseName)) return; // nothing of ours in this group was run
  console.log(`\n${title}`);
  const header = ['job'.padEnd(18), ...present.map((n) => n.padStart(22))].join(' ');
  console.log(header);
  for (const job of jobs) {
    if (present.every((n) => results[n].jobs[job] === undefined)) continue;
    const base = results[baseName]?.jobs[job];
    const cells = present.map((n) => {
      const r = results[n].jobs[job];
      if (r === undefined) return '-'.padStart(22);
      const metric = JOBS[job].bs === '4k' ? `${fmt(r.iops)} IOPS` : `${fmt(r.bwBytesPerSec / 1e6)} MB/s`;
      const ratio = base !== undefined ? ` ${(JOBS[job].bs === '4k' ? r.iops / base.iops : r.bwBytesPerSec / base.bwBytesPerSec).toFixed(2)}x` : '';
      return `${metric}${ratio}`.padStart(22);
    });
    console.log([job.padEnd(18), ...cells].join(' '));
  }
  console.log(`(ratio = this server / ${baseName === 'nbdkit' ? 'nbdkit file' : baseName} on the same job)`);
}

async function main() {
  await mkdir(flags.dir, { recursive: true });
  const dir = await mkdtemp(join(flags.dir, 'nbd-mirror-bench-'));
  const ctx = { dir, sizeBytes, files: { a: join(dir, 'leg-a.img'), b: join(dir, 'leg-b.img'), log: join(dir, 'mirror.log') } };
  const started = Date.now();
  try {
    const runResync = flags['only-resync'] || (!flags['no-resync'] && servers.includes('mirror-core'));
    if (runResync || servers.some((s) => ['linear', 'mirror-core', 'mirror-disk', 'linear-tls'].includes(s))) setCli(flags.cli ?? privateBuildCopy(dir));
    if (servers.some((s) => TLS_GROUP.includes(s))) ctx.pki = makePki(join(dir, 'pki'));
    console.log(`nbd-mirror bench: ${sizeBytes / 2 ** 20} MiB files in ${dir}, ${runtimeSec} s per job, servers: ${servers.join(', ') || '(none)'}${runResync ? ', resync' : ''}`);
    await fillRandom(ctx.files.a, sizeBytes);
    if (servers.length > 0) await copyFile(ctx.files.a, ctx.files.b);
    await sparse(ctx.files.log, 1024 * 1024);
    // Rounds are interleaved (every server once per round) so a burst of load elsewhere on the machine
    // hits all servers alike; each figure is the median over the rounds.
    const rounds = {};
    for (let round = 0; round < repeat && servers.length > 0; round++) {
      if (repeat > 1) console.log(`  round ${round + 1}/${repeat}`);
      for (const name of servers) (rounds[name] ??= []).push(await benchServer(name, ctx));
    }
    const results = {};
    for (const name of servers) results[name] = medianResult(rounds[name]);
    let resync;
    if (runResync) {
      process.stdout.write(`  resync       full resync of 2-leg core-log mirror vs nbdcopy A -> B${repeat > 1 ? `, ${repeat} rounds` : ''} ... `);
      resync = await benchResync(ctx, repeat);
      process.stdout.write('done\n');
    }

    printTable('Single file', SINGLE_GROUP, results);
    printTable('2-leg mirror (nbdkit = one file, the ceiling)', MIRROR_GROUP, results);
    printTable('TLS (both --tls require, X.509, TLS 1.3; target >= 0.8x)', TLS_GROUP, results, 'nbdkit-tls');
    if (resync !== undefined) {
      console.log('\nResync of', `${sizeBytes / 2 ** 20} MiB`);
      if (resync.error) console.log(`  ours: FAILED: ${resync.error}`);
      else {
        const x = (ratio) => (ratio === null ? '?' : `${ratio.toFixed(2)}x`);
        const sec = (v) => (v === null ? '?' : `${v.toFixed(2)} s`);
        const rate = (v) => (v === null ? '?' : `${fmt(v)} MB/s`);
        console.log(`  nbd-mirror, end to end (spawn -> in-sync):     ${sec(resync.oursSec)}, ${rate(resync.oursMBps)}, ${x(resync.endToEndRatio)} nbdcopy`);
        console.log(`  nbd-mirror, engine (resync start -> in-sync):  ${sec(resync.engineSec)}, ${rate(resync.engineMBps)}, ${x(resync.engineRatio)} nbdcopy`);
        console.log(`    start-up (spawn -> resync start) ${sec(resync.startupSec)}, spawn -> serving ${sec(resync.readySec)}; engine's last reported rate ${rate(resync.engineReportedMBps)}; legs identical: ${resync.legsIdenticalAfter}`);
        console.log(`  nbdcopy leg A -> leg B:                        ${sec(resync.nbdcopySec)}, ${rate(resync.nbdcopyMBps)}`);
        console.log(`  (ratio = nbdcopy time / ours; end to end includes node start-up and module loading, engine is the copy alone${resync.rounds > 1 ? `; medians of ${resync.rounds} interleaved rounds` : ''})`);
      }
    }
    const report = {
      date: new Date().toISOString(),
      machine: machine(),
      backingDir: flags.dir,
      sizeBytes,
      runtimeSecPerJob: runtimeSec,
      rounds: repeat,
      jobs: Object.fromEntries(jobs.map((j) => [j, JOBS[j]])),
      servers: results,
      resync,
      elapsedSec: (Date.now() - started) / 1000,
    };
    await mkdir(dirname(flags.out), { recursive: true });
    await writeFile(flags.out, `${JSON.stringify(report, null, 2)}\n`);
    console.log(`\nwrote ${flags.out} (${report.elapsedSec.toFixed(0)} s)`);
    // The README's chart (docs/bench.svg) is redrawn only by a run writing the default report.
    const chartOut = resolve(flags.out) === DEFAULT_OUT ? undefined : flags.out.replace(/\.json$/, '') + '.svg';
    console.log(`wrote ${await writeBenchChart(flags.out, chartOut)} (chart: scripts/bench/chart.js)`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
