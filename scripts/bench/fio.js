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
