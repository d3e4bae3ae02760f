// `nbd-mirror message NAME [SECTOR] <message...>`: dmsetup message, passed to the volume's target.
// The mirror target understands (see README "Messages"):
//   resync_rate <bytes/s>     resync rate limit; 0 = unlimited
// A leading sector number (dmsetup's `0`) is accepted and ignored: one target per volume.
import type { Command } from 'commander';
import { UsageError } from '../../usage-error.js';
import { addControlOptions, requireName, runControl, volumePath, type ControlFlags } from '../control-command.js';

export function registerMessage(program: Command): void {
  addControlOptions(
    program
      .command('message')
      .argument('<name>', 'volume name')
      .argument('<message...>', 'e.g. resync_rate 104857600')
      .description('send a message to the volume\'s target (dmsetup message)'),
  ).action(async (name: string, words: string[], flags: ControlFlags) => {
    await runControl(flags, async (c) => {
      const argv = /^[0-9]+$/.test(words[0] ?? '') && words.length > 1 ? words.slice(1) : words;
      if (argv.length === 0) throw new UsageError('message: empty message');
      const r = await c.post<{ name: string; answer: string }>(volumePath(requireName(name, 'message'), 'message'), { argv });
      return [r, r.answer.length > 0 ? `${r.answer}\n` : ''];
    });
  });
}
