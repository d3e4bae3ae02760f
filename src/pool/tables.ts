// The dm table of a pool volume, from the metadata and where each device is now. One leg: `linear`;
// more: `mirror` with the volume's region size, a `disk` log on a slice of the log device (PATH@<N>s, see
// FileLeg.open) or a `core` log. No `handle_errors` (held writes would wait forever without a repair policy). In a clustered pool every mirror gets the cluster log in
// LVM's userspace form (`userspace ... clustered-disk|clustered-core`), keyed by the volume uuid, without
// being asked. Pure.
import { formatTable, type LogSpec, type TableSpec } from '../mirror/table.js';
import { bytesToSectors, bytes, sectors } from '../units.js';
import { PoolError } from './errors.js';
import { extentOffsetBytes, type ExtentRun, type PoolMetadata, type PoolVolume } from './metadata.js';

export function runPath(md: PoolMetadata, paths: ReadonlyMap<string, string>, run: ExtentRun, volume: string): string {
  const p = paths.get(run.device);
  if (p === undefined) {
    const d = md.devices.find((x) => x.uuid === run.device);
    throw new PoolError('ENODEV', `volume ${volume}: device ${run.device} (last seen at ${d?.path ?? '?'}) is missing`);
  }
  return p;
}

function runOffsetSectors(md: PoolMetadata, run: ExtentRun): ReturnType<typeof sectors> {
  return bytesToSectors(bytes(extentOffsetBytes(md, run.startExtent)));
}

export function volumeTableSpec(md: PoolMetadata, paths: ReadonlyMap<string, string>, v: PoolVolume): TableSpec {
  const lengthSectors = bytesToSectors(bytes(v.sizeBytes));
  const legs = v.legs.map((run) => ({ device: runPath(md, paths, run, v.name), offsetSectors: runOffsetSectors(md, run) }));
  if (legs.length === 1) return { kind: 'linear', startSectors: sectors(0), lengthSectors, leg: legs[0]! };
  const disk = v.log === 'disk' && v.logRun !== undefined;
  const log: LogSpec = {
    kind: disk ? 'disk' : 'core',
    ...(disk ? { device: `${runPath(md, paths, v.logRun!, v.name)}@${runOffsetSectors(md, v.logRun!)}s` } : {}),
    regionSizeSectors: bytesToSectors(bytes(v.regionSizeBytes)),
    sync: v.nosync ? 'nosync' : 'default',
    clustered: md.clustered,
    ...(md.clustered ? { uuid: v.uuid } : {}),
    integratedFlush: md.clustered,
    syntax: md.clustered ? 'userspace' : 'dm',
  };
  return { kind: 'mirror', startSectors: sectors(0), lengthSectors, log, legs, features: { handleErrors: false, keepLog: false } };
}

export function volumeTable(md: PoolMetadata, paths: ReadonlyMap<string, string>, v: PoolVolume): string {
  return formatTable(volumeTableSpec(md, paths, v));
}
