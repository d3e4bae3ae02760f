// `nbd-mirror suspend [--noflush] NAME`: dmsetup suspend. New requests wait until resume. Without
// --noflush, held writes fail with EIO and in-flight requests finish first; with --noflush, held writes
// stay held for a reload to complete them.
import type { Command } from 'commander';
import { addControlOptions, requireName, runControl, volumePath, type ControlFlags } from '../control-command.js';

export function registerSuspend(program: Command): void {
  addControlOptions(
    program
      .command('suspend')
      .argument('<name>', 'volume name')
      .option('--noflush', 'keep held writes held (for suspend --noflush / reload / resume)', false)
      .description('suspend a volume: requests wait until resume (dmsetup suspend)'),
  ).action(async (name: string, flags: ControlFlags & { noflush: boolean }) => {
    await runControl(flags, async (c) => {
      const r = await c.post<{ name: string; state: string }>(volumePath(requireName(name, 'suspend'), 'suspend'), { noflush: flags.noflush });
      return [r, ''];
    });
  });
}
