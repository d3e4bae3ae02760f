// The mirror engine's construction options and event vocabulary: the contract open.ts builds against.
// Owns: MirrorOptions, ResyncOptions, MirrorLimits, MirrorEventSink and the event payload types.
// No behaviour here.

import type { Leg } from './legs/leg.js';
import type { DirtyLog } from './log/dirty-log.js';
import type { RandomSource, Scheduler } from './scheduler.js';

export interface ResyncOptions {
  /** Regions copied concurrently. */
  regionsInFlightMax: number;
  /** Copy unit; one buffer of this size per region in flight, reused. */
  chunkBytes: number;
  /** Copy rate limit (token bucket on the injected clock); 0 = unlimited. Changeable: setResyncRate(). */
  rateBytesPerSec: number;
  /** Start resync as soon as the mirror is active (false: only when resumeResync()/startResync() is called). */
  autoStart: boolean;
  /** Progress event period. */
  progressIntervalMs: number;
}

export const RESYNC_DEFAULTS: ResyncOptions = {
  regionsInFlightMax: 4,
  chunkBytes: 1024 * 1024,
  rateBytesPerSec: 0,
  autoStart: true,
  progressIntervalMs: 1000,
};

export interface MirrorLimits {
  /** An idle DIRTY region is cleared in the log after this long (lazy clear; saves a re-mark). */
  cleanDelayMs: number;
  /** Bytes of writes held (handle_errors) before new writes fail with ENOMEM-free EIO. */
  heldBytesMax: number;
  /** Largest single request accepted (advertised as blockSizeMax). */
  requestBytesMax: number;
  /** Writes waiting on a region another cluster node recovers are re-checked at least this often (dm: HZ/5). */
  remoteRecoveryPollMs: number;
}

export const MIRROR_LIMIT_DEFAULTS: MirrorLimits = {
  cleanDelayMs: 1000,
  heldBytesMax: 256 * 1024 * 1024,
  requestBytesMax: 32 * 1024 * 1024,
  remoteRecoveryPollMs: 200,
};

export type LegErrorKind = 'write' | 'flush' | 'read' | 'sync';

export interface MirrorEventMap {
  /** Resync made progress (periodic) or finished. */
  'resync-progress': {
    inSyncRegions: number;
    regionCount: number;
    bytesPerSec: number;
    /** null while unknown (no rate measured yet). */
    etaSec: number | null;
  };
  /** sync_count reached nr_regions. */
  'in-sync': { regionCount: number };
  /** A leg failed (once per leg and error kind, as dm's fail_mirror). */
  'leg-failed': { legIndex: number; device: string; kind: LegErrorKind; message: string; healthChar: string };
  /** The log device failed to write or flush. */
  'log-failed': { message: string };
  /** A write was held (handle_errors) until suspend/reload/resume. */
  'write-held': { offsetBytes: number; lengthBytes: number; heldCount: number };
  /** The default (primary) leg changed. */
  'default-leg': { legIndex: number; device: string };
  /** verify() found differing regions. */
  'verify-mismatch': { region: number; legIndexes: number[] };
}

export type MirrorEventName = keyof MirrorEventMap;

/** Anything with emit(name, payload): a node EventEmitter fits. */
export interface MirrorEventSink {
  emit(name: string, payload: unknown): unknown;
}

export interface MirrorOptions {
  /** Data legs in table order. legs[0] is the default (primary) leg unless the log says it is stale. */
  readonly legs: readonly Leg[];
  /** The dirty log, constructed but NOT yet resumed: createMirror resumes it. */
  readonly log: DirtyLog;
  readonly regionSizeBytes: number;
  /** Volume size (the table length in bytes). Every leg must be at least this big. */
  readonly lengthBytes: number;
  /** handle_errors / block_on_error: hold writes that missed a leg until suspend+reload+resume. */
  readonly handleErrors: boolean;
  /** keep_log (requires handleErrors): do not hold on leg failure, the log tracks it. */
  readonly keepLog: boolean;
  readonly scheduler?: Scheduler;
  readonly random?: RandomSource;
  readonly events?: MirrorEventSink;
  readonly resync?: Partial<ResyncOptions>;
  readonly limits?: Partial<MirrorLimits>;
  /** NBD export description. */
  readonly description?: string;
}
