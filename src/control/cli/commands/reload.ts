// `nbd-mirror reload NAME '<table>'`: dmsetup reload (load an inactive table; it goes live on resume).
// The table may also be given as several words. Refused with nothing changed: a table that does not
// parse, a different length, or a device that cannot be opened.
import type { Command } from 'commander';
import { UsageError } from '../../usage-error.js';
import { addControlOptions, requireName, runControl, volumePath, type ControlFlags } from '../control-command.js';

export function registerReload(program: Command): void {
  addControlOptions(
    program
      .command('reload')
      .argument('<name>', 'volume name')
      .argument('<table...>', "the new table line, e.g. '0 2048 mirror core 1 1024 2 /a 0 /b 0'")
      .description('load an inactive table; it takes effect on resume (dmsetup reload)'),
  ).action(async (name: string, table: string[], flags: ControlFlags) => {
    await runControl(flags, async (c) => {
      const line = table.join(' ').trim();
      if (line.length === 0) throw new UsageError('reload: empty table');
      const r = await c.post<{ name: string; table: string }>(volumePath(requireName(name, 'reload'), 'reload'), { table: line });
      return [r, ''];
    });
  });
}
