// The control plane's view of a table's export: one adapter (`engineOf`) over what the export is.
// A MirrorExport (src/mirror/mirror.ts) gives status, leg health, held writes, suspend/resume and an
// in-place reload (new legs and/or log applied on resume, held writes re-issued by the engine); a linear
// export gives none of it and gets neutral answers. Messages (dmsetup message) are mapped here onto the
// engine's methods.
//
// Owns: that mapping, and the message vocabulary:
//   resync_rate <bytes/s>   resync rate limit (0 = unlimited)             -> setResyncRate
//   frozen                  pause resync (dm-raid's sync_action word)     -> pauseResync
//   resync                  (re)start resync                              -> startResync
// No I/O of its own, no policy.
import type { Export } from '../nbd/export.js';
import type { DirtyLog } from '../mirror/log/dirty-log.js';
import type { Leg } from '../mirror/legs/leg.js';
import { MirrorExport } from '../mirror/mirror.js';

/** Health char per leg, as dm-raid1 prints it: A alive; F flush, D write, S resync, R read error; U unknown. */
export type LegHealth = 'A' | 'F' | 'D' | 'S' | 'R' | 'U';
/** The health chars on which dmeventd's mirror plugin repairs. */
export const REPAIR_HEALTH: ReadonlySet<string> = new Set(['D', 'F', 'U']);

export interface LegState {
  readonly device: string;
  readonly health: string;
  /** Mirror only: reads of regions not in sync come from this leg (none is while the primary is lost out of sync). */
  readonly isDefault?: boolean;
}

export interface InPlaceReload {
  readonly legs: readonly Leg[];
  readonly log?: DirtyLog;
  readonly handleErrors: boolean;
  readonly keepLog: boolean;
}

export interface Engine {
  readonly kind: 'mirror' | 'plain';
  /** dmsetup status params after "<start> <length> <target> ", or undefined (not a mirror). */
  statusParams(): string | undefined;
  legs(): readonly LegState[] | undefined;
  heldWriteCount(): number;
  /** Writes parked until the cluster lets them go (a noflush suspend keeps them, as held writes). */
  clusterParkedWriteCount(): number;
  /** Engine-level suspend (mirror: stop resync, drain, persist the log; noflush keeps held writes). */
  suspend(noflush: boolean): Promise<void>;
  /** Engine-level resume (applies a pending in-place reload, re-issues held writes). */
  resume(): Promise<void>;
  /** Present for a mirror: stage new legs/log, applied by resume(). */
  reloadInPlace: ((r: InPlaceReload) => void) | undefined;
  /** Region size of a mirror (an in-place reload keeps it). */
  regionSizeBytes: number | undefined;
  message(argv: readonly string[]): string;
}

/** Engine members present, for `info` (diagnosis). */
export function engineFeatures(e: Export): string[] {
  return e instanceof MirrorExport ? ['status', 'legs', 'heldWrites', 'suspend', 'resume', 'reload', 'message'] : [];
}

export function engineOf(e: Export): Engine {
  if (e instanceof MirrorExport) return mirrorEngine(e);
  return {
    kind: 'plain',
    statusParams: () => undefined,
    legs: () => undefined,
    heldWriteCount: () => 0,
    clusterParkedWriteCount: () => 0,
    suspend: async () => undefined,
    resume: async () => undefined,
    reloadInPlace: undefined,
    regionSizeBytes: undefined,
    message: () => {
      throw new Error('this target takes no messages');
    },
  };
}

function mirrorEngine(m: MirrorExport): Engine {
  return {
    kind: 'mirror',
    statusParams: () => m.statusLine(),
    legs: () => m.status().legs.map((l) => ({ device: l.device, health: l.health, isDefault: l.isDefault })),
    heldWriteCount: () => m.status().heldWrites,
    clusterParkedWriteCount: () => m.clusterParkedWriteCount(),
    suspend: (noflush) => m.suspend({ noflush }),
    resume: () => m.resume(),
    reloadInPlace: (r) => m.reload({ legs: r.legs, ...(r.log ? { log: r.log } : {}), handleErrors: r.handleErrors, keepLog: r.keepLog }),
    regionSizeBytes: m.regionSizeBytes,
    message: (argv) => mirrorMessage(m, argv),
  };
}

function mirrorMessage(m: MirrorExport, argv: readonly string[]): string {
  const [word, ...rest] = argv;
  switch (word) {
    case 'resync_rate': {
      if (rest.length !== 1) throw new Error(`resync_rate takes one argument (bytes/s), got ${rest.length}`);
      const text = rest[0]!;
      if (!/^[0-9]+$/.test(text) || !Number.isSafeInteger(Number(text))) {
        throw new Error(`resync_rate: "${text}" is not a non-negative integer of bytes/s`);
      }
      m.setResyncRate(Number(text));
      return '';
    }
    case 'frozen':
      if (rest.length !== 0) throw new Error('frozen takes no argument');
      void m.pauseResync();
      return '';
    case 'resync':
      if (rest.length !== 0) throw new Error('resync takes no argument');
      m.startResync();
      return '';
    default:
      throw new Error(`unknown message "${word ?? ''}": expected resync_rate <bytes/s>, frozen or resync`);
  }
}
