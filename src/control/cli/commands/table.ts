// `nbd-mirror table [NAME] [--inactive]`: dmsetup table lines; without NAME every volume as `<name>: <line>`.
import type { Command } from 'commander';
import { formatPerVolume } from '../../format.js';
import { addControlOptions, runControl, type ControlFlags } from '../control-command.js';
import { perVolume } from './status.js';
import { isPoolTableRequest, poolTableAction } from './pool.js';

export function registerTable(program: Command): void {
  addControlOptions(
    program
      .command('table')
      .argument('[name]', 'volume name (default: all)')
      .option('--inactive', 'the loaded but not yet resumed table (dmsetup table --inactive)', false)
      .option('--pool <name>', 'the generated table of a pool volume (also: table POOL/VOLUME), read from the devices')
      .option('--devices <dev...>', "with --pool: the pool's devices or directories (default: env NBD_MIRROR_DEVICES)")
      .description('dmsetup table of one or all volumes'),
  ).action(async (name: string | undefined, flags: ControlFlags & { inactive: boolean; pool?: string; devices?: string[] }) => {
    if (isPoolTableRequest(name, flags)) return poolTableAction(name, flags);
    await runControl(flags, async (c) => {
      const op = flags.inactive ? 'table?inactive=1' : 'table';
      const rows = await perVolume(c, name, op, (r: { table: string }) => r.table);
      return [name === undefined ? { volumes: rows.map((r) => r.json) } : rows[0]!.json, formatPerVolume(rows, name !== undefined)];
    });
  });
}
