// Where pools are looked for (there is no config database): the devices named by `--devices DEV|DIR...`,
// else by the environment variable NBD_MIRROR_DEVICES (whitespace- or comma-separated). Each entry is a
// device (file, block device, NBD URI) or a directory whose files and block devices are all scanned (one
// level), so `NBD_MIRROR_DEVICES=/srv/pool` finds every pool whose devices live there. Also: size parsing
// with LVM's units and `pool/vol` references.
import { PoolError } from './errors.js';
import { assemblePools, expandDevicePaths, findPool, scanAll, type DeviceScan, type LoadedPool } from './store.js';

export const DEVICES_ENV = 'NBD_MIRROR_DEVICES';

export interface LocateFlags {
  devices?: string[];
}

export function deviceEntries(flags: LocateFlags): { entries: string[]; where: string } {
  if (flags.devices !== undefined && flags.devices.length > 0) return { entries: flags.devices, where: `--devices ${flags.devices.join(' ')}` };
  const env = process.env[DEVICES_ENV];
  if (env !== undefined && env.trim().length > 0) {
    return { entries: env.split(/[\s,]+/).filter((s) => s.length > 0), where: `${DEVICES_ENV}=${env}` };
  }
  return { entries: [], where: '' };
}

export interface Located {
  readonly scans: DeviceScan[];
  readonly pools: LoadedPool[];
  readonly where: string;
}

/** Scan every device we were told about. `required`: refuse when none were given. */
export async function locate(flags: LocateFlags, required = true): Promise<Located> {
  const { entries, where } = deviceEntries(flags);
  if (entries.length === 0 && required) {
    throw new PoolError('EINVAL', `where are the pool's devices? give --devices DEV|DIR... or set ${DEVICES_ENV}`);
  }
  const scans = await scanAll(await expandDevicePaths(entries));
  return { scans, pools: assemblePools(scans), where };
}

export async function locatePool(flags: LocateFlags, name: string): Promise<Located & { pool: LoadedPool }> {
  const l = await locate(flags);
  return { ...l, pool: findPool(l.pools, name, l.where) };
}

/** `VOL` with --pool P, or `P/VOL`. */
export function volumeRef(ref: string, pool: string | undefined): { pool: string; volume: string } {
  const slash = ref.indexOf('/');
  if (slash >= 0) {
    const p = ref.slice(0, slash);
    const v = ref.slice(slash + 1);
    if (pool !== undefined && pool !== p) throw new PoolError('EINVAL', `${ref} names pool ${p} but --pool is ${pool}`);
    if (p.length === 0 || v.length === 0) throw new PoolError('EINVAL', `${ref}: expected POOL/VOLUME`);
    return { pool: p, volume: v };
  }
  if (pool === undefined) throw new PoolError('EINVAL', `${ref}: which pool? give --pool P or write P/${ref}`);
  return { pool, volume: ref };
}

const UNITS: Record<string, number> = { '': 1024 * 1024, b: 1, s: 512, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4, p: 1024 ** 5 };

/**
 * LVM-style size: a number with an optional unit b, s (sectors), k, m, g, t, p (binary, case-insensitive,
 * optional trailing "iB"/"B"); without a unit, MiB as lvcreate does.
 */
export function parseSize(text: string, what: string): number {
  const m = /^([0-9]+(?:\.[0-9]+)?)\s*([bskmgtp]?)(?:i?b)?$/i.exec(text.trim());
  if (m === null) throw new PoolError('EINVAL', `${what} ${text}: expected a size such as 512K, 10G, 4M`);
  const bytes = Math.round(Number(m[1]) * UNITS[m[2]!.toLowerCase()]!);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new PoolError('EINVAL', `${what} ${text}: out of range`);
  return bytes;
}

export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(2)}${units[i]}`;
}
