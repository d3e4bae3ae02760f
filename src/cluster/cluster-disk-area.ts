// cluster-disk-area.ts — the clustered-disk log's persistent area: dm's disk-log layout on the log device,
// written by the log server only (src/mirror/log/disk.ts owns the format; this reuses its DiskLog encoding
// and flush ordering rather than duplicating them).
//
// Owns: reading the area at activation (the clean bits become the sync bits of a fresh cluster state: a
// whole-cluster restart resyncs only regions that were dirty), and writing the replicated state as clean
// bits = in sync AND marked by no node, always followed by a log device flush (durable before the server
// announces it).
import type { Leg } from '../mirror/legs/leg.js';
import { Bitmap } from '../mirror/log/bitmap.js';
import type { LegLogState } from '../mirror/log/dirty-log.js';
import {
  DISK_LOG_BITMAP_OFFSET_BYTES,
  DISK_LOG_MAGIC,
  DISK_LOG_VERSION,
  DiskLog,
  diskLogHeaderLayout,
} from '../mirror/log/disk.js';

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
   * The clean bits on the device, or null when the area is not a valid log of this layout (new device,
   * unreadable): then the caller starts with every region out of sync. Regions the old log did not cover
   * start dirty.
   */
  async readClean(): Promise<Bitmap | null> {
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
    return clean;
  }

  /** Write sync-and-unmarked as the clean bits, then flush the log device (rejects with EIO on failure). */
  writeState(sync: Bitmap, marksByNode: Iterable<ReadonlySet<number>>, legs: readonly LegLogState[]): Promise<void> {
    this.clean.copyFrom(sync);
    for (const set of marksByNode) for (const r of set) this.clean.set(r, false);
    this.legs = legs.map((l) => ({ ...l }));
    this.catchingUp = legs.map(() => false);
    this.touchedDirtied = true; // always fsync: the server announces durability after this resolves
    return this.flush();
  }
}
