// `nbd-mirror resync VOL [--source DEV] [--pool P]`: lvchange --resync. Every region of a stopped mirror
// volume is resynced from one leg at its next start; the way to accept a lost source's regions (the
// refusal names the leg to keep) for a pool volume, whose table the user does not write by hand.
import type { Command } from 'commander';
import { addDevicesOption, addJsonOption, runPool, type PoolFlags } from '../../../pool/cli.js';
import { volumeResync } from '../../../pool/service.js';

export function registerResync(program: Command): void {
  addJsonOption(addDevicesOption(program.command('resync')))
    .argument('<volume>', 'volume name, or POOL/VOLUME')
    .option('--pool <name>', 'the pool')
    .option('--source <dev>', 'the leg every other leg is copied from (default: the first leg)')
    .option('--control <path>', 'control socket of a running server, to refuse a served volume (default: the only one running)')
    .description('resync every region of a stopped mirror volume from one leg at its next start (lvchange --resync); accepts losing what only the other legs held')
    .action(async (ref: string, flags: PoolFlags & { pool?: string; source?: string; control?: string }) => {
      await runPool(flags, async () => {
        const out = await volumeResync(ref, flags.pool, flags.source, flags);
        return [
          { pool: out.md.name, volume: out.volume.name, source: out.source },
          `Volume ${out.md.name}/${out.volume.name}: every region will be resynced from ${out.source} when it is next served\n`,
        ];
      });
    });
}
