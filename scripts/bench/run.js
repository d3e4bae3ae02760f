#!/usr/bin/env node
// npm run bench [-- --servers linear,nbdkit --runtime 3 --dir /dev/shm --no-resync]
//
// The same fio job file (fio's nbd engine over a unix socket) against each server on the same backing
// file(s), then tables of IOPS / MB/s with paired ratios to `nbdkit file`, and bench-results/latest.json.
// Servers are compared within groups; rounds are job-major: in each round, each job runs against every
// server of a group back to back (the order changes with the round and job, see runOrder), so the figures
// compared on a job were measured seconds apart. A ratio is the median over rounds of the per-round ratio.
//   single file:  linear (ours) vs nbdkit file vs qemu-nbd, on file S (a copy of leg A)
//   2-leg mirror: mirror-core, mirror-disk (ours) vs qemu-nbd quorum on legs A and B, vs nbdkit file on S
//                 (one file: the ceiling); only mirrors write A and B, so the legs stay identical
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
import { figureOf, JOBS, median, pairedRatio, runFio } from './fio.js';
import { privateBuildCopy } from './build.js';
import { writeBenchChart } from './chart.js';
import { mirrorTable, runOrder, SERVERS, setCli, startServer } from './servers.js';
import { otherCpuMeter } from './proc-cpu.js';
import { makePki } from './tls-pki.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const ALL_SERVERS = ['linear', 'nbdkit', 'qemu-nbd', 'mirror-core', 'mirror-disk', 'qemu-quorum', 'linear-tls', 'nbdkit-tls'];
const SINGLE_GROUP = ['linear', 'nbdkit', 'qemu-nbd'];
const MIRROR_GROUP = ['mirror-core', 'mirror-disk', 'nbdkit', 'qemu-quorum'];
const TLS_GROUP = ['linear-tls', 'nbdkit-tls'];
/** The TLS rows measure issue 12's jobs only (the others are the same code paths as without TLS). */
const TLS_JOBS = ['read-1m-qd8', 'write-1m-qd8', 'randwrite-4k-qd32'];
/**
 * The groups servers are compared in, each measured job-major (see above) with its servers running through
 * the round: none of these servers locks or caches the files (the one qemu-nbd of a group is the only process
 * taking qemu's image locks, and they are on different files: servers.js), and the disk log file is
 * mirror-disk's own. nbdkit is in two groups, so it runs in both: every ratio to it pairs figures measured
 * seconds apart. `pairs`: ratios besides every server to `base`.
 */
