// cluster-disk-area.ts — the clustered-disk log's persistent area: dm's disk-log layout on the log device,
// written by the log server only (src/mirror/log/disk.ts owns the format; this reuses its DiskLog encoding
// and flush ordering rather than duplicating them).
//
// Owns: reading the area at activation (the clean bits become the sync bits of a fresh cluster state: a
// whole-cluster restart resyncs only regions that were dirty; the per-leg records say which legs are up to
// date, catching up or stale), and writing the replicated state as clean bits = in sync AND marked by no
// node plus the cluster-wide leg records (the same records and flags the single-node disk log keeps, so a
// volume can move between clustered and single-node use), always followed by a log device flush (durable
// before the server announces it).
import type { Leg } from '../mirror/legs/leg.js';
import { Bitmap } from '../mirror/log/bitmap.js';
import {
  DISK_LOG_BITMAP_OFFSET_BYTES,
  DISK_LOG_LEGS_MAGIC,
  DISK_LOG_LEGS_MAX,
  DISK_LOG_MAGIC,
  DISK_LOG_VERSION,
  DiskLog,
  diskLogHeaderLayout,
  LEG_FLAG_CATCHING_UP,
  LEG_FLAG_UP_TO_DATE,
  legRecordOf,
  lostSourceOf,
} from '../mirror/log/disk.js';
import type { RecordedLegState } from './cluster-log-state.js';

/** What the area says at activation. */
export interface ClusterDiskState {
  /** Clean bits (regions the old log did not cover are dirty). */
  clean: Bitmap;
  /** Per leg device asked for, in that order, as recorded (undefined: no record); null: no leg records. */
  legs: Array<[string, RecordedLegState | undefined]> | null;
  /**
   * disk.ts's lost-source record: the source leg that failed while regions were out of sync (the device
   * asked for that it names, or its name prefix when none matches); null: none.
   */
  lostSource: string | null;
}

export interface ClusterDiskAreaOptions {
  device: Leg;
  regionSizeBytes: number;
  lengthBytes: number;
}

export class ClusterDiskArea extends DiskLog {
  constructor(opts: ClusterDiskAreaOptions) {
    super({ ...opts, sync: 'default' });
  }

  /**
   * The clean bits and per-leg records on the device, or null when the area is not a valid log of this
   * layout (new device, unreadable): then the caller starts with every region out of sync. Records are
   * matched to `legDevices` by name hash and prefix, as disk.ts does.
   */
  async readState(legDevices: readonly string[]): Promise<ClusterDiskState | null> {
    const area = Buffer.alloc(this.areaBytes);
    try {
      await this.device.read(area, 0);
    } catch {
      return null;
    }
    const h = diskLogHeaderLayout.decode(area, 0);
    if (h.magic !== DISK_LOG_MAGIC || h.version !== DISK_LOG_VERSION) return null;
    const clean = new Bitmap(this.regionCount);
    clean.load(area.subarray(DISK_LOG_BITMAP_OFFSET_BYTES, DISK_LOG_BITMAP_OFFSET_BYTES + clean.bytes.length));
    for (let r = Math.min(h.nrRegions, this.regionCount); r < this.regionCount; r++) clean.set(r, false);
    if (h.legsMagic !== DISK_LOG_LEGS_MAGIC) return { clean, legs: null, lostSource: null };
    const lostSource = lostSourceOf(h, legDevices);
    const legs = legDevices.map((device): [string, RecordedLegState | undefined] => {
      const rec = legRecordOf(h, device);
      if (rec === undefined) return [device, undefined];
      const st: RecordedLegState =
        (rec.flags & LEG_FLAG_UP_TO_DATE) !== 0 ? 'current' : (rec.flags & LEG_FLAG_CATCHING_UP) !== 0 ? 'catching' : 'failed';
      return [device, st];
    });
    return { clean, legs, lostSource };
  }

  /**
   * Write sync-and-unmarked as the clean bits and the legs' records, then flush the log device (rejects with
   * EIO on failure).
   */
  writeState(sync: Bitmap, marksByNode: Iterable<ReadonlySet<number>>, legs: ReadonlyArray<{ device: string; state: RecordedLegState }>): Promise<void> {
    this.clean.copyFrom(sync);
    for (const set of marksByNode) for (const r of set) this.clean.set(r, false);
    const recorded = legs.slice(0, DISK_LOG_LEGS_MAX);
    this.legs = recorded.map((l) => ({ device: l.device, upToDate: l.state === 'current' }));
    this.catchingUp = recorded.map((l) => l.state === 'catching');
    this.touchedDirtied = true; // always fsync: the server announces durability after this resolves
    return this.flush();
  }
}
