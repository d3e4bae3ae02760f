// Pool and volume operations as pure functions: current metadata (+ facts about devices) in, next metadata
// out with seqno + 1, or a PoolError naming why not. Nothing here touches a device, so a refused operation
// has written nothing by construction; the caller commits the result (store.ts).
//
// Allocation policy (like lvcreate's "normal" policy, simplified): every leg is one contiguous run on its own
// device; legs go to the devices with the most free extents; within a device the smallest free run that fits
// (best fit). The disk log takes the smallest run that fits on a device holding none of the volume's legs,
// and never on an NBD device (the log is opened as a slice of a file or block device).
import { randomUUID } from 'node:crypto';
import { diskLogAreaBytes } from '../mirror/log/disk.js';
import { METADATA_AREA_BYTES } from './format.js';
import { PoolError } from './errors.js';
import {
  checkMetadata,
  extentsFor,
  freeRuns,
  METADATA_FORMAT,
  METADATA_VERSION,
  NAME_PATTERN,
  usedExtents,
  type ExtentRun,
  type LogKind,
  type PoolDevice,
  type PoolMetadata,
  type PoolVolume,
} from './metadata.js';

export const EXTENT_SIZE_BYTES_DEFAULT = 4 * 1024 * 1024;
export const REGION_SIZE_BYTES_DEFAULT = 512 * 1024;
/** LVM allows up to 8 images per mirror (dm: 9). */
export const MIRRORS_MAX = 7;

export interface NewDevice {
  readonly path: string;
  readonly sizeBytes: number;
}

function checkName(name: string, what: string): void {
  if (!NAME_PATTERN.test(name)) {
    throw new PoolError('EINVAL', `${what} "${name}": use 1-128 characters from A-Z a-z 0-9 + _ . - (not starting with -)`);
  }
}

function deviceEntries(extentSizeBytes: number, devices: readonly NewDevice[]): PoolDevice[] {
  return devices.map((d) => {
    const extentCount = Math.floor((d.sizeBytes - METADATA_AREA_BYTES) / extentSizeBytes);
    if (d.sizeBytes < METADATA_AREA_BYTES + extentSizeBytes) {
      throw new PoolError(
        'ENOSPC',
        `device ${d.path} is too small: ${d.sizeBytes} bytes, a pool device needs at least ${METADATA_AREA_BYTES + extentSizeBytes} ` +
          `(${METADATA_AREA_BYTES} bytes of metadata + one ${extentSizeBytes}-byte extent)`,
      );
    }
    return { uuid: randomUUID(), path: d.path, sizeBytes: d.sizeBytes, extentCount };
  });
}

export function createPool(opts: { name: string; extentSizeBytes?: number; clustered?: boolean; devices: readonly NewDevice[] }): PoolMetadata {
  checkName(opts.name, 'pool name');
  const extentSizeBytes = opts.extentSizeBytes ?? EXTENT_SIZE_BYTES_DEFAULT;
  if (!Number.isSafeInteger(extentSizeBytes) || extentSizeBytes < 65536 || (extentSizeBytes & (extentSizeBytes - 1)) !== 0) {
    throw new PoolError('EINVAL', `--extent-size ${extentSizeBytes}: must be a power of two of at least 64 KiB`);
  }
  if (opts.devices.length === 0) throw new PoolError('EINVAL', 'a pool needs at least one device');
  const md: PoolMetadata = {
    format: METADATA_FORMAT,
    version: METADATA_VERSION,
    name: opts.name,
    uuid: randomUUID(),
    seqno: 1,
    extentSizeBytes,
    clustered: opts.clustered ?? false,
    devices: deviceEntries(extentSizeBytes, opts.devices),
    volumes: [],
  };
  checkMetadata(md);
  return md;
}

function next(md: PoolMetadata, change: Partial<PoolMetadata>): PoolMetadata {
  const out: PoolMetadata = { ...md, ...change, seqno: md.seqno + 1 };
  checkMetadata(out); // our bug if this throws: every op keeps the invariants
  return out;
}

