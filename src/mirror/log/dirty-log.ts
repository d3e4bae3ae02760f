// The whole mirror-to-log contract, after Linux's struct dm_dirty_log_type (include/linux/dm-dirty-log.h).
// Owns: the DirtyLog interface and the small types the mirror and every log implementation share
// (core.ts, disk.ts, and the cluster log in src/cluster which implements the same table).
//
// Calls are synchronous and touch memory only, except those returning a Promise: resume() (activation:
// reads the disk log), flush() (the ONE awaited I/O per write batch), postsuspend(). A query (inSync)
// never hands out work; getResyncWork() does (it marks the region recovering in the log).
//
// Region numbers are 0 .. regionCount-1; callers validate them (implementations assert).

/** What the mirror hands the log when it activates it. */
export interface LogActivation {
  /** Table names of the data legs, in table order; the disk log matches its per-leg records by name. */
  readonly legDevices: readonly string[];
  /**
   * Flush every data leg. The log calls it inside flush() before it persists newly CLEANED bits, so a
   * region is never recorded clean while its data may still sit in a leg's volatile cache.
   */
  readonly flushDataLegs: () => Promise<void>;
}

/** Per-leg state a persistent log remembers across activations (stale-leg protection, beyond dm). */
export interface LegLogState {
  readonly device: string;
  /** false: the leg missed writes (failed, or new to the log); it must never be a resync source. */
  readonly upToDate: boolean;
}

export type LogStatusKind = 'info' | 'table';

/** Log health for the status line: A alive, D write failed, F flush failed. */
export type LogHealthChar = 'A' | 'D' | 'F';

export interface DirtyLog {
  /** 'core' | 'disk' | 'clustered-core' | 'clustered-disk' (status output). */
  readonly type: string;
  readonly regionSizeBytes: number;
  readonly regionCount: number;

  /**
   * Activation (dm: resume hook of the log). Reads the persistent state (disk log), applies sync/nosync,
   * derives the sync bits, persists the header. Resolves with the per-leg states, in legDevices order.
   */
  resume(activation: LogActivation): Promise<readonly LegLogState[]>;
  /** Before suspend: stop handing out resync work. Memory only. */
  presuspend(): void;
  /** After the mirror quiesced: persist everything (clears included). */
  postsuspend(): Promise<void>;

  /** Clean bit: the region is recorded as having no writes in flight (persistent for disk logs). */
  isClean(region: number): boolean;
  /** Sync bit: every up-to-date leg holds the same data for the region. */
  inSync(region: number): boolean;
  /** Memory only: record that writes are about to go to the region (durable after the next flush()). */
  markRegion(region: number): void;
  /** Memory only: the region is idle again; persisted lazily by a later flush(). */
  clearRegion(region: number): void;
  /**
   * Persist marks and clears since the last flush. Does I/O only when something changed; flushes the data
   * legs first when bits were newly cleaned; forces the log device's cache only when bits were newly
   * dirtied or leg states changed. At most one flush runs at a time (the mirror serialises).
   */
  flush(): Promise<void>;

  /** Hand out the next region that is not in sync and not being recovered (marks it recovering), or null. */
  getResyncWork(): number | null;
  /** End of recovery (or a failure): sets the sync bit and drops the recovering mark. Memory only. */
  setRegionSync(region: number, inSync: boolean): void;
  /** Number of regions whose sync bit is set. */
  syncCount(): number;
  /**
   * Cluster logs: an idle region's mark is cleared even while the region is out of sync (a local log keeps
   * it, as dm does: its clean bit would claim the region in sync). The group hands a region out for
   * recovery only once no other node holds a mark on it.
   */
  readonly clearsOutOfSync?: boolean;
  /**
   * Cluster logs: this node's mark on the region is in the group's state. False after a lost partition
   * merge until the marks are sent again: a write to a region already marked here then waits for the next
   * flush rather than go out unmarked as far as the group knows.
   */
  markDurable?(region: number): boolean;
  /** Cluster logs: another node is recovering this region (writes to it must wait). */
  isRemoteRecovering?(region: number): boolean;
  /** Optional notifications (cluster logs). Each returns an unsubscribe function. */
  /** New resync work may be available (call getResyncWork again). */
  onWorkAvailable?(fn: () => void): () => void;
  /** Sync / remote-recovery answers changed for these regions ('all': everything): re-check parked writes. */
  onRegionsChanged?(fn: (regions: readonly number[] | 'all') => void): () => void;
  /** The log cannot go on (e.g. cluster transport lost); flush() will reject from now on. */
  onLost?(fn: (err: Error) => void): () => void;
  /** Cluster logs: another node failed this leg (legDevices index); stop using it here too, as after a write error here. */
  onLegFailed?(fn: (legIndex: number, message: string) => void): () => void;

  /** Per-leg states as last resumed/updated (legDevices order). */
  legStates(): readonly LegLogState[];
  /** Record a leg as up to date or stale; persisted (and fsynced) by the next flush(). */
  setLegUpToDate(legIndex: number, upToDate: boolean): void;
  /**
   * The default (source) leg failed while regions were out of sync (beyond dm): those regions exist only on
   * it, and the other legs, although recorded up to date, hold stale data for them. Persisted by the next
   * flush() together with the leg's stale record; a later activation must not resync those regions from
   * another leg (the disk log refuses to activate; a resume that keeps the leg keeps them unreadable; a
   * reload without the leg, or a `sync` activation, accepts the loss). Optional: logs without leg records.
   */
  recordSourceLost?(legIndex: number): void;
  /** Device of the leg recorded by recordSourceLost, while that record stands; else null. */
  lostSource?(): string | null;
  /** True while there are unpersisted changes (marks, clears or leg-state changes). */
  hasUnflushedChanges(): boolean;

  /** 'info': the status fields (e.g. ['3', 'disk', '/log', 'A']); 'table': the log args of the table line. */
  status(kind: LogStatusKind): string[];
  health(): LogHealthChar;
  close(): Promise<void>;
}

/** How the table asked for initial sync state. */
export type SyncMode = 'default' | 'sync' | 'nosync';

/** Region arithmetic shared by the logs and the mirror. */
export function regionCountFor(lengthBytes: number, regionSizeBytes: number): number {
  return Math.ceil(lengthBytes / regionSizeBytes);
}
