// cluster-log.ts — the clustered dirty log (LVM cmirror's "clustered-core") as a replicated state machine
// over a totally ordered Transport (corosync CPG in production, MemoryBus in simulations).
//
// Owns: this node's side of one log's group: joining and getting the state (fresh start or checkpoint),
// the local intent (marks/clears not yet flushed, sync results not yet delivered, the resync region
// handed to the local mirror), sending requests, applying delivered requests and membership changes
// to the ReplicatedLogState, sending checkpoints when this member is the log server, and failing
// closed (flush rejects) when the transport is lost or the node is not quorate.
//
// Semantics (spec section 7, improved where LVM's cmirrord fell short):
//  - markRegion/clearRegion are local until flush(): one FLUSH request carries them (integrated flush);
//    flush() resolves when that request came back in the total order AND members making a majority of
//    the group (counting this one) acknowledged applying it (FLUSH_ACK). Extended virtual synchrony
//    delivers a partitioned member's own messages to it in the transitional configuration, before it
//    learns about the split: without the acknowledgements a minority would acknowledge writes whose
//    marks the majority never saw (and purges with the node). After members vanish from the network
//    (NODEDOWN), flushes also wait until corosync's quorum view no longer lists them, then fail with EIO
//    if this side is not quorate.
//  - isClean(region): this node holds no mark. The cluster-wide view (no node's mark) is
//    isCleanClusterWide(region).
//  - One region is recovered cluster-wide at a time: getResyncWork() asks the group (GET_RESYNC_WORK)
//    and returns null until the assignment comes back; onWorkAvailable fires then.
//  - Writes to a region that is not in sync wait on every node until it is recovered
//    (isRemoteRecovering true), and ask the group to recover that region next (priority).
//  - Log server = lowest initialized member (node id, then pid), recomputed on every change; it sends
//    the checkpoint (sync bits, marks, recovering region and recoverer, ...) to joining members.
//  - A departed node's marks are purged and those regions set out of sync; its recovery claim released.
//    Every member reports it (event `cluster-node-left`: the regions that went out of sync because of it)
//    and, once all of them were set in sync again by any node, `cluster-node-resynced` (the regions
//    recovered, which of them here, by whom, how long): departures.ts defines the sets.
//  - Leg sets (cluster-log-state.ts): resume() announces this member's data legs (LEGS) and returns once
//    that announcement was applied. A leg new to the log sets every region out of sync once; recovery
//    waits until every member runs on the same legs, and so do writes (isRemoteRecovering) while the sets
//    differ, so that no node reads a leg another node no longer writes (event cluster-legs).
//  - Partition merge (members come back with reason NODEUP): a side with more members than all the
//    others together (tie between two sides: the lower lowest node id) keeps its state; the other sides
//    re-take it from a checkpoint and re-send their local marks. If no side qualifies (3+ sides, none
//    larger than the rest), every member announces MERGE_WAITING and, once all have, all start over
//    with every region out of sync (a full resync, whatever the sync mode).
//  - Messages sent in a view are delivered in that view (virtual synchrony, as CPG/EVS provides and
//    the memory bus emulates); the checkpoint/epoch logic relies on it.
//  - clustered-disk (logDevice given): the log server writes the state to the log device in dm's disk-log
//    layout (cluster-disk-area.ts): clean bit = in sync and marked by no node. A FLUSH carrying marks
//    resolves only after the server announced (DISK_DONE) a durable write of a snapshot taken at a
//    DISK_MARK ordered after that FLUSH; clears and sync results are written lazily (next write, or a
//    timer). A new server (failover) re-marks and re-writes at once, covering every pending flush. The
//    first member(s) of a group, having no checkpoint, take the sync bits from the device's clean bits.
//    Each node flushes its own data legs before it sends clears (a clean bit never covers cached data).
//  - Stale legs (cluster-log-state.ts): a leg this node's mirror fails (setLegUpToDate false) is announced at
//    once (LEG_FAILED); every member, on delivery, fails it in its own mirror (onLegFailed) before it
//    acknowledges, and the next flush() resolves only once EVERY member acknowledged (and, clustered-disk,
//    the record is durable): a write that missed the leg is acknowledged only when no node reads the leg any
//    more, nor copies onto it as if it were current. The leg stays failed on every node while the group lives
//    (a member that joins or resumes fails it too); it comes back through a whole-cluster restart or a repair
//    and re-add. clustered-disk records the legs (up to date / catching up / stale) in disk.ts's leg records;
//    a whole-cluster start takes them from there: a leg that was stale never becomes the source and is resynced
//    in full from an up-to-date one; records naming no leg of the table up to date (the source failed while
//    regions were out of sync) are refused unless the table says `sync`.
// One member per node per log (marks are kept per node id).
import { ExportError } from '../nbd/export.js';
import type {
  DirtyLog,
  LegLogState,
  LogActivation,
  LogHealthChar,
  LogStatusKind,
  SyncMode,
} from '../mirror/log/dirty-log.js';
import { regionCountFor } from '../mirror/log/dirty-log.js';
import {
  checkpointOverheadBytes,
  ClusterLogRequest as Req,
  decodeMessage,
  encodeMessage,
  flushMessageBytes,
  type CheckpointTarget,
  type ClusterLogMessage,
} from './cluster-log-codec.js';
import type { Leg } from '../mirror/legs/leg.js';
import type { Bitmap } from '../mirror/log/bitmap.js';
import { lostSourceRefusal } from '../mirror/log/disk.js';
import { ClusterDiskArea } from './cluster-disk-area.js';
import { compareMembers, memberKey, ReplicatedLogState, type DepartedNode, type LegSeed, type RecordedLegState } from './cluster-log-state.js';
import { describeWaits, type PendingFlush, type PendingWaits } from './cluster-log-waits.js';
import { DepartureTracker, type DepartureLimits, type DepartureResynced } from './departures.js';
import {
  ChangeReason,
  changeReasonName,
  Listeners,
  type ConfigChange,
  type Delivery,
  type Member,
  type Transport,
  type Unsubscribe,
} from './transport.js';

export interface ClusterLogLimits {
  /** resume() fails if joining + getting the state takes longer. */
  resumeTimeoutMs: number;
  /** Events buffered while waiting for a checkpoint before the log gives up (bounded memory). */
  waitBufferEventsMax: number;
  /** clustered-disk: the server writes clears / sync results at most this long after they were applied. */
  diskLazyWriteMs: number;
}
export const CLUSTER_LOG_LIMITS_DEFAULT: ClusterLogLimits = {
  resumeTimeoutMs: 60_000,
  waitBufferEventsMax: 1_000_000,
  diskLazyWriteMs: 1_000,
};

export interface ClusterLogOptions {
  transport: Transport;
  /** Log uuid (the table's); the group is `nbdm-log:<uuid>`. */
  uuid: string;
  regionSizeBytes: number;
  lengthBytes: number;
  sync: SyncMode;
  /** Table's integrated_flush flag (status/table output only: marks always travel with the flush). */
  integratedFlush?: boolean;
  /** When given and false, flush() fails with EIO: an inquorate partition must not acknowledge writes. */
  isQuorate?: () => boolean;
  /**
   * Corosync's quorum view changes (ring node ids). When given, a flush pending across a membership
   * change that lost nodes (NODEDOWN) completes only once a quorum view without those nodes arrived.
   */
  onQuorumChange?: (fn: (view: { quorate: boolean; nodeIds: readonly number[] }) => void) => Unsubscribe;
  limits?: Partial<ClusterLogLimits>;
  /** clustered-disk: the shared log device (the server writes it; the first member reads it). */
  logDevice?: Leg;
  /** The volume's event stream (the mirror's sink): cluster-node-left / cluster-node-resynced go there. */
  events?: ClusterLogEventSink;
  departureLimits?: Partial<DepartureLimits>;
}

/** Anything with emit(name, payload) (the mirror's MirrorEventSink shape). */
export interface ClusterLogEventSink {
  emit(name: string, payload: unknown): unknown;
}

