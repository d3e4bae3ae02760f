// `nbd-mirror list [POOL]`: volumes of the pools found on the devices (lvs): name, pool, size, Copy%,
// health, log, clustered. Copy% and health come from the running server's control socket when it serves
// the volume, else Copy% from the disk log read directly (health '-').
import type { Command } from 'commander';
import { addDevicesOption, addJsonOption, columns, runPool, type PoolFlags } from '../../../pool/cli.js';
import { formatSize } from '../../../pool/locate.js';
import { volumeList } from '../../../pool/service.js';

export function registerList(program: Command): void {
  addJsonOption(addDevicesOption(program.command('list')))
    .argument('[pool]', 'only this pool')
    .option('--control <path>', 'control socket of a running server (default: the only one running)')
    .description('volumes in pools (lvs)')
    .action(async (pool: string | undefined, flags: PoolFlags & { control?: string }) => {
      await runPool(flags, async () => {
        const rows = await volumeList(pool, flags);
        const text =
          rows.length === 0
            ? 'No volumes found\n'
            : columns(
                ['Volume', 'Pool', 'Size', 'Legs', 'Copy%', 'Health', 'Log', 'Clustered'],
                rows.map((r) => [
                  r.name,
                  r.pool,
                  formatSize(r.sizeBytes),
                  String(r.legs),
                  r.error ? `[${r.error}]` : r.copyPercent === null ? '' : r.copyPercent.toFixed(2),
                  r.health,
                  r.log,
                  r.clustered ? 'yes' : 'no',
                ]),
              );
        return [{ volumes: rows }, text];
      });
    });
}
