// Shared plumbing of the pool commands (pool *, create, list, remove, resize, convert, table --pool, serve
// --pool): the --devices and --json options and one error path, as control-command.ts does for the control
// commands: a refusal prints `nbd-mirror: error: <message>` (with --json also {"error":{code,message}} on
// stdout); bad input exits 2, the rest 1. Refusals happen before anything is written (ops.ts is pure).
import type { Command } from 'commander';
import { ControlError } from '../control/control-error.js';
import { EXIT_FAILURE, EXIT_USAGE, UsageError } from '../control/usage-error.js';
import { PoolError, type PoolErrorCode } from './errors.js';
import { releaseClusterLock } from './cluster-lock.js';
import { MetadataError } from './metadata.js';

export interface PoolFlags {
  devices?: string[];
  json: boolean;
}

const INPUT_CODES: ReadonlySet<PoolErrorCode> = new Set(['EINVAL', 'ENOENT', 'EEXIST', 'ENOSPC', 'EBUSY', 'ENODEV']);

export function addDevicesOption(cmd: Command): Command {
  return cmd.option('--devices <dev...>', 'devices or directories holding the pool (default: env NBD_MIRROR_DEVICES)');
}

export function addJsonOption(cmd: Command): Command {
  return cmd.option('--json', 'print the answer as JSON', false);
}

export async function runPool(flags: { json: boolean }, body: () => Promise<[unknown, string]>): Promise<void> {
  try {
    const [json, text] = await body();
    process.stdout.write(flags.json ? `${JSON.stringify(json, null, 2)}\n` : text);
  } catch (e) {
    const err =
      e instanceof PoolError
        ? e
        : e instanceof UsageError
          ? new PoolError('EINVAL', e.message)
          : e instanceof ControlError
            ? new PoolError(e.code === 'ENOENT' ? 'ENOENT' : 'EIO', e.message)
            : new PoolError('EIO', e instanceof MetadataError ? e.message : (e as Error).message);
    if (flags.json) process.stdout.write(`${JSON.stringify({ error: { code: err.code, message: err.message } }, null, 2)}\n`);
    process.stderr.write(`nbd-mirror: error: ${err.message}\n`);
    process.exitCode = INPUT_CODES.has(err.code) ? EXIT_USAGE : EXIT_FAILURE;
  } finally {
    await releaseClusterLock();
  }
}

/** Rows as aligned columns (lvs/vgs style). */
export function columns(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  return all.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd()).join('\n') + '\n';
}
