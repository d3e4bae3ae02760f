// Helpers for the control tests: start `nbd-mirror serve` with a control socket in the test's temp dir,
// run control commands against it (the real CLI, a separate process), and small polling utilities.
import { join } from 'node:path';
import { CLI_PATH, startServer, type ServerHandle, type StartOptions } from '../helpers/server.js';
import { run, type RunResult } from '../helpers/run.js';

export interface Controlled {
  readonly server: ServerHandle;
  readonly controlPath: string;
  /** Run `nbd-mirror <args> --control PATH`; never throws on a non-zero exit. */
  ctl(...args: string[]): Promise<RunResult>;
  /** Same, with --json, parsed; throws if the output is not JSON. */
  json<T = Record<string, unknown>>(...args: string[]): Promise<T>;
}

function controlledFor(server: ServerHandle): Controlled {
  const controlPath = controlPathOf(server);
  const ctl = (...args: string[]) =>
    run(process.execPath, [CLI_PATH, ...args, '--control', controlPath], { allowFailure: true, timeoutMs: 60_000 });
  return {
    server,
    controlPath,
    ctl,
    json: async <T>(...args: string[]) => {
      const r = await ctl(...args, '--json');
      try {
        return JSON.parse(r.stdout) as T;
      } catch {
        throw new Error(`not JSON (exit ${r.code}): ${r.stdout}\n${r.stderr}`);
      }
    },
  };
}

function controlPathOf(server: ServerHandle): string {
  const i = server.args.indexOf('--control');
  if (i < 0) throw new Error('server started without --control');
  return server.args[i + 1]!;
}

/** startServer with `--control DIR/control.sock` where DIR is a dir we choose up front. */
export async function startWithControl(dir: string, opts: StartOptions & { readonly controlArgs?: readonly string[] }): Promise<Controlled> {
  const controlPath = join(dir, 'control.sock');
  const server = await startServer({ ...opts, dir, extraArgs: [...(opts.extraArgs ?? []), '--control', controlPath, ...(opts.controlArgs ?? [])] });
  return controlledFor(server);
}

export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs = 20_000, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
