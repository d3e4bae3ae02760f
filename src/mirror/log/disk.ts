// The disk dirty log (dm-log.c "disk"): the core bitmap logic plus a persistent area on a log device.
// Owns: the on-disk format (below), activation from it (resume), flush I/O ordering, and log health.
//
// On-disk area, little-endian, written whole in one write (dm compatible in bytes 0-15 and 1024..):
//   0   u32  magic 0x4D695272 ("MiRr"; bytes 72 52 69 4D)
//   4   u32  version 2
//   8   u64  nr_regions
//   --- nbd-mirror extension (dm ignores bytes 16..1023) ---
//   16  u32  legs magic 0x5347454C ("LEGS")
//   20  u32  leg_count (<= LEGS_MAX)
//   24  u64  generation: incremented at every activation
//   32  LEGS_MAX records of 48 bytes:
//        +0  u32 flags (bit 0: up to date; bit 1: catching up = stale, but every region was dirtied for it
//                      and it receives every write, so clean bits are valid for it)
//        +4  u32 FNV-1a 32 of the device name as the table gives it
//        +8  u64 generation at which the leg was last known up to date
//        +16 32 bytes: device name prefix (UTF-8, zero padded), for humans and matching
//   800  lost-source record, 48 bytes like a leg record (all zero when there is none; logs written before it
//        have zeros here): flags bit 0 = valid; the leg that was the source (default leg) when it failed
//        while regions were out of sync, by name hash + prefix, and the generation it happened in
//   1024 clean bitmap: bit i = region i (byte i/8, bit i%8), 1 = clean; length rounded up to 8 bytes
// Area length = 1024 + bitmap, rounded up to 4096.
//
// Stale-leg protection: a leg recorded as not up to date (it failed, or the log has never seen it) can never
// be the resync source; at activation any stale leg puts every region out of sync, and the mirror copies
// from the first up-to-date leg. The mirror marks legs up to date again once sync_count == nr_regions.
// "Up to date" covers the in-sync regions only: a region out of sync is written to the source leg alone.
// So when the source fails while regions are out of sync, the lost-source record says that the other legs
// are stale for them. An activation from disk (a restart) then REFUSES (LostSourceError naming the leg and
// the regions dirty in the log, a superset of those regions after a crash), as it refuses when no leg of
// the table is recorded up to date (DRBD: no UpToDate disk, no primary). The override is dm's: start once
// with `sync` and the leg to trust first in the table (a full resync from it). A resume within the running
// process (suspend/reload/resume) keeps the record while the leg is in the table (its regions stay
// unreadable) and drops it when a reload leaves the leg out (repair --force).
//
// Flush order (dm disk_flush): newly cleaned bits -> flush the data legs first (on failure mark everything
// dirty); write the area; newly dirtied bits or changed leg records -> flush the log device.

import { strict as assert } from 'node:assert';
import { createRequire } from 'node:module';
import type layoutModule from 'buffer-layout';
import { ExportError } from '../../nbd/export.js';
import type { Leg } from '../legs/leg.js';
import { Bitmap } from './bitmap.js';
import { BitmapLog, type BitmapLogOptions } from './core.js';
import type { LegLogState, LogActivation, LogHealthChar, LogStatusKind } from './dirty-log.js';

// require, not import: an ESM import of this CommonJS package first scans its 84 KB source for named
// exports (cjs-module-lexer), ~10 ms of every `serve` start-up, disk log or not.
const layout = createRequire(import.meta.url)('buffer-layout') as typeof layoutModule;

export const DISK_LOG_MAGIC = 0x4d695272;
export const DISK_LOG_VERSION = 2;
export const DISK_LOG_LEGS_MAGIC = 0x5347454c;
export const DISK_LOG_BITMAP_OFFSET_BYTES = 1024;
export const DISK_LOG_BLOCK_BYTES = 4096;
export const DISK_LOG_LEGS_MAX = 16;
const LEG_NAME_PREFIX_BYTES = 32;
export const LEG_FLAG_UP_TO_DATE = 1;
export const LEG_FLAG_CATCHING_UP = 2;
export const LOST_SOURCE_FLAG_VALID = 1;
/** Regions listed by number in a refusal message; the rest are counted. */
const LOST_REGIONS_LISTED_MAX = 32;

interface LegRecord {
  flags: number;
  nameHash: number;
  upToDateGeneration: number;
  namePrefix: Buffer;
}

