// A mirror leg served by nbdkit with the error filter over a file: errors (EIO on every request) are
// injected only while TRIGGER exists (`arm()` creates it). Started in the foreground with a pid file;
// stopped by its PID only.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createSparseFile } from '../helpers/tmp.js';

export interface NbdkitLeg {
  readonly file: string;
  readonly socket: string;
  readonly uri: string;
  readonly trigger: string;
  arm(): Promise<void>;
  stop(): Promise<void>;
}

const READY_TIMEOUT_MS = 10_000;
/** nbdkit waits for its clients on SIGTERM; a stuck client must not hang the test's cleanup. */
const STOP_TIMEOUT_MS = 5_000;

export async function startNbdkitErrorLeg(dir: string, name: string, sizeBytes: number): Promise<NbdkitLeg> {
  const file = await createSparseFile(join(dir, `${name}.img`), sizeBytes);
  const socket = join(dir, `${name}.sock`);
  const pidFile = join(dir, `${name}.pid`);
  const trigger = join(dir, `${name}.TRIGGER`);
  const child: ChildProcess = spawn(
    'nbdkit',
    ['-f', '-U', socket, '-P', pidFile, '--filter=error', 'file', file, 'error-rate=100%', `error-file=${trigger}`, 'error=EIO'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
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
