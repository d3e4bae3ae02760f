// The real TableBackend: parseTable and openTable from src/mirror, with every leg and log device opened
// through the volume's LegPool (openTable's `openLeg` hook) and the engine's events sent to the
// volume (openTable's `mirror.events`).
import type { Export } from '../nbd/export.js';
import { FileLeg } from '../mirror/legs/file.js';
import { isNbdUri, NbdLeg } from '../mirror/legs/nbd.js';
import { openTable, type OpenTableOptions } from '../mirror/open.js';
import { parseTable, type TableSpec } from '../mirror/table.js';
import type { OpenContext, TableBackend } from './volumes.js';

export interface TableBackendOptions {
  readonly readOnly?: boolean;
  readonly warn?: (message: string) => void;
  /** Extra openTable options (resync defaults, limits, a cluster log opener). */
  readonly openTable?: Omit<OpenTableOptions, 'openLeg' | 'readOnly' | 'warn'>;
}

export function tableBackend(opts: TableBackendOptions = {}): TableBackend {
  return {
    parse: (line: string): TableSpec => parseTable(line),
    open: (spec: TableSpec, ctx: OpenContext): Promise<Export> =>
      openTable(spec, {
        ...opts.openTable,
        ...(opts.readOnly !== undefined ? { readOnly: opts.readOnly } : {}),
        ...(opts.warn ? { warn: opts.warn } : {}),
        openLeg: (device, offsetBytes, legOpts) =>
          ctx.shareLeg(device, offsetBytes, () =>
            isNbdUri(device)
              ? NbdLeg.open(device, { offsetBytes })
              : FileLeg.open(device, { offsetBytes, readOnly: legOpts.readOnly }),
          ),
        // ctx.deferActivation cannot be honoured yet: createMirror activates at once (see engine.ts).
        mirror: { ...opts.openTable?.mirror, events: ctx.events },
      }),
  };
}
