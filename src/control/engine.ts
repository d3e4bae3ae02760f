// What the control plane needs from a table's export beyond the Export interface, and the one place
// that looks for it. A linear export has none of it; a mirror export provides status/table text, events,
// suspend/resume with held writes, and the hand-over of held writes and region state to the next table.
// Every member is optional and probed once (`engineOf`), so the controller works against an engine that
// is still growing, and reports what is missing instead of guessing.
//
// Owns: the contract (types) and the probing. No I/O, no policy.
import type { Export, WriteFlags } from '../nbd/export.js';

/** Health char per leg, as dm-raid1 prints it: A alive; F flush, D write, S resync, R read error; U unknown. */
export type LegHealth = 'A' | 'F' | 'D' | 'S' | 'R' | 'U';
export const REPAIR_HEALTH: ReadonlySet<string> = new Set(['D', 'F', 'U']);

/** One engine event, as pushed to the event stream. `kind` is stable; the other fields depend on it. */
export interface EngineEvent {
  readonly kind: string;
  readonly [field: string]: unknown;
}

/** A write whose completion the engine froze (handle_errors), handed to the controller on a table swap. */
export interface HeldWrite {
  readonly data: Buffer;
  readonly offsetBytes: number;
  readonly flags: WriteFlags;
  /** Complete the client's original request: no argument = success. */
  settle(err?: Error): void;
}

export interface LegState {
  readonly device: string;
  readonly health: LegHealth;
}

/**
 * The optional control surface of a table's export. Names and meanings agreed with the mirror engine
 * (src/mirror/mirror.ts); see the report for which ones it provides.
 */
export interface EngineControl {
  /** dmsetup status params after "<start> <length> <target> ". */
  statusParams?(): string;
  /** Leg devices and health chars, in table order. */
  legs?(): readonly LegState[];
  /** Subscribe to engine events; returns the unsubscribe function. */
  onEvent?(listener: (ev: EngineEvent) => void): () => void;
  /**
   * dm presuspend/postsuspend. noflush=false: fail held writes with EIO and wait for all I/O and recovery
   * to stop. noflush=true: keep held writes held, wait for every other I/O, stop recovery.
   */
  suspend?(opts: { noflush: boolean }): Promise<void>;
  /**
   * Start a table that was opened with deferActivation (a reload): resume the log, start resync. Called
   * on resume, after the previous table was closed.
   */
  activate?(): Promise<void>;
  /** Resume the same table (no reload): held writes are re-issued to it. */
  resume?(): Promise<void>;
  /** Number of writes currently held. */
  heldWriteCount?(): number;
  /** Take the held writes out of the engine (after a noflush suspend); the caller settles them. */
  takeHeldWrites?(): HeldWrite[];
  /**
   * Called on the NEW export before it goes live, with the old one: carry region state across (regions
   * in sync for the legs both tables share stay in sync; a leg only in the new table needs resync).
   */
  adoptStateFrom?(previous: Export): void;
  /** dmsetup message: the engine's answer text, or a thrown Error naming the bad word. */
  message?(argv: readonly string[]): Promise<string> | string;
}

export type ControllableExport = Export & EngineControl;

/** The engine members present on an export (by name), for `info` and for the report. */
export function engineFeatures(e: Export): string[] {
  const names: Array<keyof EngineControl> = [
    'statusParams',
    'activate',
    'legs',
    'onEvent',
    'suspend',
    'resume',
    'heldWriteCount',
    'takeHeldWrites',
    'adoptStateFrom',
    'message',
  ];
  const rec = e as unknown as Record<string, unknown>;
  return names.filter((n) => typeof rec[n] === 'function');
}

export function engineOf(e: Export): EngineControl {
  return e as ControllableExport;
}