/** A node's last member left the group: what it left out of sync (departures.ts defines the sets). */
export interface NodeLeftEvent {
  uuid: string;
  nodeId: number;
  /** Why its members left (corosync's reason names, e.g. NODEDOWN, PROCDOWN, LEAVE). */
  reason: string;
  /** Regions that went out of sync because it left (its marks that were in sync), as range text. */
  regions: string;
  regionCount: number;
  bytes: number;
  /** Its marks on regions that were already out of sync (resynced anyway). */
  markedOutOfSyncCount: number;
  /** The region it was recovering (released to the others), or null. */
  released: number | null;
  /** Log server after the change (node id), null if none. */
  serverNodeId: number | null;
  /** Regions out of sync cluster-wide after the change. */
  outOfSyncRegions: number;
}

/** Every region a departed node left out of sync was set in sync again (by any node). */
export interface NodeResyncedEvent {
  uuid: string;
  nodeId: number;
  /** Regions recovered since it left (= its purged regions + the released one), as range text. */
  regions: string;
  regionCount: number;
  bytes: number;
  /** The part this node recovered itself. */
  recoveredHere: string;
  recoveredHereCount: number;
  recoveredHereBytes: number;
  /** Recoverer node id -> regions (0: found in sync after re-taking the state). */
  recoveredBy: Record<string, number>;
  /** From the membership change to the last region set in sync. */
  ms: number;
}

/** The members' leg sets started or stopped differing (writes wait on every node while they differ). */
export interface LegsEvent {
  uuid: string;
  agreed: boolean;
  /** Node id -> the legs its member announced (null: not yet). */
  legs: Record<string, string[] | null>;
}

export interface ClusterLogEventMap {
  'cluster-legs': LegsEvent;
  'cluster-node-left': NodeLeftEvent;
  'cluster-node-resynced': NodeResyncedEvent;
}

interface FlushWaiter {
  resolve: () => void;
  reject: (e: Error) => void;
  /** The FLUSH came back to this member in the total order. */
  delivered: boolean;
  /** Members (memberKey) that acknowledged applying it. */
  acks: Set<string>;
  /**
   * Members (memberKey) that joined the group (JOIN, not a partition merge) after it came back: they took a
   * state that already includes it, so they count as having acknowledged it.
   */
  joinedAfter: Set<string>;
  /** clustered-disk: carries marks, so it waits for the server's durable write. */
  needsDisk: boolean;
  durable: boolean;
  /** `${serverKey}:${markSeq}` of the DISK_MARK whose write covers it. */
  coveredBy: string | null;
  /** Needs an acknowledgement from every other member of the view (LEG_FAILED), not a majority. */
  ackAll: boolean;
  sentAtMs: number;
}

type Buffered = { kind: 'conf'; c: ConfigChange; index: number } | { kind: 'msg'; from: Member; m: ClusterLogMessage };

export class ClusterLog implements DirtyLog {
  readonly type: 'clustered-core' | 'clustered-disk';
  readonly regionSizeBytes: number;
  readonly regionCount: number;
  readonly group: string;
  private readonly t: Transport;
  private readonly opts: ClusterLogOptions;
  private readonly limits: ClusterLogLimits;
  private readonly me: Member;

  // replicated state (null until this member holds it)
  private state: ReplicatedLogState | null = null;
  // joining / waiting for a checkpoint
  private joinRequested = false;
  private joinSeen = false;
  private confIndex = 0;
  private readonly joinIndex = new Map<string, number>();
  private buffer: Buffered[] = [];
  private readonly assembling = new Map<string, Buffer[]>();
  private initWaiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  /** Set after losing a partition merge: who announced MERGE_WAITING since (null: not in that mode). */
  private mergeWaiting: Set<string> | null = null;
  private lastView: Member[] = [];

  // local intent
  private readonly localMarks = new Set<number>();
  private readonly pendingOps = new Map<number, 'mark' | 'clear'>();
  private readonly overlay = new Map<number, { inSync: boolean; seq: number }>();
  private handedOut: number | null = null;
  private workRequested = false;
  private readonly hinted = new Set<number>();
  private seq = 0;
  private checkpointId = 0;
  private readonly flushWaiters = new Map<number, FlushWaiter>();
  /** Own LEGS announcements (by seq) not yet delivered back. */
  private readonly legsWaiters = new Map<number, { resolve: () => void; reject: (e: Error) => void; devices: string[]; sentAtMs: number }>();
  /** Nodes that left with NODEDOWN and are still in the last quorum view (split side not known yet). */
  private readonly suspectNodes = new Set<number>();
  private quorumNodeIds: ReadonlySet<number> | null = null;

  private legs: LegLogState[] = [];
  private legsChanged = false;
  private resumedOnce = false;
  private suspended = false;
  private failure: Error | null = null;
  private closed = false;
  private readonly unsubs: Unsubscribe[] = [];
  private activation: LogActivation | null = null;

  // clustered-disk
  private readonly disk: ClusterDiskArea | null;
  /** Clean bits read at activation (sync bits of a fresh state), null: none / not a disk log. */
  private diskClean: Bitmap | null = null;
  /** How a fresh state started by this member decides the stale legs (from the log device, or the sync mode). */
  private legSeed: LegSeed = { mode: 'first' };
  /** This member started the state (whole-cluster start) with legSeed. */
  private seededHere = false;
  /** The log device's lost-source record, when regions are dirty there (they may exist only on that leg). */
  private diskLostSource: string | null = null;
  /** The regions dirty on the log device with diskLostSource (they may exist only on that leg). */
  private diskLostRegions: number[] = [];
  /** Server: a DISK_MARK of ours is on its way (not yet delivered back). */
  private diskMarkSent = false;
  /** Server: a write is running. */
  private diskWriting = false;
  /** Server: state changed (marks) after the last marker was delivered: mark again after this write. */
  private diskAgain = false;
  private diskLazyTimer: NodeJS.Timeout | null = null;
  private wasServer = false;

  /** SET_REGION_SYNC messages, sent in call order (an in-sync result waits for a data flush first). */
  private syncResults: Promise<void> = Promise.resolve();
  private readonly workL = new Listeners<void>();
  private readonly regionsL = new Listeners<readonly number[] | 'all'>();
  private readonly lostL = new Listeners<Error>();
  private readonly membershipL = new Listeners<{ members: Member[]; server: Member | undefined }>();
  private readonly repairL = new Listeners<{ removed: string[]; added: string[]; from: Member; fromMe: boolean }>();
  private readonly legFailedL = new Listeners<{ legIndex: number; message: string }>();
  /** Devices this member's mirror failed (re-announced if a re-taken state does not have them failed). */
  private readonly failedHere = new Set<string>();
  /** Own LEG_FAILED announcements not yet acknowledged by every member (flush() waits for them). */
  private readonly legFailPending = new Set<Promise<void>>();
  private readonly eventL = new Listeners<{ [K in keyof ClusterLogEventMap]: { name: K; payload: ClusterLogEventMap[K] } }[keyof ClusterLogEventMap]>();
  private readonly departures: DepartureTracker;
  /** Leg agreement last seen, and whether a difference was reported (cluster-legs event). */
  private legsAgreedSeen = true;
  private legsDifferReported = false;

