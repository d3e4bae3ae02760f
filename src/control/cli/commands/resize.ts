// `nbd-mirror resize VOL --size S [--pool P]`: grow a volume (lvextend). Every leg grows in place; the
// disk log marks the new regions dirty at the next activation, so only the new part is resynced. Online when
// a running server serves the volume (intent, reload of the larger table, suspend --noflush, resume, commit);
// connected NBD clients see the new size when they reconnect.
import type { Command } from 'commander';
import { addDevicesOption, addJsonOption, runPool, type PoolFlags } from '../../../pool/cli.js';
import { formatSize, parseSize } from '../../../pool/locate.js';
import { volumeResize } from '../../../pool/service.js';

export function registerResize(program: Command): void {
  addJsonOption(addDevicesOption(program.command('resize')))
    .argument('<volume>', 'volume name, or POOL/VOLUME')
    .option('--pool <name>', 'the pool')
    .requiredOption('--size <size>', 'new size (grow only)')
    .option('--control <path>', 'control socket of a running server (default: the only one running)')
    .description('grow a volume (lvextend); online through the control socket when served (clients see the new size on reconnect)')
    .action(async (ref: string, flags: PoolFlags & { pool?: string; size: string; control?: string }) => {
      await runPool(flags, async () => {
        const out = await volumeResize(ref, flags.pool, parseSize(flags.size, '--size'), flags);
        return [out, `Volume ${out.md.name}/${out.volume.name} resized from ${formatSize(out.oldSizeBytes)} to ${formatSize(out.volume.sizeBytes)}${out.online ? ' (reloaded online; NBD clients see the new size when they reconnect)' : ''}\n`];
      });
    });
}
