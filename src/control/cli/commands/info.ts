// `nbd-mirror info [NAME]`: dmsetup info's long format (Name, State, Tables present, Open count, Event
// number, ...), one block per volume.
import type { Command } from 'commander';
import { formatInfo } from '../../format.js';
import type { VolumeInfo } from '../../volumes.js';
import { addControlOptions, runControl, type ControlFlags } from '../control-command.js';
import { perVolume } from './status.js';

export function registerInfo(program: Command): void {
  addControlOptions(program.command('info').argument('[name]', 'volume name (default: all)').description('dmsetup info of one or all volumes')).action(
    async (name: string | undefined, flags: ControlFlags) => {
      await runControl(flags, async (c) => {
        const rows = await perVolume(c, name, 'info', (r: VolumeInfo) => formatInfo(r));
        const text = rows.length === 0 ? 'No devices found\n' : rows.map((r) => r.text).join('');
        return [name === undefined ? { volumes: rows.map((r) => r.json) } : rows[0]!.json, text];
      });
    },
  );
}
