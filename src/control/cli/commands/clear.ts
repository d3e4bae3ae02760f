// `nbd-mirror clear NAME`: dmsetup clear (drop the inactive table).
import type { Command } from 'commander';
import { addControlOptions, requireName, runControl, volumePath, type ControlFlags } from '../control-command.js';

export function registerClear(program: Command): void {
  addControlOptions(program.command('clear').argument('<name>', 'volume name').description('drop the inactive table (dmsetup clear)')).action(
    async (name: string, flags: ControlFlags) => {
      await runControl(flags, async (c) => {
        const r = await c.post<{ name: string }>(volumePath(requireName(name, 'clear'), 'clear'));
        return [r, ''];
      });
    },
  );
}
