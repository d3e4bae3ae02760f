// fio job generation and result parsing for the benchmark. One job file per server run, the same for
// every server: the jobs run one after another (stonewall), each for `runtimeSec` seconds, through fio's
// nbd engine (libnbd) on a unix socket.
import { spawn } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** The benchmark's jobs: name -> fio options. Names are stable keys in bench-results/*.json. */
export const JOBS = {
  'randread-4k-qd1': { rw: 'randread', bs: '4k', iodepth: 1 },
  'randwrite-4k-qd1': { rw: 'randwrite', bs: '4k', iodepth: 1 },
  'randwrite-4k-qd32': { rw: 'randwrite', bs: '4k', iodepth: 32 },
  'write-1m-qd8': { rw: 'write', bs: '1m', iodepth: 8 },
  'read-1m-qd8': { rw: 'read', bs: '1m', iodepth: 8 },
};

/**
 * Each job's unmeasured start, in seconds. 1 s rather than 0.5: our server is a fresh Node process per
 * run, and the first job also warms its JIT (V8 optimizes the request path after some thousand calls);
 * every server gets the same ramp.
 */
export const RAMP_SEC = 1;

export function jobFile({ uri, sizeBytes, runtimeSec, jobs }) {
  const lines = [
    '[global]',
    'ioengine=nbd',
    `uri=${uri}`,
    `size=${sizeBytes}`,
    'time_based=1',
    `runtime=${runtimeSec}`,
    `ramp_time=${RAMP_SEC}`,
    'randrepeat=0',
    'group_reporting=1',
    'stonewall=1',
    '',
  ];
  for (const name of jobs) {
    const j = JOBS[name];
    if (j === undefined) throw new Error(`unknown job ${name}; known: ${Object.keys(JOBS).join(', ')}`);
    lines.push(`[${name}]`, `rw=${j.rw}`, `bs=${j.bs}`, `iodepth=${j.iodepth}`, '');
  }
  return lines.join('\n');
}

/** The figure a job is judged by: IOPS for the 4k jobs, bytes/s for the others (1m, where bandwidth is the point). */
export function figureOf(jobName, result) {
  return JOBS[jobName].bs === '4k' ? result.iops : result.bwBytesPerSec;
}

export function median(values) {
  const v = [...values].sort((a, b) => a - b);
  const mid = Math.floor(v.length / 2);
  return v.length % 2 === 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

/**
 * Paired ratios: a[i] / b[i] for each round i (the two measured in the same round on the same job, seconds
 * apart), their median, min and max; and, for comparison with reports before pairing, median(a) / median(b).
 */
export function pairedRatio(a, b) {
  if (a.length !== b.length || a.length === 0) throw new Error(`pairedRatio: ${a.length} vs ${b.length} rounds`);
  const round4 = (x) => Math.round(x * 1e4) / 1e4;
  const perRound = a.map((x, i) => x / b[i]);
  return { median: round4(median(perRound)), min: round4(Math.min(...perRound)), max: round4(Math.max(...perRound)), perRound: perRound.map(round4), ratioOfMedians: round4(median(a) / median(b)) };
}

/** Runs fio once over all jobs; returns { jobName: { iops, bwBytesPerSec, clatP50Us, clatP99Us } }. */
/** `env`: fio's environment (TLS: HOME pointing at libnbd's client certificates, see tls-pki.js). */
export async function runFio({ workDir, label, uri, sizeBytes, runtimeSec, jobs, env }) {
  const jobPath = join(workDir, `${label}.fio`);
  const outPath = join(workDir, `${label}.json`);
  await writeFile(jobPath, jobFile({ uri, sizeBytes, runtimeSec, jobs }));
  await new Promise((resolve, reject) => {
    const child = spawn('fio', ['--output-format=json', `--output=${outPath}`, jobPath], { stdio: ['ignore', 'ignore', 'pipe'], cwd: workDir, ...(env !== undefined ? { env } : {}) });
    let stderr = '';
    child.stderr.on('data', (c) => (stderr = (stderr + c).slice(-8192)));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`fio failed (${code}) for ${label}:\n${stderr}`))));
  });
  const report = JSON.parse(await readFile(outPath, 'utf8'));
  const results = {};
  for (const job of report.jobs) {
    if (job.error !== 0) throw new Error(`fio job ${job.jobname} on ${label}: error ${job.error}`);
    const dir = JOBS[job.jobname].rw.includes('read') ? job.read : job.write;
    const pct = dir.clat_ns?.percentile ?? {};
    results[job.jobname] = {
      iops: Math.round(dir.iops),
      bwBytesPerSec: Math.round(dir.bw_bytes),
      clatP50Us: pct['50.000000'] !== undefined ? Math.round(pct['50.000000'] / 1000) : null,
      clatP99Us: pct['99.000000'] !== undefined ? Math.round(pct['99.000000'] / 1000) : null,
    };
  }
  return results;
}
