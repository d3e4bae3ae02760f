// `nbd-mirror pool create|extend|reduce|list|show|scan|change`: pools of devices (LVM's volume groups) whose
// metadata lives on the devices themselves (src/pool). Pools are found through --devices DEV|DIR... or the
// env NBD_MIRROR_DEVICES; `pool create` also looks there to refuse a pool name already in use.
import type { Command } from 'commander';
import { addDevicesOption, addJsonOption, columns, runPool, type PoolFlags } from '../../../pool/cli.js';
import { PoolError } from '../../../pool/errors.js';
import { formatSize, parseSize } from '../../../pool/locate.js';
import { poolChange, poolCreate, poolExtend, poolList, poolMove, poolReduce, poolShow, scanReport, volumeTableLine, type PoolSummary } from '../../../pool/service.js';
import type { PoolMetadata } from '../../../pool/metadata.js';

function yesNo(text: string, what: string): boolean {
  if (/^(y|yes|1|true)$/i.test(text)) return true;
  if (/^(n|no|0|false)$/i.test(text)) return false;
  throw new PoolError('EINVAL', `${what} ${text}: expected y or n`);
}

function attr(s: Pick<PoolSummary, 'clustered' | 'devices'>): string {
  return `wz--${s.devices.some((d) => d.missing) ? 'p' : '-'}${s.clustered ? 'c' : '-'}`;
}

function poolRows(pools: readonly PoolSummary[]): string {
  if (pools.length === 0) return 'No pools found\n';
  return columns(
    ['Pool', '#Dev', '#Vol', 'Attr', 'Size', 'Free', 'Seq'],
    pools.map((p) => [p.name, String(p.devices.length), String(p.volumes.length), attr(p), formatSize(p.sizeBytes), formatSize(p.freeBytes), String(p.seqno)]),
  );
}

function showText(s: PoolSummary & { metadata: PoolMetadata }): string {
  const lines = [
    `Pool        ${s.name}`,
    `UUID        ${s.uuid}`,
    `Seqno       ${s.seqno}`,
    `Clustered   ${s.clustered ? 'yes' : 'no'}`,
    `Extent size ${formatSize(s.extentSizeBytes)}`,
    `Size        ${formatSize(s.sizeBytes)} (${formatSize(s.freeBytes)} free)`,
    '',
  ].join('\n');
  const devs = columns(
    ['Device', 'UUID', 'Size', 'Extents', 'Free'],
    s.devices.map((d) => [d.path ?? `[missing, was ${s.metadata.devices.find((x) => x.uuid === d.uuid)?.path}]`, d.uuid, formatSize(d.sizeBytes), String(d.extents), String(d.freeExtents)]),
  );
  const pathOf = (uuid: string): string => s.devices.find((d) => d.uuid === uuid)?.path ?? uuid;
  const vols =
    s.metadata.volumes.length === 0
      ? 'No volumes\n'
      : columns(
          ['Volume', 'Size', 'Legs (device:extents)', 'Log'],
          s.metadata.volumes.map((v) => [
            v.name,
            formatSize(v.sizeBytes),
            v.legs.map((l) => `${pathOf(l.device)}:${l.startExtent}-${l.startExtent + l.extentCount - 1}`).join(' '),
            v.legs.length === 1 ? '-' : v.logRun ? `disk ${pathOf(v.logRun.device)}:${v.logRun.startExtent}` : 'core',
          ]),
        );
  const orphans = s.orphans.length > 0 ? `Orphaned labels (not in the metadata): ${s.orphans.join(' ')}\n` : '';
  const p = s.metadata.pending;
  const pending = p !== undefined ? `Pending online change of ${p.volume.name} (${p.volume.legs.length} leg(s)): settled by the next change\n` : '';
  return `${lines}\n${devs}\n${vols}${orphans}${pending}`;
}

