// Runs an external program (a real NBD client, fio, mkfs...) with a timeout and captures its output.
// A non-zero exit rejects with an error quoting the command, exit status and stderr, so a failed
// assertion says what went wrong without rerunning anything.
import { spawn } from 'node:child_process';

export interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface RunOptions {
  readonly timeoutMs?: number;
  /** Resolve even on a non-zero exit (the caller inspects `code`). */
  readonly allowFailure?: boolean;
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
}

/** Captured output is bounded so a runaway tool cannot exhaust the test's memory. */
export const RUN_OUTPUT_BYTES_MAX = 8 * 1024 * 1024;
export const RUN_TIMEOUT_MS_DEFAULT = 60_000;

export function run(command: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? RUN_TIMEOUT_MS_DEFAULT;
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: opts.env ?? process.env,
      cwd: opts.cwd,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outBytes = 0;
    let errBytes = 0;
    child.stdout.on('data', (c: Buffer) => {
      if (outBytes < RUN_OUTPUT_BYTES_MAX) out.push(c);
      outBytes += c.length;
    });
    child.stderr.on('data', (c: Buffer) => {
      if (errBytes < RUN_OUTPUT_BYTES_MAX) err.push(c);
      errBytes += c.length;
    });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${command}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const result: RunResult = {
        stdout: Buffer.concat(out).toString(),
        stderr: Buffer.concat(err).toString(),
        code,
        signal,
      };
      const line = [command, ...args].map(quote).join(' ');
      if (timedOut) reject(new Error(`timed out after ${timeoutMs} ms: ${line}\n${result.stderr}`));
      else if (code !== 0 && !opts.allowFailure) {
        reject(new Error(`exit ${code ?? signal}: ${line}\n--- stderr ---\n${result.stderr}\n--- stdout ---\n${result.stdout.slice(0, 4000)}`));
      } else resolve(result);
    });
  });
}

function quote(s: string): string {
  return /^[A-Za-z0-9_./:=@%+,-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}
