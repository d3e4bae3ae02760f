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
  /** Per leg: stale, but already receiving every write with all regions dirtied for it. */
  protected catchingUp: boolean[] = [];
  protected activation: LogActivation | null = null;
  protected suspended = false;
  /** recordSourceLost(): the device of the failed source that alone holds the unsynced regions. */
  protected lostSourceDevice: string | null = null;

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
    if (!upToDate) {
      // Failed: it will miss writes from now on; a later activation must dirty everything for it again.
      if (this.catchingUp[legIndex]) this.legsChanged = true;
      this.catchingUp[legIndex] = false;
    } else if (this.catchingUp[legIndex]) {
      this.catchingUp[legIndex] = false;
      this.legsChanged = true;
    }
    if (old.upToDate === upToDate) return;
    this.legs[legIndex] = { device: old.device, upToDate };
    this.legsChanged = true;
  }

  recordSourceLost(legIndex: number): void {
    assert(legIndex >= 0 && legIndex < this.legs.length, 'leg index out of range');
    if (this.lostSourceDevice !== null) return; // the first loss stands: its regions are still only there
    this.lostSourceDevice = this.legs[legIndex]!.device;
    this.legsChanged = true;
  }

  lostSource(): string | null {
    return this.lostSourceDevice;
  }

  hasUnflushedChanges(): boolean {
    return this.touchedDirtied || this.touchedCleaned || this.legsChanged;
  }

  health(): LogHealthChar {
    return 'A';
  }

  async close(): Promise<void> {}

  /**
   * Shared activation tail. A leg that is stale (missed writes) and not yet catching up puts EVERY region
   * dirty (clean bits 0, persisted by the caller's flush) and starts catching up: from then on it gets every
   * write, so a region cleared later is identical on it, and the catch-up survives restarts (sync bits come
   * from the clean bits). It stays not up to date, never a source, until the mirror reports it in sync.
   * Sync bits come from the clean bits (dm: memcpy(sync_bits, clean_bits)).
   */
  protected deriveSyncState(legs: LegLogState[], catchingUp: boolean[]): void {
    this.legs = legs;
    this.catchingUp = catchingUp;
    // A lost source stays part of the record only while its leg is in the table: a table without it
    // accepts the loss (repair refuses to drop it unless forced).
    if (this.lostSourceDevice !== null && !legs.some((l) => l.device === this.lostSourceDevice)) {
      this.lostSourceDevice = null;
      this.legsChanged = true;
    }
    legs.forEach((l, i) => {
      // While a lost source stands, no leg starts catching up: the lost leg keeps the only copy of the
      // unsynced regions (a catch-up would overwrite them), and nothing can be copied (no source). The
      // mirror keeps stale legs failed meanwhile; the in-sync regions stay in sync on the up-to-date legs.
      if (!l.upToDate && !catchingUp[i] && this.lostSourceDevice === null) {
        this.clean.fill(false);
        this.touchedDirtied = true;
        this.catchingUp[i] = true;
        this.legsChanged = true;
      }
    });
    this.sync.copyFrom(this.clean);
    this.recovering.fill(false);
    this.syncSearch = 0;
    this.suspended = false;
  }

  /** Legs from a previous activation, matched by device name; legs never seen are stale. */
  protected carryLegs(devices: readonly string[]): { legs: LegLogState[]; catchingUp: boolean[] } {
    const legs: LegLogState[] = [];
    const catchingUp: boolean[] = [];
    for (const device of devices) {
      const i = this.legs.findIndex((l) => l.device === device);
      legs.push({ device, upToDate: i >= 0 && this.legs[i]!.upToDate });
      catchingUp.push(i >= 0 && (this.catchingUp[i] ?? false));
    }
    return { legs, catchingUp };
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
      // No memory of legs: leg 0 is the source; the others are stale until the first full resync.
      const nosync = this.syncMode === 'nosync';
      const legs = activation.legDevices.map((device, i) => ({ device, upToDate: nosync || i === 0 }));
      this.deriveSyncState(legs, legs.map(() => false));
    } else {
      // Resume after suspend (possibly with a new leg set).
      const { legs, catchingUp } = this.carryLegs(activation.legDevices);
      this.deriveSyncState(legs, catchingUp);
    }
    await this.flush();
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