  constructor(opts: ClusterLogOptions) {
    if (!Number.isSafeInteger(opts.regionSizeBytes) || opts.regionSizeBytes <= 0) throw new RangeError('regionSizeBytes');
    if (!Number.isSafeInteger(opts.lengthBytes) || opts.lengthBytes <= 0) throw new RangeError('lengthBytes');
    this.opts = opts;
    this.t = opts.transport;
    this.limits = { ...CLUSTER_LOG_LIMITS_DEFAULT, ...opts.limits };
    this.regionSizeBytes = opts.regionSizeBytes;
    this.regionCount = regionCountFor(opts.lengthBytes, opts.regionSizeBytes);
    this.group = `nbdm-log:${opts.uuid}`;
    this.disk = opts.logDevice
      ? new ClusterDiskArea({ device: opts.logDevice, regionSizeBytes: opts.regionSizeBytes, lengthBytes: opts.lengthBytes })
      : null;
    this.type = this.disk ? 'clustered-disk' : 'clustered-core';
    this.me = { nodeId: this.t.localNodeId, pid: this.t.localPid };
    this.departures = new DepartureTracker(opts.departureLimits);
    this.unsubs.push(
      this.t.onDeliver((d) => this.onDeliver(d)),
      this.t.onConfigChange((c) => this.onConfig(c)),
      this.t.onLost((e) => this.fail(new ExportError('EIO', `cluster log ${opts.uuid}: ${e.message}`))),
    );
    if (opts.onQuorumChange) {
      this.unsubs.push(
        opts.onQuorumChange((v) => {
          this.quorumNodeIds = new Set(v.nodeIds);
          for (const n of [...this.suspectNodes]) if (!this.quorumNodeIds.has(n)) this.suspectNodes.delete(n);
          this.settleFlushes();
          if (this.state && !this.sideUnsafe()) {
            this.regionsL.emit('all'); // writes parked while the side was unknown / inquorate re-check
            this.workL.emit(); // resync may go on
            if (this.disk && this.isServer(this.state)) this.diskRequestWrite(); // writes skipped while unsafe
          }
        }),
      );
    }
  }

