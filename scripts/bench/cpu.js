#!/usr/bin/env node
// Server CPU time per request, beside throughput: a tool for judging hot-path changes on a noisy,
// shared machine, where IOPS move with other load but the server's own CPU per request does not.
//
//   node scripts/bench/cpu.js [--servers linear,nbdkit] [--jobs read-1m-qd8,...] [--runtime 3]
//        [--repeat N] [--tls off|x509|psk-nbdcopy] [--size-mib 1024] [--dir /dev/shm] [--cli PATH]
//        [--prof DIR (ours runs under node --cpu-prof, profiles written there)]
//        [--cli-b PATH: servers "linear-b" / "mirror-b" are the same export served by another build, for A/B tests]
//        [--base NAME: the server ratios are to (default nbdkit if run, else the first of --servers)]
//        [--no-warmup: measure each server's first connection (see below)]
// Servers: linear (one file), mirror (2-leg core-log mirror of two identical files, nosync), mirror-disk
// (the same with a disk log file in the work dir), nbdkit (file).
//
// Each job is one fio run (same job definitions as run.js, ramp_time 0) against a running server; the
// server's utime+stime (/proc/PID/stat, all threads) is sampled before and after and divided by the
// requests fio completed. Rounds interleave the servers, in an order that changes each round (runOrder in
// servers.js: no server always first or last); medians are printed, with paired ratios to the base server:
// the median over rounds of server / base in the same round [min-max], for throughput and CPU per request.
// Before its measured jobs, each server started serves one unmeasured 1 s connection of 1 MiB reads (QD8), as
// the servers of run.js have served the earlier jobs of a round by their 1 MiB read job. It matters for
// nbdkit: its worker threads' 1 MiB buffers of a process's first connection are mmap'd by glibc at page
// offset 16, where the pread from the page cache into them is ~2.5x slower on this AMD EPYC (a copy whose
// destination lies 1-31 bytes past its source modulo 4096); once those threads exit, glibc's mmap threshold
// has grown and later connections' buffers come from the heap, at other offsets. Measured without the
// warm-up, 3 rounds: nbdkit 1124 MB/s with 1104 us of CPU per request; with it 1648 MB/s and 643 us
// (--no-warmup measures the first connection).
// --tls x509: both servers with --tls require and X.509 (fio finds its client certificate in a private
// HOME, see tls-pki.js).
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { privateBuildCopy } from './build.js';
import { JOBS, median, pairedRatio } from './fio.js';
import { processCpuSec } from './proc-cpu.js';
import { runOrder, startServer } from './servers.js';
import { makePki } from './tls-pki.js';

