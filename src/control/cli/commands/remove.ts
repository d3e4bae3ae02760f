// `nbd-mirror remove VOL [--pool P]`: delete a volume from its pool (lvremove); refused while a running
// server (found through the control socket) serves it.
import type { Command } from 'commander';
import { addDevicesOption, addJsonOption, runPool, type PoolFlags } from '../../../pool/cli.js';
import { volumeRemove } from '../../../pool/service.js';

export function registerRemove(program: Command): void {
  addJsonOption(addDevicesOption(program.command('remove')))
    .argument('<volume>', 'volume name, or POOL/VOLUME')
    .option('--pool <name>', 'the pool')
    .option('--control <path>', 'control socket of a running server (default: the only one running)')
    .description('remove a volume from its pool (lvremove)')
    .action(async (ref: string, flags: PoolFlags & { pool?: string; control?: string }) => {
      await runPool(flags, async () => {
        const md = await volumeRemove(ref, flags.pool, flags);
        return [md, `Volume ${ref} removed from pool ${md.name}\n`];
      });
    });
}
