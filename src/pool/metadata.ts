// The pool metadata document (what a slot's JSON text holds) and its validation. Pure.
// Sizes are bytes; extents are numbered from 0 on each device, extent i starting at
// METADATA_AREA_BYTES + i * extentSizeBytes. A leg is one contiguous run of extents on one device (a table
// leg is `<dev> <offset>`, so it cannot span devices); the disk log takes its own run on another device.
import { METADATA_AREA_BYTES, UUID_PATTERN } from './format.js';

export const METADATA_FORMAT = 'nbd-mirror-pool';
export const METADATA_VERSION = 1;

export interface ExtentRun {
  readonly device: string; // device uuid
  readonly startExtent: number;
  readonly extentCount: number;
}

export interface PoolDevice {
  readonly uuid: string;
  /** Where the device was when last written; the real path is found by reading labels. */
  readonly path: string;
  readonly sizeBytes: number;
  readonly extentCount: number;
}

export type LogKind = 'disk' | 'core';

export interface PoolVolume {
  readonly name: string;
  readonly uuid: string;
  readonly sizeBytes: number;
  readonly regionSizeBytes: number;
  readonly log: LogKind;
  readonly nosync: boolean;
  /** legs[0] is the primary; one leg = linear. */
  readonly legs: readonly ExtentRun[];
  readonly logRun?: ExtentRun;
  /**
   * An online pvmove of one leg in progress (LVM's temporary mirror): `to` is an extra leg being resynced
   * from the others; when in sync, `to` takes `from`'s place and the volume gets back its own log kind and
   * nosync flag. `pool move` completes it (online when served, by copying when not).
   */
  readonly moving?: { readonly from: ExtentRun; readonly to: ExtentRun; readonly log: LogKind; readonly nosync: boolean };
}

export interface PoolMetadata {
  readonly format: typeof METADATA_FORMAT;
  readonly version: number;
  readonly name: string;
  readonly uuid: string;
  readonly seqno: number;
  readonly extentSizeBytes: number;
  readonly clustered: boolean;
  readonly devices: readonly PoolDevice[];
  readonly volumes: readonly PoolVolume[];
  /**
   * An online change in progress (intent): the volume as it will be once the running server has loaded its
   * new table. Its new extents are reserved. Settled by the next command: kept if the server serves the new
   * table, dropped otherwise (the old table is always safe to come back to).
   */
  readonly pending?: { readonly volume: PoolVolume };
}

export class MetadataError extends Error {
  override name = 'MetadataError';
}

export const NAME_PATTERN = /^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,127}$/;

export function extentOffsetBytes(md: Pick<PoolMetadata, 'extentSizeBytes'>, extent: number): number {
  return METADATA_AREA_BYTES + extent * md.extentSizeBytes;
}

export function extentsFor(md: Pick<PoolMetadata, 'extentSizeBytes'>, sizeBytes: number): number {
  return Math.ceil(sizeBytes / md.extentSizeBytes);
}

function need(cond: boolean, what: string): void {
  if (!cond) throw new MetadataError(`invalid pool metadata: ${what}`);
}

const isCount = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;

/** Parse and check a slot's text: structure, uuids, and that no two runs overlap or leave their device. */
export function parseMetadata(text: string): PoolMetadata {
  let md: PoolMetadata;
  try {
    md = JSON.parse(text) as PoolMetadata;
  } catch (e) {
    throw new MetadataError(`invalid pool metadata: not JSON (${(e as Error).message})`);
  }
  checkMetadata(md);
  return md;
}