const { values: flags } = parseArgs({
  options: {
    servers: { type: 'string', default: 'linear,nbdkit' },
    jobs: { type: 'string', default: Object.keys(JOBS).join(',') },
    runtime: { type: 'string', default: '3' },
    repeat: { type: 'string', default: '1' },
    tls: { type: 'string', default: 'off' },
    'size-mib': { type: 'string', default: '1024' },
    dir: { type: 'string', default: '/dev/shm' },
    cli: { type: 'string' },
    'cli-b': { type: 'string' },
    prof: { type: 'string' },
    json: { type: 'string' },
    base: { type: 'string' },
    'no-warmup': { type: 'boolean', default: false },
  },
});
const servers = flags.servers.split(',');
const BASE = flags.base ?? (servers.includes('nbdkit') ? 'nbdkit' : servers[0]);
if (!servers.includes(BASE)) throw new Error(`--base ${BASE} is not one of --servers`);
const jobs = flags.jobs.split(',');
for (const j of jobs) if (JOBS[j] === undefined) throw new Error(`unknown job ${j}`);
const RUNTIME_SEC = Number(flags.runtime);
const REPEAT = Number(flags.repeat);
const SIZE_BYTES = Number(flags['size-mib']) * 1024 * 1024;
const TLS = flags.tls;
if (!['off', 'x509'].includes(TLS)) throw new Error('--tls off|x509');
function serverDef(name, ctx) {
  const socket = join(ctx.dir, `${name}.sock`);
  const pidFile = join(ctx.dir, `${name}.pid`);
  if (name === 'nbdkit') {
    const tls = TLS === 'x509' ? ['--tls=require', `--tls-certificates=${ctx.pki.server}`] : [];
    return { command: 'nbdkit', args: ['-f', '-U', socket, '-P', pidFile, ...tls, 'file', ctx.file], socket, pidFile };
  }
  const known = ['linear', 'linear-b', 'mirror', 'mirror-b', 'mirror-disk', 'mirror-disk-b'];
  if (!known.includes(name)) throw new Error(`unknown server ${name} (${known.join(', ')}, nbdkit)`);
  const cli = name.endsWith('-b') ? flags['cli-b'] : ctx.cli;
  if (cli === undefined) throw new Error(`${name} needs --cli-b PATH`);
  const tls = TLS === 'x509' ? ['--tls', 'require', '--tls-certificates', ctx.pki.server] : [];
  const node = flags.prof !== undefined ? ['--cpu-prof', '--cpu-prof-dir', flags.prof] : [];
  const sectors = SIZE_BYTES / 512;
  const log = name.startsWith('mirror-disk') ? `disk 3 ${join(ctx.dir, `${name}.log`)} 1024 nosync` : 'core 2 1024 nosync';
  const table = name.startsWith('mirror') ? `0 ${sectors} mirror ${log} 2 ${ctx.file} 0 ${ctx.fileB} 0` : `0 ${sectors} linear ${ctx.file} 0`;
  return {
    command: process.execPath,
    args: [...node, cli, 'serve', '--quiet', '--log-level', 'warn', '--table', table, '--listen', `unix:${socket}`, '--pid-file', pidFile, '--control', join(ctx.dir, `${name}.ctl`), '--dashboard', '0', ...tls],
    socket,
    pidFile,
  };
}

/** The unmeasured connection each server serves first (see the header). */
const WARMUP_JOB = 'read-1m-qd8';

async function fioJob(ctx, uri, job) {
  const j = JOBS[job];
  const out = await fioRun(ctx, uri, job, job, RUNTIME_SEC);
  const r = JSON.parse(readFileSync(out, 'utf8')).jobs[0];
  const d = j.rw.includes('read') ? r.read : r.write;
  const [u, sys] = readFileSync(`${out}.time`, 'utf8').trim().split(/\s+/).slice(-2).map(Number);
  return { iops: d.iops, bwBytesPerSec: d.bw_bytes, ops: d.total_ios, clientUsPerOp: ((u + sys) * 1e6) / d.total_ios };
}

/** One fio run of `job` for `runtimeSec` (fio's JSON output and its CPU time in files named after `label`); returns the JSON's path. */
async function fioRun(ctx, uri, label, job, runtimeSec) {
  const j = JOBS[job];
  const path = join(ctx.dir, `${label}.fio`);
  const out = join(ctx.dir, `${label}.json`);
  writeFileSync(path, ['[global]', 'ioengine=nbd', `uri=${uri}`, `size=${SIZE_BYTES}`, 'time_based=1', `runtime=${runtimeSec}`, 'randrepeat=0', '', `[${job}]`, `rw=${j.rw}`, `bs=${j.bs}`, `iodepth=${j.iodepth}`, ''].join('\n'));
  const env = TLS === 'x509' ? { ...process.env, HOME: ctx.pki.home } : process.env;
  await new Promise((resolve, reject) => {
    // /usr/bin/time: fio's own CPU (the client side of the same requests)
    const c = spawn('/usr/bin/time', ['-f', '%U %S', '-o', `${out}.time`, 'fio', '--output-format=json', `--output=${out}`, path], { stdio: ['ignore', 'ignore', 'pipe'], env, cwd: ctx.dir });
    let stderr = '';
    c.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4096)));
    c.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`fio ${label}: ${stderr}`))));
  });
  return out;
}

