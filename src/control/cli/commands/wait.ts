// `nbd-mirror wait NAME [event_nr] [--timeout SECONDS]`: dmsetup wait: sleep until the volume's event
// counter exceeds event_nr (default: its current value); prints the new `Event number`.
import type { Command } from 'commander';
import { UsageError } from '../../usage-error.js';
import { waitForSync } from '../../progress.js';
import { addControlOptions, requireName, runControl, volumePath, type ControlFlags } from '../control-command.js';

export function registerWait(program: Command): void {
  addControlOptions(
    program
      .command('wait')
      .argument('<name>', 'volume name')
      .argument('[event_nr]', 'wait until the event counter exceeds this (default: its current value)')
      .option('--timeout <seconds>', 'give up (exit 1) after this many seconds')
      .option('--sync', 'wait until every region is in sync, with a progress bar (plain lines when stderr is not a terminal)')
      .description('wait for a volume event (dmsetup wait)'),
  ).action(async (name: string, eventNr: string | undefined, flags: ControlFlags & { timeout?: string; sync?: boolean }) => {
    await runControl(flags, async (c) => {
      if (flags.sync) return waitSync(c, requireName(name, 'wait'), eventNr, flags);
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

async function waitSync(c: Parameters<Parameters<typeof runControl>[1]>[0], name: string, eventNr: string | undefined, flags: ControlFlags & { timeout?: string }): Promise<[unknown, string]> {
  if (eventNr !== undefined) throw new UsageError('wait --sync takes no event_nr');
  const s = flags.timeout === undefined ? undefined : Number(flags.timeout);
  if (s !== undefined && !(Number.isFinite(s) && s >= 0)) throw new UsageError(`wait: --timeout must be a number of seconds, not "${flags.timeout}"`);
  const r = await waitForSync(c, (op) => volumePath(name, op), { name, quiet: flags.json, ...(s !== undefined ? { timeoutMs: Math.round(s * 1000) } : {}) });
  return [r, r.mirror ? `${name}: in sync (${r.inSyncRegions}/${r.regionCount} regions)\n` : `${name}: not a mirror, nothing to sync\n`];
}
