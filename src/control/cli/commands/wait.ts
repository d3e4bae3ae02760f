// `nbd-mirror wait NAME [event_nr] [--timeout SECONDS]`: dmsetup wait: sleep until the volume's event
// counter exceeds event_nr (default: its current value); prints the new `Event number`.
import type { Command } from 'commander';
import { UsageError } from '../../usage-error.js';
import { addControlOptions, requireName, runControl, volumePath, type ControlFlags } from '../control-command.js';

export function registerWait(program: Command): void {
  addControlOptions(
    program
      .command('wait')
      .argument('<name>', 'volume name')
      .argument('[event_nr]', 'wait until the event counter exceeds this (default: its current value)')
      .option('--timeout <seconds>', 'give up (exit 1) after this many seconds')
      .description('wait for a volume event (dmsetup wait)'),
  ).action(async (name: string, eventNr: string | undefined, flags: ControlFlags & { timeout?: string }) => {
    await runControl(flags, async (c) => {
      const q = new URLSearchParams();
      if (eventNr !== undefined) {
        if (!/^[0-9]+$/.test(eventNr)) throw new UsageError(`wait: event_nr must be a non-negative integer, not "${eventNr}"`);
        q.set('event_nr', eventNr);
      }
      if (flags.timeout !== undefined) {
        const s = Number(flags.timeout);
        if (!/^[0-9]+(\.[0-9]+)?$/.test(flags.timeout) || !Number.isFinite(s)) throw new UsageError(`wait: --timeout must be a number of seconds, not "${flags.timeout}"`);
        q.set('timeout_ms', String(Math.round(s * 1000)));
      }
      const qs = q.toString();
      const r = await c.get<{ name: string; eventNr: number }>(volumePath(requireName(name, 'wait'), `wait${qs ? `?${qs}` : ''}`));
      return [r, `Event number:      ${r.eventNr}\n`];
    });
  });
}
