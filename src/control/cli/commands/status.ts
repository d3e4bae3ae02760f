// `nbd-mirror status [NAME]`: dmsetup status lines (`<start> <length> <target> <params>`); without NAME,
// every volume as `<name>: <line>`.
import type { Command } from 'commander';
import type { ControlClient } from '../../client.js';
import { formatPerVolume, type LsEntry } from '../../format.js';
import { addControlOptions, runControl, volumePath, type ControlFlags } from '../control-command.js';

export function registerStatus(program: Command): void {
  addControlOptions(program.command('status').argument('[name]', 'volume name (default: all)').description('dmsetup status of one or all volumes')).action(
    async (name: string | undefined, flags: ControlFlags) => {
      await runControl(flags, async (c) => {
        const rows = await perVolume(c, name, 'status', (r: { status: string }) => r.status);
        return [name === undefined ? { volumes: rows.map((r) => r.json) } : rows[0]!.json, formatPerVolume(rows, name !== undefined)];
      });
    },
  );
}

/** Ask `op` of one volume, or of every volume in ls order. */
export async function perVolume<T>(
  c: ControlClient,
  name: string | undefined,
  op: string,
  text: (r: T) => string,
): Promise<{ name: string; text: string; json: T }[]> {
  const names = name !== undefined ? [name] : (await c.get<{ volumes: LsEntry[] }>('/v1/volumes')).volumes.map((v) => v.name);
  const rows: { name: string; text: string; json: T }[] = [];
  for (const n of names) {
    const r = await c.get<T>(volumePath(n, op));
    rows.push({ name: n, text: text(r), json: r });
  }
  return rows;
}
