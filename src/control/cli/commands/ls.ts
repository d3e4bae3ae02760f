// `nbd-mirror ls`: the served volumes, as `dmsetup ls` (`<name>\t(<target>)`).
import type { Command } from 'commander';
import { formatLs, type LsEntry } from '../../format.js';
import { addControlOptions, runControl, type ControlFlags } from '../control-command.js';

export function registerLs(program: Command): void {
  addControlOptions(program.command('ls').description('list the volumes a running server serves (dmsetup ls)')).action(
    async (flags: ControlFlags) => {
      await runControl(flags, async (c) => {
        const r = await c.get<{ volumes: LsEntry[] }>('/v1/volumes');
        return [r, formatLs(r.volumes)];
      });
    },
  );
}