export function registerPool(program: Command): void {
  const pool = program.command('pool').description('pools of devices holding volumes (like LVM volume groups); metadata on the devices');

  addJsonOption(addDevicesOption(pool.command('create')))
    .argument('<name>', 'pool name')
    .argument('<dev...>', 'devices (files, block devices)')
    .option('--clustered', 'every volume gets the cluster log', false)
    .option('--extent-size <size>', 'allocation unit (power of two, default 4M)')
    .description('create a pool on DEVs (refused if a device already belongs to a pool, is too small, or the name is in use)')
    .action(async (name: string, devs: string[], flags: PoolFlags & { clustered: boolean; extentSize?: string }) => {
      await runPool(flags, async () => {
        const md = await poolCreate(
          { name, devices: devs, clustered: flags.clustered, ...(flags.extentSize !== undefined ? { extentSizeBytes: parseSize(flags.extentSize, '--extent-size') } : {}) },
          flags,
        );
        return [md, `Pool ${name} created on ${devs.length} device(s) (uuid ${md.uuid}, extent size ${formatSize(md.extentSizeBytes)}${md.clustered ? ', clustered' : ''})\n`];
      });
    });

  addJsonOption(addDevicesOption(pool.command('extend')))
    .option('--control <path>', 'control socket of a running server (to settle an interrupted online change)')
    .argument('<name>', 'pool name')
    .argument('<dev...>', 'devices to add')
    .description('add devices to a pool')
    .action(async (name: string, devs: string[], flags: PoolFlags & { control?: string }) => {
      await runPool(flags, async () => {
        const md = await poolExtend(name, devs, flags);
        return [md, `Pool ${name} extended by ${devs.join(' ')} (${md.devices.length} devices, seqno ${md.seqno})\n`];
      });
    });

  addJsonOption(addDevicesOption(pool.command('reduce')))
    .option('--control <path>', 'control socket of a running server (to settle an interrupted online change)')
    .argument('<name>', 'pool name')
    .argument('<dev>', 'device to remove (refused while it holds extents)')
    .description('remove an unused device from a pool')
    .action(async (name: string, dev: string, flags: PoolFlags & { control?: string }) => {
      await runPool(flags, async () => {
        const md = await poolReduce(name, dev, flags);
        return [md, `Removed ${dev} from pool ${name} (${md.devices.length} devices left)\n`];
      });
    });

  addJsonOption(addDevicesOption(pool.command('move')))
    .argument('<name>', 'pool name')
    .argument('<dev>', 'device to empty')
    .option('--to <dev>', 'only onto this device')
    .option('--control <path>', 'control socket of a running server (its volumes move online)')
    .description('move every extent off a device (pvmove): served volumes online through a temporary mirror leg, others by copying; finishes a move left in progress')
    .action(async (name: string, dev: string, flags: PoolFlags & { to?: string; control?: string }) => {
      await runPool(flags, async () => {
        const out = await poolMove(name, dev, flags.to, flags);
        const vols = [...new Set(out.moves.map((m) => m.volume))];
        return [out, `Moved ${out.moves.length} run(s) off ${dev}: ${vols.map((v) => `${v}${out.online.includes(v) ? ' (online)' : ''}`).join(', ')}${out.bytes > 0 ? `; ${formatSize(out.bytes)} copied offline` : ''}\n`];
      });
    });

  addJsonOption(addDevicesOption(pool.command('list')))
    .description('pools found on the devices (vgs)')
    .action(async (flags: PoolFlags) => {
      await runPool(flags, async () => {
        const pools = await poolList(flags);
        return [{ pools }, poolRows(pools)];
      });
    });

  addJsonOption(addDevicesOption(pool.command('show')))
    .argument('<name>', 'pool name')
    .description('a pool in detail: devices, extents, volumes (vgdisplay)')
    .action(async (name: string, flags: PoolFlags) => {
      await runPool(flags, async () => {
        const s = await poolShow(name, flags);
        return [s, showText(s)];
      });
    });

  addJsonOption(pool.command('scan'))
    .argument('<dev...>', 'devices or directories')
    .description('read the labels of DEVs: which pool each belongs to (pvscan)')
    .action(async (devs: string[], flags: { json: boolean }) => {
      await runPool(flags, async () => {
        const rows = await scanReport(devs);
        return [
          { devices: rows },
          columns(
            ['Device', 'Size', 'Pool', 'Seq'],
            rows.map((r) => [r.path, formatSize(r.sizeBytes), r.error ? `[error: ${r.error}]` : (r.pool ?? (r.poolUuid ? `[orphan of ${r.poolUuid}]` : '-')), r.seqno === null ? '-' : String(r.seqno)]),
          ),
        ];
      });
    });

  addJsonOption(addDevicesOption(pool.command('change')))
    .argument('<name>', 'pool name')
    .requiredOption('--clustered <y|n>', 'switch the cluster log on or off for every volume (keeps the disk logs and their sync state)')
    .option('--control <path>', 'control socket of a running server (to refuse changing volumes it serves)')
    .description('change pool attributes (vgchange)')
    .action(async (name: string, flags: PoolFlags & { clustered: string; control?: string }) => {
      await runPool(flags, async () => {
        const md = await poolChange(name, { clustered: yesNo(flags.clustered, '--clustered') }, flags);
        return [md, `Pool ${name} is now ${md.clustered ? '' : 'not '}clustered (seqno ${md.seqno})\n`];
      });
    });
}


/**
 * `serve --pool P [--devices DEV|DIR...]`: serve every volume of pool P under its own name. Adds the options
 * to the existing serve command and, before its action runs, turns the pool into --table/--name pairs, so
 * the pool goes through the very same serve path as hand-written tables. Call after registerServe.
 */
/** `table VOL --pool P` / `table P/VOL`: the generated table of a pool volume (used by commands/table.ts). */
export function isPoolTableRequest(name: string | undefined, flags: { pool?: string }): boolean {
  return flags.pool !== undefined || (name !== undefined && name.includes('/'));
}

export async function poolTableAction(name: string | undefined, flags: { pool?: string; devices?: string[]; json: boolean }): Promise<void> {
  await runPool(flags, async () => {
    if (name === undefined) throw new PoolError('EINVAL', 'table --pool: give the VOLUME');
    const t = await volumeTableLine(name, flags.pool, flags);
    return [t, `${t.table}\n`];
  });
}
