// `nbd-mirror resume NAME`: dmsetup resume. Swaps in the inactive table if one was loaded (held writes
// are re-issued on it), then releases the requests that waited.
import type { Command } from 'commander';
import { addControlOptions, requireName, runControl, volumePath, type ControlFlags } from '../control-command.js';

export function registerResume(program: Command): void {
  addControlOptions(
    program.command('resume').argument('<name>', 'volume name').description('resume a volume, swapping in a reloaded table (dmsetup resume)'),
  ).action(async (name: string, flags: ControlFlags) => {
    await runControl(flags, async (c) => {
      const r = await c.post<{ name: string; state: string; swapped: boolean; heldWritesReissued: number }>(volumePath(requireName(name, 'resume'), 'resume'));
      return [r, ''];
    });
  });
}
