// fio through its nbd engine (libnbd) against a served export: a verify job (every block written is read
// back and checked with crc32c) with several jobs at a high queue depth, each job in its own slice so the
// verification is exact.
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run, type RunResult } from './run.js';

export interface FioVerifyOptions {
  readonly uri: string;
  readonly dir: string;
  readonly numJobs: number;
  readonly sliceBytes: number;
  readonly iodepth: number;
  readonly bs?: string;
  readonly timeoutMs?: number;
}

export function fioVerifyJob(o: FioVerifyOptions): string {
  return [
    '[global]',
    'ioengine=nbd',
    `uri=${o.uri}`,
    'rw=randwrite',
    `bs=${o.bs ?? '4k-64k'}`,
    'bs_unaligned=0',
    `iodepth=${o.iodepth}`,
    `size=${o.sliceBytes}`,
    `offset_increment=${o.sliceBytes}`,
    `numjobs=${o.numJobs}`,
    'verify=crc32c',
    'verify_fatal=1',
    'verify_state_save=0', // otherwise fio leaves *-verify.state files in its working directory
    'do_verify=1',
    'group_reporting=1',
    '',
    '[verify]',
    '',
  ].join('\n');
}

export interface FioSummary {
  readonly result: RunResult;
  readonly writtenBytes: number;
  readonly readBytes: number;
  readonly errors: number;
}

export async function runFioVerify(o: FioVerifyOptions): Promise<FioSummary> {
  const jobPath = join(o.dir, `verify-${Date.now()}.fio`);
  const outPath = `${jobPath}.json`;
  await writeFile(jobPath, fioVerifyJob(o));
  const result = await run('fio', ['--output-format=json', `--output=${outPath}`, jobPath], { timeoutMs: o.timeoutMs ?? 120_000, cwd: o.dir });
  const report = JSON.parse(await readFile(outPath, 'utf8')) as { jobs: { error: number; write: { io_bytes: number }; read: { io_bytes: number } }[] };
  const job = report.jobs[0]!;
  return { result, writtenBytes: job.write.io_bytes, readBytes: job.read.io_bytes, errors: job.error };
}
