// openTable: turn a parsed TableSpec into a live Export — open every leg (paths as FileLeg, NBD URIs as
// NbdLeg) and the log device, check each is big enough, then build a LinearExport or call the engine's
// createMirror. Owns the all-or-nothing rule: if anything fails, everything opened so far is closed
// before the error is thrown, so nothing is left half-open. Errors name the device and the sizes.
//
// Cluster tables (log.clustered) run with a local log of the same kind until the cluster log exists;
// the `warn` callback says so. A caller (the cluster helper) can supply its own log via `openLog`.

import type { Export } from '../nbd/export.js';
import { SECTOR_BYTES, sectorsToBytes } from '../units.js';
import { FileLeg } from './legs/file.js';
import type { Leg } from './legs/leg.js';
import { LegOpenError } from './legs/errors.js';
import { isNbdUri, NbdLeg, type NbdConnect } from './legs/nbd.js';
import { LinearExport } from './linear.js';
import { CoreLog } from './log/core.js';
import { DiskLog, diskLogAreaBytes } from './log/disk.js';
import type { DirtyLog } from './log/dirty-log.js';
import { createMirror } from './mirror.js';
import type { MirrorOptions } from './options.js';
import { type LegSpec, type LogSpec, type MirrorTableSpec, type TableSpec, formatTable } from './table.js';

/** Opens one leg at a byte offset. The default opens paths as FileLeg and NBD URIs as NbdLeg. */
export type LegOpener = (device: string, offsetBytes: number, opts: { readOnly: boolean }) => Promise<Leg>;

export interface LogContext {
  readonly lengthBytes: number;
  readonly regionSizeBytes: number;
  /** The opened log device (disk logs), at offset 0. Owned by openTable: closed on failure. */
  readonly device?: Leg;
  readonly warn: (message: string) => void;
  /** The mirror's event sink (a cluster log reports node departures on the volume's event stream). */
  readonly events?: MirrorOptions['events'];
}

/** Builds the DirtyLog for a mirror table (constructed, not resumed: createMirror resumes it). */
export type LogOpener = (spec: LogSpec, ctx: LogContext) => Promise<DirtyLog>;

export interface OpenTableOptions {
  /** Open linear legs read-only and advertise a read-only export. (Mirrors always open legs read-write.) */
  readonly readOnly?: boolean;
  /** Non-fatal notices (e.g. a cluster table running with a local log). */
  readonly warn?: (message: string) => void;
  /** Replace how legs are opened (tests, the simulator, the control layer's leg pool). */
  readonly openLeg?: LegOpener;
  /** How NBD URIs are connected when the default opener is used. */
  readonly nbdConnect?: NbdConnect;
  /** Replace how the dirty log is built (the cluster log plugs in here). */
  readonly openLog?: LogOpener;
  /** Passed through to createMirror. */
  readonly mirror?: Partial<Pick<MirrorOptions, 'scheduler' | 'random' | 'events' | 'resync' | 'limits' | 'description'>>;
}

/** Smallest log device for a region count: the disk log's whole area (header + bitmap, block-rounded). */
export function diskLogBytesMin(regionCount: number): number {
  return diskLogAreaBytes(regionCount);
}

/** The default LegOpener: NBD URIs become NbdLeg, anything else a FileLeg. */
export function defaultLegOpener(nbdConnect?: NbdConnect): LegOpener {
  return (device, offsetBytes, opts) =>
    isNbdUri(device)
      ? NbdLeg.open(device, { offsetBytes, ...(nbdConnect ? { connect: nbdConnect } : {}) })
      : FileLeg.open(device, { offsetBytes, readOnly: opts.readOnly });
}

/** Closes legs in reverse order, ignoring close errors (we are already failing). */
async function closeAll(legs: readonly Leg[]): Promise<void> {
  for (const leg of [...legs].reverse()) {
    await leg.close().catch(() => {});
  }
}

function tooSmall(role: string, device: string, offsetBytes: number, needBytes: number, leg: Leg): LegOpenError {
  const deviceBytes = (leg as { deviceBytes?: number }).deviceBytes ?? leg.sizeBytes + offsetBytes;
  const offsetPart = offsetBytes > 0 ? ` from offset ${offsetBytes} bytes (${offsetBytes / SECTOR_BYTES} sectors)` : '';
  return new LegOpenError(
    device,
    `${role} '${device}' is too small: the table needs ${needBytes} bytes (${needBytes / SECTOR_BYTES} sectors)${offsetPart}, ` +
      `i.e. a device of at least ${offsetBytes + needBytes} bytes, but it has ${deviceBytes} bytes`,
  );
}