  // ---- notifications for the mirror ---------------------------------------------------------------
  /** New resync work may be available to this node (call getResyncWork again). */
  onWorkAvailable(fn: () => void): Unsubscribe {
    return this.workL.add(fn);
  }
  /**
   * These regions' sync / remote-recovery answers changed: parked writes must re-check ('all': the whole
   * state was (re)taken, e.g. after a partition merge).
   */
  onRegionsChanged(fn: (regions: readonly number[] | 'all') => void): Unsubscribe {
    return this.regionsL.add(fn);
  }
  /** The log cannot go on (transport lost): stop acknowledging writes. */
  onLost(fn: (e: Error) => void): Unsubscribe {
    return this.lostL.add(fn);
  }
  /** A cluster-wide repair was requested (REPAIR delivered, own ones included with fromMe). */
  onRepair(fn: (r: { removed: string[]; added: string[]; from: Member; fromMe: boolean }) => void): Unsubscribe {
    return this.repairL.add(fn);
  }
  /**
   * Ask every node serving this log to repair its volume by dropping these leg devices (each node's
   * control plane applies it: suspend --noflush, reload, resume). Resolves once handed to the transport.
   */
  async requestRepair(removed: readonly string[], added: readonly string[] = []): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.closed) throw new ExportError('EIO', 'cluster log closed');
    await this.send({ type: Req.REPAIR, seq: 0, removed: [...removed], added: [...added] });
  }
  /** A leg failed cluster-wide (by any node, this one included): the mirror stops using it (DirtyLog hook). */
  onLegFailed(fn: (legIndex: number, message: string) => void): Unsubscribe {
    return this.legFailedL.add(({ legIndex, message }) => fn(legIndex, message));
  }
  onMembership(fn: (m: { members: Member[]; server: Member | undefined }) => void): Unsubscribe {
    return this.membershipL.add(fn);
  }
  /** Departure events (also sent to opts.events, the volume's event stream). */
  onEvent(fn: (e: { [K in keyof ClusterLogEventMap]: { name: K; payload: ClusterLogEventMap[K] } }[keyof ClusterLogEventMap]) => void): Unsubscribe {
    return this.eventL.add(fn);
  }
  /** Departed nodes whose regions are not all recovered yet: node id -> regions still out of sync. */
  departuresPending(): Map<number, number[]> {
    return this.departures.pending();
  }

  /** What this member waits for from the group (own messages not back or not acknowledged, leg sets, quorum). */
  pendingWaits(): PendingWaits {
    const s = this.state;
    const viewNodes = this.lastView.filter((m) => !this.isMe(m));
    const flushes: PendingFlush[] = [...this.flushWaiters].map(([seq, w]) => ({
      kind: w.ackAll ? 'LEG_FAILED' : 'FLUSH',
      seq,
      sentAtMs: w.sentAtMs,
      delivered: w.delivered,
      acks: viewNodes.filter((m) => this.hasAcked(w, memberKey(m))).length,
      acksNeeded: w.ackAll ? viewNodes.length : Math.floor(this.lastView.length / 2),
      notAckedBy: viewNodes.filter((m) => !this.hasAcked(w, memberKey(m))).map((m) => m.nodeId),
      durableWriteBy: w.needsDisk && !w.durable ? (s?.server()?.nodeId ?? null) : null,
    }));
    const legSets =
      s && !s.legsAgreed()
        ? s.members.filter((m) => s.initialized.has(memberKey(m))).map((m) => ({ nodeId: m.nodeId, devices: s.legsByMember.get(memberKey(m)) ?? null }))
        : null;
    return {
      group: this.group,
      state: s ? null : { joined: this.joinSeen },
      legs: [...this.legsWaiters].map(([seq, l]) => ({ seq, devices: l.devices, sentAtMs: l.sentAtMs })),
      flushes,
      legSets,
      suspectNodes: [...this.suspectNodes],
      quorate: this.opts.isQuorate ? this.opts.isQuorate() : null,
    };
  }
  /** pendingWaits as sentences (see cluster-log-waits.ts); empty when waiting for nothing. */
  waitingFor(): string[] {
    return describeWaits(this.pendingWaits(), Date.now());
  }

  /** True once this member holds the replicated state. */
  get initialized(): boolean {
    return this.state !== null;
  }
  /** Current members of the log's group (empty until initialized). */
  get members(): Member[] {
    return this.state ? [...this.state.members] : [];
  }
  /** This member is the log server. */
  get isLogServer(): boolean {
    const s = this.state;
    return s !== null && this.isServer(s);
  }
  /** The log server (lowest initialized member), if known. */
  get server(): Member | undefined {
    return this.state?.server();
  }
  /** Replicated state digest (tests). */
  digest(): string | null {
    return this.state?.digest() ?? null;
  }
  /** The replicated state, read-only use (tests, status). */
  get replicated(): ReplicatedLogState | null {
    return this.state;
  }

  // ---- DirtyLog -----------------------------------------------------------------------------------
  async resume(activation: LogActivation): Promise<readonly LegLogState[]> {
    if (this.failure) throw this.failure;
    this.activation = activation;
    if (!this.joinRequested) {
      // Read before joining: only a member that finds no state holder (whole-cluster start) uses it, and
      // nobody writes the device while no server exists.
      this.legSeed = this.opts.sync === 'nosync' ? { mode: 'equal' } : { mode: 'first' };
      if (this.disk && this.opts.sync === 'default') {
        const found = await this.disk.readState(activation.legDevices);
        if (found) {
          this.diskClean = found.clean;
          if (found.lostSource !== null && found.clean.population() < this.regionCount) {
            this.diskLostSource = found.lostSource;
            this.diskLostRegions = found.clean.indexesOf(false);
          }
          // A log written without leg records (dm): every leg holds the data, as disk.ts reads it.
          this.legSeed = found.legs
            ? { mode: 'records', legs: found.legs.filter((l): l is [string, RecordedLegState] => l[1] !== undefined) }
            : { mode: 'equal' };
        }
      }
      this.joinRequested = true;
      const ready = this.waitInitialized();
      ready.catch(() => undefined); // observed below; a failed join must not leave it unhandled
      await this.t.join(this.group);
      await ready;
    } else if (!this.state) {
      await this.waitInitialized();
    }
    if (!this.resumedOnce) {
      this.refuseForeignLegs(activation.legDevices);
      this.refuseWithoutCurrentLeg(activation.legDevices);
    }
    // Our legs must be in the replicated state before the mirror looks at it: a leg new to the log makes
    // every region out of sync, and the mirror must not see it "in sync" (and record the new leg up to
    // date) in between.
    await this.announceLegs();
    // Up to date = not stale cluster-wide (a new leg, one back after a restart, or a failed one is not).
    const s = this.state!;
    this.legs = activation.legDevices.map((device) => ({ device, upToDate: s.knownLegs.has(device) && !s.staleLegs.has(device) }));
    if (this.resumedOnce) this.legsChanged = true;
    this.resumedOnce = true;
    this.suspended = false;
    // A leg failed cluster-wide stays failed here too (a reload resets the mirror's leg health).
    this.applyFailedLegs(s.staleLegs, 'failed cluster-wide');
    return this.legs;
  }

  /** Fail in this node's mirror every leg of its table that `stale` lists as failed. */
  private applyFailedLegs(stale: ReadonlyMap<string, string>, why: string): void {
    const devices = this.activation?.legDevices ?? [];
    devices.forEach((d, i) => {
      if (stale.get(d) === 'failed') this.legFailedL.emit({ legIndex: i, message: `leg ${d} ${why}` });
    });
  }

  /**
   * Tell every member this node failed these legs (LEG_FAILED). The promise (kept in legFailPending, which
   * flush() awaits) resolves once it came back, every other member acknowledged applying it, and
   * (clustered-disk) the record is durable.
   */
  private announceLegFailed(devices: readonly string[], again = false): void {
    const seq = ++this.seq;
    const p = this.deliveredPromise(seq, this.disk !== null, true);
    const tracked = p.finally(() => this.legFailPending.delete(tracked));
    tracked.catch(() => undefined); // flush() reports it
    this.legFailPending.add(tracked);
    this.sendWithSeq({ type: Req.LEG_FAILED, seq, devices: [...devices], ...(again ? { again: true as const } : {}) }).catch((e: unknown) => {
      const w = this.flushWaiters.get(seq);
      this.flushWaiters.delete(seq);
      w?.reject(e instanceof ExportError ? e : new ExportError('EIO', `cluster log: leg failure not sent: ${String(e)}`));
    });
  }

  /**
   * A node joining with other legs than the ones every running node agrees on (a node restarted with its
   * old table after a repair, or legs named differently) would stop every write in the cluster (they wait
   * while the sets differ) and, before that rule, read legs the others no longer write: refuse it.
   * While the running nodes differ among themselves (a repair in progress) the join is allowed.
   */
  private refuseForeignLegs(mine: readonly string[]): void {
    const s = this.state!;
    const sets = s.members
      .filter((m) => !this.isMe(m) && s.initialized.has(memberKey(m)))
      .map((m) => s.legsByMember.get(memberKey(m)));
    if (sets.length === 0 || sets.some((x) => x === undefined)) return;
    const key = (d: readonly string[]) => [...d].sort().join('\n');
    const ref = key(sets[0]!);
    if (!sets.every((x) => key(x!) === ref) || key(mine) === ref) return;
    throw new ExportError(
      'EINVAL',
      `cluster log ${this.opts.uuid}: this node's table has the legs ${mine.join(' ')}, the running nodes use ${sets[0]!.join(' ')}; ` +
        `every node must name the same legs (load the cluster's current table here)`,
    );
  }

  /**
   * A whole-cluster start from leg records that name no leg of the table up to date (the source failed
   * while regions were out of sync, or every leg failed): the regions out of sync exist on no leg the
   * mirror could use, and picking one would serve stale data silently. Refused, as the single-node disk
   * log does; `sync` (resync everything from the first leg) is the override.
   */
  private refuseWithoutCurrentLeg(devices: readonly string[]): void {
    const seed = this.legSeed;
    if (!this.seededHere || seed.mode !== 'records') return;
    if (this.diskLostSource !== null) {
      const holder = this.diskLostSource;
      const stateOf = new Map(seed.legs);
      const usable = devices.filter((d) => d !== holder);
      const suggested = usable.find((d) => stateOf.get(d) === 'current') ?? usable.find((d) => stateOf.get(d) === 'catching') ?? null;
      throw lostSourceRefusal(`cluster log ${this.opts.uuid}`, holder, this.diskLostRegions, suggested);
    }
    const current = new Set(seed.legs.filter(([, st]) => st === 'current').map(([d]) => d));
    if (devices.some((d) => current.has(d))) return;
    const recorded = new Map(seed.legs);
    throw new ExportError(
      'EIO',
      `cluster log ${this.opts.uuid}: no leg of the table is recorded up to date on the log device ` +
        `(${devices.map((d) => `${d}: ${recorded.get(d) ?? 'unknown'}`).join(', ')}); the regions that were out of sync ` +
        `exist only on a leg that failed. To accept losing them, serve once with the \`sync\` log argument ` +
        `(a full resync from the first leg of the table).`,
    );
  }

  /**
   * Tell the group which data legs this member runs on (a leg new to the log makes every region resync).
   * Resolves when the announcement came back in the total order (applied here), bounded by
   * resumeTimeoutMs; rejects when the log fails.
   */
  private announceLegs(): Promise<void> {
    if (!this.activation || !this.state || this.failure || this.closed) return Promise.resolve();
    const seq = ++this.seq;
    const devices = [...this.activation.legDevices];
    const back = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        const waits = this.waitingFor().join('; ');
        this.legsWaiters.delete(seq);
        reject(new ExportError('EIO', `cluster log ${this.opts.uuid}: leg announcement (LEGS seq ${seq}) not delivered in ${this.limits.resumeTimeoutMs} ms; waiting for: ${waits}`));
      }, this.limits.resumeTimeoutMs);
      timer.unref?.();
      this.legsWaiters.set(seq, {
        devices,
        sentAtMs: Date.now(),
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
    });
    this.sendWithSeq({ type: Req.LEGS, seq, devices }).catch((e: unknown) => {
      this.legsWaiters.get(seq)?.reject(e instanceof Error ? e : new Error(String(e)));
      this.legsWaiters.delete(seq);
    });
    return back;
  }

  private waitInitialized(): Promise<void> {
    if (this.state) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.initWaiters = this.initWaiters.filter((w) => w !== waiter);
        reject(new ExportError('EIO', `cluster log ${this.opts.uuid}: no state after ${this.limits.resumeTimeoutMs} ms (${this.waitingFor().join('; ')})`));
      }, this.limits.resumeTimeoutMs);
      timer.unref?.();
      const waiter = {
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this.initWaiters.push(waiter);
    });
  }

  presuspend(): void {
    this.suspended = true;
  }

  async postsuspend(): Promise<void> {
    await this.flush();
  }

  /** DirtyLog: marks on regions out of sync are cleared too (the clean bit on disk stays 0 for them). */
  readonly clearsOutOfSync = true;

  isClean(region: number): boolean {
    return !this.localMarks.has(region);
  }

  markDurable(region: number): boolean {
    return this.state?.marksByNode.get(this.me.nodeId)?.has(region) ?? false;
  }

  isCleanClusterWide(region: number): boolean {
    return this.state ? this.state.isCleanClusterWide(region) && !this.localMarks.has(region) : false;
  }

  inSync(region: number): boolean {
    const o = this.overlay.get(region);
    if (o) return o.inSync;
    return this.state ? this.state.sync.get(region) : false;
  }

  markRegion(region: number): void {
    if (this.localMarks.has(region)) return;
    this.localMarks.add(region);
    this.pendingOps.set(region, 'mark');
  }

  clearRegion(region: number): void {
    if (!this.localMarks.has(region)) return;
    this.localMarks.delete(region);
    this.pendingOps.set(region, 'clear');
  }

  async flush(): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.closed) throw new ExportError('EIO', 'cluster log closed');
    this.legsChanged = false;
    if (this.pendingOps.size === 0 && this.legFailPending.size === 0) return;
    this.checkQuorate();
    if (!this.state) {
      if (!this.joinRequested) throw new ExportError('EIO', `cluster log ${this.opts.uuid}: not active`);
      // Re-taking the state after a partition merge: wait for it (bounded by resumeTimeoutMs).
      await this.waitInitialized();
    }
    // Leg failures first: a write that missed a leg is acknowledged only once every node stopped using it.
    const legFailures = [...this.legFailPending];
    if (this.pendingOps.size === 0) {
      await Promise.all(legFailures);
      return;
    }
    const marks: number[] = [];
    const clears: number[] = [];
    for (const [r, op] of this.pendingOps) (op === 'mark' ? marks : clears).push(r);
    this.pendingOps.clear();
    if (this.disk && clears.length > 0 && this.activation) {
      // The server may record these regions clean: their data must not sit in a leg's volatile cache.
      try {
        await this.activation.flushDataLegs();
      } catch {
        for (const r of clears) if (!this.localMarks.has(r) && !this.pendingOps.has(r)) this.pendingOps.set(r, 'clear');
        clears.length = 0;
      }
    }
    // Split so no message exceeds the transport's limit.
    const perMessage = Math.max(1, Math.floor((this.t.messageBytesMax - flushMessageBytes(0)) / 4));
    const all: Array<['m' | 'c', number]> = [...marks.map((r): ['m', number] => ['m', r]), ...clears.map((r): ['c', number] => ['c', r])];
    let last: Promise<void> = Promise.resolve();
    try {
      for (let i = 0; i < all.length; i += perMessage) {
        const part = all.slice(i, i + perMessage);
        const seq = ++this.seq;
        last = this.deliveredPromise(seq, this.disk !== null && part.some(([k]) => k === 'm'));
        await this.t.mcast(
          encodeMessage({
            type: Req.FLUSH,
            seq,
            marks: part.filter(([k]) => k === 'm').map(([, r]) => r),
            clears: part.filter(([k]) => k === 'c').map(([, r]) => r),
          }),
        );
      }
    } catch (err) {
      // Put the intent back so a later flush retries it (the mirror decides what failing means).
      for (const r of marks) if (this.localMarks.has(r) && !this.pendingOps.has(r)) this.pendingOps.set(r, 'mark');
      for (const r of clears) if (!this.localMarks.has(r) && !this.pendingOps.has(r)) this.pendingOps.set(r, 'clear');
      throw err instanceof ExportError ? err : new ExportError('EIO', `cluster log flush: ${(err as Error).message}`);
    }
    await Promise.all([last, ...legFailures]);
  }

  /** Members vanished from the network and the quorum view has not settled, or this side is inquorate. */
  private sideUnsafe(): boolean {
    return this.suspectNodes.size > 0 || (this.opts.isQuorate !== undefined && !this.opts.isQuorate());
  }

  private checkQuorate(): void {
    if (this.opts.isQuorate && !this.opts.isQuorate()) {
      throw new ExportError('EIO', `cluster log ${this.opts.uuid}: this node is not quorate`);
    }
  }

  /** The member acknowledged the request, or joined after it came back (its state includes it). */
  private hasAcked(w: FlushWaiter, key: string): boolean {
    return w.acks.has(key) || w.joinedAfter.has(key);
  }

  private isMeKey(key: string): boolean {
    return key === memberKey(this.me);
  }

  private deliveredPromise(seq: number, needsDisk: boolean, ackAll = false): Promise<void> {
    return new Promise<void>((resolve, reject) =>
      this.flushWaiters.set(seq, {
        resolve,
        reject,
        delivered: false,
        acks: new Set(),
        joinedAfter: new Set(),
        needsDisk,
        durable: false,
        coveredBy: null,
        ackAll,
        sentAtMs: Date.now(),
      }),
    );
  }

  /**
   * Completes the flushes that came back, were acknowledged by a majority of the current group and whose
   * split side is known (no suspect node left); an inquorate side fails them with EIO.
   */
  private settleFlushes(): void {
    if (this.flushWaiters.size === 0 || this.suspectNodes.size > 0) return;
    const view = new Set(this.lastView.map(memberKey));
    const majority = Math.floor(this.lastView.length / 2);
    for (const [seq, w] of this.flushWaiters) {
      if (!w.delivered) continue;
      if (w.needsDisk && !w.durable) continue;
      let acks = 0;
      for (const k of view) if (!this.isMeKey(k) && this.hasAcked(w, k)) acks++;
      if (acks < (w.ackAll ? this.lastView.length - 1 : majority)) continue;
      this.flushWaiters.delete(seq);
      if (this.opts.isQuorate && !this.opts.isQuorate()) {
        w.reject(new ExportError('EIO', `cluster log ${this.opts.uuid}: this node is not quorate`));
      } else {
        w.resolve();
      }
    }
  }

  getResyncWork(): number | null {
    const s = this.state;
    if (!s || this.suspended || this.failure || this.closed) return null;
    if (this.sideUnsafe()) return null;
    const rec = s.recovering;
    if (rec && rec.nodeId === this.me.nodeId) {
      if (this.handedOut !== rec.region && !this.overlay.has(rec.region)) {
        this.handedOut = rec.region;
        return rec.region;
      }
      return null;
    }
    if (!rec && !this.workRequested && s.sync.population() < this.regionCount) {
      this.workRequested = true;
      this.send({ type: Req.GET_RESYNC_WORK, seq: 0 }).catch(() => {
        this.workRequested = false;
      });
    }
    return null;
  }

  setRegionSync(region: number, inSync: boolean): void {
    if (!this.state || this.failure || this.closed) return;
    if (this.handedOut === region) this.handedOut = null;
    const seq = ++this.seq;
    this.overlay.set(region, { inSync, seq });
    // clustered-disk: the server records an in-sync region clean, so the copy must be on the legs' stable
    // storage first (the recovery wrote it through this node's cache); a failed flush reports it out of
    // sync. Results go out in call order.
    const activation = inSync && this.disk ? this.activation : null;
    this.syncResults = this.syncResults
      .then(() => (activation ? activation.flushDataLegs().then(() => true, () => false) : inSync))
      .then((result) => this.sendWithSeq({ type: Req.SET_REGION_SYNC, seq, region, inSync: result }))
      .catch(() => undefined);
  }

  syncCount(): number {
    const s = this.state;
    if (!s) return 0;
    let n = s.sync.population();
    for (const [r, o] of this.overlay) {
      const cur = s.sync.get(r);
      if (o.inSync && !cur) n++;
      else if (!o.inSync && cur) n--;
    }
    return n;
  }

  isRemoteRecovering(region: number): boolean {
    const s = this.state;
    if (!s) return true;
    // While this node's side of a split is unknown or inquorate, the majority may be recovering any
    // region (it purged this node's marks): every write waits, even to regions marked here before.
    if (this.sideUnsafe()) return true;
    // While the members run on different legs (a repair reaching the nodes one by one), no write waits
    // for less than every node: a node still on a removed leg could read it where this one no longer writes.
    if (!s.legsAgreed()) return true;
    if (this.inSync(region)) return false;
    const rec = s.recovering;
    if (rec && rec.region === region && rec.nodeId === this.me.nodeId) return false; // ours: the local hold decides
    if (!this.hinted.has(region) && !this.failure && !this.closed) {
      this.hinted.add(region);
      this.send({ type: Req.IS_REMOTE_RECOVERING, seq: 0, region }).catch(() => this.hinted.delete(region));
    }
    return true;
  }

  legStates(): readonly LegLogState[] {
    return this.legs;
  }

  /** The source leg lost cluster-wide while regions were out of sync (no leg may serve them), or null. */
  lostSource(): string | null {
    return this.state?.lostSource ?? null;
  }

  setLegUpToDate(legIndex: number, upToDate: boolean): void {
    if (legIndex < 0 || legIndex >= this.legs.length) throw new RangeError('leg index out of range');
    const old = this.legs[legIndex]!;
    if (!upToDate && !this.failedHere.has(old.device)) {
      // This node's mirror failed the leg: every node must stop using it (see announceLegFailed).
      this.failedHere.add(old.device);
      if (this.state && this.state.staleLegs.get(old.device) !== 'failed' && !this.failure && !this.closed) this.announceLegFailed([old.device]);
    }
    if (old.upToDate === upToDate) return;
    this.legs[legIndex] = { device: old.device, upToDate };
    this.legsChanged = true;
  }

  hasUnflushedChanges(): boolean {
    return this.pendingOps.size > 0 || this.legsChanged || this.legFailPending.size > 0;
  }

  status(kind: LogStatusKind): string[] {
    if (kind === 'info') return ['3', this.type, this.opts.uuid, this.health()];
    const args = [this.opts.uuid];
    if (this.opts.integratedFlush) args.push('integrated_flush');
    args.push(this.type);
    if (this.disk) args.push(this.disk.device.device);
    args.push(String(this.regionSizeBytes / 512));
    if (this.opts.sync !== 'default') args.push(this.opts.sync);
    return ['userspace', String(args.length), ...args];
  }

  health(): LogHealthChar {
    if (this.failure) return 'D';
    return this.disk ? this.disk.health() : 'A';
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.diskLazyTimer) clearTimeout(this.diskLazyTimer);
    for (const u of this.unsubs.splice(0)) u();
    this.rejectAll(new ExportError('EIO', 'cluster log closed'));
    await this.t.close();
    await this.disk?.close();
  }

  // ---- sending ----------------------------------------------------------------------------------
  private send(m: ClusterLogMessage): Promise<void> {
    return this.sendWithSeq({ ...m, seq: ++this.seq } as ClusterLogMessage);
  }
  private sendWithSeq(m: ClusterLogMessage): Promise<void> {
    return this.t.mcast(encodeMessage(m));
  }

  private sendCheckpoint(s: ReplicatedLogState): void {
    const targets = s.waitingTargets();
    if (targets.length === 0) return;
    const snapshot = s.encode();
    const room = this.t.messageBytesMax - checkpointOverheadBytes(targets.length);
    if (room <= 0) {
      this.fail(new ExportError('EIO', 'checkpoint targets do not fit in one message'));
      return;
    }
    const parts = Math.max(1, Math.ceil(snapshot.length / room));
    const id = ++this.checkpointId;
    for (let part = 0; part < parts; part++) {
      const chunk = snapshot.subarray(part * room, (part + 1) * room);
      this.send({ type: Req.CHECKPOINT, seq: 0, id, part, parts, targets, chunk }).catch(() => undefined);
    }
  }

  // ---- receiving --------------------------------------------------------------------------------
  private isMe(m: Member): boolean {
    return m.nodeId === this.me.nodeId && m.pid === this.me.pid;
  }

  private onConfig(c: ConfigChange): void {
    if (this.closed) return;
    if (this.opts.onQuorumChange) {
      for (const l of c.left) {
        if (l.reason === ChangeReason.nodeDown && (this.quorumNodeIds === null || this.quorumNodeIds.has(l.nodeId))) this.suspectNodes.add(l.nodeId);
      }
    }
    if (!this.joinSeen) {
      if (!c.joined.some((j) => this.isMe(j))) return;
      this.joinSeen = true;
      this.confIndex = 0;
      for (const j of c.joined) this.joinIndex.set(memberKey(j), 0);
    } else {
      this.confIndex++;
      for (const j of c.joined) if (!this.joinIndex.has(memberKey(j))) this.joinIndex.set(memberKey(j), this.confIndex);
      this.maybeLoseMerge(c);
    }
    this.lastView = [...c.members];
    for (const w of this.flushWaiters.values()) {
      if (w.delivered) for (const j of c.joined) if (j.reason === ChangeReason.join) w.joinedAfter.add(memberKey(j));
    }
    this.settleFlushes();
    if (!this.state) {
      for (const l of c.left) for (const k of this.assembling.keys()) if (k.startsWith(`${memberKey(l)}:`)) this.assembling.delete(k);
      this.bufferEvent({ kind: 'conf', c, index: this.confIndex });
      if (c.members.every((m) => this.joinIndex.has(memberKey(m)))) this.freshInit(c);
      else this.maybeAllLost();
      return;
    }
    this.applyConf(this.state, c, true);
  }

  /**
   * Partition merge: members coming back with NODEUP. My side keeps its state if it has more members
   * than all returning ones together (tie: the lower lowest node id); otherwise this member drops its
   * state and waits for a checkpoint as if it had just joined with its side (see maybeAllLost).
   */
  private maybeLoseMerge(c: ConfigChange): void {
    const back = c.joined.filter((j) => j.reason === ChangeReason.nodeUp);
    if (back.length === 0) return;
    const backKeys = new Set(back.map(memberKey));
    const mine = c.members.filter((m) => !backKeys.has(memberKey(m)) && !c.joined.some((j) => j.reason !== ChangeReason.nodeUp && memberKey(j) === memberKey(m)));
    if (!mine.some((m) => this.isMe(m))) return;
    const minNode = (ms: Member[]) => Math.min(...ms.map((m) => m.nodeId));
    const iWin = mine.length > back.length || (mine.length === back.length && minNode(mine) < minNode(back));
    if (iWin) return;
    // Lose: become a joiner of this change together with my side.
    this.state = null;
    this.buffer = [];
    this.assembling.clear();
    this.joinIndex.clear();
    this.confIndex = 0;
    for (const m of mine) this.joinIndex.set(memberKey(m), 0);
    for (const j of c.joined) if (!backKeys.has(memberKey(j))) this.joinIndex.set(memberKey(j), 0);
    this.handedOut = null;
    this.workRequested = false;
    this.overlay.clear();
    this.hinted.clear();
    // If every side lost (a heal of 3+ sides, none larger than the rest), nobody sends a checkpoint:
    // everyone announces itself, and once all members have, they start over from a state that has every
    // region out of sync (safe whatever the table's sync mode).
    this.mergeWaiting = new Set();
    this.send({ type: Req.MERGE_WAITING, seq: 0 }).catch(() => undefined);
  }

  private bufferEvent(e: Buffered): void {
    if (this.buffer.length >= this.limits.waitBufferEventsMax) {
      this.fail(new ExportError('EIO', `cluster log ${this.opts.uuid}: ${this.buffer.length} events while waiting for a checkpoint`));
      return;
    }
    this.buffer.push(e);
  }

  private freshInit(c: ConfigChange): void {
    // After a lost merge the old state is gone for everyone: start with every region out of sync.
    const allInSync = this.opts.sync === 'nosync' && this.mergeWaiting === null;
    const s = ReplicatedLogState.fresh(this.regionCount, allInSync);
    // clustered-disk whole-cluster start: regions recorded clean on the log device are in sync.
    if (this.diskClean && this.mergeWaiting === null) s.sync.copyFrom(this.diskClean);
    // After a merge every side lost, each member's legs are as its own mirror left them: every leg counts
    // (the ones a member had failed are announced again and become stale; every region resyncs anyway).
    s.legSeed = this.mergeWaiting === null ? this.legSeed : { mode: 'equal' };
    this.seededHere = this.mergeWaiting === null;
    this.diskClean = null;
    s.members = [...c.members];
    for (const m of c.members) {
      const k = memberKey(m);
      const ji = this.joinIndex.get(k);
      if (ji === 0) s.initialized.add(k);
      else s.waiting.set(k, this.confIndex - (ji ?? 0));
    }
    this.becomeInitialized(s);
    if (s.server() && this.isMe(s.server()!)) this.sendCheckpoint(s);
  }

  /** Lost-merge mode: once every current member announced MERGE_WAITING, all start over together. */
  private maybeAllLost(): void {
    const w = this.mergeWaiting;
    if (w === null || this.state !== null || this.lastView.length === 0) return;
    if (!this.lastView.every((m) => w.has(memberKey(m)))) return;
    for (const m of this.lastView) this.joinIndex.set(memberKey(m), 0);
    this.freshInit({ members: this.lastView, left: [], joined: [] });
  }

  private becomeInitialized(s: ReplicatedLogState): void {
    this.state = s;
    this.diskClean = null;
    this.mergeWaiting = null;
    this.buffer = [];
    this.assembling.clear();
    // Local marks (after a lost merge) must be re-recorded in the new state.
    for (const r of this.localMarks) this.pendingOps.set(r, 'mark');
    for (const w of this.initWaiters.splice(0)) w.resolve();
    for (const d of this.departures.reconcile((r) => s.sync.get(r), Date.now())) this.emitResynced(d);
    // A state re-taken after a lost merge no longer lists our legs (the first resume announces them itself).
    if (this.resumedOnce) this.announceLegs().catch(() => undefined);
    if (this.resumedOnce) {
      // Legs failed on the other side of a merge are failed here too; ours are announced again if that side
      // never learned of them.
      this.applyFailedLegs(s.staleLegs, 'failed cluster-wide');
      const lost = [...this.failedHere].filter((d) => s.staleLegs.get(d) !== 'failed');
      if (lost.length > 0) this.announceLegFailed(lost, true);
    }
    this.membershipL.emit({ members: s.members, server: s.server() });
    this.regionsL.emit('all');
    this.workL.emit();
    this.diskServerCheck(s);
  }

  private applyConf(s: ReplicatedLogState, c: ConfigChange, live: boolean): void {
    const effect = s.applyConfigChange(c);
    if (!live) return;
    for (const d of effect.departed) this.reportDeparture(s, c, d);
    this.checkLegAgreement(s);
    const changed = [...effect.purged];
    if (effect.released) changed.push(effect.released.region);
    if (changed.length) this.regionsL.emit(changed);
    // Also when a departed node's marks only freed regions already out of sync (GET_RESYNC_WORK skipped them).
    if (changed.length || effect.released || effect.departed.some((d) => d.markedOutOfSync.length > 0)) this.workL.emit();
    this.membershipL.emit({ members: s.members, server: s.server() });
    const server = s.server();
    if (s.waiting.size > 0 && server && this.isMe(server)) this.sendCheckpoint(s);
    this.diskServerCheck(s);
  }

  // ---- clustered-disk: the server writes the log device -------------------------------------------
  /** On becoming the server (start, failover): write the whole state now, covering pending flushes. */
  private diskServerCheck(s: ReplicatedLogState): void {
    const server = s.server();
    const amServer = server !== undefined && this.isMe(server);
    if (this.disk && amServer && !this.wasServer) this.diskRequestWrite();
    this.wasServer = amServer;
  }

  /** Server: get a write point in the total order (DISK_MARK); the write happens when it comes back. */
  private diskRequestWrite(): void {
    if (!this.disk || this.closed || this.failure) return;
    if (this.diskLazyTimer) {
      clearTimeout(this.diskLazyTimer);
      this.diskLazyTimer = null;
    }
    if (this.diskWriting) {
      this.diskAgain = true;
      return;
    }
    if (this.diskMarkSent) return; // the marker on its way is ordered after what was applied so far
    this.diskMarkSent = true;
    this.send({ type: Req.DISK_MARK, seq: 0 }).catch(() => {
      this.diskMarkSent = false;
    });
  }

  /** Server: clears and sync results are persisted lazily. */
  private diskLazyWrite(): void {
    if (!this.disk || this.diskLazyTimer || this.diskMarkSent || this.closed) return;
    if (this.diskWriting) {
      this.diskAgain = true;
      return;
    }
    this.diskLazyTimer = setTimeout(() => {
      this.diskLazyTimer = null;
      this.diskRequestWrite();
    }, this.limits.diskLazyWriteMs);
    this.diskLazyTimer.unref?.();
  }

  /** Server: its DISK_MARK came back: snapshot the state now (synchronously), write, announce. */
  private diskWrite(s: ReplicatedLogState, markSeq: number): void {
    const disk = this.disk!;
    this.diskMarkSent = false;
    // A minority (or a side not yet known) must not overwrite the majority's record of the shared device
    // with a state lacking the majority's marks; the write is redone when the side is safe again.
    if (this.sideUnsafe()) return;
    this.diskWriting = true;
    this.diskAgain = false;
    const legDevices = this.activation?.legDevices ?? [];
    disk
      .writeState(s.sync, s.marksByNode.values(), legDevices.map((device) => ({ device, state: s.recordedState(device, legDevices) })))
      .then(
        () => this.send({ type: Req.DISK_DONE, seq: 0, markSeq }),
        (err: Error) => this.fail(new ExportError('EIO', `cluster log ${this.opts.uuid}: ${err.message}`)),
      )
      .catch(() => undefined)
      .finally(() => {
        this.diskWriting = false;
        if (this.diskAgain) this.diskRequestWrite();
      });
  }

  private onDeliver(d: Delivery): void {
    if (this.closed || !this.joinSeen) return;
    let m: ClusterLogMessage;
    try {
      m = decodeMessage(d.payload, this.regionCount);
    } catch {
      return; // not ours / corrupt: every member drops it the same way
    }
    const from: Member = { nodeId: d.nodeId, pid: d.pid };
    if (m.type === Req.LEG_FAILED && this.resumedOnce) {
      // Applied to this node's mirror on delivery (even while re-taking the state), before the acknowledgement.
      this.applyFailedLegs(new Map(m.devices.map((dev) => [dev, 'failed'])), `failed on node ${from.nodeId} (cluster-wide)`);
    }
    if (m.type === Req.FLUSH || m.type === Req.LEG_FAILED) {
      if (this.isMe(from)) {
        const w = this.flushWaiters.get(m.seq);
        if (w) {
          w.delivered = true;
          this.settleFlushes();
        }
      } else {
        this.send({ type: Req.FLUSH_ACK, seq: 0, nodeId: from.nodeId, pid: from.pid, flushSeq: m.seq }).catch(() => undefined);
      }
    } else if (m.type === Req.FLUSH_ACK) {
      if (m.nodeId === this.me.nodeId && m.pid === this.me.pid) {
        const w = this.flushWaiters.get(m.flushSeq);
        if (w) {
          w.acks.add(memberKey(from));
          this.settleFlushes();
        }
      }
      return; // not part of the replicated state
    }
    if (!this.state) {
      if (m.type === Req.CHECKPOINT && this.collectCheckpoint(from, m)) return;
      this.bufferEvent({ kind: 'msg', from, m });
      if (m.type === Req.MERGE_WAITING && this.mergeWaiting) {
        this.mergeWaiting.add(memberKey(from));
        this.maybeAllLost();
      }
      return;
    }
    this.applyMsg(this.state, from, m, true);
  }

  /** Waiting member: assembles a checkpoint addressed to it; true if it completed and was applied. */
  private collectCheckpoint(from: Member, m: Extract<ClusterLogMessage, { type: 128 }>): boolean {
    const mine = m.targets.find((t) => this.isMe(t));
    if (!mine) return false;
    const key = `${memberKey(from)}:${m.id}`;
    const parts = this.assembling.get(key) ?? [];
    if (parts.length !== m.part) {
      this.assembling.delete(key); // joined mid-checkpoint: a later one will come
      return false;
    }
    parts.push(m.chunk);
    if (m.part < m.parts - 1) {
      this.assembling.set(key, parts);
      return false;
    }
    this.assembling.delete(key);
    let s: ReplicatedLogState;
    try {
      s = ReplicatedLogState.decode(Buffer.concat(parts), this.regionCount);
    } catch {
      return false;
    }
    // Replay what was ordered after the snapshot point (the epoch-th change since our join).
    const at = this.buffer.findIndex((e) => e.kind === 'conf' && e.index === mine.epoch);
    if (at < 0) return false;
    const replay = this.buffer.slice(at + 1);
    for (const e of replay) {
      if (e.kind === 'conf') this.applyConf(s, e.c, false);
      else this.applyMsg(s, e.from, e.m, false);
    }
    this.applyMsg(s, from, m, false); // the checkpoint's own effect: its targets now hold the state
    this.becomeInitialized(s);
    return true;
  }

  private applyMsg(s: ReplicatedLogState, from: Member, m: ClusterLogMessage, live: boolean): void {
    const mine = this.isMe(from);
    switch (m.type) {
      case Req.FLUSH: {
        s.applyFlush(from.nodeId, m.marks, m.clears);
        // A clear that freed a region out of sync: recovery may take it now (GET_RESYNC_WORK skipped it).
        if (live && m.clears.some((r) => s.recoverable(r))) this.workL.emit();
        if (live && this.disk && this.isServer(s)) {
          if (m.marks.length > 0) this.diskRequestWrite();
          else this.diskLazyWrite();
        }
        break;
      }
      case Req.DISK_MARK: {
        // Our marker is back, whether or not it still counts: a later request must be able to send another.
        if (mine && live) this.diskMarkSent = false;
        const server = s.server();
        if (!live || !server || memberKey(server) !== memberKey(from)) break; // sent by a former server
        // Every FLUSH of mine delivered so far is in the snapshot the server takes now.
        for (const w of this.flushWaiters.values()) {
          if (w.needsDisk && w.delivered && !w.durable) w.coveredBy = `${memberKey(from)}:${m.seq}`;
        }
        if (mine && this.disk) this.diskWrite(s, m.seq);
        break;
      }
      case Req.REPAIR:
        if (live) this.repairL.emit({ removed: m.removed, added: m.added, from, fromMe: mine });
        break;
      case Req.DISK_DONE: {
        if (!live) break;
        const key = `${memberKey(from)}:${m.markSeq}`;
        let any = false;
        for (const w of this.flushWaiters.values()) {
          if (w.coveredBy === key) {
            w.durable = true;
            any = true;
          }
        }
        if (any) this.settleFlushes();
        break;
      }
      case Req.GET_RESYNC_WORK: {
        const assigned = s.applyGetResyncWork(from.nodeId);
        if (mine) this.workRequested = false;
        if (live && assigned !== null && from.nodeId === this.me.nodeId) this.workL.emit();
        break;
      }
      case Req.SET_REGION_SYNC: {
        const ended = s.applySetRegionSync(from.nodeId, m.region, m.inSync);
        if (mine) {
          const o = this.overlay.get(m.region);
          if (o && o.seq === m.seq) this.overlay.delete(m.region);
          if (this.handedOut === m.region && ended) this.handedOut = null;
        }
        if (live) {
          if (m.inSync) for (const d of this.departures.regionSynced(m.region, from.nodeId, mine, Date.now())) this.emitResynced(d);
          this.regionsL.emit([m.region]);
          if (ended || !m.inSync) this.workL.emit();
          if (this.disk && this.isServer(s)) this.diskLazyWrite();
        }
        break;
      }
      case Req.LEGS: {
        const { invalidated } = s.applyLegs(memberKey(from), m.devices);
        if (live && invalidated) {
          this.regionsL.emit('all');
          if (this.disk && this.isServer(s)) this.diskRequestWrite();
        } else if (live && this.disk && this.isServer(s)) {
          this.diskLazyWrite(); // leg records may have changed (a leg caught up, the first announcement)
        }
        if (live) this.checkLegAgreement(s);
        // Agreement may have been reached (recovery can be handed out): ask again.
        if (live) this.workL.emit();
        if (mine) {
          this.legsWaiters.get(m.seq)?.resolve();
          this.legsWaiters.delete(m.seq);
        }
        break;
      }
      case Req.LEG_FAILED: {
        const changed = s.applyLegFailed(m.devices, m.again === true);
        if (live && this.disk && this.isServer(s)) this.diskRequestWrite(); // the sender waits for it
        if (live && changed.length > 0) this.workL.emit();
        break;
      }
      case Req.IS_REMOTE_RECOVERING:
        s.applyPriority(m.region);
        if (mine) this.hinted.delete(m.region);
        break;
      case Req.CHECKPOINT:
        // Only a holder of this state can initialize others into it (a stale checkpoint from a member
        // that has since lost a merge must not count).
        if (m.part === m.parts - 1 && s.initialized.has(memberKey(from))) {
          s.applyCheckpointDone(m.targets);
          // A member that now holds the state may have become the log server (the lowest one), or stopped it.
          if (live) this.diskServerCheck(s);
        }
        break;
    }
  }

  // ---- leg sets ---------------------------------------------------------------------------------
  /** Writes parked while the members' legs differed go on once they agree again; both changes are events. */
  private checkLegAgreement(s: ReplicatedLogState): void {
    const agreed = s.legsAgreed();
    if (agreed === this.legsAgreedSeen) return;
    this.legsAgreedSeen = agreed;
    if (agreed) this.regionsL.emit('all');
    // Report real differences (and their end), not the moment between a member's join and its LEGS.
    const told = s.members.filter((m) => s.initialized.has(memberKey(m))).every((m) => s.legsByMember.has(memberKey(m)));
    if (!agreed && !told) return;
    if (agreed === !this.legsDifferReported) return;
    this.legsDifferReported = !agreed;
    const legs = Object.fromEntries(s.members.map((m) => [String(m.nodeId), s.legsByMember.get(memberKey(m)) ?? null]));
    this.emitEvent('cluster-legs', { uuid: this.opts.uuid, agreed, legs });
  }

  // ---- departures (events) ------------------------------------------------------------------------
  private emitEvent<K extends keyof ClusterLogEventMap>(name: K, payload: ClusterLogEventMap[K]): void {
    this.opts.events?.emit(name, payload);
    this.eventL.emit({ name, payload } as { [N in keyof ClusterLogEventMap]: { name: N; payload: ClusterLogEventMap[N] } }[keyof ClusterLogEventMap]);
  }

  /** Bytes of these regions (the last region may be short). */
  private regionBytes(regions: readonly number[]): number {
    let n = 0;
    for (const r of regions) n += Math.min(this.regionSizeBytes, this.opts.lengthBytes - r * this.regionSizeBytes);
    return n;
  }

  private reportDeparture(s: ReplicatedLogState, c: ConfigChange, d: DepartedNode): void {
    const reasons = [...new Set(c.left.filter((l) => l.nodeId === d.nodeId).map((l) => changeReasonName(l.reason)))];
    const now = Date.now();
    const done = this.departures.left({ nodeId: d.nodeId, purged: d.purged, markedOutOfSync: d.markedOutOfSync, released: d.released, atMs: now });
    this.emitEvent('cluster-node-left', {
      uuid: this.opts.uuid,
      nodeId: d.nodeId,
      reason: reasons.join(','),
      regions: this.departures.rangeText(d.purged),
      regionCount: d.purged.length,
      bytes: this.regionBytes(d.purged),
      markedOutOfSyncCount: d.markedOutOfSync.length,
      released: d.released,
      serverNodeId: s.server()?.nodeId ?? null,
      outOfSyncRegions: this.regionCount - s.sync.population(),
    });
    if (done) this.emitResynced(done);
  }

  private emitResynced(d: DepartureResynced): void {
    this.emitEvent('cluster-node-resynced', {
      uuid: this.opts.uuid,
      nodeId: d.nodeId,
      regions: this.departures.rangeText(d.recovered),
      regionCount: d.recovered.length,
      bytes: this.regionBytes(d.recovered),
      recoveredHere: this.departures.rangeText(d.recoveredHere),
      recoveredHereCount: d.recoveredHere.length,
      recoveredHereBytes: this.regionBytes(d.recoveredHere),
      recoveredBy: Object.fromEntries([...d.recoveredBy].map(([n, k]) => [String(n), k])),
      ms: d.doneAtMs - d.leftAtMs,
    });
  }

  private isServer(s: ReplicatedLogState): boolean {
    const server = s.server();
    return server !== undefined && this.isMe(server);
  }

  private fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    this.rejectAll(e);
    this.lostL.emit(e);
  }

  private rejectAll(e: Error): void {
    for (const w of this.flushWaiters.values()) w.reject(e);
    this.flushWaiters.clear();
    for (const w of this.legsWaiters.values()) w.reject(e);
    this.legsWaiters.clear();
    for (const w of this.initWaiters.splice(0)) w.reject(e);
  }
}

export type { CheckpointTarget };
export { compareMembers };
