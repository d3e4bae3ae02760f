// Crash-test plumbing: heavy fio writes to a range of the export in the background, and byte-level
// checks on leg files (pattern ranges, planted differences, cmp -l).
import { spawn, type ChildProcess } from 'node:child_process';
import { open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from './run.js';

export interface BackgroundFio {
  readonly child: ChildProcess;
  /** Resolves once fio has done some I/O (its first status line). */
  readonly started: Promise<void>;
  /** Kill (SIGKILL, by PID) if still running, and wait for it to be gone. */
  stop(): Promise<void>;
}

/** Random writes, QD32, 2 jobs, over [offsetBytes, offsetBytes + lengthBytes), for up to runtimeSec. */
export async function startHeavyWrites(o: { uri: string; dir: string; offsetBytes: number; lengthBytes: number; runtimeSec: number }): Promise<BackgroundFio> {
  const jobPath = join(o.dir, 'heavy.fio');
  await writeFile(
    jobPath,
    [
      '[global]',
      'ioengine=nbd',
      `uri=${o.uri}`,
      'rw=randwrite',
      'bs=4k-256k',
      'iodepth=32',
      'numjobs=2',
      `offset=${o.offsetBytes}`,
      `size=${o.lengthBytes}`,
      'time_based=1',
      `runtime=${o.runtimeSec}`,
      'buffer_pattern=0xe7',
      '[heavy]',
      '',
    ].join('\n'),
  );
  const child = spawn('fio', ['--status-interval=1', jobPath], { stdio: ['ignore', 'pipe', 'pipe'], cwd: o.dir });
  let exited = false;
  const gone = new Promise<void>((r) =>
    child.once('exit', () => {
      exited = true;
      r();
    }),
  );
  const started = new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (c) => {
      out += c;
      if (/WRITE: bw=|write: IOPS=/.test(out)) resolve();
    });
    child.once('exit', (code) => reject(new Error(`fio exited (${code}) before doing I/O:\n${out}`)));
  });
  started.catch(() => undefined);
  return {
    child,
    started,
    stop: async () => {
      if (!exited) child.kill('SIGKILL');
      await gone;
    },
  };
}

export async function readRange(path: string, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(lengthBytes);
    const { bytesRead } = await fh.read(buf, 0, lengthBytes, offsetBytes);
    if (bytesRead !== lengthBytes) throw new Error(`${path}: short read at ${offsetBytes}`);
    return buf;
  } finally {
    await fh.close();
  }
}

export async function writeRange(path: string, offsetBytes: number, data: Buffer): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(data, 0, data.length, offsetBytes);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Byte offsets (0-based) where two files differ, via `cmp -l` (at most `limit` reported). */
export async function differingOffsets(a: string, b: string): Promise<number[]> {
  const r = await run('cmp', ['-l', a, b], { allowFailure: true });
  if (r.code === 0) return [];
  if (r.code !== 1) throw new Error(`cmp failed: ${r.stderr}`);
  return r.stdout
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((line) => Number(line.trim().split(/\s+/)[0]) - 1);
}