export function extendPool(md: PoolMetadata, devices: readonly NewDevice[]): { md: PoolMetadata; added: PoolDevice[] } {
  if (devices.length === 0) throw new PoolError('EINVAL', 'pool extend: give at least one device');
  const added = deviceEntries(md.extentSizeBytes, devices);
  return { md: next(md, { devices: [...md.devices, ...added] }), added };
}

export function reducePool(md: PoolMetadata, deviceUuid: string): PoolMetadata {
  const d = md.devices.find((x) => x.uuid === deviceUuid);
  if (d === undefined) throw new PoolError('ENOENT', `device ${deviceUuid} is not in pool ${md.name}`);
  const used = usedExtents(md, deviceUuid);
  if (used > 0) {
    const users = md.volumes.filter((v) => [...v.legs, ...(v.logRun ? [v.logRun] : [])].some((r) => r.device === deviceUuid)).map((v) => v.name);
    throw new PoolError('EBUSY', `device ${d.path} holds ${used} used extents (volumes: ${users.join(', ')}): move or remove them first`);
  }
  if (md.devices.length === 1) throw new PoolError('EBUSY', `device ${d.path} is the last device of pool ${md.name}`);
  return next(md, { devices: md.devices.filter((x) => x.uuid !== deviceUuid) });
}

export function setClustered(md: PoolMetadata, clustered: boolean): PoolMetadata {
  return next(md, { clustered });
}

/** Free extents per device, for pool show/list. */
export function freeExtents(md: PoolMetadata, deviceUuid: string): number {
  return freeRuns(md, deviceUuid).reduce((a, r) => a + r.count, 0);
}

interface Placement {
  legs: ExtentRun[];
  logRun?: ExtentRun;
}

/** Best fit on one device: the smallest free run holding `count` extents. */
function bestFit(md: PoolMetadata, deviceUuid: string, count: number): ExtentRun | undefined {
  const fits = freeRuns(md, deviceUuid).filter((r) => r.count >= count).sort((a, b) => a.count - b.count || a.start - b.start);
  const r = fits[0];
  return r === undefined ? undefined : { device: deviceUuid, startExtent: r.start, extentCount: count };
}

/** Place `legCount` new legs of `legExtents` each on devices not in `avoid`; then, if asked, a log run. */
function place(md: PoolMetadata, opts: { legCount: number; legExtents: number; logExtents: number; avoid: ReadonlySet<string>; logAvoid?: ReadonlySet<string> }): Placement | string {
  const byFree = [...md.devices].sort((a, b) => freeExtents(md, b.uuid) - freeExtents(md, a.uuid) || a.path.localeCompare(b.path));
  const legs: ExtentRun[] = [];
  const taken = new Set(opts.avoid);
  for (let i = 0; i < opts.legCount; i++) {
    const d = byFree.find((x) => !taken.has(x.uuid) && bestFit(md, x.uuid, opts.legExtents) !== undefined);
    if (d === undefined) {
      const usable = md.devices.filter((x) => !taken.has(x.uuid));
      const largest = Math.max(0, ...usable.map((x) => Math.max(0, ...freeRuns(md, x.uuid).map((r) => r.count))));
      return (
        `needs ${opts.legCount} more leg(s) of ${opts.legExtents} extents, each on its own device; found room for ${i} ` +
        `(${usable.length} other device(s), largest free run ${largest} extents)`
      );
    }
    legs.push(bestFit(md, d.uuid, opts.legExtents)!);
    taken.add(d.uuid);
  }
  if (opts.logExtents === 0) return { legs };
  const logAvoid = new Set([...taken, ...(opts.logAvoid ?? [])]);
  const candidates = md.devices
    .filter((x) => !logAvoid.has(x.uuid) && !/^nbd/.test(x.path))
    .map((x) => bestFit(md, x.uuid, opts.logExtents))
    .filter((r): r is ExtentRun => r !== undefined);
  if (candidates.length === 0) {
    return `needs ${opts.logExtents} extent(s) for the disk log on a device other than the legs' ${legs.length + opts.avoid.size} device(s), and none has room (use --log core, or pool extend)`;
  }
  return { legs, logRun: candidates[0]! };
}