async function main() {
  mkdirSync(flags.dir, { recursive: true });
  const dir = mkdtempSync(join(flags.dir, 'nbdm-bench-cpu-'));
  try {
    const cli = flags.cli ?? privateBuildCopy(dir);
    const pki = TLS === 'x509' ? makePki(join(dir, 'pki')) : undefined;
    const file = join(dir, 'a.img');
    const fileB = join(dir, 'b.img');
    execFileSync('fio', ['--name=fill', `--filename=${file}`, '--rw=write', '--bs=1m', `--size=${SIZE_BYTES}`, '--output=/dev/null'], { cwd: dir });
    if (servers.some((n) => n.startsWith('mirror'))) execFileSync('cp', [file, fileB]);
    for (const n of servers) if (n.startsWith('mirror-disk')) execFileSync('truncate', ['-s', '1M', join(dir, `${n}.log`)]);
    const ctx = { dir, cli, pki, file, fileB };
    const res = {}; // server -> job -> [{...}]
    for (let round = 0; round < REPEAT; round++) {
      for (const name of runOrder(servers, round)) {
        const def = serverDef(name, ctx);
        const srv = await startServer(def);
        try {
          const uri = `${TLS === 'off' ? 'nbd+unix' : 'nbds+unix'}:///?socket=${def.socket}`;
          if (!flags['no-warmup']) await fioRun(ctx, uri, 'warmup', WARMUP_JOB, 1);
          for (const job of jobs) {
            const c0 = processCpuSec(srv.pid);
            const r = await fioJob(ctx, uri, job);
            const c1 = processCpuSec(srv.pid);
            r.cpuUsPerOp = ((c1 - c0) * 1e6) / r.ops;
            r.cpuLoad = (c1 - c0) / RUNTIME_SEC;
            ((res[name] ??= {})[job] ??= []).push(r);
            process.stdout.write(`  round ${round + 1} ${name} ${job}: ${fmtMetric(job, r)}, ${r.cpuUsPerOp.toFixed(1)} us/op (fio ${r.clientUsPerOp.toFixed(1)}), cpu ${(r.cpuLoad * 100).toFixed(0)}%\n`);
          }
        } finally {
          await srv.stop();
        }
      }
    }
    console.log(`\nmedians over ${REPEAT} round(s), tls ${TLS}, ${RUNTIME_SEC}s per job; load ${execFileSync('cat', ['/proc/loadavg']).toString().trim()}`);
    console.log(`(ratios: server / ${BASE} in the same round, median over rounds${REPEAT > 1 ? ' [min-max]' : ''})`);
    const rows = [];
    for (const job of jobs) {
      const m = {};
      for (const name of servers) {
        const rs = res[name][job];
        const base = res[BASE][job];
        m[name] = {
          iops: median(rs.map((r) => r.iops)),
          bwBytesPerSec: median(rs.map((r) => r.bwBytesPerSec)),
          cpuUsPerOp: median(rs.map((r) => r.cpuUsPerOp)),
          clientUsPerOp: median(rs.map((r) => r.clientUsPerOp)),
          // Paired with the base server's run of the same round: throughput (IOPS; the same ratio as bandwidth) and CPU per request.
          ...(name !== BASE ? { ratio: pairedRatio(rs.map((r) => r.iops), base.map((r) => r.iops)), cpuRatio: pairedRatio(rs.map((r) => r.cpuUsPerOp), base.map((r) => r.cpuUsPerOp)) } : {}),
        };
      }
      rows.push({ job, ...m });
      const ratios = (n) => (n === BASE ? '' : ` (${x(m[n].ratio)} ${BASE}, cpu/op ${x(m[n].cpuRatio)})`);
      console.log(`${job.padEnd(18)} ${servers.map((n) => `${n} ${fmtMetric(job, m[n])} ${m[n].cpuUsPerOp.toFixed(1)}us/op (fio ${m[n].clientUsPerOp.toFixed(1)})${ratios(n)}`).join('  |  ')}`);
    }
    if (flags.json) writeFileSync(flags.json, `${JSON.stringify({ date: new Date().toISOString(), base: BASE, order: Array.from({ length: REPEAT }, (_, r) => runOrder(servers, r)), tls: TLS, runtimeSec: RUNTIME_SEC, rounds: REPEAT, rows, raw: res }, null, 2)}\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function x(r) {
  return REPEAT > 1 ? `${r.median.toFixed(2)}x [${r.min.toFixed(2)}-${r.max.toFixed(2)}]` : `${r.median.toFixed(2)}x`;
}

function fmtMetric(job, r) {
  return JOBS[job].bs === '4k' ? `${Math.round(r.iops)} IOPS` : `${(r.bwBytesPerSec / 1e6).toFixed(0)} MB/s`;
}

await main();
