// `nbd-mirror create VOL --pool P --size 10G [--mirrors 1] [--region-size 512K] [--log disk|core] [--nosync]`:
// a volume in a pool (lvcreate). Legs on distinct devices, the disk log on yet another; refused with the
// reason when the pool cannot place them. Prints the table it will be served with.
import { Option, type Command } from 'commander';
import { addDevicesOption, addJsonOption, runPool, type PoolFlags } from '../../../pool/cli.js';
import { PoolError } from '../../../pool/errors.js';
import { formatSize, parseSize } from '../../../pool/locate.js';
import { volumeCreate } from '../../../pool/service.js';

interface CreateFlags extends PoolFlags {
  control?: string;
  pool?: string;
  size: string;
  mirrors: string;
  regionSize?: string;
  log: 'disk' | 'core';
  nosync: boolean;
}

export function registerCreate(program: Command): void {
  addJsonOption(addDevicesOption(program.command('create')))
    .argument('<volume>', 'volume name, or POOL/VOLUME')
    .option('--pool <name>', 'the pool')
    .requiredOption('--size <size>', 'size (10G, 512M; no unit = MiB; rounded up to whole extents)')
    .option('--mirrors <n>', 'legs beyond the first (0 = linear)', '1')
    .option('--region-size <size>', 'mirror region size (default 512K)')
    .addOption(new Option('--log <kind>', 'dirty log: disk (survives restarts) or core').choices(['disk', 'core']).default('disk'))
    .option('--nosync', 'skip the initial resync (the legs are known to be equal, e.g. zeroed)', false)
    .option('--control <path>', 'control socket of a running server (to settle an interrupted online change)')
    .description('create a volume in a pool (lvcreate)')
    .action(async (ref: string, flags: CreateFlags) => {
      await runPool(flags, async () => {
        if (!/^[0-9]+$/.test(flags.mirrors)) throw new PoolError('EINVAL', `--mirrors ${flags.mirrors}: expected a number`);
        const out = await volumeCreate(
          ref,
          flags.pool,
          {
            sizeBytes: parseSize(flags.size, '--size'),
            mirrors: Number(flags.mirrors),
            log: flags.log,
            nosync: flags.nosync,
            ...(flags.regionSize !== undefined ? { regionSizeBytes: parseSize(flags.regionSize, '--region-size') } : {}),
          },
          flags,
        );
        const v = out.volume;
        return [
          { volume: v, pool: out.md.name, table: out.table },
          `Volume ${out.md.name}/${v.name} created: ${formatSize(v.sizeBytes)}, ${v.legs.length === 1 ? 'linear' : `${v.legs.length} legs, ${v.logRun ? 'disk' : 'core'} log`}\n  table: ${out.table}\n`,
        ];
      });
    });
}