function logExtentsFor(md: PoolMetadata, sizeBytes: number, regionSizeBytes: number): number {
  return extentsFor(md, diskLogAreaBytes(Math.ceil(sizeBytes / regionSizeBytes)));
}

export interface CreateVolumeOptions {
  readonly name: string;
  readonly sizeBytes: number;
  /** Legs beyond the first (lvcreate -m): 0 = linear. */
  readonly mirrors: number;
  readonly regionSizeBytes?: number;
  readonly log?: LogKind;
  readonly nosync?: boolean;
}

export function createVolume(md: PoolMetadata, opts: CreateVolumeOptions): { md: PoolMetadata; volume: PoolVolume } {
  checkName(opts.name, 'volume name');
  if (md.volumes.some((v) => v.name === opts.name)) throw new PoolError('EEXIST', `volume "${opts.name}" already exists in pool ${md.name}`);
  if (!Number.isSafeInteger(opts.mirrors) || opts.mirrors < 0 || opts.mirrors > MIRRORS_MAX) {
    throw new PoolError('EINVAL', `--mirrors ${opts.mirrors}: expected 0..${MIRRORS_MAX}`);
  }
  if (!Number.isSafeInteger(opts.sizeBytes) || opts.sizeBytes <= 0) throw new PoolError('EINVAL', `--size ${opts.sizeBytes}: must be positive`);
  const regionSizeBytes = opts.regionSizeBytes ?? REGION_SIZE_BYTES_DEFAULT;
  if (regionSizeBytes < 1024 || (regionSizeBytes & (regionSizeBytes - 1)) !== 0) {
    throw new PoolError('EINVAL', `--region-size ${regionSizeBytes}: must be a power of two of at least 1 KiB`);
  }
  // Like lvcreate: the size is rounded up to whole extents.
  const legExtents = extentsFor(md, opts.sizeBytes);
  const sizeBytes = legExtents * md.extentSizeBytes;
  const log: LogKind = opts.log ?? 'disk';
  const mirrored = opts.mirrors > 0;
  if (mirrored && regionSizeBytes > sizeBytes) throw new PoolError('EINVAL', `--region-size ${regionSizeBytes} is larger than the volume (${sizeBytes} bytes)`);
  const logExtents = mirrored && log === 'disk' ? logExtentsFor(md, sizeBytes, regionSizeBytes) : 0;
  const p = place(md, { legCount: opts.mirrors + 1, legExtents, logExtents, avoid: new Set() });
  if (typeof p === 'string') throw new PoolError('ENOSPC', `cannot place volume "${opts.name}" (${sizeBytes} bytes, ${opts.mirrors + 1} leg(s)) in pool ${md.name}: ${p}`);
  const volume: PoolVolume = {
    name: opts.name,
    uuid: randomUUID(),
    sizeBytes,
    regionSizeBytes,
    log,
    nosync: opts.nosync ?? false,
    legs: p.legs,
    ...(p.logRun ? { logRun: p.logRun } : {}),
  };
  return { md: next(md, { volumes: [...md.volumes, volume] }), volume };
}

export function findVolume(md: PoolMetadata, name: string): PoolVolume {
  const v = md.volumes.find((x) => x.name === name);
  if (v === undefined) {
    throw new PoolError('ENOENT', `no volume "${name}" in pool ${md.name} (volumes: ${md.volumes.map((x) => x.name).join(', ') || 'none'})`);
  }
  return v;
}

export function removeVolume(md: PoolMetadata, name: string): PoolMetadata {
  findVolume(md, name);
  return next(md, { volumes: md.volumes.filter((v) => v.name !== name) });
}

function replaceVolume(md: PoolMetadata, v: PoolVolume): PoolMetadata {
  return next(md, { volumes: md.volumes.map((x) => (x.name === v.name ? v : x)) });
}

