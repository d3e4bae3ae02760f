// The real TableBackend: parseTable and openTable from src/mirror. The Volume opens every leg and log
// device through its LegPool (openTable's `openLeg` hook) and gets the engine's events (openTable's
// `mirror.events`); an in-place mirror reload whose log changed gets its log from openLocalLog.
import type { Export } from '../nbd/export.js';
import { FileLeg } from '../mirror/legs/file.js';
import type { Leg } from '../mirror/legs/leg.js';
import { isNbdUri, NbdLeg } from '../mirror/legs/nbd.js';
import type { DirtyLog } from '../mirror/log/dirty-log.js';
import { openLocalLog, openTable, type OpenTableOptions } from '../mirror/open.js';
import { parseTable, type MirrorTableSpec, type TableSpec } from '../mirror/table.js';
import { SECTOR_BYTES } from '../units.js';
import type { DeviceOpener, EventSink, TableBackend } from './volumes.js';

export interface TableBackendOptions {
  readonly readOnly?: boolean;
  readonly warn?: (message: string) => void;
  /** Extra openTable options (resync defaults, limits, a cluster log opener). */
  readonly openTable?: Omit<OpenTableOptions, 'openLeg' | 'readOnly' | 'warn'>;
}

export function tableBackend(opts: TableBackendOptions = {}): TableBackend {
  const warn = opts.warn ?? (() => undefined);
  return {
    readOnly: opts.readOnly ?? false,
    parse: (line: string): TableSpec => parseTable(line),
    openDevice: (device: string, offsetBytes: number, o: { readOnly: boolean }): Promise<Leg> =>
      isNbdUri(device) ? NbdLeg.open(device, { offsetBytes }) : FileLeg.open(device, { offsetBytes, readOnly: o.readOnly }),
    open: (spec: TableSpec, ctx: { events: EventSink; openLeg: DeviceOpener }): Promise<Export> =>
      openTable(spec, {
        ...opts.openTable,
        ...(opts.readOnly !== undefined ? { readOnly: opts.readOnly } : {}),
        warn,
        openLeg: ctx.openLeg,
        mirror: { ...opts.openTable?.mirror, events: ctx.events },
      }),
    openLog: (spec: MirrorTableSpec, device: Leg | undefined): Promise<DirtyLog> => {
      const lengthBytes = spec.lengthSectors * SECTOR_BYTES;
      const regionSizeBytes = spec.log.regionSizeSectors * SECTOR_BYTES;
      return (opts.openTable?.openLog ?? openLocalLog)(spec.log, { lengthBytes, regionSizeBytes, ...(device ? { device } : {}), warn });
    },
  };
}
