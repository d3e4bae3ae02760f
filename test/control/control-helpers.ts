// Helpers for the control tests: start `nbd-mirror serve` with a control socket in the test's temp dir,
// run control commands against it (the real CLI, a separate process), and small polling utilities.
import { CLI_PATH, startServer, type ServerHandle, type StartOptions } from '../helpers/server.js';
import { run, type RunResult } from '../helpers/run.js';
import { ControlClient } from '../../src/control/client.js';
import type { VolumeInfo } from '../../src/control/volumes.js';
import { sleep } from '../helpers/time.js';

export interface Controlled {
  readonly server: ServerHandle;
  readonly controlPath: string;
  /** Run `nbd-mirror <args> --control PATH`; never throws on a non-zero exit. */
  ctl(...args: string[]): Promise<RunResult>;
  /** Same, with --json, parsed; throws if the output is not JSON. */
  json<T = Record<string, unknown>>(...args: string[]): Promise<T>;
  /** The volume's info straight from the control API (no CLI process: for polling). */
  info(name: string): Promise<VolumeInfo>;
  /** The status line straight from the control API, with a newline (as the CLI prints it). */
  status(name: string): Promise<string>;
}

function controlledFor(server: ServerHandle): Controlled {
  const controlPath = server.controlPath;
  const ctl = (...args: string[]) =>
    run(process.execPath, [CLI_PATH, ...args, '--control', controlPath], { allowFailure: true, timeoutMs: 60_000 });
  const api = new ControlClient({ kind: 'unix', path: controlPath });
  return {
    server,
    controlPath,
    ctl,
    info: (name: string) => api.get<VolumeInfo>(`/v1/volumes/${encodeURIComponent(name)}/info`),
    status: async (name: string) => `${(await api.get<{ status: string }>(`/v1/volumes/${encodeURIComponent(name)}/status`)).status}\n`,
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

/** startServer (which gives every server `--control DIR/nbd.ctl`) in `dir`, plus control flags. */
export async function startWithControl(dir: string, opts: StartOptions & { readonly controlArgs?: readonly string[] }): Promise<Controlled> {
  const server = await startServer({ ...opts, dir, extraArgs: [...(opts.extraArgs ?? []), ...(opts.controlArgs ?? [])] });
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

export { sleep };