/**
 * Checks for `resync` (lvchange --resync) and the metadata after it: a mirror with a disk log (a core log
 * resyncs everything at each start anyway), no move in progress; its nosync flag is dropped (a nosync table
 * would declare every region in sync again at the next start). `md` unchanged when there is nothing to drop.
 */
export function resyncVolume(md: PoolMetadata, name: string): { md: PoolMetadata; volume: PoolVolume } {
  const v = findVolume(md, name);
  if (v.legs.length < 2) throw new PoolError('EINVAL', `resync ${name}: a linear volume (one leg) has nothing to resync`);
  if (v.moving !== undefined) throw new PoolError('EBUSY', `resync ${name}: a move of one of its legs is in progress; finish it first (pool move)`);
  if (v.log !== 'disk' || v.logRun === undefined) {
    throw new PoolError('EINVAL', `resync ${name}: its log is in memory (core): every region is resynced from the first leg at each start already`);
  }
  if (!v.nosync) return { md, volume: v };
  const volume: PoolVolume = { ...v, nosync: false };
  return { md: replaceVolume(md, volume), volume };
}

/** Grow only. Every leg grows in place (the extents right after it must be free); the log run must still hold the bitmap. */
export function resizeVolume(md: PoolMetadata, name: string, sizeBytes: number): { md: PoolMetadata; volume: PoolVolume; oldSizeBytes: number } {
  const v = findVolume(md, name);
  const legExtents = extentsFor(md, sizeBytes);
  const newSize = legExtents * md.extentSizeBytes;
  if (newSize < v.sizeBytes) throw new PoolError('EINVAL', `resize ${name}: ${sizeBytes} bytes is smaller than the volume (${v.sizeBytes}); only growing is supported`);
  if (newSize === v.sizeBytes) throw new PoolError('EINVAL', `resize ${name}: the volume already has ${v.sizeBytes} bytes`);
  const legs = v.legs.map((leg) => {
    const grow = legExtents - leg.extentCount;
    if (grow <= 0) return leg;
    const after = freeRuns(md, leg.device).find((r) => r.start === leg.startExtent + leg.extentCount);
    if (after === undefined || after.count < grow) {
      const dev = md.devices.find((d) => d.uuid === leg.device)!;
      throw new PoolError('ENOSPC', `resize ${name}: the leg on ${dev.path} cannot grow in place: needs ${grow} free extents after extent ${leg.startExtent + leg.extentCount - 1}, has ${after?.count ?? 0}`);
    }
    return { ...leg, extentCount: legExtents };
  });
  if (v.logRun !== undefined && logExtentsFor(md, newSize, v.regionSizeBytes) > v.logRun.extentCount) {
    throw new PoolError('ENOSPC', `resize ${name}: the disk log run (${v.logRun.extentCount} extents) cannot hold the bitmap of ${newSize} bytes`);
  }
  const volume: PoolVolume = { ...v, sizeBytes: newSize, legs };
  return { md: replaceVolume(md, volume), volume, oldSizeBytes: v.sizeBytes };
}

/**
 * Change the number of legs (lvconvert -m N): new legs are placed like createVolume's; fewer legs drop the
 * last ones; 0 mirrors = linear (the log run is freed). A disk log is added when going from linear to mirror.
 */