export function checkMetadata(md: PoolMetadata): void {
  need(typeof md === 'object' && md !== null, 'not an object');
  need(md.format === METADATA_FORMAT && md.version === METADATA_VERSION, `format ${String(md.format)} version ${String(md.version)}`);
  need(typeof md.name === 'string' && NAME_PATTERN.test(md.name), 'pool name');
  need(typeof md.uuid === 'string' && UUID_PATTERN.test(md.uuid), 'pool uuid');
  need(isCount(md.seqno) && md.seqno >= 1, 'seqno');
  need(isCount(md.extentSizeBytes) && md.extentSizeBytes >= 65536 && md.extentSizeBytes % 4096 === 0, 'extent size');
  need(typeof md.clustered === 'boolean', 'clustered');
  need(Array.isArray(md.devices) && md.devices.length >= 1, 'devices');
  need(Array.isArray(md.volumes), 'volumes');
  const devices = new Map<string, PoolDevice>();
  for (const d of md.devices) {
    need(typeof d.uuid === 'string' && UUID_PATTERN.test(d.uuid) && !devices.has(d.uuid), `device uuid ${String(d.uuid)}`);
    need(typeof d.path === 'string' && isCount(d.sizeBytes) && isCount(d.extentCount), `device ${d.uuid}`);
    need(extentOffsetBytes(md, d.extentCount) <= d.sizeBytes, `device ${d.uuid} extents beyond its size`);
    devices.set(d.uuid, d);
  }
  const used = new Map<string, boolean[]>([...devices.keys()].map((u) => [u, new Array<boolean>(devices.get(u)!.extentCount).fill(false)]));
  const claim = (r: ExtentRun, what: string): void => {
    const map = used.get(r.device);
    need(map !== undefined, `${what}: unknown device ${String(r.device)}`);
    need(isCount(r.startExtent) && isCount(r.extentCount) && r.extentCount >= 1, `${what}: extent run`);
    need(r.startExtent + r.extentCount <= map!.length, `${what}: extents beyond device ${r.device}`);
    for (let i = r.startExtent; i < r.startExtent + r.extentCount; i++) {
      need(!map![i], `${what}: extent ${i} of device ${r.device} is used twice`);
      map![i] = true;
    }
  };
  const names = new Set<string>();
  for (const v of md.volumes) {
    need(typeof v.name === 'string' && NAME_PATTERN.test(v.name) && !names.has(v.name), `volume name ${String(v.name)}`);
    names.add(v.name);
    need(typeof v.uuid === 'string' && UUID_PATTERN.test(v.uuid), `volume ${v.name} uuid`);
    need(isCount(v.sizeBytes) && v.sizeBytes > 0 && v.sizeBytes % 512 === 0, `volume ${v.name} size`);
    need(isCount(v.regionSizeBytes) && v.regionSizeBytes >= 1024 && (v.regionSizeBytes & (v.regionSizeBytes - 1)) === 0, `volume ${v.name} region size`);
    need(v.log === 'disk' || v.log === 'core', `volume ${v.name} log`);
    need(typeof v.nosync === 'boolean', `volume ${v.name} nosync`);
    need(Array.isArray(v.legs) && v.legs.length >= 1 && v.legs.length <= 9, `volume ${v.name} legs`);
    const legDevices = new Set<string>();
    for (const leg of v.legs) {
      claim(leg, `volume ${v.name} leg`);
      need(extentsFor(md, v.sizeBytes) <= leg.extentCount, `volume ${v.name}: a leg is smaller than the volume`);
      need(!legDevices.has(leg.device), `volume ${v.name}: two legs on one device`);
      legDevices.add(leg.device);
    }
    if (v.logRun !== undefined) {
      claim(v.logRun, `volume ${v.name} log`);
      need(!legDevices.has(v.logRun.device), `volume ${v.name}: log on a leg's device`);
    }
    need((v.log === 'disk' && v.legs.length > 1) === (v.logRun !== undefined), `volume ${v.name}: a disk log needs a log run, nothing else has one`);
    if (v.moving !== undefined) {
      const m = v.moving;
      const has = (r: ExtentRun): boolean => v.legs.some((l) => l.device === r?.device && l.startExtent === r.startExtent && l.extentCount === r.extentCount);
      need(typeof m === 'object' && m !== null && has(m.from) && has(m.to) && (m.log === 'disk' || m.log === 'core') && typeof m.nosync === 'boolean', `volume ${v.name}: move in progress`);
    }
  }
  if (md.pending !== undefined) {
    const cur = md.volumes.find((v) => v.name === md.pending!.volume.name);
    need(cur !== undefined, `pending change of unknown volume ${String(md.pending.volume?.name)}`);
    // The pending volume may reuse the current one's extents (kept legs, a leg grown in place); any other
    // extent it names must be free.
    const curRuns = [...cur!.legs, ...(cur!.logRun ? [cur!.logRun] : [])];
    const owned = (device: string, i: number): boolean => curRuns.some((c) => c.device === device && i >= c.startExtent && i < c.startExtent + c.extentCount);
    for (const r of [...md.pending.volume.legs, ...(md.pending.volume.logRun ? [md.pending.volume.logRun] : [])]) {
      const map = used.get(r.device);
      need(map !== undefined && isCount(r.startExtent) && isCount(r.extentCount) && r.extentCount >= 1, `pending change of ${cur!.name}: extent run`);
      need(r.startExtent + r.extentCount <= map!.length, `pending change of ${cur!.name}: extents beyond device ${r.device}`);
      for (let i = r.startExtent; i < r.startExtent + r.extentCount; i++) {
        if (owned(r.device, i)) continue;
        need(!map![i], `pending change of ${cur!.name}: extent ${i} of device ${r.device} is used twice`);
        map![i] = true;
      }
    }
  }
}

/** Free extents of one device as [start, count) runs, in order. */
export function freeRuns(md: PoolMetadata, deviceUuid: string): { start: number; count: number }[] {
  const d = md.devices.find((x) => x.uuid === deviceUuid);
  if (d === undefined) return [];
  const used = new Array<boolean>(d.extentCount).fill(false);
  for (const v of [...md.volumes, ...(md.pending ? [md.pending.volume] : [])]) {
    for (const r of [...v.legs, ...(v.logRun ? [v.logRun] : [])]) {
      if (r.device !== deviceUuid) continue;
      for (let i = r.startExtent; i < r.startExtent + r.extentCount; i++) used[i] = true;
    }
  }
  const runs: { start: number; count: number }[] = [];
  let i = 0;
  while (i < used.length) {
    if (used[i]) {
      i++;
      continue;
    }
    const start = i;
    while (i < used.length && !used[i]) i++;
    runs.push({ start, count: i - start });
  }
  return runs;
}

export function usedExtents(md: PoolMetadata, deviceUuid: string): number {
  const d = md.devices.find((x) => x.uuid === deviceUuid);
  if (d === undefined) return 0;
  return d.extentCount - freeRuns(md, deviceUuid).reduce((a, r) => a + r.count, 0);
}