export interface DiskLogHeader {
  magic: number;
  version: number;
  nrRegions: number;
  legsMagic: number;
  legCount: number;
  generation: number;
  legs: LegRecord[];
  lostSource: LegRecord;
}

const legRecordLayout = layout.struct<LegRecord>([
  layout.u32('flags'),
  layout.u32('nameHash'),
  layout.nu64('upToDateGeneration'),
  layout.blob(LEG_NAME_PREFIX_BYTES, 'namePrefix'),
]);

export const diskLogHeaderLayout = layout.struct<DiskLogHeader>([
  layout.u32('magic'),
  layout.u32('version'),
  layout.nu64('nrRegions'),
  layout.u32('legsMagic'),
  layout.u32('legCount'),
  layout.nu64('generation'),
  layout.seq(legRecordLayout, DISK_LOG_LEGS_MAX, 'legs'),
  legRecordLayout.replicate('lostSource'),
]);
assert(diskLogHeaderLayout.span <= DISK_LOG_BITMAP_OFFSET_BYTES, 'disk log header overlaps the bitmap');

/** Size of the whole on-disk area for a region count. */
export function diskLogAreaBytes(regionCount: number): number {
  const raw = DISK_LOG_BITMAP_OFFSET_BYTES + Bitmap.storageBytes(regionCount);
  return Math.ceil(raw / DISK_LOG_BLOCK_BYTES) * DISK_LOG_BLOCK_BYTES;
}