export function convertMirrors(md: PoolMetadata, name: string, mirrors: number, opts: { log?: LogKind } = {}): { md: PoolMetadata; volume: PoolVolume } {
  const v = findVolume(md, name);
  if (!Number.isSafeInteger(mirrors) || mirrors < 0 || mirrors > MIRRORS_MAX) throw new PoolError('EINVAL', `--mirrors ${mirrors}: expected 0..${MIRRORS_MAX}`);
  const want = mirrors + 1;
  if (want === v.legs.length) throw new PoolError('EINVAL', `convert ${name}: already ${v.legs.length} leg(s)`);
  if (want < v.legs.length) {
    const legs = v.legs.slice(0, want);
    const { logRun: _drop, ...rest } = v;
    const volume: PoolVolume = want === 1 ? { ...rest, legs } : { ...v, legs };
    return { md: replaceVolume(md, volume), volume };
  }
  const log = opts.log ?? v.log;
  const needLog = log === 'disk' && v.logRun === undefined;
  const logExtents = needLog ? logExtentsFor(md, v.sizeBytes, v.regionSizeBytes) : 0;
  const p = place(md, {
    legCount: want - v.legs.length,
    legExtents: extentsFor(md, v.sizeBytes),
    logExtents,
    avoid: new Set([...v.legs.map((l) => l.device), ...(v.logRun ? [v.logRun.device] : [])]),
    logAvoid: new Set(v.legs.map((l) => l.device)),
  });
  if (typeof p === 'string') throw new PoolError('ENOSPC', `cannot convert "${name}" to ${want} legs in pool ${md.name}: ${p}`);
  const volume: PoolVolume = { ...v, log, legs: [...v.legs, ...p.legs], ...(needLog && p.logRun ? { logRun: p.logRun } : {}) };
  return { md: replaceVolume(md, volume), volume };
}

export interface RunMove {
  readonly volume: string;
  readonly from: ExtentRun;
  readonly to: ExtentRun;
}

/**
 * pvmove: every run (legs and disk logs) on device `fromUuid` gets a new run of the same size on another
 * device that the volume does not use yet (only `toUuid` if given). The caller copies the data of each move
 * BEFORE committing the result, so until the commit the old runs stay authoritative.
 */
export function moveDevice(md: PoolMetadata, fromUuid: string, toUuid?: string): { md: PoolMetadata; moves: RunMove[] } {
  const from = md.devices.find((d) => d.uuid === fromUuid);
  if (from === undefined) throw new PoolError('ENOENT', `device ${fromUuid} is not in pool ${md.name}`);
  if (toUuid !== undefined && toUuid === fromUuid) throw new PoolError('EINVAL', 'move: source and destination are the same device');
  let cur = md;
  const moves: RunMove[] = [];
  for (const v of md.volumes) {
    let vol = cur.volumes.find((x) => x.name === v.name)!;
    const runs: { run: ExtentRun; kind: 'leg' | 'log'; index: number }[] = [
      ...vol.legs.map((run, index) => ({ run, kind: 'leg' as const, index })),
      ...(vol.logRun ? [{ run: vol.logRun, kind: 'log' as const, index: 0 }] : []),
    ].filter((r) => r.run.device === fromUuid);
    for (const r of runs) {
      const used = new Set([...vol.legs.map((l) => l.device), ...(vol.logRun ? [vol.logRun.device] : [])]);
      const candidates = cur.devices
        .filter((d) => d.uuid !== fromUuid && !used.has(d.uuid) && (toUuid === undefined || d.uuid === toUuid))
        .filter((d) => !(r.kind === 'log' && /^nbd/.test(d.path)))
        .map((d) => bestFit(cur, d.uuid, r.run.extentCount))
        .filter((x): x is ExtentRun => x !== undefined);
      const to = candidates[0];
      if (to === undefined) {
        throw new PoolError('ENOSPC', `move: no device ${toUuid !== undefined ? `(of the one given) ` : ''}has ${r.run.extentCount} free contiguous extents for the ${r.kind} of ${v.name} outside the devices it already uses`);
      }
      moves.push({ volume: v.name, from: r.run, to });
      vol = r.kind === 'leg' ? { ...vol, legs: vol.legs.map((l, i) => (i === r.index ? to : l)) } : { ...vol, logRun: to };
      cur = { ...cur, volumes: cur.volumes.map((x) => (x.name === vol.name ? vol : x)) };
    }
  }
  if (moves.length === 0) throw new PoolError('EINVAL', `move: device ${from.path} holds no extents`);
  return { md: next(md, { volumes: cur.volumes }), moves };
}
