// The core dirty log (dm-log.c "core") and the bitmap logic every bitmap-backed log shares.
// Owns: clean/sync/recovering bitmaps, sync count, the resync search cursor, per-leg up-to-date states,
// and the "what changed since the last flush" flags. CoreLog keeps everything in memory: every activation
// starts with all regions out of sync (full resync) unless `nosync`. DiskLog (disk.ts) extends BitmapLog
// and only adds construction from disk, flush I/O, and status.
//
// Nothing here blocks except the Promise-returning hooks; for the core log they resolve at once.

import { strict as assert } from 'node:assert';
import { Bitmap } from './bitmap.js';
import {
  regionCountFor,
  type DirtyLog,
  type LegLogState,
  type LogActivation,
  type LogHealthChar,
  type LogStatusKind,
  type SyncMode,
} from './dirty-log.js';

export interface BitmapLogOptions {
  regionSizeBytes: number;
  lengthBytes: number;
  sync: SyncMode;
}

/** Shared logic of bitmap logs (dm-log.c's core_* functions, used by both core and disk). */
export abstract class BitmapLog implements DirtyLog {
  abstract readonly type: string;
  readonly regionSizeBytes: number;
  readonly regionCount: number;
  readonly syncMode: SyncMode;
  readonly clean: Bitmap;
  readonly sync: Bitmap;
  readonly recovering: Bitmap;
  protected syncSearch = 0;
  protected touchedDirtied = false;
  protected touchedCleaned = false;
  protected legsChanged = false;
  protected legs: LegLogState[] = [];
  protected activation: LogActivation | null = null;
  protected suspended = false;

  constructor(opts: BitmapLogOptions) {
    assert(Number.isSafeInteger(opts.regionSizeBytes) && opts.regionSizeBytes > 0, 'regionSizeBytes');
    assert(Number.isSafeInteger(opts.lengthBytes) && opts.lengthBytes > 0, 'lengthBytes');
    this.regionSizeBytes = opts.regionSizeBytes;
    this.regionCount = regionCountFor(opts.lengthBytes, opts.regionSizeBytes);
    this.syncMode = opts.sync;
    this.clean = new Bitmap(this.regionCount);
    this.sync = new Bitmap(this.regionCount);
    this.recovering = new Bitmap(this.regionCount);
  }

  abstract resume(activation: LogActivation): Promise<readonly LegLogState[]>;
  abstract flush(): Promise<void>;
  abstract status(kind: LogStatusKind): string[];

  presuspend(): void {
    this.suspended = true;
  }

  async postsuspend(): Promise<void> {
    await this.flush();
  }

  isClean(region: number): boolean {
    return this.clean.get(region);
  }

  inSync(region: number): boolean {
    return this.sync.get(region);
  }

  markRegion(region: number): void {
    if (this.clean.set(region, false)) this.touchedDirtied = true;
  }

  clearRegion(region: number): void {
    if (this.clean.set(region, true)) this.touchedCleaned = true;
  }

  getResyncWork(): number | null {
    if (this.suspended) return null;
    // dm searches forward from a cursor; we wrap once so a region whose recovery failed (its leg has been
    // failed meanwhile) is retried with the remaining legs.
    for (let pass = 0; pass < 2; pass++) {
      let r = this.sync.findNext(false, this.syncSearch);
      while (r >= 0 && this.recovering.get(r)) r = this.sync.findNext(false, r + 1);
      if (r >= 0) {
        this.syncSearch = r + 1;
        this.recovering.set(r, true);
        return r;
      }
      this.syncSearch = 0;
    }
    return null;
  }

  /** Claim a specific region for recovery (priority resync for a region with waiting writes). */
  claimResyncWork(region: number): boolean {
    if (this.suspended || this.sync.get(region) || this.recovering.get(region)) return false;
    this.recovering.set(region, true);
    return true;
  }

  isRecovering(region: number): boolean {
    return this.recovering.get(region);
  }

  setRegionSync(region: number, inSync: boolean): void {
    this.recovering.set(region, false);
    this.sync.set(region, inSync);
  }

  syncCount(): number {
    return this.sync.population();
  }

  legStates(): readonly LegLogState[] {
    return this.legs;
  }

  setLegUpToDate(legIndex: number, upToDate: boolean): void {
    assert(legIndex >= 0 && legIndex < this.legs.length, 'leg index out of range');
    const old = this.legs[legIndex]!;
    if (old.upToDate === upToDate) return;
    this.legs[legIndex] = { device: old.device, upToDate };
    this.legsChanged = true;
  }

  hasUnflushedChanges(): boolean {
    return this.touchedDirtied || this.touchedCleaned || this.legsChanged;
  }

  health(): LogHealthChar {
    return 'A';
  }

  async close(): Promise<void> {}

  /**
   * Shared activation tail: given the legs' up-to-date states, if any leg is stale every region goes out of
   * sync (a stale leg needs a full copy; the single sync bitmap cannot say "in sync except on leg 2").
   * Sync bits otherwise come from the clean bits (dm: memcpy(sync_bits, clean_bits)).
   */
  protected deriveSyncState(legs: LegLogState[]): void {
    this.legs = legs;
    this.sync.copyFrom(this.clean);
    this.recovering.fill(false);
    this.syncSearch = 0;
    this.suspended = false;
    if (legs.some((l) => !l.upToDate)) this.sync.fill(false);
  }
}

/** dm's "core" log: memory only; a full resync on every activation unless nosync. */
export class CoreLog extends BitmapLog {
  readonly type = 'core';
  private resumedOnce = false;

  constructor(opts: BitmapLogOptions) {
    super(opts);
    // dm core_ctr: clean bits all set; sync bits set only with nosync.
    this.clean.fill(true);
  }

  async resume(activation: LogActivation): Promise<readonly LegLogState[]> {
    this.activation = activation;
    if (!this.resumedOnce) {
      this.resumedOnce = true;
      const nosync = this.syncMode === 'nosync';
      // No memory of legs: leg 0 is the source; the others are stale until the first full resync.
      const legs = activation.legDevices.map((device, i) => ({ device, upToDate: nosync || i === 0 }));
      this.legs = legs;
      this.sync.fill(nosync);
      this.recovering.fill(false);
      this.suspended = false;
      return this.legs;
    }
    // Resume after suspend (possibly with a new leg set): keep known legs' states, new legs are stale.
    const known = new Map(this.legs.map((l) => [l.device, l.upToDate]));
    const legs = activation.legDevices.map((device) => ({ device, upToDate: known.get(device) ?? false }));
    this.legsChanged = true;
    // Keep the in-memory sync bits (they are the truth for a core log) unless a leg is stale.
    this.legs = legs;
    this.recovering.fill(false);
    this.syncSearch = 0;
    this.suspended = false;
    if (legs.some((l) => !l.upToDate)) this.sync.fill(false);
    return this.legs;
  }

  async flush(): Promise<void> {
    this.touchedCleaned = false;
    this.touchedDirtied = false;
    this.legsChanged = false;
  }

  status(kind: LogStatusKind): string[] {
    if (kind === 'info') return ['1', 'core'];
    const args = [String(this.regionSizeBytes / 512)];
    if (this.syncMode !== 'default') args.push(this.syncMode);
    return ['core', String(args.length), ...args];
  }
}
