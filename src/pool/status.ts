// Copy% and health of pool volumes for `list`: from the running server's control socket when it serves the
// volume (same name, same legs), else read directly from the volume's disk log (clean bits and leg records,
// as DiskLog.resume would turn them into sync state at the next activation). Never writes.
import { FileLeg } from '../mirror/legs/file.js';
import { Bitmap } from '../mirror/log/bitmap.js';
import {
  DISK_LOG_BITMAP_OFFSET_BYTES,
  DISK_LOG_LEGS_MAGIC,
  DISK_LOG_MAGIC,
  DISK_LOG_VERSION,
  diskLogAreaBytes,
  diskLogHeaderLayout,
  fnv1a32,
  type DiskLogHeader,
} from '../mirror/log/disk.js';
import { parseTable, type TableSpec } from '../mirror/table.js';
import type { ControlClient } from '../control/client.js';
import { volumeTableSpec } from './tables.js';
import { PoolError } from './errors.js';
import { ControlError } from '../control/control-error.js';
import type { PoolMetadata, PoolVolume } from './metadata.js';

export interface VolumeState {
  /** Percent of regions in sync, or null when unknown (core log, not served). */
  readonly copyPercent: number | null;
  /** Health chars per leg (A alive ...) when served, else '-'. */
  readonly health: string;
  readonly source: 'server' | 'disk-log' | 'none';
}

/** What the disk log says, offline. */
export async function diskLogState(md: PoolMetadata, paths: ReadonlyMap<string, string>, v: PoolVolume): Promise<VolumeState> {
  const spec = volumeTableSpec(md, paths, v);
  if (spec.kind === 'linear') return { copyPercent: 100, health: '-', source: 'none' };
  if (spec.log.kind !== 'disk') return { copyPercent: v.nosync ? 100 : null, health: '-', source: 'none' };
  const regions = Math.ceil(v.sizeBytes / v.regionSizeBytes);
  const area = Buffer.alloc(diskLogAreaBytes(regions));
  const leg = await FileLeg.open(spec.log.device!, { offsetBytes: 0, readOnly: true });
  try {
    await leg.read(area, 0);
  } finally {
    await leg.close();
  }
  const h: DiskLogHeader = diskLogHeaderLayout.decode(area, 0);
  if (h.magic !== DISK_LOG_MAGIC || h.version !== DISK_LOG_VERSION) {
    // Never activated: a new log starts all out of sync unless nosync.
    return { copyPercent: v.nosync ? 100 : 0, health: '-', source: 'disk-log' };
  }
  if (h.legsMagic === DISK_LOG_LEGS_MAGIC) {
    const records = h.legs.slice(0, h.legCount);
    const stale = spec.legs.some((l) => !records.some((r) => r.nameHash === fnv1a32(l.device) && (r.flags & 1) !== 0));
    if (stale) return { copyPercent: 0, health: '-', source: 'disk-log' };
  }
  const clean = new Bitmap(regions);
  clean.load(area.subarray(DISK_LOG_BITMAP_OFFSET_BYTES));
  let inSync = 0;
  for (let r = 0; r < Math.min(regions, h.nrRegions); r++) if (clean.get(r)) inSync++;
  return { copyPercent: (100 * inSync) / regions, health: '-', source: 'disk-log' };
}

function sameLegs(a: TableSpec, b: TableSpec): boolean {
  const legs = (s: TableSpec): string[] => (s.kind === 'linear' ? [s.leg.device + ':' + s.leg.offsetSectors] : s.legs.map((l) => l.device + ':' + l.offsetSectors));
  return JSON.stringify(legs(a)) === JSON.stringify(legs(b));
}

/**
 * The table a running server serves under `name`, or null when it has no such volume or nothing listens on
 * the socket. A server that does not answer may be serving it (an offline copy under a live server would
 * lose writes): that is an error, not a null.
 */
export async function servedTableOf(client: ControlClient, name: string): Promise<string | null> {
  try {
    return (await client.get<{ table: string }>(`/v1/volumes/${encodeURIComponent(name)}/table`)).table;
  } catch (e) {
    if (e instanceof ControlError && e.code === 'ENOENT') return null;
    // Nothing listens on the socket (no file, or nobody accepting): no server, so nothing is served there.
    if (e instanceof ControlError && /cannot reach the control socket .*connect (ENOENT|ECONNREFUSED)/.test(e.message)) return null;
    throw new PoolError('EIO', `cannot tell whether ${name} is served (control socket ${client.describe()}): ${e instanceof Error ? e.message : String(e)}`);
  }
}

/** Whether `table` is `v` as the metadata describes it (same legs, same size). */
export function tableIsVolume(table: string, md: PoolMetadata, paths: ReadonlyMap<string, string>, v: PoolVolume): boolean {
  try {
    const served = parseTable(table);
    const want = volumeTableSpec(md, paths, v);
    return sameLegs(served, want) && served.lengthSectors === want.lengthSectors;
  } catch {
    return false;
  }
}

/**
 * Whether a running server serves `v` as the metadata describes it, from its table alone (decides online
 * vs offline; status is not needed). Unknown volume or no server: false.
 */
export async function servesVolume(client: ControlClient, md: PoolMetadata, paths: ReadonlyMap<string, string>, v: PoolVolume): Promise<boolean> {
  const table = await servedTableOf(client, v.name);
  return table !== null && tableIsVolume(table, md, paths, v);
}

/** What a running server says about `v`, or null when it does not serve it (or serves other legs or another size under its name). */
export async function serverState(client: ControlClient, md: PoolMetadata, paths: ReadonlyMap<string, string>, v: PoolVolume): Promise<VolumeState | null> {
  let table: { table: string };
  let status: { status: string };
  try {
    table = await client.get<{ table: string }>(`/v1/volumes/${encodeURIComponent(v.name)}/table`);
    status = await client.get<{ status: string }>(`/v1/volumes/${encodeURIComponent(v.name)}/status`);
  } catch {
    return null;
  }
  let served: TableSpec;
  try {
    served = parseTable(table.table);
  } catch {
    return null;
  }
  const want = volumeTableSpec(md, paths, v);
  if (!sameLegs(served, want) || served.lengthSectors !== want.lengthSectors) return null;
  if (served.kind === 'linear') return { copyPercent: 100, health: 'A', source: 'server' };
  // <start> <len> mirror <#legs> <legs...> <in_sync>/<nr> 1 <health> ...
  const t = status.status.trim().split(/\s+/);
  const n = Number(t[3]);
  const ratio = /^([0-9]+)\/([0-9]+)$/.exec(t[4 + n] ?? '');
  if (ratio === null) return null;
  return { copyPercent: (100 * Number(ratio[1])) / Number(ratio[2]), health: t[6 + n] ?? '?', source: 'server' };
}
