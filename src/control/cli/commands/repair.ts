// `nbd-mirror repair NAME [--spare DEV]...`: LVM's lvconvert --repair. Failed legs (health D, F or U)
// are dropped (down to a linear table when one leg is left) or, with --spare, replaced by spares that are
// then resynced. Runs suspend --noflush / reload / resume on the server, so held writes complete.
import type { Command } from 'commander';
import type { RepairResult } from '../../repair.js';
import { addControlOptions, requireName, runControl, volumePath, type ControlFlags } from '../control-command.js';

const collect = (value: string, previous: string[]): string[] => [...previous, value];

export function registerRepair(program: Command): void {
  addControlOptions(
    program
      .command('repair')
      .argument('<name>', 'volume name')
      .option('--spare <dev>', 'replace a failed leg with this device (repeatable; offset 0)', collect, [])
      .option('--force', 'drop a default leg lost while out of sync, accepting the loss of the regions only it held', false)
      .description('drop or replace failed legs (lvconvert --repair)'),
  ).action(async (name: string, flags: ControlFlags & { spare: string[]; force: boolean }) => {
    await runControl(flags, async (c) => {
      const body = { ...(flags.spare.length > 0 ? { spares: flags.spare } : {}), ...(flags.force ? { force: true } : {}) };
      const r = await c.post<RepairResult & { name: string }>(volumePath(requireName(name, 'repair'), 'repair'), body);
      const text = r.repaired
        ? `${name}: removed ${(r.removed ?? []).join(' ') || '-'}; added ${(r.added ?? []).join(' ') || '-'}; ${r.heldWritesReissued ?? 0} held writes completed\n${name}: table now: ${r.table}\n`
        : `${name}: ${r.reason}\n`;
      return [r, text];
    });
  });
}