export function fnv1a32(s: string): number {
  let h = 0x811c9dc5;
  for (const b of Buffer.from(s, 'utf8')) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** Refusal to activate: no leg of the table may serve some regions (see the header comment). */
export class LostSourceError extends ExportError {
  constructor(
    message: string,
    /** The leg that alone holds those regions ('' when the refusal is "no leg up to date"). */
    readonly holder: string,
    /** Regions whose data may exist only on `holder` (dirty in the log). */
    readonly regions: readonly number[],
    /**
     * The table's leg to list first with `sync` if the loss is accepted: recorded up to date, else catching up
     * (either holds every region the log records clean), never `holder`; null when the table has none.
     */
    readonly suggestedSource: string | null,
  ) {
    super('EIO', message);
    this.name = 'LostSourceError';
  }
}

/**
 * The restart refusal while `dirty` regions may exist only on `holder`, the lost source (single-node and
 * clustered-disk logs say it alike). `logName` names the log ("log /dev/x", "cluster log <uuid>").
 */
export function lostSourceRefusal(logName: string, holder: string, dirty: readonly number[], suggested: string | null): LostSourceError {
  return new LostSourceError(
    `${logName}: leg ${holder} was the mirror's source when it failed while regions were out of sync; ` +
      `${dirty.length} region(s) dirty in the log (${regionList(dirty)}) may exist only on it, and the other legs hold ` +
      `stale data for them. Refusing to activate (serving them from another leg would return stale data silently). ` +
      overrideAdvice(suggested),
    holder,
    dirty,
    suggested,
  );
}

/** "3, 7-9, 12" for a human, at most LOST_REGIONS_LISTED_MAX numbers. */
function regionList(regions: readonly number[]): string {
  const parts: string[] = [];
  let shown = 0;
  for (let i = 0; i < regions.length && shown < LOST_REGIONS_LISTED_MAX; i++) {
    let j = i;
    while (j + 1 < regions.length && regions[j + 1] === regions[j]! + 1) j++;
    parts.push(j > i ? `${regions[i]}-${regions[j]}` : String(regions[i]));
    shown += j - i + 1;
    i = j;
  }
  const rest = regions.length - shown;
  return parts.join(', ') + (rest > 0 ? ` and ${rest} more` : '');
}

/** The override's source: the first table leg recorded up to date, else the first catching up; not `exclude`. */
function suggestSource(header: DiskLogHeader, legDevices: readonly string[], exclude: string): string | null {
  const flagsOf = (device: string): number => legRecordOf(header, device)?.flags ?? 0;
  const usable = legDevices.filter((d) => d !== exclude);
  return usable.find((d) => (flagsOf(d) & LEG_FLAG_UP_TO_DATE) !== 0) ?? usable.find((d) => (flagsOf(d) & LEG_FLAG_CATCHING_UP) !== 0) ?? null;
}

/** How to accept the loss, for a refusal message. */
function overrideAdvice(suggested: string | null): string {
  return suggested !== null
    ? `To accept, start once with the log argument 'sync' and ${suggested} listed first (of the table's legs, the log ` +
        `records it as holding every clean region; every region is then resynced from it)`
    : `To accept, start once with the log argument 'sync' and the leg to keep listed first (every region is then ` +
        `resynced from it; the log records no leg of the table as holding the clean regions)`;
}

function recordName(rec: LegRecord): string {
  const end = rec.namePrefix.indexOf(0);
  return rec.namePrefix.subarray(0, end < 0 ? rec.namePrefix.length : end).toString('utf8');
}

/** Whether a leg record names `device` (name hash and prefix). */
function recordNames(rec: LegRecord, device: string): boolean {
  return rec.nameHash === fnv1a32(device) && rec.namePrefix.equals(namePrefix(device));
}

/** The leg records a header holds (legCount of them, at most DISK_LOG_LEGS_MAX). */
function legRecords(header: DiskLogHeader): LegRecord[] {
  return header.legs.slice(0, Math.min(header.legCount, DISK_LOG_LEGS_MAX));
}

/** `device`'s leg record in a header that has leg records, or undefined. */
export function legRecordOf(header: DiskLogHeader, device: string): LegRecord | undefined {
  return legRecords(header).find((rec) => recordNames(rec, device));
}

/**
 * The leg the lost-source record names, or null when there is none: the one of `legDevices` it matches,
 * else the name prefix it stores (a device no longer in the table).
 */
export function lostSourceOf(header: DiskLogHeader, legDevices: readonly string[]): string | null {
  if ((header.lostSource.flags & LOST_SOURCE_FLAG_VALID) === 0) return null;
  return legDevices.find((d) => recordNames(header.lostSource, d)) ?? recordName(header.lostSource);
}

const noRecord = (): LegRecord => ({ flags: 0, nameHash: 0, upToDateGeneration: 0, namePrefix: Buffer.alloc(LEG_NAME_PREFIX_BYTES) });

function namePrefix(device: string): Buffer {
  const out = Buffer.alloc(LEG_NAME_PREFIX_BYTES);
  Buffer.from(device, 'utf8').copy(out, 0, 0, LEG_NAME_PREFIX_BYTES);
  return out;
}

export interface DiskLogOptions extends BitmapLogOptions {
  /** The log device as a Leg (file, block device, or a memory leg in tests). */
  device: Leg;
}

export class DiskLog extends BitmapLog {
  readonly type = 'disk';
  readonly device: Leg;
  readonly areaBytes: number;
  private readonly area: Buffer;
  private generation = 0;
  private legGenerations: number[] = [];
  /** Generation of the activation in which the lost-source record was made. */
  private lostGeneration = 0;
  private writeFailed = false;
  private flushFailed = false;
  private flushChain: Promise<void> = Promise.resolve();
  private resumedOnce = false;
  /** resume() has run with a readable log before (the first one reads a restart's state from disk). */
  private activatedBefore = false;
  /** headerSignature() of the header bytes now in `area`; null: area holds something else (re-encode all). */
  private encodedHeader: string | null = null;

  constructor(opts: DiskLogOptions) {
    super(opts);
    this.device = opts.device;
    this.areaBytes = diskLogAreaBytes(this.regionCount);
    if (opts.device.sizeBytes < this.areaBytes) {
      throw new ExportError('ENOSPC', `log device ${opts.device.device} holds ${opts.device.sizeBytes} bytes, needs ${this.areaBytes}`);
    }
    this.area = Buffer.alloc(this.areaBytes);
  }

  async resume(activation: LogActivation): Promise<readonly LegLogState[]> {
    assert(activation.legDevices.length <= DISK_LOG_LEGS_MAX, 'too many legs for the disk log');
    this.activation = activation;
    let header: DiskLogHeader | null = null;
    this.encodedHeader = null; // the area is about to hold what the device has
    try {
      await this.device.read(this.area, 0);
      header = diskLogHeaderLayout.decode(this.area, 0);
    } catch {
      // dm: an unreadable log means every region is out of sync.
      this.writeFailed = true;
    }
    // sync/nosync are table arguments: they apply to this log's first activation only, not to a resume
    // after suspend (possibly with a reloaded leg set) of the same log.
    const mode = this.resumedOnce ? 'default' : this.syncMode;
    this.resumedOnce = true;
    const valid =
      header !== null && header.magic === DISK_LOG_MAGIC && header.version === DISK_LOG_VERSION && mode === 'default';
    const nosync = mode === 'nosync';
    if (valid) {
      this.clean.load(this.area.subarray(DISK_LOG_BITMAP_OFFSET_BYTES));
      // Regions the old log did not cover (the device grew) start dirty.
      for (let r = Math.min(header!.nrRegions, this.regionCount); r < this.regionCount; r++) this.clean.set(r, false);
    } else {
      this.clean.fill(nosync);
    }

    const legs: LegLogState[] = [];
    const catchingUp: boolean[] = [];
    const hasLegRecords = valid && header!.legsMagic === DISK_LOG_LEGS_MAGIC;
    const firstFromDisk = !this.activatedBefore;
    this.activatedBefore = true;
    if (!hasLegRecords) this.lostSourceDevice = null;
    else if (firstFromDisk && lostSourceOf(header!, activation.legDevices) !== null) {
      // A restart: refuse while regions may exist only on the lost source (dirty in the log).
      const dirty = this.dirtyRegions();
      const holder = lostSourceOf(header!, activation.legDevices)!;
      if (dirty.length > 0) {
        const suggested = suggestSource(header!, activation.legDevices, holder);
        throw lostSourceRefusal(`log ${this.device.device}`, holder, dirty, suggested);
      }
      // Nothing dirty: no region can be missing (a clean region was in sync on every leg).
    }
    this.generation = (hasLegRecords ? header!.generation : 0) + 1;
    this.legGenerations = [];
    activation.legDevices.forEach((device, i) => {
      let upToDate: boolean;
      let catching = false;
      let gen = 0;
      if (hasLegRecords) {
        const rec = legRecordOf(header!, device);
        upToDate = rec !== undefined && (rec.flags & LEG_FLAG_UP_TO_DATE) !== 0;
        catching = rec !== undefined && !upToDate && (rec.flags & LEG_FLAG_CATCHING_UP) !== 0;
        gen = rec?.upToDateGeneration ?? 0;
      } else if (valid) {
        upToDate = true; // a log written without leg records (e.g. by dm): dm's semantics, all legs equal
      } else {
        // New log: every region is dirty already; leg 0 is the source until the first full resync.
        upToDate = nosync || i === 0;
        catching = !upToDate;
      }
      legs.push({ device, upToDate });
      catchingUp.push(catching);
      this.legGenerations.push(upToDate ? this.generation : gen);
    });
    if (firstFromDisk && hasLegRecords && !legs.some((l) => l.upToDate)) {
      const known = legRecords(header!)
        .filter((rec) => (rec.flags & LEG_FLAG_UP_TO_DATE) !== 0)
        .map(recordName);
      const dirty = this.dirtyRegions();
      const suggested = suggestSource(header!, activation.legDevices, '');
      throw new LostSourceError(
        `log ${this.device.device}: no leg of the table is recorded up to date ` +
          `(${known.length ? `the log knows ${known.join(', ')} as up to date` : 'every leg the log knows failed or was catching up'}); ` +
          `refusing to activate (a stale leg would become the resync source; ${dirty.length} region(s) are dirty in ` +
          `the log${dirty.length ? `: ${regionList(dirty)}` : ''}). ${overrideAdvice(suggested)}`,
        '',
        dirty,
        suggested,
      );
    }
    this.deriveSyncState(legs, catchingUp);
    this.touchedDirtied = true; // persist the new header, generation and leg records now
    await this.flush();
    return this.legs;
  }

  /** Regions not clean in the log, ascending. */
  private dirtyRegions(): number[] {
    return this.clean.indexesOf(false);
  }

  override recordSourceLost(legIndex: number): void {
    if (this.lostSourceDevice === null) this.lostGeneration = this.generation;
    super.recordSourceLost(legIndex);
  }

  override setLegUpToDate(legIndex: number, upToDate: boolean): void {
    super.setLegUpToDate(legIndex, upToDate);
    if (upToDate) this.legGenerations[legIndex] = this.generation;
  }

  flush(): Promise<void> {
    const run = this.flushChain.then(() => this.flushOnce());
    this.flushChain = run.catch(() => undefined);
    return run;
  }

  private async flushOnce(): Promise<void> {
    if (!this.touchedCleaned && !this.touchedDirtied && !this.legsChanged) return;
    const cleaned = this.touchedCleaned;
    const dirtied = this.touchedDirtied || this.legsChanged;
    // Changes made while this flush's I/O runs set the flags again and go to the next flush.
    this.touchedCleaned = false;
    this.touchedDirtied = false;
    this.legsChanged = false;
    // Snapshot the bits BEFORE flushing the data legs: a region cleared while the data flush runs may have
    // writes (a resync copy) that this data flush does not cover; it must wait for the next flush.
    this.encodeArea();
    if (cleaned && this.activation) {
      try {
        await this.activation.flushDataLegs();
      } catch {
        // Which regions are really clean is unknown now: record all dirty (dm disk_flush).
        for (let r = 0; r < this.regionCount; r++) this.clean.set(r, false);
        this.encodeArea();
      }
    }
    try {
      await this.device.write(this.area, 0, { fua: false });
    } catch (err) {
      this.writeFailed = true;
      this.touchedDirtied ||= dirtied;
      this.touchedCleaned ||= cleaned;
      throw new ExportError('EIO', `log device ${this.device.device}: write failed: ${String(err)}`);
    }
    if (dirtied) {
      try {
        await this.device.flush();
      } catch (err) {
        this.flushFailed = true;
        this.touchedDirtied = true;
        throw new ExportError('EIO', `log device ${this.device.device}: flush failed: ${String(err)}`);
      }
    }
  }

  /** What the header (bytes 0..1023) encodes besides constants; the header is re-encoded only when it changes. */
  private headerSignature(): string {
    let sig = `${this.generation}/${this.legs.length}/${this.lostSourceDevice ?? ''}@${this.lostGeneration}`;
    for (let i = 0; i < this.legs.length; i++) {
      const l = this.legs[i]!;
      sig += `/${l.upToDate ? 1 : 0}${this.catchingUp[i] ? 1 : 0}${this.legGenerations[i] ?? 0}:${l.device}`;
    }
    return sig;
  }

  /** Build the on-disk area from memory (synchronously, so the bytes are one consistent snapshot). Leg
   *  records and bits are copied at call time, so later changes go to the next flush. The header is
   *  encoded only when its content changed (buffer-layout costs tens of microseconds; a mark flush per
   *  batch of writes must not); the bitmap is copied every time. */
  encodeArea(): Buffer {
    const sig = this.headerSignature();
    if (sig !== this.encodedHeader) {
      this.encodeHeader();
      this.encodedHeader = sig;
    }
    this.area.set(this.clean.bytes, DISK_LOG_BITMAP_OFFSET_BYTES);
    return this.area;
  }

  private encodeHeader(): void {
    this.area.fill(0);
    const legs: LegRecord[] = [];
    for (let i = 0; i < DISK_LOG_LEGS_MAX; i++) {
      const l = this.legs[i];
      legs.push(
        l
          ? {
              flags: (l.upToDate ? LEG_FLAG_UP_TO_DATE : 0) | (this.catchingUp[i] ? LEG_FLAG_CATCHING_UP : 0),
              nameHash: fnv1a32(l.device),
              upToDateGeneration: this.legGenerations[i] ?? 0,
              namePrefix: namePrefix(l.device),
            }
          : noRecord(),
      );
    }
    const lost = this.lostSourceDevice;
    diskLogHeaderLayout.encode(
      {
        magic: DISK_LOG_MAGIC,
        version: DISK_LOG_VERSION,
        nrRegions: this.regionCount,
        legsMagic: DISK_LOG_LEGS_MAGIC,
        legCount: this.legs.length,
        generation: this.generation,
        legs,
        lostSource:
          lost !== null
            ? { flags: LOST_SOURCE_FLAG_VALID, nameHash: fnv1a32(lost), upToDateGeneration: this.lostGeneration, namePrefix: namePrefix(lost) }
            : noRecord(),
      },
      this.area,
      0,
    );
  }

  override health(): LogHealthChar {
    return this.writeFailed ? 'D' : this.flushFailed ? 'F' : 'A';
  }

  status(kind: LogStatusKind): string[] {
    if (kind === 'info') return ['3', 'disk', this.device.device, this.health()];
    const args = [this.device.device, String(this.regionSizeBytes / 512)];
    if (this.syncMode !== 'default') args.push(this.syncMode);
    return ['disk', String(args.length), ...args];
  }

  override async close(): Promise<void> {
    await this.device.close();
  }
}