/**
 * Open what `spec` names and build its Export. On any failure every leg and log device already opened is
 * closed, then the error (a LegOpenError naming the device, or the engine's error) is thrown.
 */
export async function openTable(spec: TableSpec, opts: OpenTableOptions = {}): Promise<Export> {
  const warn = opts.warn ?? (() => {});
  const open = opts.openLeg ?? defaultLegOpener(opts.nbdConnect);
  const lengthBytes = sectorsToBytes(spec.lengthSectors);
  const opened: Leg[] = [];

  /** Open every leg concurrently; every one that did open is recorded so it can be closed. */
  async function openLegs(legs: readonly LegSpec[], readOnly: boolean): Promise<Leg[]> {
    const results = await Promise.allSettled(
      legs.map(async (l) => {
        const leg = await open(l.device, sectorsToBytes(l.offsetSectors), { readOnly });
        opened.push(leg);
        return leg;
      }),
    );
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    const out = results.map((r) => (r as PromiseFulfilledResult<Leg>).value);
    for (let i = 0; i < legs.length; i++) {
      const l = legs[i] as LegSpec;
      const leg = out[i] as Leg;
      if (leg.sizeBytes < lengthBytes) throw tooSmall('leg device', l.device, sectorsToBytes(l.offsetSectors), lengthBytes, leg);
    }
    return out;
  }

  try {
    if (spec.kind === 'linear') {
      const readOnly = opts.readOnly ?? false;
      const [leg] = await openLegs([spec.leg], readOnly);
      return new LinearExport(leg as Leg, { lengthBytes, readOnly, description: formatTable(spec) });
    }
    return await openMirror(spec, opts, warn, open, openLegs, opened);
  } catch (err) {
    await closeAll(opened);
    throw err;
  }
}

async function openMirror(
  spec: MirrorTableSpec,
  opts: OpenTableOptions,
  warn: (message: string) => void,
  open: LegOpener,
  openLegs: (legs: readonly LegSpec[], readOnly: boolean) => Promise<Leg[]>,
  opened: Leg[],
): Promise<Export> {
  const lengthBytes = sectorsToBytes(spec.lengthSectors);
  const regionSizeBytes = sectorsToBytes(spec.log.regionSizeSectors);
  const legs = await openLegs(spec.legs, false);

  let logDevice: Leg | undefined;
  if (spec.log.kind === 'disk') {
    const device = spec.log.device as string;
    logDevice = await open(device, 0, { readOnly: false });
    opened.push(logDevice);
    const need = diskLogBytesMin(Math.ceil(lengthBytes / regionSizeBytes));
    if (logDevice.sizeBytes < need) throw tooSmall('log device', device, 0, need, logDevice);
  }

  const ctx: LogContext = {
    lengthBytes,
    regionSizeBytes,
    ...(logDevice ? { device: logDevice } : {}),
    warn,
    ...(opts.mirror?.events ? { events: opts.mirror.events } : {}),
  };
  const log = await (opts.openLog ?? openLocalLog)(spec.log, ctx);
  try {
    return await createMirror({
      ...opts.mirror,
      legs,
      log,
      regionSizeBytes,
      lengthBytes,
      handleErrors: spec.features.handleErrors,
      keepLog: spec.features.keepLog,
      description: opts.mirror?.description ?? formatTable(spec),
    });
  } catch (err) {
    await log.close().catch(() => {});
    throw err;
  }
}

/** The local (non-cluster) logs: CoreLog, or DiskLog on the opened log device. */
export const openLocalLog: LogOpener = async (spec, ctx) => {
  if (spec.clustered) {
    ctx.warn(
      `table asks for a cluster log (uuid '${spec.uuid}'), which is not available yet: running it with a local ` +
        `${spec.kind} log; other nodes will NOT be coordinated`,
    );
  }
  if (spec.kind === 'core') {
    return new CoreLog({ regionSizeBytes: ctx.regionSizeBytes, lengthBytes: ctx.lengthBytes, sync: spec.sync });
  }
  if (ctx.device === undefined) throw new Error(`disk log on '${spec.device}': log device was not opened`);
  return new DiskLog({ device: ctx.device, regionSizeBytes: ctx.regionSizeBytes, lengthBytes: ctx.lengthBytes, sync: spec.sync });
};
