// `nbd-mirror convert VOL --mirrors N [--pool P] [--log disk|core]`: change the number of legs (lvconvert -m):
// linear -> mirror, more legs, fewer legs, down to linear. New legs are stale (never a resync source) and
// get resynced. When a running server serves the volume the change is online: the metadata gets an intent
// (pending change, new seqno), the server reloads the new table (suspend --noflush, resume), then the change
// is committed; a command killed in between is settled by the next one (src/pool/service.ts).
import { Option, type Command } from 'commander';
import { addDevicesOption, addJsonOption, runPool, type PoolFlags } from '../../../pool/cli.js';
import { PoolError } from '../../../pool/errors.js';
import { volumeConvert } from '../../../pool/service.js';

export function registerConvert(program: Command): void {
  addJsonOption(addDevicesOption(program.command('convert')))
    .argument('<volume>', 'volume name, or POOL/VOLUME')
    .option('--pool <name>', 'the pool')
    .requiredOption('--mirrors <n>', 'legs beyond the first (0 = linear)')
    .addOption(new Option('--log <kind>', 'log of a volume becoming a mirror').choices(['disk', 'core']))
    .option('--control <path>', 'control socket of a running server (default: the only one running)')
    .description('change the number of mirror legs (lvconvert -m); online through the control socket when served')
    .action(async (ref: string, flags: PoolFlags & { pool?: string; mirrors: string; log?: 'disk' | 'core'; control?: string }) => {
      await runPool(flags, async () => {
        if (!/^[0-9]+$/.test(flags.mirrors)) throw new PoolError('EINVAL', `--mirrors ${flags.mirrors}: expected a number`);
        const out = await volumeConvert(ref, flags.pool, Number(flags.mirrors), flags.log !== undefined ? { log: flags.log } : {}, flags);
        return [{ volume: out.volume, pool: out.md.name, table: out.table }, `Volume ${out.md.name}/${out.volume.name} now has ${out.volume.legs.length} leg(s)${out.online ? ' (reloaded online)' : ''}\n  table: ${out.table}\n`];
      });
    });
}
