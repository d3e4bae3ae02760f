// Helpers for the faults-*.test.ts scenarios: an nbdkit leg with the error filter (EIO on every request
// while TRIGGER exists: arm() creates it, disarm() removes it) and optionally the delay filter under it
// (slows the leg so a resync is still running when the test acts). Stopped by its own PID only. Also
// small byte-pattern and client utilities.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createSparseFile } from '../helpers/tmp.js';
import { NbdClient } from '../../src/nbd/client/client.js';

export interface FaultLeg {
  readonly file: string;
  readonly socket: string;
  readonly uri: string;
  /** Errors are injected while this file exists. */
  readonly trigger: string;
  arm(): Promise<void>;
  disarm(): Promise<void>;
  stop(): Promise<void>;
}

export interface FaultLegOptions {
  /** nbdkit delay filter under the error filter: delay-write / delay-read (ms). */
  readonly delayWriteMs?: number;
  readonly delayReadMs?: number;
}

const READY_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5_000;

export async function startFaultLeg(dir: string, name: string, sizeBytes: number, opts: FaultLegOptions = {}): Promise<FaultLeg> {
  const file = await createSparseFile(join(dir, `${name}.img`), sizeBytes);
  const socket = join(dir, `${name}.sock`);
  const pidFile = join(dir, `${name}.pid`);
  const trigger = join(dir, `${name}.TRIGGER`);
  const delayed = opts.delayWriteMs !== undefined || opts.delayReadMs !== undefined;
  const args = ['-f', '-U', socket, '-P', pidFile, '--filter=error'];
  if (delayed) args.push('--filter=delay');
  args.push('file', file, 'error-rate=100%', `error-file=${trigger}`, 'error=EIO');
  if (opts.delayWriteMs !== undefined) args.push(`delay-write=${opts.delayWriteMs}ms`);
  if (opts.delayReadMs !== undefined) args.push(`delay-read=${opts.delayReadMs}ms`);
  const child: ChildProcess = spawn('nbdkit', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => {
    if (stderr.length < 64 * 1024) stderr += c.toString();
  });
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (!(existsSync(pidFile) && (await readFile(pidFile, 'utf8')).trim() === String(child.pid))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`nbdkit did not start: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    file,
    socket,
    uri: `nbd+unix:///?socket=${socket}`,
    trigger,
    arm: () => writeFile(trigger, ''),
    disarm: () => rm(trigger, { force: true }),
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
        await exited;
        clearTimeout(timer);
      }
    },
  };
}

/** A buffer of `lengthBytes` where every 4 KiB block names its offset and a generation byte. */
export function patternBlock(offsetBytes: number, lengthBytes: number, generation: number): Buffer {
  const b = Buffer.alloc(lengthBytes, generation);
  for (let o = 0; o + 8 <= lengthBytes; o += 4096) {
    b.writeUInt32LE((offsetBytes + o) >>> 0, o);
    b.writeUInt32LE(generation, o + 4);
  }
  return b;
}

/** Read [offset, offset+len) through a fresh client; returns the data or the error. */
export async function readVia(uri: string, offsetBytes: number, lengthBytes: number): Promise<Buffer | Error> {
  const c = await NbdClient.connect(uri);
  try {
    const b = Buffer.alloc(lengthBytes);
    await c.read(b, offsetBytes);
    return b;
  } catch (err) {
    return err instanceof Error ? err : new Error(String(err));
  } finally {
    await c.close().catch(() => undefined);
  }
}