const GROUPS = [
  { key: 'single', title: 'Single file', servers: SINGLE_GROUP, base: 'nbdkit', jobs: null, pairs: [] },
  {
    key: 'mirror',
    title: '2-leg mirror (nbdkit = one file, the ceiling)',
    servers: MIRROR_GROUP,
    base: 'nbdkit',
    jobs: null,
    pairs: [
      ['mirror-core', 'qemu-quorum'],
      ['mirror-disk', 'qemu-quorum'],
      ['mirror-disk', 'mirror-core'],
    ],
  },
  { key: 'tls', title: 'TLS (both --tls require, X.509, TLS 1.3; target >= 0.8x)', servers: TLS_GROUP, base: 'nbdkit-tls', jobs: TLS_JOBS, pairs: [] },
];
/** Issue 4's targets (and issue 12's TLS one): ratio `a/b` on `jobs` (null: every job run) at least `min`. */
const TARGETS = [
  { issue: 4, what: 'mirror, core log >= 0.8x nbdkit file', a: 'mirror-core', b: 'nbdkit', min: 0.8, jobs: null },
  { issue: 4, what: 'mirror, disk log >= 0.8x nbdkit file', a: 'mirror-disk', b: 'nbdkit', min: 0.8, jobs: null },
  { issue: 4, what: 'mirror, core log >= 1.5x qemu-nbd quorum', a: 'mirror-core', b: 'qemu-quorum', min: 1.5, jobs: null },
  { issue: 4, what: 'mirror, disk log >= 1.5x qemu-nbd quorum', a: 'mirror-disk', b: 'qemu-quorum', min: 1.5, jobs: null },
  { issue: 4, what: 'disk log at most 10% slower than core log', a: 'mirror-disk', b: 'mirror-core', min: 0.9, jobs: ['randwrite-4k-qd32'] },
  { issue: 12, what: 'linear TLS >= 0.8x nbdkit TLS', a: 'linear-tls', b: 'nbdkit-tls', min: 0.8, jobs: TLS_JOBS },
];
/** The resync target (issue 4): nbdcopy time / ours, end to end, at least this. */
const RESYNC_TARGET_MIN = 0.8;
const DEFAULT_OUT = join(ROOT, 'bench-results', 'latest.json');
const FILL_CHUNK_BYTES = 8 * 1024 * 1024;
/** A resync that has not finished by then is reported as failed rather than waited for. */
const RESYNC_TIMEOUT_MS = 120_000;
/** --quiet-below: the longest wait for a quiet machine before a fio run, and the window it is judged over. */
const QUIET_WAIT_MAX_MS = 15_000;
const QUIET_WINDOW_MS = 500;

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
    'quiet-below': { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (flags.help) {
  console.log(`usage: npm run bench -- [--servers ${ALL_SERVERS.join(',')}] [--jobs ${Object.keys(JOBS).join(',')}]
       [--runtime SEC per job] [--size BYTES] [--dir DIR for backing files] [--no-resync] [--no-tls] [--out FILE]
       [--only-resync: just the resync comparison (with --repeat N: N interleaved rounds, medians)]
       [--cli PATH to bin/nbd-mirror.js; default: a private build of src/ in .cache/e2e/]
       [--repeat N: N rounds, each running every job on the servers of a group back to back; medians over rounds]
       [--quiet-below CPUS: before each fio run, wait (at most ${QUIET_WAIT_MAX_MS / 1000} s) until other processes use less than CPUS]`);
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
const quietBelow = flags['quiet-below'] === undefined ? undefined : Number(flags['quiet-below']);
if (quietBelow !== undefined && !(quietBelow > 0)) throw new Error('--quiet-below must be a positive number of CPUs');
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

/** Taken as the run starts: machine() runs when the report is written, at the end. */
const LOADAVG_AT_START = loadavg().map((x) => Number(x.toFixed(2)));

function machine() {
  const cpu = cpus();
  return {
    host: hostname(),
    cpuModel: cpu[0]?.model ?? 'unknown',
    cpuCount: cpu.length,
    memGiB: Math.round(totalmem() / 2 ** 30),
    kernel: release(),
    loadavgAtStart: LOADAVG_AT_START,
    node: process.version,
    fio: execFileSync('fio', ['--version']).toString().trim(),
    nbdkit: execFileSync('nbdkit', ['--version']).toString().trim(),
    qemuNbd: execFileSync('qemu-nbd', ['--version']).toString().split('\n')[0].trim(),
  };
}

/** CPUs used by other processes (not this bench, its exited children or `running` servers) over `ms`. */
async function otherCpusOver(running, ms) {
  const stop = otherCpuMeter(running.map((r) => r.server.pid));
  await new Promise((r) => setTimeout(r, ms));
  return stop().otherCpus;
}

/** --quiet-below: waits until the rest of the machine is quiet (or QUIET_WAIT_MAX_MS passed). Same for every server. */
async function waitQuiet(running) {
  if (quietBelow === undefined) return {};
  const started = Date.now();
  for (;;) {
    const other = await otherCpusOver(running, QUIET_WINDOW_MS);
    const waitedSec = (Date.now() - started) / 1000;
    if (other < quietBelow) return { quietWaitSec: waitedSec, quiet: true };
    if (Date.now() - started >= QUIET_WAIT_MAX_MS) return { quietWaitSec: waitedSec, quiet: false };
  }
}

/**
 * A 1 MiB read job is measured only on servers that have served 1 MiB requests before, on an earlier
 * connection: nbdkit's worker threads' 1 MiB buffers of a process's first such connection are mmap'd by
 * glibc at page offset 16, where its pread from the page cache runs ~2.5x slower on the AMD EPYC we measure
 * on (a copy whose destination lies 1-31 bytes past its source modulo 4096); once they were freed, glibc's
 * mmap threshold has grown and later buffers come from the heap. A full run has that from its 1 MiB write
 * job; a run of read-1m-qd8 alone measured nbdkit's first connection (1124 against 1648 MB/s, see cpu.js).
 * So when no 1 MiB job comes before it, each server of the round first serves one unmeasured 1 s
 * connection of that job.
 */
const WARMUP_JOB = 'read-1m-qd8';

function needsWarmup(jobs) {
  const at = jobs.indexOf(WARMUP_JOB);
  return at >= 0 && !jobs.slice(0, at).some((job) => JOBS[job].bs === '1m');
}

/**
 * One round of one group: its servers start, then for each job every server runs it (fio, one job) back to
 * back in runOrder(servers, round + job index), then they stop. Results go to `out[job][server]` (pushed,
 * one per round). Also measures what an idle server costs the one being measured: the CPU each server uses
 * while another one runs a job.
 */
async function benchGroupRound(group, round, ctx, out) {
  const running = [];
  try {
    for (const name of group.servers) {
      const def = SERVERS[name](ctx);
      if (round === 0) console.log(`    ${name.padEnd(12)} ${def.description}`);
      running.push({ name, def, server: await startServer(def) });
    }
    if (needsWarmup(group.jobs)) {
      for (const { name, def } of running) {
        const uri = `${def.tls ? 'nbds+unix' : 'nbd+unix'}:///?socket=${def.socket}`;
        const env = def.tls ? { ...process.env, HOME: ctx.pki.home } : undefined;
        await runFio({ workDir: ctx.dir, label: `${name}-warmup`, uri, sizeBytes: ctx.sizeBytes, runtimeSec: 1, jobs: [WARMUP_JOB], env });
      }
    }
    for (const [j, job] of group.jobs.entries()) {
      const order = runOrder(group.servers, round + j);
      const cells = [];
      for (const name of order) {
        const { def } = running.find((r) => r.name === name);
        const others = running.filter((r) => r.name !== name);
        const uri = `${def.tls ? 'nbds+unix' : 'nbd+unix'}:///?socket=${def.socket}`;
        const env = def.tls ? { ...process.env, HOME: ctx.pki.home } : undefined;
        const quiet = await waitQuiet(running);
        // What the rest of the machine uses meanwhile (other users' processes, not this bench, fio or the
        // servers), in CPUs on average: a noisy run shows here, and the servers compared on a job share it.
        const stop = otherCpuMeter(running.map((r) => r.server.pid));
        const result = (await runFio({ workDir: ctx.dir, label: name, uri, sizeBytes: ctx.sizeBytes, runtimeSec, jobs: [job], env }))[job];
        const { pidsCpu: serversCpu, otherCpus, stealCpus } = stop();
        const machine = { otherCpus, stealCpus };
        others.forEach((r) => {
          const ms = serversCpu[running.indexOf(r)] * 1000;
          if (ms > (ctx.idleCpu.maxMs ?? -1)) ctx.idleCpu = { maxMs: ms, server: r.name, whileRunning: name, job };
        });
        ((out[job] ??= {})[name] ??= []).push({ ...result, position: order.indexOf(name), ...machine, ...quiet });
        cells.push(`${name} ${figureText(job, result)}`);
      }
      console.log(`    ${job.padEnd(18)} ${cells.join(', ')}`);
    }
  } finally {
    for (const { name, server } of running) {
      const status = await server.stop();
      if (status.code !== 0 && name !== 'qemu-nbd' && name !== 'qemu-quorum') console.warn(`  warning: ${name} exited with ${status.code ?? status.signal} on SIGTERM`);
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
    // nbdcopy time / ours in each round (the two ran back to back): median, min, max over rounds.
    endToEndRatioPaired: pairedRatio(nbdcopy, ours.map((r) => r.endToEndSec)),
    engineRatioPaired: ours.every((r) => r.engineSec !== null) ? pairedRatio(nbdcopy, ours.map((r) => r.engineSec)) : null,
    note:
      'end to end (oursSec, endToEndRatio): spawn of `nbd-mirror serve` to its in-sync event, node start-up included; ' +
      'engine (engineSec, engineRatio): the resync start (the table opened and handed out its first region; from the runningMs of its resync-progress events) to in-sync; ' +
      'startupSec: spawn to resync start; readySec: spawn to the pid file (every address listening); ' +
      'engineReportedMBps: the rate in the last resync-progress event; nbdcopy: local file to file, same files; ratio = nbdcopy time / ours; ' +
      'endToEndRatio, engineRatio: ratio of the medians; *RatioPaired: median, min, max over rounds of the ratio within a round',
  };
}

function medianResult(runs, groups) {
  const jobsOut = {};
  for (const job of Object.keys(runs[0].jobs)) {
    const of = (k) => median(runs.map((r) => r.jobs[job][k]).filter((x) => x !== null));
    const iops = runs.map((r) => r.jobs[job].iops);
    jobsOut[job] = {
      iops: Math.round(of('iops')),
      bwBytesPerSec: Math.round(of('bwBytesPerSec')),
      clatP50Us: of('clatP50Us') ?? null,
      clatP99Us: of('clatP99Us') ?? null,
      // A server in two groups (nbdkit) ran twice per round: its medians are over all its runs.
      ...(runs.length > 1 ? (groups.length > 1 ? { iopsPerRun: iops } : { iopsPerRound: iops }) : {}),
    };
  }
  return { description: runs[0].description, table: runs[0].table, rounds: repeat, runs: runs.length, groups, jobs: jobsOut };
}

/** The groups this run measures: those with a chosen server besides their base, with their chosen servers and jobs. */
function groupsToRun() {
  const chosen = [];
  const jobsOf = (g) => (g.jobs ?? jobs).filter((j) => jobs.includes(j));
  for (const g of GROUPS) {
    const members = g.servers.filter((s) => servers.includes(s));
    if (members.some((s) => s !== g.base) && jobsOf(g).length > 0) chosen.push({ ...g, servers: members, jobs: jobsOf(g) });
  }
  // A server chosen without anything to compare it with (e.g. --servers nbdkit) still runs, in its first group.
  for (const s of servers) {
    if (chosen.some((g) => g.servers.includes(s))) continue;
    const g = GROUPS.find((x) => x.servers.includes(s));
    if (jobsOf(g).length > 0) chosen.push({ ...g, servers: [s], jobs: jobsOf(g) });
  }
  return chosen;
}

/** Per job: each server's figure in every round, and the paired ratios (fio.js pairedRatio) of the group. */
function pairedGroup(group, out) {
  const has = (s) => group.servers.includes(s);
  const pairs = [...group.servers.filter((s) => s !== group.base && has(group.base)).map((s) => [s, group.base]), ...group.pairs.filter(([a, b]) => has(a) && has(b))];
  const jobsOut = {};
  for (const job of group.jobs) {
    const perRound = Object.fromEntries(group.servers.map((s) => [s, out[job][s].map((r) => figureOf(job, r))]));
    jobsOut[job] = {
      metric: JOBS[job].bs === '4k' ? 'iops' : 'bwBytesPerSec',
      median: Object.fromEntries(group.servers.map((s) => [s, median(perRound[s])])),
      perRound,
      positionPerRound: Object.fromEntries(group.servers.map((s) => [s, out[job][s].map((r) => r.position)])),
      otherCpusPerRound: Object.fromEntries(group.servers.map((s) => [s, out[job][s].map((r) => round2(r.otherCpus))])),
      stealCpusPerRound: Object.fromEntries(group.servers.map((s) => [s, out[job][s].map((r) => round2(r.stealCpus))])),
      ratios: Object.fromEntries(pairs.map(([a, b]) => [`${a}/${b}`, pairedRatio(perRound[a], perRound[b])])),
    };
  }
  return { title: group.title, servers: group.servers, base: group.base, jobs: jobsOut };
}

function targetsOf(paired, resync) {
  const out = [];
  const row = (t, ratio, job, r) => ({
    issue: t.issue,
    target: t.what,
    ratio,
    job,
    threshold: t.min,
    ratioMedian: r.median,
    ratioMin: r.min,
    ratioMax: r.max,
    roundsMet: r.perRound.filter((x) => x >= t.min).length,
    rounds: r.perRound.length,
    met: r.median >= t.min,
  });
  for (const t of TARGETS) {
    const key = `${t.a}/${t.b}`;
    for (const group of Object.values(paired)) {
      for (const [job, j] of Object.entries(group.jobs)) {
        if (j.ratios[key] !== undefined && (t.jobs === null || t.jobs.includes(job))) out.push(row(t, key, job, j.ratios[key]));
      }
    }
  }
  if (resync !== undefined && !resync.error) {
    out.push(row({ issue: 4, what: `unthrottled resync >= ${RESYNC_TARGET_MIN}x nbdcopy (end to end)`, min: RESYNC_TARGET_MIN }, 'nbdcopy time / ours', 'resync', resync.endToEndRatioPaired));
  }
  return out;
}

const round2 = (x) => Math.round(x * 100) / 100;

function fmt(n) {
  return n >= 100 ? String(Math.round(n)) : n.toFixed(1);
}

function figureText(job, r) {
  return JOBS[job].bs === '4k' ? `${fmt(r.iops)} IOPS` : `${fmt(r.bwBytesPerSec / 1e6)} MB/s`;
}

function ratioText(r) {
  return repeat > 1 ? `${r.median.toFixed(2)}x [${r.min.toFixed(2)}-${r.max.toFixed(2)}]` : `${r.median.toFixed(2)}x`;
}

function printColumns(rows) {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  for (const r of rows) console.log(r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('   '));
}

function printGroup(group) {
  const baseText = group.base === 'nbdkit' ? 'nbdkit file' : group.base;
  console.log(`\n${group.title}`);
  const rows = [['job', ...group.servers]];
  for (const [job, j] of Object.entries(group.jobs)) {
    rows.push([
      job,
      ...group.servers.map((s) => {
        const abs = j.metric === 'iops' ? `${fmt(j.median[s])} IOPS` : `${fmt(j.median[s] / 1e6)} MB/s`;
        const r = j.ratios[`${s}/${group.base}`];
        return r === undefined ? abs : `${abs}  ${ratioText(r)}`;
      }),
    ]);
  }
  printColumns(rows);
  const others = Object.keys(Object.values(group.jobs)[0].ratios).filter((k) => !k.endsWith(`/${group.base}`));
  if (others.length > 0) {
    const more = [['paired ratio', ...others]];
    for (const [job, j] of Object.entries(group.jobs)) more.push([job, ...others.map((k) => ratioText(j.ratios[k]))]);
    console.log('');
    printColumns(more);
  }
  const rounds = repeat > 1 ? `median of ${repeat} rounds` : 'one round';
  console.log(
    `(figures: ${rounds}, IOPS for 4k jobs, MB/s for 1m. Ratio A/B: A's figure / B's in the same round on the same job, run back to back` +
      `${repeat > 1 ? ', median over rounds [min-max of the per-round ratios]' : ''}; a bare ratio is to ${baseText})`,
  );
}

function printTargets(targets) {
  if (targets.length === 0) return;
  console.log(`\nTargets (paired ratio: ${repeat > 1 ? `median over ${repeat} rounds [min-max]` : 'one round'}; met = the median at or above the target)`);
  const rows = targets.map((t) => [
    `issue ${t.issue}`,
    t.target,
    t.job,
    t.rounds > 1 ? `${t.ratioMedian.toFixed(2)}x [${t.ratioMin.toFixed(2)}-${t.ratioMax.toFixed(2)}]` : `${t.ratioMedian.toFixed(2)}x`,
    `${t.met ? 'met' : 'MISSED'}${t.rounds > 1 ? ` (${t.roundsMet}/${t.rounds} rounds)` : ''}`,
  ]);
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  for (const r of rows) console.log(`  ${r.map((cell, c) => (c === 3 ? cell.padStart(widths[c]) : cell.padEnd(widths[c]))).join('  ')}`.trimEnd());
  const missed = targets.filter((t) => !t.met).length;
  console.log(`  ${targets.length - missed}/${targets.length} met`);
}

async function main() {
  await mkdir(flags.dir, { recursive: true });
  const dir = await mkdtemp(join(flags.dir, 'nbd-mirror-bench-'));
  const ctx = { dir, sizeBytes, files: { a: join(dir, 'leg-a.img'), b: join(dir, 'leg-b.img'), log: join(dir, 'mirror.log'), single: join(dir, 'single.img') } };
  const started = Date.now();
  try {
    const runResync = flags['only-resync'] || (!flags['no-resync'] && servers.includes('mirror-core'));
    if (runResync || servers.some((s) => ['linear', 'mirror-core', 'mirror-disk', 'linear-tls'].includes(s))) setCli(flags.cli ?? privateBuildCopy(dir));
    if (servers.some((s) => TLS_GROUP.includes(s))) ctx.pki = makePki(join(dir, 'pki'));
    console.log(`nbd-mirror bench: ${sizeBytes / 2 ** 20} MiB files in ${dir}, ${runtimeSec} s per job, servers: ${servers.join(', ') || '(none)'}${runResync ? ', resync' : ''}`);
    await fillRandom(ctx.files.a, sizeBytes);
    if (servers.length > 0) await copyFile(ctx.files.a, ctx.files.b);
    // The one-file servers' own copy (servers.js: the mirror legs A and B stay identical).
    if (servers.some((s) => !['mirror-core', 'mirror-disk', 'qemu-quorum'].includes(s))) await copyFile(ctx.files.a, ctx.files.single);
    await sparse(ctx.files.log, 1024 * 1024);
    // Rounds: in each, every group in turn runs each of its jobs against all its servers back to back
    // (benchGroupRound), so a burst of load elsewhere on the machine hits the servers compared on a job alike.
    const groups = groupsToRun();
    const measured = {}; // group key -> job -> server -> [result per round]
    const roundSec = {}; // group key -> [seconds per round]
    ctx.idleCpu = {};
    for (let round = 0; round < repeat && groups.length > 0; round++) {
      for (const group of groups) {
        console.log(`  round ${round + 1}/${repeat}, ${group.key} group`);
        const startedMs = Date.now();
        await benchGroupRound(group, round, ctx, (measured[group.key] ??= {}));
        (roundSec[group.key] ??= []).push(round2((Date.now() - startedMs) / 1000));
      }
    }
    const results = {};
    for (const name of servers) {
      const inGroups = groups.filter((g) => g.servers.includes(name));
      const runs = inGroups.flatMap((g) =>
        Array.from({ length: repeat }, (_, i) => ({ jobs: Object.fromEntries(g.jobs.map((job) => [job, measured[g.key][job][name][i]])) })),
      );
      const def = SERVERS[name](ctx);
      results[name] = medianResult(
        runs.map((r) => ({ ...r, description: def.description, table: def.table })),
        inGroups.map((g) => g.key),
      );
    }
    const paired = Object.fromEntries(groups.map((g) => [g.key, { ...pairedGroup(g, measured[g.key]), secondsPerRound: roundSec[g.key] }]));
    // Only mirrors wrote the legs: they should still be identical (qemu-quorum's reads are slower where they differ).
    const legsIdenticalAfterFio = groups.some((g) => g.key === 'mirror') ? await timeCommand('cmp', [ctx.files.a, ctx.files.b]).then(() => true, () => false) : null;
    if (legsIdenticalAfterFio === false) console.warn('  warning: legs A and B differ after the fio rounds');
    let resync;
    if (runResync) {
      process.stdout.write(`  resync       full resync of 2-leg core-log mirror vs nbdcopy A -> B${repeat > 1 ? `, ${repeat} rounds` : ''} ... `);
      resync = await benchResync(ctx, repeat);
      process.stdout.write('done\n');
    }

    for (const group of Object.values(paired)) if (group.servers.some((s) => s !== group.base)) printGroup(group);
    const fioRuns = Object.values(measured).flatMap((byJob) => Object.values(byJob).flatMap((byServer) => Object.values(byServer).flat()));
    const otherLoad =
      fioRuns.length === 0
        ? null
        : {
            otherCpusMedian: round2(median(fioRuns.map((r) => r.otherCpus))),
            otherCpusMax: round2(Math.max(...fioRuns.map((r) => r.otherCpus))),
            stealCpusMedian: round2(median(fioRuns.map((r) => r.stealCpus))),
            note: 'CPUs (of machine.cpuCount) used on average by everything but this bench, fio and the servers during each fio run (/proc/stat), and stolen by the hypervisor',
          };
    if (otherLoad !== null && quietBelow !== undefined) {
      otherLoad.quietBelow = quietBelow;
      otherLoad.quietWaitSecTotal = round2(fioRuns.reduce((sum, r) => sum + r.quietWaitSec, 0));
      otherLoad.runsStartedNotQuiet = fioRuns.filter((r) => !r.quiet).length;
      otherLoad.runs = fioRuns.length;
    }
    if (otherLoad !== null) {
      if (quietBelow !== undefined) {
        console.log(`\n(--quiet-below ${quietBelow}: waited ${otherLoad.quietWaitSecTotal} s in all; ${otherLoad.runsStartedNotQuiet} of ${otherLoad.runs} fio runs started without a quiet ${QUIET_WINDOW_MS} ms after ${QUIET_WAIT_MAX_MS / 1000} s)`);
      }
      console.log(
        `\n(rest of the machine during the fio runs: median ${otherLoad.otherCpusMedian}, max ${otherLoad.otherCpusMax} of ${cpus().length} CPUs busy with other processes; steal median ${otherLoad.stealCpusMedian} CPUs)`,
      );
    }
    if (ctx.idleCpu.maxMs !== undefined) {
      const i = ctx.idleCpu;
      console.log(`(idle servers: at most ${i.maxMs.toFixed(0)} ms of CPU while another one ran a job: ${i.server} while ${i.whileRunning} ran ${i.job})`);
    }
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
        if (resync.rounds > 1) {
          const e = resync.engineRatioPaired;
          console.log(`  paired (nbdcopy time / ours within each round, median [min-max]): end to end ${ratioText(resync.endToEndRatioPaired)}, engine ${e === null ? '?' : ratioText(e)}`);
        }
        console.log(`  (ratio = nbdcopy time / ours; end to end includes node start-up and module loading, engine is the copy alone${resync.rounds > 1 ? `; medians of ${resync.rounds} interleaved rounds` : ''})`);
      }
    }
    const targets = targetsOf(paired, resync);
    printTargets(targets);
    const report = {
      date: new Date().toISOString(),
      machine: machine(),
      backingDir: flags.dir,
      sizeBytes,
      runtimeSecPerJob: runtimeSec,
      rounds: repeat,
      jobs: Object.fromEntries(jobs.map((j) => [j, JOBS[j]])),
      // Medians over rounds of each server's absolute figures (what reports before pairing had).
      servers: results,
      pairing: {
        method: 'job-major',
        note:
          'In each round, each group runs each of its jobs against all its servers back to back (order: runOrder in servers.js, ' +
          'row = round + job index; positionPerRound: 0 = first), the servers running through the round. perRound: the figure ' +
          '(metric: iops for 4k jobs, bwBytesPerSec otherwise) in each round; median: over rounds. ratios["A/B"]: perRound[i] = A / B ' +
          'in round i on that job; median, min, max over rounds; ratioOfMedians = median(A) / median(B), the ratio reported before pairing.',
        groups: paired,
      },
      targets,
      legsIdenticalAfterFio,
      otherLoad,
      loadavgAtEnd: loadavg().map((x) => Number(x.toFixed(2))),
      idleCpu: ctx.idleCpu.maxMs === undefined ? null : { ...ctx.idleCpu, note: 'the most CPU (ms) a running server used while another one ran one job' },
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
