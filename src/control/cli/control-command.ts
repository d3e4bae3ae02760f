// Shared plumbing of the control commands (ls, status, table, info, suspend, resume, reload, wait,
// message, repair, clear, events): the --control / --control-token-file / --json options, the client,
// and one error path: a refused operation prints `nbd-mirror: error: <message>` (or, with --json,
// {"error":{code,message}} on stdout) and sets a non-zero exit code; bad input exits 2, others 1.
import type { Command } from 'commander';
import { ControlClient, resolveControlTarget } from '../client.js';
import { ControlError, type ControlErrorCode } from '../control-error.js';
import { EXIT_FAILURE, EXIT_USAGE, UsageError } from '../usage-error.js';

export interface ControlFlags {
  control?: string;
  controlTokenFile?: string;
  json: boolean;
}

/** Refusals caused by the caller's input exit 2 (like a usage error); the rest exit 1. */
const INPUT_CODES: ReadonlySet<ControlErrorCode> = new Set(['EINVAL', 'ENOENT', 'ESIZE', 'ENODEV']);

export function addControlOptions(cmd: Command): Command {
  return cmd
    .option('--control <path>', 'control socket path, or tcp://127.0.0.1:PORT (default: env NBD_MIRROR_CONTROL, or the only socket in the default directory)')
    .option('--control-token-file <file>', 'token for a tcp:// control address (env NBD_MIRROR_CONTROL_TOKEN_FILE)')
    .option('--json', 'print the answer as JSON', false);
}

/**
 * Run a command body with a connected client; print its text (or JSON) on success; map errors.
 * `body` returns [json, text].
 */
export async function runControl(flags: ControlFlags, body: (client: ControlClient) => Promise<[unknown, string]>): Promise<void> {
  try {
    const client = new ControlClient(resolveControlTarget(flags));
    const [json, text] = await body(client);
    process.stdout.write(flags.json ? `${JSON.stringify(json, null, 2)}\n` : text);
  } catch (e) {
    if (e instanceof UsageError && !flags.json) throw e; // main prints it and exits 2
    const err =
      e instanceof ControlError ? e : e instanceof UsageError ? new ControlError('EINVAL', e.message) : new ControlError('EIO', (e as Error).message);
    if (flags.json) process.stdout.write(`${JSON.stringify({ error: { code: err.code, message: err.message } }, null, 2)}\n`);
    process.stderr.write(`nbd-mirror: error: ${err.message}\n`);
    process.exitCode = INPUT_CODES.has(err.code) ? EXIT_USAGE : EXIT_FAILURE;
  }
}

export function volumePath(name: string, op: string): string {
  return `/v1/volumes/${encodeURIComponent(name)}/${op}`;
}

export function requireName(name: string | undefined, command: string): string {
  if (name === undefined || name.length === 0) throw new UsageError(`${command}: missing volume NAME`);
  return name;
}
